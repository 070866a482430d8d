import Foundation

/// A program run inside a namespace (`ip netns exec NS env VAR=… PROGRAM ARGS`) with its output in a log file:
/// the sample services and clients the tier-3 tests and the demo drive as separate processes. `ip netns exec`
/// and `env` exec the program, so ``pid`` is the program's own.
public final class NamespaceProcess: @unchecked Sendable {
    public let log: String
    private let process = Process()

    public init(
        in namespace: TestNamespace, environment: [String: String] = [:], _ command: [String],
        log: String
    ) throws {
        self.log = log
        guard let ip = Command.locate("ip") else { throw CommandError.notFound("ip (apt install iproute2)") }
        // O_APPEND: a process the child starts may open the same file again (a keying daemon logging to
        // /dev/stderr), and its lines must not be overwritten by the child's own at its offset.
        let descriptor = open(log, O_WRONLY | O_CREAT | O_TRUNC | O_APPEND | O_CLOEXEC, 0o644)
        guard descriptor >= 0 else {
            throw CommandError.failed(command: "create \(log)", status: errno, output: String(cString: strerror(errno)))
        }
        let output = FileHandle(fileDescriptor: descriptor, closeOnDealloc: true)
        process.executableURL = URL(fileURLWithPath: ip)
        process.arguments =
            ["netns", "exec", namespace.name, "env"]
            + environment.sorted(by: { $0.key < $1.key }).map { "\($0.key)=\($0.value)" } + command
        // One open file description for both streams: two would each write at their own offset, and a log line
        // on stderr would be overwritten by the stdout written after it.
        process.standardOutput = output
        process.standardError = output
        try process.run()
    }

    public var pid: Int32 { process.processIdentifier }
    public var isRunning: Bool { process.isRunning }
    public var terminationStatus: Int32 { process.terminationStatus }
    public var output: String { (try? String(contentsOfFile: log, encoding: .utf8)) ?? "" }

    /// Waits (bounded) until the output contains `text` or the process ends; returns whether it appeared.
    @discardableResult
    public func wait(for text: String, timeout: Double) -> Bool {
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline, process.isRunning, !output.contains(text) { usleep(20_000) }
        return output.contains(text)
    }

    /// Waits (bounded) for the process to end; returns whether it did.
    @discardableResult
    public func waitForExit(timeout: Double) -> Bool {
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline, process.isRunning { usleep(50_000) }
        return !process.isRunning
    }

    public func terminate() { if process.isRunning { process.terminate() } }

    deinit { terminate() }
}

extension TestCertificates {
    /// Writes a keying file (the library's `keying.conf` format) for `name`'s certificate, and returns its path.
    /// `charon` is `private`, `auto` or a VICI socket path; `extra` lines are appended (e.g. `eap-user …`). Mode 600
    /// (the library refuses a keying file that group or others can write; `extra` may hold secrets).
    public func writeKeyingFile(for name: String, charon: String, extra: [String] = []) throws -> String {
        let path = "\(folder)/\(name).conf"
        try
            ([
                "identity \(name)",
                "certificate \(folder)/\(name).crt",
                "private-key \(folder)/\(name).key",
                "authority \(folder)/ca.crt",
                "charon \(charon)",
            ] + extra).joined(separator: "\n").appending("\n").write(toFile: path, atomically: true, encoding: .utf8)
        guard chmod(path, 0o600) == 0 else { throw POSIXError(POSIXErrorCode(rawValue: errno) ?? .EIO) }
        return path
    }
}
