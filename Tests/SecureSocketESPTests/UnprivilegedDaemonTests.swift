import Foundation
import NetnsTestSupport
import TierTesting
import XCTest
import XFRM

/// Tier 3: applications without CAP_NET_ADMIN secure their sockets through the namespace's keying daemon
/// (`wss-keyd`, run as root in each namespace). The C sample client and server run as uid 65534 (nobody, no
/// capabilities), each in its namespace: the server's listener and accepted connection, the client's WSAConnect,
/// both queries, ESP on the wire and no clear text. A user the keying file does not admit is refused, and without
/// a daemon an unprivileged process gets WSAENETDOWN. `wss-inspect` asks the daemon, which shows each user only
/// what its own processes hold (root everything), and `follow` streams the connection's life.
final class UnprivilegedDaemonTests: XCTestCase {
    func testUnprivilegedCSampleClientAndServerThroughTheKeyingDaemon() throws {
        try inESPKernel(self, timeout: 300) {
            let root = try XCTUnwrap(TierProbe.packageRoot(from: "\(#filePath)"))
            let programs = try CPrograms(
                [
                    "CModules/CSecureSocketABI/examples/secure_tcp_client.c",
                    "CModules/CSecureSocketABI/examples/secure_tcp_server.c",
                ], packageRoot: root)
            defer { programs.remove() }
            let secret = UUID().uuidString
            // b admits a second user, 65533, who must see none of nobody's sockets.
            let keying = try ["a", "b"].map { name in
                try programs.writeKeyingFile(
                    name,
                    [
                        "identity \(name).example", "psk \"\(secret)\"", "charon private", "negotiation-timeout 10",
                        "client-user 65534",
                    ] + (name == "b" ? ["client-user 65533"] : []))
            }
            let inspect = try programs.copyTool("wss-inspect")
            let pair = try NamespacePair(prefix: "unpriv")
            defer { pair.remove() }
            let capture = try PacketCapture(
                namespace: pair.b, interface: pair.interfaceB, file: "\(programs.folder)/veth-b.pcap")
            defer { capture.stop() }
            let clientArguments = [
                programs.program("secure_tcp_client"), "\(pair.addressB4)", "27015", "host/b.example",
            ]
            let client = CPrograms.asNobody(clientArguments)

            // Without a daemon, an unprivileged process cannot secure a socket, and says why.
            let alone = try pair.a.exec(client, timeout: 30, check: false)
            XCTAssertNotEqual(alone.status, 0)
            XCTAssertTrue(alone.output.contains("10050"), "WSAENETDOWN without a daemon: \(alone.output)")

            let level = ProcessInfo.processInfo.environment["WSS_TEST_LOG"] ?? "info"
            let daemons = try [pair.a, pair.b].enumerated().map { index, namespace in
                try programs.startDaemon(in: namespace, keying: keying[index], log: level)
            }
            defer {
                for daemon in daemons {
                    daemon.terminate()
                    print("wss-keyd:\n\(daemon.output.suffix(6000))")
                }
            }
            for daemon in daemons { XCTAssertTrue(daemon.output.contains("keying daemon ready"), daemon.output) }

            // A user the keying file does not admit is refused by the daemon.
            let stranger = try pair.a.exec(
                CPrograms.asNobody(clientArguments, uid: 65533), timeout: 30, check: false)
            XCTAssertNotEqual(stranger.status, 0)
            XCTAssertTrue(stranger.output.contains("10013"), "WSAEACCES for a user not admitted: \(stranger.output)")

            let server = try NamespaceProcess(
                in: pair.b, CPrograms.asNobody([programs.program("secure_tcp_server"), "\(pair.addressB4)", "27015"]),
                log: "\(programs.folder)/server.log")
            defer { server.terminate() }
            XCTAssertTrue(server.wait(for: "listening", timeout: 20), "server: \(server.output)")

            // wss-inspect asks the daemon: root sees nobody's listener and who holds it; nobody sees its own;
            // another admitted user sees none of it.
            func inspected(_ command: [String]) throws -> String {
                // The listener shows once the daemon has seen it listen (bounded).
                var output = ""
                for _ in 0..<30 {
                    output = try pair.b.exec(command, timeout: 30, check: false).output
                    if output.contains("responder on port 27015") { break }
                    usleep(200_000)
                }
                return output
            }
            let byRoot = try inspected([inspect, "--json"])
            XCTAssertTrue(byRoot.contains("\"keying\" : \"strongswan\""), byRoot)
            XCTAssertTrue(byRoot.contains("\"uid\" : 65534") && byRoot.contains("responder on port 27015"), byRoot)
            let byNobody = try inspected(CPrograms.asNobody([inspect]))
            XCTAssertTrue(byNobody.contains("responder on port 27015") && byNobody.contains("uid 65534"), byNobody)
            let byOther = try pair.b.exec(CPrograms.asNobody([inspect], uid: 65533), timeout: 30, check: false).output
            XCTAssertTrue(byOther.contains("0 endpoints you may see"), byOther)
            XCTAssertFalse(byOther.contains("cookie"), byOther)
            let stray = try pair.a.exec(CPrograms.asNobody([inspect], uid: 65533), timeout: 30, check: false).output
            XCTAssertTrue(stray.contains("may not use the keying daemon"), "a user not admitted: \(stray)")
            let follow = try NamespaceProcess(
                in: pair.b, [inspect, "follow", "--json", "--seconds", "60"], log: "\(programs.folder)/follow.log")
            defer { follow.terminate() }
            XCTAssertTrue(follow.wait(for: "\"event\":\"present\"", timeout: 20), "follow: \(follow.output)")

            let connected = try pair.a.exec(client, timeout: 60, check: false)
            SampleOutput.assertSecuredExchange(client: connected, server: server)

            // The follower saw the accepted connection come, get its SAs and go.
            for event in ["added", "sa-added", "removed"] {
                XCTAssertTrue(follow.wait(for: "\"event\":\"\(event)\"", timeout: 20), "\(event): \(follow.output)")
            }
            follow.terminate()
            print("wss-inspect follow:\n\(follow.output.suffix(3000))")

            capture.stop()
            let analysis = try capture.analyse(markers: [Array("12345678".utf8), Array("91011121314".utf8)])
            XCTAssertGreaterThan(analysis.espPackets, 0)
            XCTAssertEqual(analysis.plainTCPPackets, 0, analysis.summary)
            XCTAssertFalse(analysis.markerFound)
        }
    }
}
