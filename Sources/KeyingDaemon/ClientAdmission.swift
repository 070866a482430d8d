import DaemonControl
import Glibc
import Keying

/// Which local users' applications the keying daemon secures sockets for, and what each may do: root and the
/// daemon's own user without limits, and the users the keying file names (`client-user`, each with its
/// `ClientUserRule`). Everyone else is refused at the first message, with the rule that would admit them;
/// nobody is refused later for who they are, only for what their rule forbids.
public struct ClientAdmission: Sendable {
    /// The admitted users besides root and the daemon's own, by uid.
    public let rules: [UInt32: ClientUserRule]
    /// Names that named no account when the rules were read (reported once, admit nobody).
    public let unknownNames: [String]

    /// Users named by more than one line (by name and by uid, say), with the lines: refused until one line remains
    /// (which of two rules the administrator meant cannot be guessed).
    public let duplicates: [(uid: UInt32, lines: [Int])]

    /// The users of `rules` (names looked up now, or numeric uids). A user named twice is refused.
    public init(rules: [ClientUserRule]) {
        var byUID: [UInt32: ClientUserRule] = [:]
        var named: [UInt32: [Int]] = [:]
        var unknown: [String] = []
        for rule in rules {
            let uid: UInt32?
            if let number = UInt32(rule.user) {
                uid = number
            } else if let entry = getpwnam(rule.user) {
                uid = entry.pointee.pw_uid
            } else {
                uid = nil
            }
            guard let uid else {
                unknown.append(rule.user)
                continue
            }
            named[uid, default: []].append(rule.line)
            byUID[uid] = rule
        }
        let duplicates = named.filter { $0.value.count > 1 }.map { (uid: $0.key, lines: $0.value) }
        for duplicate in duplicates { byUID[duplicate.uid] = nil }
        self.rules = byUID
        self.unknownNames = unknown
        self.duplicates = duplicates.sorted { $0.uid < $1.uid }
    }

    /// Users admitted without limits (`client-user NAME` lines with no options).
    public init(clientUsers: [String]) {
        self.init(rules: clientUsers.map { ClientUserRule(user: $0) })
    }

    /// The admitted uids besides root and the daemon's own.
    public var uids: Set<UInt32> { Set(rules.keys) }

    /// Whether a client with these credentials may use the daemon.
    public func admits(_ credentials: PeerCredentials) -> Bool {
        credentials.uid == 0 || credentials.uid == geteuid() || rules[credentials.uid] != nil
    }

    /// What limits a client with these credentials: nil for root and the daemon's own user (none).
    public func rule(for credentials: PeerCredentials) -> ClientUserRule? {
        guard credentials.uid != 0, credentials.uid != geteuid() else { return nil }
        return rules[credentials.uid]
    }
}
