import ALE
import Foundation
import Glibc
import IPAddressing
import Impersonation
import Keying
import Logging
import Synchronization
import SystemPackage
import XFRM

// WSAQuerySocketSecurity: the endpoint, the kernel's SAs for its flow, and the identities the keying proved.
extension SecureSocketEngine {
    // MARK: - Query

    /// What protects `fd`'s traffic, asked from the kernel (the SAs with the socket's reqid for its addresses),
    /// never assumed.
    public func query(_ fd: CInt, _ template: SocketSecurityQueryTemplate? = nil) throws(SecureSocketError)
        -> SocketSecurityQueryInfo
    {
        try requireOwner()
        // A secured socket's cookie finds its family and kind in the table: only its addresses are asked (the
        // query is what a server calls for every connection).
        let facts: SocketFacts
        if let cookie = SocketInspector.cookie(of: fd),
            let known = table.read(cookie: cookie, { ($0.family, $0.kind) })
        {
            facts = SocketInspector.facts(of: fd, cookie: cookie, family: known.0, kind: known.1)
        } else {
            facts = try inspect(fd)
        }
        try requireInetStreamOrDatagram(facts)
        let peer: IPEndpoint
        if facts.kind == .stream {
            guard let connected = facts.peer else {
                var soError: CInt = 0
                var length = socklen_t(MemoryLayout<CInt>.size)
                if getsockopt(fd, SOL_SOCKET, SO_ERROR, &soError, &length) == 0, soError == ECONNRESET {
                    throw SecureSocketError(.connectionReset, "the connection was reset by the peer")
                }
                throw SecureSocketError(.notConnected, "query needs a connected (or accepted) TCP socket")
            }
            peer = connected
        } else {
            guard let address = template?.peerAddress ?? facts.peer else {
                throw SecureSocketError(
                    .messageSize, "a datagram socket's query needs the peer address in the template")
            }
            guard address.address.family == .inet || address.address.family == .inet6 else {
                throw SecureSocketError(.addressFamilyNotSupported, "peer address family")
            }
            peer = address
        }
        let securityProtocol: SocketSecurityProtocol =
            template?.securityProtocol == .ipsec2
            ? .ipsec2
            : (template?.securityProtocol == .ipsec ? .ipsec : .ipsec)
        var info = SocketSecurityQueryInfo(securityProtocol: securityProtocol, flags: [])
        guard var endpoint = endpoint(for: fd, facts: facts) else { return info }
        // A client's connection the daemon adopted from the kernel's tables when its listener closed had no
        // descriptor to pin: the one this query lends is used now, once.
        if endpoint.client != nil, endpoint.descriptor == -1, endpoint.role == .accepted, endpoint.pinned == nil,
            let flow = endpoint.keying?.flow
        {
            // Under the adoption lock, as every binding of a connection being adopted (a rekey waits for it).
            adoptions.withLock { _ in
                table.update(cookie: endpoint.cookie) { $0.descriptor = fd }
                bindAccepted(cookie: endpoint.cookie, flow: flow)
            }
            endpoint = table.endpoint(cookie: endpoint.cookie) ?? endpoint
        }
        if facts.kind == .datagram, endpoint.reqid != nil, refuseSharedPort(endpoint) {
            info.negotiationError = 13800
            return info
        }
        if case .failed(let failure) = endpoint.state.settled { info.negotiationError = Self.win32Error(failure) }
        if case .refused = endpoint.state.settled {
            info.negotiationError = 13800
            return info // refused by the library: never secured
        }
        if case .insecure(let failure) = endpoint.state.settled {
            info.negotiationError = Self.win32Error(failure)
            return info // opened in clear: stays clear for its whole life
        }
        guard let reqid = endpoint.reqid, let local = facts.local else { return info }
        let flow = KeyedFlow(facts.kind == .stream ? .tcp : .udp, local: local, remote: peer)
        var found: FlowAttribution?
        if let pinned = endpoint.pinned {
            // A pinned socket's traffic can go under its pinned pair only (a rekey's new SA once it is in): that
            // pair or nothing. No dump could name another SA that carries it.
            for (spiIn, spiOut) in [
                (pinned.inboundSPI, pinned.outboundSPI),
                (pinned.pendingInboundSPI ?? pinned.inboundSPI, pinned.pendingOutboundSPI ?? pinned.outboundSPI),
            ] {
                guard found == nil,
                    let pair = kernelPair(flow, reqid: reqid, inboundSPI: spiIn, outboundSPI: spiOut)
                else { continue }
                found = FlowAttribution(
                    outbound: pair.outbound, inbound: pair.inbound,
                    exact: pair.outbound.selector.isFlowExact && pair.inbound.selector.isFlowExact,
                    attributable: true)
            }
        } else if let hint = keying?.protection(flow: flow), let spiIn = hint.inboundSPI,
            let spiOut = hint.outboundSPI
        {
            // The SA pair charon reported for this very flow, checked in the kernel by SPI (O(1)); else a dump of
            // the SAs between the two hosts.
            found = FlowAttribution.known(in: xfrm, flow: flow, reqid: reqid, inboundSPI: spiIn, outboundSPI: spiOut)
        }
        if found == nil, endpoint.pinned == nil {
            do {
                // Only this flow's own SAs count; a socket that may run in clear must not borrow another
                // connection's SAs between the same hosts as proof.
                found = try FlowAttribution.find(
                    in: xfrm, flow: flow, reqid: reqid, exactOnly: endpoint.machine.allowInsecure)
            } catch {
                throw SecureSocketError(.systemCallFailure, "reading SAs", errno: error.errno, underlying: error)
            }
        }
        guard let found else { return info }
        // An accepted connection not bound yet whose flow has several peers' exact SA pairs is contested: it is
        // refused once the keying's events are in, and never reported secured meanwhile.
        if endpoint.role == .accepted, endpoint.pinned == nil, found.exact, found.exactCount > 1 { return info }
        let out = found.outbound
        let into = found.inbound
        info.flags.insert(.secured)
        info.outboundSA = out.id
        info.inboundSA = into.id
        let encrypts = { (state: XFRMState) in
            state.algorithms.contains { algorithm in
                switch algorithm.kind {
                case .aead: true
                case .encryption: !algorithm.name.contains("null")
                default: false
                }
            }
        }
        if encrypts(out) && encrypts(into) { info.flags.insert(.encrypted) }
        info.encryptionAlgorithm = out.algorithms.first.map(\.name)
        // Who: the IKE SA that negotiated this very SA pair (by its inbound SPI), never "some SA to that host".
        guard found.attributable else { return info }
        if endpoint.role == .accepted {
            table.setOwnChild(spi: into.id.spi, peer: peer.address, cookie: endpoint.cookie)
        }
        if let protection = keying?.protection(inboundSPI: into.id.spi, peer: peer.address) {
            info.peerMachineIdentity = protection.remoteIdentity
            info.peerUserIdentity = protection.remoteUserIdentity
            info.ikeSAID = protection.ikeSAID ?? 0
            info.childSAID = protection.childSAID ?? 0
            if protection.remoteUserIdentity != nil { info.flags.insert(.impersonated) }
            info.peer = PeerIdentity(protection)
        }
        // The kernel is the truth: an endpoint found protected here (an accepted socket registered on first
        // sight, after the keying events passed) is secured in the table too.
        if endpoint.peer == nil || endpoint.peer == peer.address,
            !{ if case .secured = endpoint.state.settled { true } else { false } }()
        {
            table.update(cookie: endpoint.cookie) { $0.peer = peer.address }
            apply(
                .childUp(
                    ProtectionInfo(
                        ikeSAID: info.ikeSAID == 0 ? nil : info.ikeSAID,
                        childSAID: info.childSAID == 0 ? nil : info.childSAID,
                        peerIdentity: info.peerMachineIdentity,
                        peerUserIdentity: info.peerUserIdentity,
                        encryptionAlgorithm: info.encryptionAlgorithm)),
                cookie: endpoint.cookie)
            logger.info(
                "connection secured",
                metadata: [
                    "fd": "\(fd)", "reqid": "\(reqid)", "flow": "\(flow)",
                    "peer-identity": "\(info.peerMachineIdentity ?? "?")",
                    "peer-user": "\(info.peerUserIdentity ?? "none")", "spi-in": "\(String(into.id.spi, radix: 16))",
                    "spi-out": "\(String(out.id.spi, radix: 16))", "ike-sa": "\(info.ikeSAID)", "via": "query",
                ])
        }
        endpointsChanged()
        tokens.openTokens(for: &info, accessMask: template?.peerTokenAccessMask ?? 0)
        return info
    }

    /// The endpoint for `fd`: registered, or an accepted socket that inherited a registered listener's
    /// policies (same family, same local port); the latter is registered on first sight.
    func endpoint(for fd: CInt, facts: SocketFacts) -> Endpoint? {
        if let endpoint = table.endpoint(cookie: facts.cookie) {
            // An accepted connection that another thread (the event pump's scan for awaited connections) is
            // registering right now is read once that thread has bound and pinned it.
            guard endpoint.role == .accepted, endpoint.pinned == nil else { return endpoint }
            adoptions.withLock { _ in }
            return table.endpoint(cookie: facts.cookie)
        }
        guard facts.kind == .stream, facts.isConnected, let port = facts.local?.port else { return nil }
        let client = Self.servingClient
        let candidates = table.all.filter {
            $0.kind == .stream && $0.family == facts.family && $0.client == client
        }
        // A listener whose socket still listens is taken before one that is gone (a new listener on the port of
        // one closed moments ago, in its grace period, is the connection's).
        for candidate in candidates.filter({ !$0.state.isClosing }) + candidates.filter(\.state.isClosing) {
            // A client's listener as the sweep last saw it (its role says it listens); this process's, asked now,
            // or, when its socket is gone already (closed before this query, its endpoint not released yet), as it
            // was last seen (the sweep adopts through it by the same rule).
            let lastSeen: (port: UInt16?, address: IPAddress?)? =
                candidate.wasListening ? (candidate.lastLocalPort, candidate.lastLocalAddress) : nil
            let listening: (port: UInt16?, address: IPAddress?)? =
                client == nil
                ? withSocket(candidate) { fd in
                    (try? SocketInspector.facts(of: fd)).flatMap {
                        $0.isListening ? ($0.local?.port, $0.local?.address) : nil
                    }
                } ?? lastSeen
                : (candidate.role == .responder(port: port) ? (port, candidate.lastLocalAddress) : nil)
            guard let listening, listening.port == port,
                Self.sameListenerAddress(listening.address, facts.local?.address)
            else { continue }
            adopt(fd, facts: facts, listener: candidate, port: port)
            return table.endpoint(cookie: facts.cookie)
        }
        return nil
    }
}
