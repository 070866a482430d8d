import Foundation
import NetnsTestSupport
import TierTesting
import XCTest
import XFRM

/// Tier 3: both keying daemons killed (SIGKILL) under an established connection: the client's (started by root,
/// as systemd would) and the server's (started by the server's library). The connection keeps flowing over its
/// kernel SAs while no daemon runs and after the next ones start: each next daemon keeps what the dead one left
/// while a live socket uses it (its reqid claim stays taken), and removes it once the socket is gone. The server's
/// library starts its next daemon by itself and secures its listener again there, without a call of the server's;
/// the client (uid 65534, the C ABI) passes its connection to its next daemon as soon as one answers, which adopts it
/// under the reqid of its SAs (its query answers secured and encrypted again). A new connection is then secured end
/// to end. Nothing leaves in clear, and nothing is left in either kernel at the end.
final class DaemonRestartTests: XCTestCase {
    /// The restart client and the echo server, both ends' keying, a namespace pair and a capture.
    static func testBed(prefix: String) throws -> DaemonTestBed {
        try DaemonTestBed(
            programs: [
                "CModules/CSecureSocketABI/test-programs/restart_client.c",
                "CModules/CSecureSocketABI/test-programs/echo_server.c",
            ], packageRoot: try XCTUnwrap(TierProbe.packageRoot(from: "\(#filePath)")), prefix: prefix)
    }

    func testAKilledDaemonsConnectionsKeepFlowingAndTheNextDaemonTakesOver() throws {
        try inESPKernel(self, timeout: 300) {
            let bed = try Self.testBed(prefix: "restart")
            defer { bed.remove() }
            let (programs, keying, pair, capture, level) = (bed.programs, bed.keying, bed.pair, bed.capture, bed.level)
            let first = try bed.startDaemon(0)
            defer { first.terminate() }
            XCTAssertTrue(first.output.contains("keying daemon ready"), first.output)

            let server = try NamespaceProcess(
                in: pair.b,
                environment: [
                    "WSS_KEYING_CONFIG": keying[1], "WSS_LOG": "\(level),stderr",
                    "WSS_KEYD": "\(programs.binaries)/wss-keyd",
                ], [programs.program("echo_server"), "\(pair.addressB4)", "27017"], log: "\(programs.folder)/server.log"
            )
            defer { server.terminate() }
            XCTAssertTrue(server.wait(for: "listening", timeout: 20), "server: \(server.output)")

            let marker = "restart-\(UUID().uuidString)"
            let go = "\(programs.folder)/go"
            let client = try NamespaceProcess(
                in: pair.a, environment: ["WSS_LOG": "\(level),stderr"],
                CPrograms.asNobody([
                    programs.program("restart_client"), "\(pair.addressB4)", "27017", "host/b.example", marker, go,
                ]), log: "\(programs.folder)/client.log")
            defer { client.terminate() }
            XCTAssertTrue(client.wait(for: "first connection echoes", timeout: 30), "client: \(client.output)")

            // The daemon dies; the connection rides on its kernel SAs with no daemon at all for a while.
            let xfrm = try XFRMClient(namespace: pair.a.namespace)
            let before = try xfrm.states().filter { !$0.isLarval }
            XCTAssertEqual(before.count, 2, "one SA pair: \(before.map(\.id))")
            // The server's daemon too: the one its library started (the embedded start), a child of the server.
            let serverDaemon = try XCTUnwrap(
                Int32(
                    try Command.run(["pgrep", "-P", "\(server.pid)", "-x", "wss-keyd"], timeout: 5).output
                        .trimmingCharacters(in: .whitespacesAndNewlines)),
                "the server's embedded daemon")
            kill(first.pid, SIGKILL)
            kill(serverDaemon, SIGKILL)
            XCTAssertTrue(first.waitForExit(timeout: 10))
            let firstLog = first.output
            usleep(1_500_000)
            // The next daemon (systemd would start it; here the test does) keeps the dead one's SAs: the client's
            // socket still uses them. A periodic reclaim pass (every tenth sweep) keeps them too.
            let next = try programs.startDaemon(in: pair.a, keying: keying[0], log: level)
            defer { next.terminate() }
            XCTAssertTrue(next.output.contains("keying daemon ready"), next.output)
            usleep(11_500_000)
            let kept = Set(try xfrm.states().filter { !$0.isLarval }.map(\.id))
            XCTAssertTrue(Set(before.map(\.id)).isSubset(of: kept), "the dead daemon's SAs are kept while used")
            XCTAssertTrue(
                next.output.contains("keeping what a dead process left while live sockets still use its SAs"),
                next.output)
            XCTAssertFalse(next.output.contains("reclaiming what a dead process left"), next.output)

            // The server's library started its next daemon by itself and secured its listener again there,
            // without a call of the server's.
            XCTAssertTrue(server.wait(for: "sockets taken over by the next keying daemon", timeout: 10), server.output)
            // Until then the listener's port stayed covered by the dead daemon's port covers (kept, not reclaimed,
            // while the listener lives): nothing reached it in clear meanwhile.
            XCTAssertTrue(server.output.contains("responders=1"), server.output)
            XCTAssertTrue(server.output.contains("taken=1"), server.output)
            // The client's library passed its connection to the next daemon as soon as it answered: adopted under
            // the reqid of its SAs, so its query answers from the kernel again.
            XCTAssertTrue(client.wait(for: "sockets taken over by the next keying daemon", timeout: 10), client.output)
            XCTAssertTrue(
                next.output.contains("connection adopted after its keying daemon went away"), next.output)

            // The client goes on: a new connection through the next daemons, and both connections echo.
            XCTAssertTrue(FileManager.default.createFile(atPath: go, contents: nil))
            XCTAssertTrue(client.waitForExit(timeout: 60), "client: \(client.output)")
            print(
                "client:\n\(client.output)\nfirst wss-keyd (killed):\n\(firstLog.suffix(1500))\n"
                    + "next wss-keyd:\n\(next.output.suffix(3000))\nserver:\n\(server.output.suffix(3000))")
            XCTAssertEqual(client.terminationStatus, 0, client.output)
            XCTAssertTrue(client.output.contains("after the restart: 2 of 2 echo"), client.output)
            XCTAssertTrue(
                client.output.contains("query flags: first 0x3, second 0x3"),
                "both connections are secured and encrypted, the adopted one too: \(client.output)")
            let rounds = client.output.firstMatch(of: /echoed (\d+) of (\d+) while/)
            XCTAssertNotNil(rounds, client.output)
            if let rounds { XCTAssertEqual(rounds.1, rounds.2, "no echo lost while the daemon was restarted") }

            // The client has gone: the next daemon releases its own connection's SAs, and a reclaim pass the
            // dead daemon's (at most ten sweeps later).
            let xfrmB = try XFRMClient(namespace: pair.b.namespace)
            func left() throws -> [XFRMStateID] {
                try (xfrm.states() + xfrmB.states()).filter { !$0.isLarval }.map(\.id)
            }
            let bound = Date().addingTimeInterval(25)
            while try !left().isEmpty, Date() < bound { usleep(250_000) }
            XCTAssertEqual(try left(), [], "nothing is left in either kernel")
            XCTAssertTrue(next.output.contains("reclaiming what a dead process left"), next.output)
            // The first connection's flow is in TIME_WAIT on this side (the client closed first): its cover stays,
            // now expiring as a released connection's does, so the kernel's bare ACKs cannot leave in clear.
            let deadReqid = try XCTUnwrap(before.first?.reqid)
            let covers = try xfrm.policies().filter { policy in
                !policy.direction.isSocketPolicy && policy.templates.contains { $0.reqid == deadReqid }
            }
            XCTAssertEqual(covers.count, 2, "out and in: \(covers)")
            XCTAssertEqual(covers.map(\.lifetime.hardAddExpiresSeconds), [120, 120])

            capture.stop()
            let analysis = try capture.analyse(markers: [Array(marker.utf8)])
            XCTAssertGreaterThan(analysis.espPackets, 20)
            XCTAssertEqual(analysis.plainTCPPackets, 0, analysis.summary)
            XCTAssertFalse(analysis.markerFound)
        }
    }
    /// Tier 3, the faults suite through the daemon: the client daemon's private charon killed (SIGKILL) under an
    /// established connection of an unprivileged C client. The connection keeps flowing over its kernel SAs, the
    /// daemon starts charon again and loads its state back, and a new connection is secured through it; both answer
    /// the query secured and encrypted. Nothing leaves in clear.
    func testADaemonsCharonKilledUnderAConnectionIsStartedAgain() throws {
        try inESPKernel(self, timeout: 300) {
            let bed = try Self.testBed(prefix: "kcharon")
            defer { bed.remove() }
            let (programs, pair, capture, level) = (bed.programs, bed.pair, bed.capture, bed.level)
            let daemons = try [0, 1].map { try bed.startDaemon($0) }
            defer { for daemon in daemons { daemon.terminate() } }
            let server = try NamespaceProcess(
                in: pair.b, environment: ["WSS_LOG": "\(level),stderr"],
                CPrograms.asNobody([programs.program("echo_server"), "\(pair.addressB4)", "27018"]),
                log: "\(programs.folder)/server.log")
            defer { server.terminate() }
            XCTAssertTrue(server.wait(for: "listening", timeout: 20), "server: \(server.output)")
            let marker = "kcharon-\(UUID().uuidString)"
            let go = "\(programs.folder)/go"
            let client = try NamespaceProcess(
                in: pair.a, environment: ["WSS_LOG": "\(level),stderr"],
                CPrograms.asNobody([
                    programs.program("restart_client"), "\(pair.addressB4)", "27018", "host/b.example", marker, go,
                ]), log: "\(programs.folder)/client.log")
            defer { client.terminate() }
            XCTAssertTrue(client.wait(for: "first connection echoes", timeout: 30), "client: \(client.output)")

            let charon = try XCTUnwrap(
                Int32(
                    try Command.run(["pgrep", "-P", "\(daemons[0].pid)", "-x", "charon"], timeout: 5).output
                        .trimmingCharacters(in: .whitespacesAndNewlines)),
                "the client daemon's private charon")
            kill(charon, SIGKILL)
            XCTAssertTrue(
                daemons[0].wait(for: "charon is back: credentials, responder conn and listeners reloaded", timeout: 20),
                daemons[0].output)
            usleep(1_000_000)
            XCTAssertTrue(FileManager.default.createFile(atPath: go, contents: nil))
            XCTAssertTrue(client.waitForExit(timeout: 60), "client: \(client.output)")
            print("client:\n\(client.output)\nwss-keyd a:\n\(daemons[0].output.suffix(3000))")
            XCTAssertEqual(client.terminationStatus, 0, client.output)
            XCTAssertTrue(client.output.contains("after the restart: 2 of 2 echo"), client.output)
            XCTAssertTrue(client.output.contains("query flags: first 0x3, second 0x3"), client.output)
            let rounds = client.output.firstMatch(of: /echoed (\d+) of (\d+) while/)
            XCTAssertNotNil(rounds, client.output)
            if let rounds { XCTAssertEqual(rounds.1, rounds.2, "no echo lost while charon was started again") }
            capture.stop()
            let analysis = try capture.analyse(markers: [Array(marker.utf8)])
            XCTAssertGreaterThan(analysis.espPackets, 10)
            XCTAssertEqual(analysis.plainTCPPackets, 0, analysis.summary)
            XCTAssertFalse(analysis.markerFound)
        }
    }
}
