import ALE
import ArgumentParser
import Foundation
import Keying
import NetnsTestSupport
import SecureSocket
import XFRM

/// Two engines in the two namespaces of a pair, keyed statically or by one private charon per namespace, and
/// everything needed to undo them (registered with ``Cleanup``).
final class Ends: @unchecked Sendable {
    enum Keying: String, ExpressibleByArgument { case `static`, strongswan }

    let pair: NamespacePair
    let keying: Keying
    let a: SecureSocketEngine
    let b: SecureSocketEngine
    let backendA: StrongSwanBackend?
    let backendB: StrongSwanBackend?
    /// The PSK both charons use, and A's reqid folder (for benchmarks that look at what is left).
    let secret: String
    let reqidFolderA: String
    private var tokens: [Int] = []

    /// `pair`'s A is the client side (10.77.0.1, identity a.example), B the server (10.77.0.2, b.example).
    init(pair: NamespacePair, keying: Keying, secret: String = randomSecret()) throws {
        self.pair = pair
        self.keying = keying
        self.secret = secret
        let folders = try (0..<2).map { _ in try makeTemporaryFolder("ssb-reqids") }
        reqidFolderA = folders[0]
        tokens.append(Cleanup.add { for folder in folders { try? FileManager.default.removeItem(atPath: folder) } })
        switch keying {
        case .static:
            var random = SystemRandomNumberGenerator()
            let keyAB = (0..<20).map { _ in UInt8.random(in: 0...255, using: &random) }
            let keyBA = (0..<20).map { _ in UInt8.random(in: 0...255, using: &random) }
            let peersOfA = [
                StaticKeyBackend.Peer(
                    peer: pair.addressB4, local: pair.addressA4, outboundSPI: 0x1100,
                    inboundSPI: 0x2200, outboundKey: keyAB, inboundKey: keyBA,
                    identity: "b.example")
            ]
            let peersOfB = [
                StaticKeyBackend.Peer(
                    peer: pair.addressA4, local: pair.addressB4, outboundSPI: 0x2200,
                    inboundSPI: 0x1100, outboundKey: keyBA, inboundKey: keyAB,
                    identity: "a.example")
            ]
            backendA = nil
            backendB = nil
            a = try SecureSocketEngine(
                .init(
                    negotiationTimeout: 5,
                    keying: try StaticKeyBackend(peers: peersOfA, namespace: pair.a.namespace),
                    reqidDirectory: folders[0], namespace: pair.a.namespace))
            b = try SecureSocketEngine(
                .init(
                    negotiationTimeout: 5,
                    keying: try StaticKeyBackend(peers: peersOfB, namespace: pair.b.namespace),
                    reqidDirectory: folders[1], namespace: pair.b.namespace))
        case .strongswan:
            let madeA = try StrongSwanBackend.systemOrPrivate(
                credentials: .init(identity: "a.example", method: .psk(secret)), namespace: pair.a.namespace)
            tokens.append(Cleanup.add { madeA.daemon?.stop() })
            let madeB = try StrongSwanBackend.systemOrPrivate(
                credentials: .init(identity: "b.example", method: .psk(secret)), namespace: pair.b.namespace)
            tokens.append(Cleanup.add { madeB.daemon?.stop() })
            backendA = madeA
            backendB = madeB
            a = try SecureSocketEngine(
                .init(
                    negotiationTimeout: 10, keying: madeA, reqidDirectory: folders[0],
                    namespace: pair.a.namespace))
            b = try SecureSocketEngine(
                .init(
                    negotiationTimeout: 10, keying: madeB, reqidDirectory: folders[1],
                    namespace: pair.b.namespace))
        }
    }

    /// Stops the charons and removes the reqid folders (the namespaces belong to the caller).
    func close() {
        for token in tokens.reversed() { Cleanup.run(token) }
        tokens.removeAll()
    }

    /// A secured listener on B (any port) and a secured client on A connected to it with `WSAConnect`
    /// semantics, one byte each way to prove the path; returns (listener, client, accepted).
    func secureConnection() throws -> (listener: TestSocket, client: TestSocket, accepted: TestSocket) {
        let listener = try TestSocket.make(in: pair.b.namespace, family: .inet, kind: .tcp)
        try b.setSecurity(listener.fd.rawValue, SocketSecuritySettings(flags: .guaranteeEncryption))
        try listener.bind(pair.addressB4, port: 0)
        try listener.listen()
        let client = try TestSocket.make(in: pair.a.namespace, family: .inet, kind: .tcp)
        client.setTimeouts(5)
        try a.setSecurity(client.fd.rawValue, SocketSecuritySettings(flags: .guaranteeEncryption))
        try a.setPeerTargetName(client.fd.rawValue, SocketPeerTargetName(name: "host/b.example"))
        try a.connect(client.fd.rawValue, to: SocketEndpointAddress(address: pair.addressB4, port: listener.localPort))
        let accepted = try listener.accept(timeout: 5)
        accepted.setTimeouts(5)
        try client.send([0x2a])
        guard try accepted.receiveExactly(1, timeout: 5) == [0x2a] else { throw BenchError("payload mismatch A→B") }
        try accepted.send([0x2b])
        guard try client.receiveExactly(1, timeout: 5) == [0x2b] else { throw BenchError("payload mismatch B→A") }
        return (listener, client, accepted)
    }

    /// Releases and closes (abortively) what ``secureConnection()`` made.
    func closeConnection(_ sockets: (listener: TestSocket, client: TestSocket, accepted: TestSocket)) {
        a.release(sockets.client.fd.rawValue)
        b.release(sockets.accepted.fd.rawValue)
        b.release(sockets.listener.fd.rawValue)
        sockets.client.closeAbortively()
        sockets.accepted.closeAbortively()
        sockets.listener.closeAbortively()
    }
}

struct BenchError: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}
