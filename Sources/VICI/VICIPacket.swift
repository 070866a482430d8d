/// One VICI packet (strongSwan's vici README, "Packet layer").
///
/// On the stream every packet is a segment: a 32-bit big-endian length of the data that follows (at most
/// 512 KiB, the length field itself not counted), then the packet type byte, then for named types an 8-bit
/// name length and the ASCII name, then, for types that carry one, the message.
public enum VICIPacket: Hashable, Sendable {
    /// `CMD_REQUEST` (0): a named command with its arguments.
    case commandRequest(name: String, message: VICIMessage)
    /// `CMD_RESPONSE` (1): the answer to the outstanding command.
    case commandResponse(VICIMessage)
    /// `CMD_UNKNOWN` (2): charon has no handler for the command.
    case commandUnknown
    /// `EVENT_REGISTER` (3): subscribe to a named event.
    case eventRegister(name: String)
    /// `EVENT_UNREGISTER` (4): unsubscribe from a named event.
    case eventUnregister(name: String)
    /// `EVENT_CONFIRM` (5): a (de)registration succeeded.
    case eventConfirm
    /// `EVENT_UNKNOWN` (6): a (de)registration named no known event.
    case eventUnknown
    /// `EVENT` (7): a named event with its message; may arrive at any time while registered.
    case event(name: String, message: VICIMessage)

    /// The largest segment VICI allows: 512 KiB of data after the length field.
    public static let maximumSegmentLength = 512 * 1024

    /// The packet type byte.
    public var typeByte: UInt8 {
        switch self {
        case .commandRequest: 0
        case .commandResponse: 1
        case .commandUnknown: 2
        case .eventRegister: 3
        case .eventUnregister: 4
        case .eventConfirm: 5
        case .eventUnknown: 6
        case .event: 7
        }
    }

    /// Encodes the packet with its 4-byte length prefix, ready to write to the socket.
    ///
    /// Throws ``VICIError/Code/invalidArgument`` for a name longer than 255 bytes or a segment over 512 KiB.
    public func encode() throws(VICIError) -> [UInt8] {
        var data: [UInt8] = [typeByte]
        func appendName(_ name: String) throws(VICIError) {
            let bytes = Array(name.utf8)
            guard bytes.count <= VICIMessage.maximumNameLength else {
                throw .invalid("encode", "packet name of \(bytes.count) bytes (at most 255)")
            }
            data.append(UInt8(bytes.count))
            data += bytes
        }
        switch self {
        case .commandRequest(let name, let message), .event(let name, let message):
            try appendName(name)
            try message.encode(into: &data, depth: 0)
        case .commandResponse(let message):
            try message.encode(into: &data, depth: 0)
        case .eventRegister(let name), .eventUnregister(let name):
            try appendName(name)
        case .commandUnknown, .eventConfirm, .eventUnknown:
            break
        }
        guard data.count <= Self.maximumSegmentLength else {
            throw .invalid("encode", "packet of \(data.count) bytes (VICI allows at most \(Self.maximumSegmentLength))")
        }
        let length = UInt32(data.count)
        return [UInt8(length >> 24), UInt8(length >> 16 & 0xff), UInt8(length >> 8 & 0xff), UInt8(length & 0xff)] + data
    }

    /// Decodes one segment's data (after the length prefix).
    ///
    /// Packets of unnamed message-less types (`CMD_UNKNOWN`, `EVENT_CONFIRM`, `EVENT_UNKNOWN`) and
    /// registrations must carry nothing else; anything unknown or truncated is ``VICIError/Code/malformed``.
    public static func decode<Bytes: RandomAccessCollection>(_ data: Bytes) throws(VICIError) -> VICIPacket
    where Bytes.Element == UInt8, Bytes.Index == Int {
        guard data.count <= maximumSegmentLength else {
            throw .malformed("decode", "packet of \(data.count) bytes (VICI allows at most \(maximumSegmentLength))")
        }
        var reader = ByteReader(bytes: data)
        guard !reader.isAtEnd else { throw .malformed("decode", "empty packet: no type byte") }
        let type = try reader.byte()
        func rest() throws(VICIError) -> VICIMessage {
            try VICIMessage.decode(data[(data.startIndex + reader.offset)...])
        }
        func nothingElse(_ what: String) throws(VICIError) {
            guard reader.isAtEnd else {
                throw .malformed("decode", "\(reader.remaining) unexpected byte(s) after \(what)")
            }
        }
        switch type {
        case 0:
            let name = try reader.name()
            return .commandRequest(name: name, message: try rest())
        case 1:
            return .commandResponse(try rest())
        case 2:
            try nothingElse("CMD_UNKNOWN")
            return .commandUnknown
        case 3:
            let name = try reader.name()
            try nothingElse("EVENT_REGISTER")
            return .eventRegister(name: name)
        case 4:
            let name = try reader.name()
            try nothingElse("EVENT_UNREGISTER")
            return .eventUnregister(name: name)
        case 5:
            try nothingElse("EVENT_CONFIRM")
            return .eventConfirm
        case 6:
            try nothingElse("EVENT_UNKNOWN")
            return .eventUnknown
        case 7:
            let name = try reader.name()
            return .event(name: name, message: try rest())
        default:
            throw .malformed("decode", "unknown packet type \(type)")
        }
    }
}

/// Splits a byte stream into VICI segments. Feed it what `read` returned; take complete packets out.
///
/// The length prefix is checked before any data is buffered for it, so a hostile or corrupt length never
/// makes the reader wait for (or allocate) more than 512 KiB.
public struct VICIFrameReader: Sendable {
    private var buffer: [UInt8] = []
    private var start = 0

    public init() {}

    /// Bytes received but not yet returned as a packet.
    public var bufferedCount: Int { buffer.count - start }

    /// Appends received bytes.
    public mutating func append<Bytes: Sequence>(_ bytes: Bytes) where Bytes.Element == UInt8 {
        if start > 0 && start == buffer.count {
            buffer.removeAll(keepingCapacity: true)
            start = 0
        }
        buffer.append(contentsOf: bytes)
    }

    /// The next complete packet, nil if more bytes are needed. A length over 512 KiB or a malformed packet
    /// throws; the reader is then unusable (the stream has lost its framing) and the connection must close.
    public mutating func next() throws(VICIError) -> VICIPacket? {
        guard bufferedCount >= 4 else { return nil }
        let b = buffer[start..<(start + 4)].map(Int.init)
        let length = b[0] << 24 | b[1] << 16 | b[2] << 8 | b[3]
        guard length <= VICIPacket.maximumSegmentLength else {
            throw .malformed(
                "decode", "segment length \(length) over VICI's \(VICIPacket.maximumSegmentLength)-byte limit")
        }
        guard bufferedCount >= 4 + length else { return nil }
        let data = buffer[(start + 4)..<(start + 4 + length)]
        start += 4 + length
        let packet = try VICIPacket.decode(data)
        if start > 64 * 1024 && start * 2 > buffer.count {
            buffer.removeSubrange(0..<start)
            start = 0
        }
        return packet
    }
}
