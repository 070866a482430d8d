import Foundation
import Glibc
import Keying
import Logging
import SecureSocket
import Synchronization
import VICI

/// Starting the namespace's keying daemon from the library: the first call of a process with `CAP_NET_ADMIN` in
/// a namespace where no daemon answers starts `wss-keyd --exit-when-idle` (it ends once its last client has gone
/// and its sockets' SAs are released), in a process group of its own, with this process's environment (the
/// keying file it names) and standard error. Two processes starting one at once is harmless: the second daemon
/// finds the address taken and exits, and both connect to the first.
public struct EmbeddedDaemon: Sendable {
    /// The `wss-keyd` to start.
    public let path: String
    let logger: Logger

    /// The daemon at `path` (see ``executable``), logging what it starts to `logger`.
    public init(path: String, logger: Logger) {
        self.path = path
        self.logger = logger
    }

    /// How long an embedded daemon stays without clients and secured sockets before it exits.
    public static let idleExit = "1"

    /// The daemon started last, reaped by its supervisor thread when it exits.
    private static let started = Mutex<[ChildProcess]>([])

    /// Where `wss-keyd` is: `$WSS_KEYD`, else beside the library (or the program) that holds this code, else
    /// `/usr/libexec/winsock-secure-socket/wss-keyd`. nil when none is an executable file, or when `WSS_KEYD` is
    /// `none` (the process then secures its own sockets, if it may).
    public static var executable: String? {
        var candidates: [String] = []
        if let path = getenv("WSS_KEYD").map({ String(cString: $0) }) {
            if path == "none" { return nil }
            candidates.append(path)
        }
        if let library = Self.objectPath {
            candidates.append(
                URL(fileURLWithPath: library).deletingLastPathComponent().appendingPathComponent("wss-keyd").path)
        }
        if let program = try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe") {
            candidates.append(
                URL(fileURLWithPath: program).deletingLastPathComponent().appendingPathComponent("wss-keyd").path)
        }
        candidates.append("/usr/libexec/winsock-secure-socket/wss-keyd")
        return candidates.first { access($0, X_OK) == 0 }
    }

    /// The file this code was loaded from (the library, or the program it is linked into): the mapping of
    /// `/proc/self/maps` that holds this module's handle.
    static var objectPath: String? {
        let address = UInt(bitPattern: #dsohandle)
        guard let maps = try? String(contentsOfFile: "/proc/self/maps", encoding: .utf8) else { return nil }
        for line in maps.split(separator: "\n") {
            let fields = line.split(separator: " ", maxSplits: 5, omittingEmptySubsequences: true)
            guard fields.count == 6, fields[5].hasPrefix("/") else { continue }
            let range = fields[0].split(separator: "-")
            guard range.count == 2, let start = UInt(range[0], radix: 16), let end = UInt(range[1], radix: 16),
                start <= address, address < end
            else { continue }
            return String(fields[5])
        }
        return nil
    }

    /// Starts the daemon at `path`; returns whether it still runs, to ask while waiting for it to answer. Its
    /// output goes where this process's standard error goes (nowhere when that cannot be opened again, as a
    /// socket to the journal cannot: the daemon then logs to syslog, its default).
    func start() throws(SecureSocketError) -> ChildProcess {
        let environment = ProcessInfo.processInfo.environment
        var made: ChildProcess?
        var failure: VICIError?
        for output in ["/dev/stderr", "/dev/null"] where made == nil {
            do throws(VICIError) {
                made = try ChildProcess(
                    arguments: [path, "--exit-when-idle", Self.idleExit], environment: environment, outputPath: output,
                    command: "start wss-keyd")
            } catch {
                failure = error
            }
        }
        guard let process = made else {
            throw SecureSocketError(.networkDown, "starting the keying daemon \(path)", underlying: failure)
        }
        logger.notice("started the namespace's keying daemon", metadata: ["pid": "\(process.pid)", "path": "\(path)"])
        Self.started.withLock { list in
            list.removeAll { !$0.isRunning }
            list.append(process)
        }
        return process
    }
}
