import ArgumentParser
import DaemonControl
import Glibc
import Keying
import KeyingDaemon
import Logging
import SecureSocket
import SystemSupport

/// `wss-keyd`: the keying daemon of the network namespace it runs in. Applications that link the library pass
/// their sockets to it and need no `CAP_NET_ADMIN`; it needs that capability (it is run as root) and reads the
/// keying file (`$WSS_KEYING_CONFIG` or `/etc/winsock-secure-socket/keying.conf`), whose `client-user` lines say
/// which local users besides root it serves.
@main
struct WSSKeyd: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "wss-keyd",
        abstract: "The keying daemon of this network namespace for the Winsock secure-socket library.")

    @Option(
        help: "The abstract socket address to listen on (default: $WSS_KEYD_ADDRESS or winsock-secure-socket/keyd).")
    var address: String?

    @Option(help: "Exit once no client and no secured socket has been left for this many seconds.")
    var exitWhenIdle: Double?

    @Option(help: "Threads that run clients' requests.")
    var threads: Int = 8

    func run() throws {
        // Termination signals are taken by one thread (sigwait), so every other thread starts with them blocked.
        var signals = sigset_t()
        sigemptyset(&signals)
        sigaddset(&signals, SIGTERM)
        sigaddset(&signals, SIGINT)
        pthread_sigmask(SIG_BLOCK, &signals, nil)
        signal(SIGPIPE, SIG_IGN)

        let logger = SecureSocketLogging.logger(label: "wss.keyd")
        // The address first: a second daemon started at the same moment exits before it touches charon.
        let name = address ?? ControlChannel.defaultName
        let listener: ControlChannel
        if let inherited = SystemdSocket.listening() {
            listener = ControlChannel.adopting(inherited)
        } else {
            do {
                listener = try ControlChannel.listen(name: name)
            } catch {
                logger.error(
                    "cannot listen: is another keying daemon running in this namespace?",
                    metadata: ["address": "@\(name)", "error": "\(error)"])
                throw ExitCode(error.errno == .addressInUse ? 75 : 71)
            }
        }
        // Without a keying file, or with one that is refused, the daemon still answers: securing a socket then
        // fails as it would in the application's own process (WSAENETUNREACH, or the refusal and its reason).
        var keying: (configuration: KeyingConfiguration, backend: any KeyingBackend)?
        var refusal: SecureSocketError?
        do {
            keying = try DefaultKeying.make(logger: SecureSocketLogging.logger(label: "wss.keying"))
            if keying == nil {
                logger.notice(
                    "no keying file: sockets cannot be secured",
                    metadata: ["path": "\(KeyingConfiguration.defaultPath)"])
            }
        } catch {
            logger.error("the keying file is refused", metadata: ["reason": "\(error)"])
            refusal = error
        }
        let admission = ClientAdmission(clientUsers: keying?.configuration.clientUsers ?? [])
        for name in admission.unknownNames {
            logger.warning("client-user names no account: ignored", metadata: ["user": "\(name)"])
        }
        let sockets = try DaemonSockets()
        var configuration = SecureSocketEngine.Configuration(
            negotiationTimeout: keying?.configuration.negotiationTimeout ?? .seconds(10), keying: keying?.backend,
            identityMap: nil)
        configuration.logger = logger
        configuration.clientSockets = sockets
        let engine = try SecureSocketEngine(configuration)
        let daemon = try KeyingDaemon(
            engine: engine, listener: listener, admission: admission, logger: logger, threads: threads,
            keyingRefusal: refusal)
        sockets.attach(daemon)
        logger.notice(
            "keying daemon ready",
            metadata: ["address": "@\(name)", "pid": "\(getpid())", "keying": "\(keying?.backend.name ?? "none")"])

        let finish: @Sendable (String) -> Never = { reason in
            logger.notice("keying daemon stopping", metadata: ["reason": "\(reason)"])
            daemon.stop()
            sockets.stop()
            engine.shutdown()
            logger.notice("keying daemon stopped: its sockets released, its conns unloaded")
            Glibc.exit(0)
        }
        try Threads.detach {
            var caught: Int32 = 0
            var signals = sigset_t()
            sigemptyset(&signals)
            sigaddset(&signals, SIGTERM)
            sigaddset(&signals, SIGINT)
            sigwait(&signals, &caught)
            finish("signal \(caught)")
        }
        if let exitWhenIdle {
            let idleBound = Duration.milliseconds(Int64(max(0.1, exitWhenIdle) * 1000))
            try Threads.detach {
                var idleSince: ContinuousClock.Instant?
                while true {
                    usleep(200_000)
                    guard daemon.clientCount == 0, engine.endpointCount == 0 else {
                        idleSince = nil
                        continue
                    }
                    let now = ContinuousClock.now
                    if let since = idleSince, since.duration(to: now) >= idleBound { finish("idle") }
                    if idleSince == nil { idleSince = now }
                }
            }
        }
        daemon.run()
        // Stopped: the thread that stopped the daemon releases everything and ends the process (returning here
        // would end it at once, with charon's conns half unloaded).
        while true { sleep(60) }
    }
}

/// The listening socket systemd passes with socket activation (`LISTEN_FDS`, `LISTEN_PID`), if any.
enum SystemdSocket {
    static func listening() -> CInt? {
        guard let pid = getenv("LISTEN_PID").flatMap({ Int32(String(cString: $0)) }), pid == getpid(),
            let count = getenv("LISTEN_FDS").flatMap({ Int(String(cString: $0)) }), count >= 1
        else { return nil }
        unsetenv("LISTEN_PID")
        unsetenv("LISTEN_FDS")
        _ = fcntl(3, F_SETFD, FD_CLOEXEC)
        return 3
    }
}
