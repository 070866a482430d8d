import Glibc
import Logging
import SecureSocket
import Synchronization
import SystemSupport

/// This process's link to the namespace's keying daemon, across the daemon's restarts. It hands out the current
/// ``KeyingDaemonClient``, and makes a new one (finding, or starting, the next daemon) when the daemon went away
/// or the process forked. When a daemon goes away while this process holds sockets secured through it, it does not
/// wait for the next call: it connects to the next daemon as soon as one answers and passes them on. Responders (a
/// listening TCP socket, a bound UDP socket) are secured again there, so peers reach the service again; connections
/// `WSAConnect` made are adopted, so their query answers again. They keep flowing over their kernel SAs either way
/// (the next daemon keeps those while they live).
public final class KeyingDaemonConnection: Sendable {
    /// Makes a client: connects to the daemon, or starts one.
    public typealias Connect = @Sendable () throws(SecureSocketError) -> KeyingDaemonClient

    private let connect: Connect
    private let current = Mutex<KeyingDaemonClient?>(nil)
    public let logger: Logger
    /// How long a process keeps trying to reach the next daemon for its responders, before it leaves that to its
    /// next call.
    static let reconnectBound: Duration = .seconds(600)

    public init(logger: Logger, connect: @escaping Connect) {
        self.logger = logger
        self.connect = connect
    }

    /// The client to use now: the current one while its daemon answers and this process made it; else a new one
    /// (the previous one's responders are secured again through it).
    public func client() throws(SecureSocketError) -> KeyingDaemonClient {
        try current.withLock { (current) throws(SecureSocketError) -> KeyingDaemonClient in
            if let client = current, (try? client.requireOwner()) != nil, client.isConnected { return client }
            let previous = current.flatMap { (try? $0.requireOwner()) != nil ? $0 : nil }
            if previous != nil {
                logger.warning("the keying daemon's connection closed: connecting to the next daemon")
            }
            let made = try connect()
            current = made
            if let previous { resecure(previous, through: made) }
            watch(made)
            return made
        }
    }

    /// The current client, if one was made (nothing is connected for it).
    public var existing: KeyingDaemonClient? { current.withLock { $0 } }

    private func watch(_ client: KeyingDaemonClient) {
        client.whenClosed { [weak self, weak client] in
            guard let self, let client, !client.heldForNextDaemon.isEmpty else { return }
            try? Threads.detach { self.reconnect(after: client) }
        }
    }

    private func resecure(_ previous: KeyingDaemonClient, through made: KeyingDaemonClient) {
        let held = previous.heldForNextDaemon.count
        guard held > 0 else { return }
        let count = made.takeOver(from: previous)
        logger.notice(
            "sockets taken over by the next keying daemon",
            metadata: ["taken": "\(count)", "held": "\(held)", "daemon": "\(made.daemon)"])
    }

    /// Tries to reach the next daemon until one answers (or a call made a client meanwhile, or the bound passed),
    /// waiting longer after each failure.
    private func reconnect(after closed: KeyingDaemonClient) {
        var backoff = Backoff(initial: .milliseconds(100), maximum: .seconds(2))
        let deadline = Deadline(after: Self.reconnectBound)
        while !deadline.hasPassed {
            let done = current.withLock { $0 !== closed }
            if done { return }
            if (try? client()) != nil { return }
            let pause = backoff.next()
            let (seconds, attoseconds) = pause.components
            usleep(UInt32(seconds * 1_000_000 + attoseconds / 1_000_000_000_000))
        }
        logger.error(
            "no keying daemon answered for the responders secured through the one that went away: peers cannot reach them",
            metadata: ["tried for": "\(Self.reconnectBound)"])
    }
}
