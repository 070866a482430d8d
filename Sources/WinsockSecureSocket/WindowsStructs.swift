import CSecureSocketABI
import Foundation
import IPAddressing
import SecureSocket

/// Reading the Windows-layout structs a C caller passes, with the length rules of winsock-spec.md §5.
/// Offsets come from the C declarations in CModules/CSecureSocketABI (pinned by `_Static_assert`).
/// The four readers are `package` for the fuzz targets and their replay tests (`Fuzzing/`): each takes the
/// caller's pointer and length exactly as the C entry points receive them.
package enum WindowsStructs {
    static let settingsSize = MemoryLayout<SOCKET_SECURITY_SETTINGS>.size // 8
    static let ipsecSettingsSize = MemoryLayout<SOCKET_SECURITY_SETTINGS_IPSEC>.size // 88
    static let ipsecStringsOffset = 84
    static let peerTargetNameSize = MemoryLayout<SOCKET_PEER_TARGET_NAME>.size // 144
    static let peerNameStringOffset = 140
    static let queryTemplateSize = MemoryLayout<SOCKET_SECURITY_QUERY_TEMPLATE>.size // 144
    static let queryTemplateIPsec2Size = MemoryLayout<SOCKET_SECURITY_QUERY_TEMPLATE_IPSEC2>.size // 152
    static let queryInfoSize = MemoryLayout<SOCKET_SECURITY_QUERY_INFO>.size // 24
    static let queryInfoIPsec2Size = MemoryLayout<SOCKET_SECURITY_QUERY_INFO_IPSEC2>.size // 64

    static func securityProtocol(_ raw: UInt32) throws(SecureSocketError) -> SocketSecurityProtocol {
        guard let value = SocketSecurityProtocol(rawValue: raw) else {
            throw SecureSocketError(.invalidArgument, "SecurityProtocol \(raw) is not DEFAULT, IPSEC or IPSEC2")
        }
        return value
    }

    /// `SOCKET_SECURITY_SETTINGS` or, for protocol IPSEC with a long enough buffer, `SOCKET_SECURITY_SETTINGS_IPSEC`.
    package static func settings(_ pointer: UnsafeRawPointer?, length: UInt32) throws(SecureSocketError)
        -> SocketSecuritySettings
    {
        guard let pointer else { return .default }
        let length = Int(length)
        guard length >= settingsSize else {
            throw SecureSocketError(.messageSize, "SecuritySettingsLen \(length) < \(settingsSize)")
        }
        let base = pointer.loadUnaligned(as: SOCKET_SECURITY_SETTINGS.self)
        let securityProtocol = try securityProtocol(base.SecurityProtocol.rawValue)
        let flags = SocketSecurityFlags(rawValue: base.SecurityFlags)
        guard securityProtocol == .ipsec, length >= ipsecStringsOffset else {
            if securityProtocol == .ipsec2 {
                throw SecureSocketError(.invalidArgument, "IPSEC2 names a query form, not settings")
            }
            return SocketSecuritySettings(securityProtocol: securityProtocol, flags: flags)
        }
        let s = load(SOCKET_SECURITY_SETTINGS_IPSEC.self, from: pointer, available: length)
        let user = Int(s.UserNameStringLen)
        let domain = Int(s.DomainNameStringLen)
        let password = Int(s.PasswordStringLen)
        guard user % 2 == 0, domain % 2 == 0, password % 2 == 0 else {
            throw SecureSocketError(.invalidArgument, "string lengths are in bytes of UTF-16 and must be even")
        }
        let needed = ipsecStringsOffset + user + domain + password
        guard user + domain + password <= 3 * 1024, length >= needed else {
            throw SecureSocketError(.messageSize, "SecuritySettingsLen \(length) < \(needed) (84 + the strings)")
        }
        guard isZero(s.Reserved), s.Reserved2 == 0 else {
            throw SecureSocketError(.invalidArgument, "Reserved fields must be zero")
        }
        let strings = pointer + ipsecStringsOffset
        let ipsec = IPsecSettings(
            flags: IPsecSettingsFlags(rawValue: s.IpsecFlags),
            mainModePolicyKey: uuid(s.AuthipMMPolicyKey), quickModePolicyKey: uuid(s.AuthipQMPolicyKey),
            userName: try utf16(strings, bytes: user), domainName: try utf16(strings + user, bytes: domain),
            password: try utf16(strings + user + domain, bytes: password))
        return SocketSecuritySettings(securityProtocol: .ipsec, flags: flags, ipsec: ipsec)
    }

    /// `SOCKET_PEER_TARGET_NAME`. The string length is taken as bytes (the documentation) unless that does not
    /// fit while a character count does (what Microsoft's own sample stores): see winsock-spec.md §6.1.
    package static func peerTargetName(_ pointer: UnsafeRawPointer?, length: UInt32) throws(SecureSocketError)
        -> SocketPeerTargetName
    {
        guard let pointer else { throw SecureSocketError(.fault, "PeerTargetName is NULL") }
        let length = Int(length)
        guard length >= peerNameStringOffset else {
            throw SecureSocketError(.messageSize, "PeerTargetNameLen \(length) < \(peerNameStringOffset)")
        }
        let header = load(SOCKET_PEER_TARGET_NAME.self, from: pointer, available: length)
        let securityProtocol = try securityProtocol(header.SecurityProtocol.rawValue)
        let declared = Int(header.PeerTargetNameStringLen)
        let available = length - peerNameStringOffset
        // Microsoft's sample allocates sizeof (144) + 2 * characters and stores the character count; the
        // documentation says bytes. A buffer of exactly 140/144 + 2 * declared is read as characters.
        let bytes: Int
        if declared > 0 && (length == 144 + 2 * declared || length == 140 + 2 * declared) {
            bytes = declared * 2
        } else if declared % 2 == 0 && declared <= available {
            bytes = declared
        } else {
            throw SecureSocketError(.messageSize, "PeerTargetNameLen \(length) cannot hold a name of \(declared)")
        }
        guard bytes > 0 else { throw SecureSocketError(.invalidArgument, "empty peer target name") }
        var name = try utf16(pointer + peerNameStringOffset, bytes: bytes) ?? ""
        while name.hasSuffix("\0") { name.removeLast() }
        let peer = withUnsafeBytes(of: header.PeerAddress) { raw -> IPEndpoint? in
            IPEndpoint(sockaddr: raw.baseAddress!, length: raw.count)
        }
        let family = withUnsafeBytes(of: header.PeerAddress) { $0.loadUnaligned(as: UInt16.self) }
        if family != 0 && peer == nil {
            throw SecureSocketError(.addressFamilyNotSupported, "PeerAddress family \(family)")
        }
        return SocketPeerTargetName(securityProtocol: securityProtocol, peerAddress: peer, name: name)
    }

    /// A `struct sockaddr` argument.
    package static func address(_ pointer: UnsafeRawPointer?, length: UInt32) throws(SecureSocketError)
        -> IPEndpoint
    {
        guard let pointer else { throw SecureSocketError(.fault, "PeerAddr is NULL") }
        guard length >= 2 else { throw SecureSocketError(.messageSize, "PeerAddrLen \(length)") }
        let family = Int32(pointer.loadUnaligned(as: UInt16.self))
        switch family {
        case AF_INET where length < UInt32(MemoryLayout<sockaddr_in>.size),
            AF_INET6 where length < UInt32(MemoryLayout<sockaddr_in6>.size):
            throw SecureSocketError(.messageSize, "PeerAddrLen \(length) too small for family \(family)")
        case AF_INET, AF_INET6:
            return IPEndpoint(sockaddr: pointer, length: Int(length))!
        default:
            throw SecureSocketError(.addressFamilyNotSupported, "address family \(family)")
        }
    }

    /// `SOCKET_SECURITY_QUERY_TEMPLATE[_IPSEC2]`; nil pointer → nil template.
    package static func queryTemplate(_ pointer: UnsafeRawPointer?, length: UInt32) throws(SecureSocketError)
        -> SocketSecurityQueryTemplate?
    {
        guard let pointer else { return nil }
        let length = Int(length)
        guard length >= queryTemplateSize else {
            throw SecureSocketError(.messageSize, "SecurityQueryTemplateLen \(length) < \(queryTemplateSize)")
        }
        let t = pointer.loadUnaligned(as: SOCKET_SECURITY_QUERY_TEMPLATE.self)
        let securityProtocol = try securityProtocol(t.SecurityProtocol.rawValue)
        var template = SocketSecurityQueryTemplate(
            securityProtocol: securityProtocol,
            peerTokenAccessMask: t.PeerTokenAccessMask)
        let family = withUnsafeBytes(of: t.PeerAddress) { $0.loadUnaligned(as: UInt16.self) }
        if family != 0 {
            guard
                let peer = withUnsafeBytes(
                    of: t.PeerAddress, { IPEndpoint(sockaddr: $0.baseAddress!, length: $0.count) })
            else {
                throw SecureSocketError(.addressFamilyNotSupported, "PeerAddress family \(family)")
            }
            template.peerAddress = peer
        }
        if securityProtocol == .ipsec2 {
            guard length >= queryTemplateIPsec2Size else {
                throw SecureSocketError(.messageSize, "an IPSEC2 template needs \(queryTemplateIPsec2Size) bytes")
            }
            let t2 = pointer.loadUnaligned(as: SOCKET_SECURITY_QUERY_TEMPLATE_IPSEC2.self)
            template.ipsec2Flags = t2.Flags
            template.ipsec2FieldMask = t2.FieldMask
        }
        return template
    }

    private static func load<T>(_ type: T.Type, from pointer: UnsafeRawPointer, available: Int) -> T {
        // The struct's trailing padding may lie past what the caller passed (84 + strings < 88): copy what exists.
        let storage = UnsafeMutableRawPointer.allocate(
            byteCount: MemoryLayout<T>.size, alignment: MemoryLayout<T>.alignment)
        defer { storage.deallocate() }
        storage.initializeMemory(as: UInt8.self, repeating: 0, count: MemoryLayout<T>.size)
        storage.copyMemory(from: pointer, byteCount: min(available, MemoryLayout<T>.size))
        return storage.load(as: T.self)
    }

    private static func isZero(_ guid: WSS_GUID) -> Bool { withUnsafeBytes(of: guid) { $0.allSatisfy { $0 == 0 } } }

    private static func uuid(_ guid: WSS_GUID) -> UUID? {
        guard !isZero(guid) else { return nil }
        return withUnsafeBytes(of: guid) { raw in
            UUID(
                uuid: (
                    raw[0], raw[1], raw[2], raw[3], raw[4], raw[5], raw[6], raw[7], raw[8], raw[9], raw[10], raw[11],
                    raw[12], raw[13], raw[14], raw[15]
                ))
        }
    }

    /// Decodes UTF-16 (host order); nil for zero bytes; invalid sequences are an error, never replaced.
    private static func utf16(_ pointer: UnsafeRawPointer, bytes: Int) throws(SecureSocketError) -> String? {
        guard bytes > 0 else { return nil }
        let units = (0..<bytes / 2).map { pointer.loadUnaligned(fromByteOffset: $0 * 2, as: UInt16.self) }
        var text = ""
        var iterator = units.makeIterator()
        var decoder = UTF16()
        loop: while true {
            switch decoder.decode(&iterator) {
            case .scalarValue(let scalar): text.unicodeScalars.append(scalar)
            case .emptyInput: break loop
            case .error: throw SecureSocketError(.invalidArgument, "a string is not valid UTF-16")
            }
        }
        return text
    }
}
