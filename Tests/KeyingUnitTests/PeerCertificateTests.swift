import DirectoryNames
import Foundation
import SwiftASN1
import VICI
import X509
import XCTest

@testable import Keying

/// Throw-away P-256 keys for certificates made in the tests (never used anywhere else).
enum TestKeys {
    static let authority = """
        -----BEGIN PRIVATE KEY-----
        MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgLICq7fGwqb+N3V1F
        9i/WcWYzz5W3Ks8a93KuyawaKC6hRANCAAQtG4iLPoVLXdrx3PZhUfbQznMV6Xef
        u0xZ69jZKTeWI1w/+DaId+4e6ZRdL+WCDgZT1gSrK6jYpoVjDna9mNzF
        -----END PRIVATE KEY-----
        """
    static let impostor = """
        -----BEGIN PRIVATE KEY-----
        MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQguSOOmrtRaKrfo24i
        8falBqT/dNfAgldwvkUmWtTxTg6hRANCAAR1Np8bJVJFtbxvTao9eaKj+2gSh8vq
        BCJScOV529O9pUBf0Vna1LcuNPEkqbB/3M23Ms9M9tlej86XAZoBS8NK
        -----END PRIVATE KEY-----
        """
    static let host = """
        -----BEGIN PRIVATE KEY-----
        MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgvugOK8K8TdqwGM8F
        /+PLwgRlC/n50N5um7ft2Rbn2DWhRANCAARP+k/rULt7zv75RWRg4aY8mI1TlU36
        1IyCnbvw13iCxSsgq6INhuMUIQ38YLP/1iNo2c99T8kyhudl+LVQGMK7
        -----END PRIVATE KEY-----
        """
}

/// Certificates made in memory: an authority, an impostor with the same name but another key, and hosts.
struct TestPKI {
    let authorityKey = try! Certificate.PrivateKey(pemEncoded: TestKeys.authority)
    let impostorKey = try! Certificate.PrivateKey(pemEncoded: TestKeys.impostor)
    let hostKey = try! Certificate.PrivateKey(pemEncoded: TestKeys.host)
    let authorityName = try! DistinguishedName { CommonName("WSS Test CA") }

    func authority(key: Certificate.PrivateKey? = nil, name: DistinguishedName? = nil) throws -> Certificate {
        let key = key ?? authorityKey
        let name = name ?? authorityName
        return try Certificate(
            version: .v3, serialNumber: Certificate.SerialNumber(), publicKey: key.publicKey,
            notValidBefore: Date().addingTimeInterval(-3600), notValidAfter: Date().addingTimeInterval(86_400),
            issuer: name, subject: name, signatureAlgorithm: .ecdsaWithSHA256,
            extensions: try Certificate.Extensions {
                Critical(BasicConstraints.isCertificateAuthority(maxPathLength: nil))
            },
            issuerPrivateKey: key)
    }

    func host(
        _ subject: DistinguishedName, names: [GeneralName], signedBy key: Certificate.PrivateKey? = nil,
        issuer: DistinguishedName? = nil, validUntil: Date = Date().addingTimeInterval(86_400)
    ) throws -> Certificate {
        try Certificate(
            version: .v3, serialNumber: Certificate.SerialNumber(), publicKey: hostKey.publicKey,
            notValidBefore: validUntil.addingTimeInterval(-90_000), notValidAfter: validUntil,
            issuer: issuer ?? authorityName, subject: subject, signatureAlgorithm: .ecdsaWithSHA256,
            extensions: try Certificate.Extensions { SubjectAlternativeNames(names) },
            issuerPrivateKey: key ?? authorityKey)
    }

    static func der(_ certificate: Certificate) throws -> [UInt8] {
        var serializer = DER.Serializer()
        try serializer.serialize(certificate)
        return serializer.serializedBytes
    }

    static func pem(_ certificate: Certificate) throws -> [UInt8] {
        Array(try certificate.serializeAsPEM().pemString.utf8)
    }

    static let subjectA = try! DistinguishedName {
        CountryName("CH")
        OrganizationName("Example")
        CommonName("a.example")
    }
}

final class CertificateIdentityTests: XCTestCase {
    let pki = TestPKI()

    /// The subject as charon prints it (certificate order, `, `, strongSwan's short names) and every
    /// subjectAltName that has a text form, in order.
    func testSubjectAndSubjectAltNamesInStrongSwansWords() throws {
        let subject = try DistinguishedName {
            CountryName("CH")
            OrganizationName("Example")
            OrganizationalUnitName("Ops")
            CommonName("a.example")
            EmailAddress("ops@example.org")
        }
        let names: [GeneralName] = [
            .dnsName("a.example"), .rfc822Name("ops@example.org"),
            .ipAddress(ASN1OctetString(contentBytes: [10, 77, 0, 1])),
            .ipAddress(
                ASN1OctetString(contentBytes: ArraySlice([0xfd, 0x77] + [UInt8](repeating: 0, count: 13) + [1]))),
            .uniformResourceIdentifier("https://a.example/"), .directoryName(TestPKI.subjectA),
            .registeredID([1, 3, 6, 1, 4, 1, 99]),
        ]
        let identity = try CertificateIdentity(try pki.host(subject, names: names))
        XCTAssertEqual(
            identity.subject, try RDNSequence(parsing: "C=CH, O=Example, OU=Ops, CN=a.example, E=ops@example.org"))
        XCTAssertEqual(identity.subject.strongSwanText, "C=CH, O=Example, OU=Ops, CN=a.example, E=ops@example.org")
        XCTAssertEqual(
            identity.subjectAltNames,
            ["a.example", "ops@example.org", "10.77.0.1", "fd77::1", "https://a.example/", "1.3.6.1.4.1.99"])
        XCTAssertEqual(identity.directoryNames, [try RDNSequence(parsing: "C=CH, O=Example, CN=a.example")])
        XCTAssertTrue(identity.names("A.Example"), "FQDN identities compare case-insensitively")
        XCTAssertTrue(identity.names("fd77::1"))
        XCTAssertTrue(identity.names("C=CH, O=Example, OU=Ops, CN=a.example, E=ops@example.org"))
        XCTAssertTrue(identity.names("C=CH, O=Example, CN=a.example"), "the directoryName, as charon prints it")
        XCTAssertFalse(identity.names("b.example"))
    }

    /// The subject travels as the certificate's structure: RDN by RDN, attribute by attribute (type OID and value),
    /// a multi-valued RDN kept whole. A value holding `, O=Example` stays one value of one RDN, although strongSwan
    /// prints it exactly as it prints two RDNs.
    func testTheSubjectIsTheCertificatesStructureNotItsText() throws {
        let crafted = DistinguishedName([
            RelativeDistinguishedName([
                RelativeDistinguishedName.Attribute(type: .RDNAttributeType.commonName, utf8String: "admin, O=Example")
            ])
        ])
        let genuine = try DistinguishedName {
            CommonName("admin")
            OrganizationName("Example")
        }
        let multiValued = DistinguishedName([
            RelativeDistinguishedName([
                RelativeDistinguishedName.Attribute(type: .RDNAttributeType.commonName, utf8String: "admin"),
                RelativeDistinguishedName.Attribute(type: .RDNAttributeType.organizationName, utf8String: "Example"),
            ])
        ])
        let craftedIdentity = try CertificateIdentity(try pki.host(crafted, names: []))
        let genuineIdentity = try CertificateIdentity(try pki.host(genuine, names: []))
        let multiValuedIdentity = try CertificateIdentity(try pki.host(multiValued, names: []))
        XCTAssertEqual(craftedIdentity.subject.rdns.count, 1)
        XCTAssertEqual(craftedIdentity.subject.rdns[0].attributes.count, 1)
        XCTAssertEqual(craftedIdentity.subject.rdns[0].attributes[0].type.oid, [2, 5, 4, 3])
        XCTAssertEqual(craftedIdentity.subject.rdns[0].attributes[0].value, Array("admin, O=Example".utf8))
        XCTAssertEqual(craftedIdentity.subject.description, "CN=admin\\, O=Example", "escaped as RFC 4514 says")
        XCTAssertEqual(genuineIdentity.subject.rdns.map(\.attributes.count), [1, 1])
        XCTAssertEqual(multiValuedIdentity.subject.rdns.map(\.attributes.count), [2])
        // strongSwan prints all three alike; their structures differ.
        for identity in [craftedIdentity, genuineIdentity, multiValuedIdentity] {
            XCTAssertEqual(identity.subject.strongSwanText, "CN=admin, O=Example")
        }
        XCTAssertFalse(craftedIdentity.subject.matches(genuineIdentity.subject))
        XCTAssertFalse(multiValuedIdentity.subject.matches(genuineIdentity.subject))
        XCTAssertTrue(genuineIdentity.subject.matches(try RDNSequence(parsing: "cn=ADMIN, o=example")))
    }

    /// Unknown attribute types print dotted; bytes outside printable ASCII print as `?` (strongSwan's
    /// `chunk_printable`), so the text equals charon's `remote-id` for a DN identity.
    func testUnknownAttributesAndUnprintableBytes() throws {
        let subject = DistinguishedName([
            RelativeDistinguishedName([
                RelativeDistinguishedName.Attribute(type: [1, 2, 3, 4], utf8String: "Zürich")
            ])
        ])
        let identity = try CertificateIdentity(try pki.host(subject, names: []))
        XCTAssertEqual(identity.subject.strongSwanText, "1.2.3.4=Z??rich")
        XCTAssertEqual(identity.subject.description, "1.2.3.4=Zürich")
        XCTAssertEqual(identity.subject.rdns.first?.attributes.first?.value, Array("Zürich".utf8))
        XCTAssertEqual(identity.subjectAltNames, [])
    }
}

final class PeerCertificateSelectorTests: XCTestCase {
    let pki = TestPKI()

    func selector() throws -> PeerCertificateSelector {
        PeerCertificateSelector(authorities: [try TestPKI.pem(try pki.authority())])
    }

    /// Only a certificate our authority signed and that names the IKE SA's remote-id counts: not one from an
    /// impostor authority with the same name, not one from another issuer, not one for another identity.
    func testOnlyOurAuthoritysCertificateForTheRemoteIdentityCounts() throws {
        let genuine = try pki.host(TestPKI.subjectA, names: [.dnsName("a.example"), .dnsName("alias.example")])
        let impostor = try pki.host(
            TestPKI.subjectA, names: [.dnsName("a.example"), .dnsName("admin.example")],
            signedBy: pki.impostorKey)
        let otherIssuer = try pki.host(
            TestPKI.subjectA, names: [.dnsName("a.example"), .dnsName("other.example")],
            signedBy: pki.impostorKey, issuer: try DistinguishedName { CommonName("Other CA") })
        let otherHost = try pki.host(try DistinguishedName { CommonName("c.example") }, names: [.dnsName("c.example")])
        let candidates = try [impostor, otherIssuer, otherHost, genuine].map(TestPKI.der) + [[0x30, 0x03, 0x01, 0x01]]
        let selector = try selector()
        XCTAssertEqual(
            selector.select(candidates, remoteIdentity: "a.example"),
            .identified(
                CertificateIdentity(
                    subject: try RDNSequence(parsing: "C=CH, O=Example, CN=a.example"),
                    subjectAltNames: ["a.example", "alias.example"])))
        XCTAssertEqual(
            selector.select(candidates, remoteIdentity: "C=CH, O=Example, CN=a.example"),
            .identified(
                CertificateIdentity(
                    subject: try RDNSequence(parsing: "C=CH, O=Example, CN=a.example"),
                    subjectAltNames: ["a.example", "alias.example"])),
            "a DN remote-id matches the subject")
        XCTAssertEqual(
            selector.select(try [impostor, otherIssuer].map(TestPKI.der), remoteIdentity: "a.example"), .notFound)
        XCTAssertEqual(selector.select(candidates, remoteIdentity: "b.example"), .notFound)
    }

    /// Two certificates of our authority for one identity that name different things: which one the peer used
    /// is unknown, so neither is believed. Two that name the same things (a renewal) leave no doubt.
    func testDisagreeingCertificatesAreAmbiguousRenewalsAreNot() throws {
        let first = try pki.host(TestPKI.subjectA, names: [.dnsName("a.example")])
        let second = try pki.host(TestPKI.subjectA, names: [.dnsName("a.example"), .dnsName("admin.example")])
        let renewal = try pki.host(TestPKI.subjectA, names: [.dnsName("a.example")])
        XCTAssertNotEqual(try TestPKI.der(first), try TestPKI.der(renewal), "distinct certificates (serial numbers)")
        let selector = try selector()
        guard
            case .ambiguous(let identities) = selector.select(
                try [first, second].map(TestPKI.der), remoteIdentity: "a.example")
        else { return XCTFail("expected ambiguous") }
        XCTAssertEqual(identities.count, 2)
        XCTAssertEqual(
            selector.select(try [first, renewal, first].map(TestPKI.der), remoteIdentity: "a.example"),
            .identified(
                CertificateIdentity(
                    subject: try RDNSequence(parsing: "C=CH, O=Example, CN=a.example"), subjectAltNames: ["a.example"]))
        )
    }

    /// An expired certificate of the same identity, still in charon's cache, naming other subjectAltNames, does not
    /// make the lookup ambiguous and never decides: only a certificate valid when the IKE SA was authenticated
    /// counts.
    func testAnExpiredCertificateOfTheSameIdentityNeverDecides() throws {
        let current = try pki.host(TestPKI.subjectA, names: [.dnsName("a.example")])
        let expired = try pki.host(
            TestPKI.subjectA, names: [.dnsName("a.example"), .dnsName("admin.example")],
            validUntil: Date().addingTimeInterval(-60))
        let selector = try selector()
        XCTAssertEqual(
            selector.select(try [expired, current].map(TestPKI.der), remoteIdentity: "a.example"),
            .identified(
                CertificateIdentity(
                    subject: try RDNSequence(parsing: "C=CH, O=Example, CN=a.example"), subjectAltNames: ["a.example"]))
        )
        XCTAssertEqual(selector.select([try TestPKI.der(expired)], remoteIdentity: "a.example"), .notFound)
        XCTAssertEqual(
            selector.select(
                [try TestPKI.der(expired)], remoteIdentity: "a.example",
                authenticatedAt: Date().addingTimeInterval(-3600)),
            .identified(
                CertificateIdentity(
                    subject: try RDNSequence(parsing: "C=CH, O=Example, CN=a.example"),
                    subjectAltNames: ["a.example", "admin.example"])),
            "valid when the IKE SA was authenticated")
    }

    /// Authorities in PEM or DER; one that cannot be parsed is kept aside with its position and cause.
    func testAuthoritiesInPEMOrDERAndUnusableOnes() throws {
        let authority = try pki.authority()
        let selector = PeerCertificateSelector(authorities: [
            Array("not a certificate".utf8), try TestPKI.der(authority),
        ])
        XCTAssertEqual(selector.authorities.count, 1)
        XCTAssertEqual(selector.unusable.map(\.index), [0])
        let host = try pki.host(TestPKI.subjectA, names: [.dnsName("a.example")])
        XCTAssertTrue(selector.isIssuedByAnAuthority(host))
        XCTAssertEqual(try PeerCertificateSelector.parse(try TestPKI.pem(host)), host)
    }

    /// One `list-certs` per IKE SA: a second query is answered from the cache; a failed or empty fetch is not cached.
    func testLookupsAreCachedPerIKESAFailuresAreNot() throws {
        let cache = PeerCertificateCache(selector: try selector())
        let der = try TestPKI.der(try pki.host(TestPKI.subjectA, names: [.dnsName("a.example")]))
        struct Unreachable: Error {}
        XCTAssertThrowsError(
            try cache.lookup(ikeSAID: 7, remoteIdentity: "a.example", authenticatedAt: Date()) {
                () throws(Unreachable) in
                throw Unreachable()
            })
        XCTAssertNil(cache.known(ikeSAID: 7))
        XCTAssertEqual(
            cache.lookup(ikeSAID: 7, remoteIdentity: "a.example", authenticatedAt: Date()) { () -> [[UInt8]] in [] },
            .notFound)
        XCTAssertNil(cache.known(ikeSAID: 7), "nothing found is asked again next time")
        var fetches = 0
        for _ in 0..<3 {
            let lookup = cache.lookup(ikeSAID: 7, remoteIdentity: "a.example", authenticatedAt: Date()) {
                () -> [[UInt8]] in
                fetches += 1
                return [der]
            }
            guard case .identified = lookup else { return XCTFail("\(lookup)") }
        }
        XCTAssertEqual(fetches, 1)
        XCTAssertEqual(cache.count, 1)
    }

    /// The cache judges validity at the IKE SA's authentication, not at the query: a certificate that expired
    /// since decides for an IKE SA authenticated while it was valid, and not for one authenticated after.
    func testTheCertificateMustHaveBeenValidWhenTheIKESAWasAuthenticated() throws {
        let cache = PeerCertificateCache(selector: try selector())
        let expired = try TestPKI.der(
            try pki.host(TestPKI.subjectA, names: [.dnsName("a.example")], validUntil: Date().addingTimeInterval(-60)))
        let before = cache.lookup(
            ikeSAID: 8, remoteIdentity: "a.example", authenticatedAt: Date().addingTimeInterval(-3600)
        ) { () -> [[UInt8]] in [expired] }
        guard case .identified = before else { return XCTFail("authenticated while valid: \(before)") }
        XCTAssertEqual(
            cache.lookup(ikeSAID: 9, remoteIdentity: "a.example", authenticatedAt: Date()) { () -> [[UInt8]] in
                [expired]
            }, .notFound, "authenticated after it expired")
        // charon's `established` (seconds ago) becomes the protection's authentication time.
        let ike = IKESAInfo(name: "c", section: ["established": "3600"])
        let protection = StrongSwanBackend.protection(ike: ike, child: ChildSAInfo(key: "c-1", section: [:]))
        let age = Date().timeIntervalSince(try XCTUnwrap(protection.authenticatedAt))
        XCTAssertEqual(age, 3600, accuracy: 5)
    }
}
