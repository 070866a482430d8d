/// A point in time by which something must be done, on the monotonic clock (`ContinuousClock`: it keeps counting
/// while the machine sleeps, and never jumps with the wall clock). Every bounded wait takes one.
public struct Deadline: Sendable, Hashable, Comparable {
    public let instant: ContinuousClock.Instant

    public init(after duration: Duration) { instant = ContinuousClock.now.advanced(by: duration) }

    public init(_ instant: ContinuousClock.Instant) { self.instant = instant }

    public static func < (a: Deadline, b: Deadline) -> Bool { a.instant < b.instant }

    public var hasPassed: Bool { ContinuousClock.now >= instant }

    /// What is left; zero once passed.
    public var remaining: Duration { max(.zero, ContinuousClock.now.duration(to: instant)) }

    /// Milliseconds left, rounded up, for `poll(2)`; 0 once passed.
    public var pollMilliseconds: Int32 {
        let left = remaining
        guard left > .zero else { return 0 }
        let (seconds, attoseconds) = left.components
        let ms = seconds * 1000 + (attoseconds + 999_999_999_999_999) / 1_000_000_000_000_000
        return Int32(clamping: ms)
    }
}
