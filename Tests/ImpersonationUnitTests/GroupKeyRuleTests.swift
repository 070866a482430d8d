import Impersonation
import XCTest

/// Peers whose machine authenticated with a group key: mapped only through `id` rules marked `accept-group-key`.
final class GroupKeyRuleTests: XCTestCase {
    let accounts = FakeAccounts.standard()

    func rules(_ text: String) throws -> IdentityRuleSet {
        try IdentityRuleSet.parse(text, accounts: accounts)
    }

    func testTheOptionParsesOnIdRulesOnly() throws {
        let set = try rules(
            """
            id b.example -> svc-b accept-group-key   # a comment after it
            id *.web.example -> svc-web  accept-group-key
            id c.example -> svc-id
            """)
        XCTAssertEqual(set.rules.map(\.acceptsGroupKey), [true, true, false])
        XCTAssertEqual(set.rules[0].description, "line 1: id b.example -> svc-b accept-group-key")
        XCTAssertThrowsImpersonationError(
            .invalidMap,
            { () throws(ImpersonationError) in
                try IdentityRuleSet.parse(
                    """
                    san b.example -> svc-san accept-group-key
                    subject "CN=b.example" -> svc-subject accept-group-key
                    user alice -> alice accept-group-key
                    id b.example -> svc-b accept-group-keys
                    id c.example -> svc-b "accept-group-key"
                    id d.example -> svc-b accept-group-key extra
                    id e.example -> svc-b
                    id e.example -> svc-b accept-group-key
                    """, accounts: accounts)
            }
        ) { error in
            XCTAssertEqual(error.issues.map(\.line), [1, 2, 3, 4, 5, 6, 8], "\(error)")
            XCTAssertTrue(error.issues[0].message.contains("`id` rules only"), "\(error.issues[0])")
            XCTAssertTrue(error.issues[6].message.contains("duplicate"), "\(error.issues[6])")
        }
    }

    /// Without the option a group-key peer is refused, whatever it claims; with it, it maps. Other ways of
    /// authenticating need no option.
    func testGroupKeyPeersNeedTheOptIn() throws {
        let set = try rules("id a.example -> svc-id\nid b.example -> svc-b accept-group-key\n")
        let claimA = PeerIdentity(ikeIdentity: "a.example", authentication: .groupKey)
        XCTAssertThrowsImpersonationError(
            .groupKeyNotAccepted, { () throws(ImpersonationError) in try set.match(claimA) }
        ) {
            XCTAssertTrue($0.detail?.contains("accept-group-key") ?? false, "\($0)")
        }
        XCTAssertEqual(
            try set.match(PeerIdentity(ikeIdentity: "b.example", authentication: .groupKey)).account, "svc-b")
        for authentication in [PeerIdentity.Authentication.certificate, .peerKey, .manualKeys, nil] {
            XCTAssertEqual(
                try set.match(PeerIdentity(ikeIdentity: "a.example", authentication: authentication)).account,
                "svc-id")
        }
        XCTAssertThrowsImpersonationError(
            .unmappedIdentity,
            { () throws(ImpersonationError) in
                try set.match(PeerIdentity(ikeIdentity: "z.example", authentication: .groupKey))
            })
    }

    /// The best match decides: an exact rule without the option is not bypassed through a wildcard rule with it.
    func testNoFallingBackToALessSpecificRuleThatOptsIn() throws {
        let set = try rules("id a.web.example -> svc-id\nid *.web.example -> svc-web accept-group-key\n")
        XCTAssertThrowsImpersonationError(
            .groupKeyNotAccepted,
            { () throws(ImpersonationError) in
                try set.match(PeerIdentity(ikeIdentity: "a.web.example", authentication: .groupKey))
            })
        XCTAssertEqual(
            try set.match(PeerIdentity(ikeIdentity: "b.web.example", authentication: .groupKey)).account, "svc-web")
    }

    /// A second-round user proved a secret of its own: `user` rules apply whatever proved the machine.
    func testUsersOfAGroupKeyMachineMapThroughUserRules() throws {
        let set = try rules("user alice -> alice\nid a.example -> svc-id\n")
        XCTAssertEqual(
            try set.match(PeerIdentity(ikeIdentity: "a.example", user: "alice", authentication: .groupKey)).account,
            "alice")
    }

    /// The map resolves the same way (and says why it refused).
    func testIdentityMapRefusesAGroupKeyPeer() throws {
        let file = try MapFile("id a.example -> svc-id\n")
        defer { file.remove() }
        let map = try IdentityMap(path: file.path, accounts: accounts, strictPermissions: false)
        XCTAssertThrowsImpersonationError(
            .groupKeyNotAccepted,
            { () throws(ImpersonationError) in
                try map.resolve(PeerIdentity(ikeIdentity: "a.example", authentication: .groupKey))
            })
        try file.write("id a.example -> svc-id accept-group-key\n")
        try map.reload()
        XCTAssertEqual(
            try map.resolve(PeerIdentity(ikeIdentity: "a.example", authentication: .groupKey)).name, "svc-id")
    }

    func testDescriptionSaysHowThePeerAuthenticated() {
        XCTAssertEqual(
            PeerIdentity(ikeIdentity: "a.example", authentication: .groupKey).description, "id a.example, by group-key")
        XCTAssertEqual(
            PeerIdentity(ikeIdentity: "a.example", user: "alice").machine, PeerIdentity(ikeIdentity: "a.example"))
    }
}
