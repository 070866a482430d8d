import ALE
import Foundation
import IPAddressing
import Keying
import NetnsTestSupport
import SecureSocket
import TierTesting
import XCTest
import XFRM

/// Tier 3: a peer that never answers IKE holds up nobody else. B connects to C (no IKE daemon: the
/// negotiation waits out its timeout) while, at the same time, B connects to A and queries the connection.
final class HangingPeerTests: XCTestCase {
    func testAHangingPeerDoesNotDelayAConnectAndQueryToAnotherPeer() throws {
        try inESPKernel(self) {
            let net = try NamespacePair3()
            defer { net.close() }
            let listener = try net.serverA.securedListener(in: net.trio.a, family: .inet, address: net.trio.addressA)
            let hanging = try TestSocket.make(in: net.trio.b.namespace, family: .inet, kind: .tcp)
            try net.clientB.setSecurity(hanging.fd.rawValue)
            nonisolated(unsafe) var hangingError: Error?
            let hangingDone = DispatchSemaphore(value: 0)
            let hangingStarted = Date()
            Thread.detachNewThread {
                defer { hangingDone.signal() }
                do {
                    try net.clientB.connect(
                        hanging.fd.rawValue, to: IPEndpoint(address: net.trio.addressC, port: 5001),
                        timeout: .seconds(6))
                } catch {
                    hangingError = error
                }
            }
            usleep(300_000) // the hanging negotiation is under way
            let healthy = try TestSocket.make(in: net.trio.b.namespace, family: .inet, kind: .tcp)
            healthy.setTimeouts(5)
            try net.clientB.setSecurity(healthy.fd.rawValue)
            let started = Date()
            try net.clientB.connect(
                healthy.fd.rawValue,
                to: IPEndpoint(
                    address: net.trio.addressA,
                    port: listener.localPort))
            let view = try net.clientB.query(healthy.fd.rawValue)
            let elapsed = Date().timeIntervalSince(started)
            XCTAssertEqual(view.flags, [.secured, .encrypted])
            XCTAssertEqual(view.peerMachineIdentity, "a.example")
            XCTAssertLessThan(elapsed, 3, "connect + query to a healthy peer beside a hanging one")
            print("connect + query to A while a negotiation with C hangs: \(String(format: "%.2f", elapsed)) s")
            XCTAssertEqual(hangingDone.wait(timeout: .now() + 15), .success)
            XCTAssertNotNil(hangingError, "the hanging peer was never reached")
            XCTAssertGreaterThan(Date().timeIntervalSince(hangingStarted), 5, "it waited out its own timeout")
            let accepted = try listener.accept(timeout: 5)
            for socket in [healthy, hanging] {
                net.clientB.release(socket.fd.rawValue)
                socket.closeAbortively()
            }
            accepted.closeAbortively()
            listener.closeAbortively()
        }
    }
}

/// Three namespaces (A — B — C), a private charon in A (server, a.example) and in B (client, b.example), PSK;
/// C runs no IKE daemon.
final class NamespacePair3: @unchecked Sendable {
    let trio: NamespaceTrio
    let backendA: StrongSwanBackend
    let backendB: StrongSwanBackend
    let serverA: SecureSocketEngine
    let clientB: SecureSocketEngine
    let folders: [String]

    init() throws {
        trio = try NamespaceTrio(prefix: "hp")
        folders = (0..<2).map { _ in
            FileManager.default.temporaryDirectory.appendingPathComponent("hp-\(UUID().uuidString)").path
        }
        let secret = UUID().uuidString
        backendA = try StrongSwanBackend.systemOrPrivate(
            credentials: .init(identity: "a.example", method: .psk(secret)),
            namespace: trio.a.namespace)
        backendB = try StrongSwanBackend.systemOrPrivate(
            credentials: .init(identity: "b.example", method: .psk(secret)),
            namespace: trio.b.namespace)
        serverA = try SecureSocketEngine(
            .init(keying: backendA, reqidDirectory: folders[0], namespace: trio.a.namespace))
        clientB = try SecureSocketEngine(
            .init(keying: backendB, reqidDirectory: folders[1], namespace: trio.b.namespace))
    }

    func close() {
        serverA.shutdown()
        clientB.shutdown()
        trio.remove()
        for folder in folders { try? FileManager.default.removeItem(atPath: folder) }
    }
}
