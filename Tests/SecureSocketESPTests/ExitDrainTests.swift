import Foundation
import NetnsTestSupport
import TierTesting
import XCTest
import XFRM

/// Tier 3: a client that writes its last 64 KiB to a slow reader, closes and exits at once loses nothing: the
/// keying daemon owns the SAs and keeps them while the kernel still holds the orphaned socket's data (the socket
/// diagnostics list it), and releases them after. The server (root) starts its namespace's daemon itself (the
/// embedded start); the client runs as uid 65534 through a daemon started by root.
final class ExitDrainTests: XCTestCase {
    func testAnExitingClientsLastDataArrives() throws {
        try inESPKernel(self, timeout: 300) {
            let bed = try DaemonTestBed(
                programs: [
                    "CModules/CSecureSocketABI/test-programs/drain_client.c",
                    "CModules/CSecureSocketABI/test-programs/slow_server.c",
                ], packageRoot: try XCTUnwrap(TierProbe.packageRoot(from: "\(#filePath)")), prefix: "drain")
            defer { bed.remove() }
            let (programs, keying, pair, capture, level) = (bed.programs, bed.keying, bed.pair, bed.capture, bed.level)
            let daemon = try bed.startDaemon(0)
            defer { daemon.terminate() }
            XCTAssertTrue(daemon.output.contains("keying daemon ready"), daemon.output)

            let server = try NamespaceProcess(
                in: pair.b,
                environment: [
                    "WSS_KEYING_CONFIG": keying[1], "WSS_LOG": "\(level),stderr",
                    "WSS_KEYD": "\(programs.binaries)/wss-keyd",
                ], [programs.program("slow_server"), "\(pair.addressB4)", "27016"], log: "\(programs.folder)/server.log"
            )
            defer { server.terminate() }
            XCTAssertTrue(server.wait(for: "listening", timeout: 20), "server: \(server.output)")

            let started = Date()
            let client = try pair.a.exec(
                CPrograms.asNobody([
                    programs.program("drain_client"), "\(pair.addressB4)", "27016", "host/b.example", "65536",
                ]), timeout: 60, check: false)
            let clientSeconds = Date().timeIntervalSince(started)
            XCTAssertEqual(client.status, 0, client.output)
            XCTAssertTrue(server.waitForExit(timeout: 30), "the server read to the end")
            let serverSeconds = Date().timeIntervalSince(started)
            print(
                "client exited after \(String(format: "%.2f", clientSeconds)) s, the server had read everything after "
                    + "\(String(format: "%.2f", serverSeconds)) s\nserver:\n\(server.output)\n"
                    + "wss-keyd a:\n\(daemon.output.suffix(3000))")
            XCTAssertTrue(server.output.contains("received 65536 bytes, 0 wrong"), server.output)
            XCTAssertGreaterThan(serverSeconds, clientSeconds + 0.5, "the client had exited long before the last byte")

            capture.stop()
            let analysis = try capture.analyse(markers: [])
            XCTAssertGreaterThan(analysis.espPackets, 40)
            XCTAssertEqual(analysis.plainTCPPackets, 0, analysis.summary)

            // Once the orphaned socket is gone, the daemon releases its SAs.
            let xfrm = try XFRMClient(namespace: pair.a.namespace)
            let released = Date().addingTimeInterval(15)
            var left = try xfrm.states().filter { !$0.isLarval }
            while !left.isEmpty, Date() < released {
                usleep(100_000)
                left = try xfrm.states().filter { !$0.isLarval }
            }
            XCTAssertEqual(left.count, 0, "the client's SAs are released after its socket: \(left.map(\.id))")
        }
    }
}
