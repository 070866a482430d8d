import ALE
import Foundation
import Keying
import Logging
import SocketDiagnostics
import Synchronization
import SystemSupport
import XFRM

/// Feeds the ALE endpoint table from what the kernel reports, answers the kernel's ACQUIREs for secured
/// sockets, settles young sockets' roles and sweeps closed ones:
///
/// | source | event | effect |
/// |---|---|---|
/// | XFRM monitor | `ACQUIRE` with a template reqid an endpoint holds | the engine negotiates that flow (deduplicated, bounded), so a plain `connect()`/`sendto()` that got `EAGAIN` succeeds when retried |
/// | XFRM monitor | SA deleted, or hard `EXPIRE`, with an endpoint's reqid | `childDown` for the endpoints whose flow the SA's selector covers |
/// | role watch | a secured socket seen listening / connected | responder (its reqid offered for its port) / initiator |
/// | sweep (1 s) | a socket closed without release | released after the close grace period |
///
/// Each source has a thread of its own: the monitor's reader handles its events, and two timer threads run the
/// sweep and the role watch.
final class EndpointEventPump: Sendable {
    private let table: EndpointTable
    private let namespace: NetworkNamespace
    private let logger: Logger
    private let engine: SecureSocketEngine.EngineHooks
    private let monitor = Mutex<XFRMMonitor?>(nil)
    /// The kernel's socket-destroy notifications for the engine's own sockets (nil when it serves clients, whose
    /// sockets its client presence follows, or when the kernel refused them).
    private let destroyMonitor = Mutex<SocketDestroyMonitor?>(nil)
    private let stopped = Atomic<Bool>(false)
    /// Wakes the timer threads when the pump stops.
    private let wake = ChangeSignal()
    private let sweepInterval: Duration
    /// How often the XFRM monitor was started again after it ended (overrun, error).
    let monitorRestarts = Atomic<Int>(0)

    /// Starts the pump: the XFRM monitor's reader thread handles the kernel's events, one thread sweeps every
    /// `sweepInterval` and one settles young sockets' roles. Threads of their own (started through `Threads`,
    /// so never as a peer some thread impersonates), never Swift's cooperative pool: their work blocks on the
    /// kernel and on charon.
    init(
        table: EndpointTable, namespace: NetworkNamespace, engine: SecureSocketEngine.EngineHooks,
        followsOwnSockets: Bool = true, sweepInterval: Duration = .seconds(1),
        logger: Logger = Logger(label: "wss.secure-socket")
    ) throws(XFRMError) {
        self.table = table
        self.namespace = namespace
        self.logger = logger
        self.engine = engine
        self.sweepInterval = sweepInterval
        let first = try makeMonitor()
        monitor.withLock { $0 = first }
        if followsOwnSockets {
            // Sockets closed without release() are known gone when the kernel destroys them; the sweep then only
            // looks at every socket as a safety net.
            do {
                let destroyed = try SocketDestroyMonitor(namespace: namespace) { event in
                    switch event {
                    case .destroyed(let record): engine.ownSocketDestroyed(cookie: record.cookie)
                    case .eventsLost, .unreadable: engine.ownSocketDestructionsLost()
                    // The monitor's reader ended: every sweep looks at every socket from now on.
                    case .failed: engine.followOwnSocketDestruction(false)
                    }
                }
                destroyMonitor.withLock { $0 = destroyed }
                engine.followOwnSocketDestruction(true)
            } catch {
                logger.warning(
                    "socket-destroy notifications unavailable: every secured socket is looked at each second",
                    metadata: ["error": "\(error)"])
            }
        }
        do {
            // Sockets closed without release(): their endpoints, reqids and keying are freed within a second.
            try Threads.detach { [weak self] in
                Self.every({ self }, { _ in sweepInterval }) { $0.engine.sweep() }
            }
            // Young secured sockets are looked at every 10 ms until they listen or connect (a peer's IKE may
            // arrive right after listen()), older ones every 250 ms.
            try Threads.detach { [weak self] in
                Self.every(
                    { self }, nudged: { $0.roleWatchNudged.exchange(false, ordering: .acquiringAndReleasing) },
                    { young in young ? .milliseconds(10) : .milliseconds(250) }
                ) {
                    $0.engine.settleRoles()
                }
            }
        } catch {
            stop()
            throw XFRMError(.systemCall, operation: "event pump thread", errno: error)
        }
    }

    /// Runs `work` until the pump stops or is gone, pausing after each run for what `pause` makes of its result
    /// (the pump is held only during a turn, so a pump nobody else holds ends its threads).
    /// With `nudged`, a turn also starts early when it says so (it clears what it read).
    private static func every<T>(
        _ pump: () -> EndpointEventPump?, nudged: ((EndpointEventPump) -> Bool)? = nil,
        _ pause: (T) -> Duration, _ work: (EndpointEventPump) -> T
    ) {
        // Bounded by the pump's life: each turn ends at its deadline, when the pump stops, or when nudged.
        while let pump = pump(), !pump.stopped.load(ordering: .acquiring) {
            let deadline = Deadline(after: pause(work(pump)))
            _ = pump.wake.wait(until: deadline) { () -> Void? in
                if pump.stopped.load(ordering: .acquiring) { return () }
                guard let nudged else { return nil }
                return nudged(pump) ? () : nil
            }
        }
    }

    /// Set to start the role watch's next turn now (a peer's new child: its accepted connection is looked for).
    let roleWatchNudged = Atomic<Bool>(false)

    /// The role watch looks now instead of at its next turn.
    func nudgeRoleWatch() {
        roleWatchNudged.store(true, ordering: .releasing)
        wake.notify()
    }

    /// A monitor whose events this pump handles on the monitor's thread, and whose end starts the next one.
    private func makeMonitor() throws(XFRMError) -> XFRMMonitor {
        try XFRMMonitor(
            namespace: namespace, groups: [.acquire, .expire, .states],
            handle: { [weak self] event in self?.handle(event) },
            ended: { [weak self] error in self?.monitorEnded(error) })
    }

    /// The monitor ended (the kernel dropped events: the socket overran with `ENOBUFS`; an error; or an
    /// interruption): on its finishing thread, a new one is started with a bounded back-off. Queries read the
    /// kernel meanwhile, and a lost ACQUIRE comes back once its larval state expires.
    private func monitorEnded(_ error: XFRMError?) {
        var backoff = Backoff(initial: .milliseconds(50), maximum: .seconds(5))
        // Bounded by the pump's life: each turn waits its pause (at most 5 s) unless the pump stops.
        while !stopped.load(ordering: .acquiring) {
            let pause = backoff.next()
            logger.warning(
                "the XFRM event monitor ended (overrun or error): starting it again",
                metadata: [
                    "retry-in": "\(pause)", "restarts": "\(monitorRestarts.load(ordering: .relaxed))",
                    "error": "\(error.map { "\($0)" } ?? "none")",
                ])
            _ = wake.wait(until: Deadline(after: pause)) { stopped.load(ordering: .acquiring) ? () : nil }
            guard !stopped.load(ordering: .acquiring), let started = try? makeMonitor() else { continue }
            let stoppedMeanwhile = monitor.withLock { slot -> Bool in
                guard !stopped.load(ordering: .acquiring) else { return true }
                slot = started
                return false
            }
            if stoppedMeanwhile {
                started.stop()
                return
            }
            monitorRestarts.add(1, ordering: .relaxed)
            // Events were lost while no monitor listened (an overrun is exactly that): read the SAD once.
            resynchronise()
            return
        }
    }

    func stop() {
        stopped.store(true, ordering: .releasing)
        wake.notify()
        monitor.withLock {
            $0?.stop()
            $0 = nil
        }
        if let destroyed = destroyMonitor.withLock({ $0.take() }) {
            destroyed.stop()
            engine.followOwnSocketDestruction(false)
        }
    }

    /// Ends the current monitor as an overrun would (for tests of the restart).
    func interruptMonitor() { monitor.withLock { $0?.stop() } }

    deinit { stop() }

    private func handle(_ event: XFRMEvent) {
        switch event {
        case .acquire(let acquire):
            guard let reqid = acquire.templates.first?.reqid, reqid != 0, table.users(of: reqid) > 0 else { return }
            let selector = acquire.selector
            let flow = KeyedFlow(
                transportProtocol: selector.upperProtocol, local: selector.source,
                localPort: selector.sourcePort, remote: selector.destination,
                remotePort: selector.destinationPort)
            engine.acquire(reqid: reqid, flow: flow)
        case .statesFlushed:
            resynchronise()
        case .stateAdded(let state):
            guard !state.isLarval else { return }
            // A rekey's new SA a pinned connection waits for.
            engine.stateAdded(spi: state.id.spi)
            // A listener's CHILD SA for one accepted connection: its flow is covered from now on (TIME_WAIT).
            guard let (flow, reqid) = acceptedFlow(of: state) else { return }
            engine.acceptedFlowSA(flow, reqid: reqid, spi: state.id.spi, installed: true)
        case .stateDeleted(let state), .expire(let state, hard: true):
            // A larval state (a pinned template's SPI asked for again) going away changes nothing.
            guard !state.isLarval else { return }
            if state.selector.upperProtocol == .tcp {
                // Either orientation may be the tracked one (the listener itself may be gone by now).
                let s = state.selector
                for flow in [
                    KeyedFlow(
                        transportProtocol: .tcp, local: s.source, localPort: s.sourcePort,
                        remote: s.destination, remotePort: s.destinationPort),
                    KeyedFlow(
                        transportProtocol: .tcp, local: s.destination, localPort: s.destinationPort,
                        remote: s.source, remotePort: s.sourcePort),
                ] {
                    engine.acceptedFlowSA(flow, reqid: state.reqid, spi: state.id.spi, installed: false)
                }
            }
            guard table.users(of: state.reqid) > 0 else { return }
            // Only the endpoints whose own flow that SA covered (a listener's reqid is shared by all its peers).
            for endpoint in table.endpoints(reqid: state.reqid) where covers(state, endpoint) {
                engine.apply(.childDown, cookie: endpoint.cookie)
            }
        default:
            return
        }
    }

    /// Whether the SA's selector covers the endpoint's connected flow, in either direction. A socket pinned to
    /// other SAs (the old SA of a rekey it has moved from, a refused rival's child) never used this one, and one
    /// whose replacement is known (a rekey's, pending) is not lost with it.
    private func covers(_ state: XFRMState, _ endpoint: Endpoint) -> Bool {
        if let pinned = endpoint.pinned {
            let spi = state.id.spi
            let lost =
                (spi == pinned.inboundSPI && pinned.pendingInboundSPI == nil)
                || (spi == pinned.outboundSPI && pinned.pendingOutboundSPI == nil)
                || spi == pinned.pendingInboundSPI || spi == pinned.pendingOutboundSPI
            guard lost else { return false }
        }
        guard let flow = connectedFlow(endpoint) else { return false }
        return flow.isCovered(by: state.selector, outbound: true) || flow.isCovered(by: state.selector, outbound: false)
    }

    /// The flow of a flow-exact TCP SA with a secured listener's reqid, seen from this host (the listener's port is
    /// the local one), with that reqid.
    private func acceptedFlow(of state: XFRMState) -> (KeyedFlow, UInt32)? {
        let selector = state.selector
        guard selector.upperProtocol == .tcp, selector.sourcePort != 0, selector.destinationPort != 0,
            let port = table.endpoints(reqid: state.reqid).lazy.compactMap({ endpoint -> UInt16? in
                guard endpoint.kind == .stream, case .responder(let port) = endpoint.role else { return nil }
                return port
            }).first
        else { return nil }
        if selector.sourcePort == port {
            return (
                KeyedFlow(
                    transportProtocol: .tcp, local: selector.source, localPort: port, remote: selector.destination,
                    remotePort: selector.destinationPort), state.reqid
            )
        }
        if selector.destinationPort == port {
            return (
                KeyedFlow(
                    transportProtocol: .tcp, local: selector.destination, localPort: port, remote: selector.source,
                    remotePort: selector.sourcePort), state.reqid
            )
        }
        return nil
    }

    private func connectedFlow(_ endpoint: Endpoint) -> KeyedFlow? { engine.connectedFlow(endpoint) }

    /// After events may have been lost (the monitor ended and was started again) or the SAD was flushed: one
    /// dump of the kernel's SAs, and every secured connected endpoint whose outbound flow no SA with its reqid
    /// covers any more learns that its CHILD SA went down (its next packet raises an ACQUIRE, which is answered).
    func resynchronise() {
        guard let states = try? XFRMClient(namespace: namespace).states() else { return }
        let byReqid = Dictionary(grouping: states.filter { !$0.isLarval }, by: \.reqid)
        var lost = 0
        for endpoint in table.all {
            guard case .secured = endpoint.state.settled, let reqid = endpoint.reqid, let flow = connectedFlow(endpoint)
            else {
                continue
            }
            let covered = (byReqid[reqid] ?? []).contains { flow.isCovered(by: $0.selector, outbound: true) }
            if !covered {
                lost += 1
                engine.apply(.childDown, cookie: endpoint.cookie)
            }
        }
        logger.info(
            "resynchronised from the kernel's SAD",
            metadata: ["sas": "\(states.count)", "connections-without-sas": "\(lost)"])
    }
}
