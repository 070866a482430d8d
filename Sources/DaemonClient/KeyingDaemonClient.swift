import ALE
import DaemonControl
import Glibc
import IPAddressing
import Impersonation
import Logging
import SecureSocket
import Synchronization
import SystemPackage
import SystemSupport

/// The secure-socket calls carried out by the namespace's keying daemon (`wss-keyd`): each call passes its
/// socket to the daemon (`SCM_RIGHTS`), which puts the policies on it and negotiates its SAs, so this process
/// needs no `CAP_NET_ADMIN`. Impersonation and peer tokens stay in this process (its identity map, its
/// credentials). One control connection per process; a reader thread takes the daemon's answers and lends a
/// socket back when the daemon asks (a rekey moves the socket's pins).
public final class KeyingDaemonClient: SocketSecurityProvider, Sendable {
    public let tokens = PeerTokenTable()
    public let identityMap: IdentityMap?
    public let logger: Logger
    let channel: ControlChannel
    /// The daemon's process, as the kernel named it when the connection was made.
    public let daemon: PeerCredentials
    private let replies = Mutex<(next: UInt32, answers: [UInt32: ControlMessage], closed: Bool)>((1, [:], false))
    private let replySignal = ChangeSignal()
    /// Each socket secured through this client, by cookie: the descriptor number it was passed with (checked
    /// again before it is lent back), and what it was secured with (a responder is secured again with it after
    /// the daemon goes away, ``takeOver(from:)``).
    private let held = Mutex<[UInt64: HeldSocket]>([:])
    /// Run once, when the daemon's connection closes.
    private let closeHandler = Mutex<(@Sendable () -> Void)?>(nil)
    private let forkGeneration = KeyingDaemonClient.forks.load(ordering: .relaxed)

    /// How long a request other than a connect waits for its answer.
    static let requestTimeout: Duration = .seconds(15)

    /// Connects to the daemon at `name` in this network namespace. When nobody answers there, `start` (if given)
    /// starts one, and the connection is tried again for up to `startTimeout`. The daemon must run as root or as
    /// this process's user (an abstract address carries no file mode: anyone could have bound it first).
    public init(
        name: String = ControlChannel.defaultName, identityMap: IdentityMap?, logger: Logger,
        start: EmbeddedDaemon? = nil, startTimeout: Duration = .seconds(10)
    ) throws(SecureSocketError) {
        self.identityMap = identityMap
        self.logger = logger
        let channel: ControlChannel
        do {
            channel = try ControlChannel.connect(name: name)
        } catch {
            guard let start, error.errno == .connectionRefused else {
                throw SecureSocketError(
                    .networkDown, "no keying daemon answers in this network namespace (@\(name))", errno: error.errno,
                    underlying: error)
            }
            let started = try start.start()
            let deadline = Deadline(after: startTimeout)
            var connected: ControlChannel?
            var exited: Deadline?
            while connected == nil {
                connected = try? ControlChannel.connect(name: name)
                guard connected == nil else { break }
                // A daemon that exited (another one took the address first, or it could not start) leaves a
                // second for the other to answer.
                if exited == nil, !started.isRunning { exited = Deadline(after: .seconds(1)) }
                guard !deadline.hasPassed, !(exited?.hasPassed ?? false) else {
                    throw SecureSocketError(
                        .networkDown,
                        "the keying daemon started for this namespace does not answer (@\(name)); its log says why")
                }
                usleep(20_000)
            }
            channel = connected!
        }
        let daemon = try Self.believedDaemon(channel, name: name)
        self.channel = channel
        self.daemon = daemon
        do {
            try Threads.detach { [self] in self.read() }
        } catch {
            throw SecureSocketError(.systemCallFailure, "the keying daemon client's reader thread", errno: error)
        }
        let welcome = try call(
            .hello(
                minimumVersion: ControlMessage.versions.lowerBound, maximumVersion: ControlMessage.versions.upperBound),
            socket: nil, timeout: .seconds(5))
        guard case .welcome = welcome else {
            throw SecureSocketError(.systemCallFailure, "the keying daemon answered the hello with \(welcome)")
        }
    }

    deinit { channel.shutdown() }

    /// Whether the daemon's connection is still open. Once it closed (the daemon died or was stopped), every call
    /// fails: a process makes a new client, which finds (or starts) the namespace's next daemon. Sockets secured
    /// through this one keep the policies and SAs the kernel holds for them.
    public var isConnected: Bool { !replies.withLock { $0.closed } }

    /// Runs `action` once when the daemon's connection closes (at once if it already has).
    public func whenClosed(_ action: @escaping @Sendable () -> Void) {
        let now = replies.withLock { state -> Bool in
            if state.closed { return true }
            closeHandler.withLock { $0 = action }
            return false
        }
        if now { action() }
    }

    /// A socket secured through this client, and what it was secured with.
    public struct HeldSocket: Sendable {
        public var fd: CInt
        public var settings: SocketSecuritySettings
        public var names: [SocketPeerTargetName]
        /// Where `WSAConnect` connected it through this client, if it did.
        public var peer: IPEndpoint?
    }

    /// The sockets secured through this client that still answer to their descriptor and that the next daemon
    /// takes over after this one went away: responders (a listening TCP socket, a bound UDP socket that is not
    /// connected) and the connections `WSAConnect` made.
    public var heldForNextDaemon: [HeldSocket] {
        held.withLock { Array($0) }.compactMap { cookie, socket in
            guard let facts = try? SocketInspector.facts(of: socket.fd), facts.cookie == cookie,
                facts.answersPeers || (socket.peer != nil && facts.isConnected)
            else { return nil }
            return socket
        }
    }

    /// Passes `old`'s sockets to this client's daemon after `old`'s daemon went away (`ControlMessage.resecure`):
    /// responders are secured again, connections adopted. Returns how many were taken over; each failure is
    /// logged and skipped.
    @discardableResult
    public func takeOver(from old: KeyingDaemonClient) -> Int {
        var count = 0
        for socket in old.heldForNextDaemon {
            do throws(SecureSocketError) {
                let answer = try call(.resecure(socket.settings, names: socket.names), socket: socket.fd)
                guard case .secured(let cookie) = answer else { throw unexpected(answer) }
                held.withLock { $0[cookie] = socket }
                count += 1
            } catch {
                logger.error(
                    "a socket could not be taken over by the next keying daemon",
                    metadata: [
                        "fd": "\(socket.fd)", "error": "\(error)",
                        "consequence":
                            "\(socket.peer == nil ? "peers cannot reach it" : "its query answers not secured")",
                    ])
            }
        }
        return count
    }

    /// Who holds `channel`'s other end, if it may be believed: root or this process's own user (an abstract
    /// address carries no file mode, so anyone could have bound it first). Else `WSAEACCES`, and nothing is
    /// passed to it.
    static func believedDaemon(_ channel: ControlChannel, name: String) throws(SecureSocketError) -> PeerCredentials {
        guard let daemon = channel.peerCredentials else {
            throw SecureSocketError(.systemCallFailure, "SO_PEERCRED on the keying daemon's connection")
        }
        guard daemon.uid == 0 || daemon.uid == geteuid() else {
            throw SecureSocketError(
                .accessDenied,
                "@\(name) is held by uid \(daemon.uid) (pid \(daemon.pid)), not by root: not believed, nothing passed to it"
            )
        }
        return daemon
    }

    // MARK: - The calls

    public func setSecurity(_ fd: CInt, _ settings: SocketSecuritySettings) throws(SecureSocketError) {
        let answer = try call(.setSecurity(settings), socket: fd)
        guard case .secured(let cookie) = answer else { throw unexpected(answer) }
        held.withLock { $0[cookie] = HeldSocket(fd: fd, settings: settings, names: []) }
    }

    public func setPeerTargetName(_ fd: CInt, _ name: SocketPeerTargetName) throws(SecureSocketError) {
        try expectDone(call(.setPeerTargetName(name), socket: fd))
        guard let cookie = SocketInspector.cookie(of: fd) else { return }
        held.withLock { held in
            held[cookie]?.names.removeAll { Self.sameKey($0.peerAddress, name.peerAddress) }
            held[cookie]?.names.append(name)
        }
    }

    public func deletePeerTargetName(_ fd: CInt, address: IPEndpoint) throws(SecureSocketError) {
        try expectDone(call(.deletePeerTargetName(address), socket: fd))
        guard let cookie = SocketInspector.cookie(of: fd) else { return }
        held.withLock { $0[cookie]?.names.removeAll { Self.sameKey($0.peerAddress, address) } }
    }

    /// Whether two names are for the same peer, as the engine keys them: by address, the zero address and none
    /// being "the peer".
    static func sameKey(_ a: IPEndpoint?, _ b: IPEndpoint?) -> Bool {
        let key = { (endpoint: IPEndpoint?) in endpoint.flatMap { $0.address.isAny ? nil : $0.address } }
        return key(a) == key(b)
    }

    /// The daemon negotiates the flow's SAs and pins the socket to them; this process then connects, bounded by
    /// what the daemon says is left of the timeout.
    public func connect(_ fd: CInt, to peer: IPEndpoint, timeout: Duration? = nil) throws(SecureSocketError) {
        let milliseconds = timeout.map { duration -> UInt32 in
            let (seconds, attoseconds) = duration.components
            return UInt32(clamping: max(1, seconds * 1000 + attoseconds / 1_000_000_000_000_000))
        }
        // The daemon's own negotiation timeout when none is given (0), plus the handshake, plus a margin.
        let bound = (timeout ?? .seconds(300)) * 2 + .seconds(5)
        let answer = try call(
            .prepareConnect(peer: peer, timeoutMilliseconds: milliseconds ?? 0), socket: fd, timeout: bound)
        guard case .connectReady(let handshake) = answer else { throw unexpected(answer) }
        try SecureSocketEngine.plainConnect(fd, peer, deadline: Deadline(after: .milliseconds(Int64(handshake))))
        if let cookie = SocketInspector.cookie(of: fd) { held.withLock { $0[cookie]?.peer = peer } }
    }

    public func query(_ fd: CInt, _ template: SocketSecurityQueryTemplate? = nil) throws(SecureSocketError)
        -> SocketSecurityQueryInfo
    {
        let answer = try call(.query(template), socket: fd)
        guard case .queryInfo(var info) = answer else { throw unexpected(answer) }
        tokens.openTokens(for: &info, accessMask: template?.peerTokenAccessMask ?? 0)
        return info
    }

    public func release(_ fd: CInt) {
        if let cookie = SocketInspector.cookie(of: fd) { held.withLock { _ = $0.removeValue(forKey: cookie) } }
        _ = try? call(.release, socket: fd)
    }

    /// A process forked from this one shares its control connection: it must make a client of its own.
    public func requireOwner() throws(SecureSocketError) {
        _ = Self.forkHandler
        guard Self.forks.load(ordering: .relaxed) == forkGeneration else {
            throw SecureSocketError(
                .notInitialised, "this keying daemon client belongs to the process that forked this one")
        }
    }

    static let forks = Atomic<Int>(0)
    private static let forkHandler: Void = {
        pthread_atfork(nil, nil) { KeyingDaemonClient.forks.add(1, ordering: .relaxed) }
    }()

    // MARK: - The connection

    /// Sends a request and waits for its answer; a failure answer is thrown as the error it names.
    func call(_ message: ControlMessage, socket: CInt?, timeout: Duration = requestTimeout) throws(SecureSocketError)
        -> ControlMessage
    {
        if case .hello = message {} else { try requireOwner() }
        let id = replies.withLock { state -> UInt32 in
            let id = state.next
            state.next = state.next >= 0x7fff_ffff ? 1 : state.next + 1
            return id
        }
        do {
            try channel.send(ControlFrame(id: id, message), socket: socket)
        } catch {
            throw SecureSocketError(
                .networkDown, "the keying daemon's connection failed: \(error)", errno: error.errno, underlying: error)
        }
        let answer = replySignal.wait(until: Deadline(after: timeout)) { () -> ControlMessage?? in
            replies.withLock { state in
                if let answer = state.answers.removeValue(forKey: id) { return .some(answer) }
                return state.closed ? .some(nil) : nil
            }
        }
        guard let answer else {
            replies.withLock { _ = $0.answers.removeValue(forKey: id) }
            throw SecureSocketError(.timedOut, "the keying daemon did not answer in time")
        }
        guard let answer else { throw SecureSocketError(.networkDown, "the keying daemon closed the connection") }
        if case .failure(let code, let errno, let detail) = answer {
            throw SecureSocketError(
                SecureSocketError.Code(rawValue: code), detail, errno: errno == 0 ? nil : Errno(rawValue: errno))
        }
        return answer
    }

    private func expectDone(_ answer: ControlMessage) throws(SecureSocketError) {
        guard case .done = answer else { throw unexpected(answer) }
    }

    private func unexpected(_ answer: ControlMessage) -> SecureSocketError {
        SecureSocketError(.systemCallFailure, "unexpected answer from the keying daemon: \(answer)")
    }

    /// The reader thread: answers go to their callers, the daemon's requests to lend a socket are answered here.
    private func read() {
        while true {
            let frame: ControlFrame
            let socket: CInt?
            do {
                (frame, socket) = try channel.receive()
            } catch {
                if case .malformed = error {
                    logger.error("the keying daemon sent a malformed message", metadata: ["error": "\(error)"])
                }
                break
            }
            if let socket { Glibc.close(socket) } // the daemon never passes a descriptor
            if case .lend(let cookie) = frame.message {
                lend(cookie: cookie, id: frame.id)
                continue
            }
            replies.withLock { $0.answers[frame.id] = frame.message }
            replySignal.notify()
        }
        replies.withLock { $0.closed = true }
        replySignal.notify()
        closeHandler.withLock { handler in
            defer { handler = nil }
            return handler
        }?()
    }

    /// Lends the socket `cookie` back to the daemon, if this process still holds it under the number it was
    /// passed with.
    private func lend(cookie: UInt64, id: UInt32) {
        let fd = held.withLock { $0[cookie]?.fd }
        var current: UInt64 = 0
        var length = socklen_t(MemoryLayout<UInt64>.size)
        let holds =
            fd.map { getsockopt($0, SOL_SOCKET, SO_COOKIE, &current, &length) == 0 && current == cookie } ?? false
        if !holds { held.withLock { _ = $0.removeValue(forKey: cookie) } }
        try? channel.send(ControlFrame(id: id, .lent(cookie: cookie, held: holds)), socket: holds ? fd : nil)
    }
}
