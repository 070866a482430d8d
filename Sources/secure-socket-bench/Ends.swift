import ALE
import ArgumentParser
import EngineTestSupport
import Foundation
import IPAddressing
import Keying
import NetnsTestSupport
import SecureSocket
import XFRM

/// The shared two-engine fixture (`EnginePair`) for the benchmarks: keyed statically or by one private charon per
/// namespace, its undo registered with ``Cleanup`` (so a signal still stops the charons).
final class Ends: @unchecked Sendable {
    enum Keying: String, ExpressibleByArgument { case `static`, strongswan }

    let engines: EnginePair
    let keying: Keying
    private var token: Int?

    var pair: NamespacePair { engines.pair }
    var a: SecureSocketEngine { engines.a }
    var b: SecureSocketEngine { engines.b }
    var backendA: StrongSwanBackend? { engines.strongSwanBackends?.a }
    var backendB: StrongSwanBackend? { engines.strongSwanBackends?.b }
    /// The PSK both charons use, and A's reqid folder (for benchmarks that look at what is left).
    var secret: String { engines.options.secret }
    var reqidFolderA: String { engines.reqidFolders[0] }

    /// `pair`'s A is the client side (10.77.0.1, identity a.example), B the server (10.77.0.2, b.example).
    init(pair: NamespacePair, keying: Keying, secret: String = EnginePair.randomSecret()) throws {
        self.keying = keying
        var options = EnginePair.Options()
        options.secret = secret
        options.negotiationTimeout = .seconds(keying == .static ? 5 : 10)
        engines = try EnginePair(
            pair: pair, keying: keying == .static ? .static(family: .inet) : .psk, options: options)
        let engines = engines
        token = Cleanup.add { engines.close() }
    }

    /// Stops the charons and removes the reqid folders (the namespaces belong to the caller).
    func close() {
        if let token { Cleanup.run(token) }
        token = nil
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
        try a.connect(client.fd.rawValue, to: IPEndpoint(address: pair.addressB4, port: listener.localPort))
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
