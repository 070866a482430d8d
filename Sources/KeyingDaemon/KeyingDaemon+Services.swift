import ServiceLifecycle
import SystemSupport

// The daemon's work as services of one ServiceGroup (swift-service-lifecycle): the group takes the termination
// signals and shuts every service down gracefully. Each service's blocking loop runs on a thread of its own (it
// waits on sockets and condition variables, never on Swift's cooperative pool); `run()` awaits that thread.
extension KeyingDaemon: Service {
    /// Accepts clients until a graceful shutdown (SIGTERM, SIGINT), cancellation or ``stop()``.
    public func run() async throws {
        await withTaskCancellationOrGracefulShutdownHandler {
            await Self.onThread { self.acceptClients() }
        } onCancelOrGracefulShutdown: {
            self.stop()
        }
    }

    /// Runs `body` on a thread of its own and resumes when it returns.
    static func onThread(_ body: @escaping @Sendable () -> Void) async {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            do {
                try Threads.detach {
                    body()
                    continuation.resume()
                }
            } catch {
                continuation.resume()
            }
        }
    }
}

/// Ends the daemon once it has had no client and no secured socket for ``bound`` (an embedded daemon's
/// `--exit-when-idle`): `run()` returns then, and a group configured to shut down when it does stops the rest.
/// It waits for the daemon's activity signal, never on a timer of its own.
public struct IdleExit: Service {
    public let daemon: KeyingDaemon
    public let bound: Duration

    public init(daemon: KeyingDaemon, bound: Duration) {
        self.daemon = daemon
        self.bound = bound
    }

    public func run() async throws {
        let daemon = daemon
        let bound = bound
        await withTaskCancellationOrGracefulShutdownHandler {
            await KeyingDaemon.onThread { Self.waitUntilIdle(daemon, for: bound) }
        } onCancelOrGracefulShutdown: {
            daemon.stop()
        }
    }

    /// Returns once `daemon` has been idle for `bound` without a break, or was stopped.
    static func waitUntilIdle(_ daemon: KeyingDaemon, for bound: Duration) {
        while !daemon.isStopped {
            // Busy: until idle (or stopped). Each wake re-checks two counters.
            // Bounded by `bound` too: a change signalled just before the table settled is seen at the next look.
            _ = daemon.activity.wait(until: Deadline(after: bound)) {
                daemon.isIdle || daemon.isStopped ? true : nil
            }
            guard !daemon.isStopped, daemon.isIdle else { continue }
            // Idle: done unless something happens within the bound.
            let busyAgain = daemon.activity.wait(until: Deadline(after: bound)) {
                !daemon.isIdle || daemon.isStopped ? true : nil
            }
            if busyAgain == nil { return }
        }
    }
}
