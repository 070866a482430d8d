import XCTest

@testable import Keying
@testable import VICI

final class KeyingConfigurationTests: XCTestCase {
    func testPSKFileWithCommentsAndQuotes() throws {
        let configuration = try KeyingConfiguration.parse(
            """
            # a server's keying
            identity   a.example   # trailing comment
            psk        "with # inside and spaces"

            charon     /run/other/charon.vici
            negotiation-timeout 2.5
            """)
        XCTAssertEqual(configuration.identity, "a.example")
        XCTAssertEqual(configuration.psk, "with # inside and spaces")
        XCTAssertEqual(configuration.charon, .socket("/run/other/charon.vici"))
        XCTAssertEqual(configuration.negotiationTimeout, .milliseconds(2500))
        let credentials = try configuration.credentials()
        XCTAssertEqual(credentials.identity, "a.example")
        guard case .psk(let secret) = credentials.method else { return XCTFail("psk expected") }
        XCTAssertEqual(secret, "with # inside and spaces")
    }

    /// The keying file reads its lines as the other two files do: CR LF ends a line, an identity with spaces may
    /// stand unquoted, an eap-user secret may be quoted, and a broken line is named.
    func testCRLFUnquotedDistinguishedNamesAndQuotedSecrets() throws {
        let configuration = try KeyingConfiguration.parse(
            "identity C=CH, O=strongSwan, CN=moon\r\npeer-psk \"C=CH, CN=sun\" \"sun's secret\"\r\n"
                + "eap-user alice \"alice's secret\"\r\n")
        XCTAssertEqual(configuration.identity, "C=CH, O=strongSwan, CN=moon")
        XCTAssertEqual(configuration.peerKeys, ["C=CH, CN=sun": "sun's secret"])
        XCTAssertEqual(configuration.eapUsers, ["alice": "alice's secret"])
        XCTAssertThrowsError(try KeyingConfiguration.parse("identity a.example\npsk \"open")) {
            let error = $0 as? KeyingConfiguration.ParseError
            XCTAssertEqual(error?.line, 2)
            XCTAssertEqual(error?.reason, .syntax)
            XCTAssertEqual(error?.description, "line 2: unterminated quote")
        }
    }

    func testCertificateFile() throws {
        let configuration = try KeyingConfiguration.parse(
            """
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

    func testAnUnreachableCharonSocketKeepsTheVICIErrorAsAValue() throws {
        let configuration = try KeyingConfiguration.parse(
            "identity a.example\npsk \"group-key-0123456789\"\ncharon /nonexistent/charon.vici\n")
        XCTAssertThrowsError(try configuration.makeBackend()) { error in
            guard let keying = error as? KeyingError else { return XCTFail("\(error)") }
            XCTAssertEqual(keying.code, .unavailable)
            let vici = keying.underlying as? VICIError
            XCTAssertNotNil(vici, "the cause is a value, not only text: \(keying)")
            XCTAssertEqual(vici?.code, .daemonUnavailable)
            XCTAssertTrue(keying.explanation.contains("/nonexistent/charon.vici"), keying.explanation)
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

final class PeerKeyConfigurationTests: XCTestCase {
    /// `peer-psk` lines (repeatable, identity and secret either quoted) become per-peer keys.
    func testPeerKeysParse() throws {
        let configuration = try KeyingConfiguration.parse(
            """
            identity b.example
            peer-psk a.example "a's # secret"
            peer-psk "C=CH, O=Example, CN=c.example" c-secret   # a DN identity
            """)
        XCTAssertNil(configuration.psk)
        XCTAssertEqual(
            configuration.peerKeys, ["a.example": "a's # secret", "C=CH, O=Example, CN=c.example": "c-secret"])
        guard case .peerKeys(let keys) = try configuration.credentials().method else {
            return XCTFail("peer keys expected")
        }
        XCTAssertEqual(keys.count, 2)
    }

    func reason(_ text: String) -> KeyingConfiguration.ParseError? {
        do {
            _ = try KeyingConfiguration.parse(text)
            return nil
        } catch {
            return error
        }
    }

    /// A group key beside per-peer keys is refused, and the error says why; so are keys that would act as a
    /// group key (our own identity, a pattern), duplicates, and keys with a certificate. No secret in the text.
    func testKeysThatWouldAuthenticateAnyClaimAreRefused() throws {
        let both = try XCTUnwrap(reason("identity b.example\npsk group-secret\npeer-psk a.example a-secret"))
        XCTAssertEqual(both.reason, .groupKeyWithPeerKeys)
        XCTAssertEqual(both.line, 3)
        XCTAssertTrue(both.message.contains("group key") && both.message.contains("any holder"), both.message)
        let cases: [(String, KeyingConfiguration.ParseReason)] = [
            ("identity b.example\npeer-psk a.example a-secret\npsk group-secret", .groupKeyWithPeerKeys),
            (
                "identity b.example\npeer-psk a.example a-secret\npeer-psk A.EXAMPLE other-secret",
                .duplicatePeerKey(identity: "A.EXAMPLE")
            ),
            ("identity b.example\npeer-psk B.Example own-secret", .peerKeyForOwnIdentity),
            ("identity b.example\npeer-psk %any any-secret", .peerKeyIdentityIsPattern(identity: "%any")),
            ("identity b.example\npeer-psk *.example any-secret", .peerKeyIdentityIsPattern(identity: "*.example")),
            ("identity b.example\npeer-psk a.example a-secret\ncertificate /c\nprivate-key /k", .credentials),
            ("identity b.example\npeer-psk a.example", .syntax),
            ("identity b.example\npeer-psk a.example one two", .syntax),
            ("identity b.example\npeer-psk \"a.example secret", .syntax),
        ]
        for (text, expected) in cases {
            let error = try XCTUnwrap(reason(text), text)
            XCTAssertEqual(error.reason, expected, "\(text): \(error)")
            for secret in ["group-secret", "a-secret", "other-secret", "own-secret", "any-secret"] {
                XCTAssertFalse(error.description.contains(secret), "\(error) shows a secret")
            }
        }
    }
}

final class StrongSwanClassificationTests: XCTestCase {
    func classify(_ errmsg: String, _ log: String) -> KeyingError.Code {
        CharonLog.fallback.classify(VICIError(.commandFailed, command: "initiate", errmsg: errmsg, detail: log)).code
    }

    /// charon's words, as seen in real runs, mapped to what the socket layer reports.
    func testCharonRefusalsAreClassified() {
        XCTAssertEqual(
            classify(
                "establishing CHILD_SA 'i1' failed",
                "[IKE] received EAP_FAILURE, EAP authentication failed | N(AUTH_FAILED)"), .authenticationFailed)
        XCTAssertEqual(
            classify(
                "establishing CHILD_SA 'i1' failed",
                "[IKE] received AUTHENTICATION_FAILED notify error"), .authenticationFailed)
        XCTAssertEqual(
            classify(
                "establishing CHILD_SA 'i1' failed",
                "[CFG] constraint check failed: identity 'b.example' required"), .authenticationFailed)
        XCTAssertEqual(
            classify("establishing CHILD_SA 'i1' failed", "[IKE] received NO_PROPOSAL_CHOSEN notify"),
            .noProposalChosen)
        XCTAssertEqual(
            classify("establishing CHILD_SA 'i1' failed", "[IKE] received TS_UNACCEPTABLE notify"), .rejected)
        XCTAssertEqual(classify("establishing CHILD_SA 'i1' failed", "[IKE] giving up after 5 retransmits"), .timedOut)
        XCTAssertEqual(
            CharonLog.fallback.classify(VICIError(.daemonUnavailable, command: "initiate")).code, .unavailable)
    }

    /// charon 5.9's `initiate` fails when another CHILD_SA of its IKE SA closes (seen with four processes on one
    /// charon, one of them exiting): a refusal with no reason, told apart by the log so ours is awaited.
    func testAnotherChildClosingIsToldApart() {
        let log =
            "[NET] received packet: from 10.77.0.2[4500] to 10.77.0.1[4500] (80 bytes) | [ENC] parsed INFORMATIONAL"
            + " response 3035 [ D ] | [IKE] received DELETE for ESP CHILD_SA with SPI c87289c3 | [IKE] CHILD_SA closed"
            + " reqid=1"
        let error = CharonLog.fallback.classify(
            VICIError(.commandFailed, command: "initiate", errmsg: "establishing CHILD_SA 'c1-249' failed", detail: log)
        )
        XCTAssertEqual(error.code, .rejected)
        XCTAssertTrue(CharonLog.fallback.anotherChildClosed(error.detail))
        let refused = CharonLog.fallback.classify(
            VICIError(
                .commandFailed, command: "initiate", errmsg: "establishing CHILD_SA 'i1' failed",
                detail: "[IKE] received TS_UNACCEPTABLE notify"))
        XCTAssertFalse(CharonLog.fallback.anotherChildClosed(refused.detail))
    }

    /// charon refuses a CHILD_SA that duplicates one it still counts as installed (seen after the socket's
    /// outbound SA reached its hard lifetime): the duplicate's unique id is read from its log line.
    func testAnExistingDuplicateIsNamed() {
        let log =
            "[IKE] not establishing CHILD_SA c1125964544-2{9} due to existing duplicate {5} with SPIs cc11ece8_i"
            + " c35638db_o and TS 10.77.0.1/32[tcp/43451] === 10.77.0.2/32[tcp/34661]"
        let error = CharonLog.fallback.classify(
            VICIError(.commandFailed, command: "initiate", errmsg: "establishing CHILD_SA 'c1-2' failed", detail: log))
        XCTAssertEqual(CharonLog.fallback.existingDuplicate(error.detail), 5)
        XCTAssertNil(CharonLog.fallback.existingDuplicate("[IKE] received TS_UNACCEPTABLE notify"))
    }
}
