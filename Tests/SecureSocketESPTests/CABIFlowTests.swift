import Foundation
import NetnsTestSupport
import TierTesting
import XCTest
import XFRM

/// Tier 3: the C sample programs (CModules/CSecureSocketABI/examples), compiled with gcc against
/// libWinsockSecureSocket.so, one process per namespace, each keyed by the charon its keying file names
/// (a private one per process here). This is the path a C service takes: no Swift in sight.
final class CABIFlowTests: XCTestCase {
    func testCSampleClientAndServerOverIPsec() throws {
        try inESPKernel(self, timeout: 300) {
            let root = try XCTUnwrap(TierProbe.packageRoot(from: "\(#filePath)"))
            let binaries = URL(
                fileURLWithPath: try FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")
            )
            .deletingLastPathComponent().path
            let library = "\(binaries)/libWinsockSecureSocket.so"
            XCTAssertTrue(
                FileManager.default.fileExists(atPath: library), "build the WinsockSecureSocket product first")
            let folder = FileManager.default.temporaryDirectory.appendingPathComponent("cabi-\(UUID().uuidString)").path
            try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
            defer { try? FileManager.default.removeItem(atPath: folder) }
            for program in ["secure_tcp_client", "secure_tcp_server"] {
                try Command.run(
                    [
                        "gcc", "-Wall", "-Wextra", "-Werror", "-std=c11", "-I",
                        root.path + "/CModules/CSecureSocketABI",
                        "-o", "\(folder)/\(program)", root.path + "/CModules/CSecureSocketABI/examples/\(program).c",
                        "-L", binaries, "-lWinsockSecureSocket", "-Wl,-rpath,\(binaries)",
                    ], timeout: 120)
            }
            let secret = UUID().uuidString
            for (name, identity) in [("a", "a.example"), ("b", "b.example")] {
                try """
                # keying for the C sample, host \(name)
                identity \(identity)
                psk "\(secret)"
                charon private
                negotiation-timeout 10
                """.write(toFile: "\(folder)/\(name).conf", atomically: true, encoding: .utf8)
                // The library refuses a keying file that group or others can write; this one holds a key.
                XCTAssertEqual(chmod("\(folder)/\(name).conf", 0o600), 0)
            }

            let pair = try NamespacePair(prefix: "cabi")
            defer { pair.remove() }
            let capture = try PacketCapture(
                namespace: pair.b, interface: pair.interfaceB, file: "\(folder)/veth-b.pcap")
            defer { capture.stop() }

            let serverLog = "\(folder)/server.log"
            FileManager.default.createFile(atPath: serverLog, contents: nil)
            let server = Process()
            server.executableURL = URL(fileURLWithPath: Command.locate("ip")!)
            server.arguments = [
                "netns", "exec", pair.b.name, "env", "WSS_KEYING_CONFIG=\(folder)/b.conf",
                "\(folder)/secure_tcp_server", "\(pair.addressB4)", "27015",
            ]
            server.standardOutput = FileHandle(forWritingAtPath: serverLog)
            server.standardError = FileHandle(forWritingAtPath: serverLog)
            try server.run()
            defer { if server.isRunning { server.terminate() } }
            let serverText = { (try? String(contentsOfFile: serverLog, encoding: .utf8)) ?? "" }
            let deadline = Date().addingTimeInterval(20)
            while Date() < deadline, server.isRunning, !serverText().contains("listening") { usleep(20_000) }
            XCTAssertTrue(serverText().contains("listening"), "server: \(serverText())")

            let client = try pair.a.exec(
                [
                    "env", "WSS_KEYING_CONFIG=\(folder)/a.conf", "\(folder)/secure_tcp_client",
                    "\(pair.addressB4)", "27015", "host/b.example",
                ], timeout: 60, check: false)
            print("client (exit \(client.status)):\n\(client.output)")
            XCTAssertEqual(client.status, 0)
            XCTAssertTrue(client.output.contains("received: 91011121314"))
            XCTAssertTrue(client.output.contains("query: size 24 flags 0x3 SECURED ENCRYPTED"))

            let serverDeadline = Date().addingTimeInterval(20)
            while server.isRunning && Date() < serverDeadline { usleep(20_000) }
            print("server (exit \(server.isRunning ? -1 : server.terminationStatus)):\n\(serverText())")
            XCTAssertFalse(server.isRunning)
            XCTAssertEqual(server.terminationStatus, 0)
            XCTAssertTrue(serverText().contains("received: 12345678"))
            XCTAssertTrue(serverText().contains("flags 0x3 SECURED ENCRYPTED"))
            XCTAssertTrue(serverText().contains("peer machine: a.example"), "the token names the authenticated client")

            capture.stop()
            let analysis = try capture.analyse(markers: [Array("12345678".utf8), Array("91011121314".utf8)])
            XCTAssertGreaterThan(analysis.espPackets, 0)
            XCTAssertEqual(analysis.plainTCPPackets, 0, analysis.summary)
            XCTAssertFalse(analysis.markerFound)
            let leftover = try Command.run(["pgrep", "-f", folder], check: false).output
            XCTAssertEqual(
                leftover.trimmingCharacters(in: .whitespacesAndNewlines), "", "no process of the sample left")
            if TierProbe.insideUML {
                // The private charons end with the processes that started them.
                let charons = Date().addingTimeInterval(5)
                var left = ""
                repeat {
                    left = try Command.run(["pgrep", "-f", "/usr/lib/ipsec/charon"], check: false).output
                    if left.isEmpty { break }
                    usleep(50_000)
                } while Date() < charons
                XCTAssertEqual(left, "", "no charon outlives the sample programs")
            }
        }
    }
}
