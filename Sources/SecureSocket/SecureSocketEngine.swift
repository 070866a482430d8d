import ALE
import Foundation
import Glibc
import IPAddressing
import Impersonation
import Keying
import Logging
import Synchronization
import SystemPackage
import SystemSupport
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
        public var negotiationTimeout: Duration
        public var keying: (any KeyingBackend)?
        /// Where reqid claims are kept (one folder per network namespace; shared by every process using it).
        public var reqidDirectory: String?
        /// The network namespace of the sockets this engine serves (its XFRM client lives there).
        public var namespace: NetworkNamespace
        /// Follow the kernel's and the keying daemon's events (see `EndpointEventPump`): endpoint states stay
        /// current, and ACQUIREs for secured sockets are answered, so plain `connect()` retries succeed.
        public var followEvents: Bool
        /// How long a socket closed without `release` keeps its keying (see ``SecureSocketEngine/closeGrace``).
        public var closeGrace: Duration
        /// Who authenticated peers are on this host, for impersonation and token inspection.
        public var identityMap: IdentityMap?
        /// How long ``SecureSocketEngine/shutdown()`` (run at exit) waits for connected sockets' unsent data to
        /// leave under their SAs before releasing them.
        public var exitDrain: Duration = .seconds(5)
        /// Where the engine logs its decisions (see ``SecureSocketLogging``); the application's logging system by
        /// default, `WSS_LOG` for the process-wide engine of the Windows functions.
        public var logger = Logger(label: "wss.secure-socket")
        /// Set by the keying daemon, which secures its clients' sockets without holding them (see
        /// ``ClientSockets``); nil for an engine that secures its own process's sockets.
        public var clientSockets: (any ClientSockets)?

        public init(
            negotiationTimeout: Duration = .seconds(10), keying: (any KeyingBackend)?, reqidDirectory: String? = nil,
            namespace: NetworkNamespace = .current, followEvents: Bool = true, closeGrace: Duration = .seconds(2),
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
    public var logger: Logger { configuration.logger }
    let table = EndpointTable()
    /// Peer token handles the queries handed out.
    public let tokens = PeerTokenTable()
    let reqids: ReqidAllocator
    let xfrm: XFRMClient
    /// The descriptors clients' requests lend while they run.
    let lent = LentDescriptors()
    let pump = Mutex<EndpointEventPump?>(nil)
    /// The hash of the last snapshot's endpoints, to write only on change.
    let published = Mutex<Int?>(nil)
    /// When the pump last published: at most once per ``publishInterval``.
    let lastPublished = Mutex<ContinuousClock.Instant?>(nil)
    /// Snapshots are for inspection: one a second at most, so a burst of connections costs one publication.
    static let publishInterval: Duration = .seconds(1)
    /// Where this process's snapshot goes.
    public let snapshotFile: String
    /// Something an inspector would show changed: the event pump publishes within its next tick.
    let snapshotDirty = Atomic<Bool>(false)
    /// Wakes whoever follows the endpoints live (the keying daemon's inspectors).
    let changeSignal = ChangeSignal()
    /// When the sweep last looked at every client socket.
    let lastPresenceCheck = Mutex<ContinuousClock.Instant?>(nil)
    /// How this process's own sockets are known gone (see ``OwnSocketPresence``).
    let ownPresence = Mutex(OwnSocketPresence())
    /// How many times the sweep looked at every one of this process's own sockets.
    let ownFullLooks = Atomic<Int>(0)
    /// The last search of this process's descriptors for sockets whose registered descriptor was closed.
    let movedDescriptors = Mutex<(at: ContinuousClock.Instant?, byCookie: [UInt64: CInt])>((nil, [:]))
    /// ACQUIREs being answered, by reqid and flow (at most a few at once).
    let acquires = InFlightSet(limit: SecureSocketEngine.acquireLimit)
    /// At most this many ACQUIREs are answered at once.
    static let acquireLimit = 8
    /// Where the engine's blocking work that outlives its caller runs (an ACQUIRE's negotiation, the async API's
    /// calls): a bounded set of threads, started on demand, never the cooperative pool and never a thread per call.
    let blocking: BlockingExecutor
    /// ACQUIREs' negotiations run on a lane of their own (at most ``acquires``' limit at once), so a plain
    /// `connect()` retry or a rekey after a flush never waits behind long async calls on ``blocking``.
    let acquireLane: BlockingExecutor
    /// The SAs (by SPI) of each connection a listener accepted, as the kernel reported them, and the reqid; the
    /// flow is covered while it has any, and for ``closedFlowCover`` after the last is gone (a rekey adds before it
    /// deletes).
    let acceptedFlows = Mutex<[KeyedFlow: (reqid: UInt32, spis: Set<UInt32>)]>([:])
    /// Connections peers made children for, awaited among this process's sockets (see
    /// ``adoptAwaitedConnections()``).
    let awaitedAccepts = AwaitedAccepts(watch: SecureSocketEngine.acceptWatch)
    /// Held while an accepted connection is registered and bound (``adopt(_:facts:listener:port:)``), so that a
    /// query on another thread reads it bound and pinned, never between the two.
    let adoptions = Mutex<Void>(())
    /// The SPD policies that cover a listener's (or UDP responder's) port, by its reqid (see
    /// ``deferToSPD(_:local:)``).
    let portCovers = Mutex<[UInt32: [XFRMPolicy]]>([:])
    /// Sweeps so far: every tenth also reclaims what dead processes left.
    let sweeps = Atomic<Int>(0)
    /// Sweeps whose batched keying releases have not all been made yet (see ``batchingReleases(_:)``).
    let releasesInFlight = Atomic<Int>(0)
    /// Dead processes whose leftovers are kept while live sockets use their SAs (logged once each).
    let keptDeadOwners = Mutex<Set<Int32>>([])

    public var keying: (any KeyingBackend)? { configuration.keying }

    public init(_ configuration: Configuration) throws(SecureSocketError) {
        self.configuration = configuration
        do {
            blocking = try BlockingExecutor(
                maximumThreads: Self.blockingThreads, keepAlive: .seconds(10), capacity: 1024)
            acquireLane = try BlockingExecutor(
                maximumThreads: Self.acquireLimit, keepAlive: .seconds(10), capacity: Self.acquireLimit)
        } catch {
            throw SecureSocketError(.systemCallFailure, "blocking executor", errno: error)
        }
        do {
            reqids = try ReqidAllocator(
                directory: configuration.reqidDirectory
                    ?? ReqidAllocator.defaultDirectory(for: configuration.namespace))
        } catch {
            throw SecureSocketError(.systemCallFailure, "reqid allocator", underlying: error)
        }
        if configuration.reqidDirectory == nil {
            // Folders of namespaces deleted after their processes died: nobody in them will ever reclaim them.
            // Off the start-up path (it may read every process's descriptors).
            let own = URL(fileURLWithPath: reqids.directory).deletingLastPathComponent().path
            let logger = configuration.logger
            blocking.submit {
                for path in AbandonedNamespaceFolders.remove(keeping: own) {
                    logger.notice("removed the folder of a deleted namespace", metadata: ["path": "\(path)"])
                }
            }
        }
        let snapshots = EndpointSnapshot.folder(forReqidDirectory: reqids.directory)
        try? FileManager.default.createDirectory(
            atPath: snapshots, withIntermediateDirectories: true,
            attributes: [.posixPermissions: 0o755])
        snapshotFile = "\(snapshots)/\(getpid())-\(ObjectIdentifier(reqids).hashValue & 0xffff).json"
        do {
            xfrm = try XFRMClient(namespace: configuration.namespace)
        } catch {
            throw SecureSocketError(.systemCallFailure, "NETLINK_XFRM", errno: error.errno, underlying: error)
        }
        if configuration.followEvents, configuration.keying != nil {
            do {
                let started = try EndpointEventPump(
                    table: table, namespace: configuration.namespace,
                    engine: EngineHooks(engine: self), followsOwnSockets: configuration.clientSockets == nil,
                    logger: configuration.logger)
                pump.withLock { $0 = started }
            } catch {
                throw SecureSocketError(.systemCallFailure, "XFRM event monitor", errno: error.errno, underlying: error)
            }
        }
        let hooks = EngineHooks(engine: self)
        configuration.keying?.observe { event in
            switch event {
            case .rekeyed(let old, let replacement, let reqid, let flow):
                hooks.engine?.rekeyed(oldInboundSPI: old, replacement: replacement, reqid: reqid, flow: flow)
            case .peerChild(let reqid, let flow, let protection):
                hooks.engine?.peerChild(reqid: reqid, flow: flow, protection: protection)
            case .peerChildGone(let reqid, let flow): hooks.engine?.peerChildGone(reqid: reqid, flow: flow)
            case .ownChild(let reqid, let flow, let protection):
                hooks.engine?.ownChild(reqid: reqid, flow: flow, protection: protection)
            }
        }
        reclaimDeadProcesses()
    }

    deinit {
        guard getpid() == owner else { return }
        pump.withLock { $0?.stop() }
        unlink(snapshotFile)
        for endpoint in table.all { release(cookie: endpoint.cookie) }
        reqids.releaseAll()
    }

    /// What the event pump may ask of the engine, without keeping it alive.
    struct EngineHooks: @unchecked Sendable {
        weak var engine: SecureSocketEngine?
        func sweep() { engine?.sweep() }
        /// Returns whether young undetermined endpoints remain (the pump then looks again soon).
        func settleRoles() -> Bool {
            guard let engine else { return false }
            defer { engine.publishIfDirty() }
            for cookie in engine.table.cookiesWithPendingPins { engine.movePendingPins(cookie: cookie) }
            let awaiting = engine.adoptAwaitedConnections()
            return engine.settleRoles() || awaiting
        }
        func acquire(reqid: UInt32, flow: KeyedFlow) { engine?.answerAcquire(reqid: reqid, flow: flow) }
        func connectedFlow(_ endpoint: Endpoint) -> KeyedFlow? { engine?.connectedFlow(endpoint) }
        func apply(_ event: EndpointEvent, cookie: UInt64) { engine?.apply(event, cookie: cookie) }
        func acceptedFlowSA(_ flow: KeyedFlow, reqid: UInt32, spi: UInt32, installed: Bool) {
            engine?.acceptedFlowSA(flow, reqid: reqid, spi: spi, installed: installed)
        }
        func stateAdded(spi: UInt32) { engine?.stateAdded(spi: spi) }
        func ownSocketDestroyed(cookie: UInt64) { engine?.ownSocketDestroyed(cookie: cookie) }
        func ownSocketDestructionsLost() { engine?.ownSocketDestructionsLost() }
        func followOwnSocketDestruction(_ followed: Bool) { engine?.followOwnSocketDestruction(followed) }
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
            // The C callers see only the code: say why in the log (a refused file names itself and its rule).
            let keying: (configuration: KeyingConfiguration, backend: any KeyingBackend)?
            do throws(SecureSocketError) {
                keying = try DefaultKeying.make(logger: keyingLogger)
            } catch {
                keyingLogger.error("no engine: the keying configuration is refused", metadata: ["reason": "\(error)"])
                throw error
            }
            var map: IdentityMap?
            if FileManager.default.fileExists(atPath: IdentityMapLocation.defaultPath) {
                do {
                    map = try IdentityMap(path: IdentityMapLocation.defaultPath)
                } catch {
                    keyingLogger.error("no engine: the identity map is refused", metadata: ["reason": "\(error)"])
                    throw SecureSocketError(.invalidArgument, IdentityMapLocation.defaultPath, underlying: error)
                }
            }
            var configuration = Configuration(
                negotiationTimeout: keying?.configuration.negotiationTimeout ?? .seconds(10),
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
    let owner = getpid()

    /// How many times a process forked with this library loaded, as a child sees it (a `pthread_atfork` child
    /// handler counts; no system call per API call), and the count when this engine was made.
    static let forks = Atomic<Int>(0)
    private static let forkHandler: Void = {
        pthread_atfork(nil, nil) { SecureSocketEngine.forks.add(1, ordering: .relaxed) }
    }()
    let forkGeneration: Int = {
        SecureSocketEngine.forkHandler
        return SecureSocketEngine.forks.load(ordering: .relaxed)
    }()

    /// Every call of the API starts here: a process forked from the one that made the engine shares its netlink
    /// and VICI sockets and whatever state its locks were in at the fork, and has no event pump; it must make an
    /// engine of its own. (`WSANOTINITIALISED` through the C ABI.)
    public func requireOwner() throws(SecureSocketError) {
        guard Self.forks.load(ordering: .relaxed) == forkGeneration else {
            throw SecureSocketError(
                .notInitialised,
                "this engine belongs to process \(owner); a process forked from it needs an engine of its own")
        }
    }

    /// Releases every endpoint and stops the keying backend's private daemon, if it has one. Does nothing in a
    /// process forked from the one that made the engine.
    public func shutdown() {
        guard getpid() == owner else { return }
        pump.withLock {
            $0?.stop()
            $0 = nil
        }
        // A sweep still releasing (a departed client's connections) finishes first, bounded.
        _ = changeSignal.wait(until: Deadline(after: .seconds(15))) {
            releasesInFlight.load(ordering: .acquiring) == 0 ? () : nil
        }
        unlink(snapshotFile)
        drainSendQueues(within: configuration.exitDrain)
        for endpoint in table.all { release(cookie: endpoint.cookie) }
        // Accepted connections' covers end by themselves after TIME_WAIT (the pump that would have seen their
        // SAs go is stopped).
        for (flow, reqid) in acceptedFlowReqids() { coverFlow(flow, reqid: reqid, for: Self.closedFlowCover) }
        reqids.releaseAll()
        keying?.shutdown()
        blocking.stop()
        acquireLane.stop()
    }

    /// How many times the sweep looked at every one of this process's own sockets (inspection, tests): once
    /// per sweep unless the kernel's destroy notifications are followed, then once per
    /// ``presenceCheckInterval`` and after the kernel dropped notifications.
    public var ownSocketFullLooks: Int { ownFullLooks.load(ordering: .relaxed) }

    /// Threads of the engine's blocking executor running now (tests).
    package var blockingThreadsRunning: Int { blocking.threadsRunning }

    /// At most this many threads run the engine's blocking work at once (``blocking``); more waits its turn.
    static let blockingThreads = 16

    /// Waits (at most `bound` in all) until the connected TCP sockets have no unsent data (`SIOCOUTQ`),
    /// so what the application wrote before exiting leaves under its SAs instead of being stranded when they
    /// are released.
    func drainSendQueues(within bound: Duration) {
        let deadline = Deadline(after: bound)
        // Only descriptors that still name their socket (one closed already may have been reused).
        var pending = table.all.filter {
            $0.kind == .stream && $0.client == nil && SocketInspector.cookie(of: $0.descriptor) == $0.cookie
        }.map(\.descriptor)
        while !pending.isEmpty, !deadline.hasPassed {
            pending = pending.filter { fd in
                var queued: CInt = 0
                // SIOCOUTQ (= TIOCOUTQ, 0x5411): bytes not yet acknowledged by the peer.
                return ioctl(fd, 0x5411, &queued) == 0 && queued > 0
            }
            if !pending.isEmpty { usleep(10_000) }
        }
    }

    /// How often the event pump started its XFRM monitor again after it ended (inspection, tests).
    public var monitorRestarts: Int { pump.withLock { $0?.monitorRestarts.load(ordering: .relaxed) } ?? 0 }

    /// Ends the event pump's XFRM monitor as a kernel overrun would, to exercise its restart (tests).
    public func interruptEventMonitor() { pump.withLock { $0?.interruptMonitor() } }

    /// The endpoint of the socket `fd` names (for inspection and tests), nil if it is not secured.
    public func endpoint(_ fd: CInt) -> Endpoint? {
        SocketInspector.cookie(of: fd).flatMap { table.endpoint(cookie: $0) }
    }

    /// The endpoint of the socket with this cookie, nil if there is none.
    public func endpoint(cookie: UInt64) -> Endpoint? { table.endpoint(cookie: cookie) }

    /// Every endpoint, in no order.
    public var endpoints: [Endpoint] { table.all }

    /// How many endpoints the engine tracks.
    public var endpointCount: Int { table.count }

    /// Whether this engine holds `reqid` (claimed from the namespace and not given back).
    public func holdsReqid(_ reqid: UInt32) -> Bool { reqids.holds(reqid) }

    /// The names an endpoint holds (for inspection and tests).
    public func peerTargetNames(_ fd: CInt) -> [IPAddress?: String] {
        guard let cookie = SocketInspector.cookie(of: fd) else { return [:] }
        return table.endpoint(cookie: cookie)?.peerTargetNames ?? [:]
    }
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
