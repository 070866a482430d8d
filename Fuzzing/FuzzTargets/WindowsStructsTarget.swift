import WinsockSecureSocket

extension FuzzTarget {
    /// The readers of the Windows structs C callers pass (`WindowsStructs`): `SOCKET_SECURITY_SETTINGS[_IPSEC]`
    /// (`WSASetSocketSecurity`), `SOCKET_PEER_TARGET_NAME` (`WSASetSocketPeerTargetName`), a `sockaddr`
    /// (`WSADeleteSocketPeerTargetName`, `WSAConnect`…) and `SOCKET_SECURITY_QUERY_TEMPLATE[_IPSEC2]`
    /// (`WSAQuerySocketSecurity`).
    ///
    /// Input: one byte, then the caller's buffer. The byte's low two bits choose the reader (settings, peer target
    /// name, address, query template), 0x40 places the buffer at an odd address, 0x80 passes NULL with the
    /// length. The length passed is the buffer's size, and the buffer is an allocation of exactly that size, so
    /// AddressSanitizer reports any read past what the caller said it passed.
    public static let windowsStructs = FuzzTarget(name: "windows-structs") { input in
        guard let selector = input.first else { return .refused }
        let body = UnsafeRawBufferPointer(rebasing: input.dropFirst())
        let misaligned = selector & 0x40 != 0 ? 1 : 0
        let storage = UnsafeMutableRawPointer.allocate(byteCount: body.count + misaligned, alignment: 16)
        defer { storage.deallocate() }
        let buffer = storage + misaligned
        if let source = body.baseAddress { buffer.copyMemory(from: source, byteCount: body.count) }
        let pointer: UnsafeRawPointer? = selector & 0x80 != 0 ? nil : UnsafeRawPointer(buffer)
        let length = UInt32(body.count)
        do {
            switch selector & 3 {
            case 0:
                _ = try WindowsStructs.settings(pointer, length: length)
            case 1:
                _ = try WindowsStructs.peerTargetName(pointer, length: length)
            case 2:
                _ = try WindowsStructs.address(pointer, length: length)
            default:
                _ = try WindowsStructs.queryTemplate(pointer, length: length)
            }
            return .accepted
        } catch {
            return .refused
        }
    }
}
