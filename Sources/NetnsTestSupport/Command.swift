import Foundation

/// Runs a program (iproute2, tcpdump, the UML runner) and captures its output. Every run is bounded in time.
public struct CommandResult: Sendable {
    public var status: Int32
    public var output: String
    public var succeeded: Bool { status == 0 }
}

public enum CommandError: Error, CustomStringConvertible {
    case failed(command: String, status: Int32, output: String)
    case notFound(String)
    case timedOut(command: String, seconds: Double)

    public var description: String {
        switch self {
        case .failed(let command, let status, let output): "`\(command)` exited \(status): \(output)"
        case .notFound(let name): "\(name) not found on PATH"
        case .timedOut(let command, let seconds): "`\(command)` did not finish within \(seconds) s"
        }
    }
}

public enum Command {
    /// Finds an executable on PATH (and the sbin folders, which a non-login root shell may lack).
    public static func locate(_ name: String) -> String? {
        if name.hasPrefix("/") { return FileManager.default.isExecutableFile(atPath: name) ? name : nil }
        let path = (ProcessInfo.processInfo.environment["PATH"] ?? "") + ":/usr/sbin:/sbin:/usr/bin:/bin"
        for folder in path.split(separator: ":") {
            let candidate = "\(folder)/\(name)"
            if FileManager.default.isExecutableFile(atPath: candidate) { return candidate }
        }
        return nil
    }

    /// Runs `arguments[0]` with the rest as arguments; stdout and stderr are merged.
    @discardableResult
    public static func run(
        _ arguments: [String], timeout: Double = 60, environment: [String: String]? = nil,
        check: Bool = true
    ) throws -> CommandResult {
        guard let executable = locate(arguments[0]) else { throw CommandError.notFound(arguments[0]) }
        let process = Process()
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = Array(arguments.dropFirst())
        if let environment {
            process.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 }
        }
        let pipe = Pipe()
        process.standardOutput = pipe
        process.standardError = pipe
        process.standardInput = FileHandle.nullDevice
        try process.run()
        // Read on another thread so a chatty child never blocks on a full pipe.
        let collected = OutputCollector()
        let reader = Thread {
            collected.set(pipe.fileHandleForReading.readDataToEndOfFile())
        }
        reader.start()
        let deadline = Date().addingTimeInterval(timeout)
        while process.isRunning && Date() < deadline { usleep(2_000) }
        let commandLine = arguments.joined(separator: " ")
        if process.isRunning {
            process.terminate()
            usleep(200_000)
            if process.isRunning { kill(process.processIdentifier, SIGKILL) }
            process.waitUntilExit()
            throw CommandError.timedOut(command: commandLine, seconds: timeout)
        }
        process.waitUntilExit()
        let output = collected.wait()
        let result = CommandResult(status: process.terminationStatus, output: output)
        if check && !result.succeeded {
            throw CommandError.failed(command: commandLine, status: result.status, output: output)
        }
        return result
    }
}

final class OutputCollector: @unchecked Sendable {
    private let condition = NSCondition()
    private var data: Data?

    func set(_ value: Data) {
        condition.lock()
        data = value
        condition.signal()
        condition.unlock()
    }

    func wait() -> String {
        condition.lock()
        defer { condition.unlock() }
        let deadline = Date().addingTimeInterval(10)
        while data == nil && condition.wait(until: deadline) {}
        return String(decoding: data ?? Data(), as: UTF8.self)
    }
}
