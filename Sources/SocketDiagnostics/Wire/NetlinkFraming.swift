import CNetlink
import SystemPackage

/// One message of a received datagram: its header fields and its payload, every bound already checked.
struct DiagNetlinkMessage {
    var type: UInt16
    var flags: UInt16
    var sequence: UInt32
    var portID: UInt32
    var payload: ArraySlice<UInt8>

    /// Splits a datagram into messages. A header cut short, a length below the header size or past the end of the
    /// datagram throws ``SocketDiagnosticsError/Code/malformedMessage``; nothing is read out of bounds.
    static func split(_ datagram: ArraySlice<UInt8>, operation: String) throws(SocketDiagnosticsError) -> [Self] {
        var messages: [Self] = []
        var offset = datagram.startIndex
        while offset < datagram.endIndex {
            let remaining = datagram.endIndex - offset
            guard remaining >= nlmsghdrSize else {
                throw .malformed(operation, "truncated netlink header: \(remaining) bytes left, need \(nlmsghdrSize)")
            }
            let header = datagram[offset..<offset + nlmsghdrSize].loadKernelStruct(nlmsghdr.self)
            let length = Int(header.nlmsg_len)
            guard length >= nlmsghdrSize else {
                throw .malformed(operation, "netlink message length \(length) below header size")
            }
            guard length <= remaining else {
                throw .malformed(operation, "netlink message length \(length) exceeds the \(remaining) bytes received")
            }
            messages.append(
                Self(
                    type: header.nlmsg_type, flags: header.nlmsg_flags, sequence: header.nlmsg_seq,
                    portID: header.nlmsg_pid, payload: datagram[(offset + nlmsghdrSize)..<(offset + length)]))
            offset += min(Int(cnl_nlmsg_align(UInt32(length))), remaining)
        }
        return messages
    }

    /// For an `NLMSG_ERROR`: nothing for an ack (error 0), the kernel's errno otherwise.
    func errorStatus(operation: String) throws(SocketDiagnosticsError) -> Errno? {
        let header = try payload.loadKernelHeader(nlmsgerr.self, operation: operation)
        guard header.error != 0 else { return nil }
        // -Int32.min does not exist (and is no errno): not something the kernel sends.
        guard header.error < 0, header.error != .min else {
            throw .malformed(operation, "NLMSG_ERROR error \(header.error)")
        }
        return Errno(rawValue: -header.error)
    }

    /// For an `NLMSG_DONE`: the kernel's errno when the dump ended with a negative status, nothing otherwise.
    func doneStatus(operation: String) throws(SocketDiagnosticsError) -> Errno? {
        guard payload.count >= 4 else { return nil }
        let status = payload.loadKernelStruct(Int32.self)
        guard status != .min else { throw .malformed(operation, "NLMSG_DONE status \(status)") }
        return status < 0 ? Errno(rawValue: -status) : nil
    }
}

/// One attribute (TLV) after a message's fixed header.
struct DiagAttribute {
    /// The type with the nested and byte-order flags masked off.
    var type: UInt16
    var payload: ArraySlice<UInt8>

    /// Reads every attribute in `bytes`. A header cut short, a length below the header size or past the end
    /// throws ``SocketDiagnosticsError/Code/malformedMessage``; nothing is read out of bounds.
    static func parse(_ bytes: ArraySlice<UInt8>, operation: String) throws(SocketDiagnosticsError) -> [Self] {
        var attributes: [Self] = []
        var offset = bytes.startIndex
        while offset < bytes.endIndex {
            guard attributes.count < 4096 else { throw .malformed(operation, "more than 4096 attributes") }
            let remaining = bytes.endIndex - offset
            guard remaining >= nlattrSize else {
                throw .malformed(operation, "truncated attribute header: \(remaining) bytes left, need \(nlattrSize)")
            }
            let header = bytes[offset..<offset + nlattrSize].loadKernelStruct(nlattr.self)
            let length = Int(header.nla_len)
            guard length >= nlattrSize else {
                throw .malformed(operation, "attribute \(header.nla_type) length \(length) below header size")
            }
            guard length <= remaining else {
                throw .malformed(
                    operation, "attribute \(header.nla_type) length \(length) exceeds the \(remaining) bytes left")
            }
            let type = header.nla_type & ~(_NLA_F_NESTED | _NLA_F_NET_BYTEORDER)
            attributes.append(Self(type: type, payload: bytes[(offset + nlattrSize)..<(offset + length)]))
            offset += min(Int(cnl_nla_align(UInt32(length))), remaining)
        }
        return attributes
    }
}

extension ArraySlice<UInt8> {
    /// Loads a kernel struct from the start of the slice. Callers check the length first.
    func loadKernelStruct<T>(_ type: T.Type) -> T {
        precondition(count >= MemoryLayout<T>.size)
        // Kernel structs are trivial C structs: copy the bytes into fresh, aligned storage.
        let storage = UnsafeMutablePointer<T>.allocate(capacity: 1)
        defer { storage.deallocate() }
        withUnsafeBytes {
            UnsafeMutableRawPointer(storage).copyMemory(from: $0.baseAddress!, byteCount: MemoryLayout<T>.size)
        }
        return storage.move()
    }

    /// Loads a fixed header struct, throwing if the payload is shorter than it.
    func loadKernelHeader<T>(_ type: T.Type, operation: String) throws(SocketDiagnosticsError) -> T {
        guard count >= MemoryLayout<T>.size else {
            throw .malformed(operation, "payload of \(count) bytes, \(T.self) needs \(MemoryLayout<T>.size)")
        }
        return loadKernelStruct(T.self)
    }

    /// What follows a fixed header of `T`, aligned as netlink aligns it.
    func afterKernelHeader<T>(_ type: T.Type) -> ArraySlice<UInt8> {
        let skip = Swift.min(Int(cnl_nlmsg_align(UInt32(MemoryLayout<T>.size))), count)
        return self[(startIndex + skip)...]
    }
}
