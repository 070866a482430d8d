import NetnsTestSupport
import TierTesting
import XCTest
import XFRM

/// Tier 3: real ESP. On a kernel without ESP each test boots the user-mode-linux kernel and runs itself
/// there (see `inESPKernel`).
final class ESPTransportTests: XCTestCase {
    func testTCPOverESPTransportIPv4() throws {
        try inESPKernel(self) {
            let report = try ESPTransportScenario(family: .inet).run()
            print(report)
            assertClaims(report)
        }
    }

    func testTCPOverESPTransportIPv6() throws {
        try inESPKernel(self) {
            let report = try ESPTransportScenario(family: .inet6).run()
            print(report)
            assertClaims(report)
        }
    }

    func assertClaims(_ report: ESPTransportScenario.Report, file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertGreaterThan(report.connectAttempts, 0, file: file, line: line)
        XCTAssertTrue(report.echoMatched, "payload echoed intact", file: file, line: line)
        XCTAssertGreaterThan(report.outboundSAPackets, 0, "outbound SA counted packets", file: file, line: line)
        XCTAssertGreaterThan(report.inboundSAPackets, 0, "inbound SA counted packets", file: file, line: line)
        XCTAssertGreaterThan(report.capturedESPPackets, 0, "ESP on the wire", file: file, line: line)
        XCTAssertEqual(
            report.capturedPlainTCPPackets, 0, "not one plain TCP packet on the wire", file: file, line: line)
        XCTAssertFalse(report.payloadVisibleInCapture, "no payload byte in clear", file: file, line: line)
        XCTAssertEqual(
            report.connectAfterDeletion, .resourceTemporarilyUnavailable,
            "without SAs a new connection is refused", file: file, line: line)
        XCTAssertFalse(report.lateDataDelivered, "without SAs no data gets through", file: file, line: line)
        XCTAssertEqual(report.leftoverStates, 0, file: file, line: line)
        XCTAssertEqual(report.leftoverPolicies, 0, file: file, line: line)
        XCTAssertTrue(report.allHold, "\(report)", file: file, line: line)
    }

    /// ESP states of each algorithm family round-trip through the kernel: keys, ICV and truncation lengths.
    func testESPStateRoundTripThroughTheKernel() throws {
        try inESPKernel(self) {
            let ns = try TestNamespace(prefix: "espsa")
            defer { ns.remove() }
            let client = try XFRMClient(namespace: ns.namespace)
            let gcm = XFRMState(
                source: "10.6.0.1", destination: "10.6.0.2", spi: 0x100, reqid: 3,
                algorithms: [.aesGCM(key: (0..<36).map { UInt8($0) })], replayWindow: 32)
            let cbc = XFRMState(
                source: "fd06::1", destination: "fd06::2", spi: 0x200, mode: .tunnel, reqid: 4,
                algorithms: [
                    XFRMAlgorithm(.encryption, name: "cbc(aes)", key: (0..<16).map { UInt8($0) }),
                    XFRMAlgorithm(
                        .authenticationTruncated(truncationBits: 128),
                        name: "hmac(sha256)", key: (0..<32).map { UInt8($0) }),
                ],
                selector: .host("fd06::1", "fd06::2"))
            try client.addState(gcm)
            try client.addState(cbc)
            XCTAssertEqual(try client.getState(gcm.id).algorithms, gcm.algorithms)
            XCTAssertEqual(try client.getState(cbc.id).algorithms, cbc.algorithms)
            XCTAssertEqual(try client.getState(cbc.id).selector, cbc.selector)

            // `ip xfrm state update` changes lifetimes (not keys or the replay window).
            var updated = gcm
            updated.lifetime.hardAddExpiresSeconds = 3600
            updated.lifetime.softAddExpiresSeconds = 3000
            try client.updateState(updated)
            XCTAssertEqual(try client.getState(gcm.id).lifetime, updated.lifetime)
            XCTAssertThrowsError(try client.addState(gcm)) { XCTAssertEqual(($0 as? XFRMError)?.errno, .fileExists) }

            // libnl-xfrm's own reading of the same SAD agrees on ids, reqids and the AEAD key.
            let theirs = try LibnlOracle.states(in: ns.namespace)
            XCTAssertEqual(Set(theirs.map(\.spi)), [0x100, 0x200])
            let theirGCM = try XCTUnwrap(theirs.first { $0.spi == 0x100 })
            XCTAssertEqual(theirGCM.reqid, 3)
            XCTAssertEqual(theirGCM.destination, "10.6.0.2")
            XCTAssertEqual(theirGCM.aeadName, "rfc4106(gcm(aes))")
            XCTAssertEqual(theirGCM.aeadKey, gcm.algorithms[0].key)
            XCTAssertEqual(theirGCM.aeadICVBits, 128)

            try client.flushStates(proto: .esp)
            XCTAssertEqual(try client.states(), [])
        }
    }
}
