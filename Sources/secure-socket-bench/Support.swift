import ArgumentParser
import Dispatch
import EngineTestSupport
import Foundation
import NetnsTestSupport
import Synchronization
import XFRM

// Shared pieces of the three benchmarks: clocks, medians, the kernel line, and a cleanup registry that
// deletes namespaces and stops charons on the way out, also on SIGINT/SIGTERM.

/// CLOCK_MONOTONIC in nanoseconds (vDSO, ~20 ns: negligible next to what is timed here).
@inline(__always)
func nowNanos() -> UInt64 {
    var now = timespec()
    clock_gettime(CLOCK_MONOTONIC, &now)
    return UInt64(now.tv_sec) * 1_000_000_000 + UInt64(now.tv_nsec)
}

/// Seconds `body` took.
func timed(_ body: () throws -> Void) rethrows -> Double {
    let start = nowNanos()
    try body()
    return Double(nowNanos() - start) / 1e9
}

/// The median (the upper one of the two middle values for an even count, as xfrm-bench does).
func median(_ values: [Double]) -> Double {
    precondition(!values.isEmpty, "median of nothing")
    return values.sorted()[values.count / 2]
}

func milliseconds(_ duration: Duration) -> Double {
    Double(duration.components.seconds) * 1000 + Double(duration.components.attoseconds) / 1e15
}

func format(_ value: Double, _ decimals: Int = 1) -> String { String(format: "%.\(decimals)f", value) }

/// `6.1.176 (user-mode-linux)` or `6.18.44 (host kernel)`.
func kernelDescription() -> String {
    let release =
        (try? String(contentsOfFile: "/proc/sys/kernel/osrelease", encoding: .utf8))?
        .trimmingCharacters(in: .whitespacesAndNewlines) ?? "?"
    return "\(release) (\(TierProbe.insideUML ? "user-mode-linux" : "host kernel"))"
}

func requireRoot() throws {
    guard geteuid() == 0 else { throw ValidationError("run as root (namespaces, NETLINK_XFRM, per-socket policies)") }
}

func requireESPKernel(_ benchmark: String) throws {
    if let reason = TierProbe.espUnavailableReason {
        throw ValidationError("\(benchmark) needs an ESP kernel: \(reason); run it under scripts/uml/run.sh")
    }
}

/// A private folder under `parent` (/tmp by default; reqid claims never go to the host's /run).
func makeTemporaryFolder(_ prefix: String, in parent: String = "/tmp") throws -> String {
    let path = "\(parent)/\(prefix)-\(getpid())-\(UUID().uuidString)"
    try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: false)
    return path
}

/// The file system type of `path` (`findmnt --target`: tmpfs, ext4, hostfs, …).
func fileSystemType(_ path: String) -> String {
    guard let result = try? Command.run(["findmnt", "-n", "-o", "FSTYPE", "--target", path], timeout: 10),
        let type = result.output.split(separator: "\n").first
    else { return "?" }
    return String(type).trimmingCharacters(in: .whitespaces)
}

/// A random PSK (hex), the same for both ends.
func randomSecret() -> String { EnginePair.randomSecret() }

/// Undo actions (delete a namespace, stop a charon, remove a folder) run in reverse order by ``run(_:)``, by
/// ``runAll()`` at exit, or from a SIGINT/SIGTERM handler (a dispatch source, not signal context), so an
/// interrupted benchmark leaves neither namespaces nor daemons behind.
enum Cleanup {
    private static let actions = Mutex<[(Int, @Sendable () -> Void)]>([])
    private static let counter = Atomic<Int>(0)
    nonisolated(unsafe) private static var sources: [DispatchSourceSignal] = []
    private static let installed = Atomic<Bool>(false)

    /// Registers `action`; returns a token for ``run(_:)``.
    @discardableResult
    static func add(_ action: @escaping @Sendable () -> Void) -> Int {
        let token = counter.add(1, ordering: .relaxed).newValue
        actions.withLock { $0.append((token, action)) }
        return token
    }

    /// Held while actions run, so the main thread cannot exit half-way through a signal handler's cleanup
    /// (the handler keeps it until `exit`).
    private static let gate = NSLock()

    /// Runs (once) and forgets the action registered under `token`.
    static func run(_ token: Int) {
        gate.lock()
        defer { gate.unlock() }
        let action = actions.withLock { list -> (@Sendable () -> Void)? in
            guard let index = list.firstIndex(where: { $0.0 == token }) else { return nil }
            return list.remove(at: index).1
        }
        action?()
    }

    /// Runs every registered action, newest first.
    static func runAll() {
        gate.lock()
        defer { gate.unlock() }
        runAllLocked()
    }

    private static func runAllLocked() {
        let all = actions.withLock { list -> [(Int, @Sendable () -> Void)] in
            defer { list.removeAll() }
            return list
        }
        for (_, action) in all.reversed() { action() }
    }

    /// SIGINT/SIGTERM/SIGHUP: clean up, then exit 130/143/129.
    static func installSignalHandlers() {
        guard !installed.exchange(true, ordering: .relaxed) else { return }
        for (signalNumber, status) in [(SIGINT, Int32(130)), (SIGTERM, 143), (SIGHUP, 129)] {
            signal(signalNumber, SIG_IGN)
            let source = DispatchSource.makeSignalSource(signal: signalNumber, queue: .global())
            source.setEventHandler {
                FileHandle.standardError.write(
                    "secure-socket-bench: signal \(signalNumber), cleaning up\n".data(using: .utf8)!)
                gate.lock() // never unlocked: the process exits with it held
                runAllLocked()
                exit(status)
            }
            source.resume()
            sources.append(source)
        }
    }
}

/// Two namespaces joined by veth, registered for cleanup.
func makePair(_ prefix: String) throws -> (NamespacePair, Int) {
    let pair = try NamespacePair(prefix: prefix)
    let token = Cleanup.add { pair.remove() }
    return (pair, token)
}

/// A table row: label, then right-aligned columns.
/// One row of the closing table `scripts/bench.sh` assembles from every section's output (the issue's measures,
/// ours against the baseline measured in the same run): a tab-separated line after the word `summary`.
func summary(_ measure: String, ours: String, baseline: String, ratio: String, goal: String) {
    print(["summary", measure, ours, baseline, ratio, goal].joined(separator: "\t"))
}

func row(_ label: String, _ columns: [String], labelWidth: Int = 58, columnWidth: Int = 12) -> String {
    var line =
        label.count >= labelWidth ? label + " " : label.padding(toLength: labelWidth, withPad: " ", startingAt: 0)
    for column in columns {
        line += String(repeating: " ", count: max(1, columnWidth - column.count)) + column
    }
    return line
}

/// Raises this process's descriptor limit (soft, up to the hard limit) for benchmarks that hold many sockets.
func raiseDescriptorLimit(to wanted: UInt64) {
    var limit = rlimit()
    guard getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit) == 0 else { return }
    limit.rlim_cur = min(max(limit.rlim_cur, rlim_t(wanted)), limit.rlim_max)
    setrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit)
}
