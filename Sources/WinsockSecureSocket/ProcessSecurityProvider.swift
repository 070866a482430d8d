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
/// A daemon that goes away is replaced at the next call: the process connects to the next one (or starts it).
enum ProcessSecurityProvider {
    private static let daemonClient = Mutex<KeyingDaemonClient?>(nil)

    static func get() throws(SecureSocketError) -> any SocketSecurityProvider {
        if let engine = SecureSocketEngine.shared { return engine }
        return try daemonClient.withLock { (client) throws(SecureSocketError) -> any SocketSecurityProvider in
            if let client, (try? client.requireOwner()) != nil {
                if client.isConnected { return client }
                // The daemon went away (killed, restarted): its successor is found or started below. The sockets
                // secured through it keep flowing over their kernel SAs; the next daemon keeps those while they live.
                client.logger.warning("the keying daemon's connection closed: connecting to its successor")
            }
            let logger = SecureSocketLogging.logger(label: "wss.secure-socket")
            let map = try identityMap(logger: logger)
            // A process that may secure sockets itself starts the namespace's daemon instead, when it has one.
            let privileged = Self.hasNetworkAdministration
            let daemonPath = privileged ? EmbeddedDaemon.executable : nil
            let start = daemonPath.map { EmbeddedDaemon(path: $0, logger: logger) }
            do throws(SecureSocketError) {
                let made = try KeyingDaemonClient(identityMap: map, logger: logger, start: start)
                logger.debug("using the namespace's keying daemon", metadata: ["daemon": "\(made.daemon)"])
                client = made
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
        SecureSocketEngine.shared?.logger ?? daemonClient.withLock { $0?.logger }
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
