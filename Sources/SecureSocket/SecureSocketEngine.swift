import ALE
import Foundation
import Glibc
import Impersonation
import Keying
import Logging
import Synchronization
import SystemPackage
import XFRM

/// The machinery behind the six functions: per-socket XFRM policies, the ALE endpoint table, reqids, and a
/// keying backend. One engine serves one network namespace (the one it was created in).
///
/// Settings → kernel mapping (details in the module documentation):
///
/// | setting | per-socket policy (both directions) | keying |
/// |---|---|---|
/// | default / `GUARANTEE_ENCRYPTION` | ESP transport, reqid R, level **required** | encrypting proposals only; checked on the installed SAs |
/// | `ALLOW_INSECURE` | ESP transport, reqid R, level **use** | negotiated first (bounded) by `connect`, then clear text is allowed |
/// | `SKIP_FILTER_INSTANTIATION` | none: global policies apply | none |
public final class SecureSocketEngine: Sendable {
    public struct Configuration: Sendable {
        /// How long `connect` waits for the SAs before giving up (or, with `ALLOW_INSECURE`, falling back).
        public var negotiationTimeout: Double
        public var keying: (any KeyingBackend)?
        /// Where reqid claims are kept (one folder per network namespace; shared by every process using it).
        public var reqidDirectory: String?
        /// The network namespace of the sockets this engine serves (its XFRM client lives there).
        public var namespace: NetworkNamespace
        /// Follow the kernel's and the keying daemon's events (see `EndpointEventPump`): endpoint states stay
        /// current, and ACQUIREs for secured sockets are answered, so plain `connect()` retries succeed.
        public var followEvents: Bool
        /// Seconds a socket closed without `release` keeps its keying (see ``SecureSocketEngine/closeGrace``).
        public var closeGrace: Double
        /// Who authenticated peers are on this host, for impersonation and token inspection.
        public var identityMap: IdentityMap?
        /// Seconds ``SecureSocketEngine/shutdown()`` (run at exit) waits for connected sockets' unsent data to
        /// leave under their SAs before releasing them.
        public var exitDrain: Double = 5
        /// Where the engine logs its decisions (see ``SecureSocketLogging``); the application's logging system by
        /// default, `WSS_LOG` for the process-wide engine of the Windows functions.
        public var logger = Logger(label: "wss.secure-socket")

        public init(
            negotiationTimeout: Double = 10, keying: (any KeyingBackend)?, reqidDirectory: String? = nil,
            namespace: NetworkNamespace = .current, followEvents: Bool = true, closeGrace: Double = 2,
            identityMap: IdentityMap? = nil
        ) {
            self.closeGrace = closeGrace
            self.identityMap = identityMap
            self.negotiationTimeout = negotiationTimeout
            self.keying = keying
            self.reqidDirectory = reqidDirectory
            self.namespace = namespace
            self.followEvents = followEvents
        }
    }

    public let configuration: Configuration
    var logger: Logger { configuration.logger }
    public let table = EndpointTable()
    /// Peer token handles the queries handed out.
    public let tokens = PeerTokenTable()
    private let reqids: ReqidAllocator
    private let xfrm: XFRMClient
    /// What each secured socket holds in the keying backend.
    let keyings = KeyingRegistry()
    private let pump = Mutex<EndpointEventPump?>(nil)
    /// The hash of the last snapshot's endpoints, to write only on change.
    private let published = Mutex<Int?>(nil)
    /// When the pump last published (monotonic seconds): at most once per ``publishInterval``.
    private let lastPublished = Mutex<Double>(0)
    /// Snapshots are for inspection: one a second at most, so a burst of connections costs one publication.
    static let publishInterval = 1.0
    /// Where this process's snapshot goes.
    public let snapshotFile: String

    public var keying: (any KeyingBackend)? { configuration.keying }

    public init(_ configuration: Configuration) throws(SecureSocketError) {
        self.configuration = configuration
        do {
            reqids = try ReqidAllocator(
                directory: configuration.reqidDirectory
                    ?? ReqidAllocator.defaultDirectory(for: configuration.namespace))
        } catch {
            throw SecureSocketError(.systemCallFailure, "reqid allocator: \(error)")
        }
        let snapshots = EndpointSnapshot.folder(forReqidDirectory: reqids.directory)
        try? FileManager.default.createDirectory(
            atPath: snapshots, withIntermediateDirectories: true,
            attributes: [.posixPermissions: 0o755])
        snapshotFile = "\(snapshots)/\(getpid())-\(ObjectIdentifier(reqids).hashValue & 0xffff).json"
        do {
            xfrm = try XFRMClient(namespace: configuration.namespace)
        } catch {
            throw SecureSocketError(.systemCallFailure, "NETLINK_XFRM: \(error)", errno: error.errno)
        }
        if configuration.followEvents, configuration.keying != nil {
            do {
                let started = try EndpointEventPump(
                    table: table, namespace: configuration.namespace,
                    engine: EngineHooks(engine: self), logger: configuration.logger)
                pump.withLock { $0 = started }
            } catch {
                throw SecureSocketError(.systemCallFailure, "XFRM event monitor: \(error)", errno: error.errno)
            }
        }
        reclaimDeadProcesses()
    }

    /// What the event pump may ask of the engine, without keeping it alive.
    struct EngineHooks: @unchecked Sendable {
        weak var engine: SecureSocketEngine?
        func sweep() { engine?.sweep() }
        /// Returns whether young undetermined endpoints remain (the pump then looks again soon).
        func settleRoles() -> Bool {
            guard let engine else { return false }
            defer { engine.publishIfDirty() }
            return engine.settleRoles()
        }
        func acquire(reqid: UInt32, flow: KeyedFlow) { engine?.answerAcquire(reqid: reqid, flow: flow) }
        func acceptedFlowSA(_ flow: KeyedFlow, reqid: UInt32, spi: UInt32, installed: Bool) {
            engine?.acceptedFlowSA(flow, reqid: reqid, spi: spi, installed: installed)
        }
    }

    // MARK: - The process-wide engine the C ABI uses

    private static let sharedEngine = Mutex<SecureSocketEngine?>(nil)

    /// Installs the engine the Windows-named functions use (tests and services configure it once at start).
    public static func setShared(_ engine: SecureSocketEngine?) { sharedEngine.withLock { $0 = engine } }

    /// The engine the Windows-named functions use; nil until ``setShared(_:)`` or ``makeDefaultShared()``.
    public static var shared: SecureSocketEngine? { sharedEngine.withLock { $0 } }

    /// Creates the shared engine with the default keying (see ``DefaultKeying``) unless one is installed.
    public static func makeDefaultShared() throws(SecureSocketError) -> SecureSocketEngine {
        try sharedEngine.withLock { (engine) throws(SecureSocketError) -> SecureSocketEngine in
            if let engine { return engine }
            let keyingLogger = SecureSocketLogging.logger(label: "wss.keying")
            let keying = try DefaultKeying.make(logger: keyingLogger)
            var map: IdentityMap?
            if FileManager.default.fileExists(atPath: IdentityMapLocation.defaultPath) {
                do {
                    map = try IdentityMap(path: IdentityMapLocation.defaultPath)
                } catch {
                    throw SecureSocketError(.invalidArgument, "\(IdentityMapLocation.defaultPath): \(error)")
                }
            }
            var configuration = Configuration(
                negotiationTimeout: keying?.configuration.negotiationTimeout ?? 10,
                keying: keying?.backend, identityMap: map)
            configuration.logger = SecureSocketLogging.logger(label: "wss.secure-socket")
            let created = try SecureSocketEngine(configuration)
            engine = created
            // A private charon and the reqid claims must not outlive the process.
            sharedOwner.store(getpid(), ordering: .releasing)
            atexit { SecureSocketEngine.shutdownShared() }
            return created
        }
    }

    /// The process that made the shared engine (0 before).
    private static let sharedOwner = Atomic<Int32>(0)

    /// Releases every endpoint of the shared engine and stops a private charon it started (run at exit). In a
    /// child forked from that process it does nothing, and takes no lock (another thread of the parent may
    /// have held it at the fork).
    public static func shutdownShared() {
        guard getpid() == sharedOwner.load(ordering: .acquiring) else { return }
        guard
            let engine = sharedEngine.withLock({ engine -> SecureSocketEngine? in
                defer { engine = nil }
                return engine
            })
        else { return }
        engine.shutdown()
    }

    /// The process that made the engine: a child forked from it inherits the engine (and `atexit`), but the
    /// keying, the claims and the private charon are the parent's, never the child's to tear down.
    private let owner = getpid()

    /// Releases every endpoint and stops the keying backend's private daemon, if it has one. Does nothing in a
    /// process forked from the one that made the engine.
    public func shutdown() {
        guard getpid() == owner else { return }
        pump.withLock {
            $0?.stop()
            $0 = nil
        }
        unlink(snapshotFile)
        drainSendQueues(within: configuration.exitDrain)
        for endpoint in table.all { release(cookie: endpoint.cookie) }
        // Accepted connections' covers end by themselves after TIME_WAIT (the pump that would have seen their
        // SAs go is stopped).
        for (flow, reqid) in acceptedFlowReqids() { coverFlow(flow, reqid: reqid, for: Self.closedFlowCover) }
        reqids.releaseAll()
        keying?.shutdown()
    }

    /// Waits (at most `bound` seconds in all) until the connected TCP sockets have no unsent data (`SIOCOUTQ`),
    /// so what the application wrote before exiting leaves under its SAs instead of being stranded when they
    /// are released.
    func drainSendQueues(within bound: Double) {
        let deadline = monotonicNow() + bound
        var pending = table.all.filter { $0.kind == .stream }.map(\.descriptor)
        while !pending.isEmpty, monotonicNow() < deadline {
            pending = pending.filter { fd in
                var queued: CInt = 0
                // SIOCOUTQ (= TIOCOUTQ, 0x5411): bytes not yet acknowledged by the peer.
                return ioctl(fd, 0x5411, &queued) == 0 && queued > 0
            }
            if !pending.isEmpty { usleep(10_000) }
        }
    }

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
        let facts = try inspect(fd, expectingUnbound: true)
        try requireInetStreamOrDatagram(facts)
        guard !facts.isConnected else { throw SecureSocketError(.isConnected, "the socket is already connected") }
        guard !facts.isBound, !facts.isListening else {
            throw SecureSocketError(
                .invalidArgument,
                "security must be set before bind (the socket is bound to port \(facts.local?.port ?? 0))")
        }
        guard table.endpoint(cookie: facts.cookie) == nil else {
            throw SecureSocketError(.invalidArgument, "security was already set on this socket (only once per socket)")
        }
        try settings.validate()
        if settings.installsPolicy && keying == nil {
            throw SecureSocketError(
                .networkUnreachable,
                "no keying backend (configure \(KeyingConfiguration.defaultPath)): a per-socket policy could never be satisfied"
            )
        }
        try SocketHardening.apply(to: fd, family: facts.family)

        var reqid: UInt32?
        if settings.installsPolicy {
            do {
                reqid = try reqids.allocate()
            } catch {
                throw SecureSocketError(.systemCallFailure, "no reqid: \(error)")
            }
            do {
                try SocketPolicy.require(
                    Self.templates(for: settings, reqid: reqid!), on: FileDescriptor(rawValue: fd),
                    family: facts.family)
            } catch {
                reqids.release(reqid!)
                throw SecureSocketError(
                    error.errno.map(SecureSocketError.Code.init(errno:)) ?? .systemCallFailure,
                    "per-socket policy: \(error)", errno: error.errno)
            }
        }
        var endpoint = Endpoint(
            cookie: facts.cookie, descriptor: fd, family: facts.family, kind: facts.kind,
            reqid: reqid, allowInsecure: settings.flags.contains(.allowInsecure),
            summary: Self.summary(settings))
        endpoint.peerNameIsRaw = settings.ipsec?.flags.contains(.peerNameIsRawFormat) ?? false
        endpoint.registeredAt = monotonicNow()
        do {
            try table.insert(endpoint)
        } catch {
            if let reqid { reqids.release(reqid) }
            throw SecureSocketError(.invalidArgument, "security was already set on this socket")
        }
        logger.debug(
            "socket secured (per-socket policy installed)",
            metadata: [
                "fd": "\(fd)", "cookie": "\(facts.cookie)", "reqid": "\(reqid.map(String.init) ?? "none")",
                "settings": "\(endpoint.summary)",
            ])
        guard let reqid else { return }
        // Nothing is offered to peers yet: a socket becomes a responder (its reqid offered for flows to its
        // port) only once it is seen listening, and an initiator negotiates per flow when it connects.
        keyings.register(
            cookie: facts.cookie,
            request: KeyingRequest(
                reqid: reqid, family: facts.family, transportProtocol: facts.kind == .stream ? .tcp : .udp,
                requiredPeerIdentity: nil,
                peerIdentityOptional: settings.ipsec?.flags.contains(.optionalPeerNameVerification) ?? false,
                requireEncryption: true, userName: Self.userIdentity(settings.ipsec),
                userPassword: settings.ipsec?.password))
    }

    // MARK: - Peer target names

    /// Sets the identity the peer at `name.peerAddress` (or any peer, for a zero address on TCP) must prove.
    public func setPeerTargetName(_ fd: CInt, _ name: SocketPeerTargetName) throws(SecureSocketError) {
        // A secured socket is a TCP or UDP socket of ours already: its cookie finds it, and only whether it is
        // connected is asked. Anything else is inspected in full for the precise error.
        guard let cookie = SocketInspector.cookie(of: fd), let endpoint = table.endpoint(cookie: cookie) else {
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
        if endpoint.kind == .datagram {
            guard let address = name.peerAddress, !(address.address.isAny && address.port == 0) else {
                throw SecureSocketError(.invalidArgument, "a datagram socket needs the peer's address for each name")
            }
        }
        // A name is one identity, matched literally: what the keying daemon would read as a pattern (`*`,
        // `%any`) would let any authenticated peer pass as this one.
        let identity = SocketPeerTargetName(name: trimmed).identity(raw: endpoint.peerNameIsRaw)
        guard PeerIdentityText.isLiteral(identity) else {
            throw SecureSocketError(
                .invalidArgument,
                "peer target name `\(trimmed)` is a pattern (`*` or `%`), not one identity")
        }
        table.update(cookie: endpoint.cookie) { $0.peerTargetNames[key] = trimmed }
    }

    /// Forgets the name set for `address`. Unknown addresses are not an error (nothing to forget).
    public func deletePeerTargetName(_ fd: CInt, address: SocketEndpointAddress) throws(SecureSocketError) {
        let facts = try inspect(fd)
        try requireInetStreamOrDatagram(facts)
        table.update(cookie: facts.cookie) { $0.peerTargetNames[address.address.isAny ? nil : address.address] = nil }
    }

    /// How often the event pump started its XFRM monitor again after it ended (inspection, tests).
    public var monitorRestarts: Int { pump.withLock { $0?.monitorRestarts.load(ordering: .relaxed) } ?? 0 }

    /// Ends the event pump's XFRM monitor as a kernel overrun would, to exercise its restart (tests).
    public func interruptEventMonitor() { pump.withLock { $0?.interruptMonitor() } }

    /// Whether this engine holds `reqid` (claimed from the namespace and not given back).
    public func holdsReqid(_ reqid: UInt32) -> Bool { reqids.heldReqids.contains(reqid) }

    /// The names an endpoint holds (for inspection and tests).
    public func peerTargetNames(_ fd: CInt) -> [XFRMAddress?: String] {
        guard let cookie = SocketInspector.cookie(of: fd) else { return [:] }
        return table.endpoint(cookie: cookie)?.peerTargetNames ?? [:]
    }

    // MARK: - Connect

    /// Connects `fd` to `peer`, first making sure IPsec protects the flow: the keying backend negotiates (at most
    /// the configured timeout), then `connect()` runs. A plain `connect()` on a secured socket without SAs gets
    /// `EAGAIN` from the kernel; this is the call that waits. With `ALLOW_INSECURE` a failed negotiation falls
    /// back to clear text. The negotiation is bounded by `timeout`; the TCP handshake after it by what is left
    /// of that, or at least by `timeout` again (at most 10 s) when the negotiation used it up.
    public func connect(_ fd: CInt, to peer: SocketEndpointAddress, timeout: Double? = nil) throws(SecureSocketError) {
        try connect(fd, to: peer, timeout: timeout, cancelled: nil)
    }

    func connect(
        _ fd: CInt, to peer: SocketEndpointAddress, timeout: Double?,
        cancelled: CancelFlag?
    ) throws(SecureSocketError) {
        let facts = try inspect(fd)
        try requireInetStreamOrDatagram(facts)
        guard !facts.isConnected || facts.kind == .datagram else {
            throw SecureSocketError(.isConnected, "already connected")
        }
        let timeout = timeout ?? configuration.negotiationTimeout
        guard let endpoint = table.endpoint(cookie: facts.cookie), let reqid = endpoint.reqid else {
            return try plainConnect(fd, peer, deadline: monotonicNow() + timeout, cancelled: cancelled)
        }
        if facts.family == .inet6 && peer.isV4Mapped {
            // The kernel skips an AF_INET6 socket policy for v4-mapped flows: that would be clear text.
            throw SecureSocketError(
                .addressFamilyNotSupported,
                "a secured IPv6 socket cannot reach the IPv4-mapped peer \(peer): use an AF_INET socket")
        }
        let deadline = monotonicNow() + timeout
        try becomeInitiator(endpoint)
        table.update(cookie: facts.cookie) { $0.peer = peer.address }
        _ = table.handle(.negotiationStarted, cookie: facts.cookie)
        if let keying, var request = keyings.request(cookie: facts.cookie) {
            request.requiredPeerIdentity = endpoint.peerTargetName(for: peer.address).map {
                SocketPeerTargetName(name: $0).identity(raw: endpoint.peerNameIsRaw)
            }
            do {
                // The flow's own SAs: the local port must be known first (an unbound socket is bound now, as
                // connect() would, to an ephemeral port).
                let local = try boundLocal(fd, facts: facts)
                let flow = KeyedFlow(
                    transportProtocol: facts.kind == .stream ? .tcp : .udp, local: local.address,
                    localPort: local.port, remote: peer.address, remotePort: peer.port)
                let negotiated = try keying.negotiate(request, flow: flow, timeout: Self.duration(seconds: timeout))
                logSecured(fd, reqid: reqid, flow: flow, negotiated.protection, how: "WSAConnect")
                keyings.add(negotiated.registration, cookie: facts.cookie)
                _ = table.handle(.childUp(Self.info(negotiated.protection)), cookie: facts.cookie)
            } catch let error as SecureSocketError {
                throw error
            } catch let error as KeyingError {
                let failure = Self.failure(error, expected: request.requiredPeerIdentity, timeout: timeout)
                _ = table.handle(.failed(failure), cookie: facts.cookie)
                let metadata: Logger.Metadata = [
                    "fd": "\(fd)", "reqid": "\(reqid)", "peer": "\(peer)",
                    "required-identity": "\(request.requiredPeerIdentity ?? "any")",
                    "reason": "\(failure)",
                ]
                guard endpoint.machine.allowInsecure else {
                    logger.notice("connection refused: no SAs for the flow", metadata: metadata)
                    throw SecureSocketError(Self.code(for: error), "\(failure)")
                }
                logger.warning("connection falls back to clear text (ALLOW_INSECURE)", metadata: metadata)
                _ = table.handle(.fellBackToClear, cookie: facts.cookie)
            } catch {
                throw SecureSocketError(.systemCallFailure, "\(error)")
            }
        }
        snapshotDirty.store(true, ordering: .releasing)
        if cancelled?.isSet == true { throw SecureSocketError(.interrupted, "the connecting task was cancelled") }
        defer { recordFlow(fd, cookie: facts.cookie) }
        // The handshake has a bound of its own (a fallback to clear text comes after a negotiation that may
        // have used the whole first one).
        try plainConnect(
            fd, peer, deadline: max(deadline, monotonicNow() + min(timeout, 10)),
            cancelled: cancelled)
    }

    /// The socket's local address and port, binding an unbound socket to the wildcard address and an
    /// ephemeral port first (what `connect()` would do), so the flow's traffic selectors can name the port.
    private func boundLocal(_ fd: CInt, facts: SocketFacts, preferring port: UInt16 = 0) throws(SecureSocketError)
        -> SocketEndpointAddress
    {
        if let local = facts.local, local.port != 0 { return local }
        if port != 0,
            SocketEndpointAddress(address: .any(facts.family), port: port).withSockaddr({ Glibc.bind(fd, $0, $1) })
                == 0,
            let local = try inspect(fd).local, local.port != 0
        {
            return local
        }
        let any = SocketEndpointAddress(address: .any(facts.family), port: 0)
        guard any.withSockaddr({ Glibc.bind(fd, $0, $1) }) == 0 else {
            let error = Errno(rawValue: errno)
            throw SecureSocketError(SecureSocketError.Code(errno: error), "binding to an ephemeral port", errno: error)
        }
        guard let local = try inspect(fd).local, local.port != 0 else {
            throw SecureSocketError(.systemCallFailure, "no local port after bind")
        }
        return local
    }

    /// Marks the endpoint as one that initiates. A UDP socket that was answering peers on its port stops: its
    /// reqid must be in no responder config once it sends to peers of its own choosing.
    func becomeInitiator(_ endpoint: Endpoint) throws(SecureSocketError) {
        guard endpoint.role != .initiator else { return }
        if case .responder = endpoint.role {
            for registration in keyings.take(cookie: endpoint.cookie, where: { _ in true }) {
                keying?.release(registration)
            }
        }
        table.update(cookie: endpoint.cookie) { $0.role = .initiator }
    }

    static func duration(seconds: Double) -> Duration { .milliseconds(Int64(max(0, seconds) * 1000)) }

    /// `connect()` bounded by `deadline`, the TCP handshake included: a blocking socket is switched to
    /// non-blocking for the call and waited on with `poll` (a blocking `connect()` to a silent peer would wait for
    /// TCP's SYN retries, about two minutes), then switched back.
    private func plainConnect(
        _ fd: CInt, _ peer: SocketEndpointAddress, deadline: Double,
        cancelled: CancelFlag?
    ) throws(SecureSocketError) {
        let flags = fcntl(fd, F_GETFL)
        let nonBlocking = flags >= 0 && flags & O_NONBLOCK != 0
        let bounded = !nonBlocking && flags >= 0 && fcntl(fd, F_SETFL, flags | O_NONBLOCK) == 0
        defer { if bounded { _ = fcntl(fd, F_SETFL, flags) } }
        var attempts = 0
        while true {
            attempts += 1
            if cancelled?.isSet == true { throw SecureSocketError(.interrupted, "the connecting task was cancelled") }
            let rc = peer.withSockaddr { Glibc.connect(fd, $0, $1) }
            if rc == 0 { return }
            let error = Errno(rawValue: errno)
            switch error {
            case .interrupted:
                continue
            case .resourceTemporarilyUnavailable:
                // No SA for the flow yet (the kernel answers at once, whatever xfrm_larval_drop says).
                guard monotonicNow() < deadline, attempts < 100_000 else {
                    throw SecureSocketError(
                        .timedOut, "no IPsec SA for \(peer) before the deadline (\(attempts) connect attempts)",
                        errno: error)
                }
                usleep(5_000)
            case .nowInProgress where bounded, .alreadyInProcess where bounded:
                return try awaitHandshake(fd, peer, deadline: deadline, cancelled: cancelled)
            case .nowInProgress where nonBlocking, .alreadyInProcess where nonBlocking:
                throw SecureSocketError(.wouldBlock, "non-blocking connect in progress", errno: error)
            default:
                throw SecureSocketError(SecureSocketError.Code(errno: error), "connect to \(peer)", errno: error)
            }
        }
    }

    /// Waits for a non-blocking `connect()` to complete, at most until `deadline` (polling in slices so that
    /// cancellation is seen), and reports its outcome from `SO_ERROR`.
    private func awaitHandshake(
        _ fd: CInt, _ peer: SocketEndpointAddress, deadline: Double,
        cancelled: CancelFlag?
    ) throws(SecureSocketError) {
        while true {
            if cancelled?.isSet == true { throw SecureSocketError(.interrupted, "the connecting task was cancelled") }
            let left = deadline - monotonicNow()
            guard left > 0 else {
                throw SecureSocketError(
                    .timedOut, "the TCP handshake with \(peer) did not complete before the deadline")
            }
            var pfd = pollfd(fd: fd, events: Int16(POLLOUT), revents: 0)
            let ready = poll(&pfd, 1, Int32(min(left, 0.1) * 1000) + 1)
            if ready < 0 && errno != EINTR {
                let error = Errno(rawValue: errno)
                throw SecureSocketError(SecureSocketError.Code(errno: error), "poll", errno: error)
            }
            guard ready > 0 else { continue }
            var soError: CInt = 0
            var length = socklen_t(MemoryLayout<CInt>.size)
            getsockopt(fd, SOL_SOCKET, SO_ERROR, &soError, &length)
            guard soError != 0 else { return }
            let error = Errno(rawValue: soError)
            throw SecureSocketError(SecureSocketError.Code(errno: error), "connect to \(peer)", errno: error)
        }
    }

    // MARK: - Query

    /// What protects `fd`'s traffic, asked from the kernel (the SAs with the socket's reqid for its addresses),
    /// never assumed.
    public func query(_ fd: CInt, _ template: SocketSecurityQueryTemplate? = nil) throws(SecureSocketError)
        -> SocketSecurityQueryInfo
    {
        let facts = try inspect(fd)
        try requireInetStreamOrDatagram(facts)
        let peer: SocketEndpointAddress
        if facts.kind == .stream {
            var soError: CInt = 0
            var length = socklen_t(MemoryLayout<CInt>.size)
            if getsockopt(fd, SOL_SOCKET, SO_ERROR, &soError, &length) == 0, soError == ECONNRESET {
                throw SecureSocketError(.connectionReset, "the connection was reset by the peer")
            }
            guard let connected = facts.peer else {
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
        guard let endpoint = endpoint(for: fd, facts: facts) else { return info }
        if case .failed(let failure) = endpoint.state { info.negotiationError = Self.win32Error(failure) }
        if case .insecure(let failure) = endpoint.state {
            info.negotiationError = Self.win32Error(failure)
            return info // opened in clear: stays clear for its whole life
        }
        guard let reqid = endpoint.reqid, let local = facts.local else { return info }
        let flow = KeyedFlow(
            transportProtocol: facts.kind == .stream ? .tcp : .udp, local: local.address,
            localPort: local.port, remote: peer.address, remotePort: peer.port)
        var found: FlowAttribution?
        // The SA pair charon reported for this very flow, checked in the kernel by SPI (O(1)); else a dump of
        // the SAs between the two hosts.
        if let hint = keying?.protection(flow: flow), let spiIn = hint.inboundSPI, let spiOut = hint.outboundSPI {
            found = FlowAttribution.known(in: xfrm, flow: flow, reqid: reqid, inboundSPI: spiIn, outboundSPI: spiOut)
        }
        if found == nil {
            do {
                // Only this flow's own SAs count; a socket that may run in clear must not borrow another
                // connection's SAs between the same hosts as proof.
                found = try FlowAttribution.find(
                    in: xfrm, flow: flow, reqid: reqid, exactOnly: endpoint.machine.allowInsecure)
            } catch {
                throw SecureSocketError(.systemCallFailure, "reading SAs: \(error)", errno: error.errno)
            }
        }
        guard let found else { return info }
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
            keyings.setOwnChild(cookie: endpoint.cookie, spi: into.id.spi, peer: peer.address)
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
            !{ if case .secured = endpoint.state { true } else { false } }()
        {
            table.update(cookie: endpoint.cookie) { $0.peer = peer.address }
            _ = table.handle(
                .childUp(
                    ProtectionInfo(
                        ikeSAID: info.ikeSAID == 0 ? nil : info.ikeSAID,
                        childSAID: info.childSAID == 0 ? nil : info.childSAID,
                        peerIdentity: info.peerMachineIdentity,
                        peerUserIdentity: info.peerUserIdentity,
                        encryptionAlgorithm: info.encryptionAlgorithm)),
                cookie: endpoint.cookie)
        }
        snapshotDirty.store(true, ordering: .releasing)
        if let mask = template?.peerTokenAccessMask, mask != 0, info.flags.contains(.secured) {
            if let machine = info.peerMachineIdentity {
                info.peerMachineToken =
                    tokens.open(.machine, identity: machine, accessMask: mask, peer: info.peer).handle
            }
            if let user = info.peerUserIdentity {
                info.peerApplicationToken = tokens.open(.user, identity: user, accessMask: mask, peer: info.peer).handle
            }
        }
        return info
    }

    /// The endpoint for `fd`: registered, or an accepted socket that inherited a registered listener's
    /// policies (same family, same local port); the latter is registered on first sight.
    func endpoint(for fd: CInt, facts: SocketFacts) -> Endpoint? {
        if let endpoint = table.endpoint(cookie: facts.cookie) { return endpoint }
        guard facts.kind == .stream, facts.isConnected, let port = facts.local?.port else { return nil }
        for candidate in table.all where candidate.kind == .stream && candidate.family == facts.family {
            guard SocketInspector.cookie(of: candidate.descriptor) == candidate.cookie,
                let listener = try? SocketInspector.facts(of: candidate.descriptor),
                listener.isListening, listener.local?.port == port
            else { continue }
            adopt(fd, facts: facts, listener: candidate, port: port)
            return table.endpoint(cookie: facts.cookie)
        }
        return nil
    }

    // MARK: - Release

    /// Forgets `fd`'s endpoint and frees what it held (reqid, keying configs) once no other endpoint (an
    /// accepted child of a listener) uses them. Call before `close()`; ``sweep()`` catches sockets closed without it.
    public func release(_ fd: CInt) {
        guard let facts = try? SocketInspector.facts(of: fd) else { return }
        // An accepted connection the application never queried is registered now, so its own SAs go too.
        _ = endpoint(for: fd, facts: facts)
        release(cookie: facts.cookie)
    }

    /// The decision "secured", with what proves it.
    func logSecured(_ fd: CInt, reqid: UInt32, flow: KeyedFlow, _ protection: KeyedProtection, how: String) {
        logger.info(
            "connection secured",
            metadata: [
                "fd": "\(fd)", "reqid": "\(reqid)", "flow": "\(flow)",
                "peer-identity": "\(protection.remoteIdentity ?? "?")",
                "peer-user": "\(protection.remoteUserIdentity ?? "none")",
                "spi-in": "\(protection.inboundSPI.map { String($0, radix: 16) } ?? "?")",
                "spi-out": "\(protection.outboundSPI.map { String($0, radix: 16) } ?? "?")",
                "ike-sa": "\(protection.ikeSAID.map(String.init) ?? "?")", "via": "\(how)",
            ])
    }

    func release(cookie: UInt64) {
        let wasSecured = { if case .secured? = table.endpoint(cookie: cookie)?.state { true } else { false } }()
        _ = table.handle(.closed, cookie: cookie)
        guard let endpoint = table.remove(cookie: cookie) else { return }
        logger.debug(
            "socket released",
            metadata: ["cookie": "\(cookie)", "reqid": "\(endpoint.reqid.map(String.init) ?? "none")"])
        snapshotDirty.store(true, ordering: .releasing)
        // Exactly what the socket owned: its negotiated flows or its listen, or an accepted connection's own
        // CHILD_SA. Never an IKE SA other connections use.
        if let entry = keyings.remove(cookie: cookie) {
            if endpoint.kind == .stream, wasSecured, let reqid = endpoint.reqid, let flow = entry.flow {
                // (An initiator's cover was installed when it connected; an accepted connection's now.)
                coverFlow(flow, reqid: reqid, for: Self.closedFlowCover)
            }
            for registration in entry.registrations { keying?.release(registration) }
            if let own = entry.ownChild ?? ownChild(of: endpoint, flow: entry.flow) {
                keying?.releaseChild(inboundSPI: own.spi, peer: own.peer)
            }
        }
        guard let reqid = endpoint.reqid, table.users(of: reqid) == 0 else { return }
        reqids.release(reqid)
    }

    /// Notes a connected socket's flow and covers it (see ``coverFlow(_:reqid:for:)``), so that its
    /// `TIME_WAIT` is covered even after the socket is gone.
    func recordFlow(_ fd: CInt, cookie: UInt64) {
        guard let facts = try? SocketInspector.facts(of: fd), facts.kind == .stream, let local = facts.local,
            let peer = facts.peer, let endpoint = table.endpoint(cookie: cookie), let reqid = endpoint.reqid
        else { return }
        let flow = KeyedFlow(
            transportProtocol: .tcp, local: local.address, localPort: local.port,
            remote: peer.address, remotePort: peer.port)
        keyings.setFlow(cookie: cookie, flow: flow)
        if case .secured = endpoint.state { coverFlow(flow, reqid: reqid, for: nil) }
    }

    /// The SAs (by SPI) of each connection a listener accepted, as the kernel reported them, and the reqid; the
    /// flow is covered while it has any, and for ``closedFlowCover`` after the last is gone (a rekey adds before it
    /// deletes).
    private let acceptedFlows = Mutex<[KeyedFlow: (reqid: UInt32, spis: Set<UInt32>)]>([:])

    /// Takes every tracked accepted flow (at shutdown).
    private func acceptedFlowReqids() -> [(KeyedFlow, UInt32)] {
        acceptedFlows.withLock { flows in
            defer { flows = [:] }
            return flows.map { ($0.key, $0.value.reqid) }
        }
    }

    /// A listener's connection got (`installed`) or lost an SA: the server's side of ``coverFlow(_:reqid:for:)``,
    /// from the moment its SAs exist, whether or not the application ever hands the accepted socket to the
    /// library (a server that closes first is the side in `TIME_WAIT`).
    func acceptedFlowSA(_ flow: KeyedFlow, reqid: UInt32, spi: UInt32, installed: Bool) {
        let change = acceptedFlows.withLock { flows -> Bool? in
            if installed {
                let first = flows[flow] == nil
                flows[flow, default: (reqid, [])].spis.insert(spi)
                return first ? true : nil
            }
            guard flows[flow]?.spis.remove(spi) != nil else { return nil }
            guard flows[flow]?.spis.isEmpty == true else { return nil }
            flows[flow] = nil
            return false
        }
        switch change {
        case true?: coverFlow(flow, reqid: reqid, for: nil)
        case false?: coverFlow(flow, reqid: reqid, for: Self.closedFlowCover)
        case nil: return
        }
    }

    /// How long a released TCP flow stays covered: `TIME_WAIT` (60 s) and a margin.
    static let closedFlowCover: UInt64 = 120

    /// The kernel answers for a TCP flow from its own control socket, which carries no per-socket policy: the
    /// bare ACKs of `TIME_WAIT` and RSTs would leave in clear, and a clear segment of the flow would reach a
    /// `TIME_WAIT` socket. Two flow-exact global policies (out and in) with the socket's own template (ESP,
    /// transport, its reqid, required) cover the flow: while the SAs exist those packets go under them, after
    /// they are gone they cannot leave at all. The socket's own packets still use its own policy (a per-socket
    /// policy is looked up first). Installed when the connection is secured; at release they are replaced by
    /// ones the kernel removes itself once `TIME_WAIT` has ended (hard add-expiry, `seconds`).
    private func coverFlow(_ flow: KeyedFlow, reqid: UInt32, for seconds: UInt64?) {
        var lifetime = XFRMLifetime.infinite
        if let seconds { lifetime.hardAddExpiresSeconds = seconds }
        let templates = [XFRMTemplate(proto: .esp, mode: .transport, reqid: reqid, level: .required)]
        for outbound in [true, false] {
            let policy = XFRMPolicy(
                selector: flow.selector(outbound: outbound), direction: outbound ? .outbound : .inbound,
                lifetime: lifetime, templates: templates)
            do { try xfrm.addPolicy(policy) } catch { try? xfrm.updatePolicy(policy) }
        }
    }

    /// An accepted connection's own CHILD_SA: the SA pair whose selectors are exactly its flow.
    private func ownChild(of endpoint: Endpoint, flow: KeyedFlow?) -> (spi: UInt32, peer: XFRMAddress)? {
        guard endpoint.role == .accepted, let flow, let reqid = endpoint.reqid,
            let found = try? FlowAttribution.find(in: xfrm, flow: flow, reqid: reqid, exactOnly: true)
        else { return nil }
        return (found.inbound.id.spi, flow.remote)
    }

    // MARK: - Roles

    /// Looks at sockets that are secured but neither listening nor connecting yet: a listening TCP socket (or
    /// a bound, unconnected UDP socket that never initiated) becomes a responder, its reqid offered for flows
    /// to its port; a socket found connected (a plain `connect()`) is an initiator. Returns whether young
    /// undetermined sockets remain, so the caller looks again soon. O(undetermined endpoints).
    @discardableResult
    func settleRoles() -> Bool {
        var young = false
        let now = monotonicNow()
        for endpoint in table.all where endpoint.role == .undetermined && endpoint.reqid != nil {
            guard SocketInspector.cookie(of: endpoint.descriptor) == endpoint.cookie,
                let facts = try? SocketInspector.facts(of: endpoint.descriptor)
            else { continue }
            if facts.isConnected {
                table.update(cookie: endpoint.cookie) { $0.role = .initiator }
            } else if let port = facts.local?.port, port != 0,
                facts.isListening || (facts.kind == .datagram)
            {
                becomeResponder(endpoint, port: port)
            } else if now - endpoint.registeredAt < 5 {
                young = true
            }
        }
        return young
    }

    private func becomeResponder(_ endpoint: Endpoint, port: UInt16) {
        guard let keying, let request = keyings.request(cookie: endpoint.cookie) else { return }
        // Claimed first, so a concurrent connect sees the role and the listen is not loaded twice.
        let claimed =
            table.update(cookie: endpoint.cookie) { e -> Bool in
                guard e.role == .undetermined else { return false }
                e.role = .responder(port: port)
                return true
            } ?? false
        guard claimed else { return }
        do {
            let registration = try keying.listen(request, localPort: port)
            keyings.add(registration, cookie: endpoint.cookie)
        } catch {
            _ = table.handle(.failed(Self.failure(error, expected: nil, timeout: 0)), cookie: endpoint.cookie)
        }
    }

    /// The kernel's ACQUIRE for a flow of a secured socket that sent without `WSAConnect` (a plain
    /// `connect()` or `sendto()` got EAGAIN): negotiates that flow's SAs with the peer target name set for
    /// its peer, on a thread of its own (bounded), so the application's retry succeeds. Responders' and
    /// accepted sockets' reqids never initiate (their peers do).
    func answerAcquire(reqid: UInt32, flow: KeyedFlow) {
        guard let keying,
            let endpoint = table.endpoints(reqid: reqid).first(where: {
                $0.role == .initiator || $0.role == .undetermined || ($0.kind == .datagram && $0.role.isResponder)
            }),
            var request = keyings.request(cookie: endpoint.cookie)
        else { return }
        guard (try? becomeInitiator(endpoint)) != nil else { return }
        var flow = flow
        var stale = false
        if endpoint.kind == .stream {
            guard SocketInspector.cookie(of: endpoint.descriptor) == endpoint.cookie,
                let facts = try? SocketInspector.facts(of: endpoint.descriptor)
            else { return }
            if let peer = facts.peer {
                // A live connection whose SAs went away (flushed, expired, deleted): the kernel asks again for
                // exactly its flow, and the connection gets new SAs (its segments wait, TCP retransmits).
                guard facts.local?.port == flow.localPort, peer.address == flow.remote, peer.port == flow.remotePort
                else {
                    return
                }
                stale = true
            } else {
                // A TCP connect() that failed with EAGAIN gave its ephemeral port back, and the retry takes
                // another: the flow's SAs would never match. Bind the socket to the port of the ACQUIRE (as connect
                // would have) so the application's retries use the flow negotiated now.
                guard let local = try? boundLocal(endpoint.descriptor, facts: facts, preferring: flow.localPort) else {
                    return
                }
                flow.localPort = local.port
            }
        }
        let key = "\(reqid)/\(flow)"
        guard acquires.admit(key) else { return } // the kernel raises a new ACQUIRE once the larval state expires
        request.requiredPeerIdentity = endpoint.peerTargetName(for: flow.remote).map {
            SocketPeerTargetName(name: $0).identity(raw: endpoint.peerNameIsRaw)
        }
        _ = table.handle(.negotiationStarted, cookie: endpoint.cookie)
        let timeout = configuration.negotiationTimeout
        let finalRequest = request
        let finalFlow = flow
        let hooks = AcquireHooks(engine: self)
        // charon still counts the connection's old CHILD_SA as installed and would refuse a duplicate: it goes
        // first (terminated by config name, whatever rekeys renamed its id to).
        let staleRegistrations = stale ? keyings.take(cookie: endpoint.cookie, where: { !$0.childNames.isEmpty }) : []
        Thread.detachNewThread {
            defer { hooks.done(key) }
            for registration in staleRegistrations { keying.release(registration) }
            do throws(KeyingError) {
                let negotiated = try keying.negotiate(
                    finalRequest, flow: finalFlow, timeout: Self.duration(seconds: timeout))
                hooks.succeeded(negotiated, flow: finalFlow, cookie: endpoint.cookie)
            } catch {
                hooks.failed(
                    Self.failure(error, expected: finalRequest.requiredPeerIdentity, timeout: timeout),
                    cookie: endpoint.cookie)
            }
        }
    }

    /// ACQUIREs being answered, by reqid and flow (at most a few at once).
    let acquires = InFlightSet(limit: 8)

    struct AcquireHooks: @unchecked Sendable {
        weak var engine: SecureSocketEngine?
        func done(_ key: String) { engine?.acquires.remove(key) }
        func succeeded(_ negotiated: Negotiated, flow: KeyedFlow, cookie: UInt64) {
            guard let engine else { return }
            if let endpoint = engine.table.endpoint(cookie: cookie) {
                engine.logSecured(
                    endpoint.descriptor, reqid: endpoint.reqid ?? 0, flow: flow, negotiated.protection,
                    how: "kernel ACQUIRE")
            }
            guard let endpoint = engine.table.endpoint(cookie: cookie) else {
                engine.keying?.release(negotiated.registration) // closed meanwhile
                return
            }
            engine.keyings.add(negotiated.registration, cookie: cookie)
            if endpoint.kind == .stream {
                engine.keyings.setFlow(cookie: cookie, flow: flow)
                if let reqid = endpoint.reqid { engine.coverFlow(flow, reqid: reqid, for: nil) }
            }
            _ = engine.table.handle(.childUp(SecureSocketEngine.info(negotiated.protection)), cookie: cookie)
        }
        func failed(_ failure: EndpointFailure, cookie: UInt64) {
            guard let engine else { return }
            engine.logger.notice(
                "kernel ACQUIRE not satisfied: no SAs for the flow",
                metadata: [
                    "cookie": "\(cookie)", "reason": "\(failure)",
                ])
            _ = engine.table.handle(.failed(failure), cookie: cookie)
        }
    }

    /// How long a socket closed without ``release(_:)`` keeps its keying (seconds), so that its last segments and
    /// FIN still find their SAs. The explicit ``release(_:)`` does not wait.
    public var closeGrace: Double { configuration.closeGrace }

    /// Releases endpoints whose socket is gone, and notes the local port of the live ones. O(endpoints); the
    /// event pump runs it every second. A socket is gone when no descriptor of this process names its cookie:
    /// when its registered descriptor no longer does (closed, perhaps after a `dup`), the process's descriptors
    /// are searched for it once per sweep, and a duplicate found becomes the registered descriptor. (A socket
    /// passed to another process with `SCM_RIGHTS` and closed here counts as gone.)
    ///
    /// A listener that is closed while connections it accepted are still open keeps its reqid and keying: the
    /// accepted sockets (found among this process's descriptors by local port) are adopted as endpoints first,
    /// so their SAs are not torn down under them.
    @discardableResult
    public func sweep() -> Int {
        // What the sweep changed is published with the pump's next tick (at most once a second).
        defer { snapshotDirty.store(true, ordering: .releasing) }
        var released = 0
        let now = monotonicNow()
        if sweeps.add(1, ordering: .relaxed).newValue % 10 == 0 { reclaimDeadProcesses() }
        var descriptors: [UInt64: CInt]?
        for var endpoint in table.all {
            if SocketInspector.cookie(of: endpoint.descriptor) != endpoint.cookie {
                if descriptors == nil { descriptors = SocketInspector.descriptorsByCookie() }
                if let moved = descriptors?[endpoint.cookie] {
                    table.update(cookie: endpoint.cookie) {
                        $0.descriptor = moved
                        $0.goneSince = nil
                    }
                    endpoint.descriptor = moved
                }
            }
            if SocketInspector.cookie(of: endpoint.descriptor) == endpoint.cookie {
                if let facts = try? SocketInspector.facts(of: endpoint.descriptor) {
                    table.update(cookie: endpoint.cookie) {
                        $0.lastLocalPort = facts.local?.port
                        $0.wasListening = facts.isListening
                    }
                }
                continue
            }
            // Gone: give the kernel's socket a moment to finish (its FIN or last data still need the SAs)
            // before the keying is torn down. A listener's accepted sockets are adopted at once.
            if endpoint.wasListening, let port = endpoint.lastLocalPort, port != 0 {
                adoptAcceptedSockets(of: endpoint, port: port)
            }
            guard let since = endpoint.goneSince else {
                table.update(cookie: endpoint.cookie) { $0.goneSince = now }
                if closeGrace > 0 { continue }
                release(cookie: endpoint.cookie)
                released += 1
                continue
            }
            guard now - since >= closeGrace else { continue }
            release(cookie: endpoint.cookie)
            released += 1
        }
        // An idle engine keeps no reqid claim in the namespace.
        if table.count == 0 { reqids.releaseIfUnused() }
        return released
    }

    /// Something an inspector would show changed: the event pump publishes within its next tick.
    let snapshotDirty = Atomic<Bool>(false)

    /// Publishes the snapshot if something changed since the last time and the last publication is at least
    /// ``publishInterval`` old (the event pump calls it each tick).
    func publishIfDirty() {
        let now = monotonicNow()
        guard lastPublished.withLock({ now - $0 >= Self.publishInterval }),
            snapshotDirty.exchange(false, ordering: .acquiringAndReleasing)
        else { return }
        lastPublished.withLock { $0 = now }
        publish()
    }

    private let sweeps = Atomic<Int>(0)

    /// What processes that are gone (killed, crashed) left in this namespace: their reqid claims, their configs,
    /// secrets and CHILD_SAs in a shared charon, their SAs in the kernel, their endpoint snapshots. Run when the
    /// engine starts and every tenth sweep. O(claim files) when nobody died.
    func reclaimDeadProcesses() {
        let dead = reqids.reclaimDeadBlocks()
        guard !dead.isEmpty else { return }
        for (pid, claims) in Dictionary(grouping: dead, by: \.pid) {
            let ranges = claims.map(\.reqids)
            logger.notice("reclaiming what a dead process left", metadata: ["pid": "\(pid)", "reqids": "\(ranges)"])
            keying?.reclaim(deadProcess: pid, reqids: ranges)
            let orphans = ((try? xfrm.states()) ?? []).filter { state in ranges.contains { $0.contains(state.reqid) } }
            try? xfrm.deleteStates(orphans.map(\.id))
            // Its flows' covers (global policies with its reqids, see coverFlow) end with it.
            let covers = ((try? xfrm.policies()) ?? []).filter { policy in
                !policy.direction.isSocketPolicy
                    && policy.templates.contains { template in ranges.contains { $0.contains(template.reqid) } }
            }
            try? xfrm.deletePolicies(covers.map { .selector($0.selector, $0.direction, mark: $0.mark) })
            let snapshots = EndpointSnapshot.folder(forReqidDirectory: reqids.directory)
            for file in (try? FileManager.default.contentsOfDirectory(atPath: snapshots)) ?? []
            where file.hasPrefix("\(pid)-") {
                unlink("\(snapshots)/\(file)")
            }
        }
    }

    /// Writes this process's endpoint snapshot if it changed (for `wss-inspect`). Atomic rename; best effort.
    public func publish() {
        guard let (json, hash) = EndpointSnapshot.encode(table, keying: keying?.name ?? "none") else { return }
        let changed = published.withLock { last -> Bool in
            guard last != hash else { return false }
            last = hash
            return true
        }
        guard changed else { return }
        try? Data(json).write(to: URL(fileURLWithPath: snapshotFile), options: .atomic)
    }

    /// Registers this process's connected TCP sockets on `port` as children of a (closed) listener endpoint.
    private func adoptAcceptedSockets(of listener: Endpoint, port: UInt16) {
        guard let entries = try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd") else { return }
        for entry in entries.prefix(65_536) {
            guard let fd = CInt(entry), let facts = try? SocketInspector.facts(of: fd), facts.kind == .stream,
                facts.isConnected, facts.local?.port == port, facts.family == listener.family,
                table.endpoint(cookie: facts.cookie) == nil
            else { continue }
            adopt(fd, facts: facts, listener: listener, port: port)
        }
    }

    /// Registers an accepted connection of `listener`: same reqid and settings, role `accepted`.
    private func adopt(_ fd: CInt, facts: SocketFacts, listener: Endpoint, port: UInt16) {
        var child = Endpoint(
            cookie: facts.cookie, descriptor: fd, family: facts.family, kind: .stream,
            reqid: listener.reqid, allowInsecure: listener.machine.allowInsecure,
            summary: listener.summary + " (accepted)")
        child.peerTargetNames = listener.peerTargetNames
        child.peerNameIsRaw = listener.peerNameIsRaw
        child.lastLocalPort = port
        child.peer = facts.peer?.address
        child.role = .accepted
        child.registeredAt = monotonicNow()
        guard (try? table.insert(child)) != nil else { return }
        if let request = keyings.request(cookie: listener.cookie) {
            keyings.register(cookie: facts.cookie, request: request)
            if let local = facts.local, let peer = facts.peer {
                keyings.setFlow(
                    cookie: facts.cookie,
                    flow: KeyedFlow(
                        transportProtocol: .tcp, local: local.address, localPort: local.port, remote: peer.address,
                        remotePort: peer.port))
            }
        }
    }

    deinit {
        guard getpid() == owner else { return }
        pump.withLock { $0?.stop() }
        unlink(snapshotFile)
        for endpoint in table.all { release(cookie: endpoint.cookie) }
        reqids.releaseAll()
    }

    // MARK: - Helpers

    func inspect(_ fd: CInt, expectingUnbound: Bool = false) throws(SecureSocketError) -> SocketFacts {
        do {
            return try expectingUnbound ? SocketInspector.factsExpectingUnbound(of: fd) : SocketInspector.facts(of: fd)
        } catch {
            throw SecureSocketError(.notSocket, "descriptor \(fd) is not a socket", errno: error)
        }
    }

    func requireInetStreamOrDatagram(_ facts: SocketFacts) throws(SecureSocketError) {
        guard facts.family == .inet || facts.family == .inet6 else {
            throw SecureSocketError(
                .invalidArgument, "only AF_INET and AF_INET6 sockets (this one is family \(facts.rawFamily))")
        }
        switch facts.kind {
        case .stream, .datagram: return
        case .other(let type):
            throw SecureSocketError(.invalidArgument, "only SOCK_STREAM and SOCK_DGRAM sockets (type \(type))")
        }
    }

    /// The user identity of the second authentication round: `user`, or `user@domain` with a domain.
    static func userIdentity(_ ipsec: IPsecSettings?) -> String? {
        guard let user = ipsec?.userName, !user.isEmpty else { return nil }
        guard let domain = ipsec?.domainName, !domain.isEmpty else { return user }
        return "\(user)@\(domain)"
    }

    static func summary(_ settings: SocketSecuritySettings) -> String {
        var words = [settings.securityProtocol == .default ? "default" : "ipsec"]
        if settings.flags.contains(.guaranteeEncryption) { words.append("guarantee-encryption") }
        if settings.flags.contains(.allowInsecure) { words.append("allow-insecure") }
        if let flags = settings.ipsec?.flags {
            if flags.contains(.skipFilterInstantiation) { words.append("skip-filter-instantiation") }
            if flags.contains(.optionalPeerNameVerification) { words.append("optional-peer-name") }
            if flags.contains(.peerNameIsRawFormat) { words.append("raw-peer-name") }
        }
        if settings.ipsec?.userName != nil { words.append("user-auth") }
        return words.joined(separator: " ")
    }

    static func info(_ p: KeyedProtection) -> ProtectionInfo {
        ProtectionInfo(
            ikeSAID: p.ikeSAID, childSAID: p.childSAID, peerIdentity: p.remoteIdentity,
            peerUserIdentity: p.remoteUserIdentity, encryptionAlgorithm: p.encryptionAlgorithm,
            integrityAlgorithm: p.integrityAlgorithm)
    }

    static func failure(_ error: KeyingError, expected: String?, timeout: Double) -> EndpointFailure {
        switch error.code {
        case .timedOut: .negotiationTimedOut(seconds: timeout)
        case .authenticationFailed:
            .peerNameMismatch(expected: expected ?? "an authenticated peer", detail: error.detail)
        case .unavailable: .keyingUnavailable(error.detail)
        case .noProposalChosen: .encryptionNotNegotiated(error.detail)
        case .rejected: .negotiationFailed(error.detail)
        }
    }

    static func code(for error: KeyingError) -> SecureSocketError.Code {
        switch error.code {
        case .timedOut: .timedOut
        case .authenticationFailed: .accessDenied
        case .unavailable: .networkUnreachable
        case .noProposalChosen, .rejected: .connectionRefused
        }
    }

    /// Win32 errors for the IPSEC2 `NegotiationWinerr` field: ERROR_IPSEC_IKE_AUTH_FAIL (13801),
    /// ERROR_IPSEC_IKE_TIMED_OUT (13805), and 13800 (the IKE status base) for other failures.
    static func win32Error(_ failure: EndpointFailure) -> UInt32 {
        switch failure {
        case .peerNameMismatch: 13801
        case .negotiationTimedOut: 13805
        default: 13800
        }
    }
}

func monotonicNow() -> Double {
    var now = timespec()
    clock_gettime(CLOCK_MONOTONIC, &now)
    return Double(now.tv_sec) + Double(now.tv_nsec) / 1e9
}

extension String {
    /// Without leading and trailing spaces, tabs, CRs and LFs (ASCII, so trimming bytes keeps whole characters).
    func trimmingWhitespace() -> String {
        let utf8 = self.utf8
        func isSpace(_ byte: UInt8) -> Bool { byte == 0x20 || byte == 0x09 || byte == 0x0A || byte == 0x0D }
        guard let first = utf8.firstIndex(where: { !isSpace($0) }) else { return "" }
        let last = utf8.lastIndex(where: { !isSpace($0) })!
        if first == utf8.startIndex && last == utf8.index(before: utf8.endIndex) { return self }
        return String(self[first...last])
    }
}
