import DaemonControl
import Glibc
import IPAddressing
import Keying
import Logging
import SecureSocket
import Synchronization
import SystemPackage
import SystemSupport

/// The keying daemon of one network namespace (`wss-keyd`): the one process there that holds `CAP_NET_ADMIN`
/// for the library, owns the namespace's secure-socket state (the engine: reqids, the XFRM event listener, the
/// charon tenant, the listeners' policing) and secures sockets for the applications that ask over its control
/// socket (`ControlChannel`), each passing the socket itself. Applications need no privilege of their own.
///
/// Threads: one accepts clients, one reads each client's connection, and a fixed set (`executor`) runs the
/// requests, which block on the kernel and on charon.
public final class KeyingDaemon: Sendable {
    let engine: SecureSocketEngine
    let listener: ControlChannel
    let admission: ClientAdmission
    let logger: Logger
    let executor: BlockingExecutor
    /// Why the keying file was refused, if it was: every socket a client asks to secure gets this error.
    let keyingRefusal: SecureSocketError?
    private let sessions = Mutex<(next: UInt64, open: [UInt64: ClientSession])>((1, [:]))
    /// Who each client was, by session, for as long as an endpoint it registered remains (inspection names it).
    private let owners = Mutex<[UInt64: PeerCredentials]>([:])
    let inspector = DaemonInspection()
    private let stopped = Atomic<Bool>(false)
    /// Wakes whoever waits for the daemon to become idle: clients come and go, endpoints change (the engine's
    /// own signal, which every change of its table notifies).
    var activity: ChangeSignal { engine.endpointChanges }
    /// The most clients at once (each holds a reader thread).
    public static let maximumClients = 1024

    /// A daemon serving `engine` (made with `ClientSockets` from ``DaemonSockets``) on `listener`.
    public init(
        engine: SecureSocketEngine, listener: ControlChannel, admission: ClientAdmission, logger: Logger,
        threads: Int = 8, keyingRefusal: SecureSocketError? = nil
    ) throws(Errno) {
        self.keyingRefusal = keyingRefusal
        self.engine = engine
        self.listener = listener
        self.admission = admission
        self.logger = logger
        self.executor = try BlockingExecutor(threads: threads)
    }

    /// How many clients are connected.
    public var clientCount: Int { sessions.withLock { $0.open.count } }

    /// Whether ``stop()`` was called.
    public var isStopped: Bool { stopped.load(ordering: .acquiring) }

    /// No client connected and no socket secured (every client's sockets are gone, their SAs released, none being
    /// released).
    public var isIdle: Bool { clientCount == 0 && engine.isIdle }

    /// Accepts clients until ``stop()`` (on the calling thread; ``run()`` gives it a thread of its own).
    public func acceptClients() {
        while !stopped.load(ordering: .acquiring) {
            let channel: ControlChannel
            do {
                channel = try listener.accept()
            } catch {
                if stopped.load(ordering: .acquiring) { return }
                logger.warning("accepting a client failed", metadata: ["error": "\(error)"])
                usleep(10_000)
                continue
            }
            guard let credentials = channel.peerCredentials else { continue }
            let session = sessions.withLock { state -> ClientSession? in
                guard state.open.count < Self.maximumClients else { return nil }
                let session = ClientSession(id: state.next, channel: channel, credentials: credentials)
                state.next += 1
                state.open[session.id] = session
                return session
            }
            if let session {
                owners.withLock { $0[session.id] = credentials }
                activity.notify()
            }
            guard let session else {
                logger.warning("client refused: too many clients", metadata: ["client": "\(credentials)"])
                continue
            }
            logger.debug("client connected", metadata: ["client": "\(credentials)", "session": "\(session.id)"])
            do {
                try Threads.detach { [self] in
                    session.run(daemon: self)
                    ended(session)
                }
            } catch {
                ended(session)
            }
        }
    }

    /// Stops accepting clients and ends every client connection.
    public func stop() {
        stopped.store(true, ordering: .releasing)
        activity.notify()
        listener.shutdown()
        for session in sessions.withLock({ Array($0.open.values) }) { session.channel.shutdown() }
        executor.stop()
    }

    /// A client went away: what it held is the engine's to release as its sockets close (the kernel says when).
    private func ended(_ session: ClientSession) {
        session.closed.store(true, ordering: .releasing)
        sessions.withLock { _ = $0.open.removeValue(forKey: session.id) }
        activity.notify()
        logger.debug("client disconnected", metadata: ["client": "\(session.credentials)", "session": "\(session.id)"])
    }

    /// The endpoints `viewer` may see, with their SAs and owners: every endpoint for root, else those its own
    /// user's clients registered. Owners neither connected nor holding an endpoint are forgotten here.
    func inspectedEndpoints(for viewer: PeerCredentials) -> [InspectedEndpoint] {
        // Open sessions first, then the endpoints: a client that registers an endpoint and closes in between is
        // either still open or already referenced, so no owner of a registered endpoint is ever forgotten (its
        // rule is looked up through it).
        let open = sessions.withLock { Set($0.open.keys) }
        let endpoints = engine.endpoints
        let known = owners.withLock { owners in
            let referenced = Set(endpoints.compactMap(\.client))
            owners = owners.filter { open.contains($0.key) || referenced.contains($0.key) }
            return owners
        }
        let visible = endpoints.filter { endpoint in
            viewer.uid == 0 || endpoint.client.flatMap { known[$0] }?.uid == viewer.uid
        }
        return zip(visible, engine.report(visible)).map { endpoint, report in
            InspectedEndpoint(owner: endpoint.client.flatMap { known[$0] }, report: report)
        }
    }

    /// What limits the client with this id (its user's keying-file rule), while it is connected or an endpoint it
    /// registered remains; nil for root and the daemon's own user.
    func rule(for client: UInt64) -> ClientUserRule? {
        // An owner never forgotten while its endpoints remain; were it missing, nothing is allowed.
        guard let credentials = owners.withLock({ $0[client] }) else { return .unknownClient }
        return admission.rule(for: credentials)
    }

    /// The user id of the client with this id, while it is connected or an endpoint it registered remains.
    func uid(of client: UInt64) -> uid_t? { owners.withLock { $0[client]?.uid } }

    /// The client with this id, if still connected.
    func session(_ id: UInt64) -> ClientSession? { sessions.withLock { $0.open[id] } }

    /// Runs one request on the socket it carries and gives the answer.
    func handle(_ message: ControlMessage, socket: CInt?, session: ClientSession) -> ControlMessage {
        guard let socket else {
            return .failure(
                code: SecureSocketError.Code.invalidArgument.rawValue, errno: 0, detail: "the request needs a socket")
        }
        do throws(SecureSocketError) {
            return try engine.serving(client: session.id, socket: socket) { () throws(SecureSocketError) in
                switch message {
                case .setSecurity(let settings):
                    if let keyingRefusal { throw keyingRefusal }
                    try engine.setSecurity(socket, settings)
                    return .secured(cookie: engine.endpoint(socket)?.cookie ?? 0)
                case .resecure(let settings, let names):
                    if let keyingRefusal { throw keyingRefusal }
                    try engine.resecure(socket, settings, names: names)
                    return .secured(cookie: engine.endpoint(socket)?.cookie ?? 0)
                case .setPeerTargetName(let name):
                    try engine.setPeerTargetName(socket, name)
                    return .done
                case .deletePeerTargetName(let address):
                    try engine.deletePeerTargetName(socket, address: address)
                    return .done
                case .prepareConnect(let peer, let milliseconds):
                    // 0: the daemon's own negotiation timeout.
                    let deadline = try engine.prepareConnect(
                        socket, to: peer,
                        timeout: milliseconds == 0 ? nil : .milliseconds(Int64(min(milliseconds, 300_000))))
                    let (seconds, attoseconds) = deadline.remaining.components
                    return .connectReady(
                        handshakeMilliseconds: UInt32(clamping: seconds * 1000 + attoseconds / 1_000_000_000_000_000))
                case .query(var template):
                    // Token handles are the client's: it opens them from the identities answered.
                    template?.peerTokenAccessMask = 0
                    return .queryInfo(try engine.query(socket, template))
                case .release:
                    engine.release(socket)
                    return .done
                default:
                    throw SecureSocketError(.invalidArgument, "not a request")
                }
            }
        } catch {
            if error.code == .accessDenied {
                // What a user's rule forbade, for the administrator who wrote it.
                logger.notice(
                    "request refused", metadata: ["client": "\(session.credentials)", "reason": "\(error.detail)"])
            }
            return .failure(code: error.code.rawValue, errno: error.errno?.rawValue ?? 0, detail: error.detail)
        }
    }
}
