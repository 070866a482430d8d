import ArgumentParser
import CMallocInfo
import DaemonControl
import Glibc
import Keying
import KeyingDaemon
import Logging
import SecureSocket
import ServiceLifecycle
import SystemSupport

/// `wss-keyd`: the keying daemon of the network namespace it runs in. Applications that link the library pass
/// their sockets to it and need no `CAP_NET_ADMIN`; it needs that capability (it is run as root) and reads the
/// keying file (`$WSS_KEYING_CONFIG` or `/etc/winsock-secure-socket/keying.conf`), whose `client-user` lines say
/// which local users besides root it serves.
@main
struct WSSKeyd: AsyncParsableCommand {
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

    func run() async throws {
        signal(SIGPIPE, SIG_IGN)
        // Two malloc arenas instead of one per thread that ever allocates (glibc's default, up to eight per core):
        // the request threads spread each connection's allocations over their own arenas, which stay resident.
        // Measured with 400 held connections (secure-socket-bench new-connection --processes 1 8).
        _ = cmi_limit_arenas(2)

        let logger = SecureSocketLogging.logger(label: "wss.keyd")
        // The address first: a second daemon started at the same moment exits before it touches charon.
        let name = address ?? ControlChannel.defaultName
        let listener: ControlChannel
        let inherited = SystemdSocket.listening()
        if let inherited {
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
        let admission = ClientAdmission(rules: keying?.configuration.clientRules ?? [])
        for name in admission.unknownNames {
            logger.warning("client-user names no account: ignored", metadata: ["user": "\(name)"])
        }
        for duplicate in admission.duplicates {
            logger.error(
                "a user is named by several client-user lines: refused until one line remains",
                metadata: ["uid": "\(duplicate.uid)", "lines": "\(duplicate.lines)"])
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
            metadata: [
                "address": "\(inherited == nil ? "@\(name)" : "the socket systemd passed")", "pid": "\(getpid())",
                "keying": "\(keying?.backend.name ?? "none")",
            ])

        // One group runs the daemon's services and takes SIGTERM and SIGINT: a graceful shutdown stops accepting
        // clients (and the idle watch). Either service ending shuts the group down.
        var services: [ServiceGroupConfiguration.ServiceConfiguration] = [
            .init(service: daemon, successTerminationBehavior: .gracefullyShutdownGroup, serviceName: "clients")
        ]
        if let exitWhenIdle {
            let bound = Duration.milliseconds(Int64(max(0.1, exitWhenIdle) * 1000))
            services.append(
                .init(
                    service: IdleExit(daemon: daemon, bound: bound),
                    successTerminationBehavior: .gracefullyShutdownGroup,
                    serviceName: "idle exit"))
        }
        let group = ServiceGroup(
            configuration: .init(services: services, gracefulShutdownSignals: [.sigterm, .sigint], logger: logger))
        try await group.run()
        // Stopped: every client connection has ended; the sockets' SAs and conns are released before the process
        // ends (returning at once would leave charon's conns half unloaded).
        logger.notice("keying daemon stopping", metadata: ["reason": "\(daemon.isIdle ? "idle" : "shut down")"])
        daemon.stop()
        sockets.stop()
        engine.shutdown()
        logger.notice("keying daemon stopped: its sockets released, its conns unloaded")
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
