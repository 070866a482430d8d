import Synchronization
import SystemSupport
import XCTest

/// Tier 1: the bounded executor the engine and the keying daemon run blocking work on.
final class BlockingExecutorTests: XCTestCase {
    /// A gate jobs wait at until the test opens it.
    final class Gate: Sendable {
        private let open = Atomic<Bool>(false)
        let signal = ChangeSignal()
        func wait() {
            _ = signal.wait(until: Deadline(after: .seconds(10))) { open.load(ordering: .acquiring) ? () : nil }
        }
        func release() {
            open.store(true, ordering: .releasing)
            signal.notify()
        }
    }

    /// Waits (bounded) until `condition` holds.
    func eventually(_ what: String, within bound: Duration = .seconds(5), _ condition: () -> Bool) {
        let deadline = Deadline(after: bound)
        while !condition(), !deadline.hasPassed { usleep(1_000) }
        XCTAssertTrue(condition(), what)
    }

    func testThreadsStartOnDemandUpToTheBoundAndEndWhenIdle() throws {
        let executor = try BlockingExecutor(maximumThreads: 4, keepAlive: .milliseconds(200))
        XCTAssertEqual(executor.threadsRunning, 0, "no thread before the first job")
        let gate = Gate()
        let running = Atomic<Int>(0)
        let mostAtOnce = Atomic<Int>(0)
        let done = Atomic<Int>(0)
        for _ in 0..<40 {
            XCTAssertTrue(
                executor.submit {
                    let now = running.add(1, ordering: .relaxed).newValue
                    var seen = mostAtOnce.load(ordering: .relaxed)
                    while now > seen {
                        let (exchanged, original) = mostAtOnce.compareExchange(
                            expected: seen, desired: now, ordering: .relaxed)
                        if exchanged { break }
                        seen = original
                    }
                    gate.wait()
                    running.subtract(1, ordering: .relaxed)
                    done.add(1, ordering: .relaxed)
                })
        }
        eventually("four jobs run while the rest wait") { running.load(ordering: .relaxed) == 4 }
        XCTAssertEqual(executor.threadsRunning, 4, "never more threads than the bound, however many jobs wait")
        gate.release()
        eventually("every job ran") { done.load(ordering: .relaxed) == 40 }
        XCTAssertEqual(mostAtOnce.load(ordering: .relaxed), 4)
        eventually("idle threads above the minimum end after the keep-alive") { executor.threadsRunning == 0 }

        // And start again for the next job.
        let again = Atomic<Bool>(false)
        XCTAssertTrue(executor.submit { again.store(true, ordering: .relaxed) })
        eventually("a job after the threads ended runs") { again.load(ordering: .relaxed) }
        executor.stop()
    }

    func testOneThreadPerWaitingJobAtMostAndArrivalOrder() throws {
        let executor = try BlockingExecutor(maximumThreads: 1, keepAlive: .seconds(5))
        let order = Mutex<[Int]>([])
        for index in 0..<50 { executor.submit { order.withLock { $0.append(index) } } }
        eventually("all ran") { order.withLock { $0.count } == 50 }
        XCTAssertEqual(order.withLock { $0 }, Array(0..<50), "one thread takes jobs in arrival order")
        XCTAssertEqual(executor.threadsRunning, 1)
        executor.stop()
    }

    func testSequentialJobsReuseOneIdleThread() throws {
        let executor = try BlockingExecutor(maximumThreads: 8, keepAlive: .seconds(5))
        for _ in 0..<20 {
            let ran = Atomic<Bool>(false)
            executor.submit { ran.store(true, ordering: .relaxed) }
            eventually("the job ran") { ran.load(ordering: .relaxed) }
            usleep(2_000) // its thread is idle again
        }
        XCTAssertEqual(executor.threadsRunning, 1, "an idle thread takes the next job: no thread per call")
        executor.stop()
    }

    func testAFullQueueAndAStoppedExecutorRefuseWork() throws {
        let executor = try BlockingExecutor(maximumThreads: 1, keepAlive: .seconds(5), capacity: 2)
        let gate = Gate()
        let started = Atomic<Bool>(false)
        XCTAssertTrue(
            executor.submit {
                started.store(true, ordering: .relaxed)
                gate.wait()
            })
        eventually("the first job holds the thread") { started.load(ordering: .relaxed) }
        XCTAssertTrue(executor.submit {})
        XCTAssertTrue(executor.submit {})
        XCTAssertFalse(executor.submit {}, "a third waiting job is beyond the capacity")
        gate.release()
        executor.stop()
        XCTAssertFalse(executor.submit {}, "a stopped executor takes nothing")
        eventually("its threads end once the queued jobs are done") { executor.threadsRunning == 0 }
    }

    func testAFixedExecutorKeepsItsThreads() throws {
        let executor = try BlockingExecutor(threads: 3)
        XCTAssertEqual(executor.threadsRunning, 3)
        usleep(50_000)
        XCTAssertEqual(executor.threadsRunning, 3)
        executor.stop()
        eventually("stopped threads end") { executor.threadsRunning == 0 }
    }
}
