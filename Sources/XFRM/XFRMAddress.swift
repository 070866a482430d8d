import Glibc

/// An address family as XFRM uses it: `AF_INET` or `AF_INET6` (or unspecified, `0`).
public struct XFRMAddressFamily: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    public var rawValue: UInt16
    public init(rawValue: UInt16) { self.rawValue = rawValue }

    /// IPv4. The corresponding C constant is `AF_INET`.
    public static let inet = XFRMAddressFamily(rawValue: UInt16(Glibc.AF_INET))
    /// IPv6. The corresponding C constant is `AF_INET6`.
    public static let inet6 = XFRMAddressFamily(rawValue: UInt16(Glibc.AF_INET6))
    /// No family (the kernel then takes the policy's or the state's).
    public static let unspecified = XFRMAddressFamily(rawValue: 0)

    @available(*, unavailable, renamed: "inet") public static var AF_INET: Self { inet }
    @available(*, unavailable, renamed: "inet6") public static var AF_INET6: Self { inet6 }

    /// iproute2's word: `inet`, `inet6`.
    public var description: String {
        switch self {
        case .inet: "inet"
        case .inet6: "inet6"
        case .unspecified: "unspec"
        default: "family \(rawValue)"
        }
    }

    /// Bits in a full-length prefix: 32 or 128.
    public var addressBits: UInt8 { self == .inet6 ? 128 : 32 }
    var addressLength: Int { self == .inet6 ? 16 : 4 }
}

/// An IPv4 or IPv6 address, the kernel's `xfrm_address_t` with its family beside it.
public struct XFRMAddress: Hashable, Sendable, CustomStringConvertible {
    /// The address family.
    public var family: XFRMAddressFamily
    /// The address in network byte order: 4 bytes for IPv4, 16 for IPv6.
    public private(set) var bytes: [UInt8]

    /// Creates an address from its bytes in network order (4 for IPv4, 16 for IPv6).
    public init?(bytes: [UInt8]) {
        switch bytes.count {
        case 4: family = .inet
        case 16: family = .inet6
        default: return nil
        }
        self.bytes = bytes
    }

    /// Parses a textual IPv4 (`10.0.0.1`) or IPv6 (`fd00::1`) address.
    public init?(_ text: String) {
        var v4 = in_addr()
        if inet_pton(AF_INET, text, &v4) == 1 {
            self.family = .inet
            self.bytes = withUnsafeBytes(of: v4) { Array($0) }
            return
        }
        var v6 = in6_addr()
        if inet_pton(AF_INET6, text, &v6) == 1 {
            self.family = .inet6
            self.bytes = withUnsafeBytes(of: v6) { Array($0) }
            return
        }
        return nil
    }

    /// The all-zero address of a family (`0.0.0.0` / `::`), which XFRM reads as "any".
    public static func any(_ family: XFRMAddressFamily) -> XFRMAddress {
        XFRMAddress(family: family, bytes: [UInt8](repeating: 0, count: family.addressLength))
    }

    init(family: XFRMAddressFamily, bytes: [UInt8]) {
        self.family = family
        self.bytes = bytes
    }

    /// Whether every byte is zero.
    public var isAny: Bool { bytes.allSatisfy { $0 == 0 } }

    public var description: String {
        var buffer = [CChar](repeating: 0, count: Int(INET6_ADDRSTRLEN))
        let af: CInt = family == .inet6 ? AF_INET6 : AF_INET
        let ok = bytes.withUnsafeBytes { raw in
            inet_ntop(af, raw.baseAddress, &buffer, socklen_t(buffer.count)) != nil
        }
        guard ok else { return "<invalid address>" }
        return String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }
}

extension XFRMAddress: ExpressibleByStringLiteral {
    /// A literal address; traps on text that is not an address (literals are the programmer's).
    public init(stringLiteral value: String) {
        guard let address = XFRMAddress(value) else { preconditionFailure("not an IP address: \(value)") }
        self = address
    }
}
