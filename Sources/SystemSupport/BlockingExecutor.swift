import Synchronization
import SystemPackage

/// A fixed set of threads that run blocking work (system calls, VICI round trips) in arrival order, so that
/// blocking never happens on Swift's cooperative pool and the number of threads stays bounded however many
/// requests arrive. Work beyond ``capacity`` waiting jobs is refused (the caller answers "busy").
public final class BlockingExecutor: Sendable {
    private struct Queue {
        var jobs: [@Sendable () -> Void] = []
        var head = 0
        var stopped = false
    }
    private let queue = Mutex(Queue())
    private let signal = ChangeSignal()
    public let threads: Int
    public let capacity: Int

    /// Starts `threads` threads named by what they run for.
    public init(threads: Int, capacity: Int = 4096) throws(Errno) {
        self.threads = threads
        self.capacity = capacity
        for _ in 0..<threads { try Threads.detach { [self] in self.work() } }
    }

    /// Queues `job`; false when the queue is full or the executor stopped.
    @discardableResult
    public func submit(_ job: @escaping @Sendable () -> Void) -> Bool {
        let queued = queue.withLock { queue -> Bool in
            guard !queue.stopped, queue.jobs.count - queue.head < capacity else { return false }
            queue.jobs.append(job)
            return true
        }
        if queued { signal.notify() }
        return queued
    }

    /// Lets the threads end once the jobs queued so far are done.
    public func stop() {
        queue.withLock { $0.stopped = true }
        signal.notify()
    }

    private func work() {
        while true {
            let next = signal.wait(until: Deadline(after: .seconds(3600))) { () -> (@Sendable () -> Void)?? in
                queue.withLock { queue in
                    if queue.head < queue.jobs.count {
                        let job = queue.jobs[queue.head]
                        queue.head += 1
                        if queue.head > 256, queue.head * 2 > queue.jobs.count {
                            queue.jobs.removeFirst(queue.head)
                            queue.head = 0
                        }
                        return .some(job)
                    }
                    return queue.stopped ? .some(nil) : nil
                }
            }
            guard let found = next else { continue }
            guard let job = found else { return }
            job()
        }
    }
}
