import ALE
import Foundation
import IPAddressing
import Keying
import Logging
import NetnsTestSupport
import SecureSocket
import Synchronization
import TierTesting
import XCTest
import XFRM

/// Tier 2: the engine says why. A refused connection is one `notice` with the socket, the peer, the identity
/// it required and the reason; a secured socket one `debug` line; nothing secret in any line.
final class LoggingTests: XCTestCase {
    /// Keeps every event it is given.
    struct Recorder: LogHandler {
        let box: Box
        var metadata: Logger.Metadata = [:]
        var logLevel: Logger.Level = .trace
        subscript(metadataKey key: String) -> Logger.Metadata.Value? {
            get { metadata[key] }
            set { metadata[key] = newValue }
        }
        func log(event: LogEvent) { box.events.withLock { $0.append(event) } }
    }

    final class Box: Sendable { let events = Mutex<[LogEvent]>([]) }

    func testARefusedConnectionIsLoggedWithItsReasonAndNoSecret() throws {
        try requireTier(.hostKernel)
        let pair = try NamespacePair(prefix: "lg")
        defer { pair.remove() }
        let folder = FileManager.default.temporaryDirectory.appendingPathComponent("lg-\(UUID().uuidString)").path
        defer { try? FileManager.default.removeItem(atPath: folder) }
        let box = Box()
        var configuration = SecureSocketEngine.Configuration(
            negotiationTimeout: .seconds(1), keying: try StaticKeyBackend(peers: [], namespace: pair.a.namespace),
            reqidDirectory: folder, namespace: pair.a.namespace, followEvents: false, closeGrace: .zero)
        configuration.logger = Logger(label: "test", factory: { _ in Recorder(box: box) as any LogHandler })
        configuration.logger.logLevel = .trace
        let engine = try SecureSocketEngine(configuration)
        let socket = try TestSocket.make(in: pair.a.namespace, family: .inet, kind: .tcp)
        let password = "pw-\(UUID().uuidString)"
        try engine.setSecurity(
            socket.fd.rawValue,
            SocketSecuritySettings(
                securityProtocol: .ipsec, ipsec: IPsecSettings(userName: "alice", password: password)))
        try engine.setPeerTargetName(socket.fd.rawValue, SocketPeerTargetName(name: "host/b.example"))
        XCTAssertThrowsError(
            try engine.connect(socket.fd.rawValue, to: IPEndpoint(address: pair.addressB4, port: 9)))

        let events = box.events.withLock { $0 }
        let secured = try XCTUnwrap(events.first { $0.message.description.hasPrefix("socket secured") })
        XCTAssertEqual(secured.level, .debug)
        XCTAssertEqual(secured.metadata?["fd"]?.description, "\(socket.fd.rawValue)")
        let refused = try XCTUnwrap(
            events.first { $0.message.description.hasPrefix("connection refused") }, "\(events)")
        XCTAssertEqual(refused.level, .notice)
        XCTAssertEqual(refused.metadata?["peer"]?.description, "\(pair.addressB4):9")
        XCTAssertEqual(refused.metadata?["required-identity"]?.description, "b.example")
        XCTAssertFalse(refused.metadata?["reason"]?.description.isEmpty ?? true)
        for event in events {
            let text = "\(event.message) \(event.metadata ?? [:])"
            XCTAssertFalse(text.contains(password), "a password in the log: \(text)")
        }
        socket.close()
    }
}
