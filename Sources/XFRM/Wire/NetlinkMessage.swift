import CNetlink

/// Builds one netlink message: `struct nlmsghdr`, a fixed header struct, then attributes, each padded to 4.
///
/// Structs are copied from values the kernel's own C declarations describe (imported from <linux/xfrm.h>),
/// so the layout is the compiler's, not ours.
struct NetlinkMessageBuilder {
    private(set) var bytes: [UInt8]

    init(type: UInt16, flags: UInt16, sequence: UInt32 = 0, portID: UInt32 = 0) {
        var header = nlmsghdr()
        header.nlmsg_type = type
        header.nlmsg_flags = flags
        header.nlmsg_seq = sequence
        header.nlmsg_pid = portID
        bytes = []
        bytes.reserveCapacity(512)
        appendRaw(header)
    }

    /// Appends the raw bytes of a kernel struct, then pads to the netlink alignment.
    mutating func append<T>(_ value: T) {
        appendRaw(value)
    }

    /// Appends an attribute whose payload is a kernel struct followed by `tail` (a key, an array of templates).
    mutating func appendAttribute<T>(_ type: UInt16, _ value: T, tail: [UInt8] = []) {
        var payload = withUnsafeBytes(of: value) { Array($0) }
        payload += tail
        appendAttribute(type, bytes: payload)
    }

    /// Appends an attribute with a raw payload.
    mutating func appendAttribute(_ type: UInt16, bytes payload: [UInt8]) {
        var header = nlattr()
        header.nla_len = UInt16(nlattrSize + payload.count)
        header.nla_type = type
        withUnsafeBytes(of: header) { bytes += $0 }
        bytes += payload
        pad()
    }

    /// Sets the sequence number in the header.
    mutating func setSequence(_ sequence: UInt32) {
        bytes.withUnsafeMutableBytes { raw in
            raw.storeBytes(of: sequence, toByteOffset: MemoryLayout<nlmsghdr>.offset(of: \.nlmsg_seq)!, as: UInt32.self)
        }
    }

    /// The finished message with `nlmsg_len` filled in.
    func finished() -> [UInt8] {
        var result = bytes
        let length = UInt32(result.count)
        result.withUnsafeMutableBytes { raw in
            raw.storeBytes(of: length, toByteOffset: 0, as: UInt32.self)
        }
        return result
    }

    private mutating func appendRaw<T>(_ value: T) {
        withUnsafeBytes(of: value) { bytes += $0 }
        pad()
    }

    private mutating func pad() {
        let aligned = Int(cnl_nlmsg_align(UInt32(bytes.count)))
        if aligned > bytes.count { bytes += [UInt8](repeating: 0, count: aligned - bytes.count) }
    }
}

/// One received netlink message: its header fields and payload (bounds already checked).
struct NetlinkMessage {
    var type: UInt16
    var flags: UInt16
    var sequence: UInt32
    var portID: UInt32
    var payload: ArraySlice<UInt8>

    /// Splits a receive buffer into messages. Every length is checked against what is left: a header
    /// shorter than `nlmsghdr`, a length below the header size or past the end of the buffer is an error,
    /// never a read out of bounds.
    static func split(_ buffer: ArraySlice<UInt8>, operation: String) throws(XFRMError) -> [NetlinkMessage] {
        var messages: [NetlinkMessage] = []
        var offset = buffer.startIndex
        while offset < buffer.endIndex {
            let remaining = buffer.endIndex - offset
            guard remaining >= nlmsghdrSize else {
                throw .malformed(operation, "truncated netlink header: \(remaining) bytes left, need \(nlmsghdrSize)")
            }
            let header = buffer[offset..<offset + nlmsghdrSize].loadStruct(nlmsghdr.self)
            let length = Int(header.nlmsg_len)
            guard length >= nlmsghdrSize else {
                throw .malformed(operation, "netlink message length \(length) below header size")
            }
            guard length <= remaining else {
                throw .malformed(operation, "netlink message length \(length) exceeds the \(remaining) bytes received")
            }
            messages.append(
                NetlinkMessage(
                    type: header.nlmsg_type, flags: header.nlmsg_flags,
                    sequence: header.nlmsg_seq, portID: header.nlmsg_pid,
                    payload: buffer[(offset + nlmsghdrSize)..<(offset + length)]))
            offset += min(Int(cnl_nlmsg_align(UInt32(length))), remaining)
        }
        return messages
    }
}

/// One attribute (TLV) inside a message payload.
struct NetlinkAttribute {
    /// The type with the nested / byte-order flags masked off.
    var type: UInt16
    var payload: ArraySlice<UInt8>

    /// Reads every attribute in `bytes`. A header cut short, a length smaller than the header, or a length
    /// past the end of the buffer throws ``XFRMError/Code/malformedMessage``; nothing is read out of bounds.
    static func parse(_ bytes: ArraySlice<UInt8>, operation: String) throws(XFRMError) -> [NetlinkAttribute] {
        var attributes: [NetlinkAttribute] = []
        var offset = bytes.startIndex
        var count = 0
        while offset < bytes.endIndex {
            count += 1
            guard count <= 4096 else { throw .malformed(operation, "more than 4096 attributes") }
            let remaining = bytes.endIndex - offset
            guard remaining >= nlattrSize else {
                throw .malformed(operation, "truncated attribute header: \(remaining) bytes left, need \(nlattrSize)")
            }
            let header = bytes[offset..<offset + nlattrSize].loadStruct(nlattr.self)
            let length = Int(header.nla_len)
            guard length >= nlattrSize else {
                throw .malformed(operation, "attribute \(header.nla_type) length \(length) below header size")
            }
            guard length <= remaining else {
                throw .malformed(
                    operation,
                    "attribute \(header.nla_type) length \(length) exceeds the \(remaining) bytes left")
            }
            let type = header.nla_type & ~(_NLA_F_NESTED | _NLA_F_NET_BYTEORDER)
            attributes.append(NetlinkAttribute(type: type, payload: bytes[(offset + nlattrSize)..<(offset + length)]))
            offset += min(Int(cnl_nla_align(UInt32(length))), remaining)
        }
        return attributes
    }

    /// The payload as a kernel struct; throws if the payload is shorter than the struct.
    func load<T>(_ type: T.Type, operation: String) throws(XFRMError) -> T {
        guard payload.count >= MemoryLayout<T>.size else {
            throw .malformed(
                operation,
                "attribute \(self.type) carries \(payload.count) bytes, \(T.self) needs \(MemoryLayout<T>.size)")
        }
        return payload.loadStruct(T.self)
    }
}

extension [NetlinkAttribute] {
    func first(_ type: UInt16) -> NetlinkAttribute? { first { $0.type == type } }
}

extension ArraySlice<UInt8> {
    /// Loads a struct from the start of the slice. Callers check the length first.
    func loadStruct<T>(_ type: T.Type) -> T {
        precondition(count >= MemoryLayout<T>.size)
        // Kernel structs are trivial C structs (some hold unions, which keeps them from being
        // `BitwiseCopyable` in Swift's eyes): copy the bytes into fresh, aligned storage.
        let storage = UnsafeMutablePointer<T>.allocate(capacity: 1)
        defer { storage.deallocate() }
        withUnsafeBytes {
            UnsafeMutableRawPointer(storage).copyMemory(from: $0.baseAddress!, byteCount: MemoryLayout<T>.size)
        }
        return storage.move()
    }

    /// Loads a fixed header struct, throwing if the payload is shorter than it.
    func loadHeader<T>(_ type: T.Type, operation: String) throws(XFRMError) -> T {
        guard count >= MemoryLayout<T>.size else {
            throw .malformed(operation, "payload of \(count) bytes, \(T.self) needs \(MemoryLayout<T>.size)")
        }
        return loadStruct(T.self)
    }

    /// What follows a fixed header of `T`, aligned as netlink aligns it.
    func afterHeader<T>(_ type: T.Type) -> ArraySlice<UInt8> {
        let skip = Swift.min(Int(cnl_nlmsg_align(UInt32(MemoryLayout<T>.size))), count)
        return self[(startIndex + skip)...]
    }
}
