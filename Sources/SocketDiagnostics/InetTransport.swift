/// The transport protocols whose sockets `inet_diag` reports here, with their IP protocol numbers (the
/// `sdiag_protocol` of a request and the `INET_DIAG_PROTOCOL` attribute of a destroy event).
public enum InetTransport: UInt8, Hashable, Sendable, CustomStringConvertible {
    /// `IPPROTO_TCP`.
    case tcp = 6
    /// `IPPROTO_UDP`.
    case udp = 17

    public var description: String { self == .tcp ? "tcp" : "udp" }
}
