import XCTest

@testable import Keying

/// Tier 1: `client-user` lines and what their rules allow.
final class ClientUserRuleTests: XCTestCase {
    func testRulesParseWithTheirLines() throws {
        let configuration = try KeyingConfiguration.parse(
            """
            identity a.example
            psk "k"
            client-user www-data
            client-user 65534 peers=b.example,*.corp.example insecure=no
            client-user backup peers=vault.example peers=archive.example
            """)
        XCTAssertEqual(configuration.clientUsers, ["www-data", "65534", "backup"])
        XCTAssertEqual(configuration.clientRules[0], ClientUserRule(user: "www-data", line: 3))
        XCTAssertEqual(
            configuration.clientRules[1],
            ClientUserRule(user: "65534", peers: ["b.example", "*.corp.example"], allowsInsecure: false, line: 4))
        XCTAssertEqual(configuration.clientRules[2].peers, ["vault.example", "archive.example"])
        XCTAssertTrue(configuration.clientRules[2].allowsInsecure)
        XCTAssertEqual(configuration.clientRules[1].source, "the keying file's client-user rule for 65534 (line 4)")
    }

    func testMistakesAreNamedWithTheirLine() {
        for option in [
            "peers=", "peers=*", "peers=a*b", "peers=%any", "peers=b.example,", "colour=blue", "insecure=maybe",
        ] {
            let text = "identity a\npsk k\nclient-user 65534 \(option)"
            XCTAssertThrowsError(try KeyingConfiguration.parse(text), option) {
                XCTAssertTrue("\($0)".contains("line 3"), "\($0)")
            }
        }
    }

    func testPeersMatchLiterallyOrBySuffix() {
        let rule = ClientUserRule(user: "u", peers: ["b.example", "*.corp.example"])
        XCTAssertTrue(rule.admitsPeer("b.example"))
        XCTAssertTrue(rule.admitsPeer("B.Example"))
        XCTAssertTrue(rule.admitsPeer("db.corp.example"))
        XCTAssertTrue(rule.admitsPeer("a.b.corp.example"))
        XCTAssertFalse(rule.admitsPeer("corp.example"), "*.SUFFIX needs a label before the suffix")
        XCTAssertFalse(rule.admitsPeer("evilcorp.example"))
        XCTAssertFalse(rule.admitsPeer("c.example"))
        XCTAssertFalse(rule.admitsPeer("b.example.evil"))
        XCTAssertTrue(ClientUserRule(user: "u").admitsPeer("anyone"), "no peers= option: any peer")
        XCTAssertFalse(ClientUserRule(user: "u").restrictsPeers)
        XCTAssertTrue(rule.restrictsPeers)
        // A suffix pattern names host names only: a distinguished name ending in it is not one.
        XCTAssertFalse(rule.admitsPeer("O=Evil, CN=x.corp.example"))
        XCTAssertFalse(rule.admitsPeer("mallory@x.corp.example"))
        XCTAssertTrue(ClientUserRule(user: "u", peers: ["O=Good, CN=x.example"]).admitsPeer("o=good, cn=x.example"))
        // A client the daemon cannot name may do nothing.
        XCTAssertFalse(ClientUserRule.unknownClient.admitsPeer("b.example"))
        XCTAssertTrue(ClientUserRule.unknownClient.restrictsPeers)
        XCTAssertFalse(ClientUserRule.unknownClient.allowsInsecure)
    }
}
