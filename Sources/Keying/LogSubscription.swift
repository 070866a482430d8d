import Synchronization
import VICI

/// charon's `log` stream, followed only while this backend watches negotiations and for a while after: charon sends
/// every log line to a subscriber, so a backend that only answers peers never subscribes, and one that initiates
/// now and then stops when a line arrives after ``idle`` without a watched negotiation.
final class LogSubscription: Sendable {
    private struct State {
        var stream: VICIEventStream?
        var watching = 0
        var lastWatched = ContinuousClock.now
    }

    private let state = Mutex(State())
    private let path: String
    private let deliver: @Sendable (ControlLog) -> Void

    /// How long the stream stays after the last watched negotiation ended.
    static let idle: Duration = .seconds(5)

    init(path: String, deliver: @escaping @Sendable (ControlLog) -> Void) {
        self.path = path
        self.deliver = deliver
    }

    /// Before a negotiation starts: the stream is registered with charon when this returns, so none of the
    /// negotiation's lines is missed. Balanced by ``release()``.
    func retain() throws(VICIError) {
        try state.withLock { (state) throws(VICIError) in
            if state.stream == nil {
                // A stream that ends (charon went away) is forgotten, so the next negotiation subscribes again.
                let holder = StreamHolder()
                let stream = try VICIEventStream(
                    path: path, events: ["log"], timeout: .seconds(5),
                    handle: { [weak self] event in self?.received(event) },
                    ended: { [weak self] _ in self?.forget(holder) })
                holder.identity.withLock { $0 = ObjectIdentifier(stream) }
                state.stream = stream
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
        state.withLock { $0.stream.take() }?.stop()
    }

    private func received(_ event: VICIEvent) {
        let idle = state.withLock { state -> VICIEventStream? in
            guard state.watching == 0, ContinuousClock.now - state.lastWatched > Self.idle else { return nil }
            return state.stream.take()
        }
        if let idle {
            idle.stop()
            return
        }
        deliver(ControlLog(event.message))
    }

    private func forget(_ holder: StreamHolder) {
        guard let ended = holder.identity.withLock({ $0 }) else { return }
        state.withLock { state in
            if let stream = state.stream, ObjectIdentifier(stream) == ended { state.stream = nil }
        }
    }

    /// Which stream an `ended` callback belongs to (known only once the stream exists).
    private final class StreamHolder: Sendable {
        let identity = Mutex<ObjectIdentifier?>(nil)
    }
}
