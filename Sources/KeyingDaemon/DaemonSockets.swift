import ALE
import Glibc
import IPAddressing
import SecureSocket
import SocketDiagnostics
import Synchronization
import XFRM

/// The daemon's clients' sockets as the engine sees them (`ClientSockets`): present while the kernel's
/// socket tables list them (NETLINK_SOCK_DIAG, one dump per transport and family), or, for the ones no table
/// lists (unbound, or bound and idle: kernels before 6.10 list no such TCP socket), while their client still
/// holds them; borrowed from their client when the engine must act on one.
public final class DaemonSockets: ClientSockets {
    let diagnostics: SocketDiagnostics
    private let daemon = Mutex<WeakDaemon>(WeakDaemon())

    public init(namespace: NetworkNamespace = .current) throws(SocketDiagnosticsError) {
        diagnostics = try SocketDiagnostics(namespace: namespace)
    }

    /// The daemon whose clients lend sockets (set once it exists: the engine is made first).
    public func attach(_ daemon: KeyingDaemon) { self.daemon.withLock { $0.daemon = daemon } }

    public func presentSockets(_ endpoints: [Endpoint]) -> [UInt64: SocketFacts]? {
        var listed: [UInt64: SocketFacts] = [:]
        let wanted = Set(endpoints.map(\.cookie))
        for transport in [InetTransport.tcp, .udp] {
            for family in [IPAddressFamily.inet, .inet6] where endpoints.contains(where: { $0.family == family }) {
                // A table the kernel cannot list (a diagnostics module missing) leaves its sockets to their clients.
                guard let records = try? diagnostics.sockets(transport, family: family, states: Self.socketStates)
                else { continue }
                // An orphan in FIN_WAIT2 delivered everything and had its FIN acknowledged: it is gone.
                for record in records
                where wanted.contains(record.cookie) && !(record.isOrphan && record.state == .finWait2) {
                    listed[record.cookie] = Self.facts(record)
                }
            }
        }
        for endpoint in endpoints where listed[endpoint.cookie] == nil {
            guard let client = endpoint.client, let fd = borrow(cookie: endpoint.cookie, from: client) else { continue }
            defer { Glibc.close(fd) }
            if let facts = try? SocketInspector.facts(of: fd), facts.cookie == endpoint.cookie {
                listed[endpoint.cookie] = facts
            }
        }
        return listed
    }

    /// The states of a socket proper: not TIME_WAIT (the connection's socket is gone, a small record keeps its
    /// cookie; its flow's cover outlives it), nor a connection request not yet accepted.
    static let socketStates = TCPState.all.subtracting([.timeWait, .synReceived, .newSynReceived])

    public func borrow(cookie: UInt64, from client: UInt64) -> CInt? {
        daemon.withLock { $0.daemon }?.session(client)?.borrow(cookie: cookie)
    }

    /// What the engine knows of a socket, from the kernel's record of it.
    static func facts(_ record: InetSocketRecord) -> SocketFacts {
        SocketFacts(
            cookie: record.cookie, family: record.family, rawFamily: Int32(record.family.rawValue),
            kind: record.transport == .tcp ? .stream : .datagram,
            protocolNumber: record.transport == .tcp ? Int32(IPPROTO_TCP) : Int32(IPPROTO_UDP),
            local: record.local, peer: record.isConnected ? record.remote : nil, isListening: record.isListening)
    }
}

private struct WeakDaemon {
    weak var daemon: KeyingDaemon?
}
