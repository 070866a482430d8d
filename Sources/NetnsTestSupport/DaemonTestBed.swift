import Foundation

/// What the keying daemon's tier-3 tests share: C programs built against the library, a keying file for each end
/// (`a.example`, `b.example`, one pre-shared key, a private charon each, uid 65534 admitted, plus `extra` lines), a
/// namespace pair and a capture on B's veth, and the log level the tests run their processes at
/// (`WSS_TEST_LOG`, info by default). ``remove()`` undoes it all.
public final class DaemonTestBed: @unchecked Sendable {
    public let programs: CPrograms
    /// The keying files of A and B (index 0 and 1).
    public let keying: [String]
    public let pair: NamespacePair
    public let capture: PacketCapture
    public let level = ProcessInfo.processInfo.environment["WSS_TEST_LOG"] ?? "info"

    public init(
        programs sources: [String], packageRoot: URL, prefix: String, extra: [String] = []
    ) throws {
        let programs = try CPrograms(sources, packageRoot: packageRoot)
        let pair: NamespacePair
        do {
            let secret = UUID().uuidString
            keying = try ["a", "b"].map { name in
                try programs.writeKeyingFile(
                    name,
                    ["identity \(name).example", "psk \"\(secret)\"", "charon private", "client-user 65534"] + extra)
            }
            pair = try NamespacePair(prefix: prefix)
        } catch {
            programs.remove()
            throw error
        }
        do {
            capture = try PacketCapture(
                namespace: pair.b, interface: pair.interfaceB, file: "\(programs.folder)/veth-b.pcap")
        } catch {
            pair.remove()
            programs.remove()
            throw error
        }
        self.programs = programs
        self.pair = pair
    }

    /// The daemon of A's (0) or B's (1) namespace, started as root with that end's keying file.
    public func startDaemon(_ end: Int) throws -> NamespaceProcess {
        try programs.startDaemon(in: end == 0 ? pair.a : pair.b, keying: keying[end], log: level)
    }

    public func remove() {
        capture.stop()
        pair.remove()
        programs.remove()
    }
}
