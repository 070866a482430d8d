import Keying
import Synchronization
import SystemSupport

/// Connections peers made CHILD_SAs for on a listener's reqid, awaited among this process's sockets until a
/// deadline (the application may accept late), and when to look for them next: at once after a new child, then
/// twice as long after each look, at most a second apart.
final class AwaitedAccepts: Sendable {
    private struct State {
        var awaited: [(reqid: UInt32, flow: KeyedFlow?, deadline: Deadline)] = []
        var next = ContinuousClock.now
        var interval: Duration = .milliseconds(10)
        var lastLook = ContinuousClock.now - .seconds(1)
    }
    private let state = Mutex(State())

    /// How long a peer's new child is awaited.
    let watch: Duration

    init(watch: Duration) { self.watch = watch }

    /// A peer made a child for `flow` (nil: a selector wider than one flow) on `reqid`: looked for from now, but
    /// never sooner than 10 ms after the last look (children that come back to back share looks). Returns whether
    /// nothing was awaited before (the watcher then needs waking; otherwise it already looks every 10 ms).
    @discardableResult
    func expect(reqid: UInt32, flow: KeyedFlow?) -> Bool {
        state.withLock { state in
            state.awaited.removeAll { $0.deadline.hasPassed }
            let first = state.awaited.isEmpty
            state.awaited.append((reqid, flow, Deadline(after: watch)))
            state.next = max(.now, state.lastLook + .milliseconds(10))
            state.interval = .milliseconds(10)
            return first
        }
    }

    /// The connection of `flow` was registered: it is awaited no more.
    func found(_ flow: KeyedFlow) { state.withLock { $0.awaited.removeAll { $0.flow == flow } } }

    /// Whether a connection of `flow` is awaited.
    func awaits(_ flow: KeyedFlow) -> Bool {
        state.withLock { $0.awaited.contains { $0.flow == nil || $0.flow == flow } }
    }

    /// Whether anything is awaited (past deadlines dropped).
    var isEmpty: Bool {
        state.withLock { state in
            state.awaited.removeAll { $0.deadline.hasPassed }
            return state.awaited.isEmpty
        }
    }

    /// Whether a look is due now (the next one is then scheduled); false when nothing is awaited.
    func lookDue(now: ContinuousClock.Instant = .now) -> Bool {
        state.withLock { state in
            state.awaited.removeAll { $0.deadline.hasPassed }
            guard !state.awaited.isEmpty, now >= state.next else { return false }
            state.interval = min(state.interval * 2, .seconds(1))
            state.next = now + state.interval
            state.lastLook = now
            return true
        }
    }
}
