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

// Release: what a socket owned goes (its SAs, conns, reqid), and its flow stays covered while TCP may still send.
extension SecureSocketEngine {
    // MARK: - Release

    /// Forgets `fd`'s endpoint and frees what it held (reqid, keying configs) once no other endpoint (an
    /// accepted child of a listener) uses them. Call before `close()`; ``sweep()`` catches sockets closed without it.
    /// In a process forked from the engine's, it does nothing: the keying is the parent's (its SAs and conns go
    /// when the parent's socket does).
    public func release(_ fd: CInt) {
        guard (try? requireOwner()) != nil else {
            logger.debug("release in a forked child ignored", metadata: ["fd": "\(fd)", "engine-owner": "\(owner)"])
            return
        }
        guard let facts = try? SocketInspector.facts(of: fd) else { return }
        // An accepted connection the application never queried is registered now, so its own SAs go too.
        _ = endpoint(for: fd, facts: facts)
        // A listener released while connections it accepted are open: they are adopted first, so they keep its
        // reqid and keying (their inherited policies carry that reqid: it must not go to another socket), as the
        // sweep does for a listener closed without a release.
        if var listener = table.endpoint(cookie: facts.cookie), listener.kind == .stream,
            facts.isListening || listener.role.isResponder, let port = facts.local?.port ?? listener.lastLocalPort,
            port != 0
        {
            if let local = facts.local { listener.lastLocalAddress = local.address }
            adoptAcceptedSockets(of: listener, port: port)
        }
        release(cookie: facts.cookie)
    }

    /// The decision "secured", with what proves it.
    func logSecured(_ fd: CInt, reqid: UInt32, flow: KeyedFlow, _ protection: KeyedProtection, how: String) {
        logger.info(
            "connection secured",
            metadata: [
                "fd": "\(fd)", "reqid": "\(reqid)", "flow": "\(flow)",
                "peer-identity": "\(protection.remoteIdentity ?? "?")",
                "peer-user": "\(protection.remoteUserIdentity ?? "none")",
                "spi-in": "\(protection.inboundSPI.map { String($0, radix: 16) } ?? "?")",
                "spi-out": "\(protection.outboundSPI.map { String($0, radix: 16) } ?? "?")",
                "ike-sa": "\(protection.ikeSAID.map(String.init) ?? "?")", "via": "\(how)",
            ])
    }

    /// Releases the endpoint (the application's release, or shutdown): through its state machine, like every event.
    func release(cookie: UInt64) { apply(.closed, cookie: cookie) }

    /// Every endpoint event enters here: the endpoint's state machine decides, and the engine acts on each action it
    /// returns (resources are released only through ``EndpointAction/releaseResources(coverClosedFlow:)``).
    func apply(_ event: EndpointEvent, cookie: UInt64) {
        for action in table.handle(event, cookie: cookie) {
            switch action {
            case .publish:
                endpointsChanged()
            case .releaseResources(let coverClosedFlow):
                releaseResources(cookie: cookie, coverClosedFlow: coverClosedFlow)
            }
        }
    }

    /// Removes the endpoint and exactly what the socket owned: its negotiated flows or its listen, or an accepted
    /// connection's own CHILD_SA, never an IKE SA other connections use; then its reqid once no other endpoint
    /// (an accepted child of a listener) uses it.
    private func releaseResources(cookie: UInt64, coverClosedFlow: Bool) {
        guard let endpoint = table.remove(cookie: cookie) else { return }
        logger.debug(
            "socket released",
            metadata: ["cookie": "\(cookie)", "reqid": "\(endpoint.reqid.map(String.init) ?? "none")"])
        if let entry = endpoint.keying {
            if endpoint.kind == .stream, coverClosedFlow, let reqid = endpoint.reqid, let flow = entry.flow {
                // (An initiator's cover was installed when it connected; an accepted connection's now.)
                coverFlow(flow, reqid: reqid, for: Self.closedFlowCover, pinned: endpoint.pinned)
            }
            if let batch = Self.releaseBatch {
                batch.add(entry.registrations.all)
            } else {
                for registration in entry.registrations { keying?.release(registration, waiting: false) }
            }
            if endpoint.role == .accepted, let flow = entry.flow { keying?.unbindAccepted(flow) }
            if endpoint.role == .accepted, let pinned = endpoint.pinned, let peer = endpoint.peer {
                keying?.releaseChild(inboundSPI: pinned.inboundSPI, peer: peer)
            } else if let own = entry.ownChild ?? ownChild(of: endpoint, flow: entry.flow) {
                keying?.releaseChild(inboundSPI: own.spi, peer: own.peer)
            }
        }
        guard let reqid = endpoint.reqid, table.users(of: reqid) == 0 else { return }
        endPortCover(reqid: reqid)
        // Handed out again only once charon's configs for it are gone.
        if let batch = Self.releaseBatch { batch.add(reqid: reqid) } else { reqids.release(reqid) }
    }

    /// The keying registrations the sweep on this thread releases: handed to the backend together when it ends
    /// (`KeyingBackend.release(_:)` with the whole batch), so a departed client's connections can end with their IKE SA.
    @TaskLocal static var releaseBatch: ReleaseBatch?

    /// Runs `body` (a sweep) collecting the keying releases it makes, then releases them together.
    /// While it runs, the engine is not idle (``isIdle``): its keying releases are still to come.
    func batchingReleases<T>(_ body: () -> T) -> T {
        releasesInFlight.add(1, ordering: .acquiringAndReleasing)
        defer {
            releasesInFlight.subtract(1, ordering: .acquiringAndReleasing)
            changeSignal.notify()
        }
        let batch = ReleaseBatch()
        let result = Self.$releaseBatch.withValue(batch) { body() }
        let (registrations, freed) = batch.take()
        if !registrations.isEmpty { keying?.release(registrations) }
        for reqid in freed { reqids.release(reqid) }
        return result
    }

    /// No endpoint left and no release under way: nothing of the engine remains in charon or the kernel.
    public var isIdle: Bool { table.count == 0 && releasesInFlight.load(ordering: .acquiring) == 0 }

    /// Notes a connected socket's flow and covers it (see ``coverFlow(_:reqid:for:pinned:)``), so that its
    /// `TIME_WAIT` is covered even after the socket is gone.
    func recordFlow(_ fd: CInt, cookie: UInt64) {
        guard let facts = try? SocketInspector.facts(of: fd), facts.kind == .stream, let flow = KeyedFlow(facts)
        else { return }
        recordFlow(flow, cookie: cookie)
    }

    /// Records a connected TCP socket's flow and covers it (see ``coverFlow(_:reqid:for:pinned:)``).
    func recordFlow(_ flow: KeyedFlow, cookie: UInt64) {
        guard let endpoint = table.endpoint(cookie: cookie), let reqid = endpoint.reqid else { return }
        table.setFlow(flow, cookie: cookie)
        table.update(cookie: cookie) { $0.lastLocalPort = flow.localPort }
        if case .secured = endpoint.state { coverFlow(flow, reqid: reqid, for: nil, pinned: endpoint.pinned) }
    }

    /// Takes every tracked accepted flow (at shutdown).
    func acceptedFlowReqids() -> [(KeyedFlow, UInt32)] {
        acceptedFlows.withLock { flows in
            defer { flows = [:] }
            return flows.map { ($0.key, $0.value.reqid) }
        }
    }

    /// A listener's connection got (`installed`) or lost an SA: the server's side of ``coverFlow(_:reqid:for:pinned:)``,
    /// from the moment its SAs exist, whether or not the application ever hands the accepted socket to the
    /// library (a server that closes first is the side in `TIME_WAIT`).
    func acceptedFlowSA(_ flow: KeyedFlow, reqid: UInt32, spi: UInt32, installed: Bool) {
        let change = acceptedFlows.withLock { flows -> Bool? in
            if installed {
                let first = flows[flow] == nil
                flows[flow, default: (reqid, [])].spis.insert(spi)
                return first ? true : nil
            }
            guard flows[flow]?.spis.remove(spi) != nil else { return nil }
            guard flows[flow]?.spis.isEmpty == true else { return nil }
            flows[flow] = nil
            return false
        }
        switch change {
        case true?: coverFlow(flow, reqid: reqid, for: nil)
        case false?: coverFlow(flow, reqid: reqid, for: Self.closedFlowCover)
        case nil: return
        }
    }

    /// How long a released TCP flow stays covered: `TIME_WAIT` (60 s) and a margin.
    static let closedFlowCover: UInt64 = 120

    /// The kernel answers for a TCP flow from its own control socket, which carries no per-socket policy: the
    /// bare ACKs of `TIME_WAIT` and RSTs would leave in clear, and a clear segment of the flow would reach a
    /// `TIME_WAIT` socket. Two flow-exact global policies (out and in) with the socket's own template (ESP,
    /// transport, its reqid, required) cover the flow: while the SAs exist those packets go under them, after
    /// they are gone they cannot leave at all. The socket's own packets still use its own policy (a per-socket
    /// policy is looked up first). Installed when the connection is secured; at release they are replaced by
    /// ones the kernel removes itself once `TIME_WAIT` has ended (hard add-expiry, `seconds`).
    ///
    /// A pinned connection's cover names its SA pair by SPI too (`pinned`), so even the kernel's own replies
    /// leave under that pair only; a later change of lifetime alone keeps the SPIs.
    func coverFlow(
        _ flow: KeyedFlow, reqid: UInt32, for seconds: UInt64?, pinned: PinnedSAs? = nil, unpin: Bool = false
    ) {
        var lifetime = XFRMLifetime.infinite
        if let seconds { lifetime.hardAddExpiresSeconds = seconds }
        for outbound in [true, false] {
            var template = XFRMTemplate(proto: .esp, mode: .transport, reqid: reqid, level: .required)
            if let pinned { template.spi = outbound ? pinned.outboundSPI : pinned.inboundSPI }
            let selector = flow.selector(outbound: outbound)
            let direction: XFRMDirection = outbound ? .outbound : .inbound
            var policy = XFRMPolicy(selector: selector, direction: direction, lifetime: lifetime, templates: [template])
            do { try xfrm.addPolicy(policy) } catch {
                if pinned == nil, !unpin, let existing = try? xfrm.getPolicy(.selector(selector, direction, mark: nil)),
                    existing.templates.count == 1, existing.templates.first?.reqid == reqid
                {
                    policy.templates = existing.templates
                }
                try? xfrm.updatePolicy(policy)
            }
        }
    }

    /// An accepted connection's own CHILD_SA: the SA pair whose selectors are exactly its flow.
    func ownChild(of endpoint: Endpoint, flow: KeyedFlow?) -> (spi: UInt32, peer: IPAddress)? {
        guard endpoint.role == .accepted, let flow, let reqid = endpoint.reqid,
            let found = try? FlowAttribution.find(in: xfrm, flow: flow, reqid: reqid, exactOnly: true)
        else { return nil }
        return (found.inbound.id.spi, flow.remote)
    }
}

/// Registrations released during one sweep, to be released together at its end.
final class ReleaseBatch: Sendable {
    private let items = Mutex<(registrations: [KeyingRegistration], reqids: [UInt32])>(([], []))
    func add(_ more: [KeyingRegistration]) { items.withLock { $0.registrations += more } }
    func add(reqid: UInt32) { items.withLock { $0.reqids.append(reqid) } }
    func take() -> (registrations: [KeyingRegistration], reqids: [UInt32]) {
        items.withLock { taken in
            defer { taken = ([], []) }
            return taken
        }
    }
}
