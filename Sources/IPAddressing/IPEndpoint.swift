import Glibc

/// An IP address and a port: what a socket is bound or connected to (`sockaddr_in` / `sockaddr_in6`).
public struct IPEndpoint: Hashable, Sendable, CustomStringConvertible {
    public var address: IPAddress
    public var port: UInt16
    public init(address: IPAddress, port: UInt16) {
        self.address = address
        self.port = port
    }
    public var description: String {
        address.family == .inet6 ? "[\(address)]:\(port)" : "\(address):\(port)"
    }

    /// Whether this is an IPv4-mapped IPv6 address (`::ffff:a.b.c.d`).
    public var isV4Mapped: Bool {
        address.family == .inet6 && address.bytes.prefix(10).allSatisfy { $0 == 0 }
            && address.bytes[10] == 0xff && address.bytes[11] == 0xff
    }

    /// Reads a `sockaddr_in` / `sockaddr_in6`; nil for other families or short buffers.
    public init?(sockaddr pointer: UnsafeRawPointer, length: Int) {
        guard length >= 2 else { return nil }
        let family = Int32(pointer.loadUnaligned(as: sa_family_t.self))
        switch family {
        case AF_INET:
            guard length >= MemoryLayout<sockaddr_in>.size else { return nil }
            let sin = pointer.loadUnaligned(as: sockaddr_in.self)
            self.init(
                address: withUnsafeBytes(of: sin.sin_addr) { IPAddress(family: .inet, raw: $0) },
                port: UInt16(bigEndian: sin.sin_port))
        case AF_INET6:
            guard length >= MemoryLayout<sockaddr_in6>.size else { return nil }
            let sin6 = pointer.loadUnaligned(as: sockaddr_in6.self)
            self.init(
                address: withUnsafeBytes(of: sin6.sin6_addr) { IPAddress(family: .inet6, raw: $0) },
                port: UInt16(bigEndian: sin6.sin6_port))
        default:
            return nil
        }
    }

    /// Calls `body` with this address as a `sockaddr_in` / `sockaddr_in6`.
    public func withSockaddr<T>(_ body: (UnsafePointer<sockaddr>, socklen_t) throws -> T) rethrows -> T {
        if address.family == .inet6 {
            var sa = sockaddr_in6()
            sa.sin6_family = sa_family_t(AF_INET6)
            sa.sin6_port = port.bigEndian
            withUnsafeMutableBytes(of: &sa.sin6_addr) { target in
                address.withUnsafeBytes { target.copyMemory(from: $0) }
            }
            return try withUnsafePointer(to: &sa) {
                try $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    try body($0, socklen_t(MemoryLayout<sockaddr_in6>.size))
                }
            }
        }
        var sa = sockaddr_in()
        sa.sin_family = sa_family_t(AF_INET)
        sa.sin_port = port.bigEndian
        withUnsafeMutableBytes(of: &sa.sin_addr) { target in address.withUnsafeBytes { target.copyMemory(from: $0) } }
        return try withUnsafePointer(to: &sa) {
            try $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                try body($0, socklen_t(MemoryLayout<sockaddr_in>.size))
            }
        }
    }
}
