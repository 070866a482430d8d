import DaemonClient
import Foundation
import Glibc
import Impersonation
import Logging
import SecureSocket
import Synchronization

/// Who carries out this process's Windows-named calls, chosen at the first call:
/// - an engine Swift code installed (``SecureSocketEngine/setShared(_:)``);
/// - else the namespace's keying daemon (`wss-keyd`) when one answers: this process then needs no privilege,
///   and never becomes a second owner of the namespace;
/// - else, for a process with `CAP_NET_ADMIN`, a daemon it starts (``EmbeddedDaemon``), or, when no `wss-keyd` is
///   installed, an engine in this process (it acts as the namespace's daemon for itself);
/// - else `WSAENETDOWN`, saying that a keying daemon is needed.
///
/// A daemon that goes away is replaced (``KeyingDaemonConnection``): at the next call, or at once when the process
/// holds responders secured through it, which are then secured again through the next daemon.
enum ProcessSecurityProvider {
    private static let daemon = Mutex<KeyingDaemonConnection?>(nil)

    static func get() throws(SecureSocketError) -> any SocketSecurityProvider {
        if let engine = SecureSocketEngine.shared { return engine }
        return try daemon.withLock { (daemon) throws(SecureSocketError) -> any SocketSecurityProvider in
            // Across the daemon's restarts (and in a forked child) the connection makes the next client.
            if let daemon { return try daemon.client() }
            let logger = SecureSocketLogging.logger(label: "wss.secure-socket")
            let map = try identityMap(logger: logger)
            // A process that may secure sockets itself starts the namespace's daemon instead, when it has one.
            let privileged = Self.hasNetworkAdministration
            let daemonPath = privileged ? EmbeddedDaemon.executable : nil
            let start = daemonPath.map { EmbeddedDaemon(path: $0, logger: logger) }
            let connection = KeyingDaemonConnection(logger: logger) { () throws(SecureSocketError) in
                try KeyingDaemonClient(identityMap: map, logger: logger, start: start)
            }
            do throws(SecureSocketError) {
                let made = try connection.client()
                logger.debug("using the namespace's keying daemon", metadata: ["daemon": "\(made.daemon)"])
                daemon = connection
                return made
            } catch {
                guard error.code == .networkDown, daemonPath == nil else { throw error }
                guard privileged else {
                    logger.error("no keying daemon in this network namespace", metadata: ["reason": "\(error)"])
                    throw SecureSocketError(
                        .networkDown,
                        "no keying daemon answers in this network namespace, and this process lacks CAP_NET_ADMIN to "
                            + "secure sockets itself: run wss-keyd (as root) in the namespace",
                        underlying: error)
                }
                logger.notice("no wss-keyd to start: this process secures its own sockets")
                return try SecureSocketEngine.makeDefaultShared()
            }
        }
    }

    /// The logger of whatever carries out this process's calls, if one was chosen (no provider is made for it).
    static var currentLogger: Logger? {
        SecureSocketEngine.shared?.logger ?? daemon.withLock { $0?.logger }
    }

    /// The identity map impersonation uses, when its file exists (refused files are an error, with the reason).
    static func identityMap(logger: Logger) throws(SecureSocketError) -> IdentityMap? {
        guard FileManager.default.fileExists(atPath: IdentityMapLocation.defaultPath) else { return nil }
        do {
            return try IdentityMap(path: IdentityMapLocation.defaultPath)
        } catch {
            logger.error("the identity map is refused", metadata: ["reason": "\(error)"])
            throw SecureSocketError(.invalidArgument, IdentityMapLocation.defaultPath, underlying: error)
        }
    }

    /// Whether this process holds `CAP_NET_ADMIN` (bit 12 of `CapEff` in `/proc/self/status`).
    static var hasNetworkAdministration: Bool {
        guard let status = try? String(contentsOfFile: "/proc/self/status", encoding: .utf8),
            let line = status.split(separator: "\n").first(where: { $0.hasPrefix("CapEff:") }),
            let mask = UInt64(line.dropFirst("CapEff:".count).trimmingCharacters(in: .whitespaces), radix: 16)
        else { return geteuid() == 0 }
        return mask & (1 << 12) != 0
    }
}
