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

// WSASetSocketSecurity and the peer target names: the per-socket policy, the reqid, the endpoint and its names.
extension SecureSocketEngine {
    // MARK: - WSASetSocketSecurity

    /// The templates a socket gets for `settings` (pure; the table above).
    public static func templates(for settings: SocketSecuritySettings, reqid: UInt32) -> [XFRMTemplate] {
        guard settings.installsPolicy else { return [] }
        let level: XFRMTemplateLevel = settings.flags.contains(.allowInsecure) ? .use : .required
        // aalgos must be all ones (0 rejects every inbound packet); ealgos is never checked on input, so
        // encryption is enforced through the proposals and verified on the SAs instead.
        return [XFRMTemplate(proto: .esp, mode: .transport, reqid: reqid, level: level)]
    }

    /// Requires IPsec on `fd`. Before bind/connect, once per socket.
    public func setSecurity(_ fd: CInt, _ settings: SocketSecuritySettings = .default) throws(SecureSocketError) {
        try requireOwner()
        let facts = try inspect(fd, expectingUnbound: true)
        try requireInetStreamOrDatagram(facts)
        guard !facts.isConnected else { throw SecureSocketError(.isConnected, "the socket is already connected") }
        guard !facts.isBound, !facts.isListening else {
            throw SecureSocketError(
                .invalidArgument,
                "security must be set before bind (the socket is bound to port \(facts.local?.port ?? 0))")
        }
        try secure(fd, facts: facts, settings)
    }

    /// The part of set-security after the socket's state was checked: hardening, reqid, per-socket policy,
    /// endpoint, keying registration.
    func secure(
        _ fd: CInt, facts: SocketFacts, _ settings: SocketSecuritySettings
    ) throws(SecureSocketError) {
        guard !table.contains(cookie: facts.cookie) else {
            throw SecureSocketError(.invalidArgument, "security was already set on this socket (only once per socket)")
        }
        try settings.validate()
        try admitSettings(settings)
        if settings.installsPolicy && keying == nil {
            throw SecureSocketError(
                .networkUnreachable,
                "no keying backend (configure \(KeyingConfiguration.defaultPath)): a per-socket policy could never be satisfied"
            )
        }
        try SocketHardening.apply(to: fd, family: facts.family, datagram: facts.kind == .datagram)

        var reqid: UInt32?
        if settings.installsPolicy {
            do {
                reqid = try reqids.allocate()
            } catch {
                throw SecureSocketError(.systemCallFailure, "no reqid", underlying: error)
            }
            do {
                try SocketPolicy.require(
                    Self.templates(for: settings, reqid: reqid!), on: FileDescriptor(rawValue: fd),
                    family: facts.family)
            } catch {
                reqids.release(reqid!)
                throw SecureSocketError(
                    error.errno.map(SecureSocketError.Code.init(errno:)) ?? .systemCallFailure,
                    "per-socket policy", errno: error.errno, underlying: error)
            }
        }
        var endpoint = Endpoint(
            cookie: facts.cookie, descriptor: fd, family: facts.family, kind: facts.kind,
            reqid: reqid, allowInsecure: settings.flags.contains(.allowInsecure),
            summary: Self.summary(settings))
        endpoint.peerNameIsRaw = settings.ipsec?.flags.contains(.peerNameIsRawFormat) ?? false
        endpoint.client = Self.servingClient
        endpoint.registeredAt = ContinuousClock.now
        if let reqid {
            // Nothing is offered to peers yet: a socket becomes a responder (its reqid offered for flows to its
            // port) only once it is seen listening, and an initiator negotiates per flow when it connects.
            endpoint.keying = EndpointKeying(
                request: KeyingRequest(
                    reqid: reqid, family: facts.family, transportProtocol: facts.kind == .stream ? .tcp : .udp,
                    requiredPeerIdentity: nil,
                    peerIdentityOptional: settings.ipsec?.flags.contains(.optionalPeerNameVerification) ?? false,
                    requireEncryption: true, userName: Self.userIdentity(settings.ipsec),
                    userPassword: settings.ipsec?.password))
        }
        do {
            try table.insert(endpoint)
        } catch {
            if let reqid { reqids.release(reqid) }
            throw SecureSocketError(.invalidArgument, "security was already set on this socket")
        }
        endpointsChanged()
        logger.debug(
            "socket secured (per-socket policy installed)",
            metadata: [
                "fd": "\(fd)", "cookie": "\(facts.cookie)", "reqid": "\(reqid.map(String.init) ?? "none")",
                "settings": "\(endpoint.summary)",
            ])
    }

    // MARK: - Peer target names

    /// Sets the identity the peer at `name.peerAddress` (or any peer, for a zero address on TCP) must prove.
    public func setPeerTargetName(_ fd: CInt, _ name: SocketPeerTargetName) throws(SecureSocketError) {
        try requireOwner()
        // A secured socket is a TCP or UDP socket of ours already: its cookie finds it, and only whether it is
        // connected is asked. Anything else is inspected in full for the precise error.
        guard let cookie = SocketInspector.cookie(of: fd),
            let (kind, peerNameIsRaw) = table.read(cookie: cookie, { ($0.kind, $0.peerNameIsRaw) })
        else {
            let facts = try inspect(fd)
            try requireInetStreamOrDatagram(facts)
            if facts.isConnected {
                throw SecureSocketError(.isConnected, "the peer target name must be set before connecting")
            }
            throw SecureSocketError(.invalidArgument, "call WSASetSocketSecurity on this socket first")
        }
        guard !SocketInspector.isConnected(fd) else {
            throw SecureSocketError(.isConnected, "the peer target name must be set before connecting")
        }
        let trimmed = name.name.trimmingWhitespace()
        guard !trimmed.isEmpty, trimmed.utf8.count <= 255 else {
            throw SecureSocketError(.invalidArgument, "the peer target name must be 1...255 bytes")
        }
        let key = name.peerAddress.flatMap { $0.address.isAny ? nil : $0.address }
        if kind == .datagram {
            guard let address = name.peerAddress, !(address.address.isAny && address.port == 0) else {
                throw SecureSocketError(.invalidArgument, "a datagram socket needs the peer's address for each name")
            }
        }
        // A name is one identity, matched literally: what the keying daemon would read as a pattern (`*`,
        // `%any`) would let any authenticated peer pass as this one.
        let identity = SocketPeerTargetName(name: trimmed).identity(raw: peerNameIsRaw)
        guard PeerIdentityText.isLiteral(identity) else {
            throw SecureSocketError(
                .invalidArgument,
                "peer target name `\(trimmed)` is a pattern (`*` or `%`), not one identity")
        }
        try admitPeerName(identity)
        table.update(cookie: cookie) { $0.setPeerTargetName(trimmed, for: key) }
    }

    /// Forgets the name set for `address`. Unknown addresses are not an error (nothing to forget).
    public func deletePeerTargetName(_ fd: CInt, address: IPEndpoint) throws(SecureSocketError) {
        try requireOwner()
        let facts = try inspect(fd)
        try requireInetStreamOrDatagram(facts)
        table.update(cookie: facts.cookie) {
            $0.setPeerTargetName(nil, for: address.address.isAny ? nil : address.address)
        }
    }
}
