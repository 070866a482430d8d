import ALE
import Foundation
import Glibc
import IPAddressing
import SocketDiagnostics
import XFRM

// What a process that is gone left in the namespace: removed, except what its sockets that are still alive use.
extension SecureSocketEngine {
    /// What processes that are gone (killed, crashed) left in this namespace: their reqid claims, their configs,
    /// secrets and CHILD_SAs in a shared charon, their SAs in the kernel, their covers, their endpoint snapshots.
    /// Run when the engine starts and every tenth sweep. O(claim files) when nobody died.
    ///
    /// A dead owner whose sockets are still alive (a keying daemon killed under its clients' sockets, a process
    /// that exited while the kernel still delivers its orphaned sockets' data) keeps its claim (no reqid of it is
    /// handed out again) and what those sockets use, for as long as they live (``DeadOwnerUse``): a connection's
    /// flow cover and SAs, a responder's port covers (its port stays covered: it fails closed, never open). What
    /// its ended connections left goes at once. Once none of its sockets is alive, everything goes.
    func reclaimDeadProcesses() {
        let dead = reqids.deadBlocks()
        guard !dead.isEmpty else {
            keptDeadOwners.withLock { $0.removeAll() }
            return
        }
        // Without the kernel's word on SAs, policies or sockets, nothing is removed this time.
        guard let states = try? xfrm.states(), let policies = try? xfrm.policies(), let live = liveSockets() else {
            return
        }
        let covers = policies.filter { !$0.direction.isSocketPolicy }
        var kept: Set<Int32> = []
        for (pid, claims) in Dictionary(grouping: dead, by: \.pid) {
            let ranges = claims.map(\.reqids)
            let use = DeadOwnerUse(
                ranges: ranges, states: states.filter { state in ranges.contains { $0.contains(state.reqid) } },
                covers: covers.filter { policy in
                    policy.templates.contains { template in ranges.contains { $0.contains(template.reqid) } }
                }, live: live)
            guard use.isIdle else {
                kept.insert(pid)
                if keptDeadOwners.withLock({ $0.insert(pid).inserted }) {
                    logger.notice(
                        "keeping what a dead process left while live sockets still use its SAs",
                        metadata: [
                            "pid": "\(pid)", "reqids": "\(ranges)", "connections": "\(use.liveConnections.count)",
                            "responders": "\(use.liveResponders.count)",
                        ])
                }
                removeEnded(use)
                continue
            }
            let forgotten = claims.filter { reqids.forget($0) }.map(\.reqids)
            guard !forgotten.isEmpty else { continue }
            logger.notice("reclaiming what a dead process left", metadata: ["pid": "\(pid)", "reqids": "\(forgotten)"])
            keying?.reclaim(deadProcess: pid, reqids: forgotten)
            try? xfrm.deleteStates(use.states.map(\.id))
            // Covers of flows the kernel still answers for in TIME_WAIT now expire as a released connection's do
            // (no bare ACK of theirs may leave in clear); the others go.
            expireOrDelete(use.covers, keepingFor: use.timeWaitFlows)
            let snapshots = EndpointSnapshot.folder(forReqidDirectory: reqids.directory)
            for file in (try? FileManager.default.contentsOfDirectory(atPath: snapshots)) ?? []
            where file.hasPrefix("\(pid)-") {
                unlink("\(snapshots)/\(file)")
            }
        }
        keptDeadOwners.withLock { $0.formIntersection(kept) }
    }

    /// A kept dead owner's ended connections: the SAs of their flows go, their covers expire (TIME_WAIT) or go.
    /// Another socket taking an ended connection's addresses and ports must not send under a dead owner's SAs.
    private func removeEnded(_ use: DeadOwnerUse) {
        let ended = use.endedFlowCovers
        guard !ended.isEmpty else { return }
        let endedFlows = ended.map { DeadOwnerUse.flow(of: $0.selector) }
        let orphanedStates = use.states.filter { state in
            state.selector.isFlowExact
                && endedFlows.contains {
                    state.selector.carries(local: $0.local, remote: $0.remote, upperProtocol: $0.upper)
                }
        }
        try? xfrm.deleteStates(orphanedStates.map(\.id))
        let endedCovers = use.covers.filter { cover in
            cover.selector.isFlowExact
                && endedFlows.contains {
                    cover.selector.carries(local: $0.local, remote: $0.remote, upperProtocol: $0.upper)
                }
        }
        expireOrDelete(endedCovers, keepingFor: use.timeWaitFlows)
    }

    /// Covers that a flow in TIME_WAIT still needs get the released connection's expiry; the others are deleted.
    private func expireOrDelete(_ covers: [XFRMPolicy], keepingFor timeWait: [LiveSocket]) {
        var deleted: [XFRMPolicy] = []
        for var cover in covers {
            guard
                timeWait.contains(where: {
                    cover.selector.carries(local: $0.local, remote: $0.remote, upperProtocol: $0.upper)
                })
            else {
                deleted.append(cover)
                continue
            }
            guard cover.lifetime.hardAddExpiresSeconds != Self.closedFlowCover else { continue }
            cover.lifetime.hardAddExpiresSeconds = Self.closedFlowCover
            try? xfrm.updatePolicy(cover)
        }
        try? xfrm.deletePolicies(deleted.map { .selector($0.selector, $0.direction, mark: $0.mark) })
    }

    /// A TCP or UDP socket of the namespace, v4-mapped addresses read as IPv4.
    struct LiveSocket: Hashable {
        enum Kind: Hashable {
            /// A TCP connection that may still send, or a connected UDP socket.
            case connected
            /// A TCP flow whose socket has gone and which the kernel only answers for.
            case timeWait
            /// A listening TCP socket, or a bound UDP socket with no peer.
            case responder
        }
        var local: IPEndpoint
        var remote: IPEndpoint?
        var upper: XFRMUpperProtocol
        var kind: Kind
    }

    /// Every TCP and UDP socket of the namespace (closed and unbound ones aside). nil when the kernel could not be
    /// asked.
    func liveSockets() -> [LiveSocket]? {
        guard let diagnostics = try? SocketDiagnostics(namespace: configuration.namespace) else { return nil }
        var sockets: [LiveSocket] = []
        let tcpStates = TCPState.all.subtracting([.close, .boundInactive])
        for family in [IPAddressFamily.inet, .inet6] {
            guard let tcp = try? diagnostics.sockets(.tcp, family: family, states: tcpStates),
                let udp = try? diagnostics.sockets(.udp, family: family)
            else { return nil }
            for record in tcp + udp {
                let local = Self.unmapped(record.local)
                let remote = Self.unmapped(record.remote)
                let connected = !remote.address.isAny && remote.port != 0
                let kind: LiveSocket.Kind
                if record.transport == .tcp {
                    kind = record.state == .listen ? .responder : record.state == .timeWait ? .timeWait : .connected
                } else {
                    guard connected || local.port != 0 else { continue }
                    kind = connected ? .connected : .responder
                }
                sockets.append(
                    LiveSocket(
                        local: local, remote: kind == .responder ? nil : remote,
                        upper: record.transport == .tcp ? .tcp : .udp, kind: kind))
            }
        }
        return sockets
    }

    /// `::ffff:a.b.c.d` as the IPv4 address the kernel's SAs name.
    static func unmapped(_ endpoint: IPEndpoint) -> IPEndpoint {
        guard endpoint.isV4Mapped else { return endpoint }
        return IPEndpoint(
            address: IPAddress(family: .inet, bytes: Array(endpoint.address.bytes.suffix(4))), port: endpoint.port)
    }
}

/// What of a dead owner's leftovers its sockets that are still alive use. Only exact evidence counts, so that no
/// unrelated socket keeps them (a socket bound to the wildcard address, charon's own IKE sockets) and none of
/// them is taken for another's:
/// - a connection: a connected socket whose exact flow one of its flow-exact covers or SAs names;
/// - a responder: a listening TCP socket or a bound UDP socket whose port one of its port covers names.
struct DeadOwnerUse {
    let ranges: [ClosedRange<UInt32>]
    let states: [XFRMState]
    let covers: [XFRMPolicy]
    let liveConnections: [SecureSocketEngine.LiveSocket]
    let liveResponders: [SecureSocketEngine.LiveSocket]
    let timeWaitFlows: [SecureSocketEngine.LiveSocket]

    init(
        ranges: [ClosedRange<UInt32>], states: [XFRMState], covers: [XFRMPolicy],
        live: [SecureSocketEngine.LiveSocket]
    ) {
        self.ranges = ranges
        self.states = states
        self.covers = covers
        let flowExact =
            covers.map(\.selector).filter(\.isFlowExact)
            + states.filter { !$0.isLarval }.map(\.selector)
            .filter(\.isFlowExact)
        let portCovers = covers.map(\.selector).filter(Self.isPortSelector)
        liveConnections = live.filter { socket in
            socket.kind == .connected
                && flowExact.contains {
                    $0.carries(local: socket.local, remote: socket.remote, upperProtocol: socket.upper)
                }
        }
        liveResponders = live.filter { socket in
            socket.kind == .responder
                && portCovers.contains { $0.carries(local: socket.local, remote: nil, upperProtocol: socket.upper) }
        }
        timeWaitFlows = live.filter { $0.kind == .timeWait }
    }

    /// Nothing of it is used: it all goes.
    var isIdle: Bool { liveConnections.isEmpty && liveResponders.isEmpty }

    /// Its outbound flow covers whose connection is no longer alive (gone, or in TIME_WAIT).
    var endedFlowCovers: [XFRMPolicy] {
        covers.filter { cover in
            guard cover.direction == .outbound, cover.selector.isFlowExact else { return false }
            let flow = Self.flow(of: cover.selector)
            return !liveConnections.contains {
                cover.selector.carries(local: $0.local, remote: $0.remote, upperProtocol: $0.upper)
            }
                && flow.remote != nil
        }
    }

    /// The flow an outbound flow-exact selector names, from the local end.
    static func flow(of selector: XFRMSelector) -> SecureSocketEngine.LiveSocket {
        SecureSocketEngine.LiveSocket(
            local: IPEndpoint(address: selector.source, port: selector.sourcePort),
            remote: IPEndpoint(address: selector.destination, port: selector.destinationPort),
            upper: selector.upperProtocol, kind: .connected)
    }

    /// A responder's port cover: one local port exact, every peer (``XFRMSelector/port(_:_:protocol:outbound:)``).
    static func isPortSelector(_ selector: XFRMSelector) -> Bool {
        !selector.isFlowExact
            && (selector.sourcePortMask == 0xffff && selector.destinationPrefixLength == 0
                && selector.destinationPortMask == 0
                || selector.destinationPortMask == 0xffff && selector.sourcePrefixLength == 0
                    && selector.sourcePortMask == 0)
    }
}
