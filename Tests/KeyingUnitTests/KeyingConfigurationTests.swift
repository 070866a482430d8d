@testable import Keying
import XCTest

final class KeyingConfigurationTests: XCTestCase {
    func testPSKFileWithCommentsAndQuotes() throws {
        let configuration = try KeyingConfiguration.parse("""
            # a server's keying
            identity   a.example   # trailing comment
            psk        "with # inside and spaces"

            charon     /run/other/charon.vici
            negotiation-timeout 2.5
            """)
        XCTAssertEqual(configuration.identity, "a.example")
        XCTAssertEqual(configuration.psk, "with # inside and spaces")
        XCTAssertEqual(configuration.charon, .socket("/run/other/charon.vici"))
        XCTAssertEqual(configuration.negotiationTimeout, 2.5)
        let credentials = try configuration.credentials()
        XCTAssertEqual(credentials.identity, "a.example")
        guard case .psk(let secret) = credentials.method else { return XCTFail("psk expected") }
        XCTAssertEqual(secret, "with # inside and spaces")
    }

    func testCertificateFile() throws {
        let configuration = try KeyingConfiguration.parse("""
            identity b.example
            certificate /etc/x/b.crt
            private-key /etc/x/b.key
            authority /etc/x/ca1.crt
            authority /etc/x/ca2.crt
            charon private
            """)
        XCTAssertEqual(configuration.authorityPaths, ["/etc/x/ca1.crt", "/etc/x/ca2.crt"])
        XCTAssertEqual(configuration.charon, .private)
        XCTAssertThrowsError(try configuration.credentials(), "files that do not exist are an error, not empty keys") {
            XCTAssertEqual(($0 as? KeyingError)?.code, .unavailable)
        }
    }

    func testMistakesAreReportedWithTheirLine() {
        let cases: [(String, String)] = [
            ("identity a\npsk x\ncolour blue", "line 3"),
            ("psk x", "identity"),
            ("identity a", "psk"),
            ("identity a\npsk x\ncertificate /c\nprivate-key /k", "not both"),
            ("identity a\ncertificate /c", "private-key"),
            ("identity a\npsk x\ncharon relative/path", "line 3"),
            ("identity a\npsk x\nnegotiation-timeout 0", "line 3"),
            ("identity\npsk x", "line 1"),
        ]
        for (text, expected) in cases {
            XCTAssertThrowsError(try KeyingConfiguration.parse(text), text) {
                XCTAssertTrue("\($0)".contains(expected), "\($0) should mention \(expected)")
            }
        }
    }
}

final class StrongSwanClassificationTests: XCTestCase {
    func classify(_ errmsg: String, _ log: String) -> KeyingError.Code {
        StrongSwanBackend.classify(VICIError(.commandFailed, command: "initiate", errmsg: errmsg, detail: log)).code
    }

    /// charon's words, as seen in real runs, mapped to what the socket layer reports.
    func testCharonRefusalsAreClassified() {
        XCTAssertEqual(classify("establishing CHILD_SA 'i1' failed",
                                "[IKE] received EAP_FAILURE, EAP authentication failed | N(AUTH_FAILED)"), .authenticationFailed)
        XCTAssertEqual(classify("establishing CHILD_SA 'i1' failed",
                                "[IKE] received AUTHENTICATION_FAILED notify error"), .authenticationFailed)
        XCTAssertEqual(classify("establishing CHILD_SA 'i1' failed",
                                "[CFG] constraint check failed: identity 'b.example' required"), .authenticationFailed)
        XCTAssertEqual(classify("establishing CHILD_SA 'i1' failed", "[IKE] received NO_PROPOSAL_CHOSEN notify"),
                       .noProposalChosen)
        XCTAssertEqual(classify("establishing CHILD_SA 'i1' failed", "[IKE] received TS_UNACCEPTABLE notify"), .rejected)
        XCTAssertEqual(classify("establishing CHILD_SA 'i1' failed", "[IKE] giving up after 5 retransmits"), .timedOut)
        XCTAssertEqual(StrongSwanBackend.classify(VICIError(.daemonUnavailable, command: "initiate")).code, .unavailable)
    }
}
