import ConfigurationFile
import Glibc
import Synchronization
import SystemPackage

/// Maps authenticated IPsec peers to local accounts: which account a thread becomes when it impersonates a peer
/// (the Linux side of `WSAImpersonateSocketPeer`).
///
/// ## The file
///
/// One rule per line, `<kind> <identity> -> <account> [accept-group-key]`; blank lines and `#` comments (anywhere outside quotes) are
/// ignored. Quote an identity that contains spaces or `#` (inside quotes, `\"` and `\\` are escapes).
///
/// ```text
/// # /etc/winsock-secure-socket/identity-map
/// # Users authenticated in the second round (EAP/XAuth) map to themselves or to a service account.
/// user alice                          -> alice
/// user "bob@corp.example"             -> bob
///
/// # Machines, by certificate subject, subjectAltName or IKE identity.
/// subject "C=CH, O=Example, CN=b.example" -> svc-b
/// san  backup.example                 -> svc-backup
/// id   b.example                      -> svc-b
/// id   198.51.100.7                   -> svc-legacy
///
/// # Any single host name directly under web.example (a.web.example, not x.a.web.example).
/// san  *.web.example                  -> svc-web
/// id   *.web.example                  -> svc-web
///
/// # Branch offices share one group key (keying file `psk`): any of them can claim any name, so say so.
/// id   *.branch.example               -> svc-branch  accept-group-key
/// ```
///
/// Kinds:
/// - `user NAME`: the user of the second authentication round, compared exactly (case-sensitively). No wildcards.
/// - `subject "DN"`: the certificate's subject, compared as a structure, never as text: the rule's DN is parsed
///   once (RFC 4514: RDNs separated by `,`, the attributes of a multi-valued RDN by `+`; `\,` `\+` `\"` `\\` and
///   hex pairs such as `\2C` escape; a value may be written in double quotes, `CN="admin, O=Example"`), and
///   matches a subject with the same RDNs in the same order, each with the same attributes: types equal (strongSwan's
///   short names, ASCII case-insensitively, or dotted OIDs; an unknown name is an error), values equal ASCII
///   case-insensitively, the attributes of one RDN in any order. Spaces around `,` `+` `=` do not matter. A value
///   that contains separators never matches separate RDNs: the one-attribute subject `CN="admin, O=Example"` does
///   not match `subject "CN=admin, O=Example"`. strongSwan logs subjects without escaping and joins the attributes
///   of a multi-valued RDN with `, ` as if they were RDNs: write such names with `\,` (or quotes) and `+`. Values
///   that are not ASCII are written as they are (UTF-8) or as hex pairs, not with the `?` strongSwan prints.
///   Inside a quoted identity the file itself reads `\"` and `\\`, so an RDN escape of those two is doubled there
///   (`\\\\` for a backslash in a value); `\,` `\+` and hex pairs are written as they are.
/// - `san NAME` / `san *.DOMAIN`: any one of the certificate's text subjectAltNames (DNS names, email addresses,
///   IP addresses, URIs, registered ids), ASCII case-insensitively. A `san` identity that is a distinguished name
///   (it starts with a known attribute type and `=`, as no DNS name, address or URI does) matches the certificate's
///   directoryName subjectAltNames instead, compared as `subject` rules are, and never a text subjectAltName.
/// - `id NAME` / `id *.DOMAIN`: the IKE identity, ASCII case-insensitively (as strongSwan compares FQDN and email
///   identities).
/// - `accept-group-key` (after the account, `id` rules only): see "Group keys" below.
/// - `*.DOMAIN` matches a DNS name with exactly ONE more label in front (RFC 6125 style): `*.example` matches
///   `b.example`, not `a.b.example`, not `example`, never an email address, IP address or DN. `*` alone is
///   rejected: there is no default account.
///
/// ## Matching
///
/// 1. A peer that authenticated a user (``PeerIdentity/user`` is set) is that user: only `user` rules apply, and an
///    unmapped user is an error. It never falls back to its machine's rules (as Windows uses the peer's user token
///    whenever there is one), which would hand an unknown user the machine's account.
/// 2. Otherwise, most specific first: `subject`; exact `san`; exact `id`; wildcard `san`; wildcard `id`. The first
///    of these five levels with a match decides. If that level's matches name different accounts (two
///    subjectAltNames mapped to two accounts), the peer is ``ImpersonationError/Code/ambiguousIdentity``:
///    nothing depends on the order of lines.
/// 3. Nothing matches: ``ImpersonationError/Code/unmappedIdentity``. There is never a default account.
///
/// ## Group keys
///
/// A peer machine that authenticated with a group key (``PeerIdentity/Authentication/groupKey``: a pre-shared key
/// every member of a group holds, the keying file's `psk`) has proven that it is a member, not who it is: any member
/// can claim any identity and authenticate. Such a peer is refused (``ImpersonationError/Code/groupKeyNotAccepted``,
/// `WSAEACCES` from `WSAImpersonateSocketPeer`) unless the rule its identity matches under step 2 ends with
/// `accept-group-key`, which says "whoever holds the group key and claims this identity becomes this account".
/// The best matching rule decides: a refused exact rule never falls back to a less specific rule that opts in.
/// Per-peer keys (`peer-psk`), certificates and manual keys need no opt-in. A user of the second authentication
/// round proved a secret of its own, so `user` rules apply to it whatever proved its machine.
///
/// ## Validation and reloading
///
/// Loading checks every line and reports ALL problems with their line numbers (unknown kind, missing `->`, bad
/// wildcard, unterminated quote, duplicate rule, invalid account name, ...). A rule naming `root`, or an account
/// whose uid is 0 or whose groups include 0, is an error when the file is loaded and again when a peer is resolved
/// (the user database may change in between). A rule naming an account that does not exist is only a warning
/// (``warnings``): resolving it fails with ``ImpersonationError/Code/unknownAccount`` until the account exists.
///
/// ``reload()`` re-reads the file; if the new text has any error, the map in use is kept and the errors are thrown
/// (and kept in ``lastReloadFailure``), so a bad edit never turns a working server into one that maps nobody (or
/// the wrong people).
///
/// The file must be a regular file of at most 1 MiB, owned by root or by the process's effective user, and not
/// writable by group or others (whoever can write it chooses who becomes whom), unless `strictPermissions` is off:
/// the checks of every file the library trusts (`ProtectedFile` in the ConfigurationFile module), run on the
/// opened descriptor. A symbolic link is followed and the file it leads to is what is checked.
///
/// Accounts are looked up (``resolve(_:)``) each time, never cached, so user-database changes apply at once.
public final class IdentityMap: Sendable {
    /// The file this map reads.
    public let path: String
    public let accounts: any AccountDatabase
    public let strictPermissions: Bool

    private struct State: Sendable {
        var rules: IdentityRuleSet
        var lastReloadFailure: ImpersonationError?
    }
    private let state: Mutex<State>

    /// Loads the map in `path`.
    ///
    /// - Throws: ``ImpersonationError/Code/unreadableMap`` or ``ImpersonationError/Code/invalidMap`` (with every
    ///   problem and its line).
    public init(
        path: String, accounts: any AccountDatabase = SystemAccountDatabase(),
        strictPermissions: Bool = true
    ) throws(ImpersonationError) {
        self.path = path
        self.accounts = accounts
        self.strictPermissions = strictPermissions
        let rules = try Self.load(path: path, accounts: accounts, strictPermissions: strictPermissions)
        state = Mutex(State(rules: rules, lastReloadFailure: nil))
    }

    /// The rules in use.
    public var rules: IdentityRuleSet { state.withLock { $0.rules } }

    /// Warnings from the load in use (rules naming accounts that do not exist).
    public var warnings: [ImpersonationError.Issue] { rules.warnings }

    /// The error of the last ``reload()`` if it failed (the previous map is still in use); nil after a good one.
    public var lastReloadFailure: ImpersonationError? { state.withLock { $0.lastReloadFailure } }

    /// Re-reads the file. On success the new rules replace the old ones atomically (a ``resolve(_:)`` running at
    /// the same time sees either map, never a mix) and the new warnings are returned. On any error the map in use
    /// is KEPT and the error is thrown.
    @discardableResult
    public func reload() throws(ImpersonationError) -> [ImpersonationError.Issue] {
        do {
            let rules = try Self.load(path: path, accounts: accounts, strictPermissions: strictPermissions)
            state.withLock { $0 = State(rules: rules, lastReloadFailure: nil) }
            return rules.warnings
        } catch {
            var failure = error
            failure.detail = (failure.detail.map { $0 + "; " } ?? "") + "keeping the map loaded before"
            let recorded = failure
            state.withLock { $0.lastReloadFailure = recorded }
            throw failure
        }
    }

    /// The rule that maps `peer` (see the matching order above).
    public func rule(for peer: PeerIdentity) throws(ImpersonationError) -> IdentityRule {
        try rules.match(peer)
    }

    /// The local account `peer` is mapped to, looked up now (`getpwnam_r`, `getgrouplist`).
    ///
    /// - Throws: ``ImpersonationError/Code/unmappedIdentity``, ``ImpersonationError/Code/ambiguousIdentity``,
    ///   ``ImpersonationError/Code/unknownAccount`` (the rule names an account that does not exist),
    ///   ``ImpersonationError/Code/privilegedAccount`` (it resolves to uid 0 or group 0),
    ///   ``ImpersonationError/Code/accountLookup``.
    public func resolve(_ peer: PeerIdentity) throws(ImpersonationError) -> LocalAccount {
        let rule = try rules.match(peer)
        let operation = "resolve \(peer)"
        guard let account = try accounts.account(named: rule.account) else {
            throw ImpersonationError(
                .unknownAccount, operation: operation,
                detail: "\(path) \(rule): account \"\(rule.account)\" does not exist")
        }
        do {
            try account.checkUnprivileged(operation: operation)
        } catch {
            var failure = error
            failure.detail = "\(path) \(rule): " + (error.detail ?? "")
            throw failure
        }
        return account
    }

    // MARK: Reading the file

    static func load(path: String, accounts: any AccountDatabase, strictPermissions: Bool)
        throws(ImpersonationError) -> IdentityRuleSet
    {
        let text = try readMapFile(path, strictPermissions: strictPermissions)
        return try IdentityRuleSet.parse(text, source: path, accounts: accounts)
    }

    /// What the map file must be (`ProtectedFile`): whoever can write it chooses who becomes whom.
    static func protection(strictPermissions: Bool) -> FileProtection {
        FileProtection(
            writerDecides: "chooses who becomes whom", maximumBytes: IdentityRuleSet.maximumFileBytes,
            checksOwnerAndMode: strictPermissions)
    }

    static func readMapFile(_ path: String, strictPermissions: Bool) throws(ImpersonationError) -> String {
        let operation = "load \(path)"
        let bytes: [UInt8]
        do {
            bytes = try ProtectedFile.read(path, protection(strictPermissions: strictPermissions))
        } catch {
            throw ImpersonationError(
                .unreadableMap, operation: operation, errno: error.errno.map { Errno(rawValue: $0) },
                detail: error.step ?? error.detail)
        }
        guard let text = String(validating: bytes, as: UTF8.self) else {
            throw ImpersonationError(.unreadableMap, operation: operation, detail: "not UTF-8 text")
        }
        return text
    }
}
