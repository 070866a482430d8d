import DaemonControl
import Glibc
import IPAddressing
import Logging
import SecureSocket
import Synchronization
import SystemPackage
import SystemSupport

/// One client's control connection: the reader that takes its requests (each run on the daemon's blocking
/// executor, answered with the request's id) and its answers to the daemon's own requests (``borrow(cookie:)``).
/// A client acts only through the sockets it attaches: the engine registers them as this client's.
final class ClientSession: Sendable {
    let id: UInt64
    let channel: ControlChannel
    let credentials: PeerCredentials
    /// Set when the connection has ended (a follower stops).
    let closed = Atomic<Bool>(false)
    private let lends = Mutex<(next: UInt32, answers: [UInt32: LendAnswer])>((0x8000_0000, [:]))
    private let lendSignal = ChangeSignal()
    /// How long the daemon waits for a client to lend a socket back.
    static let lendTimeout: Duration = .seconds(2)

    init(id: UInt64, channel: ControlChannel, credentials: PeerCredentials) {
        self.id = id
        self.channel = channel
        self.credentials = credentials
    }

    /// Reads the client's messages until it goes away. The first must be a hello in a version both speak.
    func run(daemon: KeyingDaemon) {
        let logger = daemon.logger
        do {
            let (hello, _) = try channel.receive(timeout: .seconds(5))
            guard case .hello(let minimum, let maximum) = hello.message else {
                throw ControlChannelError.malformed(.invalid("the first message must be a hello"))
            }
            let version = min(maximum, ControlMessage.versions.upperBound)
            guard version >= minimum, ControlMessage.versions.contains(version) else {
                try? channel.send(
                    ControlFrame(
                        id: hello.id,
                        .failure(
                            code: SecureSocketError.Code.operationNotSupported.rawValue, errno: 0,
                            detail: "the daemon speaks protocol versions \(ControlMessage.versions)")))
                return
            }
            guard daemon.admission.admits(credentials) else {
                logger.notice(
                    "client refused: its user may not use the keying daemon",
                    metadata: ["client": "\(credentials)"])
                try? channel.send(
                    ControlFrame(
                        id: hello.id,
                        .failure(
                            code: SecureSocketError.Code.accessDenied.rawValue, errno: Errno.permissionDenied.rawValue,
                            detail:
                                "uid \(credentials.uid) may not use the keying daemon (the keying file admits root and its client-user lines)"
                        )))
                return
            }
            try channel.send(ControlFrame(id: hello.id, .welcome(version: version, daemonPID: getpid())))
            while true {
                let (frame, socket) = try channel.receive()
                switch frame.message {
                case .lent: answerLend(frame.id, socket)
                case .inspect: daemon.inspector.answer(frame.id, session: self, daemon: daemon)
                case .follow: daemon.inspector.follow(frame.id, session: self, daemon: daemon)
                case .hello:
                    throw ControlChannelError.malformed(.invalid("a second hello"))
                case let message where !message.isFromClient:
                    if let socket { Glibc.close(socket) }
                    throw ControlChannelError.malformed(.invalid("a daemon's message from a client"))
                default: dispatch(frame, socket: socket, daemon: daemon)
                }
            }
        } catch ControlChannelError.closed {
            return
        } catch {
            logger.notice(
                "client connection ended", metadata: ["client": "\(credentials)", "reason": "\(error)"])
        }
    }

    /// Runs a request and answers it: the quick ones (no charon round trip, no socket borrowed from a client) on
    /// this reader thread, the others on the executor; a full executor answers at once that the daemon is busy.
    private func dispatch(_ frame: ControlFrame, socket: CInt?, daemon: KeyingDaemon) {
        if frame.message.isQuick {
            let answer = daemon.handle(frame.message, socket: socket, session: self)
            if let socket { Glibc.close(socket) }
            try? channel.send(ControlFrame(id: frame.id, answer))
            return
        }
        let accepted = daemon.executor.submit { [self] in
            let answer = daemon.handle(frame.message, socket: socket, session: self)
            if let socket { Glibc.close(socket) }
            try? channel.send(ControlFrame(id: frame.id, answer))
        }
        guard !accepted else { return }
        if let socket { Glibc.close(socket) }
        fail(frame.id, busy: "the keying daemon is busy")
    }

    /// Answers request `id` with a busy failure (`WSAEWOULDBLOCK`, `EAGAIN`).
    func fail(_ id: UInt32, busy detail: String) {
        try? channel.send(
            ControlFrame(
                id: id,
                .failure(
                    code: SecureSocketError.Code.wouldBlock.rawValue,
                    errno: Errno.resourceTemporarilyUnavailable.rawValue, detail: detail)))
    }

    private func answerLend(_ id: UInt32, _ socket: CInt?) {
        let unclaimed = lends.withLock { state -> CInt? in
            guard case .waiting = state.answers[id] else { return socket }
            state.answers[id] = .answered(socket)
            return nil
        }
        if let unclaimed { Glibc.close(unclaimed) } // an answer after its wait ended
        lendSignal.notify()
    }

    /// A descriptor of the client's socket `cookie`, lent for a moment (the caller closes it); nil when the
    /// client no longer holds it or does not answer in time.
    func borrow(cookie: UInt64) -> CInt? {
        let id = lends.withLock { state -> UInt32 in
            let id = state.next
            state.next = state.next == UInt32.max ? 0x8000_0000 : state.next + 1
            state.answers[id] = .waiting
            return id
        }
        let answer = Mutex<CInt?>(nil)
        defer {
            // An answer that arrived as the wait ended is closed, not leaked.
            if case .answered(let late?) = lends.withLock({ $0.answers.removeValue(forKey: id) }),
                answer.withLock({ $0 }) != late
            {
                Glibc.close(late)
            }
        }
        guard (try? channel.send(ControlFrame(id: id, .lend(cookie: cookie)))) != nil else { return nil }
        let received = lendSignal.wait(until: Deadline(after: Self.lendTimeout)) { () -> CInt?? in
            lends.withLock { state in
                guard case .answered(let socket) = state.answers[id] else { return nil }
                return .some(socket)
            }
        }
        let socket = received ?? nil
        answer.withLock { $0 = socket }
        return socket
    }
}

extension ControlMessage {
    /// A request the daemon answers from its own tables and the kernel, without charon and without borrowing
    /// a socket: run on the client's reader thread (a hand-off to the executor would cost more than the request).
    var isQuick: Bool {
        switch self {
        case .setSecurity, .setPeerTargetName, .deletePeerTargetName, .query: true
        default: false
        }
    }
}

/// Where a request of the daemon's to a client stands.
enum LendAnswer: Sendable {
    case waiting
    case answered(CInt?)
}
