import XCTest

@testable import Keying
@testable import VICI

/// Tier 1: the table of what only charon's log tells, by series. Series 5 lines are from runs of Debian 12's
/// 5.9.8; series 6 lines are as strongSwan 6.0's source formats them (`child_delete.c`, `child_create.c`).
final class CharonLogTests: XCTestCase {
    func testTheSeriesComesFromTheVersion() {
        XCTAssertEqual(CharonLog(version: "5.9.8").series, .five)
        XCTAssertEqual(CharonLog(version: "5.9.14").series, .five)
        XCTAssertEqual(CharonLog(version: "6.0.1").series, .six)
        XCTAssertEqual(CharonLog(version: "6.0dr9").series, .six)
        XCTAssertEqual(CharonLog(version: "7.1.0").series, .six, "later series read as the latest known")
        XCTAssertEqual(CharonLog(version: "unknown").series, .five, "what Debian 12 ships, when unsure")
    }

    /// A CHILD_SA of the IKE SA closing: 5.9 says `CHILD_SA closed`, 6.0 names it (`CHILD_SA c1-249{7} closed`).
    /// Each series reads its own words, and the peer's DELETE in both.
    func testAnotherChildClosingInEachSeries() {
        let five = CharonLog(version: "5.9.8")
        let six = CharonLog(version: "6.0.1")
        let closedIn5 = "[IKE] CHILD_SA closed"
        let closedIn6 = "[IKE] CHILD_SA c1-249{7} closed"
        XCTAssertTrue(five.anotherChildClosed(closedIn5))
        XCTAssertTrue(six.anotherChildClosed(closedIn6))
        XCTAssertFalse(five.anotherChildClosed(closedIn6), "5.9 never says it so")
        XCTAssertFalse(six.anotherChildClosed(closedIn5), "6.0 never says it so")
        let delete =
            "[ENC] parsed INFORMATIONAL response 3035 [ D ] | [IKE] received DELETE for ESP CHILD_SA with SPI c87289c3"
        XCTAssertTrue(five.anotherChildClosed(delete))
        XCTAssertTrue(six.anotherChildClosed(delete))
        XCTAssertFalse(six.anotherChildClosed("[IKE] received TS_UNACCEPTABLE notify"))
        XCTAssertFalse(six.anotherChildClosed("[IKE] CHILD_SA c1-249{7} established with SPIs c1_i c2_o"))
    }

    func testTheDuplicateLineIsTheSameInBothSeries() {
        let line =
            "[IKE] not establishing CHILD_SA c1125964544-2{9} due to existing duplicate {5} with SPIs cc11ece8_i"
            + " c35638db_o and TS 10.77.0.1/32[tcp/43451] === 10.77.0.2/32[tcp/34661]"
        for log in [CharonLog(series: .five), CharonLog(series: .six)] {
            XCTAssertEqual(log.existingDuplicate(line), 5)
            XCTAssertNil(log.existingDuplicate("[IKE] received TS_UNACCEPTABLE notify"))
        }
    }

    func testNotReadyIsToldFromAFinalRefusal() {
        let log = CharonLog.fallback
        XCTAssertTrue(log.peerNotReady("[IKE] received TS_UNACCEPTABLE notify"))
        XCTAssertTrue(
            log.peerNotReady("[CFG] no IKE config found for 10.77.0.1...10.77.0.2, sending NO_PROPOSAL_CHOSEN"))
        XCTAssertTrue(
            log.peerNotReady("[ENC] parsed IKE_SA_INIT response 0 [ N(NO_PROP) ] | received NO_PROPOSAL_CHOSEN"))
        XCTAssertFalse(log.peerNotReady("[IKE] received NO_PROPOSAL_CHOSEN notify"), "in CREATE_CHILD_SA: final")
        XCTAssertFalse(log.peerNotReady("[IKE] received AUTHENTICATION_FAILED notify error"))
    }

    /// A failed `initiate`'s reason is read from its `control-log` here, not in the VICI layer: an authentication
    /// failure early in a long log still classifies as one, and the peer's DELETE of another SA is no reason.
    func testTheReasonIsPickedFromAFailedCommandsLog() {
        func line(_ group: String, _ text: String) -> ControlLog {
            ControlLog(["group": .string(group), "msg": .string(text)])
        }
        var error = VICIError(.commandFailed, command: "initiate", errmsg: "establishing CHILD_SA 'c' failed")
        error.controlLog =
            [
                line("IKE", "initiating IKE_SA c1[3] to 10.77.0.2"),
                line("ENC", "parsed IKE_AUTH response 1 [ N(AUTH_FAILED) ]"),
                line("IKE", "received AUTHENTICATION_FAILED notify error"),
            ]
            + (0..<20).map { line("ENC", "parsed INFORMATIONAL request \($0) [ D ]") }
        let log = CharonLog.fallback
        XCTAssertEqual(
            log.reasons(error.controlLog).map(\.message),
            ["parsed IKE_AUTH response 1 [ N(AUTH_FAILED) ]", "received AUTHENTICATION_FAILED notify error"])
        XCTAssertEqual(log.classify(error).code, .authenticationFailed)
        XCTAssertTrue(log.explanation(error).contains("AUTHENTICATION_FAILED"))
        XCTAssertFalse(
            error.description.contains("AUTHENTICATION_FAILED"), "the VICI layer shows the last lines, unread")
    }
}
