import CThreadCredentials
import Glibc
import SystemPackage

/// The credentials of ONE thread, read with the raw system calls (`getresuid`, `getresgid`, `getgroups`,
/// `setfsuid(-1)`, `capget`, `PR_CAP_AMBIENT`, `PR_GET_SECUREBITS`), which report the calling thread's own values.
///
/// Equal snapshots mean equal credentials: this is how ``ThreadCredentials`` verifies both an impersonation and a
/// revert, and what tests compare.
public struct ThreadCredentialSnapshot: Hashable, Sendable, CustomStringConvertible {
    /// Real, effective, saved and filesystem ids (uids or gids).
    public struct IDs: Hashable, Sendable, CustomStringConvertible {
        public var real: UInt32
        public var effective: UInt32
        public var saved: UInt32
        /// The id the kernel checks file access with; every `setresuid`/`setresgid` sets it to the effective id.
        public var filesystem: UInt32

        public init(real: UInt32, effective: UInt32, saved: UInt32, filesystem: UInt32) {
            self.real = real
            self.effective = effective
            self.saved = saved
            self.filesystem = filesystem
        }

        public var description: String { "\(real)/\(effective)/\(saved) fs \(filesystem)" }
    }

    /// The four capability sets, one bit per capability (bit 0 is CAP_CHOWN, as in `/proc/<pid>/status`).
    public struct Capabilities: Hashable, Sendable, CustomStringConvertible {
        public var effective: UInt64
        public var permitted: UInt64
        public var inheritable: UInt64
        public var ambient: UInt64

        public init(effective: UInt64, permitted: UInt64, inheritable: UInt64, ambient: UInt64) {
            self.effective = effective
            self.permitted = permitted
            self.inheritable = inheritable
            self.ambient = ambient
        }

        public var description: String {
            func hex(_ value: UInt64) -> String {
                let digits = String(value, radix: 16)
                return String(repeating: "0", count: max(0, 16 - digits.count)) + digits
            }
            return "eff \(hex(effective)) prm \(hex(permitted)) inh \(hex(inheritable)) amb \(hex(ambient))"
        }
    }

    public var uids: IDs
    public var gids: IDs
    /// Supplementary groups, as the kernel returns them (sorted).
    public var groups: [gid_t]
    public var capabilities: Capabilities
    /// `PR_GET_SECUREBITS` (never changed by impersonation; part of the snapshot so a revert is checked against it).
    public var securebits: UInt32

    public init(uids: IDs, gids: IDs, groups: [gid_t], capabilities: Capabilities, securebits: UInt32) {
        self.uids = uids
        self.gids = gids
        self.groups = groups
        self.capabilities = capabilities
        self.securebits = securebits
    }

    public var description: String {
        "uid \(uids), gid \(gids), groups [\(groups.map(String.init).joined(separator: ","))], caps \(capabilities), "
            + "securebits \(securebits)"
    }

    /// Whether both have the same uids, gids (real, effective, saved and filesystem) and supplementary groups:
    /// the identity a thread acts as, whatever its capabilities.
    public func hasSameIdentity(as other: ThreadCredentialSnapshot) -> Bool {
        uids == other.uids && gids == other.gids && groups == other.groups
    }

    // Capability numbers from <linux/capability.h>.
    static let capSetgid: UInt64 = 1 << 6
    static let capSetuid: UInt64 = 1 << 7
    static let capSetpcap: UInt64 = 1 << 8
    // SECBIT_NO_CAP_AMBIENT_RAISE from <linux/securebits.h>.
    static let secbitNoCapAmbientRaise: UInt32 = 1 << 6

    /// Reads the calling thread's credentials.
    static func read(operation: String) throws(ImpersonationError) -> ThreadCredentialSnapshot {
        func failed(_ rc: Int32, _ call: String) -> ImpersonationError {
            ImpersonationError(.systemCall, operation: operation, errno: Errno(rawValue: -rc), detail: call)
        }
        var ruid: uid_t = 0
        var euid: uid_t = 0
        var suid: uid_t = 0
        var rc = ctc_getresuid(&ruid, &euid, &suid)
        guard rc == 0 else { throw failed(rc, "getresuid") }
        var rgid: gid_t = 0
        var egid: gid_t = 0
        var sgid: gid_t = 0
        rc = ctc_getresgid(&rgid, &egid, &sgid)
        guard rc == 0 else { throw failed(rc, "getresgid") }
        // (uid_t)-1 is never a valid id: setfsuid only reports the current fsuid.
        let fsuid = ctc_setfsuid(uid_t.max)
        let fsgid = ctc_setfsgid(gid_t.max)

        var groups: [gid_t] = []
        var groupsRead = false
        // Bounded: only this thread changes its own groups, so the second attempt always fits.
        for _ in 0..<3 {
            let count = ctc_getgroups(0, nil)
            guard count >= 0 else { throw failed(count, "getgroups(0)") }
            var list = [gid_t](repeating: 0, count: Int(count))
            let got = count == 0 ? 0 : list.withUnsafeMutableBufferPointer { ctc_getgroups(count, $0.baseAddress) }
            if got == -EINVAL { continue }
            guard got >= 0 else { throw failed(got, "getgroups(\(count))") }
            groups = Array(list.prefix(Int(got)))
            groupsRead = true
            break
        }
        guard groupsRead else {
            throw ImpersonationError(
                .systemCall, operation: operation, errno: .invalidArgument,
                detail: "getgroups: the list kept changing")
        }

        var effective: UInt64 = 0
        var permitted: UInt64 = 0
        var inheritable: UInt64 = 0
        rc = ctc_capget(&effective, &permitted, &inheritable)
        guard rc == 0 else { throw failed(rc, "capget") }
        // The kernel keeps ambient ⊆ permitted ∩ inheritable, so only those bits need asking about.
        var ambient: UInt64 = 0
        let candidates = permitted & inheritable
        if candidates != 0 {
            for cap in 0..<64 where candidates & (1 << UInt64(cap)) != 0 {
                let set = ctc_ambient_is_set(Int32(cap))
                if set == -EINVAL { break } // past CAP_LAST_CAP, or a kernel without ambient capabilities
                guard set >= 0 else { throw failed(set, "prctl(PR_CAP_AMBIENT_IS_SET, \(cap))") }
                if set == 1 { ambient |= 1 << UInt64(cap) }
            }
        }
        let bits = ctc_securebits()
        guard bits >= 0 else { throw failed(bits, "prctl(PR_GET_SECUREBITS)") }

        return ThreadCredentialSnapshot(
            uids: IDs(real: ruid, effective: euid, saved: suid, filesystem: fsuid),
            gids: IDs(real: rgid, effective: egid, saved: sgid, filesystem: fsgid),
            groups: groups,
            capabilities: Capabilities(
                effective: effective, permitted: permitted, inheritable: inheritable,
                ambient: ambient),
            securebits: UInt32(bits))
    }
}
