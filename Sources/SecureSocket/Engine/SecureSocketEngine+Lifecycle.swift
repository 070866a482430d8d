import ALE
import Foundation
import Glibc
import IPAddressing
import Impersonation
import Keying
import Logging
import Synchronization
import SystemPackage
import XFRM

// The endpoints' life cycle: the sweep, accepted sockets adopted, snapshots published.
extension SecureSocketEngine {
    /// Releases endpoints whose socket is gone once their close grace period ends; the event pump runs it every
    /// second. This process's own sockets are known gone from the kernel's socket-destroy notifications when the
    /// pump follows them (then the sweep only ticks the grace periods under way, and looks at every socket every
    /// ``presenceCheckInterval`` as a safety net); otherwise each sweep looks at every socket, and one is gone when
    /// no descriptor of this process names its cookie, or (when the notifications are followed) when the kernel
    /// no longer has it either. A keying daemon's clients' sockets are asked of the kernel and their clients
    /// (``ClientSockets``).
    ///
    /// A listener that is closed while connections it accepted are still open keeps its reqid and keying: the
    /// accepted sockets (found among this process's descriptors by local port) are adopted as endpoints first,
    /// so their SAs are not torn down under them.
    @discardableResult
    public func sweep() -> Int {
        // The keying of the sockets it releases goes together at its end (a departed client's connections may end
        // with their IKE SA in one exchange).
        batchingReleases { sweepOnce() }
    }

    private func sweepOnce() -> Int {
        // What the sweep changed is published with the pump's next tick (at most once a second).
        defer { endpointsChanged() }
        let now = ContinuousClock.now
        if sweeps.add(1, ordering: .relaxed).newValue % 10 == 0 { reclaimDeadProcesses() }
        if destructionIsReported(now: now) {
            // Every socket's end is told as it happens: only the grace periods under way need a tick. O(closing),
            // and no endpoint is copied.
            var released = 0
            for cookie in table.closingCookies {
                apply(.tick(now: now), cookie: cookie)
                if !table.contains(cookie: cookie) { released += 1 }
            }
            if table.count == 0 { reqids.releaseIfUnused() }
            return released
        }
        let all = table.all
        sweepClientEndpoints(all.filter { $0.client != nil }, now: now)
        var released = sweepOwnEndpoints(all.filter { $0.client == nil }, now: now)
        released += all.filter { $0.client != nil && table.endpoint(cookie: $0.cookie) == nil }.count
        // An idle engine keeps no reqid claim in the namespace.
        if table.count == 0 { reqids.releaseIfUnused() }
        return released
    }

    /// Whether the kernel tells the end of every socket the table holds, this process's own and clients', with
    /// no look at every socket due (see ``sweepOwnEndpoints(_:now:)`` and ``sweepClientEndpoints(_:now:)``).
    private func destructionIsReported(now: ContinuousClock.Instant) -> Bool {
        let own =
            ownPresence.withLock { $0.reportsEveryDestruction(now: now) }
            || !table.contains(where: { $0.client == nil })
        guard own else { return false }
        guard let sockets = configuration.clientSockets else { return true }
        return !table.contains(where: { $0.client != nil })
            || (sockets.reportsEveryDestruction
                && lastPresenceCheck.withLock({ $0.map { $0.duration(to: now) < Self.presenceCheckInterval } ?? false }))
    }

    /// Something an inspector shows changed: the snapshot is published within the pump's next tick, and live
    /// followers (``endpointChanges``) wake.
    func endpointsChanged() {
        snapshotDirty.store(true, ordering: .releasing)
        changeSignal.notify()
    }

    /// Publishes the snapshot if something changed since the last time and the last publication is at least
    /// ``publishInterval`` old (the event pump calls it each tick).
    func publishIfDirty() {
        let now = ContinuousClock.now
        guard lastPublished.withLock({ $0.map { $0.duration(to: now) >= Self.publishInterval } ?? true }),
            snapshotDirty.exchange(false, ordering: .acquiringAndReleasing)
        else { return }
        lastPublished.withLock { $0 = now }
        publish()
    }

    /// Writes this process's endpoint snapshot if it changed (for `wss-inspect`). Atomic rename; best effort. A
    /// keying daemon's engine (one serving clients' sockets) writes none: inspectors ask the daemon.
    public func publish() {
        guard configuration.clientSockets == nil else { return }
        // One publication at a time (the pump's tick, a release, shutdown may each publish).
        published.withLock { last in
            if let hash = EndpointSnapshot.write(
                table, keying: keying?.name ?? "none", to: snapshotFile, unlessHash: last)
            {
                last = hash
            }
        }
    }

    /// Registers the connected TCP sockets on `port` as children of a (closing) listener endpoint: this
    /// process's, found among its descriptors; a client's, found in the kernel's tables (a connection its
    /// application never queried is known to the daemon only there), registered without a descriptor.
    func adoptAcceptedSockets(of listener: Endpoint, port: UInt16) {
        if let client = listener.client {
            let found = configuration.clientSockets?.connections(onPort: port, family: listener.family, of: client)
            for facts in found ?? []
            where Self.sameListenerAddress(listener.lastLocalAddress, facts.local?.address)
                && table.endpoint(cookie: facts.cookie) == nil && carriesListenersSAs(facts, listener: listener)
            {
                adopt(nil, facts: facts, listener: listener, port: port)
            }
            return
        }
        guard let entries = try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd") else { return }
        for entry in entries.prefix(65_536) {
            guard let fd = CInt(entry), let facts = try? SocketInspector.facts(of: fd), facts.kind == .stream,
                facts.isConnected, facts.local?.port == port, facts.family == listener.family,
                Self.sameListenerAddress(listener.lastLocalAddress, facts.local?.address),
                table.endpoint(cookie: facts.cookie) == nil
            else { continue }
            adopt(fd, facts: facts, listener: listener, port: port)
        }
    }

    /// Whether a connection found in the kernel's tables (no descriptor says whose it is) shows it is `listener`'s:
    /// the kernel holds SAs with the listener's reqid for its flow, or, for a listener that lets connections run
    /// in clear, nothing says otherwise. (An outgoing socket bound to the port has SAs with a reqid of its own.)
    func carriesListenersSAs(_ facts: SocketFacts, listener: Endpoint) -> Bool {
        guard let reqid = listener.reqid, let flow = KeyedFlow(facts) else { return false }
        if listener.machine.allowInsecure { return true }
        return (try? FlowAttribution.find(in: xfrm, flow: flow, reqid: reqid, exactOnly: false)) != nil
    }

    /// Whether a connection whose local address is `accepted` can be a child of a listener bound to `listener`:
    /// the same address, or a listener on the wildcard address (an unknown one never adopts).
    static func sameListenerAddress(_ listener: IPAddress?, _ accepted: IPAddress?) -> Bool {
        guard let listener, let accepted else { return false }
        return listener.isAny || listener == accepted
    }

    /// Registers an accepted connection of `listener`: same reqid and settings, role `accepted`; then binds it to
    /// its own CHILD_SA and pins its socket (``bindAccepted(cookie:flow:)``). Its keying is the listener's as the
    /// table holds it now: a listener released meanwhile gives it none, so nothing is bound for it.
    func adopt(_ fd: CInt?, facts: SocketFacts, listener: Endpoint, port: UInt16) {
        let flow = KeyedFlow(facts)
        var child = Endpoint(
            cookie: facts.cookie, descriptor: fd ?? -1, family: facts.family, kind: .stream,
            reqid: listener.reqid, allowInsecure: listener.machine.allowInsecure,
            summary: listener.summary + " (accepted)", role: .accepted,
            keying: table.keyingRequest(cookie: listener.cookie).map { request in
                var keying = EndpointKeying(request: request)
                keying.flow = flow
                return keying
            })
        child.peerTargetNames = listener.peerTargetNames
        child.peerNameIsRaw = listener.peerNameIsRaw
        child.lastLocalPort = port
        child.peer = facts.peer?.address
        child.client = listener.client
        child.registeredAt = ContinuousClock.now
        adoptions.withLock { _ in
            // The descriptor still names the socket (not closed and reused since its facts were read).
            guard fd.map({ SocketInspector.cookie(of: $0) == facts.cookie }) ?? true, (try? table.insert(child)) != nil
            else { return }
            if child.keying != nil, let flow {
                awaitedAccepts.found(flow)
                // Without a descriptor (a client's connection found in the kernel's tables) it is bound in the
                // keying only: no client holds a descriptor to pin it through until its first query lends one.
                bindAccepted(cookie: facts.cookie, flow: flow, pin: fd != nil)
            }
        }
    }

}
