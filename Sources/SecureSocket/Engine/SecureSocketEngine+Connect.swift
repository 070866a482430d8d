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

// WSAConnect: negotiation for exactly the flow, then a connect() bounded by the same deadline.
extension SecureSocketEngine {
    // MARK: - Connect

    /// Connects `fd` to `peer`, first making sure IPsec protects the flow: the keying backend negotiates (at most
    /// the configured timeout), then `connect()` runs. A plain `connect()` on a secured socket without SAs gets
    /// `EAGAIN` from the kernel; this is the call that waits. With `ALLOW_INSECURE` a failed negotiation falls
    /// back to clear text. The negotiation is bounded by `timeout`; the TCP handshake after it by what is left
    /// of that, or at least by `timeout` again (at most 10 s) when the negotiation used it up.
    public func connect(_ fd: CInt, to peer: IPEndpoint, timeout: Duration? = nil) throws(SecureSocketError) {
        try connect(fd, to: peer, timeout: timeout, cancelled: nil)
    }

    func connect(
        _ fd: CInt, to peer: IPEndpoint, timeout: Duration?,
        cancelled: CancelFlag?
    ) throws(SecureSocketError) {
        let handshake = try prepareConnect(fd, to: peer, timeout: timeout, cancelled: cancelled)
        defer { if let cookie = SocketInspector.cookie(of: fd) { recordFlow(fd, cookie: cookie) } }
        try Self.plainConnect(fd, peer, deadline: handshake, cancelled: cancelled)
    }

    /// `WSAConnect` up to the `connect()` itself: the flow's SAs negotiated (at most `timeout`) and the socket
    /// pinned to them, or the fall back to clear text its settings allow. Returns the deadline for the TCP
    /// handshake that follows: what is left of `timeout`, or at least `timeout` again (at most 10 s) when the
    /// negotiation used it up. A socket that is not secured gets the whole `timeout` for its handshake. (The
    /// keying daemon runs this for a client, which then connects itself.)
    package func prepareConnect(
        _ fd: CInt, to peer: IPEndpoint, timeout: Duration? = nil, cancelled: CancelFlag? = nil
    ) throws(SecureSocketError) -> Deadline {
        try requireOwner()
        let facts = try inspect(fd)
        try requireInetStreamOrDatagram(facts)
        guard !facts.isConnected || facts.kind == .datagram else {
            throw SecureSocketError(.isConnected, "already connected")
        }
        // (Before anything changes: a listener keeps answering its peers.)
        guard !facts.isListening else { throw SecureSocketError(.invalidArgument, "a listening socket cannot connect") }
        let timeout = timeout ?? configuration.negotiationTimeout
        guard let endpoint = table.endpoint(cookie: facts.cookie), let reqid = endpoint.reqid else {
            return Deadline(after: timeout)
        }
        if facts.family == .inet6 && peer.isV4Mapped {
            // The kernel skips an AF_INET6 socket policy for v4-mapped flows: that would be clear text.
            throw SecureSocketError(
                .addressFamilyNotSupported,
                "a secured IPv6 socket cannot reach the IPv4-mapped peer \(peer): use an AF_INET socket")
        }
        if let refusal = connectRefusal(endpoint, peer: peer.address) {
            throw SecureSocketError(.accessDenied, refusal)
        }
        let deadline = Deadline(after: timeout)
        try becomeInitiator(endpoint)
        table.update(cookie: facts.cookie) { $0.peer = peer.address }
        apply(.negotiationStarted, cookie: facts.cookie)
        if let keying, var request = table.keyingRequest(cookie: facts.cookie) {
            request.requiredPeerIdentity = endpoint.peerTargetName(for: peer.address).map {
                SocketPeerTargetName(name: $0).identity(raw: endpoint.peerNameIsRaw)
            }
            do {
                // The flow's own SAs: the local port must be known first (an unbound socket is bound now, as
                // connect() would, to an ephemeral port).
                let local = try boundLocal(fd, facts: facts)
                let flow = KeyedFlow(facts.kind == .stream ? .tcp : .udp, local: local, remote: peer)
                let negotiated = try keying.negotiate(request, flow: flow, timeout: timeout)
                logSecured(fd, reqid: reqid, flow: flow, negotiated.protection, how: "WSAConnect")
                guard table.addRegistration(negotiated.registration, cookie: facts.cookie) else {
                    keying.release(negotiated.registration)
                    throw SecureSocketError(.notSocket, "descriptor \(fd) was released while its SAs were negotiated")
                }
                apply(.childUp(Self.info(negotiated.protection)), cookie: facts.cookie)
                // A socket bound to the wildcard address: the SA pair's own local address (no dump needed).
                var pinned = flow
                if pinned.local.isAny, let local = negotiated.protection.localAddress,
                    local.family == pinned.remote.family
                {
                    pinned.local = local
                }
                // The socket is bound to exactly this pair before its first packet.
                if let spiIn = negotiated.protection.inboundSPI, let spiOut = negotiated.protection.outboundSPI {
                    pin(
                        cookie: facts.cookie, flow: pinned, inboundSPI: spiIn, outboundSPI: spiOut,
                        ikeSAID: negotiated.protection.ikeSAID, how: "WSAConnect")
                }
                if endpoint.client != nil, facts.kind == .stream {
                    // The daemon will not see the socket connected: its flow is recorded now.
                    recordFlow(pinned, cookie: facts.cookie)
                }
            } catch let error as SecureSocketError {
                throw error
            } catch let error as KeyingError {
                let failure = Self.failure(error, expected: request.requiredPeerIdentity, timeout: timeout)
                apply(.failed(failure), cookie: facts.cookie)
                let metadata: Logger.Metadata = [
                    "fd": "\(fd)", "reqid": "\(reqid)", "peer": "\(peer)",
                    "required-identity": "\(request.requiredPeerIdentity ?? "any")",
                    "reason": "\(failure)",
                ]
                guard endpoint.machine.allowInsecure else {
                    logger.notice("connection refused: no SAs for the flow", metadata: metadata)
                    throw SecureSocketError(Self.code(for: error), "\(failure)")
                }
                logger.warning("connection falls back to clear text (ALLOW_INSECURE)", metadata: metadata)
                apply(.fellBackToClear, cookie: facts.cookie)
            } catch {
                throw SecureSocketError(.systemCallFailure, "connect", underlying: error)
            }
        }
        endpointsChanged()
        if cancelled?.isSet == true { throw SecureSocketError(.interrupted, "the connecting task was cancelled") }
        // The handshake has a bound of its own (a fallback to clear text comes after a negotiation that may
        // have used the whole first one).
        return max(deadline, Deadline(after: min(timeout, .seconds(10))))
    }

    /// The socket's local address and port, binding an unbound socket to the wildcard address and an
    /// ephemeral port first (what `connect()` would do), so the flow's traffic selectors can name the port.
    func boundLocal(_ fd: CInt, facts: SocketFacts, preferring port: UInt16 = 0) throws(SecureSocketError)
        -> IPEndpoint
    {
        if let local = facts.local, local.port != 0 { return local }
        if port != 0,
            IPEndpoint(address: .any(facts.family), port: port).withSockaddr({ Glibc.bind(fd, $0, $1) })
                == 0,
            let local = try inspect(fd).local, local.port != 0
        {
            return local
        }
        let any = IPEndpoint(address: .any(facts.family), port: 0)
        guard any.withSockaddr({ Glibc.bind(fd, $0, $1) }) == 0 else {
            let error = Errno(rawValue: errno)
            throw SecureSocketError(SecureSocketError.Code(errno: error), "binding to an ephemeral port", errno: error)
        }
        guard let local = try inspect(fd).local, local.port != 0 else {
            throw SecureSocketError(.systemCallFailure, "no local port after bind")
        }
        return local
    }

    /// Marks the endpoint as one that initiates. A UDP socket that was answering peers on its port stops: its
    /// reqid must be in no responder config once it sends to peers of its own choosing.
    /// A UDP socket whose port could be shared (`SO_REUSEADDR` set after `WSASetSocketSecurity`) is refused
    /// here too, whatever its role was (`WSAEACCES`).
    func becomeInitiator(_ endpoint: Endpoint) throws(SecureSocketError) {
        if endpoint.kind == .datagram, refuseSharedPort(endpoint) {
            throw SecureSocketError(
                .accessDenied, "SO_REUSEADDR is set on this secured UDP socket: another socket could share its port")
        }
        // Settled under the table's lock, and cleaned up after what the record was then (not what this copy says):
        // the role watch may have made it a responder meanwhile.
        let previous =
            table.update(cookie: endpoint.cookie) { record -> EndpointRole? in
                let before = record.role
                return record.settle(as: .initiator) ? before : nil
            } ?? nil
        if case .responder? = previous {
            for registration in table.takeRegistrations(cookie: endpoint.cookie) {
                keying?.release(registration)
            }
            // What peers made while it answered goes: no SA of theirs may carry the flows it now chooses.
            if let reqid = endpoint.reqid { keying?.dropPeerChildren(reqid: reqid) }
            returnPolicyToSocket(endpoint)
        }
    }

    /// `connect()` bounded by `deadline`, the TCP handshake included: a blocking socket is switched to
    /// non-blocking for the call and waited on with `poll` (a blocking `connect()` to a silent peer would wait for
    /// TCP's SYN retries, about two minutes), then switched back.
    package static func plainConnect(
        _ fd: CInt, _ peer: IPEndpoint, deadline: Deadline,
        cancelled: CancelFlag? = nil
    ) throws(SecureSocketError) {
        let flags = fcntl(fd, F_GETFL)
        let nonBlocking = flags >= 0 && flags & O_NONBLOCK != 0
        let bounded = !nonBlocking && flags >= 0 && fcntl(fd, F_SETFL, flags | O_NONBLOCK) == 0
        defer { if bounded { _ = fcntl(fd, F_SETFL, flags) } }
        var attempts = 0
        while true {
            attempts += 1
            if cancelled?.isSet == true { throw SecureSocketError(.interrupted, "the connecting task was cancelled") }
            let rc = peer.withSockaddr { Glibc.connect(fd, $0, $1) }
            if rc == 0 { return }
            let error = Errno(rawValue: errno)
            switch error {
            case .interrupted:
                continue
            case .resourceTemporarilyUnavailable:
                // No SA for the flow yet (the kernel answers at once, whatever xfrm_larval_drop says).
                guard !deadline.hasPassed, attempts < 100_000 else {
                    throw SecureSocketError(
                        .timedOut, "no IPsec SA for \(peer) before the deadline (\(attempts) connect attempts)",
                        errno: error)
                }
                usleep(5_000)
            case .nowInProgress where bounded, .alreadyInProcess where bounded:
                return try awaitHandshake(fd, peer, deadline: deadline, cancelled: cancelled)
            case .nowInProgress where nonBlocking, .alreadyInProcess where nonBlocking:
                throw SecureSocketError(.wouldBlock, "non-blocking connect in progress", errno: error)
            default:
                throw SecureSocketError(SecureSocketError.Code(errno: error), "connect to \(peer)", errno: error)
            }
        }
    }

    /// Waits for a non-blocking `connect()` to complete, at most until `deadline` (polling in slices so that
    /// cancellation is seen), and reports its outcome from `SO_ERROR`.
    static func awaitHandshake(
        _ fd: CInt, _ peer: IPEndpoint, deadline: Deadline,
        cancelled: CancelFlag?
    ) throws(SecureSocketError) {
        while true {
            if cancelled?.isSet == true { throw SecureSocketError(.interrupted, "the connecting task was cancelled") }
            guard !deadline.hasPassed else {
                throw SecureSocketError(
                    .timedOut, "the TCP handshake with \(peer) did not complete before the deadline")
            }
            var pfd = pollfd(fd: fd, events: Int16(POLLOUT), revents: 0)
            let ready = poll(&pfd, 1, min(deadline.pollMilliseconds, 100))
            if ready < 0 && errno != EINTR {
                let error = Errno(rawValue: errno)
                throw SecureSocketError(SecureSocketError.Code(errno: error), "poll", errno: error)
            }
            guard ready > 0 else { continue }
            var soError: CInt = 0
            var length = socklen_t(MemoryLayout<CInt>.size)
            getsockopt(fd, SOL_SOCKET, SO_ERROR, &soError, &length)
            guard soError != 0 else { return }
            let error = Errno(rawValue: soError)
            throw SecureSocketError(SecureSocketError.Code(errno: error), "connect to \(peer)", errno: error)
        }
    }
}
