import IPAddressing

/// What the kernel says about one TCP or UDP socket (`struct inet_diag_msg`), read without holding its descriptor.
///
/// The same socket keeps its ``cookie`` for life (it is what `getsockopt(SO_COOKIE)` returns on its descriptor),
/// so a daemon can follow a socket it saw once. A TCP connection's cookie also survives into `TIME_WAIT`: the kernel
/// copies it into the time-wait socket that replaces the closed one.
public struct InetSocketRecord: Hashable, Sendable, CustomStringConvertible {
    /// The kernel's socket cookie: `idiag_cookie[0] | idiag_cookie[1] << 32`, equal to `SO_COOKIE`.
    public var cookie: UInt64
    /// IPv4 or IPv6 (an IPv6 socket talking to an IPv4 peer reports v4-mapped addresses).
    public var family: IPAddressFamily
    public var transport: InetTransport
    /// The TCP state; for UDP ``TCPState/close`` unconnected, ``TCPState/established`` connected.
    public var state: TCPState
    /// Bound address and port (the wildcard address when bound to any, port 0 when unbound).
    public var local: IPEndpoint
    /// The peer's address and port (the wildcard address and port 0 when there is none).
    public var remote: IPEndpoint
    /// The interface the socket is bound to (`SO_BINDTODEVICE`, an IPv6 link-local scope), 0 for none.
    public var interfaceIndex: UInt32
    /// The owner's user id, mapped into the asking process's user namespace (0 in destroy events).
    public var uid: UInt32
    /// The socket's inode (what `/proc/PID/fd` links to as `socket:[N]`); 0 when no process holds it, which is also
    /// what time-wait sockets, connection requests and destroy events report.
    public var inode: UInt32
    /// Bytes received and not yet read (TCP), or memory the queued datagrams take (UDP); a listener's accept
    /// queue length.
    public var receiveQueue: UInt32
    /// Bytes written and not yet acknowledged by the peer, sent or not (TCP), or memory the datagrams still queued
    /// for sending take (UDP); a listener's backlog limit.
    public var sendQueue: UInt32

    public init(
        cookie: UInt64, family: IPAddressFamily, transport: InetTransport, state: TCPState, local: IPEndpoint,
        remote: IPEndpoint, interfaceIndex: UInt32 = 0, uid: UInt32, inode: UInt32, receiveQueue: UInt32,
        sendQueue: UInt32
    ) {
        self.cookie = cookie
        self.family = family
        self.transport = transport
        self.state = state
        self.local = local
        self.remote = remote
        self.interfaceIndex = interfaceIndex
        self.uid = uid
        self.inode = inode
        self.receiveQueue = receiveQueue
        self.sendQueue = sendQueue
    }

    /// A TCP listener.
    public var isListening: Bool { transport == .tcp && state == .listen }

    /// A TCP connection every process has closed and the kernel still carries (delivering what is queued, or
    /// finishing the close): inode 0 in a state that is a full socket's. Time-wait sockets and connection requests
    /// also have inode 0 but are not counted, nor is a destroyed socket (``TCPState/close``).
    public var isOrphan: Bool {
        transport == .tcp && inode == 0
            && ![TCPState.timeWait, .synReceived, .newSynReceived, .listen, .close].contains(state)
    }

    /// Whether a socket of this record still needs what protects it: a socket proper (not a time-wait record,
    /// whose connection's socket is gone, nor a connection request not yet accepted), and not an orphan in
    /// FIN_WAIT2 (it delivered everything and its FIN was acknowledged).
    public var isLiveSocket: Bool {
        Self.socketStates.contains(state) && !(isOrphan && state == .finWait2)
    }

    /// The states of a socket proper: not TIME_WAIT, nor a connection request (dump filter for ``isLiveSocket``).
    public static let socketStates = TCPState.all.subtracting([.timeWait, .synReceived, .newSynReceived])

    /// Has a peer the kernel exchanges data with: a connected UDP socket, or a TCP connection from ESTABLISHED
    /// until it reaches TIME_WAIT or CLOSE.
    public var isConnected: Bool {
        switch transport {
        case .udp: state == .established
        case .tcp: [TCPState.established, .finWait1, .finWait2, .closeWait, .closing, .lastAck].contains(state)
        }
    }

    /// In `ss`'s order: transport, state, local, remote, then the numbers.
    public var description: String {
        "\(transport) \(state) \(local) \(remote) cookie \(cookie) uid \(uid) inode \(inode)"
            + " rq \(receiveQueue) wq \(sendQueue)"
    }
}
