import ALE
import Foundation
import Glibc
import IPAddressing
import Keying
import Logging
import Synchronization
import SystemPackage
import SystemSupport
import XFRM

// Pinning: a connection's per-socket policies name its own SA pair by SPI, so the kernel carries and accepts its
// traffic under that pair only (see the Binding documentation).
extension SecureSocketEngine {
    // MARK: - Pinning

    /// The template a secured socket's policies carry: ESP transport, its reqid, its level.
    func template(for endpoint: Endpoint) -> XFRMTemplate? {
        guard let reqid = endpoint.reqid else { return nil }
        return XFRMTemplate(
            proto: .esp, mode: .transport, reqid: reqid, level: endpoint.machine.allowInsecure ? .use : .required)
    }

    /// The SA pair with these SPIs in the kernel, checked: both exist, carry `reqid`, are transport mode and
    /// their selectors cover the flow (a flow-exact selector or an address-only one). A flow whose local address
    /// is the wildcard (an unbound socket about to connect) takes the inbound SA's own destination.
    func kernelPair(_ flow: KeyedFlow, reqid: UInt32, inboundSPI: UInt32, outboundSPI: UInt32)
        -> (inbound: XFRMState, outbound: XFRMState)?
    {
        var flow = flow
        let into: XFRMState?
        if flow.local.isAny {
            into = (try? xfrm.states(source: flow.remote, destination: nil, proto: .esp))?.first {
                $0.id.spi == inboundSPI
            }
            if let into { flow.local = into.id.destination }
        } else {
            into = try? xfrm.getState(XFRMStateID(destination: flow.local, spi: inboundSPI, proto: .esp))
        }
        guard let into,
            let out = try? xfrm.getState(XFRMStateID(destination: flow.remote, spi: outboundSPI, proto: .esp))
        else { return nil }
        for (state, outbound) in [(out, true), (into, false)] {
            guard state.reqid == reqid, state.mode == .transport, flow.isCovered(by: state.selector, outbound: outbound)
            else { return nil }
        }
        return (into, out)
    }

    /// Pins the socket to the SA pair `inboundSPI` / `outboundSPI` (checked in the kernel first; see
    /// ``kernelPair(_:reqid:inboundSPI:outboundSPI:)``). A TCP flow's cover (``coverFlow(_:reqid:for:pinned:)``)
    /// is pinned too. Returns whether the socket is pinned now.
    @discardableResult
    func pin(
        cookie: UInt64, flow: KeyedFlow, inboundSPI: UInt32, outboundSPI: UInt32, ikeSAID: UInt64?, how: String
    ) -> Bool {
        guard inboundSPI != 0, outboundSPI != 0, let endpoint = table.endpoint(cookie: cookie),
            let reqid = endpoint.reqid, let template = template(for: endpoint)
        else { return false }
        let metadata: Logger.Metadata = [
            "fd": "\(endpoint.descriptor)", "reqid": "\(reqid)", "flow": "\(flow)",
            "spi-in": "\(String(inboundSPI, radix: 16))", "spi-out": "\(String(outboundSPI, radix: 16))",
            "ike-sa": "\(ikeSAID.map(String.init) ?? "?")", "via": "\(how)",
        ]
        guard kernelPair(flow, reqid: reqid, inboundSPI: inboundSPI, outboundSPI: outboundSPI) != nil else {
            logger.notice("connection not pinned: its SA pair is not in the kernel", metadata: metadata)
            return false
        }
        let outcome = withSocket(endpoint) { fd -> XFRMError? in
            do throws(XFRMError) {
                try SocketPolicy.pin(
                    template, inboundSPI: inboundSPI, outboundSPI: outboundSPI,
                    on: FileDescriptor(rawValue: fd), family: endpoint.family)
                return nil
            } catch {
                return error
            }
        }
        guard let outcome, outcome == nil else {
            let reason = outcome.map { "\($0!)" } ?? "no descriptor reaches the socket"
            logger.warning(
                "connection not pinned: setsockopt failed", metadata: metadata.merging(["error": "\(reason)"]) { $1 })
            return false
        }
        let pinned = PinnedSAs(inboundSPI: inboundSPI, outboundSPI: outboundSPI, ikeSAID: ikeSAID)
        // A flow's IKE SA never changes silently: a pin that moves to another IKE SA (the peer's after a restart,
        // a reauthentication) is said at notice level, with both.
        if let before = endpoint.pinned?.ikeSAID, let after = ikeSAID, before != after {
            logger.notice(
                "connection moved to another IKE SA of its peer",
                metadata: metadata.merging(["previous-ike-sa": "\(before)"]) { $1 })
        }
        table.update(cookie: cookie) {
            $0.pinned = pinned
            $0.lastLocalPort = flow.localPort
        }
        if endpoint.kind == .stream, !flow.local.isAny { coverFlow(flow, reqid: reqid, for: nil, pinned: pinned) }
        logger.debug("connection pinned to its SA pair", metadata: metadata)
        return true
    }

    /// A rekey replaced the CHILD_SA a socket is pinned to: each direction moves to the new SA as soon as it is
    /// in the kernel (now, or when the kernel reports it: ``stateAdded(spi:)``).
    func rekeyed(oldInboundSPI: UInt32, replacement: KeyedProtection, reqid: UInt32, flow: KeyedFlow?) {
        guard let newIn = replacement.inboundSPI, let newOut = replacement.outboundSPI else { return }
        // A connection being adopted right now (bound to the old child, not pinned yet) is looked for once its
        // adoption is done: otherwise it would be pinned to the SA this rekey replaces.
        let pinnedToOld =
            table.endpoint(pinnedInboundSPI: oldInboundSPI)
            ?? adoptions.withLock { _ in table.endpoint(pinnedInboundSPI: oldInboundSPI) }
        guard let endpoint = pinnedToOld, var pinned = endpoint.pinned else {
            // A listener's flow whose connection nobody holds yet: its SPD policies name the reqid only until the
            // connection is bound (pinned policies would block once the old SAs go).
            if let flow, portCovers.withLock({ $0[reqid] != nil }) {
                coverFlow(flow, reqid: reqid, for: nil, unpin: true)
            }
            return
        }
        pinned.ikeSAID = replacement.ikeSAID ?? pinned.ikeSAID
        pinned.pendingInboundSPI = newIn == pinned.inboundSPI ? nil : newIn
        pinned.pendingOutboundSPI = newOut == pinned.outboundSPI ? nil : newOut
        let settled = table.update(cookie: endpoint.cookie) { e -> PinnedSAs? in
            guard e.pinned?.inboundSPI == oldInboundSPI else { return nil }
            e.pinned = pinned
            return pinned
        }
        guard settled != nil else { return }
        movePendingPins(cookie: endpoint.cookie)
        // The replacement is up (charon said so): a socket that the old pair's deletion, seen before this event,
        // set negotiating is secured again, by the pair the keying names.
        if case .negotiating? = table.endpoint(cookie: endpoint.cookie)?.state.settled,
            let peer = endpoint.peer ?? flow?.remote
        {
            let named = keying?.protection(inboundSPI: newIn, peer: peer) ?? replacement
            apply(.childUp(Self.info(named)), cookie: endpoint.cookie)
        }
    }

    /// The kernel reported a new SA: a socket waiting for it (a rekey's new SA) moves to it (each waiting for that
    /// SPI checks the SA's reqid and flow).
    func stateAdded(spi: UInt32) {
        for endpoint in table.endpoints(pendingSPI: spi) { movePendingPins(cookie: endpoint.cookie) }
    }

    /// Moves each direction of a socket whose rekey is pending to its new SA if the kernel has it. The event pump
    /// also calls it every tick while anything is pending (an event missed in an overrun).
    func movePendingPins(cookie: UInt64) {
        guard let endpoint = table.endpoint(cookie: cookie), var pinned = endpoint.pinned else { return }
        guard let template = template(for: endpoint), let reqid = endpoint.reqid else {
            // Nothing to move it with: it waits no more.
            table.update(cookie: cookie) {
                $0.pinned?.pendingInboundSPI = nil
                $0.pinned?.pendingOutboundSPI = nil
            }
            return
        }
        guard let flow = connectedFlow(endpoint) else { return }
        var moved: [UInt32] = []
        _ = withSocket(endpoint) { raw in
            let fd = FileDescriptor(rawValue: raw)
            for outbound in [false, true] {
                let pending = outbound ? \PinnedSAs.pendingOutboundSPI : \PinnedSAs.pendingInboundSPI
                guard let spi = pinned[keyPath: pending],
                    let state = try? xfrm.getState(
                        XFRMStateID(destination: outbound ? flow.remote : flow.local, spi: spi, proto: .esp)),
                    state.reqid == reqid, flow.isCovered(by: state.selector, outbound: outbound),
                    (try? SocketPolicy.pin(
                        template, spi: spi, direction: outbound ? .outbound : .inbound, on: fd,
                        family: endpoint.family)) != nil
                else { continue }
                pinned[keyPath: outbound ? \PinnedSAs.outboundSPI : \PinnedSAs.inboundSPI] = spi
                pinned[keyPath: pending] = nil
                moved.append(spi)
            }
        }
        guard !moved.isEmpty else { return }
        table.update(cookie: cookie) { $0.pinned = pinned }
        if endpoint.kind == .stream { coverFlow(flow, reqid: reqid, for: nil, pinned: pinned) }
        logger.debug(
            "pinned connection moved to its rekeyed SAs",
            metadata: [
                "fd": "\(endpoint.descriptor)", "flow": "\(flow)", "pinned": "\(pinned)",
                "still-pending": "\(pinned.pendingInboundSPI != nil || pinned.pendingOutboundSPI != nil)",
            ])
    }

    /// A new CHILD_SA on an initiator's reqid: a connected socket pinned to another pair for the same flow (charon
    /// made the flow's CHILD_SA again, after a reauthentication say, without a `child-rekey`) moves to it once the
    /// kernel holds it. A socket not pinned yet (its own negotiation's child) is pinned by that negotiation.
    func ownChild(reqid: UInt32, flow: KeyedFlow?, protection: KeyedProtection) {
        guard let spiIn = protection.inboundSPI, let spiOut = protection.outboundSPI,
            let endpoint = table.endpoints(reqid: reqid).first(where: { $0.role == .initiator }),
            let pinned = endpoint.pinned, pinned.inboundSPI != spiIn,
            let connected = connectedFlow(endpoint), flow == nil || flow == connected
        else { return }
        pin(
            cookie: endpoint.cookie, flow: connected, inboundSPI: spiIn, outboundSPI: spiOut,
            ikeSAID: protection.ikeSAID, how: "charon made the flow's CHILD_SA again")
    }

    /// A connected socket's flow (nil when it is closed or not connected).

    // MARK: - Accepted connections

    /// Binds an accepted connection to its own CHILD_SA and pins its socket to it: the keying names the child
    /// (``KeyingBackend/bindAccepted(_:reqid:)``); without keying knowledge (static keys) the kernel's one
    /// flow-exact pair is taken. A flow contested between peers is refused: the connection is shut down and never
    /// reported secured.
    func bindAccepted(cookie: UInt64, flow: KeyedFlow, pin pinning: Bool = true) {
        guard let keying, let endpoint = table.endpoint(cookie: cookie), let reqid = endpoint.reqid else { return }
        let binding = keying.bindAccepted(flow, reqid: reqid)
        guard table.contains(cookie: cookie) else {
            // Released while the keying bound it: the binding would outlive it and refuse the flow's next peers.
            keying.unbindAccepted(flow)
            return
        }
        logger.trace("accepted connection's binding", metadata: ["flow": "\(flow)", "binding": "\(binding)"])
        switch binding {
        case .pair(let protection):
            guard let spiIn = protection.inboundSPI, let spiOut = protection.outboundSPI else { return }
            guard
                !pinning
                    || pin(
                        cookie: cookie, flow: flow, inboundSPI: spiIn, outboundSPI: spiOut,
                        ikeSAID: protection.ikeSAID, how: "accepted")
            else { return }
            table.setOwnChild(spi: spiIn, peer: flow.remote, cookie: cookie)
            // Pinned to its own CHILD_SA, which the keying names with the peer's identity: secured now, whether or
            // not the application ever queries it (what an inspector shows). One bound without a descriptor is
            // not pinned, so the kernel has not been asked: it waits for its query.
            guard pinning else { return }
            if case .secured = endpoint.state.settled {
            } else {
                logSecured(endpoint.descriptor, reqid: reqid, flow: flow, protection, how: "accepted")
                apply(.childUp(Self.info(protection)), cookie: cookie)
            }
        case .unknown:
            guard pinning,
                let found = try? FlowAttribution.find(in: xfrm, flow: flow, reqid: reqid, exactOnly: true),
                found.exactCount == 1
            else {
                logger.debug(
                    "accepted connection not pinned: neither the keying nor the kernel names its one SA pair",
                    metadata: ["fd": "\(endpoint.descriptor)", "flow": "\(flow)"])
                return
            }
            pin(
                cookie: cookie, flow: flow, inboundSPI: found.inbound.id.spi, outboundSPI: found.outbound.id.spi,
                ikeSAID: nil, how: "accepted (kernel)")
        case .contested(let peers):
            logger.warning(
                "accepted connection refused: peers contest its flow",
                metadata: ["fd": "\(endpoint.descriptor)", "flow": "\(flow)", "peers": "\(peers)"])
            apply(.refused("several peers made CHILD_SAs for \(flow): \(peers)"), cookie: cookie)
            _ = withSocket(endpoint) { Glibc.shutdown($0, CInt(SHUT_RDWR)) }
        }
    }

    /// A peer made a CHILD_SA on a listener's reqid: an accepted connection of that flow that lost its SAs (a
    /// flush, an expiry, the peer's restart) moves to it when it is the same peer's (the keying refused it
    /// otherwise); a connection not accepted yet is looked for among this process's sockets for a while.
    func peerChild(reqid: UInt32, flow: KeyedFlow?) {
        if let flow {
            for endpoint in table.endpoints(reqid: reqid) where endpoint.role == .accepted {
                guard endpoint.keying?.flow == flow else { continue }
                bindAccepted(cookie: endpoint.cookie, flow: flow)
                return
            }
        }
        // The role watch looks at once, not at its next turn (up to 250 ms away); while connections are awaited
        // it looks every 10 ms anyway.
        if awaitedAccepts.expect(reqid: reqid, flow: flow) { pump.withLock { $0?.nudgeRoleWatch() } }
    }

    /// How long a peer's new child makes the engine look for the connection it carries among this process's
    /// sockets (the application may accept late; the query and release find it anyway).
    static let acceptWatch: Duration = .seconds(10)

    /// Looks for accepted connections of children peers made (see ``peerChild(reqid:flow:)``) among this
    /// process's descriptors, and binds and pins the ones found. O(descriptors), only while some are awaited, at
    /// 10 ms after a new child and then twice as long each time (at most a second). Returns whether any are
    /// still awaited.
    func adoptAwaitedConnections() -> Bool {
        guard awaitedAccepts.lookDue() else { return !awaitedAccepts.isEmpty }
        for (cookie, fd) in SocketInspector.descriptorsByCookie() where !table.contains(cookie: cookie) {
            guard let facts = try? SocketInspector.facts(of: fd), facts.kind == .stream, facts.isConnected,
                let flow = KeyedFlow(facts), awaitedAccepts.awaits(flow)
            else { continue }
            // Still awaited under the adoption lock (the application's own query or release may have registered
            // it, and released it, since the descriptors were listed): only then is it registered here.
            if adoptions.withLock({ _ in awaitedAccepts.awaits(flow) }) { _ = endpoint(for: fd, facts: facts) }
        }
        return !awaitedAccepts.isEmpty
    }
}
