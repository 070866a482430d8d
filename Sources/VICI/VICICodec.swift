/// The element types of a VICI message (strongSwan's vici README, "Message format").
enum VICIElement: UInt8 {
    /// Begins a named section. Followed by an 8-bit name length and the name.
    case sectionStart = 1
    /// Ends the most recently opened section.
    case sectionEnd = 2
    /// A named value: 8-bit name length, name, 16-bit big-endian value length, value.
    case keyValue = 3
    /// Begins a named list: 8-bit name length, name.
    case listStart = 4
    /// One list item: 16-bit big-endian value length, value.
    case listItem = 5
    /// Ends the open list.
    case listEnd = 6
}

extension VICIMessage {
    /// The deepest section nesting ``decode(_:)`` accepts. charon's own configurations are at most five deep
    /// (conn → children → child, or a `list-sa` event: conn → child-sas → child → …); 64 leaves ample room while
    /// keeping the decoder's stack use bounded.
    public static let maximumDepth = 64

    /// The largest name VICI can carry: its length field is one byte.
    public static let maximumNameLength = 255
    /// The largest value VICI can carry: its length field is 16 bits.
    public static let maximumValueLength = 65_535

    /// Encodes the message as a VICI element stream (no packet header).
    ///
    /// Throws ``VICIError/Code/invalidArgument`` for a name longer than 255 bytes, a value or list item longer
    /// than 65,535 bytes, or nesting deeper than ``maximumDepth``.
    public func encode() throws(VICIError) -> [UInt8] {
        var out: [UInt8] = []
        try encode(into: &out, depth: 0)
        return out
    }

    func encode(into out: inout [UInt8], depth: Int) throws(VICIError) {
        guard depth <= Self.maximumDepth else {
            throw .invalid("encode", "sections nested deeper than \(Self.maximumDepth)")
        }
        for entry in entries {
            switch entry.value {
            case .value(let bytes):
                out.append(VICIElement.keyValue.rawValue)
                try Self.appendName(entry.key, to: &out)
                try Self.appendValue(bytes, key: entry.key, to: &out)
            case .list(let items):
                out.append(VICIElement.listStart.rawValue)
                try Self.appendName(entry.key, to: &out)
                for item in items {
                    out.append(VICIElement.listItem.rawValue)
                    try Self.appendValue(item, key: entry.key, to: &out)
                }
                out.append(VICIElement.listEnd.rawValue)
            case .section(let message):
                out.append(VICIElement.sectionStart.rawValue)
                try Self.appendName(entry.key, to: &out)
                try message.encode(into: &out, depth: depth + 1)
                out.append(VICIElement.sectionEnd.rawValue)
            }
        }
    }

    private static func appendName(_ name: String, to out: inout [UInt8]) throws(VICIError) {
        let bytes = Array(name.utf8)
        guard bytes.count <= maximumNameLength else {
            throw .invalid("encode", "name of \(bytes.count) bytes (at most \(maximumNameLength)): \(name.prefix(40))…")
        }
        out.append(UInt8(bytes.count))
        out += bytes
    }

    private static func appendValue(_ bytes: [UInt8], key: String, to out: inout [UInt8]) throws(VICIError) {
        guard bytes.count <= maximumValueLength else {
            throw .invalid("encode", "value of \(bytes.count) bytes under \"\(key)\" (at most \(maximumValueLength))")
        }
        out.append(UInt8(bytes.count >> 8))
        out.append(UInt8(bytes.count & 0xff))
        out += bytes
    }

    /// Decodes a VICI element stream (the part of a packet after its type and name).
    ///
    /// Total and bounded: every byte is consumed at most once, and truncation, unknown element types,
    /// key/values or sections inside a list, items outside a list, unbalanced sections or lists, names or
    /// values running past the end, names that are not UTF-8, and nesting deeper than ``maximumDepth`` are all
    /// ``VICIError/Code/malformed`` with the offset in the detail.
    public static func decode<Bytes: RandomAccessCollection>(_ bytes: Bytes) throws(VICIError) -> VICIMessage
    where Bytes.Element == UInt8, Bytes.Index == Int {
        var reader = ByteReader(bytes: bytes)
        // A stack of open sections: (name, entries so far). The root has no name.
        var stack: [(name: String, message: VICIMessage)] = [("", VICIMessage())]
        var openList: (name: String, items: [[UInt8]])?
        while !reader.isAtEnd {
            let offset = reader.offset
            let typeByte = try reader.byte()
            guard let type = VICIElement(rawValue: typeByte) else {
                throw .malformed("decode", "unknown element type \(typeByte) at offset \(offset)")
            }
            if openList != nil, type != .listItem, type != .listEnd {
                throw .malformed("decode", "element type \(typeByte) inside a list at offset \(offset)")
            }
            switch type {
            case .sectionStart:
                let name = try reader.name()
                guard stack.count <= maximumDepth else {
                    throw .malformed("decode", "sections nested deeper than \(maximumDepth) at offset \(offset)")
                }
                stack.append((name, VICIMessage()))
            case .sectionEnd:
                guard stack.count > 1, let closed = stack.popLast() else {
                    throw .malformed("decode", "SECTION_END without an open section at offset \(offset)")
                }
                stack[stack.count - 1].message.append(closed.name, .section(closed.message))
            case .keyValue:
                let name = try reader.name()
                let value = try reader.value()
                stack[stack.count - 1].message.append(name, .value(value))
            case .listStart:
                openList = (try reader.name(), [])
            case .listItem:
                guard openList != nil else {
                    throw .malformed("decode", "LIST_ITEM outside a list at offset \(offset)")
                }
                let item = try reader.value()
                openList?.items.append(item)
            case .listEnd:
                guard let list = openList else {
                    throw .malformed("decode", "LIST_END without an open list at offset \(offset)")
                }
                stack[stack.count - 1].message.append(list.name, .list(list.items))
                openList = nil
            }
        }
        if let list = openList {
            throw .malformed("decode", "list \"\(list.name)\" not closed at the end of the message")
        }
        guard stack.count == 1, let root = stack.first else {
            throw .malformed("decode", "\(stack.count - 1) section(s) not closed at the end of the message")
        }
        return root.message
    }
}

/// A bounds-checked cursor over bytes; every read either succeeds in range or throws.
struct ByteReader<Bytes: RandomAccessCollection> where Bytes.Element == UInt8, Bytes.Index == Int {
    let bytes: Bytes
    private(set) var index: Int

    init(bytes: Bytes) {
        self.bytes = bytes
        index = bytes.startIndex
    }

    var offset: Int { index - bytes.startIndex }
    var isAtEnd: Bool { index >= bytes.endIndex }
    var remaining: Int { bytes.endIndex - index }

    mutating func byte() throws(VICIError) -> UInt8 {
        guard index < bytes.endIndex else { throw .malformed("decode", "truncated at offset \(offset)") }
        defer { index += 1 }
        return bytes[index]
    }

    mutating func take(_ count: Int, what: String) throws(VICIError) -> [UInt8] {
        guard count >= 0, count <= remaining else {
            throw .malformed(
                "decode", "\(what) of \(count) bytes at offset \(offset) runs past the end (\(remaining) left)")
        }
        defer { index += count }
        return Array(bytes[index..<(index + count)])
    }

    /// An 8-bit length, then that many bytes of UTF-8 (VICI names are ASCII; UTF-8 is accepted).
    mutating func name() throws(VICIError) -> String {
        let length = Int(try byte())
        let at = offset
        let raw = try take(length, what: "name")
        guard let text = String(validating: raw, as: UTF8.self) else {
            throw .malformed("decode", "name at offset \(at) is not UTF-8")
        }
        return text
    }

    /// A 16-bit big-endian length, then that many bytes.
    mutating func value() throws(VICIError) -> [UInt8] {
        let high = Int(try byte())
        let low = Int(try byte())
        return try take(high << 8 | low, what: "value")
    }
}
