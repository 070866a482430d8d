import ALE
import Foundation
import Keying
import NetnsTestSupport
import SecureSocket
import TierTesting
import VICI
import XCTest
import XFRM

/// Tier 3: what a process that dies without cleaning up (`kill -9`) leaves in a shared charon, the kernel and
/// the namespace's claim folder is reclaimed by the next engine that starts in that namespace. The processes
/// secure their own sockets (`WSS_KEYD=none`: no keying daemon), as a process does where no `wss-keyd` is installed.
final class ReclaimTests: XCTestCase {
    func testAKilledClientsClaimsConnsAndSAsAreReclaimedByTheNextProcess() throws {
        try inESPKernel(self, timeout: 300) {
            let binaries = URL(
                fileURLWithPath: try FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")
            )
            .deletingLastPathComponent().path
            let echo = "\(binaries)/secure-echo"
            let certificates = try TestCertificates(names: ["a.example", "b.example"])
            defer { certificates.remove() }
            let c = certificates.folder
            let pair = try NamespacePair(prefix: "rc")
            defer { pair.remove() }
            let charonA = try CharonDaemon(namespace: pair.a.namespace)
            defer { charonA.stop() }
            let aConf = try certificates.writeKeyingFile(for: "a.example", charon: charonA.socketPath)
            let bConf = try certificates.writeKeyingFile(for: "b.example", charon: "private")
            let server = try NamespaceProcess(
                in: pair.b, environment: ["WSS_KEYING_CONFIG": bConf, "WSS_KEYD": "none"],
                [
                    echo, "serve-many", "--bind", "\(pair.addressB4)", "--port", "27015",
                    "--seconds", "120",
                ], log: "\(c)/server.log")
            XCTAssertTrue(server.wait(for: "listening", timeout: 20), server.output)
            let client = try NamespaceProcess(
                in: pair.a, environment: ["WSS_KEYING_CONFIG": aConf, "WSS_KEYD": "none"],
                [
                    echo, "hold", "--server", "\(pair.addressB4)", "--target", "host/b.example",
                    "--connections", "20", "--linger", "120",
                ], log: "\(c)/client.log")
            XCTAssertTrue(client.wait(for: "echoed 20/20", timeout: 90), client.output)
            let pid = client.pid
            let folder = ReqidAllocator.defaultDirectory(for: pair.a.namespace)
            let xfrmA = try XFRMClient(namespace: pair.a.namespace)
            let connsBefore = try charonA.vici.getConns().filter { $0.hasPrefix("wss\(pid)x") }
            let claimsBefore = try FileManager.default.contentsOfDirectory(atPath: folder)
            let sasBefore = try xfrmA.states().filter { !$0.isLarval }
            XCTAssertGreaterThanOrEqual(connsBefore.count, 20, "the client's per-flow conns: \(connsBefore.count)")
            XCTAssertGreaterThanOrEqual(sasBefore.count, 40)
            XCTAssertEqual(
                try xfrmA.policies().filter { !$0.direction.isSocketPolicy && !$0.templates.isEmpty }.count, 40,
                "each held connection's flow is covered, out and in")
            XCTAssertFalse(claimsBefore.isEmpty)

            kill(pid, SIGKILL)
            XCTAssertTrue(client.waitForExit(timeout: 5))
            // Still there: nobody has cleaned up yet.
            XCTAssertEqual(try charonA.vici.getConns().filter { $0.hasPrefix("wss\(pid)x") }.count, connsBefore.count)

            // The next process in the namespace (here an engine with a backend on the same charon) reclaims.
            let started = Date()
            let backend = try StrongSwanBackend(
                vici: try VICIClient(path: charonA.socketPath),
                credentials: .init(
                    identity: "a.example",
                    method: .certificate(
                        certificate: try certificates.certificate("a.example"),
                        privateKey: try certificates.key("a.example"),
                        authorities: [try certificates.authority()])))
            let engine = try SecureSocketEngine(.init(keying: backend, namespace: pair.a.namespace))
            var left: (conns: [String], claims: [String], sas: [XFRMState]) = ([], [], [])
            let deadline = Date().addingTimeInterval(5)
            repeat {
                left = (
                    try charonA.vici.getConns().filter { $0.hasPrefix("wss\(pid)x") },
                    try FileManager.default.contentsOfDirectory(atPath: folder),
                    try xfrmA.states().filter { !$0.isLarval }
                )
                if left.conns.isEmpty && left.claims.isEmpty && left.sas.isEmpty { break }
                usleep(100_000)
            } while Date() < deadline
            print(
                "reclaimed \(connsBefore.count) conns, \(claimsBefore.count) claims, \(sasBefore.count) SAs of pid \(pid) in "
                    + String(format: "%.2f s", Date().timeIntervalSince(started)))
            XCTAssertEqual(left.conns, [], "the dead process's conns are unloaded")
            XCTAssertEqual(left.claims, [], "its reqid claims are gone")
            XCTAssertEqual(left.sas.count, 0, "its SAs are gone from the kernel: \(left.sas.prefix(2))")
            // Its connections' flow covers go, but for flows the kernel still answers for in TIME_WAIT: those now
            // expire as a released connection's do (no bare ACK of theirs may leave in clear meanwhile).
            let covers = try xfrmA.policies().filter { !$0.direction.isSocketPolicy && !$0.templates.isEmpty }
            XCTAssertEqual(
                covers.filter { $0.lifetime.hardAddExpiresSeconds != 120 }.map(\.selector), [],
                "no cover of the dead process's flows is left for good")
            engine.shutdown()
        }
    }
}
