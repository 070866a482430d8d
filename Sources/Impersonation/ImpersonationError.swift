import ConfigurationFile
import SystemPackage

/// An error from the Impersonation module: the identity map (parsing, matching, account lookup) and the
/// per-thread credential switch. It keeps the errno of the system call that failed, which step it was, and,
/// for a map file, every problem found with its line number.
///
/// Equality looks only at ``code`` so tests can write the expected error themselves.
public struct ImpersonationError: Error, Hashable, CustomStringConvertible, Sendable {
    /// What kind of failure this is. Extensible: new codes may be added.
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        private enum Kind: Hashable, Sendable {
            case invalidMap, unreadableMap, unmappedIdentity, ambiguousIdentity, groupKeyNotAccepted, privilegedAccount
            case unknownAccount, accountLookup
            case invalidAccount, notPermitted, systemCall, verificationFailed, restoreFailed
        }
        private let kind: Kind
        private init(_ kind: Kind) { self.kind = kind }

        /// The identity map has errors (see ``ImpersonationError/issues``, each with its line number).
        public static let invalidMap = Code(.invalidMap)
        /// The identity map file cannot be read (missing, unreadable, too large, not UTF-8).
        public static let unreadableMap = Code(.unreadableMap)
        /// No rule maps this peer. There is never a default account.
        public static let unmappedIdentity = Code(.unmappedIdentity)
        /// The best matching rules (same precedence) map this peer to different accounts, e.g. two of its
        /// subjectAltNames are mapped to two accounts. Nothing is chosen by file order.
        public static let ambiguousIdentity = Code(.ambiguousIdentity)
        /// The peer machine authenticated with a group key (``PeerIdentity/Authentication/groupKey``): its identity is
        /// a claim any holder of that key could make, and the rule that matches it is not marked `accept-group-key`.
        public static let groupKeyNotAccepted = Code(.groupKeyNotAccepted)
        /// The account is root (uid 0), in the root group (gid 0), or has the id the kernel reads as
        /// "unchanged" ((uid_t)-1 / (gid_t)-1). Impersonating it would not drop privileges.
        public static let privilegedAccount = Code(.privilegedAccount)
        /// No such account in the system's user database (`getpwnam_r` found nothing).
        public static let unknownAccount = Code(.unknownAccount)
        /// `getpwnam_r` or `getgrouplist` failed (NSS error, lookup too large).
        public static let accountLookup = Code(.accountLookup)
        /// The ``LocalAccount`` value cannot be used (too many groups, empty name).
        public static let invalidAccount = Code(.invalidAccount)
        /// The thread lacks what switching credentials needs (CAP_SETUID and CAP_SETGID in its effective set),
        /// or its capability state could not be restored afterwards (see ``ImpersonationError/detail``).
        /// Nothing was changed.
        public static let notPermitted = Code(.notPermitted)
        /// A credential system call failed. Everything done before it was undone: the thread's credentials are
        /// exactly what they were before the call.
        public static let systemCall = Code(.systemCall)
        /// Every system call succeeded but the credentials read back are not the ones asked for (a seccomp filter
        /// or sandbox that fakes success, for instance). Undone, as for ``systemCall``.
        public static let verificationFailed = Code(.verificationFailed)
        /// Restoring the thread's original credentials failed: the thread's identity is NOT known. Treat it as
        /// fatal: stop using the thread (or the process). Windows gives the same advice for a failed `RevertToSelf`.
        public static let restoreFailed = Code(.restoreFailed)

        public var description: String { "\(kind)" }
    }

    /// One problem in an identity map file, at its line (the line syntax the library's files share).
    public typealias Issue = ConfigurationIssue

    public var code: Code
    /// The errno the kernel or the C library reported, never dropped.
    public var errno: Errno?
    /// The operation, e.g. `impersonate daemon`, `revert`, `resolve`, `load /etc/…/identity-map`.
    public var operation: String
    /// The failing step in system call words (`setresuid(65534, 65534, 0)`), or more detail.
    public var detail: String?
    /// For ``Code/invalidMap``: every problem found, in line order.
    public var issues: [Issue]

    public init(_ code: Code, operation: String, errno: Errno? = nil, detail: String? = nil, issues: [Issue] = []) {
        self.code = code
        self.operation = operation
        self.errno = errno
        self.detail = detail
        self.issues = issues
    }

    public static func == (lhs: ImpersonationError, rhs: ImpersonationError) -> Bool { lhs.code == rhs.code }
    public func hash(into hasher: inout Hasher) { hasher.combine(code) }

    public var description: String {
        var text = "\(operation): \(code)"
        if let errno { text += ": \(errno) (errno \(errno.rawValue))" }
        if let detail { text += ": \(detail)" }
        if !issues.isEmpty { text += "\n" + issues.map { "  \($0)" }.joined(separator: "\n") }
        return text
    }
}
