import Impersonation

extension FuzzTarget {
    /// The identity-map file (``IdentityRuleSet/parse(_:source:accounts:)``), on the file's bytes as
    /// ``IdentityMap`` reads them (UTF-8 or refused; no account database, which is the system's and not the
    /// input's). An accepted map is then asked, for each of its first 64 rules, which rule maps a peer that
    /// presents exactly that rule's identity (for `*.domain`, a name one label under the domain).
    ///
    /// Invariant: every rule's own identity is mapped, by that very rule for an exact rule (the most specific
    /// level that matches is the rule's own: no other rule of that level can have the same key), by some rule for
    /// a wildcard (an exact rule for the name may come first).
    public static let identityMap = FuzzTarget(name: "identity-map") { input in
        guard let text = String(validating: input, as: UTF8.self) else { return .refused }
        let map: IdentityRuleSet
        do { map = try IdentityRuleSet.parse(text, source: "fuzz input", accounts: nil) } catch { return .refused }
        for rule in map.rules.prefix(64) {
            let peer: PeerIdentity
            switch (rule.kind, rule.pattern) {
            case (.user, .exact(let name)): peer = PeerIdentity(user: name)
            case (.subject, .distinguishedName(let name)): peer = PeerIdentity(certificateSubject: name)
            case (.san, .distinguishedName(let name)): peer = PeerIdentity(directoryNames: [name])
            case (.san, .exact(let name)): peer = PeerIdentity(subjectAltNames: [name])
            case (.id, .exact(let name)): peer = PeerIdentity(ikeIdentity: name, authentication: .certificate)
            case (.san, .wildcard(let suffix)): peer = PeerIdentity(subjectAltNames: ["fuzz." + suffix])
            case (.id, .wildcard(let suffix)): peer = PeerIdentity(ikeIdentity: "fuzz." + suffix)
            case (.user, .wildcard), (.subject, .wildcard), (.subject, .exact):
                return .violated("\(rule): a \(rule.pattern) pattern of kind \(rule.kind)")
            case (.user, .distinguishedName), (.id, .distinguishedName):
                return .violated("\(rule): a distinguished name of kind \(rule.kind)")
            }
            let matched: IdentityRule
            do { matched = try map.match(peer) } catch {
                return .violated("\(rule) does not map its own identity (\(peer)): \(error)")
            }
            if case .wildcard = rule.pattern {
            } else if matched != rule {
                return .violated("\(rule) is its identity's exact rule, but \(matched) mapped \(peer)")
            }
        }
        return .accepted
    }
}
