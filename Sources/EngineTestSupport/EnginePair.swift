import Foundation
import IPAddressing
import Impersonation
import Keying
import NetnsTestSupport
import SecureSocket
import VICI
import XFRM

/// Two secure-socket engines in the two namespaces of a ``NamespacePair``: A is the client side (identity
/// `a.example`), B the server (`b.example` unless told otherwise). Keyed statically (SA pairs for one address
/// family, no IKE) or by strongSwan (one charon per namespace, PSK or ECDSA certificates; private charons the
/// backends start, or "system" charons this fixture runs and the backends only connect to). The one fixture the
/// tier-3 tests and the benchmarks share; ``close()`` undoes everything it made (the pair belongs to the caller).
public final class EnginePair: @unchecked Sendable {
    public enum Keying: Sendable {
        /// `StaticKeyBackend` SA pairs between the pair's addresses of `family`.
        case `static`(family: IPAddressFamily)
        /// strongSwan with one pre-shared key for both identities.
        case psk
        /// strongSwan with ECDSA certificates from a test authority.
        case ecdsa
    }

    public struct Options: Sendable {
        /// B's identity (its certificate's subject with `.ecdsa`).
        public var identityOfB = "b.example"
        /// EAP users B accepts in a second authentication round (`name: secret`).
        public var usersOfB: [String: String] = [:]
        /// Run the charons here, as a system's supervisor would; the backends only connect to their sockets.
        public var systemCharons = false
        /// How those charons are started (an operator's: strongSwan's defaults, `flowSelectorsOnTransportSAs` off).
        public var systemCharonOptions = CharonDaemon.Options()
        /// More certificate names the authority signs (for third parties: an attacker with a valid certificate).
        public var extraCertificateNames: [String] = []
        /// Each engine's negotiation timeout, seconds.
        public var negotiationTimeout: Duration = .seconds(10)
        /// The PSK (`.psk`).
        public var secret = EnginePair.randomSecret()
        /// ``EnginePair/close()`` removes the pair's namespaces too (a fixture that made its own pair).
        public var removesPairOnClose = false
        /// The identity map B's engine impersonates peers through (strongSwan keying).
        public var identityMapOfB: IdentityMap?
        public init() {}
    }

    public let pair: NamespacePair
    public let a: SecureSocketEngine
    public let b: SecureSocketEngine
    /// The backends, when keyed by strongSwan.
    public let strongSwanBackends: (a: StrongSwanBackend, b: StrongSwanBackend)?
    /// Each engine's reqid claim folder (A's, B's).
    public let reqidFolders: [String]
    public let certificates: TestCertificates?
    /// With ``Options/systemCharons``: A's and B's charon.
    public let systemCharons: [CharonDaemon]
    public let options: Options

    public init(pair: NamespacePair, keying: Keying, options: Options = Options()) throws {
        self.pair = pair
        self.options = options
        let folders = (0..<2).map { _ in
            FileManager.default.temporaryDirectory.appendingPathComponent("engines-\(UUID().uuidString)").path
        }
        reqidFolders = folders
        // What exists so far, undone if a later step fails.
        var made: (backends: [StrongSwanBackend], charons: [CharonDaemon], certificates: TestCertificates?) = (
            [], [], nil
        )
        var strongSwan: (a: StrongSwanBackend, b: StrongSwanBackend)?
        do {
            let engines: (SecureSocketEngine, SecureSocketEngine)
            switch keying {
            case .static(let family):
                engines = try Self.staticEngines(pair: pair, family: family, folders: folders, options: options)
            case .psk, .ecdsa:
                let credentials: (String) throws -> StrongSwanBackend.Credentials
                if case .ecdsa = keying {
                    let authority = try TestCertificates(
                        names: ["a.example", options.identityOfB] + options.extraCertificateNames)
                    made.certificates = authority
                    credentials = { name in
                        StrongSwanBackend.Credentials(
                            identity: name,
                            method: .certificate(
                                certificate: try authority.certificate(name), privateKey: try authority.key(name),
                                authorities: [try authority.authority()]),
                            eapUsers: name == options.identityOfB ? options.usersOfB : [:])
                    }
                } else {
                    credentials = {
                        StrongSwanBackend.Credentials(
                            identity: $0, method: .psk(options.secret),
                            eapUsers: $0 == options.identityOfB ? options.usersOfB : [:])
                    }
                }
                let identities = ["a.example", options.identityOfB]
                for (index, namespace) in [pair.a.namespace, pair.b.namespace].enumerated() {
                    if options.systemCharons {
                        let charon = try CharonDaemon(namespace: namespace, options: options.systemCharonOptions)
                        made.charons.append(charon)
                        made.backends.append(
                            try StrongSwanBackend(
                                vici: try VICIClient(path: charon.socketPath),
                                credentials: credentials(identities[index])))
                    } else {
                        made.backends.append(
                            try StrongSwanBackend.systemOrPrivate(
                                credentials: credentials(identities[index]), namespace: namespace))
                    }
                }
                let backends = (a: made.backends[0], b: made.backends[1])
                strongSwan = backends
                engines = (
                    try SecureSocketEngine(
                        .init(
                            negotiationTimeout: options.negotiationTimeout, keying: backends.a,
                            reqidDirectory: folders[0], namespace: pair.a.namespace)),
                    try SecureSocketEngine(
                        .init(
                            negotiationTimeout: options.negotiationTimeout, keying: backends.b,
                            reqidDirectory: folders[1], namespace: pair.b.namespace,
                            identityMap: options.identityMapOfB))
                )
            }
            (a, b) = engines
        } catch {
            Self.undo(backends: made.backends, charons: made.charons, certificates: made.certificates, folders: folders)
            throw error
        }
        strongSwanBackends = strongSwan
        systemCharons = made.charons
        certificates = made.certificates
    }

    /// A's strongSwan backend (a fixture keyed by strongSwan only).
    public var backendA: StrongSwanBackend {
        guard let backends = strongSwanBackends else { preconditionFailure("this EnginePair is keyed statically") }
        return backends.a
    }

    /// B's strongSwan backend (a fixture keyed by strongSwan only).
    public var backendB: StrongSwanBackend {
        guard let backends = strongSwanBackends else { preconditionFailure("this EnginePair is keyed statically") }
        return backends.b
    }

    /// Shuts the backends down, stops the charons, removes the certificates and reqid folders, and with
    /// ``Options/removesPairOnClose`` the namespaces. Idempotent. (The engines end with their last reference.)
    public func close() {
        defer { if options.removesPairOnClose { pair.remove() } }
        Self.undo(
            backends: strongSwanBackends.map { [$0.a, $0.b] } ?? [], charons: systemCharons, certificates: certificates,
            folders: reqidFolders)
    }

    private static func undo(
        backends: [StrongSwanBackend], charons: [CharonDaemon], certificates: TestCertificates?, folders: [String]
    ) {
        for backend in backends {
            backend.daemon?.stop()
            backend.shutdown()
        }
        for charon in charons { charon.stop() }
        certificates?.remove()
        for folder in folders { try? FileManager.default.removeItem(atPath: folder) }
    }

    private static func staticEngines(
        pair: NamespacePair, family: IPAddressFamily, folders: [String], options: Options
    ) throws -> (SecureSocketEngine, SecureSocketEngine) {
        let (addressA, addressB) = pair.addresses(family)
        var random = SystemRandomNumberGenerator()
        let keyAB = (0..<20).map { _ in UInt8.random(in: 0...255, using: &random) }
        let keyBA = (0..<20).map { _ in UInt8.random(in: 0...255, using: &random) }
        let peersOfA = [
            StaticKeyBackend.Peer(
                peer: addressB, local: addressA, outboundSPI: 0x1100, inboundSPI: 0x2200,
                outboundKey: keyAB, inboundKey: keyBA, identity: options.identityOfB)
        ]
        let peersOfB = [
            StaticKeyBackend.Peer(
                peer: addressA, local: addressB, outboundSPI: 0x2200, inboundSPI: 0x1100,
                outboundKey: keyBA, inboundKey: keyAB, identity: "a.example")
        ]
        return (
            try SecureSocketEngine(
                .init(
                    negotiationTimeout: options.negotiationTimeout,
                    keying: try StaticKeyBackend(peers: peersOfA, namespace: pair.a.namespace),
                    reqidDirectory: folders[0], namespace: pair.a.namespace)),
            try SecureSocketEngine(
                .init(
                    negotiationTimeout: options.negotiationTimeout,
                    keying: try StaticKeyBackend(peers: peersOfB, namespace: pair.b.namespace),
                    reqidDirectory: folders[1], namespace: pair.b.namespace))
        )
    }

    /// 32 random bytes in hex.
    public static func randomSecret() -> String {
        var random = SystemRandomNumberGenerator()
        return (0..<32).map { _ in String(format: "%02x", UInt8.random(in: 0...255, using: &random)) }.joined()
    }
}
