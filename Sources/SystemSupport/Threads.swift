import Glibc
import Synchronization
import SystemPackage

/// POSIX threads for the few jobs that must own one: a blocking reader (netlink, VICI events), the parent of a
/// spawned daemon (its parent-death signal follows the thread), work in another network namespace (`setns`
/// changes the calling thread only). Everything else runs on the caller's thread or in Swift concurrency.
///
/// A new thread is a copy of the thread that creates it, per-thread kernel state included (its credentials above
/// all). A layer that gives some threads state of their own registers a ``ThreadStartGuard``
/// (``addStartGuard(_:)``): a thread these functions start while its creator has such state puts itself back to
/// the process's first thing, before `body`, and the creating call reports whether that worked. Impersonation does
/// this, so the library's own threads never start as an impersonated peer.
public enum Threads {
    /// Starts `body` on a new detached thread. Throws the `pthread_create` error, or what a start guard threw for
    /// the new thread (then `body` does not run).
    public static func detach(_ body: @escaping @Sendable () -> Void) throws(Errno) {
        try start(body, join: false)
    }

    /// Runs `body` on a new thread and waits until it returns (a `setns` in `body` never touches the caller).
    /// Throws the `pthread_create` error, or what a start guard threw for the new thread (then `body` does not run).
    public static func runAndJoin(_ body: @escaping () -> Void) throws(Errno) {
        try start(body, join: true)
    }

    /// Registers `guard`: from now on, every thread ``detach(_:)`` or ``runAndJoin(_:)`` starts while
    /// ``ThreadStartGuard/newThreadNeedsReset()`` holds on the creating thread runs
    /// ``ThreadStartGuard/resetNewThread()`` before its body. Guards are never removed.
    public static func addStartGuard(_ guard: any ThreadStartGuard) {
        startGuards.withLock { $0.append(`guard`) }
    }

    private static let startGuards = Mutex<[any ThreadStartGuard]>([])

    /// Puts the calling thread back to the process's state wherever a start guard says it differs: a pooled
    /// thread between two jobs, so a job that left its thread changed (an impersonation not reverted) never
    /// hands that to the next. Throws what a guard threw (the thread should then run nothing more).
    public static func resetCurrentThread() throws(Errno) {
        for guardian in startGuards.withLock({ $0 }) where guardian.newThreadNeedsReset() {
            try guardian.resetNewThread()
        }
    }

    /// How long the creating thread waits for a new thread's reset before giving up on it (the reset is a few
    /// system calls; the bound only keeps a broken guard from hanging the caller).
    static let resetTimeout: Duration = .seconds(30)

    private final class Work: @unchecked Sendable {
        enum Reset {
            case pending, succeeded, abandoned
            case failed(Errno)
        }
        let body: () -> Void
        /// The guards the new thread runs before `body` (empty: none, and nobody waits).
        let resets: [any ThreadStartGuard]
        let reset = Mutex(Reset.pending)
        let changed = ChangeSignal()

        init(_ body: @escaping () -> Void, resets: [any ThreadStartGuard]) {
            self.body = body
            self.resets = resets
        }

        /// On the new thread: runs the guards, then `body` unless a guard failed or the creator gave up waiting.
        func run() {
            if !resets.isEmpty {
                var failure: Errno? = nil
                for guardian in resets {
                    do throws(Errno) {
                        try guardian.resetNewThread()
                    } catch {
                        failure = error
                        break
                    }
                }
                let proceed = reset.withLock { state -> Bool in
                    if case .abandoned = state { return false }
                    state = failure.map { .failed($0) } ?? .succeeded
                    return failure == nil
                }
                changed.notify()
                guard proceed else { return }
            }
            body()
        }

        /// On the creating thread: nil once the new thread's guards succeeded, else why `body` will not run.
        func awaitReset() -> Errno? {
            let outcome = changed.wait(until: Deadline(after: Threads.resetTimeout)) { () -> Errno?? in
                reset.withLock { state -> Errno?? in
                    switch state {
                    case .pending, .abandoned: nil
                    case .succeeded: .some(nil)
                    case .failed(let errno): .some(errno)
                    }
                }
            }
            if let outcome { return outcome }
            // Still pending at the deadline: the thread must not run `body` once its reset ends after all.
            return reset.withLock { state -> Errno? in
                switch state {
                case .succeeded: return nil
                case .failed(let errno): return errno
                case .pending, .abandoned:
                    state = .abandoned
                    return .timedOut
                }
            }
        }
    }

    private static func start(_ body: @escaping () -> Void, join: Bool) throws(Errno) {
        let resets = startGuards.withLock { $0 }.filter { $0.newThreadNeedsReset() }
        let work = Work(body, resets: resets)
        let retained = Unmanaged.passRetained(work)
        var thread = pthread_t()
        let rc = pthread_create(
            &thread, nil,
            { raw in
                guard let raw else { return nil }
                Unmanaged<Work>.fromOpaque(raw).takeRetainedValue().run()
                return nil
            }, retained.toOpaque())
        guard rc == 0 else {
            retained.release()
            throw Errno(rawValue: rc)
        }
        let failure = resets.isEmpty ? nil : work.awaitReset()
        if join { pthread_join(thread, nil) } else { pthread_detach(thread) }
        if let failure { throw failure }
    }
}

/// Per-thread state a new thread inherits from the thread that creates it but must not start with (see
/// ``Threads``). Registered with ``Threads/addStartGuard(_:)``.
public protocol ThreadStartGuard: Sendable {
    /// Called on the creating thread just before a thread is created: whether the new thread will need
    /// ``resetNewThread()`` (cheap, and false whenever the creating thread's state is the process's).
    func newThreadNeedsReset() -> Bool
    /// Called first thing on such a new thread, before its body: puts the thread's state back to the process's.
    /// A thrown errno keeps the body from running (the thread ends) and is what the creating call throws.
    func resetNewThread() throws(Errno)
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
