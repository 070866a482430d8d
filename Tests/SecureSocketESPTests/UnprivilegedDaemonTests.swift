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
            let binaries = URL(
                fileURLWithPath: try FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")
            )
            .deletingLastPathComponent().path
            let daemonBinary = "\(binaries)/wss-keyd"
            XCTAssertTrue(FileManager.default.fileExists(atPath: daemonBinary), "build the wss-keyd product first")
            // A folder nobody can read (the programs) but not write; the keying files stay root's (0600).
            let folder = "/tmp/wss-unprivileged-\(UUID().uuidString)"
            try FileManager.default.createDirectory(
                atPath: folder, withIntermediateDirectories: false, attributes: [.posixPermissions: 0o755])
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
                identity \(identity)
                psk "\(secret)"
                charon private
                negotiation-timeout 10
                client-user 65534
                """.write(toFile: "\(folder)/\(name).conf", atomically: true, encoding: .utf8)
                XCTAssertEqual(chmod("\(folder)/\(name).conf", 0o600), 0)
            }

            let pair = try NamespacePair(prefix: "unpriv")
            defer { pair.remove() }
            let capture = try PacketCapture(
                namespace: pair.b, interface: pair.interfaceB, file: "\(folder)/veth-b.pcap")
            defer { capture.stop() }

            // Without a daemon, an unprivileged process cannot secure a socket, and says why.
            let alone = try pair.a.exec(
                [
                    "setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "\(folder)/secure_tcp_client",
                    "\(pair.addressB4)", "27015", "host/b.example",
                ], timeout: 30, check: false)
            XCTAssertNotEqual(alone.status, 0)
            XCTAssertTrue(alone.output.contains("10050"), "WSAENETDOWN without a daemon: \(alone.output)")

            var daemons: [Process] = []
            defer {
                for daemon in daemons where daemon.isRunning { daemon.terminate() }
                for name in ["a", "b"] {
                    let log = (try? String(contentsOfFile: "\(folder)/keyd-\(name).log", encoding: .utf8)) ?? ""
                    print("wss-keyd \(name):\n\(log.suffix(6000))")
                }
            }
            for (namespace, name) in [(pair.a, "a"), (pair.b, "b")] {
                let log = "\(folder)/keyd-\(name).log"
                FileManager.default.createFile(atPath: log, contents: nil)
                let daemon = Process()
                daemon.executableURL = URL(fileURLWithPath: Command.locate("ip")!)
                daemon.arguments = [
                    "netns", "exec", namespace.name, "env", "WSS_KEYING_CONFIG=\(folder)/\(name).conf",
                    "WSS_LOG=\(ProcessInfo.processInfo.environment["WSS_TEST_LOG"] ?? "info"),stderr", daemonBinary,
                ]
                daemon.standardOutput = FileHandle(forWritingAtPath: log)
                daemon.standardError = FileHandle(forWritingAtPath: log)
                try daemon.run()
                daemons.append(daemon)
                let text = { (try? String(contentsOfFile: log, encoding: .utf8)) ?? "" }
                let ready = Date().addingTimeInterval(20)
                while Date() < ready, daemon.isRunning, !text().contains("keying daemon ready") { usleep(20_000) }
                XCTAssertTrue(text().contains("keying daemon ready"), "wss-keyd \(name): \(text())")
            }

            // A user the keying file does not admit is refused by the daemon.
            let stranger = try pair.a.exec(
                [
                    "setpriv", "--reuid=65533", "--regid=65534", "--clear-groups", "\(folder)/secure_tcp_client",
                    "\(pair.addressB4)", "27015", "host/b.example",
                ], timeout: 30, check: false)
            XCTAssertNotEqual(stranger.status, 0)
            XCTAssertTrue(stranger.output.contains("10013"), "WSAEACCES for a user not admitted: \(stranger.output)")

            let serverLog = "\(folder)/server.log"
            FileManager.default.createFile(atPath: serverLog, contents: nil)
            let server = Process()
            server.executableURL = URL(fileURLWithPath: Command.locate("ip")!)
            server.arguments = [
                "netns", "exec", pair.b.name, "setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
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
                    "setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "\(folder)/secure_tcp_client",
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
            if !server.isRunning { XCTAssertEqual(server.terminationStatus, 0) }
            XCTAssertTrue(serverText().contains("received: 12345678"))
            XCTAssertTrue(serverText().contains("flags 0x3 SECURED ENCRYPTED"))
            XCTAssertTrue(serverText().contains("peer machine: a.example"), "the token names the authenticated client")

            capture.stop()
            let analysis = try capture.analyse(markers: [Array("12345678".utf8), Array("91011121314".utf8)])
            XCTAssertGreaterThan(analysis.espPackets, 0)
            XCTAssertEqual(analysis.plainTCPPackets, 0, analysis.summary)
            XCTAssertFalse(analysis.markerFound)
            for daemon in daemons {
                daemon.terminate()
                daemon.waitUntilExit()
            }
        }
    }
}
