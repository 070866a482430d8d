import Foundation
import Glibc
import Synchronization
import SystemSupport
import VICI
import XFRM

/// A private strongSwan charon for one network namespace, driven over its own VICI socket.
///
/// What it relies on (keying-notes, "Running charon for one namespace", checked with Debian 12's 5.9.8):
/// - `/usr/lib/ipsec/charon` stays in the foreground and reads its configuration from `STRONGSWAN_CONF`.
/// - Its pid file path is compiled in (`/var/run/charon.pid`, and `/var/run` is `/run` on Debian), so it runs in
///   a private mount namespace with a tmpfs on `/run`; two charons then never see each other's pid file.
/// - `load_modular = no` with an explicit `load` list means only those plugins load and nothing under
///   `/etc/strongswan.d` is read; the VICI socket goes to a private folder (`charon.plugins.vici.socket`).
///
/// The command line is `setpriv --pdeathsig KILL nsenter --net=NS unshare --mount --propagation private
/// sh -c 'mount -t tmpfs tmpfs /run && exec charon'`: every step `exec`s, so the spawned pid *is* charon,
/// and the parent-death signal (kept across `exec`) kills it if this process dies without calling ``stop()``.
///
/// `init` returns once `version` answers on the socket (bounded by ``Options/readyTimeout``); a charon that
/// exits or does not answer is killed, its folder removed, and the error carries the tail of its log.
/// ``stop()`` (also run by `deinit`) sends SIGTERM, waits, then SIGKILL, reaps, and deletes the folder.
/// A process that dies without ``stop()`` takes its charon with it (the parent-death signal) and leaves the
/// folder; the next daemon started in the same temporary directory, boot and pid namespace removes it
/// (``reclaimedFolders``).
public final class CharonDaemon: Sendable {
    /// How to run charon.
    public struct Options: Sendable {
        /// The daemon binary.
        public var charonPath = "/usr/lib/ipsec/charon"
        /// Where plugins are looked up to build the default load list.
        public var pluginDirectory = "/usr/lib/ipsec/plugins"
        /// The `load` list; nil means ``CharonDaemon/defaultPlugins(installedIn:extra:)``.
        public var plugins: [String]?
        /// Plugins added to the default list (e.g. `eap-identity`, `eap-md5`); ignored when ``plugins`` is set.
        public var extraPlugins: [String] = []
        /// charon's log level for every subsystem (`filelog.stderr.default`): -1 silent … 4 raw.
        public var logLevel = 1
        /// Per-subsystem levels, e.g. `["ike": 2, "knl": 2, "cfg": 2]`.
        public var subsystemLogLevels: [String: Int] = [:]
        /// `charon.port` / `charon.port_nat_t`: the IKE ports (500 / 4500 by default). Each namespace has its
        /// own port space, so the defaults never clash between private charons.
        public var ikePort: UInt16?
        public var natTraversalPort: UInt16?
        /// `charon.plugins.kernel-netlink.set_proto_port_transport_sa`: transport SAs carry the negotiated
        /// protocol and ports as their kernel selector (the library's own charons). strongSwan's default is `no`
        /// (address-only selectors), which an operator's charon may keep: the tests run such charons too.
        public var flowSelectorsOnTransportSAs = true
        /// `charon.threads`: worker threads (16 by default).
        public var workerThreads: Int?
        /// Extra lines placed inside `charon { … }` (e.g. `rsa_pss = yes`, `retransmit_tries = 2`).
        public var extraConfig = ""
        /// How long charon may take until `version` answers.
        public var readyTimeout: Duration = .seconds(10)
        /// The deadline for each command of ``CharonDaemon/vici``.
        public var commandTimeout: Duration = .seconds(10)
        /// How long SIGTERM may take before SIGKILL.
        public var stopGrace: Duration = .seconds(5)
        /// The parent of the private folder (must not be under `/run`, which charon's mount namespace hides):
        /// `TMPDIR` if it is set to a plain absolute path, else `/tmp`.
        public var temporaryDirectory = Options.defaultTemporaryDirectory

        public init() {}

        static var defaultTemporaryDirectory: String {
            guard let value = ProcessInfo.processInfo.environment["TMPDIR"], value.hasPrefix("/"),
                !value.hasPrefix("/run"),
                !value.hasPrefix("/var/run"), value.allSatisfy({ $0.isLetter || $0.isNumber || "/._-".contains($0) })
            else { return "/tmp" }
            return value.count > 1 && value.hasSuffix("/") ? String(value.dropLast()) : value
        }
    }

    /// The plugins every default load list has: software crypto that Debian's `libstrongswan` ships (AES,
    /// SHA-1/2, HMAC, MODP and RSA through `gmp`), certificates and keys, and `kdf`, without which IKE key
    /// derivation fails in 5.9.8.
    public static let basePlugins = [
        "random", "nonce", "kdf", "aes", "sha1", "sha2", "hmac", "gmp", "x509", "pem", "pkcs1", "pkcs8", "pubkey",
        "revocation", "constraints",
    ]
    /// Plugins added when installed: `openssl` (ECDSA, ECP and X25519 groups, AES-GCM, in Debian's
    /// `libstrongswan-standard-plugins`), `gcm` (same package), `curve25519` and `chapoly`
    /// (`libstrongswan-extra-plugins`).
    public static let optionalPlugins = ["openssl", "gcm", "curve25519", "chapoly", "eap-identity", "eap-md5"]
    /// The plugins that make charon a daemon for us: kernel SAs over netlink, IKE sockets, VICI.
    public static let servicePlugins = ["kernel-netlink", "socket-default", "vici"]

    /// The default `load` list: ``basePlugins``, the installed ``optionalPlugins``, `extra`, ``servicePlugins``.
    public static func defaultPlugins(
        installedIn directory: String = "/usr/lib/ipsec/plugins",
        extra: [String] = []
    ) -> [String] {
        let optional = optionalPlugins.filter {
            FileManager.default.fileExists(atPath: "\(directory)/libstrongswan-\($0).so")
        }
        var list = basePlugins + optional
        for plugin in extra where !list.contains(plugin) { list.append(plugin) }
        return list + servicePlugins
    }

    /// The namespace charon runs in.
    public let namespace: NetworkNamespace
    /// The private folder: `strongswan.conf`, `charon.vici`, `charon.log`, and `owner` (who made it, and the
    /// charon it runs, so that the next daemon can remove it if this process dies without ``stop()``).
    public let folder: String
    public let configPath: String
    public let socketPath: String
    public let logPath: String
    /// The exact `strongswan.conf` written.
    public let configuration: String
    /// charon's pid (the spawned process is charon itself); a new one after ``restart()``.
    public var pid: pid_t { running.withLock { $0.pid } }
    /// How often ``restart()`` started charon again.
    public var restarts: Int { running.withLock { $0.restarts } }
    /// From spawn to the first answered `version`.
    public let startupDuration: Duration
    /// What `version` answered.
    public let version: CharonVersion
    /// A client on the private socket.
    public let vici: VICIClient
    /// The folders of dead owners this start removed from ``Options/temporaryDirectory`` (a process killed before
    /// it could ``stop()`` its charon leaves one), with the orphaned charon killed if one still ran.
    public let reclaimedFolders: [String]

    private struct Running {
        var process: ChildProcess
        var pid: pid_t
        var restarts = 0
    }

    private let running: Mutex<Running>
    private let stopped = Atomic<Bool>(false)
    private let grace: Duration
    private let options: Options
    private let privateFolder: CharonFolder

    /// Starts charon in `namespace` and waits until it answers on its VICI socket.
    public init(namespace: NetworkNamespace, options: Options = Options()) throws(VICIError) {
        let command = "start charon"
        self.namespace = namespace
        self.options = options
        grace = options.stopGrace
        guard FileManager.default.isExecutableFile(atPath: options.charonPath) else {
            throw VICIError(.daemonUnavailable, command: command, detail: "\(options.charonPath) is not installed")
        }
        reclaimedFolders = CharonFolder.reclaimAbandoned(in: options.temporaryDirectory).map(\.path)
        let privateFolder = try CharonFolder.make(in: options.temporaryDirectory, command: command)
        self.privateFolder = privateFolder
        let folder = privateFolder.path
        self.folder = folder
        configPath = folder + "/strongswan.conf"
        socketPath = folder + "/charon.vici"
        logPath = folder + "/charon.log"
        let plugins =
            options.plugins
            ?? Self.defaultPlugins(
                installedIn: options.pluginDirectory,
                extra: options.extraPlugins)
        configuration = Self.configuration(options: options, plugins: plugins, socketPath: socketPath)
        var started: ChildProcess?
        do throws(VICIError) {
            do {
                try configuration.write(toFile: configPath, atomically: true, encoding: .utf8)
            } catch {
                throw VICIError(.io, command: command, detail: "write \(configPath): \(error)")
            }
            let begin = ContinuousClock.now
            let process = try Self.spawn(
                namespace: namespace, options: options, folder: privateFolder, configPath: configPath,
                logPath: logPath, command: command)
            started = process
            let (client, version) = try Self.waitUntilReady(
                process: process, socketPath: socketPath,
                logPath: logPath, options: options, command: command)
            startupDuration = begin.duration(to: .now)
            running = Mutex(Running(process: process, pid: process.pid))
            vici = client
            self.version = version
        } catch {
            started?.terminate(grace: .milliseconds(500))
            privateFolder.remove()
            throw error
        }
    }

    deinit { stop() }

    /// Whether charon is still running.
    public var isRunning: Bool { running.withLock { $0.process.isRunning } }
    /// Whether ``stop()`` ended it on purpose (it is then never started again).
    public var wasStopped: Bool { stopped.load(ordering: .acquiring) }

    /// Starts charon again (same folder, configuration and socket) if it is not running, and waits until it
    /// answers: what a supervisor does for a charon that died. Its SAs in the kernel are untouched; the
    /// caller reloads credentials and conns. Nothing happens after ``stop()``.
    public func restart() throws(VICIError) {
        let command = "restart charon"
        guard !stopped.load(ordering: .acquiring) else {
            throw VICIError(.daemonUnavailable, command: command, detail: "stopped")
        }
        try running.withLock { (state: inout Running) throws(VICIError) in
            guard !state.process.isRunning else { return }
            unlink(socketPath)
            let process = try Self.spawn(
                namespace: namespace, options: options, folder: privateFolder, configPath: configPath,
                logPath: logPath, command: command)
            do throws(VICIError) {
                _ = try Self.waitUntilReady(
                    process: process, socketPath: socketPath, logPath: logPath, options: options,
                    command: command)
            } catch {
                process.terminate(grace: .milliseconds(500))
                throw error
            }
            state.process = process
            state.pid = process.pid
            state.restarts += 1
        }
        vici.disconnect()
    }

    /// Stops charon: SIGTERM, up to ``Options/stopGrace`` for it to exit, then SIGKILL; reaps it and deletes
    /// the folder. Idempotent. Event streams on its socket end with `VICIError.Code.daemonUnavailable`.
    public func stop() {
        guard !stopped.exchange(true, ordering: .acquiringAndReleasing) else { return }
        vici.disconnect()
        running.withLock { running -> Void in running.process.terminate(grace: grace) }
        privateFolder.remove()
    }

    /// A new event stream on this charon's socket (its own connection).
    public func events(_ names: [String], timeout: Duration = .seconds(10)) throws(VICIError) -> VICIEventStream {
        try VICIEventStream(path: socketPath, events: names, timeout: timeout)
    }

    /// The last `maxBytes` of charon's log (its stderr and stdout), for failure messages.
    public func logTail(maxBytes: Int = 4096) -> String { Self.tail(of: logPath, maxBytes: maxBytes) }

    /// The VICI socket of a charon already running on this machine (`/var/run/charon.vici`, the default of
    /// `charon.plugins.vici.socket`), if one answers `version` within `timeout` **and runs in `namespace`**;
    /// nil otherwise. A charon installs SAs in the network namespace it runs in, so a VICI socket that is merely
    /// visible (a bind-mounted `/var/run`, another namespace's charon) is no use for sockets elsewhere: its
    /// process (`SO_PEERCRED`) must be in the same network namespace as `namespace`.
    public static func systemVICISocket(
        candidates: [String] = ["/var/run/charon.vici", "/run/charon.vici"],
        namespace: NetworkNamespace = .current,
        timeout: Duration = .seconds(1)
    ) -> String? {
        for path in candidates where FileManager.default.fileExists(atPath: path) {
            guard let client = try? VICIClient(path: path, timeout: timeout), (try? client.version()) != nil,
                let pid = client.daemonProcessID
            else { continue }
            if namespaceInode("/proc/\(pid)/ns/net") == namespaceInode(namespace.path ?? "/proc/self/ns/net") {
                return path
            }
        }
        return nil
    }

    private static func namespaceInode(_ path: String) -> UInt64? {
        var info = stat()
        guard stat(path, &info) == 0 else { return nil }
        return UInt64(info.st_ino)
    }

    // MARK: - Starting

    /// The `strongswan.conf` for one private charon.
    static func configuration(options: Options, plugins: [String], socketPath: String) -> String {
        var levels = "      default = \(options.logLevel)\n"
        for (subsystem, level) in options.subsystemLogLevels.sorted(by: { $0.key < $1.key }) {
            levels += "      \(subsystem) = \(level)\n"
        }
        var charon = """
            # Written by Keying.CharonDaemon: one private charon per network namespace.
            charon {
              load_modular = no
              load = \(plugins.joined(separator: " "))
              install_routes = no
              install_virtual_ip = no

            """
        if let port = options.ikePort { charon += "  port = \(port)\n" }
        if let port = options.natTraversalPort { charon += "  port_nat_t = \(port)\n" }
        if let threads = options.workerThreads { charon += "  threads = \(threads)\n" }
        charon += """
              filelog {
                stderr {
                  time_format = %T
                  ike_name = yes
                  flush_line = yes
            \(levels)    }
              }
              syslog {
                daemon {
                  default = -1
                }
              }
              plugins {
                vici {
                  socket = unix://\(socketPath)
                }
                # Transport-mode SAs get the negotiated protocol and ports as their kernel selector, so each
                # connection's SAs serve that connection only (the per-flow binding; default: address only).
                kernel-netlink {
                  set_proto_port_transport_sa = \(options.flowSelectorsOnTransportSAs ? "yes" : "no")
                }
              }

            """
        if !options.extraConfig.isEmpty { charon += options.extraConfig + "\n" }
        charon += "}\n"
        return charon
    }

    static func locate(_ name: String) -> String? {
        ["/usr/bin", "/bin", "/usr/sbin", "/sbin"].map { "\($0)/\(name)" }
            .first { FileManager.default.isExecutableFile(atPath: $0) }
    }

    /// `setpriv --pdeathsig KILL nsenter --net=PATH unshare --mount --propagation private sh -c '…' charon`.
    static func commandLine(namespace: NetworkNamespace, charon: String, command: String) throws(VICIError) -> [String]
    {
        var arguments: [String] = []
        if let setpriv = locate("setpriv") { arguments += [setpriv, "--pdeathsig", "KILL"] }
        if let path = namespace.path {
            guard let nsenter = locate("nsenter") else {
                throw VICIError(.daemonUnavailable, command: command, detail: "nsenter (util-linux) is not installed")
            }
            arguments += [nsenter, "--net=\(path)", "--"]
        }
        guard let unshare = locate("unshare"), let sh = locate("sh") else {
            throw VICIError(.daemonUnavailable, command: command, detail: "unshare (util-linux) or sh is not installed")
        }
        arguments += [
            unshare, "--mount", "--propagation", "private", "--", sh, "-c",
            "mount -t tmpfs -o mode=0755 tmpfs /run && exec \"$0\"", charon,
        ]
        return arguments
    }

    /// Spawns charon for `namespace` (see ``commandLine(namespace:charon:command:)``) with its configuration and
    /// log in the private folder, and notes it in the folder's owner record. A spawned charon that cannot be noted
    /// is killed.
    private static func spawn(
        namespace: NetworkNamespace, options: Options, folder: CharonFolder, configPath: String, logPath: String,
        command: String
    ) throws(VICIError) -> ChildProcess {
        let arguments = try commandLine(namespace: namespace, charon: options.charonPath, command: command)
        let process = try ChildProcess(
            arguments: arguments,
            environment: ["STRONGSWAN_CONF": configPath, "PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C"],
            outputPath: logPath, command: command)
        do throws(VICIError) {
            try folder.noteCharon(pid: process.pid, command: command)
        } catch {
            process.terminate(grace: .milliseconds(500))
            throw error
        }
        return process
    }

    /// Polls the socket until `version` answers, charon exits, or the deadline passes.
    static func waitUntilReady(
        process: ChildProcess, socketPath: String, logPath: String, options: Options,
        command: String
    ) throws(VICIError) -> (VICIClient, CharonVersion) {
        let deadline = Deadline(after: options.readyTimeout)
        var lastError: VICIError?
        // Bounded: 10 ms between tries, and the deadline.
        for _ in 0..<100_000 {
            if !process.isRunning {
                throw VICIError(
                    .daemonUnavailable, command: command,
                    detail:
                        "charon \(process.exitDescription) before answering; log: \(tail(of: logPath, maxBytes: 2048))")
            }
            if FileManager.default.fileExists(atPath: socketPath) {
                do throws(VICIError) {
                    let client = try VICIClient(path: socketPath, timeout: options.commandTimeout)
                    let version = try client.version()
                    return (client, version)
                } catch {
                    lastError = error
                }
            }
            if deadline.hasPassed { break }
            usleep(10_000)
        }
        throw VICIError(
            .daemonUnavailable, command: command,
            detail: "no answer on \(socketPath) within \(options.readyTimeout)"
                + (lastError.map { " (last: \($0))" } ?? "") + "; log: \(tail(of: logPath, maxBytes: 2048))")
    }

    static func tail(of path: String, maxBytes: Int) -> String {
        guard let handle = FileHandle(forReadingAtPath: path) else { return "(no log at \(path))" }
        defer { try? handle.close() }
        let size = (try? handle.seekToEnd()) ?? 0
        let start = size > UInt64(maxBytes) ? size - UInt64(maxBytes) : 0
        try? handle.seek(toOffset: start)
        let data = (try? handle.readToEnd()) ?? Data()
        return String(decoding: data, as: UTF8.self)
    }
}
