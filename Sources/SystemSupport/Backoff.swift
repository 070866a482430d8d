/// How long to wait before the next attempt of something that keeps failing (a monitor to open again, a daemon to
/// reach): `initial` first, then twice the previous pause each time, never more than `maximum`.
public struct Backoff: Sendable {
    public let initial: Duration
    public let maximum: Duration
    private var upcoming: Duration

    public init(initial: Duration, maximum: Duration) {
        self.initial = initial
        self.maximum = maximum
        upcoming = initial
    }

    /// The pause before the next attempt (the one after it will be longer, up to ``maximum``).
    public mutating func next() -> Duration {
        defer { upcoming = min(upcoming * 2, maximum) }
        return upcoming
    }

    /// An attempt succeeded: the next failure waits ``initial`` again.
    public mutating func reset() { upcoming = initial }
}
