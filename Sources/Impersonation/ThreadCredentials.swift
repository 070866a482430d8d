import CThreadCredentials
import Glibc
import Synchronization
import SystemPackage
import SystemSupport

/// Per-thread impersonation: the calling thread takes on a local account's uid, gid and groups, and gets its own
/// credentials back afterwards, while every other thread of the process keeps its own. The Linux counterpart of
/// `WSAImpersonateSocketPeer` / `WSARevertImpersonation`.
///
/// ## Why raw system calls
///
/// The kernel keeps credentials per thread, but glibc's `setresuid`, `setresgid`, `setgroups` (and `setuid`, …)
/// implement POSIX's process-wide semantics: after changing the calling thread they signal every other thread
/// (`SIGSETXID`) to make the same change. That would turn one request's impersonation into the whole server's.
/// This type uses `syscall(SYS_setresuid, …)`, `SYS_setresgid`, `SYS_setgroups`, `SYS_capget`/`SYS_capset` through
/// the `CThreadCredentials` shim, which change the calling thread only.
///
/// ## What an impersonating thread looks like
///
/// For a process running as root (uid 0/0/0) impersonating `nobody`:
/// - groups = the account's groups (`setgroups`), then gids = gid/gid/gid (`setresgid`), then
///   uids = uid/uid/**0** (`setresuid`), in that order: each step needs CAP_SETGID/CAP_SETUID, which the uid change
///   takes away, so the uid goes last. File access (fsuid/fsgid, which follow the effective ids) is the account's.
/// - The saved uid stays 0 (in general: 0 if any of the original uids was 0, else the account's uid). Per
///   capabilities(7), "Effect of user ID changes on capabilities": when a thread had a uid 0 and ends up with all
///   three nonzero, the kernel clears its permitted set, and then nothing could bring it back. With a saved uid of
///   0 the kernel only clears the effective set (euid 0 → nonzero), the permitted set survives and revert works.
/// - Capabilities: effective = ∅, inheritable = ∅, ambient = ∅ (set explicitly with `capset`, not left to the
///   kernel's uid rules, so a non-root process with file capabilities is handled the same way); permitted is kept,
///   since revert needs CAP_SETUID/CAP_SETGID from it. The real and effective uid are the account's, so what the
///   thread `execve`s runs as the account with no capabilities (exec sets the saved uid to the effective one, and
///   the real uid is not 0, so no root special case applies).
///
/// Impersonation is an ACCESS-CHECK mechanism, as on Windows, not a sandbox: the thread can take its original
/// identity back (its saved uid and permitted set allow it), so run only your own code while impersonating.
///
/// ## Revert
///
/// ``revert()`` restores exactly what the thread had before its first ``impersonate(_:)``: the uid and gid
/// triples, the filesystem ids, the groups, and all four capability sets, in this order: raise effective =
/// permitted (`capset`), `setresuid`, `setresgid`, `setgroups`, `setfsuid`/`setfsgid` if they differed, `capset`
/// to the original sets, ambient capabilities raised one by one. The result is read back and compared with the
/// snapshot taken before impersonating; any difference is an error. It also restores the thread's
/// parent-death signal, which the kernel clears on every credential change. Reverting a thread that is not
/// impersonating succeeds and changes nothing.
///
/// Whether a thread impersonates is decided by its credentials as the kernel reports them, not by a flag: a thread
/// that impersonated is impersonating while its credentials are not the ones it started from; any other thread is
/// impersonating while its uids, gids or groups are not the process's (``processCredentials``).
///
/// ## Threads created while impersonating
///
/// The kernel gives a new thread a copy of its creator's credentials. A thread created while the calling thread
/// impersonates (a thread pool that grows lazily, a resolver, a runtime's worker, a `Thread` or `pthread_create`
/// of your own) therefore runs as the ACCOUNT from its first instruction: its uids, gids and groups, with the saved
/// uid 0 and the permitted capability set that let an impersonating thread revert. On such a thread:
/// - ``isImpersonating`` is true and ``impersonatedAccount`` names the account (from the uid, gid and groups);
/// - ``revert()`` returns it to the process's credentials: the uid and gid triples, the filesystem ids, the groups
///   and all four capability sets as the process had them, checked against the kernel as any revert is;
/// - ``impersonate(_:)`` goes through the process's credentials to the new account, as on any impersonating thread.
///
/// The process's credentials are recorded once, at the first impersonation in the process, from the thread about
/// to impersonate, before it changes anything: until then no thread has taken an account, so that thread's
/// credentials are every thread's. (A process that changes its credentials later, say with glibc's `setgroups`,
/// changes every thread's and makes them all look foreign: see the caveats.)
///
/// The library's own threads (SecureSocket's and Keying's readers, a network-namespace hop; `Threads` in
/// SystemSupport) never start as a peer: one started while its creator impersonates reverts to the process's
/// credentials before its work begins, and if that fails the work does not run and the starting call fails.
/// Threads that the library does not create are not touched: create them before impersonating, revert them, or
/// keep work off them while impersonating.
///
/// ## Impersonating while impersonating
///
/// Switches to the new account (through the original credentials: revert, then impersonate). There is no stack:
/// one ``revert()`` returns to the ORIGINAL credentials. If the switch fails, the thread is put back to the
/// previous account, so a failed call changes nothing. ``withImpersonation(of:_:)`` nests properly: on exit it
/// returns to whatever the thread was before the call, including an outer impersonation.
///
/// ## Failures
///
/// Every step is checked. If one fails (or the credentials read back are not the ones asked for), everything done
/// so far is undone and the error carries the step and its errno; the thread is never left half-switched. If even
/// the undo fails, the error is ``ImpersonationError/Code/restoreFailed``: the thread's identity is unknown, and,
/// as Microsoft says of a failed `RevertToSelf`, the process should not go on using that thread.
///
/// ## Never across `await`
///
/// Credentials belong to the kernel THREAD. A Swift task can resume on a different thread after every `await`, so
/// an ``impersonate(_:)`` … `await` … ``revert()`` would leave the first thread (a cooperative pool thread that
/// other tasks then run on) impersonating, and the "revert" would run on a thread that is not impersonating
/// (a no-op). That is why ``impersonate(_:)`` and ``revert()`` are unavailable from async functions, and why
/// ``withImpersonation(of:_:)`` takes a synchronous closure: nothing in it can suspend.
///
/// ## Caveats
///
/// - Any call of a glibc credential wrapper (`setuid`, `setgid`, `setgroups`, `initgroups`, …) anywhere in the
///   process overrides every thread's credentials, impersonating ones included. After the first impersonation it
///   also leaves every thread's ids differing from the recorded process credentials, so every thread then counts
///   as impersonating and a ``revert()`` would put the recorded credentials back: change the process's
///   credentials before the first impersonation, not after.
/// - While a thread impersonates an account, processes running as that account may send signals to that thread
///   (`tgkill`: the thread's real uid is the account's), and a fatal signal ends the whole process.
/// - The kernel marks the process non-dumpable at the first credential change (process-wide, it stays so: no
///   core dumps, `/proc/<pid>` files owned by root). It is deliberately left that way: it also keeps the
///   impersonated account from ptrace-attaching to the server.
/// - File descriptors opened before impersonating keep working; access is checked at open time.
/// - A thread that exits while impersonating takes its credentials with it; nothing else is affected.
public enum ThreadCredentials {
    /// Starts impersonating `account` on the calling thread. See the type's documentation for exactly what changes.
    ///
    /// - Throws: ``ImpersonationError/Code/privilegedAccount`` (uid 0, group 0, id -1),
    ///   ``ImpersonationError/Code/notPermitted`` (no CAP_SETUID/CAP_SETGID, or a capability state revert could not
    ///   restore; nothing changed), ``ImpersonationError/Code/systemCall`` and
    ///   ``ImpersonationError/Code/verificationFailed`` (undone: the credentials are those before the call),
    ///   ``ImpersonationError/Code/restoreFailed`` (the undo failed too).
    @available(
        *, noasync,
        message:
            "credentials belong to the thread and a task may change threads at every await; use withImpersonation(of:_:)"
    )
    public static func impersonate(_ account: LocalAccount) throws(ImpersonationError) {
        try switchTo(account, operation: "impersonate \(account.name)", onFailure: .previousState)
    }

    /// Resolves `peer` in `map` and impersonates the account it maps to. An unmapped peer changes nothing.
    @available(
        *, noasync,
        message:
            "credentials belong to the thread and a task may change threads at every await; use withImpersonation(of:in:_:)"
    )
    @discardableResult
    public static func impersonate(_ peer: PeerIdentity, in map: IdentityMap) throws(ImpersonationError) -> LocalAccount
    {
        let account = try map.resolve(peer)
        try switchTo(account, operation: "impersonate \(account.name) for \(peer)", onFailure: .previousState)
        return account
    }

    /// Ends the calling thread's impersonation, restoring exactly the credentials it had before (on a thread that
    /// inherited its impersonation: the process's credentials). Succeeds and changes nothing when the thread is not
    /// impersonating (as the kernel's credentials say; see ``isImpersonating``).
    ///
    /// - Throws: ``ImpersonationError/Code/restoreFailed``: the thread's identity is not known; stop using it.
    ///   The thread still counts as impersonating, so a later ``revert()`` tries again.
    @available(
        *, noasync,
        message:
            "credentials belong to the thread and a task may change threads at every await; use withImpersonation(of:_:)"
    )
    public static func revert() throws(ImpersonationError) {
        guard let record = impersonation(current()) else { return }
        // A thread that inherited its impersonation has no record yet: keep one, so that if this revert fails the
        // thread still counts as impersonating whatever its credentials then look like, and revert() tries again.
        if ThreadRecord.current !== record { ThreadRecord.current = record }
        try restore(record.original, operation: "revert")
        ThreadRecord.current = nil
        if record.parentDeathSignal != 0 { _ = ctc_set_pdeathsig(record.parentDeathSignal) }
    }

    /// Runs `body` on the calling thread as `account`, then puts the thread back to what it was before (its own
    /// credentials, or the account an enclosing impersonation had), whether `body` returns or throws.
    ///
    /// `body` is synchronous on purpose: it cannot `await`, so it cannot move to another thread half-way. This is
    /// the form to use from async code.
    ///
    /// - Throws: what ``impersonate(_:)`` throws (then `body` does not run), what `body` throws, or
    ///   ``ImpersonationError/Code/restoreFailed`` if the thread cannot be put back (that wins over `body`'s error).
    public static func withImpersonation<T>(of account: LocalAccount, _ body: () throws -> T) throws -> T {
        let outer = impersonation(current())?.account
        try switchTo(account, operation: "impersonate \(account.name)", onFailure: .previousState)
        let result: Result<T, any Error>
        do {
            result = .success(try body())
        } catch {
            result = .failure(error)
        }
        do {
            if let outer {
                try switchTo(outer, operation: "resume impersonating \(outer.name)", onFailure: .original)
            } else {
                try revert()
            }
        } catch {
            var failure = error
            if case .failure(let bodyError) = result {
                failure.detail = (failure.detail.map { $0 + "; " } ?? "") + "the body had thrown: \(bodyError)"
            }
            throw failure
        }
        return try result.get()
    }

    /// Resolves `peer` in `map` and runs `body` as the account it maps to, as ``withImpersonation(of:_:)``.
    public static func withImpersonation<T>(
        of peer: PeerIdentity, in map: IdentityMap,
        _ body: (LocalAccount) throws -> T
    ) throws -> T {
        let account = try map.resolve(peer)
        return try withImpersonation(of: account) { try body(account) }
    }

    /// The calling thread's credentials now.
    public static func current() -> ThreadCredentialSnapshot {
        do {
            return try ThreadCredentialSnapshot.read(operation: "read credentials")
        } catch {
            // getresuid, getresgid, getgroups, capget and prctl do not fail for the calling thread on Linux.
            preconditionFailure("cannot read this thread's credentials: \(error)")
        }
    }

    /// Whether the calling thread is impersonating, as its credentials read from the kernel say (see "Threads
    /// created while impersonating"): true on a thread that inherited an impersonation, false on one whose
    /// credentials were put back by any means.
    public static var isImpersonating: Bool { impersonation(current()) != nil }

    /// The account the calling thread impersonates, nil when it does not. For a thread that inherited its
    /// impersonation: the uid, gid and groups the kernel reports, named as the user database names the uid.
    public static var impersonatedAccount: LocalAccount? { impersonation(current())?.account }

    /// What ``revert()`` will restore on the calling thread, nil when it is not impersonating: the credentials the
    /// thread had before it impersonated, or the process's credentials on a thread that inherited an impersonation.
    public static var originalCredentials: ThreadCredentialSnapshot? { impersonation(current())?.original }

    /// The process's credentials: the calling thread's credentials as they were when the process first
    /// impersonated (nil until then). See "Threads created while impersonating".
    public static var processCredentials: ThreadCredentialSnapshot? { ProcessCredentials.recorded }

    /// The calling thread's kernel thread id (for `/proc/<pid>/task/<tid>`).
    public static var currentThreadID: pid_t { ctc_gettid() }

    // MARK: Switching

    /// Where a failed switch leaves the thread.
    enum FailurePolicy {
        /// As before the call (a previous impersonation is resumed).
        case previousState
        /// At the original credentials (used when leaving a nested scope).
        case original
    }

    /// The steps, named for errors and for fault injection in tests.
    enum Step: String, Sendable {
        case setgroups, setresgid, setresuid, capset, clearAmbient
        case raiseEffective, restoreUIDs, restoreGIDs, restoreGroups, restoreFilesystemIDs, restoreCapabilities,
            restoreAmbient
    }

    /// What the calling thread, whose credentials are `now` (read from the kernel), would be reverted to, or nil
    /// when it is not impersonating:
    /// - a thread that impersonated (it has a record): while its credentials are not the ones it started from;
    ///   a thread whose credentials were put back by other means loses its record here;
    /// - any other thread: while its ids or groups are not the process's. It inherited an impersonation (or took
    ///   a foreign identity some other way); it reverts to the process's credentials. Capabilities alone do not
    ///   count: a thread that lowered its own effective set is not impersonating.
    static func impersonation(_ now: ThreadCredentialSnapshot) -> ThreadRecord? {
        if let record = ThreadRecord.current {
            if now != record.original { return record }
            ThreadRecord.current = nil
            return nil
        }
        guard let process = ProcessCredentials.recorded, !now.hasSameIdentity(as: process) else { return nil }
        return ThreadRecord(original: process, inheritedCredentials: now)
    }

    private static func switchTo(_ account: LocalAccount, operation: String, onFailure: FailurePolicy)
        throws(ImpersonationError)
    {
        try account.checkUnprivileged(operation: operation)
        let now = try ThreadCredentialSnapshot.read(operation: operation)
        guard let record = impersonation(now) else {
            let original = now
            try checkPreconditions(original, operation: operation)
            // The first impersonation in the process: no thread has taken an account yet, so these are the
            // credentials every thread has (that glibc's wrappers keep equal on all threads).
            ProcessCredentials.record(original)
            let deathSignal = ctc_pdeathsig()
            do {
                try apply(account, from: original, operation: operation)
            } catch {
                // The undo failed too: keep the record so that revert() tries again.
                if error.code == .restoreFailed {
                    ThreadRecord.current = ThreadRecord(
                        original: original, account: account,
                        parentDeathSignal: deathSignal > 0 ? deathSignal : 0)
                }
                throw error
            }
            ThreadRecord.current = ThreadRecord(
                original: original, account: account,
                parentDeathSignal: deathSignal > 0 ? deathSignal : 0)
            return
        }
        // Already impersonating: only the original credentials can switch (the impersonating thread has no
        // effective capabilities), so go back to them first.
        let previous = record.account
        if ThreadRecord.current !== record { ThreadRecord.current = record } // inherited: see revert()
        try restore(record.original, operation: operation)
        ThreadRecord.current = nil
        do {
            try apply(account, from: record.original, operation: operation)
            ThreadRecord.current = ThreadRecord(
                original: record.original, account: account,
                parentDeathSignal: record.parentDeathSignal)
        } catch {
            var failure = error
            if failure.code == .restoreFailed {
                // The undo failed: the state is unknown; do not pile more changes on it. revert() will try again.
                ThreadRecord.current = ThreadRecord(
                    original: record.original, account: account,
                    parentDeathSignal: record.parentDeathSignal)
                throw failure
            }
            if onFailure == .previousState {
                var resumeError: ImpersonationError? = nil
                do {
                    try apply(previous, from: record.original, operation: "resume impersonating \(previous.name)")
                } catch {
                    resumeError = error
                }
                guard let resumeError else {
                    ThreadRecord.current = ThreadRecord(
                        original: record.original, account: previous,
                        parentDeathSignal: record.parentDeathSignal)
                    failure.detail = (failure.detail ?? "") + "; still impersonating \(previous.name)"
                    throw failure
                }
                if resumeError.code == .restoreFailed {
                    ThreadRecord.current = ThreadRecord(
                        original: record.original, account: previous,
                        parentDeathSignal: record.parentDeathSignal)
                    throw resumeError
                }
                failure.detail =
                    (failure.detail ?? "")
                    + "; could not resume impersonating \(previous.name) (\(resumeError)); the thread has its original credentials"
            } else {
                failure.detail = (failure.detail ?? "") + "; the thread has its original credentials"
            }
            if record.parentDeathSignal != 0 { _ = ctc_set_pdeathsig(record.parentDeathSignal) }
            throw failure
        }
    }

    private static func checkPreconditions(_ original: ThreadCredentialSnapshot, operation: String)
        throws(ImpersonationError)
    {
        let caps = original.capabilities
        let needed = ThreadCredentialSnapshot.capSetuid | ThreadCredentialSnapshot.capSetgid
        guard caps.effective & needed == needed else {
            throw ImpersonationError(
                .notPermitted, operation: operation, errno: .notPermitted,
                detail: "the thread needs CAP_SETUID and CAP_SETGID in its effective set "
                    + "(it has \(caps))")
        }
        // Revert sets the inheritable set back; without CAP_SETPCAP it may only add bits that are permitted.
        guard caps.inheritable & ~caps.permitted == 0 || caps.permitted & ThreadCredentialSnapshot.capSetpcap != 0
        else {
            throw ImpersonationError(
                .notPermitted, operation: operation, errno: .notPermitted,
                detail: "the inheritable set has capabilities outside the permitted set and there is "
                    + "no CAP_SETPCAP: revert could not restore it")
        }
        guard caps.ambient == 0 || original.securebits & ThreadCredentialSnapshot.secbitNoCapAmbientRaise == 0 else {
            throw ImpersonationError(
                .notPermitted, operation: operation, errno: .notPermitted,
                detail: "ambient capabilities are set and SECBIT_NO_CAP_AMBIENT_RAISE forbids raising "
                    + "them again: revert could not restore them")
        }
    }

    /// The uid kept as saved uid: 0 when the thread had a uid 0 (so the kernel keeps its permitted set), else the
    /// account's uid.
    static func keptSavedUID(_ original: ThreadCredentialSnapshot, account: LocalAccount) -> uid_t {
        let ids = original.uids
        return ids.real == 0 || ids.effective == 0 || ids.saved == 0 ? 0 : account.uid
    }

    /// What the thread's credentials are while impersonating `account`.
    static func expected(_ account: LocalAccount, from original: ThreadCredentialSnapshot) -> ThreadCredentialSnapshot {
        ThreadCredentialSnapshot(
            uids: .init(
                real: account.uid, effective: account.uid, saved: keptSavedUID(original, account: account),
                filesystem: account.uid),
            gids: .init(real: account.gid, effective: account.gid, saved: account.gid, filesystem: account.gid),
            groups: account.groups,
            capabilities: .init(effective: 0, permitted: original.capabilities.permitted, inheritable: 0, ambient: 0),
            securebits: original.securebits)
    }

    /// From the original credentials to `account`; undoes everything on any failure.
    private static func apply(_ account: LocalAccount, from original: ThreadCredentialSnapshot, operation: String)
        throws(ImpersonationError)
    {
        let saved = keptSavedUID(original, account: account)
        do throws(ImpersonationError) {
            let groups = account.groups
            try step(.setgroups, "setgroups(\(groups.count) groups: \(summary(groups)))", operation) {
                groups.withUnsafeBufferPointer { ctc_setgroups($0.count, $0.baseAddress) }
            }
            try step(.setresgid, "setresgid(\(account.gid), \(account.gid), \(account.gid))", operation) {
                ctc_setresgid(account.gid, account.gid, account.gid)
            }
            try step(.setresuid, "setresuid(\(account.uid), \(account.uid), \(saved))", operation) {
                ctc_setresuid(account.uid, account.uid, saved)
            }
            let permitted = original.capabilities.permitted
            try step(
                .capset, "capset(effective 0, permitted \(String(permitted, radix: 16)), inheritable 0)", operation
            ) {
                ctc_capset(0, permitted, 0)
            }
            try step(.clearAmbient, "prctl(PR_CAP_AMBIENT_CLEAR_ALL)", operation) {
                original.capabilities.ambient == 0 ? 0 : ctc_ambient_clear_all()
            }
            let now = try ThreadCredentialSnapshot.read(operation: operation)
            let wanted = expected(account, from: original)
            guard now == wanted else {
                throw ImpersonationError(
                    .verificationFailed, operation: operation,
                    detail: "asked for \(wanted), the kernel reports \(now)")
            }
        } catch {
            do {
                try restore(original, operation: operation)
            } catch let undo {
                var failure = undo
                failure.detail = (undo.detail ?? "") + "; while undoing after: \(error)"
                throw failure
            }
            var failure = error
            failure.detail = (failure.detail ?? "") + "; undone, the credentials are those before the call"
            throw failure
        }
    }

    /// Back to `original` from whatever partial or complete impersonation the thread is in.
    private static func restore(_ original: ThreadCredentialSnapshot, operation: String) throws(ImpersonationError) {
        do throws(ImpersonationError) {
            let now = try ThreadCredentialSnapshot.read(operation: operation)
            let caps = now.capabilities
            // The permitted set was kept: make it effective to have CAP_SETUID/CAP_SETGID (and CAP_SETPCAP) again.
            try step(.raiseEffective, "capset(effective = permitted \(String(caps.permitted, radix: 16)))", operation) {
                ctc_capset(caps.permitted, caps.permitted, caps.inheritable)
            }
            let uids = original.uids
            let gids = original.gids
            try step(.restoreUIDs, "setresuid(\(uids.real), \(uids.effective), \(uids.saved))", operation) {
                ctc_setresuid(uids.real, uids.effective, uids.saved)
            }
            try step(.restoreGIDs, "setresgid(\(gids.real), \(gids.effective), \(gids.saved))", operation) {
                ctc_setresgid(gids.real, gids.effective, gids.saved)
            }
            let groups = original.groups
            try step(.restoreGroups, "setgroups(\(groups.count) groups: \(summary(groups)))", operation) {
                groups.withUnsafeBufferPointer { ctc_setgroups($0.count, $0.baseAddress) }
            }
            // setresuid/setresgid set the filesystem ids to the effective ones; put back any that differed.
            try step(.restoreFilesystemIDs, "setfsuid(\(uids.filesystem)), setfsgid(\(gids.filesystem))", operation) {
                if uids.filesystem != uids.effective { _ = ctc_setfsuid(uids.filesystem) }
                if gids.filesystem != gids.effective { _ = ctc_setfsgid(gids.filesystem) }
                return 0
            }
            let wanted = original.capabilities
            try step(.restoreCapabilities, "capset(\(wanted))", operation) {
                ctc_capset(wanted.effective, wanted.permitted, wanted.inheritable)
            }
            try step(.restoreAmbient, "prctl(PR_CAP_AMBIENT_RAISE, \(String(wanted.ambient, radix: 16)))", operation) {
                for cap in 0..<64 where wanted.ambient & (1 << UInt64(cap)) != 0 {
                    let rc = ctc_ambient_raise(Int32(cap))
                    if rc < 0 { return rc }
                }
                return 0
            }
            let after = try ThreadCredentialSnapshot.read(operation: operation)
            guard after == original else {
                throw ImpersonationError(
                    .verificationFailed, operation: operation,
                    detail: "restoring \(original), the kernel reports \(after)")
            }
        } catch {
            var failure = error
            failure.code = .restoreFailed
            failure.detail =
                (failure.detail ?? "")
                + "; the thread's credentials are NOT known to be its own: stop using this thread"
            throw failure
        }
    }

    private static func step(_ step: Step, _ call: String, _ operation: String, _ body: () -> Int32)
        throws(ImpersonationError)
    {
        let rc = FaultInjection.take(step) ?? body()
        guard rc >= 0 else {
            throw ImpersonationError(.systemCall, operation: operation, errno: Errno(rawValue: -rc), detail: call)
        }
    }

    private static func summary(_ groups: [gid_t]) -> String {
        let shown = groups.prefix(8).map(String.init).joined(separator: ",")
        return groups.count > 8 ? shown + ",…" : shown
    }
}

/// What ``ThreadCredentials/revert()`` needs, kept per thread in pthread-specific data (which a new thread does
/// not inherit: a thread that inherited an impersonation gets a record made from its kernel credentials).
final class ThreadRecord {
    let original: ThreadCredentialSnapshot
    let parentDeathSignal: Int32
    private let known: LocalAccount?
    private let inherited: ThreadCredentialSnapshot?

    init(original: ThreadCredentialSnapshot, account: LocalAccount, parentDeathSignal: Int32) {
        self.original = original
        self.known = account
        self.inherited = nil
        self.parentDeathSignal = parentDeathSignal
    }

    /// A thread that runs with `inheritedCredentials` without having impersonated: it reverts to `original` (the
    /// process's credentials).
    init(original: ThreadCredentialSnapshot, inheritedCredentials: ThreadCredentialSnapshot) {
        self.original = original
        self.known = nil
        self.inherited = inheritedCredentials
        self.parentDeathSignal = 0
    }

    /// The account impersonated; for an inherited impersonation, made from the credentials (looked up only when
    /// asked for: the user database is not read to decide whether a thread impersonates).
    var account: LocalAccount {
        if let known { return known }
        guard let inherited else { preconditionFailure("a thread record without an account") }
        return LocalAccount.inherited(from: inherited)
    }

    /// The calling thread's record. Released by the key's destructor if the thread exits while impersonating.
    static var current: ThreadRecord? {
        get {
            pthread_getspecific(threadRecordKey).map { Unmanaged<ThreadRecord>.fromOpaque($0).takeUnretainedValue() }
        }
        set {
            let old = pthread_getspecific(threadRecordKey)
            let new = newValue.map { Unmanaged.passRetained($0).toOpaque() }
            let rc = pthread_setspecific(threadRecordKey, new)
            precondition(rc == 0, "pthread_setspecific: \(Errno(rawValue: rc))")
            if let old { Unmanaged<ThreadRecord>.fromOpaque(old).release() }
        }
    }
}

private let threadRecordKey: pthread_key_t = {
    var key = pthread_key_t()
    let rc = pthread_key_create(&key) { pointer in
        if let pointer { Unmanaged<ThreadRecord>.fromOpaque(pointer).release() }
    }
    precondition(rc == 0, "pthread_key_create: \(Errno(rawValue: rc))")
    return key
}()

/// The process's credentials (``ThreadCredentials/processCredentials``), recorded once, at the first impersonation
/// in the process, from the thread about to impersonate, before it changes anything. Until then no thread has
/// taken an account, so every thread has these credentials (a thread created while impersonating copies its
/// creator's, and glibc's credential wrappers keep all threads equal). Recording also registers the start guard
/// that keeps the library's own threads (``Threads``, SystemSupport) from starting as a peer; before the first
/// impersonation there is nothing to guard against.
enum ProcessCredentials {
    private static let state = Mutex<ThreadCredentialSnapshot?>(nil)

    static var recorded: ThreadCredentialSnapshot? { state.withLock { $0 } }

    /// Records `credentials` unless the process's credentials are already recorded.
    static func record(_ credentials: ThreadCredentialSnapshot) {
        let first = state.withLock { recorded -> Bool in
            guard recorded == nil else { return false }
            recorded = credentials
            return true
        }
        if first { Threads.addStartGuard(InheritedImpersonationGuard()) }
    }
}

/// A thread the library starts while its creator impersonates reverts to the process's credentials before its
/// body runs (and does not run it if that fails; the creating call throws the errno).
struct InheritedImpersonationGuard: ThreadStartGuard {
    func newThreadNeedsReset() -> Bool { ThreadCredentials.isImpersonating }

    func resetNewThread() throws(Errno) {
        do {
            try ThreadCredentials.revert()
        } catch {
            throw error.errno ?? .notPermitted
        }
    }
}

/// Test hook: makes a step fail on one thread with an errno instead of calling the kernel, or, with errno 0,
/// pretend to succeed without calling it (a sandbox that fakes success). Faults are consumed in order, one per
/// matching step.
enum FaultInjection {
    private static let pending = Mutex<[pid_t: [(ThreadCredentials.Step, Int32)]]>([:])
    /// How many faults are pending in all threads, so production paths skip the lock.
    private static let armed = Atomic<Int>(0)

    /// The next time the calling thread reaches `step`, it fails with `errno` (once).
    static func failNext(_ step: ThreadCredentials.Step, errno: Int32) {
        let thread = ctc_gettid()
        pending.withLock { $0[thread, default: []].append((step, errno)) }
        armed.add(1, ordering: .sequentiallyConsistent)
    }

    /// Drops the calling thread's pending faults.
    static func clear() {
        let thread = ctc_gettid()
        let dropped = pending.withLock { $0.removeValue(forKey: thread)?.count ?? 0 }
        if dropped > 0 { armed.subtract(dropped, ordering: .sequentiallyConsistent) }
    }

    /// -errno if a fault is pending for this thread at this step (and consumes it).
    static func take(_ step: ThreadCredentials.Step) -> Int32? {
        guard armed.load(ordering: .sequentiallyConsistent) > 0 else { return nil }
        let thread = ctc_gettid()
        let code = pending.withLock { table -> Int32? in
            guard var faults = table[thread], let index = faults.firstIndex(where: { $0.0 == step }) else { return nil }
            let code = faults.remove(at: index).1
            table[thread] = faults.isEmpty ? nil : faults
            return code
        }
        guard let code else { return nil }
        armed.subtract(1, ordering: .sequentiallyConsistent)
        return -code
    }
}
