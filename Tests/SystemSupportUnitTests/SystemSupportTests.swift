import Glibc
import Synchronization
import SystemPackage
import SystemSupport
import XCTest

final class ProcessIdentityTests: XCTestCase {
    func testTheCurrentProcessRunsAndAnExitedOneDoesNot() throws {
        let me = ProcessIdentity.current
        XCTAssertEqual(me.pid, getpid())
        XCTAssertGreaterThan(me.startTime, 0)
        XCTAssertTrue(me.isRunning)
        XCTAssertEqual(ProcessIdentity(Substring(me.description)), me, "description round-trips")
        // The same pid with another start time is another process (a recycled pid).
        XCTAssertFalse(ProcessIdentity(pid: me.pid, startTime: me.startTime + 1).isRunning)
        let child = Process()
        child.executableURL = URL(fileURLWithPath: "/bin/true")
        try child.run()
        child.waitUntilExit()
        XCTAssertFalse(ProcessIdentity(pid: child.processIdentifier, startTime: 1).isRunning)
        XCTAssertNil(ProcessIdentity("not-a-pid 5"))
        XCTAssertEqual(ProcessIdentity("42"), ProcessIdentity(pid: 42, startTime: 0), "a bare pid (older records)")
    }

    func testTheScopeNamesThisBootAndPidNamespace() throws {
        let scope = try XCTUnwrap(ProcessScope.current)
        XCTAssertEqual(scope.bootID.count, 36, "a UUID: \(scope.bootID)")
        XCTAssertEqual(ProcessScope(Substring(scope.description)), scope)
        XCTAssertNil(ProcessScope("only-one-word"))
    }
}

final class ThreadsAndSignalTests: XCTestCase {
    func testRunAndJoinRunsOnAnotherThreadAndReturnsAfterIt() throws {
        let caller = pthread_self()
        var other = pthread_t()
        var ran = false
        try Threads.runAndJoin {
            other = pthread_self()
            ran = true
        }
        XCTAssertTrue(ran)
        XCTAssertEqual(pthread_equal(caller, other), 0)
    }

    func testAWaiterWakesWhenNotifiedNotAtItsDeadline() throws {
        let signal = ChangeSignal()
        let value = Mutex<Int?>(nil)
        try Threads.detach {
            usleep(50_000)
            value.withLock { $0 = 7 }
            signal.notify()
        }
        let start = ContinuousClock.now
        let got = signal.wait(until: Deadline(after: .seconds(10))) { value.withLock { $0 } }
        let waited = ContinuousClock.now - start
        XCTAssertEqual(got, 7)
        XCTAssertLessThan(waited, .seconds(2), "woken by the notify, not by the 10 s deadline")
    }

    func testAWaitEndsAtItsDeadlineWhenNothingChanges() {
        let signal = ChangeSignal()
        let start = ContinuousClock.now
        let got: Int? = signal.wait(until: Deadline(after: .milliseconds(100))) { nil }
        let waited = ContinuousClock.now - start
        XCTAssertNil(got)
        XCTAssertGreaterThanOrEqual(waited, .milliseconds(100))
        XCTAssertLessThan(waited, .seconds(2))
        XCTAssertEqual(Deadline(after: .zero).pollMilliseconds, 0)
        XCTAssertTrue(Deadline(after: .zero).hasPassed)
        XCTAssertGreaterThan(Deadline(after: .seconds(1)).pollMilliseconds, 900)
    }

    func testNotifiesFromManyThreadsNeverLeaveAWaiterAsleep() throws {
        let signal = ChangeSignal()
        let count = Mutex(0)
        for _ in 0..<8 {
            try Threads.detach {
                for _ in 0..<100 {
                    count.withLock { $0 += 1 }
                    signal.notify()
                }
            }
        }
        let done = signal.wait(until: Deadline(after: .seconds(10))) { count.withLock { $0 == 800 ? true : nil } }
        XCTAssertEqual(done, true)
    }
}

/// A start guard that asks for a reset only on threads created by one chosen thread (guards are never removed, so
/// it must not touch the other tests' threads), and fails the reset when told to.
private final class ChosenCreatorGuard: ThreadStartGuard, @unchecked Sendable {
    struct State {
        var creator: pthread_t?
        var failure: Errno?
        var resets = 0
    }
    let state = Mutex(State())

    func newThreadNeedsReset() -> Bool {
        state.withLock { $0.creator.map { pthread_equal($0, pthread_self()) != 0 } ?? false }
    }

    func resetNewThread() throws(Errno) {
        let failure = state.withLock { state -> Errno? in
            state.resets += 1
            return state.failure
        }
        if let failure { throw failure }
    }
}

final class ThreadStartGuardTests: XCTestCase {
    private static let startGuard: ChosenCreatorGuard = {
        let startGuard = ChosenCreatorGuard()
        Threads.addStartGuard(startGuard)
        return startGuard
    }()

    func testANewThreadIsResetBeforeItsBodyAndAFailedResetKeepsTheBodyFromRunning() throws {
        let startGuard = Self.startGuard
        let me = pthread_self()
        startGuard.state.withLock { $0 = .init(creator: me, failure: nil, resets: 0) }
        defer { startGuard.state.withLock { $0.creator = nil } }

        var ran = false
        try Threads.runAndJoin { ran = true }
        XCTAssertTrue(ran)
        XCTAssertEqual(startGuard.state.withLock { $0.resets }, 1, "reset once, before the body")

        startGuard.state.withLock { $0.failure = .permissionDenied }
        ran = false
        XCTAssertThrowsError(try Threads.runAndJoin { ran = true }) { error in
            XCTAssertEqual(error as? Errno, .permissionDenied)
        }
        XCTAssertFalse(ran, "the body does not run after a failed reset")
        let detachedRan = Mutex(false)
        XCTAssertThrowsError(try Threads.detach { detachedRan.withLock { $0 = true } }) { error in
            XCTAssertEqual(error as? Errno, .permissionDenied)
        }
        usleep(50_000)
        XCTAssertFalse(detachedRan.withLock { $0 })
        XCTAssertEqual(startGuard.state.withLock { $0.resets }, 3)

        // A thread created by another thread is not the guard's business.
        startGuard.state.withLock { $0.creator = nil }
        try Threads.runAndJoin { ran = true }
        XCTAssertTrue(ran)
        XCTAssertEqual(startGuard.state.withLock { $0.resets }, 3)
    }
}
