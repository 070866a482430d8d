import DirectoryNames
import Glibc
import SwiftASN1
import VICI
import X509

/// What a peer's end-entity certificate says about its holder: the subject as its structure (RDN by RDN, attribute
/// by attribute: never text to be parsed again), each subjectAltName that has a text form, and the directoryName
/// subjectAltNames as structures too. The input of the identity map's `subject` and `san` rules.
public struct CertificateIdentity: Hashable, Sendable, CustomStringConvertible {
    /// The subject DN, RDNs in certificate order, multi-valued RDNs kept.
    public var subject: RDNSequence
    /// DNS names, email addresses, IP addresses, URIs and registered ids (dotted), in certificate order. Other
    /// names (otherName, x400Address, ediPartyName) have no text form and are left out; directoryNames are in
    /// ``directoryNames``.
    public var subjectAltNames: [String]
    /// The directoryName subjectAltNames, in certificate order.
    public var directoryNames: [RDNSequence]

    public init(subject: RDNSequence, subjectAltNames: [String], directoryNames: [RDNSequence] = []) {
        self.subject = subject
        self.subjectAltNames = subjectAltNames
        self.directoryNames = directoryNames
    }

    /// The identity of a parsed certificate. Throws when its subjectAltName extension cannot be decoded.
    init(_ certificate: Certificate) throws {
        subject = Self.structure(certificate.subject)
        let names = try certificate.extensions.subjectAlternativeNames ?? SubjectAlternativeNames([])
        subjectAltNames = names.compactMap(Self.text)
        directoryNames = names.compactMap { name in
            if case .directoryName(let dn) = name { Self.structure(dn) } else { nil }
        }
    }

    /// Whether `identity` (an IKE identity as charon prints it) is this certificate's subject or one of its
    /// subjectAltNames, ASCII case-insensitively (as charon compares FQDN and email identities). A DN identity is
    /// compared with strongSwan's text of the names (`dntoa`), the only form charon reports it in.
    public func names(_ identity: String) -> Bool {
        let wanted = Self.foldCase(identity)
        return Self.foldCase(subject.strongSwanText) == wanted
            || subjectAltNames.contains { Self.foldCase($0) == wanted }
            || directoryNames.contains { Self.foldCase($0.strongSwanText) == wanted }
    }

    public var description: String {
        (["subject \"\(subject)\""] + subjectAltNames.map { "san \($0)" }
            + directoryNames.map { "san dirName \"\($0)\"" })
            .joined(separator: ", ")
    }

    // MARK: From swift-certificates' types

    /// A DN's structure: every RDN in order, every attribute of each with its type's OID and its value's bytes.
    static func structure(_ name: DistinguishedName) -> RDNSequence {
        RDNSequence(
            name.map { rdn in
                RDNSequence.RDN(
                    rdn.map {
                        RDNSequence.Attribute(
                            type: RDNSequence.AttributeType(oid: Array($0.type.oidComponents)),
                            value: valueBytes($0.value))
                    })
            })
    }

    static func text(_ name: GeneralName) -> String? {
        switch name {
        case .dnsName(let text), .rfc822Name(let text), .uniformResourceIdentifier(let text):
            RDNSequence.printable(Array(text.utf8))
        case .ipAddress(let octets): address(Array(octets.bytes))
        case .registeredID(let oid): oid.oidComponents.map(String.init).joined(separator: ".")
        default: nil
        }
    }

    /// The value's bytes: UTF-8 for the string types, else the primitive content of its encoding, or the whole
    /// encoding of a constructed value (so that different values never come out the same).
    static func valueBytes(_ value: RelativeDistinguishedName.Attribute.Value) -> [UInt8] {
        if let text = String(value) { return Array(text.utf8) }
        var serializer = DER.Serializer()
        guard (try? serializer.serialize(ASN1Any(value))) != nil else { return [] }
        guard let node = try? DER.parse(serializer.serializedBytes), case .primitive(let content) = node.content
        else { return serializer.serializedBytes }
        return Array(content)
    }

    static func address(_ octets: [UInt8]) -> String? {
        guard octets.count == 4 || octets.count == 16 else { return nil }
        var buffer = [CChar](repeating: 0, count: Int(INET6_ADDRSTRLEN) + 1)
        let ok = octets.withUnsafeBytes { raw in
            inet_ntop(octets.count == 4 ? AF_INET : AF_INET6, raw.baseAddress, &buffer, socklen_t(buffer.count)) != nil
        }
        guard ok, let end = buffer.firstIndex(of: 0) else { return nil }
        return String(decoding: buffer[..<end].map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    static func foldCase(_ text: String) -> String {
        String(decoding: text.utf8.map { $0 >= 0x41 && $0 <= 0x5a ? $0 + 0x20 : $0 }, as: UTF8.self)
    }
}
