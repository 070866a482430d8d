import Foundation
import Glibc
import Impersonation
import XCTest

/// Tier 1: what needs no privileges. Switching credentials is tier 2 (ImpersonationKernelTests).
final class ThreadCredentialsUnitTests: XCTestCase {
    /// The snapshot agrees with the kernel's own report in /proc/thread-self/status.
    func testCurrentAgreesWithProc() throws {
        let snapshot = ThreadCredentials.current()
        let status = try String(contentsOfFile: "/proc/thread-self/status", encoding: .utf8)
        var fields: [String: [String]] = [:]
        for line in status.split(separator: "\n") {
            let parts = line.split(separator: ":", maxSplits: 1)
            guard parts.count == 2 else { continue }
            fields[String(parts[0])] = parts[1].split(whereSeparator: { $0 == " " || $0 == "\t" }).map(String.init)
        }
        let uids = snapshot.uids
        let gids = snapshot.gids
        XCTAssertEqual(fields["Uid"], [uids.real, uids.effective, uids.saved, uids.filesystem].map(String.init))
        XCTAssertEqual(fields["Gid"], [gids.real, gids.effective, gids.saved, gids.filesystem].map(String.init))
        XCTAssertEqual(fields["Groups"] ?? [], snapshot.groups.map(String.init))
        let caps = snapshot.capabilities
        XCTAssertEqual(fields["CapEff"].flatMap { UInt64($0[0], radix: 16) }, caps.effective)
        XCTAssertEqual(fields["CapPrm"].flatMap { UInt64($0[0], radix: 16) }, caps.permitted)
        XCTAssertEqual(fields["CapInh"].flatMap { UInt64($0[0], radix: 16) }, caps.inheritable)
        XCTAssertEqual(fields["CapAmb"].flatMap { UInt64($0[0], radix: 16) }, caps.ambient)
        XCTAssertEqual(uids.effective, geteuid())
        XCTAssertEqual(gids.effective, getegid())
        XCTAssertEqual(fields["Pid"]?.first, String(ThreadCredentials.currentThreadID))
    }

    func testRevertWithoutImpersonationChangesNothing() throws {
        let before = ThreadCredentials.current()
        XCTAssertFalse(ThreadCredentials.isImpersonating)
        XCTAssertNil(ThreadCredentials.originalCredentials)
        try ThreadCredentials.revert()
        try ThreadCredentials.revert()
        XCTAssertEqual(ThreadCredentials.current(), before)
        XCTAssertFalse(ThreadCredentials.isImpersonating)
    }

    /// Refused before any system call, so safe to run with any privileges.
    func testPrivilegedAccountsAreRefusedWithoutChangingAnything() throws {
        let before = ThreadCredentials.current()
        for account in [
            LocalAccount(name: "root", uid: 0, gid: 0, groups: [0]),
            LocalAccount(name: "toor", uid: 0, gid: 100, groups: [100]),
            LocalAccount(name: "wheelie", uid: 1234, gid: 0, groups: [0]),
            LocalAccount(name: "unchanged", uid: uid_t.max, gid: 1234, groups: [1234]),
        ] {
            XCTAssertThrowsImpersonationError(
                .privilegedAccount,
                { () throws(ImpersonationError) in
                    try ThreadCredentials.impersonate(account)
                })
            var ran = false
            XCTAssertThrowsError(try ThreadCredentials.withImpersonation(of: account) { ran = true }) { error in
                XCTAssertEqual((error as? ImpersonationError)?.code, .privilegedAccount)
            }
            XCTAssertFalse(ran, "the body must not run")
        }
        XCTAssertEqual(ThreadCredentials.current(), before)
        XCTAssertFalse(ThreadCredentials.isImpersonating)
    }

    /// Without CAP_SETUID/CAP_SETGID (an unprivileged run) impersonation is refused up front. As root this is
    /// covered by the kernel tier, on a thread that drops those capabilities itself.
    func testWithoutCapabilitiesNothingChanges() throws {
        let before = ThreadCredentials.current()
        let needed: UInt64 = (1 << 6) | (1 << 7)
        guard before.capabilities.effective & needed != needed else { return }
        XCTAssertThrowsImpersonationError(
            .notPermitted,
            { () throws(ImpersonationError) in
                try ThreadCredentials.impersonate(try LocalAccount.lookup("nobody"))
            }
        ) { XCTAssertEqual($0.errno, .notPermitted) }
        XCTAssertEqual(ThreadCredentials.current(), before)
        XCTAssertFalse(ThreadCredentials.isImpersonating)
    }

    func testErrorDescriptionKeepsErrno() {
        let error = ImpersonationError(
            .systemCall, operation: "impersonate nobody", errno: .permissionDenied,
            detail: "setresuid(65534, 65534, 0)")
        XCTAssertTrue(error.description.contains("impersonate nobody: systemCall"), error.description)
        XCTAssertTrue(error.description.contains("errno 13"), error.description)
        XCTAssertTrue(error.description.contains("setresuid(65534, 65534, 0)"), error.description)
        XCTAssertEqual(error, ImpersonationError(.systemCall, operation: "other"))
    }
}
