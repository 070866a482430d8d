import ALE
import IPAddressing
import Keying
import XFRM

// What a keying daemon that went away (killed, crashed) leaves to the next one, socket by socket, as each client
// passes its sockets again: its responders are secured again (offered to peers anew), its connections adopted
// (known again, riding on the SAs they have).
extension SecureSocketEngine {
    /// A socket secured through a daemon that has gone, passed again by its client with the settings and peer
    /// target names it had:
    /// - a responder (a listening TCP socket, a bound UDP socket with no peer) is secured again: a new reqid and
    ///   per-socket policy (the old one named a reqid nobody owns any more), the same names, offered to peers
    ///   again. Connections it accepted before keep their own policies and SAs.
    /// - a connected socket is adopted under the reqid its SAs have (`adoptConnected`).
    public func resecure(
        _ fd: CInt, _ settings: SocketSecuritySettings, names: [SocketPeerTargetName]
    ) throws(SecureSocketError) {
        try requireOwner()
        let facts = try inspect(fd)
        try requireInetStreamOrDatagram(facts)
        if facts.isConnected {
            try adoptConnected(fd, facts: facts, settings, names: names)
            return
        }
        let responder = facts.kind == .stream ? facts.isListening : facts.isBound
        guard responder else {
            throw SecureSocketError(
                .invalidArgument, "only a listening TCP socket, a bound UDP socket or a connected one is secured again")
        }
        try secure(fd, facts: facts, settings)
        for name in names {
            do throws(SecureSocketError) {
                try setPeerTargetName(fd, name)
            } catch {
                release(fd)
                throw error
            }
        }
        logger.notice(
            "responder secured again after its keying daemon went away",
            metadata: ["fd": "\(fd)", "local": "\(facts.local.map(String.init(describing:)) ?? "?")"])
    }

    /// A connected socket whose SAs a daemon now gone negotiated: registered again under the reqid of those SAs
    /// (they are the dead owner's, kept while the socket lives), so its query answers from the kernel again and its
    /// close is seen. Only SAs whose selectors are exactly the socket's flow are taken for its own (with
    /// address-only SAs another connection's could be taken for proof): otherwise nothing is adopted. Its peer's
    /// identity died with the old charon: the query answers secured and encrypted as the kernel says, and names no
    /// peer. Nothing is negotiated and nothing changes on the wire.
    func adoptConnected(
        _ fd: CInt, facts: SocketFacts, _ settings: SocketSecuritySettings, names: [SocketPeerTargetName]
    ) throws(SecureSocketError) {
        guard !table.contains(cookie: facts.cookie) else {
            throw SecureSocketError(.invalidArgument, "security was already set on this socket (only once per socket)")
        }
        try settings.validate()
        try admitSettings(settings)
        guard settings.installsPolicy, let local = facts.local, let peer = facts.peer else {
            throw SecureSocketError(.invalidArgument, "no per-socket policy to adopt")
        }
        let upper: XFRMUpperProtocol = facts.kind == .stream ? .tcp : .udp
        let dead = reqids.deadBlocks().map(\.reqids)
        let states: [XFRMState]
        do {
            states = try xfrm.states()
        } catch {
            throw SecureSocketError(.systemCallFailure, "reading SAs", errno: error.errno, underlying: error)
        }
        let carrying = states.filter { state in
            !state.isLarval && state.selector.isFlowExact
                && state.selector.carries(local: local, remote: peer, upperProtocol: upper)
                && dead.contains { $0.contains(state.reqid) } && table.endpoints(reqid: state.reqid).isEmpty
        }
        let candidates = Set(carrying.map(\.reqid))
        guard candidates.count == 1, let reqid = candidates.first, carrying.count >= 2 else {
            throw SecureSocketError(
                .notConnected,
                "no SA pair of a keying daemon that went away carries exactly this socket's flow (\(local) → \(peer))")
        }
        var endpoint = Endpoint(
            cookie: facts.cookie, descriptor: fd, family: facts.family, kind: facts.kind, reqid: reqid,
            allowInsecure: settings.flags.contains(.allowInsecure), summary: Self.summary(settings) + " adopted",
            role: .initiator)
        endpoint.peerNameIsRaw = settings.ipsec?.flags.contains(.peerNameIsRawFormat) ?? false
        endpoint.client = Self.servingClient
        endpoint.peer = peer.address
        for name in names {
            endpoint.setPeerTargetName(name.name, for: name.peerAddress.flatMap { $0.address.isAny ? nil : $0.address })
        }
        do {
            try table.insert(endpoint)
        } catch {
            throw SecureSocketError(.invalidArgument, "security was already set on this socket")
        }
        apply(.childUp(ProtectionInfo()), cookie: facts.cookie)
        if facts.kind == .stream { recordFlow(KeyedFlow(.tcp, local: local, remote: peer), cookie: facts.cookie) }
        endpointsChanged()
        logger.notice(
            "connection adopted after its keying daemon went away: it rides on its SAs, its peer's identity unknown",
            metadata: ["fd": "\(fd)", "reqid": "\(reqid)", "flow": "\(local) → \(peer)"])
    }
}
