import Glibc

/// An IP address family: `AF_INET` or `AF_INET6` (or unspecified, `0`, which XFRM reads as "take it from the
/// policy or the state").
public struct IPAddressFamily: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    public var rawValue: UInt16
    public init(rawValue: UInt16) { self.rawValue = rawValue }

    /// IPv4. The corresponding C constant is `AF_INET`.
    public static let inet = IPAddressFamily(rawValue: UInt16(Glibc.AF_INET))
    /// IPv6. The corresponding C constant is `AF_INET6`.
    public static let inet6 = IPAddressFamily(rawValue: UInt16(Glibc.AF_INET6))
    /// No family (the kernel then takes the policy's or the state's).
    public static let unspecified = IPAddressFamily(rawValue: 0)

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
    /// Bytes in an address: 4 or 16.
    public var addressLength: Int { self == .inet6 ? 16 : 4 }
}

/// An IPv4 or IPv6 address with its family. Laid out as the kernel's `in_addr` / `in6_addr` / `xfrm_address_t`
/// and held inline (two words and the family, no allocation): endpoints, flows and SAs carry several each.
public struct IPAddress: Hashable, Sendable, CustomStringConvertible {
    /// The address family.
    public var family: IPAddressFamily
    /// The address bytes in network order, as laid out in memory (`xfrm_address_t`); IPv4 uses the first 4.
    private var first: UInt64
    private var second: UInt64

    /// The address in network byte order: 4 bytes for IPv4, 16 for IPv6.
    public var bytes: [UInt8] { withUnsafeBytes { Array($0) } }

    /// Calls `body` with the address bytes in network order (4 or 16), without copying them out.
    public func withUnsafeBytes<T>(_ body: (UnsafeRawBufferPointer) throws -> T) rethrows -> T {
        let length = family.addressLength
        return try Swift.withUnsafeBytes(of: (first, second)) {
            try body(UnsafeRawBufferPointer(rebasing: $0.prefix(length)))
        }
    }

    /// Creates an address from its bytes in network order (4 for IPv4, 16 for IPv6).
    public init?(bytes: [UInt8]) {
        switch bytes.count {
        case 4: self.init(family: .inet, bytes: bytes)
        case 16: self.init(family: .inet6, bytes: bytes)
        default: return nil
        }
    }

    /// Parses a textual IPv4 (`10.0.0.1`) or IPv6 (`fd00::1`) address.
    public init?(_ text: String) {
        var v4 = in_addr()
        if inet_pton(AF_INET, text, &v4) == 1 {
            self = Swift.withUnsafeBytes(of: v4) { IPAddress(family: .inet, raw: $0) }
            return
        }
        var v6 = in6_addr()
        if inet_pton(AF_INET6, text, &v6) == 1 {
            self = Swift.withUnsafeBytes(of: v6) { IPAddress(family: .inet6, raw: $0) }
            return
        }
        return nil
    }

    /// The all-zero address of a family (`0.0.0.0` / `::`), which XFRM reads as "any".
    public static func any(_ family: IPAddressFamily) -> IPAddress {
        IPAddress(family: family, first: 0, second: 0)
    }

    /// From `bytes` in network order, for `family` (extra bytes are ignored, missing ones are zero).
    public init(family: IPAddressFamily, bytes: [UInt8]) {
        self = bytes.withUnsafeBytes { IPAddress(family: family, raw: $0) }
    }

    /// From the first 4 (IPv4) or 16 (IPv6) bytes of `raw`, in network order (fewer: the rest are zero), as in
    /// `in_addr`, `in6_addr` or `xfrm_address_t`.
    public init(family: IPAddressFamily, raw: UnsafeRawBufferPointer) {
        var words: (UInt64, UInt64) = (0, 0)
        Swift.withUnsafeMutableBytes(of: &words) { target in
            let count = min(raw.count, family.addressLength, 16)
            target.copyMemory(from: UnsafeRawBufferPointer(rebasing: raw.prefix(count)))
        }
        self.init(family: family, first: words.0, second: words.1)
    }

    private init(family: IPAddressFamily, first: UInt64, second: UInt64) {
        self.family = family
        self.first = first
        self.second = second
    }

    /// Whether every byte is zero.
    public var isAny: Bool { first == 0 && second == 0 }

    public var description: String {
        var buffer = [CChar](repeating: 0, count: Int(INET6_ADDRSTRLEN))
        let af: CInt = family == .inet6 ? AF_INET6 : AF_INET
        let ok = withUnsafeBytes { raw in
            inet_ntop(af, raw.baseAddress, &buffer, socklen_t(buffer.count)) != nil
        }
        guard ok else { return "<invalid address>" }
        return String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }
}

extension IPAddress: ExpressibleByStringLiteral {
    /// A literal address; traps on text that is not an address (literals are the programmer's).
    public init(stringLiteral value: String) {
        guard let address = IPAddress(value) else { preconditionFailure("not an IP address: \(value)") }
        self = address
    }
}
