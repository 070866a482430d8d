import ALE
import DirectoryNames
import Foundation
import IPAddressing
import Impersonation
import Keying
import NetnsTestSupport
import SecureSocket
import TierTesting
import VICI
import XCTest
import XFRM

/// Tier 3: how a peer authenticated decides whom impersonation makes of it. Three namespaces (NamespaceTrio), each
/// with a private charon: `b` serves with an identity map, `a` is the genuine peer, `c` a second host that holds a
/// key of its own (or the group key), or another certificate of the same authority.
final class IdentityTests: XCTestCase {
    final class Hosts: @unchecked Sendable {
        let net: NamespaceTrio
        let certificates: TestCertificates?
        private var backends: [StrongSwanBackend] = []
        /// Every engine made, kept alive until ``close()`` (an engine that goes releases its sockets' SAs).
        private var engines: [SecureSocketEngine] = []
        private var folders: [String: String] = [:]

        init(certificates: TestCertificates? = nil) throws {
            net = try NamespaceTrio(prefix: "id")
            self.certificates = certificates
        }

        /// A backend with a private charon in `namespace`, or on the charon of `sharing` (a second user of it).
        func backend(
            _ credentials: StrongSwanBackend.Credentials, in namespace: TestNamespace,
            sharing: StrongSwanBackend? = nil
        ) throws -> StrongSwanBackend {
            let backend =
                if let daemon = sharing?.daemon {
                    try StrongSwanBackend(vici: try VICIClient(path: daemon.socketPath), credentials: credentials)
                } else {
                    try StrongSwanBackend.systemOrPrivate(credentials: credentials, namespace: namespace.namespace)
                }
            backends.append(backend)
            return backend
        }

        /// Certificate credentials for `name` from ``certificates``.
        func certificate(_ name: String) throws -> StrongSwanBackend.Credentials {
            let made = try XCTUnwrap(certificates)
            return .init(
                identity: name,
                method: .certificate(
                    certificate: try made.certificate(name),
                    privateKey: try made.key(name),
                    authorities: [try made.authority()]))
        }

        /// An engine over `backend`; engines of one namespace share its reqid folder.
        func engine(_ backend: StrongSwanBackend, in namespace: TestNamespace, map: IdentityMap? = nil) throws
            -> SecureSocketEngine
        {
            let folder =
                folders[namespace.name]
                ?? FileManager.default.temporaryDirectory
                .appendingPathComponent("id-\(UUID().uuidString)").path
            folders[namespace.name] = folder
            let engine = try SecureSocketEngine(
                .init(
                    negotiationTimeout: .seconds(10), keying: backend, reqidDirectory: folder,
                    namespace: namespace.namespace, identityMap: map))
            engines.append(engine)
            return engine
        }

        /// A secured TCP connection from `namespace` to b's `address`:`port`, b proving `b.example`.
        func connect(
            _ engine: SecureSocketEngine, from namespace: TestNamespace, to address: IPAddress,
            port: UInt16
        ) throws -> TestSocket {
            let client = try TestSocket.make(in: namespace.namespace, family: .inet, kind: .tcp)
            client.setTimeouts(5)
            do {
                try engine.setSecurity(client.fd.rawValue)
                try engine.setPeerTargetName(client.fd.rawValue, SocketPeerTargetName(name: "host/b.example"))
                try engine.connect(client.fd.rawValue, to: IPEndpoint(address: address, port: port))
            } catch {
                client.closeAbortively()
                throw error
            }
            return client
        }

        func close() {
            engines = []
            for backend in backends { backend.shutdown() }
            net.remove()
            certificates?.remove()
            for folder in folders.values { try? FileManager.default.removeItem(atPath: folder) }
        }
    }

    static func secret() -> String {
        var random = SystemRandomNumberGenerator()
        return (0..<32).map { _ in String(UInt8.random(in: 0...255, using: &random), radix: 16) }.joined()
    }

    /// The account the server's thread becomes for the peer of `accepted` (and a file it creates is owned by it).
    func impersonated(
        _ server: SecureSocketEngine, _ accepted: TestSocket,
        _ fixture: CharonFlowTests.ImpersonationFixture
    ) throws -> (String, uid_t?) {
        try server.withPeerImpersonation(accepted.fd.rawValue) { account in
            (account.name, fixture.createOwnedFile("by-\(account.name)-\(UUID().uuidString)"))
        }
    }

    /// Impersonating the peer of `accepted` is refused with WSAEACCES, and so is resolving its machine token; the
    /// thread is unchanged.
    func assertRefused(
        _ server: SecureSocketEngine, _ accepted: TestSocket, _ why: String,
        file: StaticString = #filePath, line: UInt = #line
    ) throws {
        let before = ThreadCredentials.current()
        XCTAssertThrowsError(try server.impersonatePeer(accepted.fd.rawValue), why, file: file, line: line) {
            XCTAssertEqual(($0 as? SecureSocketError)?.code, .accessDenied, "\($0)", file: file, line: line)
        }
        XCTAssertEqual(
            ThreadCredentials.current(), before, "a refused impersonation changes nothing", file: file, line: line)
        let view = try server.query(accepted.fd.rawValue, SocketSecurityQueryTemplate(peerTokenAccessMask: 1))
        defer { server.tokens.close(view.peerMachineToken) }
        XCTAssertThrowsError(try server.account(forToken: view.peerMachineToken), why, file: file, line: line) {
            XCTAssertEqual(($0 as? SecureSocketError)?.code, .accessDenied, "\($0)", file: file, line: line)
        }
    }

    /// Per-peer keys: a and c each hold a key of their own with b. c authenticates as itself, but claiming a's
    /// identity with its own key is refused by b's charon (the claim finds a's key only), before any payload.
    func testPerPeerKeysRefuseASecondHolderClaimingThePeersIdentity() throws {
        try inESPKernel(self) {
            let fixture = try CharonFlowTests.ImpersonationFixture(
                rules: "id a.example -> daemon\nid c.example -> nobody\n")
            defer { fixture.remove() }
            let hosts = try Hosts()
            defer { hosts.close() }
            let net = hosts.net
            let (keyA, keyC) = (Self.secret(), Self.secret())
            let b = try hosts.backend(
                .init(identity: "b.example", method: .peerKeys(["a.example": keyA, "c.example": keyC])),
                in: net.b)
            let a = try hosts.backend(.init(identity: "a.example", method: .peerKeys(["b.example": keyA])), in: net.a)
            let c = try hosts.backend(.init(identity: "c.example", method: .peerKeys(["b.example": keyC])), in: net.c)
            let claim = try hosts.backend(
                .init(identity: "a.example", method: .peerKeys(["b.example": keyC])), in: net.c,
                sharing: c)
            let server = try hosts.engine(b, in: net.b, map: fixture.map)
            let listener = try server.securedListener(in: net.b, family: .inet, address: .any(.inet))
            defer { listener.closeAbortively() }

            let fromA = try hosts.connect(
                try hosts.engine(a, in: net.a), from: net.a, to: net.addressBA, port: listener.localPort)
            let acceptedA = try listener.accept(timeout: 5)
            defer {
                fromA.closeAbortively()
                acceptedA.closeAbortively()
            }
            let viewA = try server.query(acceptedA.fd.rawValue)
            XCTAssertEqual(viewA.flags, [.secured, .encrypted], "\(viewA)")
            XCTAssertEqual(viewA.peer, PeerIdentity(ikeIdentity: "a.example", authentication: .peerKey))
            let (accountA, ownerA) = try impersonated(server, acceptedA, fixture)
            XCTAssertEqual(accountA, "daemon")
            XCTAssertEqual(ownerA, 1, "daemon's uid")

            let fromC = try hosts.connect(
                try hosts.engine(c, in: net.c), from: net.c, to: net.addressBC, port: listener.localPort)
            let acceptedC = try listener.accept(timeout: 5)
            defer {
                fromC.closeAbortively()
                acceptedC.closeAbortively()
            }
            XCTAssertEqual(
                try server.query(acceptedC.fd.rawValue).peer,
                PeerIdentity(ikeIdentity: "c.example", authentication: .peerKey), "c's key works")
            XCTAssertEqual(try impersonated(server, acceptedC, fixture).0, "nobody")

            XCTAssertThrowsError(
                try hosts.connect(
                    try hosts.engine(claim, in: net.c), from: net.c, to: net.addressBC,
                    port: listener.localPort), "c claiming a.example"
            ) {
                XCTAssertEqual(($0 as? SecureSocketError)?.code, .accessDenied, "\($0)")
            }
            XCTAssertThrowsError(try listener.accept(timeout: 1), "b accepted nothing from the claim")
            XCTAssertEqual(try server.query(acceptedA.fd.rawValue).flags, [.secured, .encrypted], "a keeps its SAs")
        }
    }

    /// A group key: c holds it too and claims a's identity. IKE cannot tell the claim from a (both authenticate as
    /// a.example), the query says the peer proved a group key only, and impersonation refuses it until the map's
    /// rule says `accept-group-key`.
    func testGroupKeyClaimAuthenticatesButImpersonationNeedsTheOptIn() throws {
        try inESPKernel(self) {
            let fixture = try CharonFlowTests.ImpersonationFixture(rules: "id a.example -> daemon\n")
            defer { fixture.remove() }
            let hosts = try Hosts()
            defer { hosts.close() }
            let net = hosts.net
            let group = Self.secret()
            let b = try hosts.backend(.init(identity: "b.example", method: .psk(group)), in: net.b)
            let a = try hosts.backend(.init(identity: "a.example", method: .psk(group)), in: net.a)
            let claim = try hosts.backend(.init(identity: "a.example", method: .psk(group)), in: net.c)
            let server = try hosts.engine(b, in: net.b, map: fixture.map)
            let listener = try server.securedListener(in: net.b, family: .inet, address: .any(.inet))
            defer { listener.closeAbortively() }

            let fromA = try hosts.connect(
                try hosts.engine(a, in: net.a), from: net.a, to: net.addressBA, port: listener.localPort)
            let acceptedA = try listener.accept(timeout: 5)
            defer {
                fromA.closeAbortively()
                acceptedA.closeAbortively()
            }
            let claimed = PeerIdentity(ikeIdentity: "a.example", authentication: .groupKey)
            XCTAssertEqual(try server.query(acceptedA.fd.rawValue).peer, claimed)
            try assertRefused(server, acceptedA, "a group key proves no identity, not even a's own")

            let fromClaim = try hosts.connect(
                try hosts.engine(claim, in: net.c), from: net.c, to: net.addressBC,
                port: listener.localPort)
            let acceptedClaim = try listener.accept(timeout: 5)
            defer {
                fromClaim.closeAbortively()
                acceptedClaim.closeAbortively()
            }
            let view = try server.query(acceptedClaim.fd.rawValue)
            XCTAssertEqual(view.flags, [.secured, .encrypted], "the claim authenticates: \(view)")
            XCTAssertEqual(view.peerMachineIdentity, "a.example")
            XCTAssertEqual(view.peer, claimed, "b cannot tell the claim from a")
            try assertRefused(server, acceptedClaim, "a group key proves no identity")

            // The claim does not displace a: our conns are `unique = never`, so its INITIAL_CONTACT makes b's
            // charon delete nothing, and a's connection keeps its own SAs.
            usleep(500_000)
            XCTAssertEqual(
                try server.query(acceptedA.fd.rawValue).flags, [.secured, .encrypted],
                "a's connection keeps its SAs beside the claim")
            XCTAssertEqual(try server.query(acceptedA.fd.rawValue).peerMachineIdentity, "a.example")

            try "id a.example -> daemon accept-group-key\n".write(
                toFile: fixture.mapPath, atomically: true, encoding: .utf8)
            chmod(fixture.mapPath, 0o644)
            _ = try fixture.map.reload()
            let (account, owner) = try impersonated(server, acceptedClaim, fixture)
            XCTAssertEqual(account, "daemon", "opted in: any holder of the group key who claims a.example")
            XCTAssertEqual(owner, 1)
            let withToken = try server.query(
                acceptedClaim.fd.rawValue, SocketSecurityQueryTemplate(peerTokenAccessMask: 1))
            XCTAssertEqual(try server.account(forToken: withToken.peerMachineToken).name, "daemon")
            server.tokens.close(withToken.peerMachineToken)
            XCTAssertEqual(server.tokens.openCount, 0)
        }
    }

    /// Certificates: a's carries subject `C=CH, O=Example, CN=a.example` and subjectAltNames a.example and
    /// alias.example; c's (same authority) only c.example. `rules` name only subjects or only subjectAltNames.
    func certificatePeers(rules: String) throws {
        let fixture = try CharonFlowTests.ImpersonationFixture(rules: rules)
        defer { fixture.remove() }
        let certificates = try TestCertificates(hosts: [
            .init(
                "a.example", subject: "C=CH, O=Example, CN=a.example", subjectAltNames: ["a.example", "alias.example"]),
            .init("b.example"), .init("c.example"),
        ])
        let hosts = try Hosts(certificates: certificates)
        defer { hosts.close() }
        let net = hosts.net
        let b = try hosts.backend(try hosts.certificate("b.example"), in: net.b)
        let a = try hosts.backend(try hosts.certificate("a.example"), in: net.a)
        let c = try hosts.backend(try hosts.certificate("c.example"), in: net.c)
        let server = try hosts.engine(b, in: net.b, map: fixture.map)
        let listener = try server.securedListener(in: net.b, family: .inet, address: .any(.inet))
        defer { listener.closeAbortively() }

        let fromA = try hosts.connect(
            try hosts.engine(a, in: net.a), from: net.a, to: net.addressBA, port: listener.localPort)
        let acceptedA = try listener.accept(timeout: 5)
        let fromC = try hosts.connect(
            try hosts.engine(c, in: net.c), from: net.c, to: net.addressBC, port: listener.localPort)
        let acceptedC = try listener.accept(timeout: 5)
        defer { for socket in [fromA, acceptedA, fromC, acceptedC] { socket.closeAbortively() } }

        let view = try server.query(acceptedA.fd.rawValue, SocketSecurityQueryTemplate(peerTokenAccessMask: 1))
        XCTAssertEqual(
            view.peer,
            PeerIdentity(
                ikeIdentity: "a.example", certificateSubject: try RDNSequence(parsing: "C=CH, O=Example, CN=a.example"),
                subjectAltNames: ["a.example", "alias.example"], authentication: .certificate))
        let ike = try XCTUnwrap(view.ikeSAID == 0 ? nil : view.ikeSAID)
        guard case .identified? = b.peerCertificateLookup(ikeSAID: ike) else {
            return XCTFail("lookup \(String(describing: b.peerCertificateLookup(ikeSAID: ike)))")
        }
        let (account, owner) = try impersonated(server, acceptedA, fixture)
        XCTAssertEqual(account, "daemon")
        XCTAssertEqual(owner, 1)
        XCTAssertEqual(
            try server.account(forToken: view.peerMachineToken).name, "daemon", "the token carries the names")
        server.tokens.close(view.peerMachineToken)

        XCTAssertEqual(
            try server.query(acceptedC.fd.rawValue).peer,
            PeerIdentity(
                ikeIdentity: "c.example", certificateSubject: try RDNSequence(parsing: "CN=c.example"),
                subjectAltNames: ["c.example"], authentication: .certificate))
        try assertRefused(server, acceptedC, "c's certificate names nothing the map knows")
        XCTAssertEqual(server.tokens.openCount, 0)
    }

    func testSubjectAltNameRulesMapCertificatePeers() throws {
        try inESPKernel(self) { try certificatePeers(rules: "san alias.example -> daemon\n") }
    }

    func testSubjectRulesMapCertificatePeers() throws {
        try inESPKernel(self) { try certificatePeers(rules: "subject \"C=CH, O=Example, CN=a.example\" -> daemon\n") }
    }

    /// A certificate whose subject is the single RDN `CN="admin, O=Example"` (made with OpenSSL: one attribute whose
    /// value holds `, O=`) does not match the rule `subject "CN=admin, O=Example"` (two RDNs), which a genuine
    /// two-RDN certificate does: the subject is compared as a structure, never as display text.
    func testACraftedOneRDNSubjectDoesNotMatchATwoRDNRule() throws {
        try inESPKernel(self) {
            let fixture = try CharonFlowTests.ImpersonationFixture(rules: "subject \"CN=admin, O=Example\" -> daemon\n")
            defer { fixture.remove() }
            let certificates = try TestCertificates(hosts: [
                .init("a.example", subject: "CN=admin, O=Example"), .init("b.example"),
                .init("c.example", opensslSubject: "/CN=admin, O=Example"),
            ])
            let hosts = try Hosts(certificates: certificates)
            defer { hosts.close() }
            let net = hosts.net
            let b = try hosts.backend(try hosts.certificate("b.example"), in: net.b)
            let a = try hosts.backend(try hosts.certificate("a.example"), in: net.a)
            let c = try hosts.backend(try hosts.certificate("c.example"), in: net.c)
            let server = try hosts.engine(b, in: net.b, map: fixture.map)
            let listener = try server.securedListener(in: net.b, family: .inet, address: .any(.inet))
            defer { listener.closeAbortively() }
            let fromA = try hosts.connect(
                try hosts.engine(a, in: net.a), from: net.a, to: net.addressBA, port: listener.localPort)
            let acceptedA = try listener.accept(timeout: 5)
            let fromC = try hosts.connect(
                try hosts.engine(c, in: net.c), from: net.c, to: net.addressBC, port: listener.localPort)
            let acceptedC = try listener.accept(timeout: 5)
            defer { for socket in [fromA, acceptedA, fromC, acceptedC] { socket.closeAbortively() } }

            let crafted = try server.query(acceptedC.fd.rawValue).peer
            XCTAssertEqual(crafted?.certificateSubject?.rdns.count, 1, "one RDN: \(String(describing: crafted))")
            try assertRefused(server, acceptedC, "a one-RDN subject whose value holds `, O=` is not the two-RDN rule")
            let (account, _) = try impersonated(server, acceptedA, fixture)
            XCTAssertEqual(account, "daemon", "the genuine two-RDN subject matches")
            XCTAssertEqual(server.tokens.openCount, 0)
        }
    }
}
