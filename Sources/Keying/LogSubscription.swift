import Synchronization
import VICI

/// charon's `log` stream, followed only while this backend watches negotiations and for a while after: charon sends
/// every log line to a subscriber, so a backend that only answers peers never subscribes, and one that initiates
/// now and then stops when a line arrives after ``idle`` without a watched negotiation.
final class LogSubscription: Sendable {
    private struct State {
        var stream: VICIEventStream?
        /// Which stream `stream` is, for its `ended` callback (set before its reader can end).
        var holder: StreamHolder?
        var watching = 0
        var lastWatched = ContinuousClock.now
    }

    private let state = Mutex(State())
    private let path: String
    private let deliver: @Sendable (ControlLog) -> Void
    private let lost: @Sendable () -> Void

    /// How long the stream stays after the last watched negotiation ended.
    static let idle: Duration = .seconds(5)

    /// `deliver` gets each line; `lost` is called when the stream ends on its own (charon went away).
    init(
        path: String, deliver: @escaping @Sendable (ControlLog) -> Void, lost: @escaping @Sendable () -> Void
    ) {
        self.path = path
        self.deliver = deliver
        self.lost = lost
    }

    /// Before a negotiation starts: the stream is registered with charon when this returns, so none of the
    /// negotiation's lines is missed; subscribing waits at most `timeout`. Balanced by ``release()``.
    func retain(timeout: Duration) throws(VICIError) {
        try state.withLock { (state) throws(VICIError) in
            if state.stream == nil {
                // A stream that ends (charon went away) is forgotten, so the next negotiation subscribes again.
                let holder = StreamHolder()
                state.holder = holder
                do throws(VICIError) {
                    state.stream = try VICIEventStream(
                        path: path, events: ["log"], timeout: timeout,
                        handle: { [weak self] event in self?.received(event, from: holder) },
                        ended: { [weak self] error in self?.ended(holder, error: error) })
                } catch {
                    state.holder = nil
                    throw error
                }
            }
            state.watching += 1
        }
    }

    /// After a negotiation ended.
    func release() {
        state.withLock {
            $0.watching -= 1
            $0.lastWatched = .now
        }
    }

    /// Stops the stream (the backend shuts down).
    func stop() {
        state.withLock { state -> VICIEventStream? in
            state.holder = nil
            return state.stream.take()
        }?.stop()
    }

    /// A line of the stream `holder` names; a stream already replaced (stopped, still reading for up to 100 ms)
    /// delivers nothing more.
    private func received(_ event: VICIEvent, from holder: StreamHolder) {
        enum Next {
            case deliver, drop
            case stop(VICIEventStream?)
        }
        let next = state.withLock { state -> Next in
            guard state.holder === holder else { return .drop }
            guard state.watching == 0, ContinuousClock.now - state.lastWatched > Self.idle else { return .deliver }
            state.holder = nil
            return .stop(state.stream.take())
        }
        switch next {
        case .deliver: deliver(ControlLog(event.message))
        case .drop: break
        case .stop(let stream): stream?.stop()
        }
    }

    /// The reader of the stream `holder` names ended: stopped on purpose (nil error, or a stream already
    /// replaced) or lost.
    private func ended(_ holder: StreamHolder, error: VICIError?) {
        let current = state.withLock { state -> Bool in
            guard state.holder === holder else { return false }
            state.holder = nil
            state.stream = nil
            return true
        }
        if current { lost() }
    }

    /// Names one subscription, so that a late `ended` of an older one changes nothing.
    private final class StreamHolder: Sendable {}
}
