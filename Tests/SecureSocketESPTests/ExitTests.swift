import ALE
import Foundation
import IPAddressing
import Keying
import NetnsTestSupport
import SecureSocket
import TierTesting
import XCTest
import XFRM

/// Tier 3: what a process writes before it exits reaches a slow reader, protected: the engine's shutdown (run at
/// exit) lets connected sockets' queued data leave under their SAs before it releases them.
final class ExitTests: XCTestCase {
    func testQueuedDataLeavesProtectedBeforeTheEngineShutsDown() throws {
        try inESPKernel(self) {
            let ends = try CharonFlowTests.Ends(auth: .psk)
            defer { ends.close() }
            let capture = try PacketCapture(
                namespace: ends.pair.b, interface: ends.pair.interfaceB,
                file: FileManager.default.temporaryDirectory
                    .appendingPathComponent("ex-\(UUID().uuidString).pcap").path)
            defer {
                capture.stop()
                try? FileManager.default.removeItem(atPath: capture.file)
            }
            let listener = try TestSocket.make(in: ends.pair.b.namespace, family: .inet, kind: .tcp)
            try ends.b.setSecurity(listener.fd.rawValue)
            var small: CInt = 4096
            setsockopt(listener.fd.rawValue, SOL_SOCKET, SO_RCVBUF, &small, socklen_t(MemoryLayout<CInt>.size))
            try listener.bind(ends.pair.addressB4, port: 0)
            try listener.listen()
            let (client, accepted) = try ends.namedConnection(
                to: IPEndpoint(address: ends.pair.addressB4, port: listener.localPort), through: listener)
            var large: CInt = 1 << 20
            setsockopt(client.fd.rawValue, SOL_SOCKET, SO_SNDBUF, &large, socklen_t(MemoryLayout<CInt>.size))
            let payload = (0..<65_536).map { UInt8(truncatingIfNeeded: $0 &* 7) }
            try client.send(payload)
            var queued: CInt = 0
            XCTAssertEqual(ioctl(client.fd.rawValue, 0x5411, &queued), 0, "SIOCOUTQ")
            XCTAssertGreaterThan(queued, 16_384, "most of it still waits in the sender's queue")

            // A slow reader: 4 KiB every 50 ms.
            nonisolated(unsafe) var received: [UInt8] = []
            let done = DispatchSemaphore(value: 0)
            Thread.detachNewThread {
                defer { done.signal() }
                let deadline = Date().addingTimeInterval(15)
                while received.count < payload.count, Date() < deadline {
                    if let chunk = try? accepted.receive(upTo: 4096, timeout: 1), !chunk.isEmpty { received += chunk }
                    usleep(50_000)
                }
            }
            let started = Date()
            ends.a.shutdown() // what the process's exit runs
            print(
                "shutdown waited \(String(format: "%.2f", Date().timeIntervalSince(started))) s for \(queued) queued bytes"
            )
            XCTAssertEqual(done.wait(timeout: .now() + 20), .success)
            XCTAssertEqual(received.count, payload.count, "every byte written before the exit arrived")
            XCTAssertEqual(received, payload)
            capture.stop()
            XCTAssertEqual(try capture.analyse(markers: []).plainTCPPackets, 0, "and under ESP only")
            client.closeAbortively()
            accepted.closeAbortively()
            listener.closeAbortively()
        }
    }
}
