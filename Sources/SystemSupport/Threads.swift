import Glibc
import SystemPackage

/// POSIX threads for the few jobs that must own one: a blocking reader (netlink, VICI events), the parent of a
/// spawned daemon (its parent-death signal follows the thread), work in another network namespace (`setns`
/// changes the calling thread only). Everything else runs on the caller's thread or in Swift concurrency.
public enum Threads {
    /// Starts `body` on a new detached thread. Throws the `pthread_create` error.
    public static func detach(_ body: @escaping @Sendable () -> Void) throws(Errno) {
        try start(body, join: false)
    }

    /// Runs `body` on a new thread and waits until it returns (a `setns` in `body` never touches the caller).
    public static func runAndJoin(_ body: @escaping () -> Void) throws(Errno) {
        try start(body, join: true)
    }

    private final class Work {
        let body: () -> Void
        init(_ body: @escaping () -> Void) { self.body = body }
    }

    private static func start(_ body: @escaping () -> Void, join: Bool) throws(Errno) {
        let work = Unmanaged.passRetained(Work(body))
        var thread = pthread_t()
        let rc = pthread_create(
            &thread, nil,
            { raw in
                guard let raw else { return nil }
                Unmanaged<Work>.fromOpaque(raw).takeRetainedValue().body()
                return nil
            }, work.toOpaque())
        guard rc == 0 else {
            work.release()
            throw Errno(rawValue: rc)
        }
        if join { pthread_join(thread, nil) } else { pthread_detach(thread) }
    }
}

/// Wakes threads that wait for some state to change, so that a wait ends when the change happens rather than at
/// the next turn of a polling loop. The state itself lives elsewhere (under its own lock): whoever changes it calls
/// ``notify()`` afterwards, and a waiter re-checks it each time it wakes. A change between a waiter's check and
/// its wait is never lost (the waiter only sleeps while the generation it saw before checking is current).
public final class ChangeSignal: @unchecked Sendable {
    private let mutex = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
    private let condition = UnsafeMutablePointer<pthread_cond_t>.allocate(capacity: 1)
    private var generation: UInt64 = 0

    public init() {
        pthread_mutex_init(mutex, nil)
        var attributes = pthread_condattr_t()
        pthread_condattr_init(&attributes)
        pthread_condattr_setclock(&attributes, CLOCK_MONOTONIC)
        pthread_cond_init(condition, &attributes)
        pthread_condattr_destroy(&attributes)
    }

    deinit {
        pthread_cond_destroy(condition)
        pthread_mutex_destroy(mutex)
        mutex.deallocate()
        condition.deallocate()
    }

    /// The state changed: every waiter re-checks it.
    public func notify() {
        pthread_mutex_lock(mutex)
        generation &+= 1
        pthread_cond_broadcast(condition)
        pthread_mutex_unlock(mutex)
    }

    /// Evaluates `ready` until it gives a value or `deadline` passes (then nil), sleeping between evaluations
    /// until the next ``notify()``.
    public func wait<Value>(until deadline: Deadline, for ready: () -> Value?) -> Value? {
        while true {
            let seen = currentGeneration
            if let value = ready() { return value }
            guard !deadline.hasPassed else { return nil }
            sleep(whileGenerationIs: seen, until: deadline)
        }
    }

    private var currentGeneration: UInt64 {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        return generation
    }

    private func sleep(whileGenerationIs seen: UInt64, until deadline: Deadline) {
        // The condition's clock is CLOCK_MONOTONIC; the deadline's remaining time is added to it.
        var wake = timespec()
        clock_gettime(CLOCK_MONOTONIC, &wake)
        let (seconds, attoseconds) = deadline.remaining.components
        let nanoseconds = Int(wake.tv_nsec) + Int(attoseconds / 1_000_000_000)
        wake.tv_sec += Int(seconds) + nanoseconds / 1_000_000_000
        wake.tv_nsec = nanoseconds % 1_000_000_000
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        // Bounded: every turn either sees a new generation or ends at the deadline (ETIMEDOUT).
        while generation == seen {
            if pthread_cond_timedwait(condition, mutex, &wake) == ETIMEDOUT { return }
        }
    }
}
