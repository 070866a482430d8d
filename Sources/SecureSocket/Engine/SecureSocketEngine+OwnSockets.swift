import ALE
import Foundation
import Glibc
import SocketDiagnostics
import Synchronization
import SystemSupport

/// How the engine learns that this process's own secured sockets are gone: from the kernel's socket-destroy
/// notifications when it follows them (the event pump's destroy monitor), with a look at every socket only every
/// ``SecureSocketEngine/presenceCheckInterval`` as a safety net and at the next sweep after the kernel dropped
/// notifications; from a look at every socket each sweep otherwise.
struct OwnSocketPresence {
    /// The kernel's destroy notifications for this namespace are followed.
    var followed = false
    /// No notification was lost since the last full look.
    var complete = false
    var lastFullLook: ContinuousClock.Instant?

    /// Whether every destruction since the last full look has been told, and that look is recent enough.
    func reportsEveryDestruction(now: ContinuousClock.Instant) -> Bool {
        guard followed, complete, let last = lastFullLook else { return false }
        return last.duration(to: now) < SecureSocketEngine.presenceCheckInterval
    }

    /// A full look starts: what is alive is known after it, so notifications from now on are complete again.
    mutating func looked(at now: ContinuousClock.Instant) {
        lastFullLook = now
        complete = followed
    }
}

// This process's own sockets: gone when the kernel destroys them (every descriptor of every process closed, and a
// TCP connection done delivering what was queued), as for a keying daemon's clients.
extension SecureSocketEngine {
    /// The event pump follows the kernel's destroy notifications for this engine's own sockets (or stopped).
    func followOwnSocketDestruction(_ followed: Bool) {
        ownPresence.withLock {
            $0.followed = followed
            $0.complete = false
        }
    }

    /// The kernel dropped destroy notifications (an overrun): the next sweep looks at every socket.
    func ownSocketDestructionsLost() { ownPresence.withLock { $0.complete = false } }

    /// One of this process's sockets was destroyed (the kernel said so): its endpoint starts its close grace
    /// period now. A listener's accepted connections that are still open are adopted first (they keep its reqid
    /// and keying).
    func ownSocketDestroyed(cookie: UInt64) {
        guard let endpoint = table.endpoint(cookie: cookie), endpoint.client == nil, !endpoint.state.isClosing
        else { return }
        socketGone(endpoint, at: .now)
        endpointsChanged()
        // An idle engine keeps no reqid claim in the namespace (the sweep's rule, here at once).
        if table.count == 0 { reqids.releaseIfUnused() }
    }

    /// `endpoint`'s socket is gone (seen at `now`): a closing endpoint's grace period ticks; any other starts its
    /// grace period, in which the kernel's socket may still finish (its FIN or last data need the SAs) before the
    /// keying is torn down. A listener's open connections are adopted first (they keep its reqid and keying).
    func socketGone(_ endpoint: Endpoint, at now: ContinuousClock.Instant) {
        if endpoint.state.isClosing {
            apply(.tick(now: now), cookie: endpoint.cookie)
            return
        }
        if endpoint.wasListening, let port = endpoint.lastLocalPort, port != 0 {
            adoptAcceptedSockets(of: endpoint, port: port)
        }
        apply(.socketGone(at: now, grace: closeGrace), cookie: endpoint.cookie)
    }

    /// The sweep's view of this process's sockets. While the kernel's destroy notifications are followed and
    /// none was lost, only the grace periods under way need a tick: O(closing). Otherwise every socket is looked
    /// at: present when a descriptor here names it (one found after a `dup` becomes the registered one; a socket
    /// that is or may become a listener has its address noted), or, when notifications are followed, when the
    /// kernel still has it (a forked child's, a connection delivering after its close). Returns how many endpoints
    /// it released.
    func sweepOwnEndpoints(_ endpoints: [Endpoint], now: ContinuousClock.Instant) -> Int {
        guard !endpoints.isEmpty else { return 0 }
        var released = 0
        func advance(_ endpoint: Endpoint) {
            socketGone(endpoint, at: now)
            if table.endpoint(cookie: endpoint.cookie) == nil { released += 1 }
        }
        if ownPresence.withLock({ $0.reportsEveryDestruction(now: now) }) {
            for endpoint in endpoints {
                if case .closing = endpoint.state { advance(endpoint) }
            }
            return released
        }
        let followed = ownPresence.withLock { presence -> Bool in
            presence.looked(at: now)
            return presence.followed
        }
        ownFullLooks.add(1, ordering: .relaxed)
        var descriptors: [UInt64: CInt]?
        var unheld: [Endpoint] = []
        for var endpoint in endpoints {
            if SocketInspector.cookie(of: endpoint.descriptor) != endpoint.cookie {
                if descriptors == nil { descriptors = SocketInspector.descriptorsByCookie() }
                if let moved = descriptors?[endpoint.cookie] {
                    table.update(cookie: endpoint.cookie) { $0.descriptor = moved }
                    endpoint.descriptor = moved
                    apply(.socketFound, cookie: endpoint.cookie)
                }
            }
            guard SocketInspector.cookie(of: endpoint.descriptor) == endpoint.cookie else {
                unheld.append(endpoint)
                continue
            }
            // Only a socket that is or may become a listener needs its address noted (its accepted sockets are
            // adopted by it when it closes): one system call per connection and sweep, not eight.
            let mayListen = endpoint.role == .undetermined || endpoint.role.isResponder
            if mayListen, let facts = try? SocketInspector.facts(of: endpoint.descriptor) {
                table.update(cookie: endpoint.cookie) {
                    $0.lastLocalPort = facts.local?.port
                    $0.lastLocalAddress = facts.local?.address
                    $0.wasListening = facts.isListening
                }
            }
        }
        let alive = followed ? aliveInKernel(unheld.filter { if case .closing = $0.state { false } else { true } }) : []
        for endpoint in unheld where !alive.contains(endpoint.cookie) { advance(endpoint) }
        return released
    }

    /// Those of these endpoints whose socket the kernel still has (a socket proper: not a time-wait record, not
    /// an orphan that delivered everything). A table the kernel cannot list keeps all of its sockets.
    private func aliveInKernel(_ endpoints: [Endpoint]) -> Set<UInt64> {
        guard !endpoints.isEmpty else { return [] }
        let wanted = Set(endpoints.map(\.cookie))
        guard let diagnostics = try? SocketDiagnostics(namespace: configuration.namespace) else { return wanted }
        var alive: Set<UInt64> = []
        for family in Set(endpoints.map(\.family)) {
            for kind in Set(endpoints.filter { $0.family == family }.map(\.kind)) {
                let transport: InetTransport = kind == .stream ? .tcp : .udp
                guard
                    let records = try? diagnostics.sockets(
                        transport, family: family, states: InetSocketRecord.socketStates)
                else {
                    for endpoint in endpoints where endpoint.family == family && endpoint.kind == kind {
                        alive.insert(endpoint.cookie)
                    }
                    continue
                }
                for record in records where wanted.contains(record.cookie) && record.isLiveSocket {
                    alive.insert(record.cookie)
                }
            }
        }
        return alive
    }

    /// A descriptor of this process that names the socket `cookie` now that its registered one does not (closed
    /// after a `dup`), made the registered one. The process's descriptors are searched at most once per
    /// ``movedDescriptorSearchInterval`` (the result serves every socket asked about meanwhile).
    func movedDescriptor(cookie: UInt64) -> CInt? {
        let now = ContinuousClock.now
        let found = movedDescriptors.withLock { cache -> CInt? in
            if cache.at.map({ $0.duration(to: now) >= Self.movedDescriptorSearchInterval }) ?? true {
                cache = (now, SocketInspector.descriptorsByCookie())
            }
            return cache.byCookie[cookie]
        }
        guard let found, SocketInspector.cookie(of: found) == cookie else { return nil }
        table.update(cookie: cookie) { $0.descriptor = found }
        return found
    }

    static let movedDescriptorSearchInterval: Duration = .milliseconds(200)
}
