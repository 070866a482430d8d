import ALE
import Foundation
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
            let capture = try PacketCapture(namespace: ends.pair.b, interface: ends.pair.interfaceB,
                                            file: FileManager.default.temporaryDirectory
                                                .appendingPathComponent("cr-\(UUID().uuidString).pcap").path)
            defer { capture.stop(); try? FileManager.default.removeItem(atPath: capture.file) }
            let listener = try ends.b.securedListener(in: ends.pair.b, family: .inet, address: ends.pair.addressB4)
            let peer = SocketEndpointAddress(address: ends.pair.addressB4, port: listener.localPort)
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
                print("\(side): charon running again after \(restartedAfter.map { String(format: "%.2f s", $0) } ?? "-")")
                XCTAssertEqual(daemon.restarts, 1, "\(side): the private charon was started again")
                XCTAssertGreaterThanOrEqual(backend.resyncs, 1, "\(side): credentials and conns loaded again")
                let recovered = Date().timeIntervalSince(killed)
                let started = Date()
                let fresh = try connect()
                print("\(side) charon killed: running again with its state in \(String(format: "%.2f", recovered)) s;"
                      + " a new connection then took \(String(format: "%.2f", Date().timeIntervalSince(started))) s")
                try echoes(fresh, "\(side)-after")
                XCTAssertEqual(try ends.b.query(fresh.1.fd.rawValue).peerMachineIdentity, "a.example")
                XCTAssertEqual(try engine.query(side == "server" ? fresh.1.fd.rawValue : fresh.0.fd.rawValue).flags,
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
