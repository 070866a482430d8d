import Foundation
import Synchronization
import XFRM

/// Consumes an ``XFRMMonitor`` in the background and keeps every event, so a test can wait for several
/// events in turn. Waiting is bounded in time.
public final class EventRecorder: Sendable {
    private final class Storage: Sendable {
        let events = Mutex<[XFRMEvent]>([])
        let failure = Mutex<(any Error)?>(nil)
    }
    private let storage = Storage()
    private let task: Task<Void, Never>
    public let monitor: XFRMMonitor

    public init(_ monitor: XFRMMonitor) {
        self.monitor = monitor
        let storage = self.storage
        task = Task {
            do {
                for try await event in monitor { storage.events.withLock { $0.append(event) } }
            } catch {
                storage.failure.withLock { $0 = error }
            }
        }
    }

    /// Every event so far.
    public var recorded: [XFRMEvent] { storage.events.withLock { $0 } }

    /// Waits at most `timeout` seconds for an event matching `predicate`; nil if none came.
    public func wait(timeout: Double, for predicate: (XFRMEvent) -> Bool) throws -> XFRMEvent? {
        let deadline = Date().addingTimeInterval(timeout)
        repeat {
            if let error = storage.failure.withLock({ $0 }) { throw error }
            if let match = storage.events.withLock({ $0.first(where: predicate) }) { return match }
            usleep(5_000)
        } while Date() < deadline
        return nil
    }

    /// Stops the monitor and the consuming task.
    public func stop() {
        monitor.stop()
        task.cancel()
    }

    deinit { stop() }
}
