import DaemonControl
import Keying
import XCTest

@testable import KeyingDaemon

/// Who the keying daemon admits, and with which rule: root and its own user without limits, each `client-user`
/// line's user with its rule, a user named twice not at all.
final class ClientAdmissionTests: XCTestCase {
    func credentials(_ uid: UInt32) -> PeerCredentials { PeerCredentials(pid: 1, uid: uid, gid: uid) }

    func testRulesByUserAndDuplicatesRefused() {
        let admission = ClientAdmission(rules: [
            ClientUserRule(user: "65534", peers: ["b.example"], allowsInsecure: false, line: 3),
            ClientUserRule(user: "4000", line: 4),
            ClientUserRule(user: "4001", peers: ["c.example"], line: 5),
            ClientUserRule(user: "4001", line: 6),
            ClientUserRule(user: "no-such-user-anywhere", line: 7),
        ])
        XCTAssertTrue(admission.admits(credentials(0)))
        XCTAssertNil(admission.rule(for: credentials(0)), "root has no limits")
        XCTAssertTrue(admission.admits(credentials(65534)))
        XCTAssertEqual(admission.rule(for: credentials(65534))?.peers, ["b.example"])
        XCTAssertEqual(admission.rule(for: credentials(4000))?.peers, nil)
        XCTAssertFalse(admission.admits(credentials(4001)), "named twice (lines 5 and 6): refused, not guessed")
        XCTAssertEqual(admission.duplicates.map(\.uid), [4001])
        XCTAssertEqual(admission.duplicates.first?.lines, [5, 6])
        XCTAssertEqual(admission.unknownNames, ["no-such-user-anywhere"])
        XCTAssertFalse(admission.admits(credentials(4002)))
    }
}
