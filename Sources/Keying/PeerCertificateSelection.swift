import Foundation
import VICI
import X509

/// What is known about the certificate a peer authenticated an IKE SA with.
public enum PeerCertificateLookup: Hashable, Sendable {
    /// Exactly one identity qualifies (one certificate, or several that name the same subject and subjectAltNames,
    /// such as a renewal).
    case identified(CertificateIdentity)
    /// Certificates that disagree about subject or subjectAltNames all qualify: which one the peer used is not
    /// known, so none is believed (the subject and subjectAltNames are unknown, never guessed).
    case ambiguous([CertificateIdentity])
    /// No certificate qualifies (charon's cache no longer holds it, or none chains to our authorities).
    case notFound
}

/// Picks the certificate a peer authenticated with among those charon lists for its identity.
///
/// VICI reports no certificate per IKE SA. `list-certs` with the IKE SA's `remote-id` as subject returns the
/// matching end-entity certificates in charon's cache, which holds 32, keeps certificates of failed attempts too,
/// and is shared with every other user of that charon. The conns pin the peer's trust to this configuration's
/// authorities (`cacerts`) and the remote identity to the peer target name, so the `remote-id` of an established
/// IKE SA is the subject or a subjectAltName of a certificate that chains to one of them. A candidate therefore
/// counts only if its issuer is one of our authorities, that authority's key verifies its signature, its
/// subject or a subjectAltName is the `remote-id`, and it was valid when the IKE SA was authenticated (an
/// expired certificate of the same identity, still in the cache, cannot decide). A revoked but unexpired
/// certificate in the cache cannot be told apart here (charon checked revocation when it authenticated): when it
/// names other subjectAltNames than the one used, the lookup is ambiguous and nothing is believed.
struct PeerCertificateSelector: Sendable {
    /// An authority this selector cannot use (it could not be parsed), by its position in the configuration.
    struct UnusableAuthority: Error, Sendable {
        var index: Int
        var cause: any Error & Sendable
    }

    let authorities: [Certificate]
    let unusable: [UnusableAuthority]

    init(authorities: [[UInt8]]) {
        var parsed: [Certificate] = []
        var unusable: [UnusableAuthority] = []
        for (index, bytes) in authorities.enumerated() {
            do {
                parsed.append(try Self.parse(bytes))
            } catch {
                unusable.append(UnusableAuthority(index: index, cause: error))
            }
        }
        self.authorities = parsed
        self.unusable = unusable
    }

    /// The identity among `candidates` (DER or PEM certificates) that authenticated `remoteIdentity` at
    /// `authenticatedAt` (the IKE SA's establishment).
    func select(_ candidates: [[UInt8]], remoteIdentity: String, authenticatedAt: Date = Date())
        -> PeerCertificateLookup
    {
        var seen = Set<Certificate>()
        var identities: [CertificateIdentity] = []
        for bytes in candidates {
            guard let certificate = try? Self.parse(bytes), seen.insert(certificate).inserted,
                certificate.notValidBefore <= authenticatedAt, authenticatedAt <= certificate.notValidAfter,
                isIssuedByAnAuthority(certificate),
                let identity = try? CertificateIdentity(certificate), identity.names(remoteIdentity)
            else { continue }
            if !identities.contains(identity) { identities.append(identity) }
        }
        switch identities.count {
        case 0: return .notFound
        case 1: return .identified(identities[0])
        default: return .ambiguous(identities)
        }
    }

    func isIssuedByAnAuthority(_ certificate: Certificate) -> Bool {
        authorities.contains { authority in
            authority.subject == certificate.issuer
                && authority.publicKey.isValidSignature(certificate.signature, for: certificate)
        }
    }

    /// A certificate in PEM (`-----BEGIN CERTIFICATE-----`) or DER.
    static func parse(_ bytes: [UInt8]) throws -> Certificate {
        let pemMarker = Array("-----BEGIN".utf8)
        if let start = bytes.firstIndex(of: UInt8(ascii: "-")), bytes[start...].starts(with: pemMarker) {
            return try Certificate(pemEncoded: String(decoding: bytes, as: UTF8.self))
        }
        return try Certificate(derEncoded: bytes)
    }
}
