/// The byte-level encoding of the control protocol's fields: little-endian integers, strings and byte strings
/// with a length prefix, optionals with a presence byte, arrays with a count. Every read is bounds-checked and
/// every length and count is capped, so a peer's bytes can make a decode fail but never crash or allocate
/// without bound.
public struct ControlWriter: Sendable {
    public private(set) var bytes: [UInt8] = []

    public init() { bytes.reserveCapacity(128) }

    public mutating func u8(_ value: UInt8) { bytes.append(value) }
    public mutating func bool(_ value: Bool) { bytes.append(value ? 1 : 0) }
    public mutating func u16(_ value: UInt16) { withUnsafeBytes(of: value.littleEndian) { bytes += $0 } }
    public mutating func u32(_ value: UInt32) { withUnsafeBytes(of: value.littleEndian) { bytes += $0 } }
    public mutating func u64(_ value: UInt64) { withUnsafeBytes(of: value.littleEndian) { bytes += $0 } }
    public mutating func i32(_ value: Int32) { u32(UInt32(bitPattern: value)) }

    /// A byte string: u16 length, then the bytes (at most ``ControlReader/maximumStringBytes``; longer input is a
    /// programming error of the sender and is cut, never sent whole).
    public mutating func data(_ value: [UInt8]) {
        let cut = value.prefix(ControlReader.maximumStringBytes)
        u16(UInt16(cut.count))
        bytes += cut
    }

    public mutating func string(_ value: String) { data(Array(value.utf8)) }

    public mutating func optional<T>(_ value: T?, _ write: (inout ControlWriter, T) -> Void) {
        guard let value else { return u8(0) }
        u8(1)
        write(&self, value)
    }

    public mutating func array<T>(_ values: [T], _ write: (inout ControlWriter, T) -> Void) {
        let cut = values.prefix(ControlReader.maximumCount)
        u16(UInt16(cut.count))
        for value in cut { write(&self, value) }
    }
}

/// Reads what ``ControlWriter`` wrote, failing with ``ControlProtocolError`` on anything short, oversized or
/// malformed.
public struct ControlReader {
    /// The longest string or byte string a field may hold.
    public static let maximumStringBytes = 4096
    /// The most elements an array field may hold.
    public static let maximumCount = 64

    let bytes: [UInt8]
    public private(set) var offset: Int

    public init(_ bytes: [UInt8], offset: Int = 0) {
        self.bytes = bytes
        self.offset = offset
    }

    public var isAtEnd: Bool { offset == bytes.count }

    mutating func take(_ count: Int) throws(ControlProtocolError) -> ArraySlice<UInt8> {
        guard count >= 0, bytes.count - offset >= count else { throw .truncated(at: offset) }
        defer { offset += count }
        return bytes[offset..<offset + count]
    }

    mutating func integer<T: FixedWidthInteger>(_: T.Type) throws(ControlProtocolError) -> T {
        let slice = try take(MemoryLayout<T>.size)
        var value = T.zero
        for (shift, byte) in slice.enumerated() { value |= T(byte) << (8 * shift) }
        return value
    }

    public mutating func u8() throws(ControlProtocolError) -> UInt8 { try integer(UInt8.self) }
    public mutating func u16() throws(ControlProtocolError) -> UInt16 { try integer(UInt16.self) }
    public mutating func u32() throws(ControlProtocolError) -> UInt32 { try integer(UInt32.self) }
    public mutating func u64() throws(ControlProtocolError) -> UInt64 { try integer(UInt64.self) }
    public mutating func i32() throws(ControlProtocolError) -> Int32 { Int32(bitPattern: try u32()) }

    public mutating func bool() throws(ControlProtocolError) -> Bool {
        switch try u8() {
        case 0: false
        case 1: true
        case let other: throw .invalid("boolean \(other)")
        }
    }

    public mutating func data() throws(ControlProtocolError) -> [UInt8] {
        let count = Int(try u16())
        guard count <= Self.maximumStringBytes else { throw .invalid("a field of \(count) bytes") }
        return Array(try take(count))
    }

    /// A string: valid UTF-8 without NUL (a NUL would cut the string short for a C reader of the same value).
    public mutating func string() throws(ControlProtocolError) -> String {
        let raw = try data()
        guard !raw.contains(0), let text = String(validating: raw, as: UTF8.self) else {
            throw .invalid("a string that is not UTF-8 without NUL")
        }
        return text
    }

    public mutating func optional<T>(_ read: (inout ControlReader) throws(ControlProtocolError) -> T)
        throws(ControlProtocolError) -> T?
    {
        switch try u8() {
        case 0: return nil
        case 1: return try read(&self)
        case let other: throw .invalid("presence byte \(other)")
        }
    }

    public mutating func array<T>(_ read: (inout ControlReader) throws(ControlProtocolError) -> T)
        throws(ControlProtocolError) -> [T]
    {
        let count = Int(try u16())
        guard count <= Self.maximumCount else { throw .invalid("an array of \(count) elements") }
        var values: [T] = []
        values.reserveCapacity(count)
        for _ in 0..<count { values.append(try read(&self)) }
        return values
    }
}

/// Why bytes from the other end are not a message of the control protocol.
public enum ControlProtocolError: Error, Hashable, Sendable, CustomStringConvertible {
    /// The bytes end inside a field.
    case truncated(at: Int)
    /// A field holds a value the protocol does not allow.
    case invalid(String)
    /// Not this protocol, or a version this end does not speak.
    case unsupported(String)
    /// The frame is longer than the protocol allows.
    case oversized(Int)

    public var description: String {
        switch self {
        case .truncated(let offset): "truncated message (at byte \(offset))"
        case .invalid(let what): "invalid message: \(what)"
        case .unsupported(let what): "unsupported message: \(what)"
        case .oversized(let count): "message of \(count) bytes is too long"
        }
    }
}
