import ALE
import Foundation
import Glibc
import IPAddressing
import Impersonation
import Keying
import Logging
import Synchronization
import SystemPackage
import SystemSupport
import XFRM

// Roles: a socket becomes a responder when seen listening, and the ACQUIREs of secured sockets are answered.
extension SecureSocketEngine {
    // MARK: - Roles

    /// Looks at sockets that are secured but neither listening nor connecting yet: a listening TCP socket (or
    /// a bound, unconnected UDP socket that never initiated) becomes a responder, its reqid offered for flows
    /// to its port; a socket found connected (a plain `connect()`) is an initiator. Returns whether young
    /// undetermined sockets remain, so the caller looks again soon. O(undetermined endpoints).
    @discardableResult
    func settleRoles() -> Bool {
        var young = false
        let now = ContinuousClock.now
        let undetermined = table.all.filter { $0.role == .undetermined && $0.reqid != nil }
        // Clients' sockets are seen through the kernel's socket diagnostics, all in one dump.
        let clientFacts = clientFacts(undetermined.filter { $0.client != nil })
        for endpoint in undetermined {
            let seen =
                endpoint.client == nil
                ? withSocket(endpoint) { try? SocketInspector.facts(of: $0) } ?? nil
                : clientFacts[endpoint.cookie]
            guard let facts = seen else {
                if endpoint.client != nil, endpoint.registeredAt.duration(to: now) < .seconds(5) { young = true }
                continue
            }
            if case .refused = endpoint.state.settled { continue }
            if facts.kind == .datagram, refuseSharedPort(endpoint) { continue }
            if facts.isConnected {
                _ = table.update(cookie: endpoint.cookie) { $0.settle(as: .initiator) }
            } else if let local = facts.local, facts.answersPeers {
                table.update(cookie: endpoint.cookie) {
                    $0.lastLocalAddress = local.address
                    $0.lastLocalPort = local.port
                    $0.wasListening = facts.isListening
                }
                becomeResponder(endpoint, local: local)
            } else if endpoint.registeredAt.duration(to: now) < .seconds(5) {
                young = true
            }
        }
        return young
    }

    /// A secured UDP socket on which the application set `SO_REUSEADDR` after `WSASetSocketSecurity`: another
    /// socket, of any user, could bind the same port and receive its decrypted datagrams. It is cleared again
    /// (no later bind can share the port), and the socket fails closed: nothing is negotiated for it, its query
    /// reports the failure. Returns whether the socket was refused.
    func refuseSharedPort(_ endpoint: Endpoint) -> Bool {
        let shared =
            withSocket(endpoint) { fd -> Bool in
                guard SocketHardening.reusesAddress(fd) else { return false }
                var zero: CInt = 0
                _ = setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &zero, socklen_t(MemoryLayout<CInt>.size))
                return true
            } ?? false
        guard shared else { return false }
        logger.error(
            "secured UDP socket refused: SO_REUSEADDR was set on it (another socket could share its port)",
            metadata: ["fd": "\(endpoint.descriptor)", "reqid": "\(endpoint.reqid.map(String.init) ?? "none")"])
        apply(.refused("SO_REUSEADDR set on a secured UDP socket: its port could be shared"), cookie: endpoint.cookie)
        for registration in table.takeRegistrations(cookie: endpoint.cookie) {
            keying?.release(registration)
        }
        // What peers negotiated while it answered goes too, and its port's SPD policies: nothing may still be
        // accepted for a port another socket could share.
        if case .responder = endpoint.role, let reqid = endpoint.reqid {
            keying?.dropPeerChildren(reqid: reqid)
            returnPolicyToSocket(endpoint)
        }
        return true
    }

    func becomeResponder(_ endpoint: Endpoint, local: IPEndpoint) {
        let port = local.port
        guard let keying, let request = table.keyingRequest(cookie: endpoint.cookie) else { return }
        if let refusal = responderRefusal(endpoint) {
            // Never offered: no peer can negotiate for its port, so nothing reaches it (fails closed).
            logger.error("responder refused", metadata: ["fd": "\(endpoint.descriptor)", "reason": "\(refusal)"])
            apply(.refused(refusal), cookie: endpoint.cookie)
            return
        }
        // Claimed first, so a concurrent connect sees the role and the listen is not loaded twice.
        let claimed =
            table.update(cookie: endpoint.cookie) { $0.settle(as: .responder(port: port)) }
            ?? false
        guard claimed else { return }
        do {
            // Its policy in the SPD before any peer can make a CHILD_SA for it.
            try deferToSPD(endpoint, local: local)
        } catch {
            logger.warning(
                "responder keeps its own per-socket policies (moving them to the SPD failed)",
                metadata: ["fd": "\(endpoint.descriptor)", "error": "\(error)"])
        }
        do {
            let registration = try keying.listen(request, localPort: port, localAddress: local.address)
            // Released meanwhile, or connecting now (no longer answering peers): the listen is ours to undo.
            let kept = table.addRegistration(registration, cookie: endpoint.cookie) {
                $0.role == .responder(port: port)
            }
            if !kept { keying.release(registration) }
        } catch {
            apply(.failed(Self.failure(error, expected: nil, timeout: .zero)), cookie: endpoint.cookie)
        }
    }

    /// The kernel's ACQUIRE for a flow of a secured socket that sent without `WSAConnect` (a plain
    /// `connect()` or `sendto()` got EAGAIN): negotiates that flow's SAs with the peer target name set for
    /// its peer, on a thread of its own (bounded), so the application's retry succeeds. Responders' and
    /// accepted sockets' reqids never initiate (their peers do).
    func answerAcquire(reqid: UInt32, flow: KeyedFlow) {
        guard let keying,
            let endpoint = table.endpoints(reqid: reqid).first(where: {
                $0.role == .initiator || $0.role == .undetermined || ($0.kind == .datagram && $0.role.isResponder)
            }),
            var request = table.keyingRequest(cookie: endpoint.cookie)
        else { return }
        if case .refused = endpoint.state.settled { return }
        guard (try? becomeInitiator(endpoint)) != nil else { return }
        var flow = flow
        var stale = false
        if endpoint.kind == .stream {
            // (A client's socket is borrowed for the check and, unconnected, for the bind.)
            let checked = withSocket(endpoint) { fd -> (facts: SocketFacts, bound: IPEndpoint?)? in
                guard let facts = try? SocketInspector.facts(of: fd) else { return nil }
                guard facts.peer == nil else { return (facts, nil) }
                return (facts, try? boundLocal(fd, facts: facts, preferring: flow.localPort))
            }
            guard let checked = checked ?? nil else { return }
            let facts = checked.facts
            if let peer = facts.peer {
                // A live connection whose SAs went away (flushed, expired, deleted): the kernel asks again for
                // exactly its flow, and the connection gets new SAs (its segments wait, TCP retransmits).
                guard facts.local?.port == flow.localPort, peer.address == flow.remote, peer.port == flow.remotePort
                else {
                    return
                }
                stale = true
            } else {
                // A TCP connect() that failed with EAGAIN gave its ephemeral port back, and the retry takes
                // another: the flow's SAs would never match. Bind the socket to the port of the ACQUIRE (as connect
                // would have) so the application's retries use the flow negotiated now.
                guard let local = checked.bound else { return }
                flow.localPort = local.port
            }
        }
        let key = "\(reqid)/\(flow)"
        guard acquires.admit(key) else { return } // the kernel raises a new ACQUIRE once the larval state expires
        if let refusal = connectRefusal(endpoint, peer: flow.remote) {
            defer { acquires.remove(key) }
            logger.error("negotiation refused", metadata: ["fd": "\(endpoint.descriptor)", "reason": "\(refusal)"])
            apply(.failed(.negotiationFailed(refusal)), cookie: endpoint.cookie)
            return
        }
        request.requiredPeerIdentity = endpoint.peerTargetName(for: flow.remote).map {
            SocketPeerTargetName(name: $0).identity(raw: endpoint.peerNameIsRaw)
        }
        apply(.negotiationStarted, cookie: endpoint.cookie)
        let timeout = configuration.negotiationTimeout
        let finalRequest = request
        let finalFlow = flow
        let hooks = AcquireHooks(engine: self)
        // charon still counts the connection's old CHILD_SA as installed and would refuse a duplicate: it goes
        // first (terminated by config name, whatever rekeys renamed its id to).
        let staleRegistrations = stale ? table.takeRegistrations(cookie: endpoint.cookie, where: \.isNegotiation) : []
        // On the engine's ACQUIRE lane, whose threads start as the process (never as a peer some thread
        // impersonates).
        let queued = acquireLane.submit {
            defer { hooks.done(key) }
            for registration in staleRegistrations { keying.release(registration) }
            do throws(KeyingError) {
                let negotiated = try keying.negotiate(finalRequest, flow: finalFlow, timeout: timeout)
                hooks.succeeded(negotiated, flow: finalFlow, cookie: endpoint.cookie)
            } catch {
                hooks.failed(
                    Self.failure(error, expected: finalRequest.requiredPeerIdentity, timeout: timeout),
                    cookie: endpoint.cookie)
            }
        }
        if !queued {
            for registration in staleRegistrations { keying.release(registration) }
            hooks.done(key)
            hooks.failed(.keyingUnavailable("no thread to negotiate on: the engine is busy"), cookie: endpoint.cookie)
        }
    }

    struct AcquireHooks: @unchecked Sendable {
        weak var engine: SecureSocketEngine?
        func done(_ key: String) { engine?.acquires.remove(key) }
        func succeeded(_ negotiated: Negotiated, flow: KeyedFlow, cookie: UInt64) {
            guard let engine else { return }
            guard let endpoint = engine.table.endpoint(cookie: cookie),
                engine.table.addRegistration(negotiated.registration, cookie: cookie)
            else {
                engine.keying?.release(negotiated.registration) // closed meanwhile
                return
            }
            engine.logSecured(
                endpoint.descriptor, reqid: endpoint.reqid ?? 0, flow: flow, negotiated.protection,
                how: "kernel ACQUIRE")
            if endpoint.kind == .stream {
                engine.table.setFlow(flow, cookie: cookie)
                // A connection's own pair, pinned before the application's retry sends (an unconnected UDP
                // socket sends to many peers and keeps its reqid-only templates).
                if let spiIn = negotiated.protection.inboundSPI, let spiOut = negotiated.protection.outboundSPI {
                    engine.pin(
                        cookie: cookie, flow: flow, inboundSPI: spiIn, outboundSPI: spiOut,
                        ikeSAID: negotiated.protection.ikeSAID, how: "kernel ACQUIRE")
                }
                if let reqid = endpoint.reqid {
                    engine.coverFlow(
                        flow, reqid: reqid, for: nil, pinned: engine.table.endpoint(cookie: cookie)?.pinned)
                }
            }
            engine.apply(.childUp(SecureSocketEngine.info(negotiated.protection)), cookie: cookie)
        }
        func failed(_ failure: EndpointFailure, cookie: UInt64) {
            guard let engine else { return }
            engine.logger.notice(
                "kernel ACQUIRE not satisfied: no SAs for the flow",
                metadata: [
                    "cookie": "\(cookie)", "reason": "\(failure)",
                ])
            engine.apply(.failed(failure), cookie: cookie)
        }
    }

    /// How long a socket closed without ``release(_:)`` keeps its keying, so that its last segments and
    /// FIN still find their SAs. The explicit ``release(_:)`` does not wait.
    public var closeGrace: Duration { configuration.closeGrace }

}
