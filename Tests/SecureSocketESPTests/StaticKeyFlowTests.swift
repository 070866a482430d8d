import ALE
import EngineTestSupport
import Foundation
import IPAddressing
import Keying
import NetnsTestSupport
import SecureSocket
import TierTesting
import XCTest
import XFRM

/// Tier 3: the Windows sample flow over real ESP, keyed by the static-key backend (no IKE), so the engine,
/// policies, query and capture are checked deterministically. The charon-keyed flow has its own tests.
final class StaticKeyFlowTests: XCTestCase {
    /// Static keys between a namespace pair of its own (removed by `close()`).
    func makeEnds(family: IPAddressFamily, identityOfB: String = "b.example") throws -> EnginePair {
        let pair = try NamespacePair(prefix: "sk")
        var options = EnginePair.Options()
        options.identityOfB = identityOfB
        options.negotiationTimeout = .seconds(5)
        options.removesPairOnClose = true
        do {
            return try EnginePair(pair: pair, keying: .static(family: family), options: options)
        } catch {
            pair.remove()
            throw error
        }
    }

    func sampleFlow(family: IPAddressFamily) throws {
        let ends = try makeEnds(family: family)
        defer { ends.close() }
        let (_, addressB) = ends.pair.addresses(family)
        let capture = try PacketCapture(
            namespace: ends.pair.b, interface: ends.pair.interfaceB,
            file: FileManager.default.temporaryDirectory.appendingPathComponent("sk-\(UUID().uuidString).pcap").path)
        defer {
            capture.stop()
            try? FileManager.default.removeItem(atPath: capture.file)
        }

        // Server: set security, bind, listen, accept, query.
        let listener = try ends.b.securedListener(
            in: ends.pair.b, family: family, address: addressB, SocketSecuritySettings(flags: .guaranteeEncryption))

        // Client: set security, peer target name, WSAConnect, send.
        let client = try TestSocket.make(in: ends.pair.a.namespace, family: family, kind: .tcp)
        client.setTimeouts(5)
        try ends.a.setSecurity(client.fd.rawValue, SocketSecuritySettings(flags: .guaranteeEncryption))
        try ends.a.setPeerTargetName(client.fd.rawValue, SocketPeerTargetName(name: "host/b.example"))
        try ends.a.connect(client.fd.rawValue, to: IPEndpoint(address: addressB, port: listener.localPort))
        let marker = Array("12345678-\(UUID().uuidString)".utf8)
        try client.send(marker)

        let accepted = try listener.accept(timeout: 5)
        accepted.setTimeouts(5)
        XCTAssertEqual(try accepted.receiveExactly(marker.count, timeout: 5), marker)
        try accepted.send(Array("91011121314".utf8))
        XCTAssertEqual(try client.receiveExactly(11, timeout: 5), Array("91011121314".utf8))

        let serverView = try ends.b.query(accepted.fd.rawValue)
        XCTAssertEqual(serverView.flags, [.secured, .encrypted], "accepted socket: \(serverView)")
        XCTAssertEqual(serverView.peerMachineIdentity, "a.example")
        let clientView = try ends.a.query(client.fd.rawValue)
        XCTAssertEqual(clientView.flags, [.secured, .encrypted])
        XCTAssertEqual(clientView.peerMachineIdentity, "b.example")
        XCTAssertEqual(clientView.encryptionAlgorithm, "rfc4106(gcm(aes))")
        XCTAssertEqual(try ends.a.query(client.fd.rawValue), clientView, "repeatable")

        capture.stop()
        let analysis = try capture.analyse(markers: [marker])
        XCTAssertGreaterThan(analysis.espPackets, 0, "capture: \(analysis.summary)")
        XCTAssertEqual(analysis.plainTCPPackets, 0, analysis.summary)
        XCTAssertFalse(analysis.markerFound)

        for socket in [client, accepted, listener] {
            ends.a.release(socket.fd.rawValue)
            ends.b.release(socket.fd.rawValue)
            socket.closeAbortively()
        }
    }

    func testSampleFlowIPv4() throws {
        try inESPKernel(self) { try sampleFlow(family: .inet) }
    }

    func testSampleFlowIPv6() throws {
        try inESPKernel(self) { try sampleFlow(family: .inet6) }
    }

    /// The peer is known as b.example; asking for another name is refused and nothing crosses in clear.
    func testWrongPeerNameIsRefused() throws {
        try inESPKernel(self) {
            let ends = try makeEnds(family: .inet)
            defer { ends.close() }
            let listener = try ends.b.securedListener(in: ends.pair.b, family: .inet, address: ends.pair.addressB4)
            let capture = try PacketCapture(
                namespace: ends.pair.b, interface: ends.pair.interfaceB,
                file: FileManager.default.temporaryDirectory.appendingPathComponent("sk-\(UUID().uuidString).pcap").path
            )
            defer {
                capture.stop()
                try? FileManager.default.removeItem(atPath: capture.file)
            }
            let client = try TestSocket.make(in: ends.pair.a.namespace, family: .inet, kind: .tcp)
            try ends.a.setSecurity(client.fd.rawValue)
            try ends.a.setPeerTargetName(client.fd.rawValue, SocketPeerTargetName(name: "host/mallory.example"))
            XCTAssertThrowsError(
                try ends.a.connect(
                    client.fd.rawValue,
                    to: IPEndpoint(address: ends.pair.addressB4, port: listener.localPort))
            ) {
                XCTAssertEqual(($0 as? SecureSocketError)?.code, .accessDenied, "\($0)")
            }
            let endpoint = try XCTUnwrap(ends.a.endpoint(client.fd.rawValue))
            guard case .failed(.peerNameMismatch(let expected, _)) = endpoint.state else {
                return XCTFail("state \(endpoint.state)")
            }
            XCTAssertEqual(expected, "mallory.example", "the SPN service prefix is not part of the identity")
            capture.stop()
            XCTAssertEqual(try capture.analyse(markers: []).plainTCPPackets, 0)
        }
    }
}

extension StaticKeyFlowTests {
    /// The async connect: succeeds like the blocking one, and cancelling the task abandons an attempt that would
    /// otherwise hang (A has keys for B, B has none: A's SYNs go out as ESP that B drops).
    func testAsyncConnectSucceedsAndCancellationAbandonsAHangingAttempt() throws {
        try inESPKernel(self) {
            let ends = try makeEnds(family: .inet)
            defer { ends.close() }
            let listener = try ends.b.securedListener(in: ends.pair.b, family: .inet, address: ends.pair.addressB4)
            let peer = IPEndpoint(address: ends.pair.addressB4, port: listener.localPort)
            let client = try TestSocket.make(in: ends.pair.a.namespace, family: .inet, kind: .tcp)
            try ends.a.setSecurity(client.fd.rawValue)
            let done = DispatchSemaphore(value: 0)
            nonisolated(unsafe) var outcome: String?
            let engineA = ends.a
            let fd = client.fd.rawValue
            Task {
                do {
                    try await engineA.connect(fd, to: peer)
                    outcome = "connected"
                } catch { outcome = "\(error)" }
                done.signal()
            }
            XCTAssertEqual(done.wait(timeout: .now() + 10), .success)
            XCTAssertEqual(outcome, "connected")

            // B forgets its keys: A's next connection hangs in SYN_SENT until the task is cancelled.
            ends.b.release(listener.fd.rawValue)
            let stuck = try TestSocket.make(in: ends.pair.a.namespace, family: .inet, kind: .tcp)
            try ends.a.setSecurity(stuck.fd.rawValue)
            let stuckFD = stuck.fd.rawValue
            let started = Date()
            let task = Task { () -> String in
                do {
                    try await engineA.connect(stuckFD, to: peer)
                    return "connected"
                } catch { return "\(error)" }
            }
            usleep(700_000)
            task.cancel()
            nonisolated(unsafe) var cancelledOutcome: String?
            Task {
                cancelledOutcome = await task.value
                done.signal()
            }
            XCTAssertEqual(done.wait(timeout: .now() + 10), .success)
            XCTAssertLessThan(Date().timeIntervalSince(started), 5, "abandoned at once, not after TCP's timeout")
            XCTAssertTrue(cancelledOutcome?.contains("WSAEINTR") == true, "\(String(describing: cancelledOutcome))")
            for socket in [client, stuck, listener] { socket.closeAbortively() }
        }
    }
}
