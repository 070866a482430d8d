import DirectoryNames
import Glibc
import Impersonation
import Synchronization
import XCTest

/// A distinguished name from RFC 4514 text (test input only: peers' subjects are never text in the library).
func dn(_ text: String) -> RDNSequence {
    do {
        return try RDNSequence(parsing: text)
    } catch {
        preconditionFailure("\(text): \(error)")
    }
}

/// An account database the test controls (the host's /etc/passwd is never touched).
final class FakeAccounts: AccountDatabase {
    private let table: Mutex<[String: LocalAccount]>

    init(_ accounts: [LocalAccount]) {
        table = Mutex(Dictionary(uniqueKeysWithValues: accounts.map { ($0.name, $0) }))
    }

    func set(_ account: LocalAccount) { table.withLock { $0[account.name] = account } }

    func account(named name: String) throws(ImpersonationError) -> LocalAccount? { table.withLock { $0[name] } }

    static func standard() -> FakeAccounts {
        FakeAccounts([
            LocalAccount(name: "svc-b", uid: 2001, gid: 2001, groups: [2001]),
            LocalAccount(name: "svc-web", uid: 2002, gid: 2002, groups: [2002, 3000]),
            LocalAccount(name: "svc-san", uid: 2003, gid: 2003, groups: [2003]),
            LocalAccount(name: "svc-id", uid: 2004, gid: 2004, groups: [2004]),
            LocalAccount(name: "svc-subject", uid: 2005, gid: 2005, groups: [2005]),
            LocalAccount(name: "alice", uid: 1001, gid: 1001, groups: [1001, 100]),
            LocalAccount(name: "bob", uid: 1002, gid: 1002, groups: [1002]),
            LocalAccount(name: "toor", uid: 0, gid: 0, groups: [0]),
            LocalAccount(name: "wheelie", uid: 1500, gid: 0, groups: [0, 1500]),
        ])
    }
}

/// A temporary folder with the map file, removed afterwards.
final class MapFile {
    let directory: String
    let path: String

    init(_ text: String, mode: mode_t = 0o644) throws {
        var template = Array("/tmp/identity-map-test.XXXXXX".utf8CString)
        guard let made = mkdtemp(&template) else { throw POSIXError(.EIO) }
        directory = String(cString: made)
        path = directory + "/identity-map"
        try write(text, mode: mode)
    }

    func write(_ text: String, mode: mode_t = 0o644) throws {
        let temporary = path + ".new"
        let fd = open(temporary, O_CREAT | O_TRUNC | O_WRONLY | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw POSIXError(.EIO) }
        let bytes = Array(text.utf8)
        let written = bytes.withUnsafeBytes { Glibc.write(fd, $0.baseAddress, $0.count) }
        fchmod(fd, mode)
        close(fd)
        guard written == bytes.count, rename(temporary, path) == 0 else { throw POSIXError(.EIO) }
    }

    func remove() {
        unlink(path)
        unlink(path + ".new")
        rmdir(directory)
    }
}

func XCTAssertThrowsImpersonationError<T>(
    _ code: ImpersonationError.Code, _ body: () throws(ImpersonationError) -> T,
    file: StaticString = #filePath, line: UInt = #line,
    _ check: (ImpersonationError) -> Void = { _ in }
) {
    do {
        let value = try body()
        XCTFail("expected \(code), got \(value)", file: file, line: line)
    } catch {
        XCTAssertEqual(error.code, code, "\(error)", file: file, line: line)
        check(error)
    }
}

final class IdentityMapParsingTests: XCTestCase {
    let accounts = FakeAccounts.standard()

    func testEveryRuleKindParses() throws {
        let text = """
            id b.example -> svc-b
            id *.web.example -> svc-web
            subject "C=CH, O=Example, CN=b.example" -> svc-subject
            san backup.example -> svc-san
            san *.web.example -> svc-web
            user alice -> alice
            user "bob@corp.example" -> bob
            id 198.51.100.7 -> svc-id
            """
        let set = try IdentityRuleSet.parse(text, accounts: accounts)
        XCTAssertEqual(set.rules.count, 8)
        XCTAssertEqual(set.warnings, [])
        XCTAssertEqual(set.rules[0], IdentityRule(kind: .id, pattern: .exact("b.example"), account: "svc-b", line: 1))
        XCTAssertEqual(
            set.rules[1],
            IdentityRule(kind: .id, pattern: .wildcard(suffix: "web.example"), account: "svc-web", line: 2))
        XCTAssertEqual(
            set.rules[2],
            IdentityRule(
                kind: .subject, pattern: .distinguishedName(dn("C=CH, O=Example, CN=b.example")),
                account: "svc-subject", line: 3))
        XCTAssertEqual(
            set.rules[3], IdentityRule(kind: .san, pattern: .exact("backup.example"), account: "svc-san", line: 4))
        XCTAssertEqual(
            set.rules[4],
            IdentityRule(kind: .san, pattern: .wildcard(suffix: "web.example"), account: "svc-web", line: 5))
        XCTAssertEqual(set.rules[5], IdentityRule(kind: .user, pattern: .exact("alice"), account: "alice", line: 6))
        XCTAssertEqual(
            set.rules[6], IdentityRule(kind: .user, pattern: .exact("bob@corp.example"), account: "bob", line: 7))
        XCTAssertEqual(set.rules[7].pattern, .exact("198.51.100.7"))
    }

    func testCommentsBlankLinesQuotesAndCRLF() throws {
        let text =
            "# a comment\n\n   \t\n  # indented comment\r\n"
            + "id b.example -> svc-b   # trailing comment\r\n"
            + "subject \"CN=x\\\"#1\\\\, O=Example\" -> svc-subject # quoted # and escapes\n"
            + "id\tweird.example\t->\tsvc-id\n"
        let set = try IdentityRuleSet.parse(text, accounts: accounts)
        XCTAssertEqual(set.rules.map(\.line), [5, 6, 7])
        guard set.rules.count == 3 else { return }
        XCTAssertEqual(set.rules[0].account, "svc-b")
        XCTAssertEqual(
            set.rules[1].pattern,
            .distinguishedName(
                RDNSequence([.init([.init(type: .init(oid: [2, 5, 4, 3]), text: "x\"#1, O=Example")])])),
            "one RDN: the escaped comma is part of the value")
        XCTAssertEqual(set.rules[2].pattern, .exact("weird.example"))
        XCTAssertEqual(try IdentityRuleSet.parse("", accounts: accounts).rules, [])
        XCTAssertEqual(try IdentityRuleSet.parse("# only\n# comments\n", accounts: accounts).rules, [])
    }

    func testErrorsAreAllReportedWithLineNumbers() {
        let text = """
            id good.example -> svc-b
            host b.example -> svc-b
            id b2.example svc-b
            id b3.example ->
            id b4.example -> svc-b extra
            subject "CN=unterminated -> svc-b
            san * -> svc-b
            san a.*.example -> svc-b
            id *.123 -> svc-b
            user *.example -> alice
            subject "no equals sign" -> svc-b
            id good.example -> svc-id
            id c.example -> -bad
            id d.example -> 1234
            id e.example->svc-b
            """
        XCTAssertThrowsImpersonationError(
            .invalidMap,
            { () throws(ImpersonationError) in
                try IdentityRuleSet.parse(text, source: "test-map", accounts: self.accounts)
            }
        ) { error in
            XCTAssertEqual(error.issues.map(\.line), Array(2...15), "\(error)")
            let messages = Dictionary(uniqueKeysWithValues: error.issues.map { ($0.line, $0.message) })
            XCTAssertTrue(messages[2]!.contains("unknown rule kind \"host\""), messages[2]!)
            XCTAssertTrue(messages[3]!.contains("expected `->`"), messages[3]!)
            XCTAssertTrue(messages[4]!.contains("missing account"), messages[4]!)
            XCTAssertTrue(messages[5]!.contains("unexpected text after the account"), messages[5]!)
            XCTAssertTrue(messages[6]!.contains("unterminated quote"), messages[6]!)
            XCTAssertTrue(messages[7]!.contains("default account"), messages[7]!)
            XCTAssertTrue(messages[8]!.contains("first label"), messages[8]!)
            XCTAssertTrue(messages[9]!.contains("domain name"), messages[9]!)
            XCTAssertTrue(messages[10]!.contains("no user wildcards"), messages[10]!)
            XCTAssertTrue(messages[11]!.contains("not a distinguished name"), messages[11]!)
            XCTAssertTrue(messages[12]!.contains("duplicate rule") && messages[12]!.contains("line 1"), messages[12]!)
            XCTAssertTrue(messages[13]!.contains("not a valid account name"), messages[13]!)
            XCTAssertTrue(messages[14]!.contains("not a uid"), messages[14]!)
            XCTAssertTrue(messages[15]!.contains("spaces around it"), messages[15]!)
            XCTAssertTrue(error.operation.contains("test-map"))
            XCTAssertTrue(error.description.contains("line 2: unknown rule kind"), error.description)
        }
    }

    func testDuplicatesAreDetectedAfterNormalization() {
        XCTAssertThrowsImpersonationError(
            .invalidMap,
            { () throws(ImpersonationError) in
                try IdentityRuleSet.parse("id B.Example -> svc-b\nid b.example -> svc-id\n", accounts: self.accounts)
            }
        ) { XCTAssertEqual($0.issues.map(\.line), [2]) }
        XCTAssertThrowsImpersonationError(
            .invalidMap,
            { () throws(ImpersonationError) in
                try IdentityRuleSet.parse(
                    "subject \"CN=a,O=b\" -> svc-b\nsubject \"cn = A , o = B\" -> svc-id\n", accounts: self.accounts)
            }
        ) { XCTAssertEqual($0.issues.map(\.line), [2]) }
        // Users are case-sensitive: two different users.
        XCTAssertNoThrow(try IdentityRuleSet.parse("user alice -> alice\nuser Alice -> bob\n", accounts: accounts))
    }

    func testRootIsRejectedAtLoad() {
        XCTAssertThrowsImpersonationError(
            .invalidMap,
            { () throws(ImpersonationError) in
                try IdentityRuleSet.parse("id a.example -> svc-b\nid b.example -> root\n", accounts: nil)
            }
        ) { error in
            XCTAssertEqual(error.issues.map(\.line), [2])
            XCTAssertTrue(error.issues[0].message.contains("uid 0"), "\(error)")
        }
        // Another name for uid 0, and an account in group 0: found through the account database.
        XCTAssertThrowsImpersonationError(
            .invalidMap,
            { () throws(ImpersonationError) in
                try IdentityRuleSet.parse(
                    "id a.example -> toor\nid b.example -> svc-b\nid c.example -> wheelie\n",
                    accounts: self.accounts)
            }
        ) { error in
            XCTAssertEqual(error.issues.map(\.line), [1, 3], "\(error)")
            XCTAssertTrue(error.issues[0].message.contains("uid 0"), "\(error)")
            XCTAssertTrue(error.issues[1].message.contains("group 0"), "\(error)")
        }
    }

    func testMissingAccountIsAWarningAtLoadAndAnErrorAtResolve() throws {
        let file = try MapFile("id a.example -> svc-b\nid b.example -> no-such-account\n")
        defer { file.remove() }
        let map = try IdentityMap(path: file.path, accounts: accounts)
        XCTAssertEqual(map.warnings.map(\.line), [2])
        XCTAssertTrue(map.warnings[0].message.contains("does not exist"))
        XCTAssertThrowsImpersonationError(
            .unknownAccount,
            { () throws(ImpersonationError) in
                try map.resolve(PeerIdentity(ikeIdentity: "b.example"))
            }
        ) { XCTAssertTrue($0.description.contains("no-such-account"), "\($0)") }
        XCTAssertEqual(try map.resolve(PeerIdentity(ikeIdentity: "a.example")).uid, 2001)
    }

    func testAccountTurningPrivilegedIsRejectedAtResolve() throws {
        let accounts = FakeAccounts.standard()
        let file = try MapFile("id a.example -> svc-b\n")
        defer { file.remove() }
        let map = try IdentityMap(path: file.path, accounts: accounts)
        XCTAssertEqual(try map.resolve(PeerIdentity(ikeIdentity: "a.example")).name, "svc-b")
        accounts.set(LocalAccount(name: "svc-b", uid: 0, gid: 2001, groups: [2001]))
        XCTAssertThrowsImpersonationError(
            .privilegedAccount,
            { () throws(ImpersonationError) in
                try map.resolve(PeerIdentity(ikeIdentity: "a.example"))
            }
        ) { XCTAssertTrue($0.description.contains("uid 0"), "\($0)") }
        accounts.set(LocalAccount(name: "svc-b", uid: 2001, gid: 2001, groups: [2001, 0]))
        XCTAssertThrowsImpersonationError(
            .privilegedAccount,
            { () throws(ImpersonationError) in
                try map.resolve(PeerIdentity(ikeIdentity: "a.example"))
            })
    }

    func testLimits() {
        let long = "id " + String(repeating: "a", count: 5000) + " -> svc-b\n"
        XCTAssertThrowsImpersonationError(
            .invalidMap,
            { () throws(ImpersonationError) in
                try IdentityRuleSet.parse("id a.example -> svc-b\n" + long, accounts: self.accounts)
            }
        ) { XCTAssertEqual($0.issues.map(\.line), [2]) }
        let huge = String(repeating: "#", count: IdentityRuleSet.maximumFileBytes + 1)
        XCTAssertThrowsImpersonationError(
            .unreadableMap,
            { () throws(ImpersonationError) in
                try IdentityRuleSet.parse(huge, accounts: self.accounts)
            })
        // Many errors: reported, but capped.
        let bad = String(repeating: "nonsense\n", count: 500)
        XCTAssertThrowsImpersonationError(
            .invalidMap,
            { () throws(ImpersonationError) in
                try IdentityRuleSet.parse(bad, accounts: self.accounts)
            }
        ) { error in
            XCTAssertEqual(error.issues.count, 101)
            XCTAssertTrue(error.issues.last!.message.contains("400 more"), "\(error.issues.last!)")
        }
    }
}

final class IdentityMatchingTests: XCTestCase {
    let accounts = FakeAccounts.standard()

    private func map(_ text: String) throws -> IdentityRuleSet {
        try IdentityRuleSet.parse(text, accounts: accounts)
    }

    private func account(
        _ set: IdentityRuleSet, _ peer: PeerIdentity, file: StaticString = #filePath,
        line: UInt = #line
    ) -> String? {
        do {
            return try set.match(peer).account
        } catch {
            return "error: \(error.code)"
        }
    }

    func testPrecedence() throws {
        let set = try map(
            """
            id *.example -> svc-web
            san *.example -> svc-san
            id b.example -> svc-id
            san b.example -> svc-b
            subject "CN=b.example, O=Example" -> svc-subject
            """)
        let full = PeerIdentity(
            ikeIdentity: "b.example", certificateSubject: dn("CN=b.example,O=Example"),
            subjectAltNames: ["b.example"])
        XCTAssertEqual(account(set, full), "svc-subject", "subject beats everything")
        var peer = full
        peer.certificateSubject = dn("CN=other, O=Example")
        XCTAssertEqual(account(set, peer), "svc-b", "exact san beats exact id")
        peer.subjectAltNames = ["c.example"]
        XCTAssertEqual(account(set, peer), "svc-id", "exact id beats wildcards")
        peer.ikeIdentity = "d.example"
        XCTAssertEqual(account(set, peer), "svc-san", "wildcard san beats wildcard id")
        peer.subjectAltNames = []
        XCTAssertEqual(account(set, peer), "svc-web", "wildcard id last")
        peer.ikeIdentity = "x.y.example"
        XCTAssertEqual(account(set, peer), "error: unmappedIdentity", "one label only")
    }

    func testUserIsNeverMappedThroughTheMachine() throws {
        let set = try map("id b.example -> svc-b\nuser alice -> alice\n")
        XCTAssertEqual(account(set, PeerIdentity(ikeIdentity: "b.example", user: "alice")), "alice")
        XCTAssertEqual(account(set, PeerIdentity(ikeIdentity: "b.example", user: "mallory")), "error: unmappedIdentity")
        XCTAssertEqual(
            account(set, PeerIdentity(ikeIdentity: "b.example", user: "Alice")), "error: unmappedIdentity",
            "users compare exactly")
        XCTAssertEqual(account(set, PeerIdentity(ikeIdentity: "b.example")), "svc-b")
    }

    func testUnmappedHasNoDefault() throws {
        let set = try map("id b.example -> svc-b\n")
        XCTAssertEqual(account(set, PeerIdentity()), "error: unmappedIdentity")
        XCTAssertEqual(account(set, PeerIdentity(ikeIdentity: "")), "error: unmappedIdentity")
        XCTAssertEqual(account(set, PeerIdentity(ikeIdentity: "c.example")), "error: unmappedIdentity")
        XCTAssertEqual(account(IdentityRuleSet(), PeerIdentity(ikeIdentity: "b.example")), "error: unmappedIdentity")
    }

    func testCaseAndDNNormalization() throws {
        let set = try map(
            """
            id B.Example -> svc-b
            subject "C=CH, O=Example Corp, CN=host.example" -> svc-subject
            san Mail@Example.org -> svc-san
            """)
        XCTAssertEqual(account(set, PeerIdentity(ikeIdentity: "b.EXAMPLE")), "svc-b")
        XCTAssertEqual(
            account(set, PeerIdentity(certificateSubject: dn("c=ch,o=example corp,cn=HOST.example"))), "svc-subject")
        XCTAssertEqual(
            account(set, PeerIdentity(certificateSubject: dn("C=CH,  O = Example Corp , CN=host.example"))),
            "svc-subject")
        XCTAssertEqual(
            account(set, PeerIdentity(certificateSubject: dn("CN=host.example, O=Example Corp, C=CH"))),
            "error: unmappedIdentity", "RDN order matters")
        XCTAssertEqual(
            account(set, PeerIdentity(certificateSubject: dn("C=CH, O=Example Corp, CN=host.example, OU=x"))),
            "error: unmappedIdentity")
        XCTAssertEqual(account(set, PeerIdentity(subjectAltNames: ["mail@example.ORG"])), "svc-san")
    }

    func testWildcardMatchesOnlyDNSNames() throws {
        let set = try map("id *.example -> svc-web\nsan *.example -> svc-web\n")
        XCTAssertEqual(account(set, PeerIdentity(ikeIdentity: "a.example")), "svc-web")
        XCTAssertEqual(account(set, PeerIdentity(ikeIdentity: "A.EXAMPLE")), "svc-web")
        for identity in [
            "example", "a.b.example", "alice@a.example", "CN=a.example", ".example", "*.example",
            "a.example.org", "aexample",
        ] {
            XCTAssertEqual(account(set, PeerIdentity(ikeIdentity: identity)), "error: unmappedIdentity", identity)
            XCTAssertEqual(account(set, PeerIdentity(subjectAltNames: [identity])), "error: unmappedIdentity", identity)
        }
    }

    func testAmbiguousMatchesAreRefused() throws {
        let set = try map("san a.example -> svc-b\nsan b.example -> svc-id\nsan c.example -> svc-b\n")
        XCTAssertEqual(
            account(set, PeerIdentity(subjectAltNames: ["a.example", "b.example"])), "error: ambiguousIdentity")
        XCTAssertEqual(
            account(set, PeerIdentity(subjectAltNames: ["a.example", "c.example"])), "svc-b",
            "several rules naming the same account are fine")
        XCTAssertEqual(account(set, PeerIdentity(subjectAltNames: ["zz.example", "c.example"])), "svc-b")
    }
}

final class IdentityMapFileTests: XCTestCase {
    func testReloadKeepsTheOldMapWhenTheNewOneHasErrors() throws {
        let accounts = FakeAccounts.standard()
        let file = try MapFile("id b.example -> svc-b\n")
        defer { file.remove() }
        let map = try IdentityMap(path: file.path, accounts: accounts)
        let peer = PeerIdentity(ikeIdentity: "b.example")
        XCTAssertEqual(try map.resolve(peer).name, "svc-b")

        try file.write("id b.example -> svc-web\nid c.example -> \n")
        XCTAssertThrowsImpersonationError(.invalidMap, { () throws(ImpersonationError) in try map.reload() }) { error in
            XCTAssertEqual(error.issues.map(\.line), [2])
            XCTAssertTrue(error.description.contains("keeping the map loaded before"), error.description)
        }
        XCTAssertEqual(try map.resolve(peer).name, "svc-b", "the old map is still in use")
        XCTAssertEqual(map.lastReloadFailure?.code, .invalidMap)
        XCTAssertEqual(map.rules.rules.count, 1)

        try file.write("id b.example -> svc-web\nid c.example -> svc-id\n")
        XCTAssertEqual(try map.reload(), [])
        XCTAssertNil(map.lastReloadFailure)
        XCTAssertEqual(try map.resolve(peer).name, "svc-web")
        XCTAssertEqual(try map.resolve(PeerIdentity(ikeIdentity: "c.example")).name, "svc-id")

        // A file that disappears is an error too, and keeps the map.
        unlink(file.path)
        XCTAssertThrowsImpersonationError(.unreadableMap, { () throws(ImpersonationError) in try map.reload() }) {
            XCTAssertEqual($0.errno, .noSuchFileOrDirectory)
        }
        XCTAssertEqual(try map.resolve(peer).name, "svc-web")
    }

    func testLoadFailures() throws {
        XCTAssertThrowsImpersonationError(
            .unreadableMap,
            { () throws(ImpersonationError) in
                try IdentityMap(path: "/nonexistent/identity-map")
            }
        ) { XCTAssertEqual($0.errno, .noSuchFileOrDirectory) }
        let file = try MapFile("id b.example -> nobody\n", mode: 0o666)
        defer { file.remove() }
        XCTAssertThrowsImpersonationError(
            .unreadableMap,
            { () throws(ImpersonationError) in
                try IdentityMap(path: file.path)
            }
        ) { XCTAssertTrue($0.description.contains("writable by group or others"), "\($0)") }
        XCTAssertNoThrow(try IdentityMap(path: file.path, strictPermissions: false))
        XCTAssertThrowsImpersonationError(
            .unreadableMap,
            { () throws(ImpersonationError) in
                try IdentityMap(path: file.directory)
            })
        try file.write("id b.example -> nobody # caf\u{E9} \u{FF}\n", mode: 0o644)
        XCTAssertNoThrow(try IdentityMap(path: file.path), "U+00FF is fine as UTF-8")
        let fd = open(file.path, O_WRONLY | O_APPEND)
        var invalid: [UInt8] = [0xff, 0xfe, 0x0a]
        _ = write(fd, &invalid, invalid.count)
        close(fd)
        XCTAssertThrowsImpersonationError(
            .unreadableMap,
            { () throws(ImpersonationError) in
                try IdentityMap(path: file.path)
            }
        ) { XCTAssertTrue($0.description.contains("UTF-8"), "\($0)") }
    }

    func testResolveSystemAccounts() throws {
        let file = try MapFile(
            """
            # Debian's own accounts: nobody 65534/nogroup, daemon 1/1.
            id b.example -> nobody
            user operator-1 -> daemon
            id c.example -> no-such-account-xyz
            """)
        defer { file.remove() }
        let map = try IdentityMap(path: file.path)
        XCTAssertEqual(map.warnings.map(\.line), [4])
        let nobody = try map.resolve(PeerIdentity(ikeIdentity: "b.example"))
        XCTAssertEqual(nobody.name, "nobody")
        XCTAssertEqual(nobody.uid, 65534)
        XCTAssertEqual(nobody.gid, 65534)
        XCTAssertTrue(nobody.groups.contains(65534))
        let daemon = try map.resolve(PeerIdentity(ikeIdentity: "b.example", user: "operator-1"))
        XCTAssertEqual(daemon.uid, 1)
        XCTAssertEqual(daemon.gid, 1)
        XCTAssertTrue(daemon.groups.contains(1))
        XCTAssertEqual(daemon.groups, daemon.groups.sorted())
        XCTAssertThrowsImpersonationError(
            .unknownAccount,
            { () throws(ImpersonationError) in
                try map.resolve(PeerIdentity(ikeIdentity: "c.example"))
            })
        XCTAssertThrowsImpersonationError(
            .unmappedIdentity,
            { () throws(ImpersonationError) in
                try map.resolve(PeerIdentity(ikeIdentity: "d.example"))
            })
    }

    func testRootIsRejectedThroughTheSystemDatabase() throws {
        let file = try MapFile("id b.example -> nobody\nuser admin -> root\n")
        defer { file.remove() }
        XCTAssertThrowsImpersonationError(
            .invalidMap,
            { () throws(ImpersonationError) in
                try IdentityMap(path: file.path)
            }
        ) { XCTAssertEqual($0.issues.map(\.line), [2]) }
    }
}

final class LocalAccountTests: XCTestCase {
    func testLookup() throws {
        let nobody = try LocalAccount.lookup("nobody")
        XCTAssertEqual(nobody.uid, 65534)
        XCTAssertEqual(nobody.gid, 65534)
        XCTAssertEqual(try LocalAccount.lookup("daemon").uid, 1)
        XCTAssertEqual(try LocalAccount.lookup("bin").uid, 2)
        XCTAssertThrowsImpersonationError(
            .unknownAccount,
            { () throws(ImpersonationError) in
                try LocalAccount.lookup("no-such-account-xyz")
            })
        XCTAssertThrowsImpersonationError(
            .accountLookup,
            { () throws(ImpersonationError) in
                try LocalAccount.lookup("")
            })
    }

    func testGroupsAreSortedAndUnique() {
        XCTAssertEqual(LocalAccount(name: "x", uid: 5, gid: 5, groups: [9, 5, 9, 1]).groups, [1, 5, 9])
    }

    func testPrivilegedAccountsAreRefused() throws {
        let cases: [(LocalAccount, ImpersonationError.Code)] = [
            (LocalAccount(name: "root", uid: 0, gid: 0, groups: [0]), .privilegedAccount),
            (LocalAccount(name: "toor", uid: 0, gid: 5, groups: [5]), .privilegedAccount),
            (LocalAccount(name: "wheel", uid: 5, gid: 0, groups: [0]), .privilegedAccount),
            (LocalAccount(name: "sup", uid: 5, gid: 5, groups: [5, 0]), .privilegedAccount),
            (LocalAccount(name: "minus-one", uid: uid_t.max, gid: 5, groups: [5]), .privilegedAccount),
            (LocalAccount(name: "minus-one-g", uid: 5, gid: gid_t.max, groups: [5]), .privilegedAccount),
            (LocalAccount(name: "many", uid: 5, gid: 5, groups: (1...70_000).map { gid_t($0) }), .invalidAccount),
        ]
        for (account, code) in cases {
            XCTAssertThrowsImpersonationError(
                code,
                { () throws(ImpersonationError) in
                    try account.checkUnprivileged(operation: "test")
                })
        }
        XCTAssertNoThrow(try LocalAccount.lookup("nobody").checkUnprivileged(operation: "test"))
    }
}
