import DirectoryNames
import Impersonation
import XCTest

/// `subject` rules (and `san` rules naming a directoryName) compare the parsed RDN sequence attribute by attribute,
/// never display text: a value that contains separators cannot pass for structure.
final class DistinguishedNameRuleTests: XCTestCase {
    let accounts = FakeAccounts.standard()
    static let commonName = RDNSequence.AttributeType(oid: [2, 5, 4, 3])
    static let organization = RDNSequence.AttributeType(oid: [2, 5, 4, 10])

    /// The subject a CA could issue to anyone who asks for the common name `admin, O=Example`: one RDN, one
    /// attribute. strongSwan prints it `CN=admin, O=Example`, as it prints the genuine two-RDN name.
    let crafted = RDNSequence([.init([.init(type: commonName, text: "admin, O=Example")])])
    let genuine = RDNSequence([
        .init([.init(type: commonName, text: "admin")]), .init([.init(type: organization, text: "Example")]),
    ])
    let multiValued = RDNSequence([
        .init([.init(type: organization, text: "Example"), .init(type: commonName, text: "admin")])
    ])

    func account(_ set: IdentityRuleSet, _ peer: PeerIdentity) -> String {
        do {
            return try set.match(peer).account
        } catch {
            return "error: \(error.code)"
        }
    }

    func testAValueHoldingSeparatorsNeverMatchesSeparateRDNs() throws {
        XCTAssertEqual(crafted.strongSwanText, genuine.strongSwanText, "the display texts collide")
        let set = try IdentityRuleSet.parse("subject \"CN=admin, O=Example\" -> svc-b\n", accounts: accounts)
        XCTAssertEqual(account(set, PeerIdentity(certificateSubject: genuine)), "svc-b")
        XCTAssertEqual(
            account(set, PeerIdentity(certificateSubject: crafted)), "error: unmappedIdentity",
            "one RDN whose CN holds `, O=Example` is not two RDNs")
        XCTAssertEqual(
            account(set, PeerIdentity(certificateSubject: multiValued)), "error: unmappedIdentity",
            "one multi-valued RDN is not two RDNs")
        // An unmatched subject leaves the peer to the lower levels, as before.
        let withID = try IdentityRuleSet.parse(
            "subject \"CN=admin, O=Example\" -> svc-b\nid evil.example -> svc-id\n", accounts: accounts)
        XCTAssertEqual(
            account(withID, PeerIdentity(ikeIdentity: "evil.example", certificateSubject: crafted)), "svc-id")
    }

    /// A rule names the one-RDN subject with an escaped comma, a hex pair or a quoted value; none of them
    /// matches the two-RDN name.
    func testEscapedAndQuotedRulesNameTheOneRDNSubject() throws {
        for (line, text) in [
            #"subject "CN=admin\, O=Example" -> svc-subject"#,
            #"subject "CN=admin\2C O=Example" -> svc-subject"#,
            #"subject "CN=\"admin, O=Example\"" -> svc-subject"#,
            #"subject "cn = \"ADMIN, o=example\"" -> svc-subject"#,
        ].enumerated() {
            let set = try IdentityRuleSet.parse(text + "\n", accounts: accounts)
            guard case .distinguishedName(let name)? = set.rules.first?.pattern else {
                XCTFail("rule \(line): \(set.rules)")
                continue
            }
            XCTAssertEqual(name.rdns.count, 1, "rule \(line)")
            XCTAssertTrue(name.matches(crafted), "rule \(line): \(name)")
            XCTAssertEqual(account(set, PeerIdentity(certificateSubject: crafted)), "svc-subject", "rule \(line)")
            XCTAssertEqual(
                account(set, PeerIdentity(certificateSubject: genuine)), "error: unmappedIdentity", "rule \(line)")
        }
    }

    func testMultiValuedRDNsAreKeptAndTheirAttributesCompareInAnyOrder() throws {
        let set = try IdentityRuleSet.parse("subject \"CN=admin+O=Example\" -> svc-b\n", accounts: accounts)
        XCTAssertEqual(account(set, PeerIdentity(certificateSubject: multiValued)), "svc-b")
        let reordered = RDNSequence([RDNSequence.RDN(multiValued.rdns[0].attributes.reversed())])
        XCTAssertEqual(account(set, PeerIdentity(certificateSubject: reordered)), "svc-b", "an RDN is a set")
        XCTAssertEqual(account(set, PeerIdentity(certificateSubject: genuine)), "error: unmappedIdentity")
        XCTAssertEqual(account(set, PeerIdentity(certificateSubject: crafted)), "error: unmappedIdentity")
    }

    /// Types compare by OID (short names ASCII case-insensitively, aliases, dotted OIDs), values ASCII
    /// case-insensitively, as before; RDN order and count still matter.
    func testTypesAndValuesCompareAsBefore() throws {
        let set = try IdentityRuleSet.parse(
            "subject \"2.5.4.3=Admin, oid.2.5.4.10=EXAMPLE\" -> svc-b\nsubject \"emailAddress=a@Example.org\" -> svc-id\n",
            accounts: accounts)
        XCTAssertEqual(account(set, PeerIdentity(certificateSubject: genuine)), "svc-b")
        let email = RDNSequence([
            .init([.init(type: .init(oid: [1, 2, 840, 113_549, 1, 9, 1]), text: "A@example.ORG")])
        ])
        XCTAssertEqual(account(set, PeerIdentity(certificateSubject: email)), "svc-id")
        XCTAssertEqual(email.description, "E=A@example.ORG", "printed with strongSwan's name")
        let reversed = RDNSequence(genuine.rdns.reversed())
        XCTAssertEqual(account(set, PeerIdentity(certificateSubject: reversed)), "error: unmappedIdentity")
        XCTAssertEqual(
            account(set, PeerIdentity(certificateSubject: RDNSequence(Array(genuine.rdns.prefix(1))))),
            "error: unmappedIdentity")
        // Values keep their bytes: `?` in a rule is a question mark, not any byte strongSwan could not print.
        let zurich = try IdentityRuleSet.parse("subject \"L=Z\\\\C3\\\\BCrich\" -> svc-b\n", accounts: accounts)
        let city = RDNSequence([.init([.init(type: .init(oid: [2, 5, 4, 7]), text: "Zürich")])])
        XCTAssertEqual(zurich.rules.first?.pattern, .distinguishedName(city))
        XCTAssertEqual(account(zurich, PeerIdentity(certificateSubject: city)), "svc-b")
        let printed = try IdentityRuleSet.parse("subject \"L=Z??rich\" -> svc-b\n", accounts: accounts)
        XCTAssertEqual(account(printed, PeerIdentity(certificateSubject: city)), "error: unmappedIdentity")
    }

    /// A `san` rule whose identity is a DN matches directoryName subjectAltNames structurally, and never a text
    /// subjectAltName that reads the same.
    func testDirectoryNameSubjectAltNames() throws {
        let set = try IdentityRuleSet.parse(
            "san \"CN=admin, O=Example\" -> svc-san\nsan admin.example -> svc-b\n", accounts: accounts)
        XCTAssertEqual(set.rules.first?.pattern, .distinguishedName(genuine))
        XCTAssertEqual(set.rules.last?.pattern, .exact("admin.example"))
        XCTAssertEqual(account(set, PeerIdentity(directoryNames: [genuine])), "svc-san")
        XCTAssertEqual(account(set, PeerIdentity(directoryNames: [crafted])), "error: unmappedIdentity")
        XCTAssertEqual(
            account(set, PeerIdentity(subjectAltNames: ["CN=admin, O=Example"])), "error: unmappedIdentity",
            "a text subjectAltName is not a directoryName")
        XCTAssertEqual(
            account(set, PeerIdentity(subjectAltNames: ["admin.example"], directoryNames: [crafted])), "svc-b")
        XCTAssertEqual(
            account(set, PeerIdentity(subjectAltNames: ["admin.example"], directoryNames: [genuine])),
            "error: ambiguousIdentity", "both subjectAltName rules match, naming different accounts")
    }

    func testEscapedTextRoundTrips() throws {
        let values = [
            "admin, O=Example", "a+b", "quote \" inside", "back\\slash", "<angle>;semi", " leading", "trailing ",
            "#hash", "in#side", "a=b", "tab\there", "nul\u{0}byte", "Zürich", "", "  ",
        ]
        for value in values {
            let name = RDNSequence([
                .init([.init(type: Self.commonName, text: value), .init(type: .init(oid: [1, 2, 3, 4]), text: value)]),
                .init([.init(type: Self.organization, text: value)]),
            ])
            let text = name.description
            XCTAssertEqual(try RDNSequence(parsing: text), name, "\(value.debugDescription) as \(text)")
            XCTAssertEqual(try RDNSequence(parsing: text).description, text)
            XCTAssertEqual(name.rdns.count, 2)
        }
        // Bytes that are not UTF-8 travel as hex pairs.
        let binary = RDNSequence([.init([.init(type: Self.commonName, value: [0x61, 0xff, 0xfe, 0x2c])])])
        XCTAssertEqual(binary.description, "CN=a\\FF\\FE\\,")
        XCTAssertEqual(try RDNSequence(parsing: binary.description), binary)
        XCTAssertEqual(crafted.description, "CN=admin\\, O=Example")
        XCTAssertEqual(genuine.description, "CN=admin, O=Example")
        XCTAssertEqual(multiValued.description, "O=Example+CN=admin")
        // A rule prints its DN escaped, so the text in an error or a log reads back to the same rule.
        let set = try IdentityRuleSet.parse(#"subject "CN=\"admin, O=Example\"" -> svc-b"# + "\n", accounts: accounts)
        let rule = try XCTUnwrap(set.rules.first)
        XCTAssertEqual(rule.pattern.description, "\"CN=admin\\, O=Example\"")
        XCTAssertEqual(rule.description, "line 1: subject \"CN=admin\\, O=Example\" -> svc-b")
    }

    func testMalformedNamesAreRejectedAtLoad() {
        let cases: [(String, String)] = [
            ("FOO=bar", "unknown attribute type"),
            ("CN=admin, ", "may not end with a separator"),
            ("CN=a,,O=b", "expected an attribute type"),
            ("CN=a\\", "at the end"),
            ("CN=a\\q", "is not an escape"),
            ("CN=a\\4", "one hex digit"),
            ("CN=\"unterminated", "unterminated quoted value"),
            ("CN=\"quoted\" tail", "expected `,` or `+`"),
            ("CN=#0403616263", "hex-encoded"),
            ("CN admin", "expected `=`"),
            ("=admin", "expected an attribute type"),
        ]
        for (name, message) in cases {
            XCTAssertThrowsError(try RDNSequence(parsing: name), name) { error in
                XCTAssertTrue("\(error)".contains(message), "\(name): \(error)")
            }
            let quoted = name.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "\"", with: "\\\"")
            XCTAssertThrowsImpersonationError(
                .invalidMap,
                { () throws(ImpersonationError) in
                    try IdentityRuleSet.parse("subject \"\(quoted)\" -> svc-b\n", accounts: self.accounts)
                }
            ) { error in
                XCTAssertTrue(
                    error.issues.first?.message.contains("not a distinguished name") ?? false, "\(name): \(error)")
            }
        }
    }

    /// Two rules for the same name, however written, are duplicates; names that differ only where a value holds
    /// a separator are not.
    func testDuplicatesAreFoundByStructure() throws {
        XCTAssertThrowsImpersonationError(
            .invalidMap,
            { () throws(ImpersonationError) in
                try IdentityRuleSet.parse(
                    "subject \"CN=a\\, b\" -> svc-b\nsubject \"cn=\\\"A, B\\\"\" -> svc-id\n", accounts: self.accounts)
            }
        ) { XCTAssertEqual($0.issues.map(\.line), [2]) }
        let set = try IdentityRuleSet.parse(
            "subject \"CN=admin, O=Example\" -> svc-b\nsubject \"CN=admin\\, O=Example\" -> svc-id\n"
                + "subject \"CN=admin+O=Example\" -> svc-san\n",
            accounts: accounts)
        XCTAssertEqual(account(set, PeerIdentity(certificateSubject: genuine)), "svc-b")
        XCTAssertEqual(account(set, PeerIdentity(certificateSubject: crafted)), "svc-id")
        XCTAssertEqual(account(set, PeerIdentity(certificateSubject: multiValued)), "svc-san")
    }
}
