import DaemonClient
import DaemonControl
import Foundation
import Glibc
import Logging
import NetnsTestSupport
import TierTesting
import XCTest

/// Tier 2: `wss-keyd` socket-activated as `Packaging/systemd/wss-keyd.socket` does it (a `SOCK_SEQPACKET` listener
/// on the namespace's abstract address, `Accept=no`), here by `systemd-socket-activate` in a namespace of the
/// test's own. Nothing runs until the first client connects; the daemon started then takes the listening socket it
/// inherits (it binds nothing itself) and answers that client.
final class SocketActivationTests: XCTestCase {
    func testTheDaemonStartsAtTheFirstConnectionOnTheSocketItInherits() throws {
        try requireTier(.hostKernel)
        let activate = try XCTUnwrap(
            Command.locate("systemd-socket-activate"), "systemd-socket-activate (apt install systemd)")
        let ns = try TestNamespace(prefix: "kdact")
        defer { ns.remove() }
        let binaries = URL(fileURLWithPath: try FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe"))
            .deletingLastPathComponent().path
        let name = "wss-test-act-\(UUID().uuidString.prefix(8))"
        let log = FileManager.default.temporaryDirectory.appendingPathComponent("act-\(UUID().uuidString).log").path
        defer { try? FileManager.default.removeItem(atPath: log) }
        let activator = try NamespaceProcess(
            in: ns,
            [
                activate, "--seqpacket", "-l", "@\(name)", "-E", "WSS_KEYING_CONFIG=/nonexistent", "-E",
                "WSS_LOG=info,stderr", "\(binaries)/wss-keyd",
            ], log: log)
        defer { activator.terminate() }
        XCTAssertTrue(activator.wait(for: "Listening on", timeout: 10), activator.output)
        usleep(200_000)
        XCTAssertFalse(activator.output.contains("keying daemon ready"), "nothing runs before a client connects")

        let client = try ns.namespace.perform {
            try KeyingDaemonClient(name: name, identityMap: nil, logger: Logger(label: "test.activation"))
        }
        XCTAssertTrue(activator.wait(for: "keying daemon ready", timeout: 10), activator.output)
        XCTAssertTrue(activator.output.contains("address=the socket systemd passed"), activator.output)
        XCTAssertEqual(client.daemon.pid, activator.pid, "the activator's process became the daemon")
        XCTAssertTrue(client.isConnected)
        XCTAssertFalse(
            activator.output.contains("cannot listen"), "the daemon bound nothing of its own: \(activator.output)")
    }
}
