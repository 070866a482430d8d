/// An X.501 distinguished name as its structure: a sequence of relative distinguished names (RDNs), each a set of
/// one or more attributes (type and value), in the order the name holds them. This is how a certificate's subject
/// or a directoryName subjectAltName travels from the keying layer to the identity map, and what a `subject` rule's
/// text is parsed into, so that names are compared attribute by attribute and a value can never pass for
/// structure: the one-attribute subject `CN="admin, O=Example"` is not the two-RDN name `CN=admin, O=Example`,
/// although strongSwan logs both as `CN=admin, O=Example`.
///
/// Text forms:
/// - ``description``: RFC 4514 (`, ` between RDNs, `+` between the attributes of one RDN, `,` `+` `"` `\` `<` `>`
///   `;`, a leading `#` or space, a trailing space and non-printable bytes escaped); ``init(parsing:)`` reads it
///   back to an equal value.
/// - ``strongSwanText``: what strongSwan's `dntoa` prints (no escaping, every attribute joined by `, `, bytes
///   outside printable ASCII as `?`). For logs and for comparing with identities charon prints; it is ambiguous,
///   so it is never parsed.
public struct RDNSequence: Hashable, Sendable, CustomStringConvertible {
    /// An attribute type: its object identifier.
    public struct AttributeType: Hashable, Sendable, Comparable, CustomStringConvertible {
        /// The OID's arcs (2.5.4.3 for CN).
        public let oid: [UInt]

        public init(oid: [UInt]) { self.oid = oid }

        /// The type `name` names: a short name (ASCII case-insensitively; strongSwan's names as it prints them,
        /// and the aliases its parser accepts where they do not conflict), or a dotted OID (`2.5.4.3`, optionally
        /// `OID.2.5.4.3`). nil for anything else.
        public init?(name: some StringProtocol) {
            let text = String(name)
            if let oid = Self.byName[RDNSequence.foldCase(text)] {
                self.oid = oid
                return
            }
            var digits = Substring(text)
            if digits.lowercased().hasPrefix("oid.") { digits = digits.dropFirst(4) }
            var arcs: [UInt] = []
            for arc in digits.split(separator: ".", omittingEmptySubsequences: false) {
                guard !arc.isEmpty, arc.utf8.allSatisfy({ $0 >= 0x30 && $0 <= 0x39 }), let value = UInt(arc) else {
                    return nil
                }
                arcs.append(value)
            }
            guard arcs.count >= 2 else { return nil }
            self.oid = arcs
        }

        /// strongSwan's short name for the type (`src/libstrongswan/asn1/oid.txt`), nil when it has none.
        public var name: String? { Self.names[oid] }

        /// The short name, or the dotted OID.
        public var description: String { name ?? oid.map(String.init).joined(separator: ".") }

        public static func < (a: AttributeType, b: AttributeType) -> Bool { a.oid.lexicographicallyPrecedes(b.oid) }

        /// strongSwan's names for X.501 attribute types, as it prints them (`src/libstrongswan/asn1/oid.txt`).
        static let names: [[UInt]: String] = [
            [2, 5, 4, 3]: "CN", [2, 5, 4, 4]: "SN", [2, 5, 4, 5]: "serialNumber", [2, 5, 4, 6]: "C",
            [2, 5, 4, 7]: "L", [2, 5, 4, 8]: "ST", [2, 5, 4, 9]: "STREET", [2, 5, 4, 10]: "O", [2, 5, 4, 11]: "OU",
            [2, 5, 4, 12]: "T", [2, 5, 4, 13]: "D", [2, 5, 4, 16]: "postalAddress", [2, 5, 4, 17]: "postalCode",
            [2, 5, 4, 41]: "N", [2, 5, 4, 42]: "G", [2, 5, 4, 43]: "I", [2, 5, 4, 45]: "ID",
            [2, 5, 4, 46]: "dnQualifier", [2, 5, 4, 54]: "dmdName", [2, 5, 4, 65]: "pseudonym", [2, 5, 4, 72]: "role",
            [0, 9, 2342, 19_200_300, 100, 1, 1]: "UID", [0, 9, 2342, 19_200_300, 100, 1, 25]: "DC",
            [1, 2, 840, 113_549, 1, 9, 1]: "E", [1, 2, 840, 113_549, 1, 9, 2]: "unstructuredName",
            [1, 2, 840, 113_549, 1, 9, 8]: "unstructuredAddress",
            [2, 16, 840, 1, 113_730, 3, 1, 3]: "employeeNumber",
            [0, 2, 262, 1, 10, 7, 20]: "ND",
        ]

        /// Names → types, lowercased: the printed names, and the aliases strongSwan's own parser accepts. Its
        /// parser reads `SN` as serialNumber, but it PRINTS surname as `SN`; rules are written as strongSwan logs
        /// names, so `SN` is surname here (write `serialNumber` for the other).
        static let byName: [String: [UInt]] = {
            var table: [String: [UInt]] = [:]
            for (oid, name) in names { table[RDNSequence.foldCase(name)] = oid }
            let aliases: [String: [UInt]] = [
                "s": [2, 5, 4, 4], "email": [1, 2, 840, 113_549, 1, 9, 1],
                "emailaddress": [1, 2, 840, 113_549, 1, 9, 1], "en": [2, 16, 840, 1, 113_730, 3, 1, 3],
                "un": [1, 2, 840, 113_549, 1, 9, 2], "ua": [1, 2, 840, 113_549, 1, 9, 8],
            ]
            table.merge(aliases) { printed, _ in printed }
            return table
        }()
    }

    /// One attribute of an RDN: a type and its value.
    public struct Attribute: Hashable, Sendable, CustomStringConvertible {
        public var type: AttributeType
        /// The value's bytes: UTF-8 for the string types (whatever ASN.1 string type carried it), the content
        /// octets otherwise.
        public var value: [UInt8]

        public init(type: AttributeType, value: [UInt8]) {
            self.type = type
            self.value = value
        }

        public init(type: AttributeType, text: String) {
            self.init(type: type, value: Array(text.utf8))
        }

        /// `TYPE=value`, the value escaped as RFC 4514 says.
        public var description: String { "\(type)=\(RDNSequence.escaped(value))" }
    }

    /// One RDN: one attribute, or several (a multi-valued RDN, `CN=a+UID=b`).
    public struct RDN: Hashable, Sendable, CustomStringConvertible {
        public var attributes: [Attribute]

        public init(_ attributes: [Attribute]) { self.attributes = attributes }

        public var description: String { attributes.map(\.description).joined(separator: "+") }
    }

    /// The RDNs, in the order the name holds them (a certificate's: most significant first, as strongSwan prints).
    public var rdns: [RDN]

    public init(_ rdns: [RDN]) { self.rdns = rdns }

    /// RFC 4514 text: RDNs joined by `, `, attributes by `+`, values escaped.
    public var description: String { rdns.map(\.description).joined(separator: ", ") }

    /// strongSwan's `dntoa` text: every attribute of every RDN joined by `, ` (multi-valued RDNs are not told
    /// apart), the short name (dotted OID for an unknown type), the value with bytes outside printable ASCII as
    /// `?`. Ambiguous by construction: compare structures, not this.
    public var strongSwanText: String {
        rdns.flatMap(\.attributes).map { "\($0.type)=\(Self.printable($0.value))" }.joined(separator: ", ")
    }

    /// The form names are compared in: values ASCII-lowercased (X.520 caseIgnoreMatch, as strongSwan compares
    /// printable strings), the attributes of each RDN in a fixed order (an RDN is a SET: its order carries
    /// nothing). RDNs keep their order and their boundaries.
    public var normalized: RDNSequence {
        RDNSequence(
            rdns.map { rdn in
                RDN(
                    rdn.attributes.map { Attribute(type: $0.type, value: Self.foldCase($0.value)) }
                        .sorted { a, b in
                            a.type != b.type ? a.type < b.type : a.value.lexicographicallyPrecedes(b.value)
                        })
            })
    }

    /// Whether `other` is the same name: the same number of RDNs, each with the same attributes (types equal,
    /// values equal ASCII case-insensitively), in the same order.
    public func matches(_ other: RDNSequence) -> Bool { normalized == other.normalized }

    // MARK: Parsing

    /// Why a text is not a distinguished name, and where (a byte offset into it).
    public struct ParseError: Error, Hashable, Sendable, CustomStringConvertible {
        public var message: String
        public var offset: Int

        public var description: String { "\(message) (at byte \(offset))" }
    }

    /// Limits on parsed text (a rule's identity is at most 1024 bytes anyway).
    public static let maximumTextBytes = 64 * 1024

    /// Parses a distinguished name written as RFC 4514 says (`CN=b.example, O=Example`), which is also how
    /// strongSwan logs names whose values hold no separator:
    /// - RDNs are separated by `,`, the attributes of a multi-valued RDN by `+`; spaces around `,` `+` `=` and at
    ///   the ends do not count.
    /// - A type is a short name (``AttributeType/init(name:)``) or a dotted OID; an unknown name is an error.
    /// - In a value, `\` escapes one of `, + " \ < > ; = #` or a space, or introduces two hex digits (one byte:
    ///   `\2C` is a comma, `\C3\A9` an é); any other `\` is an error. A value may instead be written in double
    ///   quotes (`CN="admin, O=Example"`, as RFC 2253 allowed), inside which `,` `+` `;` are plain characters and
    ///   `\` escapes as above. A `"` later in an unquoted value is a plain character (only a value's first
    ///   character opens quotes). Values beginning with `#` (hex-encoded BER) are not supported.
    ///
    /// - Throws: ``ParseError``.
    public init(parsing text: some StringProtocol) throws(ParseError) {
        let bytes = Array(text.utf8)
        guard bytes.count <= Self.maximumTextBytes else {
            throw ParseError(message: "longer than \(Self.maximumTextBytes) bytes", offset: 0)
        }
        var parser = Parser(bytes: bytes)
        self.init(try parser.parse())
    }

    private struct Parser {
        let bytes: [UInt8]
        var index = 0

        init(bytes: [UInt8]) { self.bytes = bytes }

        func fail(_ message: String, at offset: Int? = nil) -> ParseError {
            ParseError(message: message, offset: offset ?? index)
        }

        var current: UInt8? { index < bytes.count ? bytes[index] : nil }

        mutating func skipSpaces() {
            while let byte = current, byte == 0x20 || byte == 0x09 { index += 1 }
        }

        mutating func parse() throws(ParseError) -> [RDN] {
            var rdns: [RDN] = []
            var attributes: [Attribute] = []
            skipSpaces()
            guard current != nil else { throw fail("empty name") }
            // Bounded: every turn consumes at least the `=` of one attribute.
            while true {
                attributes.append(try attribute())
                skipSpaces()
                switch current {
                case nil:
                    rdns.append(RDN(attributes))
                    return rdns
                case UInt8(ascii: ","):
                    rdns.append(RDN(attributes))
                    attributes = []
                case UInt8(ascii: "+"):
                    break
                default:
                    throw fail("expected `,` or `+` after a value")
                }
                index += 1
                skipSpaces()
                if current == nil { throw fail("a name may not end with a separator") }
            }
        }

        mutating func attribute() throws(ParseError) -> Attribute {
            let start = index
            while let byte = current, byte != UInt8(ascii: "="), byte != 0x20, byte != 0x09,
                byte != UInt8(ascii: ","), byte != UInt8(ascii: "+")
            {
                index += 1
            }
            let name = String(decoding: bytes[start..<index], as: UTF8.self)
            guard !name.isEmpty else { throw fail("expected an attribute type (`CN`, `O`, …)") }
            skipSpaces()
            guard current == UInt8(ascii: "=") else { throw fail("expected `=` after the attribute type \"\(name)\"") }
            guard let type = AttributeType(name: name) else {
                throw fail(
                    "unknown attribute type \"\(name)\" (use strongSwan's short names, CN, O, OU, C, …, or a dotted OID)",
                    at: start)
            }
            index += 1
            skipSpaces()
            return Attribute(type: type, value: try value())
        }

        /// One escape after a `\` (at `index`): the byte it stands for.
        mutating func escape() throws(ParseError) -> UInt8 {
            let at = index - 1
            guard let byte = current else { throw fail("a `\\` at the end", at: at) }
            if let high = Self.hexDigit(byte) {
                guard index + 1 < bytes.count, let low = Self.hexDigit(bytes[index + 1]) else {
                    throw fail("`\\` followed by one hex digit: escape a byte with two (`\\2C`)", at: at)
                }
                index += 2
                return high << 4 | low
            }
            guard Array(#",+"\<>;=# "#.utf8).contains(byte) else {
                throw fail(
                    "`\\\(String(decoding: [byte], as: UTF8.self))` is not an escape (`\\` escapes , + \" \\ < > ; = # "
                        + "space, or starts a hex pair)", at: at)
            }
            index += 1
            return byte
        }

        mutating func value() throws(ParseError) -> [UInt8] {
            var value: [UInt8] = []
            if current == UInt8(ascii: "\"") {
                let open = index
                index += 1
                // Bounded: every turn consumes at least one byte.
                while true {
                    guard let byte = current else { throw fail("unterminated quoted value", at: open) }
                    index += 1
                    if byte == UInt8(ascii: "\"") { return value }
                    value.append(byte == UInt8(ascii: "\\") ? try escape() : byte)
                }
            }
            if current == UInt8(ascii: "#") {
                throw fail("hex-encoded (`#…`) values are not supported; write the text, with `\\XX` escapes")
            }
            // Unescaped trailing spaces do not count; escaped ones (`\ `) do.
            var significant = 0
            while let byte = current, byte != UInt8(ascii: ","), byte != UInt8(ascii: "+") {
                index += 1
                if byte == UInt8(ascii: "\\") {
                    value.append(try escape())
                    significant = value.count
                } else {
                    value.append(byte)
                    if byte != 0x20 && byte != 0x09 { significant = value.count }
                }
            }
            return Array(value.prefix(significant))
        }

        static func hexDigit(_ byte: UInt8) -> UInt8? {
            switch byte {
            case 0x30...0x39: byte - 0x30
            case 0x41...0x46: byte - 0x41 + 10
            case 0x61...0x66: byte - 0x61 + 10
            default: nil
            }
        }
    }

    // MARK: Text helpers

    /// RFC 4514's escaping of one value: the specials with a backslash, a leading `#` or space and a trailing
    /// space with a backslash, control bytes, DEL and bytes that are not part of valid UTF-8 as `\XX`.
    static func escaped(_ value: [UInt8]) -> String {
        let valid = String(validating: value, as: UTF8.self) != nil
        var out: [UInt8] = []
        out.reserveCapacity(value.count)
        for (offset, byte) in value.enumerated() {
            let special = Array(#",+"\<>;"#.utf8).contains(byte)
            let edge =
                (offset == 0 && (byte == 0x20 || byte == UInt8(ascii: "#")))
                || (offset == value.count - 1 && byte == 0x20)
            if special || edge {
                out += [UInt8(ascii: "\\"), byte]
            } else if byte < 0x20 || byte == 0x7f || (byte >= 0x80 && !valid) {
                out += Array("\\\(hex(byte))".utf8)
            } else {
                out.append(byte)
            }
        }
        return String(decoding: out, as: UTF8.self)
    }

    private static func hex(_ byte: UInt8) -> String {
        let digits = Array("0123456789ABCDEF".utf8)
        return String(decoding: [digits[Int(byte >> 4)], digits[Int(byte & 0xf)]], as: UTF8.self)
    }

    /// strongSwan's `chunk_printable`: every byte outside printable ASCII becomes `?`.
    public static func printable(_ bytes: [UInt8]) -> String {
        String(decoding: bytes.map { $0 >= 0x20 && $0 < 0x7f ? $0 : UInt8(ascii: "?") }, as: UTF8.self)
    }

    static func foldCase(_ bytes: [UInt8]) -> [UInt8] { bytes.map { $0 >= 0x41 && $0 <= 0x5a ? $0 + 0x20 : $0 } }

    static func foldCase(_ text: String) -> String { String(decoding: foldCase(Array(text.utf8)), as: UTF8.self) }
}
