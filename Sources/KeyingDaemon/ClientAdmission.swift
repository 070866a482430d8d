import DaemonControl
import Glibc

/// Which local users' applications the keying daemon secures sockets for: root, the daemon's own user, and the
/// users the keying file names (`client-user`). Everyone else is refused at the first message, with the rule
/// that would admit them; nobody is refused later for who they are.
public struct ClientAdmission: Sendable {
    /// The admitted uids besides root and the daemon's own.
    public let uids: Set<UInt32>
    /// Names that named no account when the rules were read (reported once, admit nobody).
    public let unknownNames: [String]

    /// The rules from `client-user` values: user names (looked up now) or numeric uids.
    public init(clientUsers: [String]) {
        var uids: Set<UInt32> = []
        var unknown: [String] = []
        for user in clientUsers {
            if let uid = UInt32(user) {
                uids.insert(uid)
            } else if let entry = getpwnam(user) {
                uids.insert(entry.pointee.pw_uid)
            } else {
                unknown.append(user)
            }
        }
        self.uids = uids
        self.unknownNames = unknown
    }

    /// Whether a client with these credentials may use the daemon.
    public func admits(_ credentials: PeerCredentials) -> Bool {
        credentials.uid == 0 || credentials.uid == geteuid() || uids.contains(credentials.uid)
    }
}
