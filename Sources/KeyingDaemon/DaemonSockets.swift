import ALE
import Glibc
import IPAddressing
import Keying
import SecureSocket
import SocketDiagnostics
import Synchronization
import XFRM

/// The daemon's clients' sockets as the engine sees them (`ClientSockets`): present while the kernel's
/// socket tables list them (NETLINK_SOCK_DIAG, one dump per transport and family), or, for the ones no table
/// lists (unbound, or bound and idle: kernels before 6.10 list no such TCP socket), while their client still
/// holds them; borrowed from their client when the engine must act on one.
///
/// Destruction is reported as it happens: the kernel's socket-destroy notifications (`SocketDestroyMonitor`)
/// start a socket's close grace period at once (`SecureSocketEngine.clientSocketDestroyed(cookie:)`), and the
/// engine's sweep then looks at every socket only every half minute, or at its next turn after the kernel
/// dropped notifications.
public final class DaemonSockets: ClientSockets {
    let diagnostics: SocketDiagnostics
    private let daemon = Mutex<WeakDaemon>(WeakDaemon())
    private let destroyMonitor = Mutex<SocketDestroyMonitor?>(nil)
    /// Cleared when the kernel dropped destroy notifications, set again by the next full look.
    private let complete = Atomic<Bool>(false)
    let namespace: NetworkNamespace

    public init(namespace: NetworkNamespace = .current) throws(SocketDiagnosticsError) {
        self.namespace = namespace
        diagnostics = try SocketDiagnostics(namespace: namespace)
    }

    /// The daemon whose clients lend sockets (set once it exists: the engine is made first). Starts following
    /// the kernel's socket-destroy notifications for `engine`; without them (the kernel refuses), the sweep
    /// looks at every socket each turn, as before.
    public func attach(_ daemon: KeyingDaemon) {
        self.daemon.withLock { $0.daemon = daemon }
        let engine = daemon.engine
        do {
            let monitor = try SocketDestroyMonitor(namespace: namespace) { [weak engine, weak self] event in
                switch event {
                case .destroyed(let record): engine?.clientSocketDestroyed(cookie: record.cookie)
                case .eventsLost, .unreadable: self?.complete.store(false, ordering: .releasing)
                // The reader ended: nothing is reported any more, and every sweep looks at every socket.
                case .failed:
                    self?.complete.store(false, ordering: .releasing)
                    _ = self?.destroyMonitor.withLock { $0.take() }
                }
            }
            destroyMonitor.withLock { $0 = monitor }
        } catch {
            daemon.logger.warning(
                "socket-destroy notifications unavailable: every socket is looked at each second",
                metadata: ["error": "\(error)"])
        }
    }

    /// Stops following destroy notifications.
    public func stop() { _ = destroyMonitor.withLock { $0 }?.stop() }

    public var reportsEveryDestruction: Bool {
        destroyMonitor.withLock { $0 != nil } && complete.load(ordering: .acquiring)
    }

    /// How many times every socket of the namespace was listed (``presentSockets(_:)``): what polling remains.
    public var fullLooks: Int { looks.load(ordering: .relaxed) }
    private let looks = Atomic<Int>(0)

    public func presentSockets(_ endpoints: [Endpoint]) -> [UInt64: SocketFacts]? {
        looks.add(1, ordering: .relaxed)
        // What is alive now is known after this look: notifications from here on are complete again.
        if destroyMonitor.withLock({ $0 != nil }) { complete.store(true, ordering: .releasing) }
        var listed: [UInt64: SocketFacts] = [:]
        let wanted = Set(endpoints.map(\.cookie))
        for transport in [InetTransport.tcp, .udp] {
            for family in [IPAddressFamily.inet, .inet6] where endpoints.contains(where: { $0.family == family }) {
                // A table the kernel cannot list (a diagnostics module missing) leaves its sockets to their clients.
                guard
                    let records = try? diagnostics.sockets(
                        transport, family: family, states: InetSocketRecord.socketStates)
                else { continue }
                for record in records where wanted.contains(record.cookie) && record.isLiveSocket {
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

    /// How many times the role watch asked the kernel (``roleFacts(_:)``).
    public var roleLooks: Int { roleAsks.load(ordering: .relaxed) }
    private let roleAsks = Atomic<Int>(0)

    /// Listening TCP sockets (one dump of the namespace's listeners) and the UDP sockets of the families asked
    /// about: not every connection, and no client is asked (a socket not listed has not settled yet).
    public func roleFacts(_ endpoints: [Endpoint]) -> [UInt64: SocketFacts] {
        roleAsks.add(1, ordering: .relaxed)
        var listed: [UInt64: SocketFacts] = [:]
        let wanted = Set(endpoints.map(\.cookie))
        for family in [IPAddressFamily.inet, .inet6] {
            let kinds = Set(endpoints.filter { $0.family == family }.map(\.kind))
            if kinds.contains(.stream), let records = try? diagnostics.sockets(.tcp, family: family, states: [.listen])
            {
                for record in records where wanted.contains(record.cookie) {
                    listed[record.cookie] = Self.facts(record)
                }
            }
            if kinds.contains(.datagram),
                let records = try? diagnostics.sockets(.udp, family: family, states: InetSocketRecord.socketStates)
            {
                for record in records where wanted.contains(record.cookie) {
                    listed[record.cookie] = Self.facts(record)
                }
            }
        }
        return listed
    }

    /// Connected TCP sockets proper on `port` that `client`'s user created (one dump of the family's connections):
    /// a closing listener's accepted connections, held by the client or still delivering after their close.
    /// Another user's sockets on the port never count, nor, for IPv6, a v4-mapped local address (a socket bound
    /// there may share the port with an IPv6-only listener).
    public func connections(onPort port: UInt16, family: IPAddressFamily, of client: UInt64) -> [SocketFacts] {
        guard let uid = daemon.withLock({ $0.daemon })?.uid(of: client) else { return [] }
        let connected: Set<TCPState> = [.established, .finWait1, .finWait2, .closeWait, .closing, .lastAck]
        guard let records = try? diagnostics.sockets(.tcp, family: family, states: connected) else { return [] }
        return records.filter {
            $0.local.port == port && $0.isLiveSocket && $0.isConnected && $0.uid == uid
                && !$0.local.isV4Mapped
        }.map(Self.facts)
    }

    public func rule(for client: UInt64) -> ClientUserRule? {
        daemon.withLock { $0.daemon }?.rule(for: client)
    }

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
