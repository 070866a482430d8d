/// What one local user's applications may do through the keying daemon: a keying file line
/// `client-user NAME-OR-UID [peers=IDENTITY,…] [insecure=no]`.
///
/// - `peers=`: the peer identities (IKE identities, as the peer must prove them: `b.example`, not `host/b.example`)
///   this user's sockets may be secured with. Each is literal, or `*.SUFFIX` for any identity ending in `.SUFFIX`
///   (patterns are the administrator's only: the application's peer target name stays one literal identity). With
///   this option every connecting socket of the user needs a peer target name for its peer that one of them
///   matches (verified, not optional), and the user's sockets never answer peers (a listener or a bound UDP socket
///   is refused: it would accept any peer the host trusts).
/// - `insecure=no`: the user's sockets may not use `SOCKET_SETTINGS_ALLOW_INSECURE` (clear text after a failed
///   negotiation).
///
/// Without options the user may do everything root may. Root and the daemon's own user have no rule.
public struct ClientUserRule: Hashable, Sendable {
    /// The user, as written (a name or a numeric uid).
    public var user: String
    /// The peer identities allowed (literal or `*.SUFFIX`); nil for any.
    public var peers: [String]?
    /// Whether `ALLOW_INSECURE` may be used.
    public var allowsInsecure: Bool
    /// The keying file's line, for the errors that name the rule.
    public var line: Int

    public init(user: String, peers: [String]? = nil, allowsInsecure: Bool = true, line: Int = 0) {
        self.user = user
        self.peers = peers
        self.allowsInsecure = allowsInsecure
        self.line = line
    }

    /// What a client the daemon cannot name gets: nothing (no peer, no responder, no `ALLOW_INSECURE`).
    public static let unknownClient = ClientUserRule(user: "an unknown client", peers: [], allowsInsecure: false)

    /// Whether `identity` (the peer's IKE identity) is one this user's sockets may be secured with. `*.SUFFIX`
    /// matches host names only: an identity with `=`, `,`, `@` or `:` (a distinguished name, an e-mail address,
    /// an address) must be listed literally.
    public func admitsPeer(_ identity: String) -> Bool {
        guard let peers else { return true }
        let candidate = identity.lowercased()
        let isHostName = !candidate.contains { "=,@: ".contains($0) }
        return peers.contains { pattern in
            let pattern = pattern.lowercased()
            if pattern.hasPrefix("*.") {
                guard isHostName else { return false }
                let suffix = pattern.dropFirst(1)
                return candidate.count > suffix.count && candidate.hasSuffix(suffix)
            }
            return candidate == pattern
        }
    }

    /// Whether the user may only reach named peers (and never answers peers).
    public var restrictsPeers: Bool { peers != nil }

    /// How the keying file names this rule in errors.
    public var source: String {
        line == 0 ? "the keying daemon (\(user))" : "the keying file's client-user rule for \(user) (line \(line))"
    }

    /// Parses the options after `client-user NAME`; nil with the reason for an option it does not know.
    static func options(_ words: [String]) -> Result<(peers: [String]?, allowsInsecure: Bool), ParseFailure> {
        var peers: [String]?
        var allowsInsecure = true
        for word in words {
            if word.hasPrefix("peers=") {
                let list = word.dropFirst("peers=".count).split(separator: ",", omittingEmptySubsequences: false)
                    .map(String.init)
                guard !list.isEmpty, list.allSatisfy(Self.isPattern) else {
                    return .failure(
                        ParseFailure(
                            "peers= is a comma-separated list of identities, each literal or *.SUFFIX"))
                }
                peers = (peers ?? []) + list
            } else if word == "insecure=no" {
                allowsInsecure = false
            } else if word == "insecure=yes" {
                allowsInsecure = true
            } else {
                return .failure(ParseFailure("unknown client-user option `\(word)` (peers=…, insecure=no)"))
            }
        }
        return .success((peers, allowsInsecure))
    }

    /// A literal identity (no `*`, no `%`), or `*.` followed by one.
    static func isPattern(_ text: String) -> Bool {
        let literal = text.hasPrefix("*.") ? String(text.dropFirst(2)) : text
        return !literal.isEmpty && !literal.contains("*") && !literal.contains("%")
    }

    struct ParseFailure: Error {
        var message: String
        init(_ message: String) { self.message = message }
    }
}
