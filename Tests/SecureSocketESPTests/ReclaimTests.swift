import ALE
import Foundation
import Keying
import NetnsTestSupport
import SecureSocket
import TierTesting
import XCTest
import XFRM

/// Tier 3: what a process that dies without cleaning up (`kill -9`) leaves in a shared charon, the kernel and
/// the namespace's claim folder is reclaimed by the next engine that starts in that namespace.
final class ReclaimTests: XCTestCase {
    func testAKilledClientsClaimsConnsAndSAsAreReclaimedByTheNextProcess() throws {
        try inESPKernel(self, timeout: 300) {
            let binaries = URL(fileURLWithPath: try FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe"))
                .deletingLastPathComponent().path
            let echo = "\(binaries)/secure-echo"
            let certificates = try TestCertificates(names: ["a.example", "b.example"])
            defer { certificates.remove() }
            let c = certificates.folder
            let pair = try NamespacePair(prefix: "rc")
            defer { pair.remove() }
            let charonA = try CharonDaemon(namespace: pair.a.namespace)
            defer { charonA.stop() }
            try """
                identity a.example
                certificate \(c)/a.example.crt
                private-key \(c)/a.example.key
                authority \(c)/ca.crt
                charon \(charonA.socketPath)
                """.write(toFile: "\(c)/a.conf", atomically: true, encoding: .utf8)
            try """
                identity b.example
                certificate \(c)/b.example.crt
                private-key \(c)/b.example.key
                authority \(c)/ca.crt
                charon private
                """.write(toFile: "\(c)/b.conf", atomically: true, encoding: .utf8)
            let server = Process()
            server.executableURL = URL(fileURLWithPath: Command.locate("ip")!)
            server.arguments = ["netns", "exec", pair.b.name, "env", "WSS_KEYING_CONFIG=\(c)/b.conf", echo, "serve-many",
                                "--bind", "\(pair.addressB4)", "--port", "27015", "--seconds", "120"]
            server.standardOutput = FileHandle.nullDevice
            server.standardError = FileHandle.nullDevice
            try server.run()
            defer { if server.isRunning { server.terminate() } }

            let log = "\(c)/client.log"
            FileManager.default.createFile(atPath: log, contents: nil)
            let client = Process()
            client.executableURL = URL(fileURLWithPath: Command.locate("ip")!)
            client.arguments = ["netns", "exec", pair.a.name, "env", "WSS_KEYING_CONFIG=\(c)/a.conf", echo, "hold",
                                "--server", "\(pair.addressB4)", "--target", "host/b.example", "--connections", "20",
                                "--linger", "120"]
            client.standardOutput = FileHandle(forWritingAtPath: log)
            client.standardError = FileHandle(forWritingAtPath: log)
            usleep(500_000)   // the server's listener
            try client.run()
            defer { if client.isRunning { client.terminate() } }
            let text = { (try? String(contentsOfFile: log, encoding: .utf8)) ?? "" }
            let echoed = Date().addingTimeInterval(90)
            while Date() < echoed, client.isRunning, !text().contains("echoed") { usleep(50_000) }
            XCTAssertTrue(text().contains("echoed 20/20"), text())
            let pid = client.processIdentifier   // `ip netns exec` and `env` exec the program: same pid
            let folder = ReqidAllocator.defaultDirectory(for: pair.a.namespace)
            let xfrmA = try XFRMClient(namespace: pair.a.namespace)
            let connsBefore = try charonA.vici.getConns().filter { $0.hasPrefix("wss\(pid)x") }
            let claimsBefore = try FileManager.default.contentsOfDirectory(atPath: folder)
            let sasBefore = try xfrmA.states().filter { $0.id.spi != 0 }
            XCTAssertGreaterThanOrEqual(connsBefore.count, 20, "the client's per-flow conns: \(connsBefore.count)")
            XCTAssertGreaterThanOrEqual(sasBefore.count, 40)
            XCTAssertFalse(claimsBefore.isEmpty)

            kill(pid, SIGKILL)
            client.waitUntilExit()
            // Still there: nobody has cleaned up yet.
            XCTAssertEqual(try charonA.vici.getConns().filter { $0.hasPrefix("wss\(pid)x") }.count, connsBefore.count)

            // The next process in the namespace (here an engine with a backend on the same charon) reclaims.
            let started = Date()
            let backend = try StrongSwanBackend(vici: try VICIClient(path: charonA.socketPath), credentials: .init(
                identity: "a.example", method: .certificate(certificate: try certificates.certificate("a.example"),
                                                            privateKey: try certificates.key("a.example"),
                                                            authorities: [try certificates.authority()])))
            let engine = try SecureSocketEngine(.init(keying: backend, namespace: pair.a.namespace))
            var left: (conns: [String], claims: [String], sas: [XFRMState]) = ([], [], [])
            let deadline = Date().addingTimeInterval(5)
            repeat {
                left = (try charonA.vici.getConns().filter { $0.hasPrefix("wss\(pid)x") },
                        try FileManager.default.contentsOfDirectory(atPath: folder),
                        try xfrmA.states().filter { $0.id.spi != 0 })
                if left.conns.isEmpty && left.claims.isEmpty && left.sas.isEmpty { break }
                usleep(100_000)
            } while Date() < deadline
            print("reclaimed \(connsBefore.count) conns, \(claimsBefore.count) claims, \(sasBefore.count) SAs of pid \(pid) in "
                  + String(format: "%.2f s", Date().timeIntervalSince(started)))
            XCTAssertEqual(left.conns, [], "the dead process's conns are unloaded")
            XCTAssertEqual(left.claims, [], "its reqid claims are gone")
            XCTAssertEqual(left.sas.count, 0, "its SAs are gone from the kernel: \(left.sas.prefix(2))")
            engine.shutdown()
        }
    }
}
