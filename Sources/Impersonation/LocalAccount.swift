import Glibc
import SystemPackage

/// A local account a peer is mapped to: what a thread becomes while it impersonates that peer.
///
/// ``groups`` is the full supplementary group list the thread gets (as `initgroups(3)` would build it: the
/// primary group plus every group listing the account), kept sorted and without duplicates, which is also how the
/// kernel hands the list back.
public struct LocalAccount: Hashable, Sendable, CustomStringConvertible {
    public var name: String
    public var uid: uid_t
    public var gid: gid_t
    public var groups: [gid_t]

    /// The kernel's limit on supplementary groups (`NGROUPS_MAX` in `<linux/limits.h>`).
    public static let maximumGroups = 65_536

    public init(name: String, uid: uid_t, gid: gid_t, groups: [gid_t]) {
        self.name = name
        self.uid = uid
        self.gid = gid
        self.groups = Array(Set(groups)).sorted()
    }

    /// Looks `name` up in the system's user database (`getpwnam_r`, `getgrouplist`, so NSS sources count).
    ///
    /// - Throws: ``ImpersonationError/Code/unknownAccount`` when there is no such account,
    ///   ``ImpersonationError/Code/accountLookup`` when the lookup itself fails. Root is NOT rejected here (this is
    ///   a plain lookup); ``IdentityMap`` and ``ThreadCredentials`` reject privileged accounts.
    public static func lookup(_ name: String) throws(ImpersonationError) -> LocalAccount {
        guard let account = try SystemAccountDatabase().account(named: name) else {
            throw ImpersonationError(
                .unknownAccount, operation: "lookup \(name)",
                detail: "no account named \"\(name)\" in the user database")
        }
        return account
    }

    /// Throws ``ImpersonationError/Code/privilegedAccount`` for root (uid 0), the root group (gid 0 as primary or
    /// supplementary group), and the ids the kernel reads as "leave unchanged" ((uid_t)-1, (gid_t)-1), and
    /// ``ImpersonationError/Code/invalidAccount`` for a list longer than the kernel accepts.
    public func checkUnprivileged(operation: String) throws(ImpersonationError) {
        if uid == 0 {
            throw ImpersonationError(
                .privilegedAccount, operation: operation,
                detail: "account \"\(name)\" has uid 0 (root): impersonating it drops nothing")
        }
        if uid == uid_t.max || gid == gid_t.max || groups.contains(gid_t.max) {
            throw ImpersonationError(
                .privilegedAccount, operation: operation,
                detail: "account \"\(name)\" uses id 4294967295, which the kernel reads as \"unchanged\"")
        }
        if gid == 0 || groups.contains(0) {
            throw ImpersonationError(
                .privilegedAccount, operation: operation,
                detail: "account \"\(name)\" is in group 0 (root)")
        }
        if groups.count > Self.maximumGroups {
            throw ImpersonationError(
                .invalidAccount, operation: operation,
                detail: "account \"\(name)\" has \(groups.count) groups, the kernel allows \(Self.maximumGroups)")
        }
        if name.isEmpty {
            throw ImpersonationError(.invalidAccount, operation: operation, detail: "the account has no name")
        }
    }

    /// The account a thread that inherited an impersonation acts as: its effective uid and gid and its groups,
    /// named as the user database names the uid (`uid N` when it has no entry).
    static func inherited(from credentials: ThreadCredentialSnapshot) -> LocalAccount {
        let uid = credentials.uids.effective
        return LocalAccount(
            name: SystemAccountDatabase.name(ofUID: uid) ?? "uid \(uid)", uid: uid, gid: credentials.gids.effective,
            groups: credentials.groups)
    }

    public var description: String {
        "\(name) (uid \(uid), gid \(gid), groups \(groups.map(String.init).joined(separator: ",")))"
    }
}

/// Where account names become uids, gids and groups. ``SystemAccountDatabase`` in production; tests can supply
/// their own (an account database is never written to).
public protocol AccountDatabase: Sendable {
    /// The account, or nil when there is no account with that name.
    func account(named name: String) throws(ImpersonationError) -> LocalAccount?
}

/// The system's user database through NSS: `getpwnam_r` and `getgrouplist`, with bounded buffers that grow on
/// `ERANGE`.
public struct SystemAccountDatabase: AccountDatabase {
    /// Largest `getpwnam_r` buffer tried before giving up.
    static let maximumPasswdBuffer = 1 << 20

    public init() {}

    public func account(named name: String) throws(ImpersonationError) -> LocalAccount? {
        let operation = "lookup \(name)"
        guard !name.isEmpty, name.utf8.count <= 256, !name.utf8.contains(0) else {
            throw ImpersonationError(.accountLookup, operation: operation, detail: "not a valid account name")
        }
        guard let (uid, gid) = try Self.passwdEntry(name, operation: operation) else { return nil }
        let groups = try Self.groupList(name, gid: gid, operation: operation)
        return LocalAccount(name: name, uid: uid, gid: gid, groups: groups)
    }

    /// The name of `uid` in the user database (`getpwuid_r`), nil when it has none or the lookup fails.
    static func name(ofUID uid: uid_t) -> String? {
        var size = 1024
        // Bounded: the buffer doubles from 1 KiB up to 1 MiB.
        while size <= maximumPasswdBuffer {
            var buffer = [CChar](repeating: 0, count: size)
            // The entry's strings point into the buffer: the name is copied out while it is valid.
            let (rc, name) = buffer.withUnsafeMutableBufferPointer { storage -> (Int32, String?) in
                var entry = passwd()
                var result: UnsafeMutablePointer<passwd>? = nil
                let rc = getpwuid_r(uid, &entry, storage.baseAddress!, storage.count, &result)
                guard rc == 0, result != nil, let name = entry.pw_name else { return (rc, nil) }
                return (rc, String(cString: name))
            }
            if rc == ERANGE {
                size *= 2
                continue
            }
            return name
        }
        return nil
    }

    private static func passwdEntry(_ name: String, operation: String) throws(ImpersonationError) -> (uid_t, gid_t)? {
        let suggested = sysconf(Int32(_SC_GETPW_R_SIZE_MAX))
        var size = suggested > 0 ? min(Int(suggested), maximumPasswdBuffer) : 1024
        // Bounded: the buffer doubles from >= 1 KiB up to 1 MiB, at most 11 attempts.
        for _ in 0..<12 {
            var entry = passwd()
            var result: UnsafeMutablePointer<passwd>? = nil
            var buffer = [CChar](repeating: 0, count: size)
            let rc = buffer.withUnsafeMutableBufferPointer { storage in
                getpwnam_r(name, &entry, storage.baseAddress!, storage.count, &result)
            }
            switch rc {
            case 0:
                guard result != nil else { return nil }
                return (entry.pw_uid, entry.pw_gid)
            case ENOENT, ESRCH:
                // Some NSS modules say "not found" this way (getpwnam_r(3)).
                return nil
            case ERANGE where size < maximumPasswdBuffer:
                size = min(size * 2, maximumPasswdBuffer)
            default:
                throw ImpersonationError(
                    .accountLookup, operation: operation, errno: Errno(rawValue: rc),
                    detail: "getpwnam_r with a \(size)-byte buffer")
            }
        }
        throw ImpersonationError(
            .accountLookup, operation: operation, errno: .outOfRange,
            detail: "getpwnam_r: entry larger than \(maximumPasswdBuffer) bytes")
    }

    private static func groupList(_ name: String, gid: gid_t, operation: String) throws(ImpersonationError) -> [gid_t] {
        var capacity: Int32 = 64
        // Bounded: the capacity only grows, to at most the kernel's limit; a list that keeps changing gives up.
        for _ in 0..<8 {
            var count = capacity
            var groups = [gid_t](repeating: 0, count: Int(capacity))
            let rc = getgrouplist(name, gid, &groups, &count)
            if rc >= 0 {
                return Array(groups.prefix(Int(min(count, capacity))))
            }
            guard count > capacity else {
                throw ImpersonationError(
                    .accountLookup, operation: operation,
                    detail: "getgrouplist failed without asking for more room")
            }
            guard count <= Int32(LocalAccount.maximumGroups) else {
                throw ImpersonationError(
                    .invalidAccount, operation: operation,
                    detail: "getgrouplist: \(count) groups, the kernel allows \(LocalAccount.maximumGroups)")
            }
            capacity = count
        }
        throw ImpersonationError(
            .accountLookup, operation: operation,
            detail: "getgrouplist: the group list kept growing")
    }
}
