import Foundation
import Keying
import NetnsTestSupport
import TierTesting
import XCTest
import XFRM

/// Tier 3: a client process killed (SIGKILL) while it holds 20 secured connections through the namespace's keying
/// daemon. The daemon learns from the kernel that the 20 sockets are gone and releases them at its next sweep or
/// two: nothing of theirs is left in charon or in the client's kernel within the close grace and a few seconds.
/// When one sweep releases them, their CHILD_SAs all ride on one IKE SA that carries nothing else, so the daemon ends
/// that IKE SA in one DELETE exchange instead of deleting them one after another (printed).
final class DepartedClientTests: XCTestCase {
    func testAKilledClientsConnectionsEndWithTheirIKESA() throws {
        try inESPKernel(self, timeout: 300) {
            let binaries = URL(
                fileURLWithPath: try FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")
            ).deletingLastPathComponent().path
            let echo = "\(binaries)/secure-echo"
            let certificates = try TestCertificates(names: ["a.example", "b.example"])
            defer { certificates.remove() }
            let c = certificates.folder
            let pair = try NamespacePair(prefix: "departed")
            defer { pair.remove() }
            let charonA = try CharonDaemon(namespace: pair.a.namespace)
            defer { charonA.stop() }
            let aConf = try certificates.writeKeyingFile(for: "a.example", charon: charonA.socketPath)
            let bConf = try certificates.writeKeyingFile(for: "b.example", charon: "private")
            let level = ProcessInfo.processInfo.environment["WSS_TEST_LOG"] ?? "notice"
            let daemon = try NamespaceProcess(
                in: pair.a, environment: ["WSS_KEYING_CONFIG": aConf, "WSS_LOG": "\(level),stderr"],
                ["\(binaries)/wss-keyd"], log: "\(c)/keyd-a.log")
            defer { daemon.terminate() }
            XCTAssertTrue(daemon.wait(for: "keying daemon ready", timeout: 20), daemon.output)
            let server = try NamespaceProcess(
                in: pair.b, environment: ["WSS_KEYING_CONFIG": bConf, "WSS_KEYD": "none"],
                [echo, "serve-many", "--bind", "\(pair.addressB4)", "--port", "27015", "--seconds", "120"],
                log: "\(c)/server.log")
            defer { server.terminate() }
            XCTAssertTrue(server.wait(for: "listening", timeout: 20), server.output)
            let client = try NamespaceProcess(
                in: pair.a, environment: ["WSS_LOG": "\(level),stderr"],
                [
                    echo, "hold", "--server", "\(pair.addressB4)", "--target", "host/b.example", "--connections",
                    "20", "--linger", "120",
                ], log: "\(c)/client.log")
            defer { client.terminate() }
            XCTAssertTrue(client.wait(for: "echoed 20/20", timeout: 90), client.output)
            let xfrmA = try XFRMClient(namespace: pair.a.namespace)
            XCTAssertGreaterThanOrEqual(try xfrmA.states().filter { !$0.isLarval }.count, 40)

            kill(client.pid, SIGKILL)
            XCTAssertTrue(client.waitForExit(timeout: 5))
            let killed = Date()
            var conns: [String] = []
            var left: [XFRMState] = []
            repeat {
                usleep(100_000)
                conns = try charonA.vici.getConns().filter { $0.contains("-c") }
                left = try xfrmA.states().filter { !$0.isLarval }
            } while (!conns.isEmpty || !left.isEmpty) && Date().timeIntervalSince(killed) < 20
            print(
                "20 connections of a killed client released \(String(format: "%.2f", Date().timeIntervalSince(killed))) s"
                    + " after the kill (2 s close grace included)\nwss-keyd:\n\(daemon.output.suffix(2000))")
            XCTAssertEqual(conns, [], "their conns are unloaded")
            XCTAssertEqual(left.map(\.id), [], "their SAs are gone from the client's kernel")
            // Released in one sweep, they end with their IKE SA at once; a loaded host may spread them over two
            // sweeps, and then the first ones go one by one (the outcome above is the same).
            let atOnce = daemon.output.contains(
                "released departed sockets' connections with the IKE SA that carried only them")
            print("their IKE SA ended with them at once: \(atOnce)")
        }
    }
}
