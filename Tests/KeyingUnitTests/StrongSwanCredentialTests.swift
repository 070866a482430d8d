import DirectoryNames
import Foundation
import X509
import XCTest
import XFRM

@testable import Keying
@testable import VICI

/// Tier 1: what ``StrongSwanBackend`` loads into charon for each kind of credentials, and what it says about
/// how a peer authenticated, against a scripted charon.
final class StrongSwanCredentialTests: XCTestCase {
    var server: FakeVICIServer?

    override func tearDown() {
        server?.stop()
        server = nil
    }

    static let ikeSA: VICIMessage = [
        "wss-responder": [
            "uniqueid": "7", "state": "ESTABLISHED", "remote-host": "10.77.0.1", "local-id": "b.example",
            "remote-id": "a.example",
            "child-sas": [
                "l1-9": [
                    "name": "l1", "uniqueid": "9", "state": "INSTALLED", "spi-in": "0000abcd",
                    "spi-out": "0000dcba",
                ]
            ],
        ]
    ]

    /// A charon that accepts every command, lists one IKE SA and answers `list-certs` with `certificates`.
    func charon(certificates: [[UInt8]] = [], eapUser: String? = nil, remoteID: String? = nil) throws
        -> FakeVICIServer
    {
        var sa = Self.ikeSA
        if let remoteID { sa.withSection("wss-responder") { $0["remote-id"] = .string(remoteID) } }
        if let eapUser {
            sa.withSection("wss-responder") { $0["remote-eap-id"] = .string(eapUser) }
        }
        let listed = sa
        let server = try FakeVICIServer(concurrent: true) { packet in
            switch packet {
            case .commandRequest("list-sas", _):
                return [.send(.event(name: "list-sa", message: listed)), .send(.commandResponse([:]))]
            case .commandRequest("list-certs", _):
                return certificates.map {
                    .send(
                        .event(
                            name: "list-cert",
                            message: [
                                "type": "X509", "flag": "NONE",
                                "data": .value($0),
                            ]))
                }
                    + [.send(.commandResponse([:]))]
            case .commandRequest:
                return [.send(.commandResponse(["success": "yes"]))]
            case .eventRegister, .eventUnregister:
                return [.send(.eventConfirm)]
            default:
                return [.close]
            }
        }
        self.server = server
        return server
    }

    func loadShared(_ server: FakeVICIServer) -> [VICIMessage] {
        server.received.compactMap {
            if case .commandRequest("load-shared", let message) = $0 { message } else { nil }
        }
    }

    func commands(_ server: FakeVICIServer, _ name: String) -> [VICIMessage] {
        server.received.compactMap {
            if case .commandRequest(let command, let message) = $0, command == name { message } else { nil }
        }
    }

    /// Per-peer keys: each offered for its peer's identity only (never empty owners, never our own identity);
    /// the peer is reported as authenticated by a key of its own.
    func testPerPeerKeysAreOfferedForTheirPeerOnly() throws {
        let server = try charon()
        let backend = try StrongSwanBackend(
            vici: try VICIClient(path: server.path, timeout: .seconds(2)),
            credentials: .init(
                identity: "b.example",
                method: .peerKeys(
                    ["a.example": "a's key", "c.example": "c's key"])))
        defer { backend.shutdown() }
        let loaded = loadShared(server)
        XCTAssertEqual(loaded.map { $0.list("owners") ?? [] }, [["a.example"], ["c.example"]])
        XCTAssertEqual(loaded.map { $0.string("type") }, ["IKE", "IKE"])
        XCTAssertEqual(loaded.map { $0.bytes("data") ?? [] }, [Array("a's key".utf8), Array("c's key".utf8)])
        let protection = try XCTUnwrap(backend.protection(inboundSPI: 0xabcd, peer: "10.77.0.1"))
        XCTAssertEqual(protection.remoteIdentity, "a.example")
        XCTAssertEqual(protection.authentication, PeerAuthentication(machine: .peerKey))
        XCTAssertNil(protection.remoteCertificate)
        XCTAssertEqual(commands(server, "list-certs").count, 0, "no certificates with pre-shared keys")
    }

    /// The group key is offered for every identity, and its peers are reported as group members; a second round
    /// adds the EAP user.
    func testGroupKeyPeersAreReportedAsSuch() throws {
        let server = try charon(eapUser: "alice")
        let backend = try StrongSwanBackend(
            vici: try VICIClient(path: server.path, timeout: .seconds(2)),
            credentials: .init(identity: "b.example", method: .psk("group secret")))
        defer { backend.shutdown() }
        XCTAssertEqual(loadShared(server).map { $0.list("owners") ?? ["?"] }, [[]], "owners %any")
        let protection = try XCTUnwrap(backend.protection(inboundSPI: 0xabcd, peer: "10.77.0.1"))
        XCTAssertEqual(protection.authentication, PeerAuthentication(machine: .groupKey, user: .eap))
        XCTAssertEqual(protection.remoteUserIdentity, "alice")
    }

    /// A per-peer key for our own identity or for a pattern would be offered like a group key: refused.
    func testPerPeerKeysNeverNameUsOrAPattern() throws {
        for peer in ["B.example", "%any", "*.example"] {
            let server = try charon()
            defer {
                server.stop()
                self.server = nil
            }
            XCTAssertThrowsError(
                try StrongSwanBackend(
                    vici: try VICIClient(path: server.path, timeout: .seconds(2)),
                    credentials: .init(
                        identity: "b.example",
                        method: .peerKeys([peer: "secret"])))
            ) {
                XCTAssertEqual(($0 as? KeyingError)?.code, .rejected, "\($0)")
                XCTAssertFalse("\($0)".contains("secret"), "no secret in the error")
            }
            XCTAssertEqual(loadShared(server).count, 0)
        }
    }

    /// Certificates: the peer's certificate is fetched with `list-certs` for the IKE SA's remote-id, once per
    /// IKE SA, and its subject and subjectAltNames come with the protection.
    func testCertificateSubjectAndNamesComeWithTheProtectionOncePerIKESA() throws {
        let pki = TestPKI()
        let authority = try TestPKI.pem(try pki.authority())
        let host = try TestPKI.der(
            try pki.host(TestPKI.subjectA, names: [.dnsName("a.example"), .dnsName("alias.example")]))
        let impostor = try TestPKI.der(
            try pki.host(
                TestPKI.subjectA, names: [.dnsName("a.example"), .dnsName("root.example")],
                signedBy: pki.impostorKey))
        let server = try charon(certificates: [impostor, host])
        let backend = try StrongSwanBackend(
            vici: try VICIClient(path: server.path, timeout: .seconds(2)),
            credentials: .init(
                identity: "b.example",
                method: .certificate(
                    certificate: host, privateKey: Array(TestKeys.host.utf8),
                    authorities: [authority])))
        defer { backend.shutdown() }
        for _ in 0..<2 {
            let protection = try XCTUnwrap(backend.protection(inboundSPI: 0xabcd, peer: "10.77.0.1"))
            XCTAssertEqual(protection.authentication, PeerAuthentication(machine: .certificate))
            XCTAssertEqual(
                protection.remoteCertificate,
                CertificateIdentity(
                    subject: try RDNSequence(parsing: "C=CH, O=Example, CN=a.example"),
                    subjectAltNames: ["a.example", "alias.example"]))
        }
        let requests = commands(server, "list-certs")
        XCTAssertEqual(requests.count, 1, "one list-certs per IKE SA")
        XCTAssertEqual(requests.first?.string("type"), "X509")
        XCTAssertEqual(requests.first?.string("flag"), "NONE")
        XCTAssertEqual(requests.first?.string("subject"), "a.example")
        guard case .identified? = backend.peerCertificateLookup(ikeSAID: 7) else { return XCTFail("not cached") }
    }

    /// A DN remote-id is printed without escaping, so a certificate whose one CN holds `admin, O=Example` prints
    /// as the two-RDN `CN=admin, O=Example`: every certificate is listed (no `subject` filter, which charon would
    /// parse from that text), and the two make the lookup ambiguous instead of the genuine one being believed.
    func testADNRemoteIdentityListsEveryCertificateSoThatLookalikesAreAmbiguous() throws {
        let pki = TestPKI()
        let authority = try TestPKI.pem(try pki.authority())
        let genuine = try TestPKI.der(
            try pki.host(
                try DistinguishedName {
                    CommonName("admin")
                    OrganizationName("Example")
                }, names: []))
        let crafted = try TestPKI.der(
            try pki.host(
                DistinguishedName([
                    RelativeDistinguishedName([
                        RelativeDistinguishedName.Attribute(
                            type: .RDNAttributeType.commonName, utf8String: "admin, O=Example")
                    ])
                ]), names: []))
        for (certificates, expected) in [
            ([genuine, crafted], nil), ([crafted], try RDNSequence(parsing: "CN=admin\\, O=Example")),
        ] {
            let server = try charon(certificates: certificates, remoteID: "CN=admin, O=Example")
            self.server = server
            let backend = try StrongSwanBackend(
                vici: try VICIClient(path: server.path, timeout: .seconds(2)),
                credentials: .init(
                    identity: "b.example",
                    method: .certificate(
                        certificate: try TestPKI.der(try pki.host(TestPKI.subjectA, names: [])),
                        privateKey: Array(TestKeys.host.utf8), authorities: [authority])))
            defer { backend.shutdown() }
            let protection = try XCTUnwrap(backend.protection(inboundSPI: 0xabcd, peer: "10.77.0.1"))
            XCTAssertEqual(protection.remoteCertificate?.subject, expected)
            let requests = commands(server, "list-certs")
            XCTAssertEqual(requests.count, 1)
            XCTAssertNil(requests.first?.string("subject"), "no subject filter for a DN identity")
            server.stop()
            self.server = nil
        }
    }
}
