import Synchronization
import SystemPackage

/// A bounded set of threads that run blocking work (system calls, VICI round trips, negotiations) in arrival
/// order, so that blocking never happens on Swift's cooperative pool and the number of threads stays bounded
/// however many requests arrive. Threads beyond ``minimumThreads`` start only when every running one is busy and
/// end after ``keepAlive`` without work; at most ``maximumThreads`` run. Work beyond ``capacity`` waiting jobs is
/// refused (the caller answers "busy").
///
/// Threads start through ``Threads`` (a thread started while its creator impersonates a peer starts as the
/// process), and each job runs on whatever thread is free; a thread a job left in another state than the
/// process's (an impersonation not reverted) is put back before its next job (``Threads/resetCurrentThread()``).
public final class BlockingExecutor: Sendable {
    private struct Queue {
        var jobs: [(id: UInt64, run: @Sendable () -> Void)] = []
        var head = 0
        var lastID: UInt64 = 0
        var stopped = false
        /// Threads started and not ended (counted from before their start).
        var running = 0
        /// Threads running a job.
        var busy = 0

        var waiting: Int { jobs.count - head }
    }
    private let queue = Mutex(Queue())
    private let signal = ChangeSignal()
    public let minimumThreads: Int
    public let maximumThreads: Int
    public let keepAlive: Duration
    public let capacity: Int

    /// A fixed set: `threads` threads start now and run until ``stop()``.
    public convenience init(threads: Int, capacity: Int = 4096) throws(Errno) {
        try self.init(minimumThreads: threads, maximumThreads: threads, capacity: capacity)
    }

    /// `minimumThreads` start now; more start on demand, up to `maximumThreads`, and end after `keepAlive` idle.
    public init(
        minimumThreads: Int = 0, maximumThreads: Int, keepAlive: Duration = .seconds(30), capacity: Int = 4096
    ) throws(Errno) {
        precondition(maximumThreads >= max(1, minimumThreads))
        self.minimumThreads = minimumThreads
        self.maximumThreads = maximumThreads
        self.keepAlive = keepAlive
        self.capacity = capacity
        for _ in 0..<minimumThreads {
            queue.withLock { $0.running += 1 }
            do {
                try Threads.detach { [self] in self.work() }
            } catch {
                queue.withLock { $0.running -= 1 }
                throw error
            }
        }
    }

    /// Threads running now (idle ones included).
    public var threadsRunning: Int { queue.withLock { $0.running } }

    /// Queues `job`; false when the queue is full, the executor stopped, or no thread runs and none can start.
    @discardableResult
    public func submit(_ job: @escaping @Sendable () -> Void) -> Bool {
        let (id, grow) = queue.withLock { queue -> (UInt64?, Bool) in
            guard !queue.stopped, queue.waiting < capacity else { return (nil, false) }
            queue.lastID &+= 1
            queue.jobs.append((queue.lastID, job))
            // Every running thread is busy or has an earlier waiting job to take: one more starts.
            let grow = queue.running - queue.busy < queue.waiting && queue.running < maximumThreads
            if grow { queue.running += 1 }
            return (queue.lastID, grow)
        }
        guard let id else { return false }
        if grow, (try? Threads.detach({ [self] in self.work() })) == nil {
            let withdrawn = queue.withLock { queue -> Bool in
                queue.running -= 1
                // No thread to run it, ever: it is taken back (it is still waiting, as nothing runs).
                guard queue.running == 0, let index = queue.jobs[queue.head...].firstIndex(where: { $0.id == id })
                else { return false }
                queue.jobs.remove(at: index)
                return true
            }
            if withdrawn { return false }
        }
        signal.notify()
        return true
    }

    /// Lets the threads end once the jobs queued so far are done.
    public func stop() {
        queue.withLock { $0.stopped = true }
        signal.notify()
    }

    private func work() {
        while true {
            let next = signal.wait(until: Deadline(after: keepAlive)) { () -> (@Sendable () -> Void)?? in
                queue.withLock { queue in
                    if queue.head < queue.jobs.count {
                        let job = queue.jobs[queue.head].run
                        queue.head += 1
                        queue.busy += 1
                        if queue.head > 256, queue.head * 2 > queue.jobs.count {
                            queue.jobs.removeFirst(queue.head)
                            queue.head = 0
                        }
                        return .some(job)
                    }
                    return queue.stopped ? .some(nil) : nil
                }
            }
            guard let found = next else {
                // Idle for `keepAlive`: a thread above the minimum ends (never one a waiting job needs).
                let ends = queue.withLock { queue -> Bool in
                    guard queue.running > minimumThreads, queue.waiting == 0 else { return false }
                    queue.running -= 1
                    return true
                }
                if ends { return }
                continue
            }
            guard let job = found else {
                queue.withLock { $0.running -= 1 }
                return
            }
            job()
            // The next job starts on a thread in the process's state, whatever this one did to it; a thread that
            // cannot be put back runs nothing more.
            let reset = (try? Threads.resetCurrentThread()) != nil
            queue.withLock { queue in
                queue.busy -= 1
                if !reset { queue.running -= 1 }
            }
            if !reset { return }
        }
    }
}
