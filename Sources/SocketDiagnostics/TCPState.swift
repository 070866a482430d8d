/// A socket's state as `inet_diag` reports it: the kernel's TCP states (`include/net/tcp_states.h`), which UDP
/// sockets borrow (``close`` unconnected, ``established`` connected).
///
/// A struct with the kernel's raw values rather than an enum, so a state a newer kernel adds is carried as its
/// number instead of making the whole record unreadable.
public struct TCPState: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    public var rawValue: UInt8
    public init(rawValue: UInt8) { self.rawValue = rawValue }

    /// `TCP_ESTABLISHED` (1); also a connected UDP socket.
    public static let established = TCPState(rawValue: 1)
    /// `TCP_SYN_SENT` (2).
    public static let synSent = TCPState(rawValue: 2)
    /// `TCP_SYN_RECV` (3): also how dumps report a connection request not yet accepted by the handshake.
    public static let synReceived = TCPState(rawValue: 3)
    /// `TCP_FIN_WAIT1` (4).
    public static let finWait1 = TCPState(rawValue: 4)
    /// `TCP_FIN_WAIT2` (5).
    public static let finWait2 = TCPState(rawValue: 5)
    /// `TCP_TIME_WAIT` (6).
    public static let timeWait = TCPState(rawValue: 6)
    /// `TCP_CLOSE` (7); also an unconnected UDP socket, and every destroyed socket.
    public static let close = TCPState(rawValue: 7)
    /// `TCP_CLOSE_WAIT` (8).
    public static let closeWait = TCPState(rawValue: 8)
    /// `TCP_LAST_ACK` (9).
    public static let lastAck = TCPState(rawValue: 9)
    /// `TCP_LISTEN` (10).
    public static let listen = TCPState(rawValue: 10)
    /// `TCP_CLOSING` (11).
    public static let closing = TCPState(rawValue: 11)
    /// `TCP_NEW_SYN_RECV` (12): a request socket. Only a filter bit: the kernel adds it to a dump that asks for
    /// ``synReceived`` and reports such sockets as ``synReceived``.
    public static let newSynReceived = TCPState(rawValue: 12)
    /// `TCP_BOUND_INACTIVE` (13, Linux 6.7 and later): only a filter bit, for TCP sockets bound but neither
    /// listening nor connected, which the dump then reports as ``close``. Older kernels ignore the bit.
    public static let boundInactive = TCPState(rawValue: 13)

    /// Every state above: what a dump without a state filter asks for.
    public static let all: Set<TCPState> = Set((1...13).map(TCPState.init(rawValue:)))

    /// The kernel's bitmask for a set of states (`idiag_states`: bit N is state N).
    static func mask(_ states: Set<TCPState>) -> UInt32 {
        states.reduce(UInt32(0)) { $0 | ($1.rawValue < 32 ? UInt32(1) << $1.rawValue : 0) }
    }

    /// The kernel's name without `TCP_`, as `ss` prints it.
    public var description: String {
        switch rawValue {
        case 1: "ESTABLISHED"
        case 2: "SYN_SENT"
        case 3: "SYN_RECV"
        case 4: "FIN_WAIT1"
        case 5: "FIN_WAIT2"
        case 6: "TIME_WAIT"
        case 7: "CLOSE"
        case 8: "CLOSE_WAIT"
        case 9: "LAST_ACK"
        case 10: "LISTEN"
        case 11: "CLOSING"
        case 12: "NEW_SYN_RECV"
        case 13: "BOUND_INACTIVE"
        default: "state \(rawValue)"
        }
    }
}
