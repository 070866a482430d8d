import CThreadCredentials
import Dispatch
import Foundation
import Glibc
import NetnsTestSupport
import Synchronization
import SystemPackage
import SystemSupport
import TierTesting
import XCTest

@testable import Impersonation

// MARK: Helpers

struct ThreadTimedOut: Error, CustomStringConvertible {
    var description: String
}

/// A thread running `body`; `result(timeout:)` waits for what it returned or threw.
final class ThreadRun<T: Sendable>: Sendable {
    private let outcome = Mutex<Result<T, any Error>?>(nil)
    private let done = DispatchSemaphore(value: 0)

    init(_ body: @escaping @Sendable () throws -> T) {
        let thread = Thread { [self] in
            let result = Result { try body() }
            outcome.withLock { $0 = result }
            done.signal()
        }
        thread.start()
    }

    func result(timeout: Double = 60) throws -> T {
        guard done.wait(timeout: .now() + timeout) == .success else {
            throw ThreadTimedOut(description: "the thread did not finish within \(timeout) s")
        }
        return try outcome.withLock { $0! }.get()
    }
}

/// Runs `body` on a fresh thread (credentials die with it if anything goes wrong) and returns its result.
func onNewThread<T: Sendable>(timeout: Double = 60, _ body: @escaping @Sendable () throws -> T) throws -> T {
    try ThreadRun(body).result(timeout: timeout)
}

/// Creates `path` exclusively and returns its owner, or the errno.
func createFile(_ path: String) -> Result<(uid: uid_t, gid: gid_t), Errno> {
    let fd = open(path, O_CREAT | O_EXCL | O_WRONLY | O_CLOEXEC, 0o644)
    guard fd >= 0 else { return .failure(Errno(rawValue: errno)) }
    defer { close(fd) }
    var info = stat()
    guard fstat(fd, &info) == 0 else { return .failure(Errno(rawValue: errno)) }
    return .success((info.st_uid, info.st_gid))
}

/// 0 when `path` opens for reading, else the errno.
func openErrno(_ path: String) -> Int32 {
    let fd = open(path, O_RDONLY | O_CLOEXEC)
    if fd >= 0 {
        close(fd)
        return 0
    }
    return errno
}

/// The kernel's view of one thread: /proc/self/task/<tid>/status, field → values.
func procStatus(thread: pid_t) -> [String: [String]] {
    guard let text = try? String(contentsOfFile: "/proc/self/task/\(thread)/status", encoding: .utf8) else {
        return [:]
    }
    return parseStatus(text)
}

/// `Name:\tvalue value` lines → name → values.
func parseStatus(_ text: String) -> [String: [String]] {
    var fields: [String: [String]] = [:]
    for line in text.split(separator: "\n") {
        let parts = line.split(separator: ":", maxSplits: 1)
        guard parts.count == 2 else { continue }
        fields[String(parts[0])] = parts[1].split(whereSeparator: { $0 == " " || $0 == "\t" }).map(String.init)
    }
    return fields
}

// MARK: Tests

/// Tier 2: switches credentials for real (root). Every test that impersonates does it on threads it creates, so a
/// failure can never leave the XCTest thread impersonating.
final class ThreadCredentialsKernelTests: XCTestCase {
    var folder = ""
    var secret = ""
    var nobody = LocalAccount(name: "", uid: 0, gid: 0, groups: [])
    var daemon = LocalAccount(name: "", uid: 0, gid: 0, groups: [])

    override func setUpWithError() throws {
        try requireTier(.hostKernel)
        nobody = try LocalAccount.lookup("nobody")
        daemon = try LocalAccount.lookup("daemon")
        var template = Array("/tmp/impersonation-test.XXXXXX".utf8CString)
        guard let made = mkdtemp(&template) else { throw Errno(rawValue: errno) }
        folder = String(cString: made)
        guard chmod(folder, 0o777) == 0 else { throw Errno(rawValue: errno) }
        secret = folder + "/root-only"
        let fd = open(secret, O_CREAT | O_EXCL | O_WRONLY | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw Errno(rawValue: errno) }
        _ = "secret\n".withCString { write(fd, $0, 7) }
        fchmod(fd, 0o600)
        close(fd)
    }

    override func tearDownWithError() throws {
        guard !folder.isEmpty else { return }
        let names = (try? FileManager.default.contentsOfDirectory(atPath: folder)) ?? []
        for name in names.prefix(10_000) { unlink(folder + "/" + name) }
        XCTAssertEqual(rmdir(folder), 0, "cannot remove \(folder): \(Errno(rawValue: errno))")
        folder = ""
    }

    func testImpersonatingThreadActsAsTheAccountWhileOtherThreadsKeepTheirs() throws {
        struct Report: Sendable {
            var thread: pid_t = 0
            var before, during, after: ThreadCredentialSnapshot?
            var createdWhileImpersonating: (uid: uid_t, gid: gid_t)?
            var secretWhileImpersonating: Int32 = -1
            var createdAfter: (uid: uid_t, gid: gid_t)?
            var secretAfter: Int32 = -1
            var procDuring: [String: [String]] = [:]
        }
        let (nobody, folder, secret) = (self.nobody, self.folder, self.secret)
        let impersonating = DispatchSemaphore(value: 0)
        let checked = DispatchSemaphore(value: 0)
        let workerThread = Mutex<pid_t>(0)
        let mainBefore = ThreadCredentials.current()
        XCTAssertEqual(mainBefore.uids.effective, 0)

        let worker = ThreadRun { () throws -> Report in
            var report = Report()
            defer { impersonating.signal() } // also on failure, so the main thread never waits in vain
            report.thread = ThreadCredentials.currentThreadID
            workerThread.withLock { $0 = report.thread }
            report.before = ThreadCredentials.current()
            try ThreadCredentials.impersonate(nobody)
            report.during = ThreadCredentials.current()
            report.procDuring = procStatus(thread: report.thread)
            report.createdWhileImpersonating = try? createFile(folder + "/by-nobody").get()
            report.secretWhileImpersonating = openErrno(secret)
            impersonating.signal()
            _ = checked.wait(timeout: .now() + 30)
            try ThreadCredentials.revert()
            report.after = ThreadCredentials.current()
            report.createdAfter = try? createFile(folder + "/after-revert").get()
            report.secretAfter = openErrno(secret)
            return report
        }

        XCTAssertEqual(impersonating.wait(timeout: .now() + 30), .success)
        // Meanwhile, here (another thread of the process) and on a third thread: still root.
        XCTAssertEqual(ThreadCredentials.current(), mainBefore)
        XCTAssertEqual(openErrno(secret), 0, "another thread still opens the root-only file")
        XCTAssertEqual(procStatus(thread: ThreadCredentials.currentThreadID)["Uid"], ["0", "0", "0", "0"])
        let third = try onNewThread { () -> (ThreadCredentialSnapshot, Int32, (uid: uid_t, gid: gid_t)?) in
            (ThreadCredentials.current(), openErrno(secret), try? createFile(folder + "/by-third-thread").get())
        }
        XCTAssertEqual(third.0.uids, ThreadCredentialSnapshot.IDs(real: 0, effective: 0, saved: 0, filesystem: 0))
        XCTAssertEqual(third.1, 0)
        XCTAssertEqual(third.2?.uid, 0)
        let workerID = workerThread.withLock { $0 }
        let workerProc = procStatus(thread: workerID)
        checked.signal()

        let report = try worker.result()
        XCTAssertEqual(workerProc["Uid"], ["65534", "65534", "0", "65534"], "seen from another thread through /proc")
        XCTAssertEqual(report.procDuring["Uid"], ["65534", "65534", "0", "65534"])
        XCTAssertEqual(report.procDuring["Gid"], ["65534", "65534", "65534", "65534"])
        XCTAssertEqual(report.procDuring["Groups"], nobody.groups.map(String.init))
        XCTAssertEqual(report.procDuring["CapEff"], ["0000000000000000"])
        XCTAssertEqual(report.procDuring["CapInh"], ["0000000000000000"])
        XCTAssertEqual(report.procDuring["CapAmb"], ["0000000000000000"])

        let during = try XCTUnwrap(report.during)
        let before = try XCTUnwrap(report.before)
        XCTAssertEqual(
            during.uids, ThreadCredentialSnapshot.IDs(real: 65534, effective: 65534, saved: 0, filesystem: 65534))
        XCTAssertEqual(
            during.gids, ThreadCredentialSnapshot.IDs(real: 65534, effective: 65534, saved: 65534, filesystem: 65534))
        XCTAssertEqual(during.groups, nobody.groups)
        XCTAssertEqual(during.capabilities.effective, 0)
        XCTAssertEqual(during.capabilities.permitted, before.capabilities.permitted, "kept so revert can work")
        XCTAssertEqual(report.createdWhileImpersonating?.uid, 65534, "a file the thread creates belongs to nobody")
        XCTAssertEqual(report.createdWhileImpersonating?.gid, 65534)
        XCTAssertEqual(report.secretWhileImpersonating, EACCES, "the root-only file is out of reach")

        XCTAssertEqual(report.after, report.before, "uid/gid triples, groups, all capability sets restored")
        XCTAssertEqual(report.createdAfter?.uid, 0)
        XCTAssertEqual(report.secretAfter, 0)
        XCTAssertEqual(ThreadCredentials.current(), mainBefore)

        var info = stat()
        XCTAssertEqual(stat(folder + "/by-nobody", &info), 0)
        XCTAssertEqual(info.st_uid, 65534)
    }

    func testUnmappedIdentityChangesNothing() throws {
        let mapPath = folder + "/identity-map"
        let fd = open(mapPath, O_CREAT | O_EXCL | O_WRONLY | O_CLOEXEC, 0o644)
        XCTAssertGreaterThanOrEqual(fd, 0)
        let text = "id b.example -> nobody\nuser alice -> daemon\n"
        _ = text.withCString { write(fd, $0, strlen($0)) }
        fchmod(fd, 0o644)
        close(fd)
        let map = try IdentityMap(path: mapPath)

        let outcome = try onNewThread { () -> [String] in
            var problems: [String] = []
            let before = ThreadCredentials.current()
            for peer in [
                PeerIdentity(ikeIdentity: "stranger.example"), PeerIdentity(ikeIdentity: "b.example", user: "bob"),
            ] {
                do throws(ImpersonationError) {
                    try ThreadCredentials.impersonate(peer, in: map)
                    problems.append("\(peer): impersonated")
                    try? ThreadCredentials.revert()
                } catch {
                    if error.code != .unmappedIdentity { problems.append("\(peer): \(error)") }
                }
                var ran = false
                do {
                    _ = try ThreadCredentials.withImpersonation(of: peer, in: map) { _ in ran = true }
                    problems.append("\(peer): withImpersonation succeeded")
                } catch {
                    if (error as? ImpersonationError)?.code != .unmappedIdentity {
                        problems.append("\(peer): \(error)")
                    }
                }
                if ran { problems.append("\(peer): body ran") }
                if ThreadCredentials.current() != before { problems.append("\(peer): credentials changed") }
                if ThreadCredentials.isImpersonating { problems.append("\(peer): marked impersonating") }
            }
            // A mapped peer works, and comes back.
            let uid = try ThreadCredentials.withImpersonation(of: PeerIdentity(ikeIdentity: "b.example"), in: map) {
                account in account.uid == ThreadCredentials.current().uids.effective ? account.uid : 0
            }
            if uid != 65534 { problems.append("mapped peer ran as \(uid)") }
            let user = try ThreadCredentials.withImpersonation(
                of: PeerIdentity(ikeIdentity: "b.example", user: "alice"),
                in: map
            ) { _ in ThreadCredentials.current().uids.effective }
            if user != 1 { problems.append("user alice ran as \(user), not daemon") }
            if ThreadCredentials.current() != before { problems.append("credentials changed after mapped peers") }
            return problems
        }
        XCTAssertEqual(outcome, [])
    }

    func testRevertWithoutImpersonationIsANoOp() throws {
        let before = ThreadCredentials.current()
        try ThreadCredentials.revert()
        XCTAssertEqual(ThreadCredentials.current(), before)
        let (threadBefore, threadAfter) = try onNewThread {
            () throws -> (ThreadCredentialSnapshot, ThreadCredentialSnapshot) in
            let before = ThreadCredentials.current()
            try ThreadCredentials.revert()
            try ThreadCredentials.revert()
            return (before, ThreadCredentials.current())
        }
        XCTAssertEqual(threadAfter, threadBefore)
        // After a complete impersonate/revert, a second revert changes nothing either.
        let (nobody, original, final) = (self.nobody, ThreadCredentialSnapshot?.none, ThreadCredentialSnapshot?.none)
        _ = (original, final)
        let results = try onNewThread { () throws -> (ThreadCredentialSnapshot, ThreadCredentialSnapshot) in
            let before = ThreadCredentials.current()
            try ThreadCredentials.impersonate(nobody)
            try ThreadCredentials.revert()
            try ThreadCredentials.revert()
            return (before, ThreadCredentials.current())
        }
        XCTAssertEqual(results.1, results.0)
    }

    func testReimpersonationSwitchesAndRevertReturnsToTheOriginal() throws {
        let (nobody, daemon) = (self.nobody, self.daemon)
        let problems = try onNewThread { () throws -> [String] in
            var problems: [String] = []
            let before = ThreadCredentials.current()
            try ThreadCredentials.impersonate(nobody)
            try ThreadCredentials.impersonate(daemon)
            let now = ThreadCredentials.current()
            if now.uids != ThreadCredentialSnapshot.IDs(real: 1, effective: 1, saved: 0, filesystem: 1) {
                problems.append("as daemon: \(now)")
            }
            if now.groups != daemon.groups { problems.append("daemon's groups: \(now.groups)") }
            if ThreadCredentials.impersonatedAccount != daemon { problems.append("impersonatedAccount") }
            if ThreadCredentials.originalCredentials != before { problems.append("originalCredentials") }
            try ThreadCredentials.revert()
            if ThreadCredentials.current() != before { problems.append("one revert returns to the original") }

            // Nested scopes come back to the enclosing scope's account.
            try ThreadCredentials.withImpersonation(of: nobody) {
                try ThreadCredentials.withImpersonation(of: daemon) {
                    if ThreadCredentials.current().uids.effective != 1 { problems.append("inner scope") }
                }
                if ThreadCredentials.current().uids.effective != 65534 { problems.append("outer scope after inner") }
                if ThreadCredentials.impersonatedAccount != nobody { problems.append("outer account after inner") }
            }
            if ThreadCredentials.current() != before { problems.append("after nested scopes") }

            // A throwing body still reverts.
            struct BodyFailed: Error {}
            do {
                try ThreadCredentials.withImpersonation(of: nobody) { throw BodyFailed() }
                problems.append("body error swallowed")
            } catch is BodyFailed {
            } catch {
                problems.append("unexpected \(error)")
            }
            if ThreadCredentials.current() != before { problems.append("after a throwing body") }
            return problems
        }
        XCTAssertEqual(problems, [])
    }

    /// A failure at any step is undone completely; the error names the step and keeps the errno.
    func testFailureHalfwayIsUndone() throws {
        let (nobody, daemon) = (self.nobody, self.daemon)
        let problems = try onNewThread { () throws -> [String] in
            var problems: [String] = []
            let before = ThreadCredentials.current()
            let steps: [(ThreadCredentials.Step, String)] = [
                (.setgroups, "setgroups"), (.setresgid, "setresgid(65534"), (.setresuid, "setresuid(65534"),
                (.capset, "capset"), (.clearAmbient, "PR_CAP_AMBIENT_CLEAR_ALL"),
            ]
            for (step, call) in steps {
                FaultInjection.failNext(step, errno: EIO)
                do throws(ImpersonationError) {
                    try ThreadCredentials.impersonate(nobody)
                    problems.append("\(step): no error")
                } catch {
                    if error.code != .systemCall || error.errno != .ioError || !(error.detail ?? "").contains(call) {
                        problems.append("\(step): \(error)")
                    }
                }
                FaultInjection.clear()
                if ThreadCredentials.current() != before {
                    problems.append("\(step): not undone: \(ThreadCredentials.current())")
                }
                if ThreadCredentials.isImpersonating { problems.append("\(step): marked impersonating") }
            }

            // A call that "succeeds" without doing anything is caught by reading the credentials back.
            FaultInjection.failNext(.setresuid, errno: 0)
            do throws(ImpersonationError) {
                try ThreadCredentials.impersonate(nobody)
                problems.append("faked setresuid: no error")
            } catch {
                if error.code != .verificationFailed { problems.append("faked setresuid: \(error)") }
            }
            FaultInjection.clear()
            if ThreadCredentials.current() != before { problems.append("faked setresuid: not undone") }

            // Switching from one account to another: a failure leaves the thread as the previous account.
            try ThreadCredentials.impersonate(nobody)
            let asNobody = ThreadCredentials.current()
            FaultInjection.failNext(.setresuid, errno: EAGAIN)
            do throws(ImpersonationError) {
                try ThreadCredentials.impersonate(daemon)
                problems.append("switch: no error")
            } catch {
                if error.code != .systemCall || error.errno != .resourceTemporarilyUnavailable {
                    problems.append("switch: \(error)")
                }
            }
            FaultInjection.clear()
            if ThreadCredentials.current() != asNobody { problems.append("switch: not back to nobody") }
            if ThreadCredentials.impersonatedAccount != nobody { problems.append("switch: account") }

            // A failed revert keeps the thread marked, and a second revert succeeds.
            FaultInjection.failNext(.restoreGIDs, errno: EIO)
            do throws(ImpersonationError) {
                try ThreadCredentials.revert()
                problems.append("revert: no error")
            } catch {
                if error.code != .restoreFailed || error.errno != .ioError { problems.append("revert: \(error)") }
            }
            FaultInjection.clear()
            if !ThreadCredentials.isImpersonating { problems.append("revert: record dropped after a failure") }
            try ThreadCredentials.revert()
            if ThreadCredentials.current() != before {
                problems.append("second revert: \(ThreadCredentials.current())")
            }

            // The step fails AND its undo fails: restoreFailed, the thread stays marked, revert() repairs it.
            FaultInjection.failNext(.setresuid, errno: EIO)
            FaultInjection.failNext(.restoreGroups, errno: ENOMEM)
            do throws(ImpersonationError) {
                try ThreadCredentials.impersonate(nobody)
                problems.append("double fault: no error")
            } catch {
                if error.code != .restoreFailed || error.errno != .noMemory {
                    problems.append("double fault: \(error)")
                }
            }
            FaultInjection.clear()
            if !ThreadCredentials.isImpersonating { problems.append("double fault: not marked") }
            try ThreadCredentials.revert()
            if ThreadCredentials.current() != before { problems.append("double fault: revert did not repair") }
            return problems
        }
        XCTAssertEqual(problems, [])
    }

    /// The kernel's credential fields of one thread (`/proc/self/task/<tid>/status`), independent of the library.
    static let credentialFields = ["Uid", "Gid", "Groups", "CapInh", "CapPrm", "CapEff", "CapAmb"]

    static func kernelCredentials(thread: pid_t) -> [String: [String]] {
        procStatus(thread: thread).filter { credentialFields.contains($0.key) }
    }

    /// A thread created (by anyone) while its creator impersonates runs as the account; revert() on it returns
    /// it to the process's credentials, as the kernel reports them; the creator's own revert still works. A thread
    /// the library starts (`Threads`) while its creator impersonates starts with the process's credentials.
    func testThreadCreatedWhileImpersonatingInheritsTheAccountAndRevertsToTheProcess() throws {
        struct Inherited: Sendable {
            var atStart: [String: [String]] = [:]
            var impersonatingAtStart = false
            var account: LocalAccount?
            var afterRevert: [String: [String]] = [:]
            var impersonatingAfterRevert = true
            var secretAfterRevert: Int32 = -1
            var createdAfterRevert: (uid: uid_t, gid: gid_t)?
        }
        struct Report: Sendable {
            var creatorDuring: [String: [String]] = [:]
            var inherited = Inherited()
            var creatorAfterChild: [String: [String]] = [:]
            var joined: [String: [String]] = [:]
            var joinedImpersonating = true
            var joinedSecret: Int32 = -1
            var detached: [String: [String]] = [:]
            var creatorAfterLibraryThreads: [String: [String]] = [:]
            var creatorAfterRevert: [String: [String]] = [:]
            var creatorImpersonatingAfterRevert = true
        }
        let (nobody, folder, secret) = (self.nobody, self.folder, self.secret)
        // This thread never impersonates: its credentials are the process's.
        let process = Self.kernelCredentials(thread: ThreadCredentials.currentThreadID)
        XCTAssertEqual(process["Uid"], ["0", "0", "0", "0"])
        let asNobody = ["Uid": ["65534", "65534", "0", "65534"], "Gid": ["65534", "65534", "65534", "65534"]]

        let report = try onNewThread { () throws -> Report in
            var report = Report()
            let creator = ThreadCredentials.currentThreadID
            try ThreadCredentials.impersonate(nobody)
            report.creatorDuring = Self.kernelCredentials(thread: creator)

            // A thread the library knows nothing of (Foundation's Thread: pthread_create from this thread).
            report.inherited = try onNewThread { () throws -> Inherited in
                var inherited = Inherited()
                let me = ThreadCredentials.currentThreadID
                inherited.atStart = Self.kernelCredentials(thread: me)
                inherited.impersonatingAtStart = ThreadCredentials.isImpersonating
                inherited.account = ThreadCredentials.impersonatedAccount
                try ThreadCredentials.revert()
                inherited.afterRevert = Self.kernelCredentials(thread: me)
                inherited.impersonatingAfterRevert = ThreadCredentials.isImpersonating
                inherited.secretAfterRevert = openErrno(secret)
                inherited.createdAfterRevert = try? createFile(folder + "/by-inherited-thread").get()
                return inherited
            }
            report.creatorAfterChild = Self.kernelCredentials(thread: creator)

            // Threads the library starts.
            var joined: [String: [String]] = [:]
            var joinedImpersonating = true
            var joinedSecret: Int32 = -1
            try Threads.runAndJoin {
                joined = Self.kernelCredentials(thread: ThreadCredentials.currentThreadID)
                joinedImpersonating = ThreadCredentials.isImpersonating
                joinedSecret = openErrno(secret)
            }
            (report.joined, report.joinedImpersonating, report.joinedSecret) = (
                joined, joinedImpersonating, joinedSecret
            )
            let detached = Mutex<[String: [String]]?>(nil)
            let signal = ChangeSignal()
            try Threads.detach {
                let seen = Self.kernelCredentials(thread: ThreadCredentials.currentThreadID)
                detached.withLock { $0 = seen }
                signal.notify()
            }
            report.detached = signal.wait(until: Deadline(after: .seconds(30))) { detached.withLock { $0 } } ?? [:]
            report.creatorAfterLibraryThreads = Self.kernelCredentials(thread: creator)

            try ThreadCredentials.revert()
            report.creatorAfterRevert = Self.kernelCredentials(thread: creator)
            report.creatorImpersonatingAfterRevert = ThreadCredentials.isImpersonating
            return report
        }

        XCTAssertEqual(report.creatorDuring["Uid"], asNobody["Uid"])
        // The inherited thread starts as the account: ids, groups, no capabilities in use, the permitted set kept.
        let inherited = report.inherited
        XCTAssertEqual(inherited.atStart, report.creatorDuring, "a new thread copies its creator's credentials")
        XCTAssertEqual(inherited.atStart["Uid"], asNobody["Uid"])
        XCTAssertEqual(inherited.atStart["Gid"], asNobody["Gid"])
        XCTAssertEqual(inherited.atStart["Groups"], nobody.groups.map(String.init))
        XCTAssertEqual(inherited.atStart["CapEff"], ["0000000000000000"])
        XCTAssertEqual(inherited.atStart["CapPrm"], process["CapPrm"])
        XCTAssertTrue(inherited.impersonatingAtStart, "the kernel's credentials say it impersonates")
        XCTAssertEqual(inherited.account?.uid, nobody.uid)
        XCTAssertEqual(inherited.account?.gid, nobody.gid)
        XCTAssertEqual(inherited.account?.groups, nobody.groups)
        // Its revert returns it to the process's credentials, every field as the kernel reports it.
        XCTAssertEqual(inherited.afterRevert, process, "real/effective/saved/fs ids, groups, capability sets")
        XCTAssertFalse(inherited.impersonatingAfterRevert)
        XCTAssertEqual(inherited.secretAfterRevert, 0, "the root-only file opens again")
        XCTAssertEqual(inherited.createdAfterRevert?.uid, 0)
        XCTAssertEqual(inherited.createdAfterRevert?.gid, 0)
        // The child's revert changed nothing on the creator, whose own revert still works.
        XCTAssertEqual(report.creatorAfterChild, report.creatorDuring)
        // Library threads start with the process's credentials, and leave the creator's alone.
        XCTAssertEqual(report.joined, process, "Threads.runAndJoin while impersonating")
        XCTAssertFalse(report.joinedImpersonating)
        XCTAssertEqual(report.joinedSecret, 0)
        XCTAssertEqual(report.detached, process, "Threads.detach while impersonating")
        XCTAssertEqual(report.creatorAfterLibraryThreads, report.creatorDuring)
        XCTAssertEqual(report.creatorAfterRevert, process)
        XCTAssertFalse(report.creatorImpersonatingAfterRevert)
        XCTAssertEqual(Self.kernelCredentials(thread: ThreadCredentials.currentThreadID), process)
        XCTAssertEqual(ThreadCredentials.processCredentials, ThreadCredentials.current())
    }

    /// A pooled thread of the library's blocking executor whose job impersonated and never reverted is put back
    /// to the process's credentials before its next job: a job never runs as the account an earlier one left.
    func testAPooledThreadIsPutBackBeforeItsNextJob() throws {
        let nobody = self.nobody
        let process = Self.kernelCredentials(thread: ThreadCredentials.currentThreadID)
        let executor = try BlockingExecutor(maximumThreads: 1, keepAlive: .seconds(5))
        defer { executor.stop() }
        struct Seen: Sendable {
            var thread: pid_t
            var credentials: [String: [String]]
            var impersonating: Bool
        }
        let seen = Mutex<[Seen]>([])
        let signal = ChangeSignal()
        @Sendable func record() {
            let me = ThreadCredentials.currentThreadID
            let entry = Seen(
                thread: me, credentials: Self.kernelCredentials(thread: me),
                impersonating: ThreadCredentials.isImpersonating)
            seen.withLock { $0.append(entry) }
            signal.notify()
        }
        XCTAssertTrue(
            executor.submit {
                _ = try? ThreadCredentials.impersonate(nobody)
                record() // as nobody, left so on purpose
            })
        XCTAssertTrue(executor.submit { record() })
        let both = signal.wait(until: Deadline(after: .seconds(30))) { seen.withLock { $0.count == 2 ? $0 : nil } }
        let jobs = try XCTUnwrap(both)
        XCTAssertEqual(jobs[0].thread, jobs[1].thread, "one pooled thread ran both jobs")
        XCTAssertTrue(jobs[0].impersonating)
        XCTAssertEqual(jobs[0].credentials["Uid"], ["65534", "65534", "0", "65534"])
        XCTAssertFalse(jobs[1].impersonating, "the next job does not run as the account the first one left")
        XCTAssertEqual(jobs[1].credentials, process, "ids, groups and capability sets are the process's again")
    }

    /// An inherited impersonation counts as one: impersonating another account from it goes through the process's
    /// credentials, and one revert returns to them; a nested scope returns to the inherited account.
    func testInheritedImpersonationSwitchesAndScopesLikeAnyOther() throws {
        let (nobody, daemon) = (self.nobody, self.daemon)
        let process = Self.kernelCredentials(thread: ThreadCredentials.currentThreadID)
        let problems = try onNewThread { () throws -> [String] in
            try ThreadCredentials.withImpersonation(of: nobody) { () throws -> [String] in
                try onNewThread { () throws -> [String] in
                    var problems: [String] = []
                    let me = ThreadCredentials.currentThreadID
                    let inherited = Self.kernelCredentials(thread: me)
                    try ThreadCredentials.withImpersonation(of: daemon) {
                        if ThreadCredentials.current().uids.effective != daemon.uid { problems.append("scope") }
                    }
                    if Self.kernelCredentials(thread: me) != inherited { problems.append("scope did not return") }
                    try ThreadCredentials.impersonate(daemon)
                    let asDaemon = Self.kernelCredentials(thread: me)
                    if asDaemon["Uid"] != ["1", "1", "0", "1"] { problems.append("as daemon: \(asDaemon)") }
                    if ThreadCredentials.originalCredentials != ThreadCredentials.processCredentials {
                        problems.append("original is not the process's")
                    }
                    try ThreadCredentials.revert()
                    if Self.kernelCredentials(thread: me) != process { problems.append("revert: not the process's") }
                    if ThreadCredentials.isImpersonating { problems.append("still impersonating") }
                    return problems
                }
            }
        }
        XCTAssertEqual(problems, [])
    }

    /// A thread without CAP_SETUID in its effective set is refused before anything changes.
    func testThreadWithoutSetuidCapabilityIsRefused() throws {
        let nobody = self.nobody
        let problems = try onNewThread { () -> [String] in
            var effective: UInt64 = 0
            var permitted: UInt64 = 0
            var inheritable: UInt64 = 0
            guard ctc_capget(&effective, &permitted, &inheritable) == 0,
                ctc_capset(effective & ~(1 << 7), permitted, inheritable) == 0
            else { return ["capset"] }
            let before = ThreadCredentials.current()
            var problems: [String] = []
            do throws(ImpersonationError) {
                try ThreadCredentials.impersonate(nobody)
                problems.append("impersonated without CAP_SETUID")
            } catch {
                if error.code != .notPermitted || error.errno != .notPermitted { problems.append("\(error)") }
            }
            if ThreadCredentials.current() != before { problems.append("changed") }
            return problems // the thread ends with its reduced capabilities
        }
        XCTAssertEqual(problems, [])
    }

    /// What an impersonating thread starts is the account, with no capabilities and no way back to root.
    func testChildProcessOfAnImpersonatingThreadIsTheAccount() throws {
        let nobody = self.nobody
        let output = try onNewThread { () throws -> String in
            try ThreadCredentials.withImpersonation(of: nobody) { () throws -> String in
                var pipeEnds: [Int32] = [0, 0]
                guard pipe(&pipeEnds) == 0 else { throw Errno(rawValue: errno) }
                _ = fcntl(pipeEnds[0], F_SETFD, FD_CLOEXEC)
                _ = fcntl(pipeEnds[1], F_SETFD, FD_CLOEXEC)
                var actions = posix_spawn_file_actions_t()
                posix_spawn_file_actions_init(&actions)
                defer { posix_spawn_file_actions_destroy(&actions) }
                posix_spawn_file_actions_adddup2(&actions, pipeEnds[1], 1)
                var pid: pid_t = 0
                let arguments = ["/bin/cat", "/proc/self/status"]
                var argv: [UnsafeMutablePointer<CChar>?] = arguments.map { strdup($0) } + [nil]
                defer { for item in argv { free(item) } }
                var environment: [UnsafeMutablePointer<CChar>?] = [nil]
                let rc = posix_spawn(&pid, "/bin/cat", &actions, nil, &argv, &environment)
                close(pipeEnds[1])
                defer { close(pipeEnds[0]) }
                guard rc == 0 else { throw Errno(rawValue: rc) }
                var bytes: [UInt8] = []
                var buffer = [UInt8](repeating: 0, count: 4096)
                for _ in 0..<256 {
                    let count = read(pipeEnds[0], &buffer, buffer.count)
                    if count <= 0 { break }
                    bytes += buffer.prefix(count)
                }
                var status: Int32 = 0
                _ = waitpid(pid, &status, 0)
                return String(decoding: bytes, as: UTF8.self)
            }
        }
        let fields = parseStatus(output)
        XCTAssertEqual(fields["Uid"], ["65534", "65534", "65534", "65534"], output)
        XCTAssertEqual(fields["Gid"], ["65534", "65534", "65534", "65534"], output)
        XCTAssertEqual(fields["CapPrm"], ["0000000000000000"], output)
        XCTAssertEqual(fields["CapEff"], ["0000000000000000"], output)
        XCTAssertEqual(fields["CapAmb"], ["0000000000000000"], output)
    }

    /// From async code: the scoped form runs entirely on one thread; afterwards no thread is left impersonating.
    func testScopedImpersonationFromAsyncCode() async throws {
        let nobody = self.nobody
        let before = ThreadCredentials.current()
        let seen = try ThreadCredentials.withImpersonation(of: nobody) { ThreadCredentials.current().uids.effective }
        XCTAssertEqual(seen, 65534)
        XCTAssertFalse(ThreadCredentials.isImpersonating)
        XCTAssertEqual(ThreadCredentials.current(), before)
        await Task.yield()
        XCTAssertFalse(ThreadCredentials.isImpersonating)
        XCTAssertEqual(ThreadCredentials.current().uids.effective, 0)
    }

    /// 8 threads × 1,000 impersonate/revert cycles, alternating two accounts (and switching between them without
    /// a revert every tenth cycle): every thread ends with exactly its original credentials, within a time bound.
    func testStressEightThreadsThousandCyclesEach() throws {
        let (nobody, daemon) = (self.nobody, self.daemon)
        let cycles = 1_000
        let threads = 8
        let deadline = Date().addingTimeInterval(120)
        let mainBefore = ThreadCredentials.current()
        struct Outcome: Sendable {
            var completed = 0
            var failures: [String] = []
            var endsAsOriginal = false
        }
        let started = Date()
        let runs = (0..<threads).map { index in
            ThreadRun { () -> Outcome in
                var outcome = Outcome()
                let original = ThreadCredentials.current()
                let (first, second) = index % 2 == 0 ? (nobody, daemon) : (daemon, nobody)
                for cycle in 0..<cycles {
                    if Date() > deadline {
                        outcome.failures.append("deadline passed at cycle \(cycle)")
                        break
                    }
                    let account = cycle % 2 == 0 ? first : second
                    do {
                        try ThreadCredentials.impersonate(account)
                        var now = ThreadCredentials.current()
                        if now.uids.effective != account.uid || now.gids.effective != account.gid
                            || now.groups != account.groups || now.capabilities.effective != 0
                        {
                            outcome.failures.append("cycle \(cycle): as \(account.name): \(now)")
                        }
                        if cycle % 10 == 9 {
                            let other = account == first ? second : first
                            try ThreadCredentials.impersonate(other)
                            now = ThreadCredentials.current()
                            if now.uids.effective != other.uid || now.groups != other.groups {
                                outcome.failures.append("cycle \(cycle): switched to \(other.name): \(now)")
                            }
                        }
                        try ThreadCredentials.revert()
                        if ThreadCredentials.current() != original {
                            outcome.failures.append("cycle \(cycle): after revert: \(ThreadCredentials.current())")
                        }
                        outcome.completed += 1
                    } catch {
                        outcome.failures.append("cycle \(cycle): \(error)")
                        try? ThreadCredentials.revert()
                    }
                    if outcome.failures.count > 10 { break }
                }
                outcome.endsAsOriginal = ThreadCredentials.current() == original && !ThreadCredentials.isImpersonating
                return outcome
            }
        }
        // Meanwhile this thread keeps its credentials.
        for _ in 0..<20 {
            XCTAssertEqual(ThreadCredentials.current(), mainBefore)
            usleep(5_000)
        }
        for (index, run) in runs.enumerated() {
            let outcome = try run.result(timeout: max(1, deadline.timeIntervalSinceNow + 10))
            XCTAssertEqual(outcome.completed, cycles, "thread \(index)")
            XCTAssertEqual(outcome.failures, [], "thread \(index)")
            XCTAssertTrue(outcome.endsAsOriginal, "thread \(index)")
        }
        let elapsed = Date().timeIntervalSince(started)
        print("stress: \(threads) threads × \(cycles) cycles in \(String(format: "%.2f", elapsed)) s")
        XCTAssertLessThan(elapsed, 120)
        XCTAssertEqual(ThreadCredentials.current(), mainBefore)
    }
}
