import Glibc
import SwiftASN1
import VICI
import X509

/// What a peer's end-entity certificate says about its holder, as text in strongSwan's words: the subject DN as
/// charon prints it (`C=CH, O=Example, CN=b.example`) and each subjectAltName that has a text form. The input of
/// the identity map's `subject` and `san` rules.
public struct CertificateIdentity: Hashable, Sendable, CustomStringConvertible {
    /// The subject DN, RDNs in certificate order, `TYPE=value` joined by `, ` (strongSwan's `dntoa`).
    public var subject: String
    /// DNS names, email addresses, IP addresses, URIs, directory names (as DNs) and registered ids (dotted), in
    /// certificate order. Other names (otherName, x400Address, ediPartyName) have no text form and are left out.
    public var subjectAltNames: [String]

    public init(subject: String, subjectAltNames: [String]) {
        self.subject = subject
        self.subjectAltNames = subjectAltNames
    }

    /// The identity of a parsed certificate. Throws when its subjectAltName extension cannot be decoded.
    init(_ certificate: Certificate) throws {
        subject = Self.text(certificate.subject)
        subjectAltNames = try (certificate.extensions.subjectAlternativeNames ?? SubjectAlternativeNames([]))
            .compactMap(Self.text)
    }

    /// Whether `identity` (an IKE identity as charon prints it) is this certificate's subject or one of its
    /// subjectAltNames, ASCII case-insensitively (as charon compares FQDN and email identities).
    public func names(_ identity: String) -> Bool {
        let wanted = Self.foldCase(identity)
        return Self.foldCase(subject) == wanted || subjectAltNames.contains { Self.foldCase($0) == wanted }
    }

    public var description: String {
        (["subject \"\(subject)\""] + subjectAltNames.map { "san \($0)" }).joined(separator: ", ")
    }

    // MARK: strongSwan's text forms

    /// A DN as strongSwan's `dntoa` prints it: every attribute of every RDN in order, `, ` between them, the
    /// attribute's short name from strongSwan's OID table (dotted for an unknown type), the value with bytes
    /// outside printable ASCII replaced by `?`.
    static func text(_ name: DistinguishedName) -> String {
        name.flatMap { rdn in rdn.map { "\(typeName($0.type))=\(printable(valueBytes($0.value)))" } }
            .joined(separator: ", ")
    }

    static func text(_ name: GeneralName) -> String? {
        switch name {
        case .dnsName(let text), .rfc822Name(let text), .uniformResourceIdentifier(let text):
            printable(Array(text.utf8))
        case .ipAddress(let octets): address(Array(octets.bytes))
        case .directoryName(let dn): text(dn)
        case .registeredID(let oid): oid.oidComponents.map(String.init).joined(separator: ".")
        default: nil
        }
    }

    /// strongSwan's names for X.501 attribute types (`src/libstrongswan/asn1/oid.txt`).
    static let attributeNames: [[UInt]: String] = [
        [2, 5, 4, 3]: "CN", [2, 5, 4, 4]: "SN", [2, 5, 4, 5]: "serialNumber", [2, 5, 4, 6]: "C", [2, 5, 4, 7]: "L",
        [2, 5, 4, 8]: "ST", [2, 5, 4, 9]: "STREET", [2, 5, 4, 10]: "O", [2, 5, 4, 11]: "OU", [2, 5, 4, 12]: "T",
        [2, 5, 4, 13]: "D", [2, 5, 4, 16]: "postalAddress", [2, 5, 4, 17]: "postalCode", [2, 5, 4, 41]: "N",
        [2, 5, 4, 42]: "G", [2, 5, 4, 43]: "I", [2, 5, 4, 45]: "ID", [2, 5, 4, 46]: "dnQualifier",
        [2, 5, 4, 54]: "dmdName", [2, 5, 4, 65]: "pseudonym", [2, 5, 4, 72]: "role",
        [0, 9, 2342, 19_200_300, 100, 1, 1]: "UID", [0, 9, 2342, 19_200_300, 100, 1, 25]: "DC",
        [1, 2, 840, 113_549, 1, 9, 1]: "E", [1, 2, 840, 113_549, 1, 9, 2]: "unstructuredName",
        [1, 2, 840, 113_549, 1, 9, 8]: "unstructuredAddress",
        [2, 16, 840, 1, 113_730, 3, 1, 3]: "employeeNumber",
        [0, 2, 262, 1, 10, 7, 20]: "ND",
    ]

    static func typeName(_ oid: ASN1ObjectIdentifier) -> String {
        let components = Array(oid.oidComponents)
        return attributeNames[components] ?? components.map(String.init).joined(separator: ".")
    }

    /// The value's content bytes: the string for the string types, else the primitive content of its encoding.
    static func valueBytes(_ value: RelativeDistinguishedName.Attribute.Value) -> [UInt8] {
        if let text = String(value) { return Array(text.utf8) }
        var serializer = DER.Serializer()
        guard (try? serializer.serialize(ASN1Any(value))) != nil,
            let node = try? DER.parse(serializer.serializedBytes),
            case .primitive(let content) = node.content
        else { return [] }
        return Array(content)
    }

    /// strongSwan's `chunk_printable`: every byte outside printable ASCII becomes `?`.
    static func printable(_ bytes: [UInt8]) -> String {
        String(decoding: bytes.map { $0 >= 0x20 && $0 < 0x7f ? $0 : UInt8(ascii: "?") }, as: UTF8.self)
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
