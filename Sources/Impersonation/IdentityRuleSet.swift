import ConfigurationFile
import DirectoryNames

/// One rule of an identity map: `<kind> <identity> -> <account>`.
public struct IdentityRule: Hashable, Sendable, CustomStringConvertible {
    /// Which authenticated identity the rule looks at.
    public enum Kind: String, Hashable, Sendable, CaseIterable {
        /// The IKE identity (``PeerIdentity/ikeIdentity``).
        case id
        /// The certificate's subject DN (``PeerIdentity/certificateSubject``).
        case subject
        /// One of the certificate's subjectAltNames (``PeerIdentity/subjectAltNames``, or
        /// ``PeerIdentity/directoryNames`` for a rule whose identity is a distinguished name).
        case san
        /// The user of the second authentication round (``PeerIdentity/user``).
        case user
    }

    /// What the rule matches.
    public enum Pattern: Hashable, Sendable, CustomStringConvertible {
        /// The identity itself (case-insensitively for `id` and `san`, exactly for `user`).
        case exact(String)
        /// `*.suffix`: exactly one DNS label, then `.suffix` (`id` and `san` only). Stored lowercased, no leading dot.
        case wildcard(suffix: String)
        /// A distinguished name, parsed once from the rule's text (every `subject` rule; a `san` rule whose text
        /// is a DN, for directoryName subjectAltNames). Compared RDN by RDN, attribute by attribute: the types
        /// equal, the values ASCII case-insensitively, the attributes of a multi-valued RDN in any order.
        case distinguishedName(RDNSequence)

        public var description: String {
            switch self {
            case .exact(let text): text
            case .wildcard(let suffix): "*.\(suffix)"
            case .distinguishedName(let name): "\"\(name)\""
            }
        }
    }

    public var kind: Kind
    public var pattern: Pattern
    /// The local account name the rule maps to.
    public var account: String
    /// The rule's line in the file (1-based).
    public var line: Int
    /// `accept-group-key` after the account (`id` rules only): the rule also maps a peer that authenticated with a
    /// group key, i.e. ANY holder of that key who claims the identity.
    public var acceptsGroupKey: Bool

    /// The option word that marks a rule ``acceptsGroupKey``.
    public static let acceptGroupKeyOption = "accept-group-key"

    public init(kind: Kind, pattern: Pattern, account: String, line: Int, acceptsGroupKey: Bool = false) {
        self.kind = kind
        self.pattern = pattern
        self.account = account
        self.line = line
        self.acceptsGroupKey = acceptsGroupKey
    }

    public var description: String {
        "line \(line): \(kind.rawValue) \(pattern) -> \(account)"
            + (acceptsGroupKey ? " \(Self.acceptGroupKeyOption)" : "")
    }
}

/// A parsed, validated identity map: the rules of one file and the lookup tables built from them. Immutable; see
/// ``IdentityMap`` for the file format, the matching order and reloading.
public struct IdentityRuleSet: Sendable {
    /// Limits that keep a hostile or broken file from costing unbounded time or memory.
    public static let maximumFileBytes = 1 << 20
    public static let maximumLineBytes = 4096
    public static let maximumRules = 100_000
    static let maximumReportedIssues = 100

    /// Every rule, in file order.
    public let rules: [IdentityRule]
    /// Problems that do not stop the map from loading: rules naming an account that does not exist (yet).
    public let warnings: [ImpersonationError.Issue]

    private let users: [String: IdentityRule]
    /// By the name's ``RDNSequence/normalized`` form.
    private let subjects: [RDNSequence: IdentityRule]
    private let directoryNameSANs: [RDNSequence: IdentityRule]
    private let exactSANs: [String: IdentityRule]
    private let exactIDs: [String: IdentityRule]
    private let wildcardSANs: [String: IdentityRule]
    private let wildcardIDs: [String: IdentityRule]

    /// An empty map: every identity is unmapped.
    public init() {
        self.init(rules: [], warnings: [])
    }

    private init(rules: [IdentityRule], warnings: [ImpersonationError.Issue]) {
        self.rules = rules
        self.warnings = warnings
        var tables: [String: [String: IdentityRule]] = [:]
        var names: [IdentityRule.Kind: [RDNSequence: IdentityRule]] = [:]
        for rule in rules {
            let table: String
            switch (rule.kind, rule.pattern) {
            case (_, .distinguishedName(let name)):
                // Duplicates were rejected by the parser; keep the first anyway.
                if names[rule.kind, default: [:]][name.normalized] == nil {
                    names[rule.kind, default: [:]][name.normalized] = rule
                }
                continue
            case (.user, _): table = "user"
            case (.subject, _): table = "subject"
            case (.san, .exact): table = "san"
            case (.id, .exact): table = "id"
            case (.san, .wildcard): table = "san*"
            case (.id, .wildcard): table = "id*"
            }
            if tables[table, default: [:]][Self.key(rule)] == nil { tables[table, default: [:]][Self.key(rule)] = rule }
        }
        users = tables["user"] ?? [:]
        subjects = names[.subject] ?? [:]
        directoryNameSANs = names[.san] ?? [:]
        exactSANs = tables["san"] ?? [:]
        exactIDs = tables["id"] ?? [:]
        wildcardSANs = tables["san*"] ?? [:]
        wildcardIDs = tables["id*"] ?? [:]
    }

    // MARK: Matching

    /// The rule that maps `peer`, in the order documented on ``IdentityMap``.
    ///
    /// - Throws: ``ImpersonationError/Code/unmappedIdentity`` when nothing matches (there is no default account),
    ///   ``ImpersonationError/Code/ambiguousIdentity`` when the best matching rules name different accounts,
    ///   ``ImpersonationError/Code/groupKeyNotAccepted`` when a peer machine that authenticated with a group key
    ///   matches a rule not marked `accept-group-key`.
    public func match(_ peer: PeerIdentity) throws(ImpersonationError) -> IdentityRule {
        let operation = "resolve \(peer)"
        if let user = peer.user {
            guard let rule = users[user] else {
                throw ImpersonationError(
                    .unmappedIdentity, operation: operation,
                    detail: "no `user` rule maps \"\(user)\" (a peer that authenticated a user is "
                        + "never mapped through its machine's rules)")
            }
            return rule
        }
        let sans = peer.subjectAltNames.filter { !$0.isEmpty }
        let id = peer.ikeIdentity.flatMap { $0.isEmpty ? nil : $0 }
        let tiers: [(String, () -> [IdentityRule])] = [
            ("subject", { peer.certificateSubject.flatMap { subjects[$0.normalized] }.map { [$0] } ?? [] }),
            (
                "san",
                {
                    sans.compactMap { exactSANs[Self.foldCase($0)] }
                        + peer.directoryNames.compactMap { directoryNameSANs[$0.normalized] }
                }
            ),
            ("id", { id.flatMap { exactIDs[Self.foldCase($0)] }.map { [$0] } ?? [] }),
            ("san *.", { sans.compactMap { Self.wildcardKey($0).flatMap { wildcardSANs[$0] } } }),
            ("id *.", { id.flatMap(Self.wildcardKey).flatMap { wildcardIDs[$0] }.map { [$0] } ?? [] }),
        ]
        for (name, candidates) in tiers {
            let matched = candidates().sorted { $0.line < $1.line }
            guard let first = matched.first else { continue }
            let accounts = Set(matched.map(\.account))
            if accounts.count > 1 {
                throw ImpersonationError(
                    .ambiguousIdentity, operation: operation,
                    detail: "\(name) rules map this peer to different accounts: "
                        + matched.map(\.description).joined(separator: "; "))
            }
            // A group key proves membership of the group, not the identity: only an explicit opt-in maps it, and
            // the best match decides (no falling back to a less specific rule that opts in).
            if peer.authentication == .groupKey, let refused = matched.first(where: { !$0.acceptsGroupKey }) {
                throw ImpersonationError(
                    .groupKeyNotAccepted, operation: operation,
                    detail: "the peer authenticated with a group key, which any member of the group "
                        + "holds; \(refused) is not marked `\(IdentityRule.acceptGroupKeyOption)`")
            }
            return first
        }
        throw ImpersonationError(.unmappedIdentity, operation: operation, detail: "no rule maps this peer")
    }

    // MARK: Parsing

    /// Parses and validates the text of an identity map.
    ///
    /// With an account database, every account a rule names is looked up once: one with uid 0 or in group 0 is an
    /// error; one that does not exist is a warning (``warnings``), and resolving that rule fails until it exists.
    ///
    /// - Throws: ``ImpersonationError/Code/invalidMap`` with every problem and its line number.
    public static func parse(
        _ text: String, source: String = "identity map",
        accounts: (any AccountDatabase)? = SystemAccountDatabase()
    )
        throws(ImpersonationError) -> IdentityRuleSet
    {
        let operation = "load \(source)"
        guard text.utf8.count <= maximumFileBytes else {
            throw ImpersonationError(
                .unreadableMap, operation: operation,
                detail: "larger than \(maximumFileBytes) bytes")
        }
        var issues: [ImpersonationError.Issue] = []
        var warnings: [ImpersonationError.Issue] = []
        var rules: [IdentityRule] = []
        var firstLine: [String: Int] = [:]
        // Bounded by the file size checked above.
        for result in ConfigurationReader.lines(text, maximumLineBytes: maximumLineBytes) {
            let line: ConfigurationLine
            switch result {
            case .success(let read): line = read
            case .failure(let issue):
                issues.append(issue)
                continue
            }
            let number = line.number
            switch parseLine(line.tokens, number: number) {
            case .failure(let message):
                issues.append(.init(line: number, message: message))
            case .rule(let rule):
                let duplicateKey = "\(rule.kind.rawValue) \(key(rule))"
                if let first = firstLine[duplicateKey] {
                    issues.append(
                        .init(
                            line: number,
                            message: "duplicate rule: \(rule.kind.rawValue) \(rule.pattern) "
                                + "is already mapped on line \(first)"))
                    continue
                }
                guard rules.count < maximumRules else {
                    issues.append(.init(line: number, message: "more than \(maximumRules) rules"))
                    break
                }
                firstLine[duplicateKey] = number
                rules.append(rule)
            }
        }
        if let accounts {
            var checked: [String: (error: String?, warning: String?)] = [:]
            for rule in rules {
                let verdict: (error: String?, warning: String?)
                if let known = checked[rule.account] {
                    verdict = known
                } else {
                    do {
                        if let account = try accounts.account(named: rule.account) {
                            do {
                                try account.checkUnprivileged(operation: operation)
                                verdict = (nil, nil)
                            } catch {
                                verdict = (error.detail ?? "\(error.code)", nil)
                            }
                        } else {
                            verdict = (
                                nil,
                                "account \"\(rule.account)\" does not exist: this rule cannot be resolved until it does"
                            )
                        }
                    } catch {
                        verdict = (nil, "account \"\(rule.account)\" cannot be looked up now: \(error)")
                    }
                    checked[rule.account] = verdict
                }
                if let message = verdict.error { issues.append(.init(line: rule.line, message: message)) }
                if let message = verdict.warning { warnings.append(.init(line: rule.line, message: message)) }
            }
        }
        guard issues.isEmpty else {
            var reported = issues.sorted { $0.line < $1.line }
            if reported.count > maximumReportedIssues {
                let more = reported.count - maximumReportedIssues
                reported = Array(reported.prefix(maximumReportedIssues))
                reported.append(.init(line: 0, message: "… and \(more) more"))
            }
            throw ImpersonationError(
                .invalidMap, operation: operation,
                detail: "\(issues.count) error\(issues.count == 1 ? "" : "s"); the map was not loaded",
                issues: reported)
        }
        return IdentityRuleSet(rules: rules, warnings: warnings)
    }

    private enum LineResult {
        case rule(IdentityRule)
        case failure(String)
    }

    private static func parseLine(_ tokens: [ConfigurationToken], number: Int) -> LineResult {
        guard let first = tokens.first else { return .failure("empty line") }
        let usage = "expected `<id|subject|san|user> <identity> -> <account>`"
        guard !first.quoted, let kind = IdentityRule.Kind(rawValue: first.text) else {
            return .failure("unknown rule kind \"\(first.text)\"; \(usage)")
        }
        guard tokens.count >= 2 else { return .failure("missing identity; \(usage)") }
        let identity = tokens[1]
        guard tokens.count >= 3, tokens[2].text == "->", !tokens[2].quoted else {
            if tokens.contains(where: { !$0.quoted && $0.text.contains("->") }) {
                return .failure("`->` must stand alone, with spaces around it; \(usage)")
            }
            return .failure("expected `->` after the identity; \(usage)")
        }
        guard tokens.count >= 4 else { return .failure("missing account after `->`") }
        let option = IdentityRule.acceptGroupKeyOption
        let acceptsGroupKey = tokens.count == 5 && !tokens[4].quoted && tokens[4].text == option
        guard tokens.count == 4 || acceptsGroupKey else {
            return .failure(
                "unexpected text after the account: \"\(tokens[4...].map(\.text).joined(separator: " "))\""
                    + " (quote identities that contain spaces; the only option is `\(option)`)")
        }
        if acceptsGroupKey && kind != .id {
            return .failure(
                "`\(option)` is for `id` rules only: a group key proves no certificate subject, "
                    + "subjectAltName or user")
        }
        let account = tokens[3].text
        if let problem = accountNameProblem(account) { return .failure(problem) }
        guard !identity.text.isEmpty else { return .failure("empty identity") }
        guard identity.text.utf8.count <= 1024 else { return .failure("identity longer than 1024 bytes") }

        // A `san` identity that is a distinguished name (known attribute types before `=`, as no DNS name, address
        // or URI is) names a directoryName subjectAltName.
        let directoryName = kind == .san ? try? RDNSequence(parsing: identity.text) : nil
        let pattern: IdentityRule.Pattern
        switch kind {
        case .user:
            if identity.text.hasPrefix("*") {
                return .failure(
                    "`user` rules match one user exactly; there are no user wildcards (that would be a default account)"
                )
            }
            pattern = .exact(identity.text)
        case .subject:
            do {
                pattern = .distinguishedName(try RDNSequence(parsing: identity.text))
            } catch {
                return .failure(
                    "\"\(identity.text)\" is not a distinguished name: \(error.message) "
                        + "(expected `TYPE=value, TYPE=value`, RFC 4514 escapes, quoted)")
            }
        case .san where directoryName != nil:
            pattern = .distinguishedName(directoryName!)
        case .id, .san:
            if identity.text == "*" {
                return .failure("`*` alone would be a default account, and there is none; use `*.domain`")
            }
            if identity.text.hasPrefix("*.") {
                let suffix = String(identity.text.dropFirst(2))
                guard let domain = validDomain(suffix) else {
                    return .failure(
                        "`*.` must be followed by a domain name (letters, digits, `-`, `_`, dots; "
                            + "the last label not all digits), e.g. `*.example`")
                }
                pattern = .wildcard(suffix: domain)
            } else if identity.text.contains("*") {
                return .failure("`*` is only allowed as the whole first label (`*.example`)")
            } else {
                pattern = .exact(identity.text)
            }
        }
        return .rule(
            IdentityRule(
                kind: kind, pattern: pattern, account: account, line: number,
                acceptsGroupKey: acceptsGroupKey))
    }

    /// nil when `name` is a plausible account name (`[A-Za-z0-9_.][A-Za-z0-9_.-]*` with an optional final `$`, at
    /// most 256 bytes, not all digits, not root); otherwise why not.
    static func accountNameProblem(_ name: String) -> String? {
        guard !name.isEmpty else { return "empty account name" }
        guard name.utf8.count <= 256 else { return "account name longer than 256 bytes" }
        if name == "root" { return "maps to root: a peer is never mapped to uid 0" }
        let bytes = Array(name.utf8)
        if bytes.allSatisfy({ $0 >= 0x30 && $0 <= 0x39 }) {
            return "\"\(name)\" is a number; give an account name, not a uid"
        }
        for (offset, byte) in bytes.enumerated() {
            let letterOrDigit =
                (byte >= 0x30 && byte <= 0x39) || (byte >= 0x41 && byte <= 0x5a) || (byte >= 0x61 && byte <= 0x7a)
            let allowed =
                letterOrDigit || byte == 0x5f || byte == 0x2e || (byte == 0x2d && offset > 0)
                || (byte == 0x24 && offset == bytes.count - 1 && offset > 0)
            if !allowed { return "\"\(name)\" is not a valid account name" }
        }
        return nil
    }

    // MARK: Normalization

    /// What makes two rules of one kind duplicates. A DN's key is its normalized form's RFC 4514 text, which is
    /// escaped, so distinct names never share a key (and it is marked apart from any text identity).
    private static func key(_ rule: IdentityRule) -> String {
        switch (rule.kind, rule.pattern) {
        case (_, .distinguishedName(let name)): "dn:" + name.normalized.description
        case (.user, .exact(let text)): text
        case (_, .exact(let text)): foldCase(text)
        case (_, .wildcard(let suffix)): suffix
        }
    }

    /// ASCII lowercase. IKE FQDN and email identities compare case-insensitively (as strongSwan compares them).
    static func foldCase(_ text: String) -> String {
        String(decoding: text.utf8.map { $0 >= 0x41 && $0 <= 0x5a ? $0 + 0x20 : $0 }, as: UTF8.self)
    }

    /// `domain` lowercased when it is a DNS name: labels of letters, digits, `-` and `_`, the last not all digits.
    static func validDomain(_ domain: String) -> String? {
        let labels = domain.split(separator: ".", omittingEmptySubsequences: false)
        guard !labels.isEmpty, labels.count <= 127, domain.utf8.count <= 253 else { return nil }
        for label in labels {
            guard !label.isEmpty, label.utf8.count <= 63,
                label.utf8.allSatisfy({
                    ($0 >= 0x30 && $0 <= 0x39) || ($0 >= 0x41 && $0 <= 0x5a) || ($0 >= 0x61 && $0 <= 0x7a) || $0 == 0x2d
                        || $0 == 0x5f
                })
            else { return nil }
        }
        guard let last = labels.last, !last.utf8.allSatisfy({ $0 >= 0x30 && $0 <= 0x39 }) else { return nil }
        return foldCase(domain)
    }

    /// For a DNS-shaped name `label.rest`, the `rest` a wildcard `*.rest` must have; nil for anything else (emails,
    /// addresses, DNs, a first label containing `*`).
    static func wildcardKey(_ name: String) -> String? {
        guard let dot = name.firstIndex(of: ".") else { return nil }
        let first = name[..<dot]
        guard validDomain(String(first) + ".x") != nil else { return nil }
        return validDomain(String(name[name.index(after: dot)...]))
    }
}
