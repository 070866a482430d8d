import Foundation
import Keying
import Synchronization
import VICI

/// Consumes a ``VICIEventStream`` in the background and keeps every event, so a test can wait for several
/// events in turn, and records how the stream ended. Waiting is bounded in time.
final class VICIEventRecorder: Sendable {
    private final class Storage: Sendable {
        let events = Mutex<[VICIEvent]>([])
        let ending = Mutex<Result<Void, any Error>?>(nil)
    }
    private let storage = Storage()
    private let task: Task<Void, Never>
    let stream: VICIEventStream

    init(_ stream: VICIEventStream) {
        self.stream = stream
        let storage = self.storage
        task = Task {
            do {
                for try await event in stream { storage.events.withLock { $0.append(event) } }
                storage.ending.withLock { $0 = .success(()) }
            } catch {
                storage.ending.withLock { $0 = .failure(error) }
            }
        }
    }

    var recorded: [VICIEvent] { storage.events.withLock { $0 } }

    /// Waits at most `timeout` seconds for an event matching `predicate`; nil if none came.
    func wait(timeout: Double, for predicate: (VICIEvent) -> Bool) -> VICIEvent? {
        let deadline = Date().addingTimeInterval(timeout)
        repeat {
            if let match = storage.events.withLock({ $0.first(where: predicate) }) { return match }
            usleep(5_000)
        } while Date() < deadline
        return nil
    }

    /// Waits at most `timeout` seconds for the stream to end; nil if it did not.
    func waitForEnd(timeout: Double) -> Result<Void, any Error>? {
        let deadline = Date().addingTimeInterval(timeout)
        repeat {
            if let ending = storage.ending.withLock({ $0 }) { return ending }
            usleep(5_000)
        } while Date() < deadline
        return nil
    }

    func stop() {
        stream.stop()
        task.cancel()
    }

    deinit { stop() }
}
