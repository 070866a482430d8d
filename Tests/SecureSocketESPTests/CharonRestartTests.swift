import ALE
import Foundation
import IPAddressing
import Keying
import NetnsTestSupport
import SecureSocket
import TierTesting
import XCTest
import XFRM

/// Tier 3: a charon killed under established connections (SIGKILL, first the server's, then the client's):
/// the connections keep flowing over their kernel SAs without a clear packet, the library starts its private
/// charon again and loads its state back, and new connections succeed within a bound.
final class CharonRestartTests: XCTestCase {
    typealias Ends = CharonFlowTests.Ends

    func testKilledCharonsAreStartedAgainAndConnectionsSurvive() throws {
        try inESPKernel(self, timeout: 300) {
            let ends = try Ends(auth: .ecdsa)
            defer { ends.close() }
            let capture = try PacketCapture(
                namespace: ends.pair.b, interface: ends.pair.interfaceB,
                file: FileManager.default.temporaryDirectory
                    .appendingPathComponent("cr-\(UUID().uuidString).pcap").path)
            defer {
                capture.stop()
                try? FileManager.default.removeItem(atPath: capture.file)
            }
            let listener = try ends.b.securedListener(in: ends.pair.b, family: .inet, address: ends.pair.addressB4)
            let peer = IPEndpoint(address: ends.pair.addressB4, port: listener.localPort)
            var markers: [[UInt8]] = []

            func connect() throws -> (TestSocket, TestSocket) { try ends.namedConnection(to: peer, through: listener) }
            func echoes(_ connection: (TestSocket, TestSocket), _ label: String) throws {
                let marker = Array("\(label)-\(UUID().uuidString)".utf8)
                markers.append(marker)
                try connection.0.send(marker)
                XCTAssertEqual(try connection.1.receiveExactly(marker.count, timeout: 5), marker, label)
                try connection.1.send(marker)
                XCTAssertEqual(try connection.0.receiveExactly(marker.count, timeout: 5), marker, label)
            }

            let first = try connect()
            try echoes(first, "before")
            var connections = [first]
            for (side, backend, engine) in [("server", ends.backendB, ends.b), ("client", ends.backendA, ends.a)] {
                let daemon = try XCTUnwrap(backend.daemon)
                let killed = Date()
                kill(daemon.pid, SIGKILL)
                // Established connections ride on their kernel SAs meanwhile.
                for (index, connection) in connections.enumerated() { try echoes(connection, "\(side)-down-\(index)") }
                var restartedAfter: Double?
                while Date().timeIntervalSince(killed) < 15, daemon.restarts == 0 || backend.resyncs == 0 {
                    if restartedAfter == nil, daemon.restarts > 0 { restartedAfter = Date().timeIntervalSince(killed) }
                    usleep(20_000)
                }
                print(
                    "\(side): charon running again after \(restartedAfter.map { String(format: "%.2f s", $0) } ?? "-")")
                XCTAssertEqual(daemon.restarts, 1, "\(side): the private charon was started again")
                XCTAssertGreaterThanOrEqual(backend.resyncs, 1, "\(side): credentials and conns loaded again")
                let recovered = Date().timeIntervalSince(killed)
                let started = Date()
                let fresh = try connect()
                print(
                    "\(side) charon killed: running again with its state in \(String(format: "%.2f", recovered)) s;"
                        + " a new connection then took \(String(format: "%.2f", Date().timeIntervalSince(started))) s")
                try echoes(fresh, "\(side)-after")
                XCTAssertEqual(try ends.b.query(fresh.1.fd.rawValue).peerMachineIdentity, "a.example")
                XCTAssertEqual(
                    try engine.query(side == "server" ? fresh.1.fd.rawValue : fresh.0.fd.rawValue).flags,
                    [.secured, .encrypted])
                connections.append(fresh)
                for (index, connection) in connections.enumerated() { try echoes(connection, "\(side)-up-\(index)") }
            }
            capture.stop()
            let analysis = try capture.analyse(markers: markers)
            XCTAssertGreaterThan(analysis.espPackets, 0)
            XCTAssertEqual(analysis.plainTCPPackets, 0, analysis.summary)
            XCTAssertFalse(analysis.markerFound)
            for (client, accepted) in connections {
                ends.a.release(client.fd.rawValue)
                ends.b.release(accepted.fd.rawValue)
                client.closeAbortively()
                accepted.closeAbortively()
            }
            ends.b.release(listener.fd.rawValue)
            listener.closeAbortively()
        }
    }
}

extension CharonRestartTests {
    /// A system charon (one the library only connects to) killed with SIGKILL and started again by its
    /// supervisor (here the test, after half a second): established connections keep flowing over their kernel
    /// SAs, new connections fail closed while it is down, and once it is back the backend loads its
    /// credentials, the responder conn and the listener's children into it again, so new connections succeed.
    func testASystemCharonStartedAgainByItsSupervisorGetsTheStateBack() throws {
        try inESPKernel(self, timeout: 300) {
            let ends = try Ends(auth: .psk, systemCharons: true)
            defer { ends.close() }
            XCTAssertNil(ends.backendB.daemon, "the backend does not own this charon")
            let capture = try PacketCapture(
                namespace: ends.pair.b, interface: ends.pair.interfaceB,
                file: FileManager.default.temporaryDirectory
                    .appendingPathComponent("sc-\(UUID().uuidString).pcap").path)
            defer {
                capture.stop()
                try? FileManager.default.removeItem(atPath: capture.file)
            }
            let listener = try ends.b.securedListener(in: ends.pair.b, family: .inet, address: ends.pair.addressB4)
            defer { listener.closeAbortively() }
            let peer = IPEndpoint(address: ends.pair.addressB4, port: listener.localPort)
            let first = try ends.namedConnection(to: peer, through: listener)
            defer {
                first.0.closeAbortively()
                first.1.closeAbortively()
            }
            let marker = Array("SYSTEM-\(UUID().uuidString)".utf8)

            let server = ends.systemCharons[1]
            kill(server.pid, SIGKILL)
            let killed = Date()
            try first.0.send(marker)
            XCTAssertEqual(try first.1.receiveExactly(marker.count, timeout: 5), marker, "flows while charon is down")
            // While it is down: a new connection is refused (no SAs), never connected in clear.
            let during = try TestSocket.make(in: ends.pair.a.namespace, family: .inet, kind: .tcp)
            defer { during.closeAbortively() }
            try ends.a.setSecurity(during.fd.rawValue)
            XCTAssertThrowsError(try ends.a.connect(during.fd.rawValue, to: peer, timeout: .seconds(1)))

            usleep(500_000)
            try server.restart() // the supervisor
            var resynced: TimeInterval?
            while resynced == nil, Date().timeIntervalSince(killed) < 15 {
                if ends.backendB.resyncs > 0 { resynced = Date().timeIntervalSince(killed) } else { usleep(20_000) }
            }
            let back = try XCTUnwrap(resynced, "the backend reloaded its state into the restarted charon")
            let started = Date()
            let fresh = try ends.namedConnection(to: peer, through: listener)
            defer {
                fresh.0.closeAbortively()
                fresh.1.closeAbortively()
            }
            print(
                "system charon killed: state reloaded \(String(format: "%.2f", back)) s after the kill (restarted"
                    + " at 0.5 s); a new connection then took \(String(format: "%.2f", Date().timeIntervalSince(started))) s"
            )
            try fresh.0.send(marker)
            XCTAssertEqual(try fresh.1.receiveExactly(marker.count, timeout: 5), marker)
            XCTAssertEqual(try ends.b.query(fresh.1.fd.rawValue).flags, [.secured, .encrypted])
            capture.stop()
            let analysis = try capture.analyse(markers: [marker])
            XCTAssertEqual(analysis.plainTCPPackets, 0, analysis.summary)
            XCTAssertFalse(analysis.markerFound)
        }
    }
}
