import ALE
import Foundation
import Glibc
import IPAddressing
import Synchronization
import SystemSupport

/// Async variants for Swift concurrency. The blocking work (negotiation with the keying daemon, the bounded
/// connect loop) runs on the engine's blocking executor (a bounded set of threads), never on the cooperative pool
/// and never on a thread per call; cancelling the task abandons the connection attempt.
extension SecureSocketEngine {
    /// `connect(_:to:timeout:)` for async code. Cancelling the task ends the wait for SAs within 5 ms and aborts
    /// a `connect()` blocked in SYN_SENT (shutdown); a negotiation already handed to the keying daemon still ends
    /// within its timeout. The call then throws `WSAEINTR`; the socket is unusable, as after a failed connect.
    public func connect(_ fd: CInt, to peer: IPEndpoint, timeout: Duration? = nil)
        async throws(SecureSocketError)
    {
        let cancelled = CancelFlag()
        let result: Result<Void, SecureSocketError> = await withTaskCancellationHandler {
            await withCheckedContinuation { continuation in
                self.runBlocking(continuation) {
                    do throws(SecureSocketError) {
                        try self.connect(fd, to: peer, timeout: timeout, cancelled: cancelled)
                        return cancelled.isSet
                            ? .failure(SecureSocketError(.interrupted, "the connecting task was cancelled"))
                            : .success(())
                    } catch {
                        return .failure(
                            cancelled.isSet
                                ? SecureSocketError(
                                    .interrupted, "the connecting task was cancelled (\(error.detail))") : error)
                    }
                }
            }
        } onCancel: {
            cancelled.set()
            // A blocking connect() stuck in SYN_SENT (the peer drops our ESP) is aborted by shutdown.
            Glibc.shutdown(fd, CInt(SHUT_RDWR))
        }
        try result.get()
    }

    /// `query(_:_:)` for async code (it talks to the kernel and may ask the keying daemon).
    public func query(_ fd: CInt, _ template: SocketSecurityQueryTemplate? = nil) async throws(SecureSocketError)
        -> SocketSecurityQueryInfo
    {
        let result: Result<SocketSecurityQueryInfo, SecureSocketError> = await withCheckedContinuation { continuation in
            self.runBlocking(continuation) {
                do throws(SecureSocketError) {
                    return .success(try self.query(fd, template))
                } catch {
                    return .failure(error)
                }
            }
        }
        return try result.get()
    }

    /// Runs `body` on the engine's blocking executor and resumes `continuation` with its result, or with an error
    /// when the executor takes no more work (it stopped, or its queue is full).
    private func runBlocking<T: Sendable>(
        _ continuation: CheckedContinuation<Result<T, SecureSocketError>, Never>,
        _ body: @escaping @Sendable () -> Result<T, SecureSocketError>
    ) {
        guard blocking.submit({ continuation.resume(returning: body()) }) else {
            continuation.resume(
                returning: .failure(
                    SecureSocketError(.systemCallFailure, "the engine takes no more blocking work (shut down or busy)"))
            )
            return
        }
    }
}

/// Set when the task a blocking call runs for is cancelled; the call looks at it between its waits.
package final class CancelFlag: Sendable {
    private let flag = Atomic<Bool>(false)
    package init() {}
    package func set() { flag.store(true, ordering: .releasing) }
    package var isSet: Bool { flag.load(ordering: .acquiring) }
}
