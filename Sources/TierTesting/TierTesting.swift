import Foundation
import Logging
import NetnsTestSupport
import XCTest

/// The library's decision logs in tests: `notice` and worse (refusals, fallbacks, restarts) on stderr, so that
/// hundreds of secured connections do not flood the output; `WSS_TEST_LOG=info` (or any level) shows more.
private let testLogging: Void = {
    let level = ProcessInfo.processInfo.environment["WSS_TEST_LOG"].flatMap(Logger.Level.init(rawValue:)) ?? .notice
    LoggingSystem.bootstrap { label in
        var handler = StreamLogHandler.standardError(label: label)
        handler.logLevel = level
        return handler
    }
}()

/// Raised after a failure has been recorded, to end a test that cannot reach its tier under CI.
public struct TierUnavailable: Error, CustomStringConvertible {
    public var description: String
}

/// Ends the test unless `tier` is reachable: a loud skip locally, a failure when `CI=true`.
public func requireTier(_ tier: TestTier, file: StaticString = #filePath, line: UInt = #line) throws {
    _ = testLogging
    let reason: String? =
        switch tier {
        case .unit: nil
        case .hostKernel: TierProbe.hostKernelUnavailableReason
        case .espKernel: TierProbe.espUnavailableReason
        }
    guard let reason else { return }
    try unreachable(tier, reason, file: file, line: line)
}

private func unreachable(_ tier: TestTier, _ reason: String, file: StaticString, line: UInt) throws -> Never {
    let message = "\(tier) cannot run: \(reason)"
    if TierProbe.mustReachEveryTier {
        XCTFail("CI=true and \(message)", file: file, line: line)
        throw TierUnavailable(description: message)
    }
    FileHandle.standardError.write(Data("\n*** SKIPPED: \(message) ***\n\n".utf8))
    throw XCTSkip(message, file: file, line: line)
}

/// Runs `body` on a kernel with ESP. Here, if this kernel has ESP; otherwise boots the user-mode-linux
/// kernel with `scripts/uml/run.sh` and runs this very test inside it (the host's `/` is UML's root, so the
/// same test binary runs unchanged), then checks that it passed there.
public func inESPKernel(
    _ testCase: XCTestCase, timeout: Int = 300, file: StaticString = #filePath,
    line: UInt = #line, _ body: () throws -> Void
) throws {
    _ = testLogging
    if TierProbe.espUnavailableReason == nil {
        try body()
        return
    }
    if TierProbe.insideUML {
        // Inside UML and still no ESP: the harness is broken, do not recurse.
        try requireTier(.espKernel, file: file, line: line)
    }
    let root = TierProbe.packageRoot(from: "\(file)")
    if let reason = TierProbe.umlUnavailableReason(packageRoot: root) {
        try unreachable(.espKernel, reason, file: file, line: line)
    }
    let binary = try FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")
    let className = String(reflecting: type(of: testCase))
    let method =
        testCase.name.split(whereSeparator: { $0 == "." || $0 == " " }).last
        .map { String($0).trimmingCharacters(in: CharacterSet(charactersIn: "]")) } ?? testCase.name
    let filter = "\(className)/\(method)"
    let runner = root!.appendingPathComponent("scripts/uml/run.sh").path
    let started = Date()
    // The library's own settings (WSS_*) reach the run inside UML too.
    let settings = ProcessInfo.processInfo.environment.keys.filter { $0.hasPrefix("WSS_") }.sorted()
        .flatMap { ["--env", $0] }
    let result = try Command.run(
        [runner, "--timeout", "\(timeout)"] + settings + ["--", binary, filter],
        timeout: Double(timeout + 30), check: false)
    let elapsed = Date().timeIntervalSince(started)
    print("---- \(filter) inside user-mode-linux (\(String(format: "%.1f", elapsed)) s, exit \(result.status)) ----")
    print(result.output)
    print("---- end of UML run ----")
    XCTAssertEqual(
        result.status, 0, "\(filter) failed inside user-mode-linux (exit \(result.status))",
        file: file, line: line)
    XCTAssertTrue(
        result.output.contains("Executed 1 test"), "the UML run did not execute \(filter)",
        file: file, line: line)
    XCTAssertFalse(
        result.output.contains("test skipped") || result.output.contains("tests skipped"),
        "\(filter) was skipped inside user-mode-linux", file: file, line: line)
}
