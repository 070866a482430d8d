import Glibc
import IPAddressing
import Synchronization
import SystemPackage
import SystemSupport
import XFRM

/// The kernel's socket diagnostics (NETLINK_SOCK_DIAG, inet_diag) for TCP and UDP sockets of one network
/// namespace: `ss -tuna` as a library, without holding the sockets' descriptors.
///
/// The socket is opened inside the namespace when this is created (on a dedicated thread), so it can be used from
/// any thread or task afterwards; requests are serialised on it. Replies must come from the kernel and carry our
/// sequence number; each receive waits at most ``receiveTimeout`` and each request at most ``requestDeadline``.
/// Reading other users' sockets needs no privilege.
public final class SocketDiagnostics: Sendable {
    /// The namespace whose sockets this reports (and only those).
    public let namespace: NetworkNamespace
    /// Longest wait for one datagram.
    public static let receiveTimeout: Duration = .seconds(2)
    /// Longest time one request (a whole dump included) may take.
    public static let requestDeadline: Duration = .seconds(60)

    private let socket: Mutex<DiagSocket>

    /// Opens the diagnostics socket in `namespace`.
    public init(namespace: NetworkNamespace = .current) throws(SocketDiagnosticsError) {
        self.namespace = namespace
        socket = Mutex(
            try DiagSocket(
                namespace: namespace, receiveTimeout: Self.receiveTimeout, operation: "open socket diagnostics"))
    }

    /// Every `transport` socket of `family` in the namespace whose state is in `states` (nil: every state, bound
    /// but inactive TCP sockets included on kernels that report them). The kernel filters by state.
    ///
    /// `ss -tan` / `ss -uan` with `-4` or `-6`. An IPv6 dump does not include IPv4 sockets, and the reverse.
    public func sockets(
        _ transport: InetTransport, family: IPAddressFamily, states: Set<TCPState>? = nil
    ) throws(SocketDiagnosticsError) -> [InetSocketRecord] {
        let operation = "dump \(transport) \(family)"
        try Self.check(family, operation: operation)
        let mask = TCPState.mask(states ?? TCPState.all)
        return try exchange(operation: operation, transport: transport, dump: true) { sequence in
            InetDiagRequest.dump(transport: transport, family: family, states: mask, sequence: sequence)
        }
    }

    /// The socket whose cookie (`SO_COOKIE`) is `cookie`, or nil when the namespace has none.
    ///
    /// A dump filtered here, not the kernel's exact lookup: that one finds the socket by its addresses and ports
    /// and only then compares the cookie (a request with the cookie alone answers `ENOENT`), so it cannot work
    /// from the cookie alone. Once a socket's record is known, ``socket(matching:)`` asks the kernel directly.
    public func socket(
        cookie: UInt64, transport: InetTransport, family: IPAddressFamily
    ) throws(SocketDiagnosticsError) -> InetSocketRecord? {
        try sockets(transport, family: family).first { $0.cookie == cookie }
    }

    /// The current record of the socket `record` describes, by the kernel's exact lookup (addresses, ports,
    /// interface, then cookie), or nil when that socket is gone (also when another socket has its tuple now).
    ///
    /// Cheaper than a dump: a hash lookup in the kernel. The tuple must be the one the kernel hashes the socket
    /// under, so use a record the kernel gave (a listener bound to the wildcard address is found under it).
    public func socket(matching record: InetSocketRecord) throws(SocketDiagnosticsError) -> InetSocketRecord? {
        let operation = "lookup \(record.transport) \(record.family)"
        try Self.check(record.family, operation: operation)
        do {
            return try exchange(operation: operation, transport: record.transport, dump: false) { sequence in
                InetDiagRequest.exact(record, sequence: sequence)
            }.first
        } catch  where error.code == .kernelRejected && Self.goneErrors.contains(error.errno) {
            return nil
        }
    }

    /// What the exact lookup answers for a socket that is gone: `ENOENT` (no socket under the tuple; for TCP also
    /// one with another cookie), `ESTALE` (a UDP socket with another cookie).
    private static let goneErrors: Set<Errno?> = [.noSuchFileOrDirectory, .staleNFSFileHandle]

    private static func check(_ family: IPAddressFamily, operation: String) throws(SocketDiagnosticsError) {
        guard family == .inet || family == .inet6 else {
            throw SocketDiagnosticsError(
                .invalidArgument, operation: operation, detail: "address family \(family) is neither inet nor inet6")
        }
    }

    /// Sends one request and returns its `SOCK_DIAG_BY_FAMILY` replies, each read as it arrives: until
    /// `NLMSG_DONE` for a dump, the one reply (or the error) otherwise. `transport` is the request's.
    ///
    /// Messages with another sequence number are what an earlier request abandoned at its deadline left behind:
    /// skipped (the sender is the kernel, checked on every datagram).
    private func exchange(
        operation: String, transport: InetTransport, dump: Bool, _ request: (UInt32) -> [UInt8]
    ) throws(SocketDiagnosticsError) -> [InetSocketRecord] {
        try socket.withLock { (socket) throws(SocketDiagnosticsError) -> [InetSocketRecord] in
            let sequence = socket.allocateSequence()
            try socket.send(request(sequence), operation: operation)
            var records: [InetSocketRecord] = []
            let deadline = Deadline(after: Self.requestDeadline)
            while !deadline.hasPassed {
                guard let datagram = try socket.receive(operation: operation) else {
                    throw SocketDiagnosticsError(
                        .timedOut, operation: operation, detail: "no reply within \(Self.receiveTimeout)")
                }
                for message in try DiagNetlinkMessage.split(datagram, operation: operation) {
                    guard message.sequence == sequence, message.portID == socket.portID || message.portID == 0 else {
                        continue
                    }
                    switch message.type {
                    case _NLMSG_ERROR:
                        if let errno = try message.errorStatus(operation: operation) {
                            throw SocketDiagnosticsError(.kernelRejected, operation: operation, errno: errno)
                        }
                        if !dump { return records }
                    case _NLMSG_DONE:
                        if let errno = try message.doneStatus(operation: operation) {
                            throw SocketDiagnosticsError(.kernelRejected, operation: operation, errno: errno)
                        }
                        return records
                    case _SOCK_DIAG_BY_FAMILY:
                        records.append(
                            try InetSocketRecord(
                                inetDiagPayload: message.payload, transport: transport, operation: operation))
                        if !dump { return records }
                    case _NLMSG_NOOP:
                        continue
                    default:
                        throw .malformed(operation, "unexpected message type \(message.type)")
                    }
                }
            }
            throw SocketDiagnosticsError(
                .timedOut, operation: operation, detail: "request took longer than \(Self.requestDeadline)")
        }
    }
}
