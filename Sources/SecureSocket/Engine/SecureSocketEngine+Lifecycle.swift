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
    /// Releases endpoints whose socket is gone, and notes the local port of the live ones. O(endpoints); the
    /// event pump runs it every second. A socket is gone when no descriptor of this process names its cookie:
    /// when its registered descriptor no longer does (closed, perhaps after a `dup`), the process's descriptors
    /// are searched for it once per sweep, and a duplicate found becomes the registered descriptor. (A socket
    /// passed to another process with `SCM_RIGHTS` and closed here counts as gone.)
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
        var released = 0
        let now = ContinuousClock.now
        if sweeps.add(1, ordering: .relaxed).newValue % 10 == 0 { reclaimDeadProcesses() }
        var descriptors: [UInt64: CInt]?
        let all = table.all
        sweepClientEndpoints(all.filter { $0.client != nil }, now: now)
        for var endpoint in all where endpoint.client == nil {
            if SocketInspector.cookie(of: endpoint.descriptor) != endpoint.cookie {
                if descriptors == nil { descriptors = SocketInspector.descriptorsByCookie() }
                if let moved = descriptors?[endpoint.cookie] {
                    table.update(cookie: endpoint.cookie) { $0.descriptor = moved }
                    endpoint.descriptor = moved
                    apply(.socketFound, cookie: endpoint.cookie)
                }
            }
            if SocketInspector.cookie(of: endpoint.descriptor) == endpoint.cookie {
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
                continue
            }
            // Gone: the machine gives the kernel's socket a grace period to finish (its FIN or last data still
            // need the SAs) before the keying is torn down. A listener's accepted sockets are adopted at once.
            if endpoint.wasListening, let port = endpoint.lastLocalPort, port != 0 {
                adoptAcceptedSockets(of: endpoint, port: port)
            }
            if case .closing = endpoint.state {
                apply(.tick(now: now), cookie: endpoint.cookie)
            } else {
                apply(.socketGone(at: now, grace: closeGrace), cookie: endpoint.cookie)
            }
            if table.endpoint(cookie: endpoint.cookie) == nil { released += 1 }
        }
        released += all.filter { $0.client != nil && table.endpoint(cookie: $0.cookie) == nil }.count
        // An idle engine keeps no reqid claim in the namespace.
        if table.count == 0 { reqids.releaseIfUnused() }
        return released
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

    /// Registers this process's connected TCP sockets on `port` as children of a (closed) listener endpoint.
    func adoptAcceptedSockets(of listener: Endpoint, port: UInt16) {
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

    /// Whether a connection whose local address is `accepted` can be a child of a listener bound to `listener`:
    /// the same address, or a listener on the wildcard address (an unknown one never adopts).
    static func sameListenerAddress(_ listener: IPAddress?, _ accepted: IPAddress?) -> Bool {
        guard let listener, let accepted else { return false }
        return listener.isAny || listener == accepted
    }

    /// Registers an accepted connection of `listener`: same reqid and settings, role `accepted`; then binds it to
    /// its own CHILD_SA and pins its socket (``bindAccepted(cookie:flow:)``). Its keying is the listener's as the
    /// table holds it now: a listener released meanwhile gives it none, so nothing is bound for it.
    func adopt(_ fd: CInt, facts: SocketFacts, listener: Endpoint, port: UInt16) {
        let flow = KeyedFlow(facts)
        var child = Endpoint(
            cookie: facts.cookie, descriptor: fd, family: facts.family, kind: .stream,
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
            guard (try? table.insert(child)) != nil else { return }
            if child.keying != nil, let flow {
                pendingAccepts.withLock { $0.removeAll { $0.flow == flow } }
                bindAccepted(cookie: facts.cookie, flow: flow)
            }
        }
    }

}
