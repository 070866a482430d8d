import Glibc
import Synchronization
import SystemPackage
import SystemSupport
import VICI

/// One spawned process, owned by a supervisor thread that is its parent for its whole life.
///
/// The thread does the `posix_spawn` and then waits for the child, so:
/// - when the program runs under `setpriv --pdeathsig KILL`, the death signal fires when *this thread* ends,
///   which happens only after the child exited or when the whole process dies (Linux sends the parent-death
///   signal when the parent thread exits, so spawning from a short-lived thread would kill the child early);
/// - the child is always reaped.
///
/// The thread first waits with `waitid(WEXITED | WNOWAIT)`, records the exit under the lock, and only then
/// reaps. ``signal(_:)`` sends under the same lock and only while no exit is recorded, so it can never hit a
/// recycled pid.
package final class ChildProcess: Sendable {
    struct State {
        var pid: pid_t = 0
        var spawnError: Errno?
        var spawned = false
        /// The raw `si_status` and whether it was a signal (`CLD_KILLED` / `CLD_DUMPED`).
        var exit: (status: CInt, signalled: Bool)?
    }

    private let state = Mutex(State())
    /// Wakes waiters when the spawn is reported and when the exit is recorded.
    private let changed = ChangeSignal()

    /// Spawns `arguments[0]` (an absolute path) with `arguments` as argv and exactly `environment`.
    /// stdin is `/dev/null`; stdout and stderr append to `outputPath`. Descriptors above 2 are closed.
    package init(
        arguments: [String], environment: [String: String], outputPath: String,
        command: String
    ) throws(VICIError) {
        guard let executable = arguments.first, executable.hasPrefix("/") else {
            throw .invalid(command, "the program must be an absolute path: \(arguments.first ?? "")")
        }
        let context = SpawnContext(
            process: self, arguments: arguments, environment: environment, outputPath: outputPath)
        do {
            try Threads.detach { context.run() }
        } catch {
            throw .syscall(command, "pthread_create", errno: error)
        }
        // The thread reports within microseconds; bounded at 5 s all the same.
        let reported = changed.wait(until: Deadline(after: .seconds(5))) { () -> Errno?? in
            let (spawned, error) = state.withLock { ($0.spawned, $0.spawnError) }
            if let error { return .some(error) }
            return spawned ? .some(nil) : nil
        }
        switch reported {
        case .some(.some(let error)): throw .syscall(command, "posix_spawn \(executable)", errno: error)
        case .some(.none): return
        case .none:
            throw VICIError(.timedOut, command: command, detail: "the supervisor thread did not report the spawn")
        }
    }

    package var pid: pid_t { state.withLock { $0.pid } }

    /// nil while running; the exit once it ended (the child is reaped right after).
    var exit: (status: CInt, signalled: Bool)? { state.withLock { $0.exit } }

    package var isRunning: Bool { exit == nil }

    /// Sends `signal` if the process has not exited. Returns false if it had.
    @discardableResult
    func signal(_ signal: CInt) -> Bool {
        state.withLock { state in
            guard state.exit == nil, state.pid > 0 else { return false }
            return kill(state.pid, signal) == 0
        }
    }

    /// Waits up to `timeout` for the exit (woken when it is recorded); true if it happened.
    package func waitForExit(timeout: Duration) -> Bool {
        changed.wait(until: Deadline(after: timeout)) { isRunning ? nil : true } ?? false
    }

    /// SIGTERM, up to `grace` for the exit, then SIGKILL and up to 5 s more. True when it is gone.
    @discardableResult
    func terminate(grace: Duration) -> Bool {
        guard isRunning else { return true }
        signal(SIGTERM)
        if waitForExit(timeout: grace) { return true }
        signal(SIGKILL)
        return waitForExit(timeout: .seconds(5))
    }

    fileprivate func record(_ body: (inout State) -> Void) {
        state.withLock { body(&$0) }
        changed.notify()
    }

    /// A readable account of the exit, e.g. "exited with status 1", "killed by signal 9".
    package var exitDescription: String {
        guard let exit else { return "still running" }
        return exit.signalled ? "killed by signal \(exit.status)" : "exited with status \(exit.status)"
    }
}

/// Handed to the supervisor thread and used there only.
private final class SpawnContext: @unchecked Sendable {
    let process: ChildProcess
    let arguments: [String]
    let environment: [String: String]
    let outputPath: String

    init(process: ChildProcess, arguments: [String], environment: [String: String], outputPath: String) {
        self.process = process
        self.arguments = arguments
        self.environment = environment
        self.outputPath = outputPath
    }

    typealias AddCloseFrom = @convention(c) (UnsafeMutablePointer<posix_spawn_file_actions_t>, CInt) -> CInt

    /// glibc's `posix_spawn_file_actions_addclosefrom_np` (2.34+), looked up at run time because Swift's Glibc
    /// module does not export it. Closes every descriptor from 3 up in the child, so sockets and pipes of the
    /// host process that lack close-on-exec never leak into charon.
    static let addCloseFrom: AddCloseFrom? = {
        guard let symbol = dlsym(UnsafeMutableRawPointer(bitPattern: 0), "posix_spawn_file_actions_addclosefrom_np")
        else {
            return nil
        }
        return unsafeBitCast(symbol, to: AddCloseFrom.self)
    }()

    func run() {
        var actions = posix_spawn_file_actions_t()
        var attributes = posix_spawnattr_t()
        posix_spawn_file_actions_init(&actions)
        posix_spawnattr_init(&attributes)
        defer {
            posix_spawn_file_actions_destroy(&actions)
            posix_spawnattr_destroy(&attributes)
        }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        // Not O_CLOEXEC: it is the child's stdout.
        posix_spawn_file_actions_addopen(&actions, 1, outputPath, O_WRONLY | O_CREAT | O_APPEND, 0o644)
        posix_spawn_file_actions_adddup2(&actions, 1, 2)
        if let closeFrom = Self.addCloseFrom { _ = closeFrom(&actions, 3) }
        // Default dispositions and an empty mask: the Swift runtime's choices must not leak into charon.
        var all = sigset_t()
        sigfillset(&all)
        var none = sigset_t()
        sigemptyset(&none)
        posix_spawnattr_setsigdefault(&attributes, &all)
        posix_spawnattr_setsigmask(&attributes, &none)
        posix_spawnattr_setpgroup(&attributes, 0)
        posix_spawnattr_setflags(
            &attributes, Int16(POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETPGROUP))

        let argv = arguments.map { strdup($0) } + [nil]
        let envp = environment.sorted { $0.key < $1.key }.map { strdup("\($0.key)=\($0.value)") } + [nil]
        defer {
            for item in argv { free(item) }
            for item in envp { free(item) }
        }
        var pid: pid_t = 0
        let rc = posix_spawn(&pid, arguments[0], &actions, &attributes, argv, envp)
        guard rc == 0 else {
            process.record { $0.spawnError = Errno(rawValue: rc) }
            return
        }
        process.record {
            $0.pid = pid
            $0.spawned = true
        }
        // Wait without reaping, record the exit, then reap: the pid stays reserved until `exit` is set.
        var info = siginfo_t()
        var waited = false
        for _ in 0..<100_000 {
            if waitid(P_PID, id_t(pid), &info, WEXITED | WNOWAIT) == 0 {
                waited = true
                break
            }
            if errno != EINTR { break }
        }
        let status = waited ? info._sifields._sigchld.si_status : -1
        let signalled = waited && (info.si_code == CLD_KILLED || info.si_code == CLD_DUMPED)
        process.record { $0.exit = (status, signalled) }
        var raw: CInt = 0
        for _ in 0..<100_000 where waitpid(pid, &raw, 0) < 0 && errno == EINTR {}
    }
}
