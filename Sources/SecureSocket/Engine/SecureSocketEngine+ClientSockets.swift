import ALE
import Glibc
import IPAddressing
import Keying
import Synchronization

/// What the engine needs from whoever holds the sockets it secures for other processes (the keying daemon, for
/// its clients): the engine holds no descriptor of such a socket; it learns from the kernel whether the socket
/// is still there, and borrows a descriptor from the client for the few acts that need one (moving a socket's
/// pins after a rekey, refusing a shared port).
public protocol ClientSockets: AnyObject, Sendable {
    /// The facts of each of these clients' sockets that is still there, by cookie: in the kernel's socket
    /// tables (a TCP socket every process closed while it still delivers data counts: its SAs stay until it is
    /// gone), or, for one the kernel does not list (unbound, or bound and idle), still held by its client. nil
    /// when the kernel could not be asked (nothing is released on that account).
    func presentSockets(_ endpoints: [Endpoint]) -> [UInt64: SocketFacts]?
    /// A descriptor of the socket `cookie`, borrowed from `client` (the caller closes it); nil when the client no
    /// longer holds one or does not answer in time.
    func borrow(cookie: UInt64, from client: UInt64) -> CInt?
    /// Whether every destroyed socket has been reported through ``SecureSocketEngine/clientSocketDestroyed(cookie:)``
    /// since the last ``presentSockets(_:)`` (the kernel's destroy notifications, none lost): the sweep then skips
    /// its look at every socket, and does it only every ``SecureSocketEngine/presenceCheckInterval``.
    var reportsEveryDestruction: Bool { get }
    /// The facts of those of these sockets that now listen (TCP) or are bound (UDP), for the role watch, which
    /// asks every 10 ms while a socket is young: what it costs should grow with the sockets asked about and the
    /// namespace's listeners, not with every connection.
    func roleFacts(_ endpoints: [Endpoint]) -> [UInt64: SocketFacts]
    /// What limits `client` (its user's rule in the keying file: which peers, which settings); nil for none.
    func rule(for client: UInt64) -> ClientUserRule?
    /// The namespace's connected TCP sockets of `family` whose local port is `port` and that `client`'s user
    /// created (a listener's accepted connections, whoever holds them now), from the kernel's tables.
    func connections(onPort port: UInt16, family: IPAddressFamily, of client: UInt64) -> [SocketFacts]
}

extension ClientSockets {
    public var reportsEveryDestruction: Bool { false }
    public func roleFacts(_ endpoints: [Endpoint]) -> [UInt64: SocketFacts] { presentSockets(endpoints) ?? [:] }
    public func rule(for client: UInt64) -> ClientUserRule? { nil }
    public func connections(onPort port: UInt16, family: IPAddressFamily, of client: UInt64) -> [SocketFacts] {
        []
    }
}

/// The descriptors requests lend the engine while they run, by socket cookie (a client's socket is reachable
/// through them without asking the client again).
final class LentDescriptors: Sendable {
    private let lent = Mutex<[UInt64: CInt]>([:])
    func lend(_ fd: CInt, cookie: UInt64) { lent.withLock { $0[cookie] = fd } }
    func end(cookie: UInt64, fd: CInt) { lent.withLock { if $0[cookie] == fd { $0[cookie] = nil } } }
    func descriptor(cookie: UInt64) -> CInt? { lent.withLock { $0[cookie] } }
}

extension SecureSocketEngine {
    /// Runs `body` with a descriptor of `endpoint`'s socket: this process's own (checked to still name it), the
    /// one a request lends right now, or one borrowed from the client that holds the socket (closed afterwards).
    /// nil when none reaches the socket any more.
    func withSocket<T>(_ endpoint: Endpoint, _ body: (CInt) -> T) -> T? {
        guard let client = endpoint.client else {
            if SocketInspector.cookie(of: endpoint.descriptor) == endpoint.cookie { return body(endpoint.descriptor) }
            // Closed after a `dup`: another descriptor here may still name it (none does once it is closing).
            if case .closing = endpoint.state { return nil }
            return movedDescriptor(cookie: endpoint.cookie).map(body)
        }
        if let fd = lent.descriptor(cookie: endpoint.cookie) { return body(fd) }
        // Adopted from the kernel's tables (its client never passed it): the client holds no descriptor to lend.
        guard endpoint.descriptor != -1, let sockets = configuration.clientSockets,
            let fd = sockets.borrow(cookie: endpoint.cookie, from: client)
        else { return nil }
        defer { Glibc.close(fd) }
        guard SocketInspector.cookie(of: fd) == endpoint.cookie else { return nil }
        return body(fd)
    }

    /// Runs one request of `client` on the socket `fd` it lent (its own descriptor, valid for the request):
    /// the endpoint it registers is the client's, reached through `fd` while the request runs.
    public func serving<T>(
        client: UInt64, socket fd: CInt, _ body: () throws(SecureSocketError) -> T
    ) throws(SecureSocketError) -> T {
        guard let cookie = SocketInspector.cookie(of: fd) else {
            throw SecureSocketError(.notSocket, "the descriptor lent is not a socket")
        }
        if let owner = table.read(cookie: cookie, { $0.client }), owner != client {
            // Another client registered it (the socket was passed on with SCM_RIGHTS): the one now acting holds it.
            table.update(cookie: cookie) { $0.client = client }
        }
        lent.lend(fd, cookie: cookie)
        defer { lent.end(cookie: cookie, fd: fd) }
        do {
            return try Self.$servingClient.withValue(client) { try body() }
        } catch let error as SecureSocketError {
            throw error
        } catch {
            throw SecureSocketError(.systemCallFailure, "\(error)")
        }
    }

    /// The client a request runs for (nil: this process's own call).
    @TaskLocal static var servingClient: UInt64?

    /// The flow of a connected endpoint: asked of its socket, or for a client's socket, the flow recorded when it
    /// connected or was accepted.
    func connectedFlow(_ endpoint: Endpoint) -> KeyedFlow? {
        if endpoint.client != nil, lent.descriptor(cookie: endpoint.cookie) == nil {
            return table.flow(cookie: endpoint.cookie)
        }
        return withSocket(endpoint) { KeyedFlow.connected(fd: $0) } ?? nil
    }

    /// The sweep's view of clients' sockets: present ones are noted (address, listening), gone ones start
    /// closing. O(client endpoints), one kernel dump.
    /// A client's socket was destroyed (the kernel said so): its endpoint starts its close grace period now,
    /// instead of at the next sweep's look.
    /// A listener's connections that are still open are adopted first (they keep its reqid and keying).
    public func clientSocketDestroyed(cookie: UInt64) {
        guard let endpoint = table.endpoint(cookie: cookie), endpoint.client != nil, !endpoint.state.isClosing
        else { return }
        socketGone(endpoint, at: .now)
    }

    /// How often the sweep looks at every client socket when destruction is reported (a safety net: a socket
    /// the kernel never reported, a client that still holds an unlisted one).
    public static let presenceCheckInterval: Duration = .seconds(30)

    func sweepClientEndpoints(_ endpoints: [Endpoint], now: ContinuousClock.Instant) {
        guard !endpoints.isEmpty, let sockets = configuration.clientSockets else { return }
        if sockets.reportsEveryDestruction,
            lastPresenceCheck.withLock({ $0.map { $0.duration(to: now) < Self.presenceCheckInterval } ?? false })
        {
            // Destruction is reported as it happens: only the grace periods under way need a tick. O(closing).
            for endpoint in endpoints {
                if case .closing = endpoint.state { apply(.tick(now: now), cookie: endpoint.cookie) }
            }
            return
        }
        lastPresenceCheck.withLock { $0 = now }
        guard let present = sockets.presentSockets(endpoints) else { return }
        for endpoint in endpoints {
            if let facts = present[endpoint.cookie] {
                table.update(cookie: endpoint.cookie) {
                    $0.lastLocalPort = facts.local?.port
                    $0.lastLocalAddress = facts.local?.address
                    $0.wasListening = facts.isListening
                }
                continue
            }
            socketGone(endpoint, at: now)
        }
    }

    /// The facts of a client's undetermined sockets, from the kernel (one dump), for ``settleRoles()``.
    func clientFacts(_ endpoints: [Endpoint]) -> [UInt64: SocketFacts] {
        guard !endpoints.isEmpty, let sockets = configuration.clientSockets else { return [:] }
        return sockets.roleFacts(endpoints)
    }
}
