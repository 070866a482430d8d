import Foundation
import NetnsTestSupport
import TierTesting
import XCTest
import XFRM

/// Tier 3: applications without CAP_NET_ADMIN secure their sockets through the namespace's keying daemon
/// (`wss-keyd`, run as root in each namespace). The C sample client and server run as uid 65534 (nobody, no
/// capabilities), each in its namespace: the server's listener and accepted connection, the client's WSAConnect,
/// both queries, ESP on the wire and no clear text. A user the keying file does not admit is refused, and without
/// a daemon an unprivileged process gets WSAENETDOWN.
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
            let keying = try ["a", "b"].map { name in
                try programs.writeKeyingFile(
                    name,
                    [
                        "identity \(name).example", "psk \"\(secret)\"", "charon private", "negotiation-timeout 10",
                        "client-user 65534",
                    ])
            }
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

            let connected = try pair.a.exec(client, timeout: 60, check: false)
            print("client (exit \(connected.status)):\n\(connected.output)")
            XCTAssertEqual(connected.status, 0)
            XCTAssertTrue(connected.output.contains("received: 91011121314"))
            XCTAssertTrue(connected.output.contains("query: size 24 flags 0x3 SECURED ENCRYPTED"))

            XCTAssertTrue(server.waitForExit(timeout: 20), "the server ends after its one connection")
            print("server:\n\(server.output)")
            if !server.isRunning { XCTAssertEqual(server.terminationStatus, 0) }
            XCTAssertTrue(server.output.contains("received: 12345678"))
            XCTAssertTrue(server.output.contains("flags 0x3 SECURED ENCRYPTED"))
            XCTAssertTrue(server.output.contains("peer machine: a.example"), "the token names the authenticated client")

            capture.stop()
            let analysis = try capture.analyse(markers: [Array("12345678".utf8), Array("91011121314".utf8)])
            XCTAssertGreaterThan(analysis.espPackets, 0)
            XCTAssertEqual(analysis.plainTCPPackets, 0, analysis.summary)
            XCTAssertFalse(analysis.markerFound)
        }
    }
}
