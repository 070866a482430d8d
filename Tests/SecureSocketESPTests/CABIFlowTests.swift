import Foundation
import NetnsTestSupport
import TierTesting
import XCTest
import XFRM

/// Tier 3: the C sample programs (CModules/CSecureSocketABI/examples), compiled with gcc against
/// libWinsockSecureSocket.so, one process per namespace, each starting its namespace's keying daemon (root
/// processes, no daemon running), keyed by the charon its keying file names (a private one per namespace here).
/// This is the path a C service takes: no Swift in sight.
final class CABIFlowTests: XCTestCase {
    func testCSampleClientAndServerOverIPsec() throws {
        try inESPKernel(self, timeout: 300) {
            let root = try XCTUnwrap(TierProbe.packageRoot(from: "\(#filePath)"))
            let programs = try CPrograms(
                [
                    "CModules/CSecureSocketABI/examples/secure_tcp_client.c",
                    "CModules/CSecureSocketABI/examples/secure_tcp_server.c",
                ], packageRoot: root)
            defer { programs.remove() }
            let folder = programs.folder
            let secret = UUID().uuidString
            // The library refuses a keying file that group or others can write; these hold a key (mode 0600).
            let keying = try ["a", "b"].map { name in
                try programs.writeKeyingFile(
                    name,
                    [
                        "# keying for the C sample, host \(name)", "identity \(name).example", "psk \"\(secret)\"",
                        "charon private", "negotiation-timeout 10",
                    ])
            }

            let pair = try NamespacePair(prefix: "cabi")
            defer { pair.remove() }
            let capture = try PacketCapture(
                namespace: pair.b, interface: pair.interfaceB, file: "\(folder)/veth-b.pcap")
            defer { capture.stop() }

            let server = try NamespaceProcess(
                in: pair.b, environment: ["WSS_KEYING_CONFIG": keying[1]],
                [programs.program("secure_tcp_server"), "\(pair.addressB4)", "27015"], log: "\(folder)/server.log")
            defer { server.terminate() }
            XCTAssertTrue(server.wait(for: "listening", timeout: 20), "server: \(server.output)")

            let client = try pair.a.exec(
                [
                    "env", "WSS_KEYING_CONFIG=\(keying[0])", programs.program("secure_tcp_client"),
                    "\(pair.addressB4)", "27015", "host/b.example",
                ], timeout: 60, check: false)
            SampleOutput.assertSecuredExchange(client: client, server: server)

            capture.stop()
            let analysis = try capture.analyse(markers: [Array("12345678".utf8), Array("91011121314".utf8)])
            XCTAssertGreaterThan(analysis.espPackets, 0)
            XCTAssertEqual(analysis.plainTCPPackets, 0, analysis.summary)
            XCTAssertFalse(analysis.markerFound)
            let leftover = try Command.run(["pgrep", "-f", folder], check: false).output
            XCTAssertEqual(
                leftover.trimmingCharacters(in: .whitespacesAndNewlines), "", "no process of the sample left")
            if TierProbe.insideUML {
                // The private charons end with the keying daemons the processes started, once they are idle.
                let charons = Date().addingTimeInterval(15)
                var left = ""
                repeat {
                    left = try Command.run(["pgrep", "-f", "/usr/lib/ipsec/charon"], check: false).output
                    if left.isEmpty { break }
                    usleep(50_000)
                } while Date() < charons
                XCTAssertEqual(left, "", "no charon outlives the sample programs")
                let daemons = try Command.run(["pgrep", "-f", "wss-keyd"], check: false).output
                XCTAssertEqual(daemons, "", "the keying daemons the programs started ended once idle")
            }
        }
    }
}
