import ALE
import Foundation
import Glibc
import IPAddressing
import SocketDiagnostics
import XFRM

// What a process that is gone left in the namespace: removed, except what sockets still alive still send under.
extension SecureSocketEngine {
    /// What processes that are gone (killed, crashed) left in this namespace: their reqid claims, their configs,
    /// secrets and CHILD_SAs in a shared charon, their SAs in the kernel, their endpoint snapshots. Run when the
    /// engine starts and every tenth sweep. O(claim files) when nobody died.
    ///
    /// A dead owner's SAs that a live socket of the namespace still sends and receives under are kept, with its
    /// claim (so no reqid of it is handed out again): a keying daemon killed under its clients' connections, or a
    /// process that exited while the kernel still delivers its orphaned sockets' data. Its connections keep flowing
    /// over their kernel SAs; the next passes remove everything once no live socket uses any of them.
    func reclaimDeadProcesses() {
        let dead = reqids.deadBlocks()
        guard !dead.isEmpty else {
            keptDeadOwners.withLock { $0.removeAll() }
            return
        }
        // Without the kernel's word on SAs or sockets, nothing is removed this time.
        guard let states = try? xfrm.states(), let live = liveFlows() else { return }
        var kept: Set<Int32> = []
        for (pid, claims) in Dictionary(grouping: dead, by: \.pid) {
            let ranges = claims.map(\.reqids)
            let theirs = states.filter { state in ranges.contains { $0.contains(state.reqid) } }
            let carrying = theirs.filter { state in
                !state.isLarval && live.contains { !$0.inTimeWait && Self.carries(state.selector, $0) }
            }
            guard carrying.isEmpty else {
                kept.insert(pid)
                if keptDeadOwners.withLock({ $0.insert(pid).inserted }) {
                    logger.notice(
                        "keeping what a dead process left while live sockets still use its SAs",
                        metadata: ["pid": "\(pid)", "reqids": "\(ranges)", "sas": "\(carrying.count)"])
                }
                continue
            }
            let forgotten = claims.filter { reqids.forget($0) }.map(\.reqids)
            guard !forgotten.isEmpty else { continue }
            logger.notice("reclaiming what a dead process left", metadata: ["pid": "\(pid)", "reqids": "\(forgotten)"])
            keying?.reclaim(deadProcess: pid, reqids: forgotten)
            try? xfrm.deleteStates(
                theirs.filter { state in forgotten.contains { $0.contains(state.reqid) } }.map(\.id))
            // Its flows' covers (global policies with its reqids, see coverFlow) end with it, but for flows in
            // TIME_WAIT: their covers now expire as a released connection's do, so no bare ACK leaves in clear.
            let covers = ((try? xfrm.policies()) ?? []).filter { policy in
                !policy.direction.isSocketPolicy
                    && policy.templates.contains { template in forgotten.contains { $0.contains(template.reqid) } }
            }
            var ended: [XFRMPolicy] = []
            for var cover in covers {
                guard live.contains(where: { $0.inTimeWait && Self.carries(cover.selector, $0) }) else {
                    ended.append(cover)
                    continue
                }
                cover.lifetime.hardAddExpiresSeconds = Self.closedFlowCover
                try? xfrm.updatePolicy(cover)
            }
            try? xfrm.deletePolicies(ended.map { .selector($0.selector, $0.direction, mark: $0.mark) })
            let snapshots = EndpointSnapshot.folder(forReqidDirectory: reqids.directory)
            for file in (try? FileManager.default.contentsOfDirectory(atPath: snapshots)) ?? []
            where file.hasPrefix("\(pid)-") {
                unlink("\(snapshots)/\(file)")
            }
        }
        keptDeadOwners.withLock { $0.formIntersection(kept) }
    }

    /// A flow some TCP or UDP socket of the namespace still has (its local end, its peer if connected, and its
    /// protocol), v4-mapped addresses read as IPv4.
    struct LiveFlow: Hashable {
        var local: IPEndpoint
        var remote: IPEndpoint?
        var upper: XFRMUpperProtocol
        /// A TCP flow whose socket has gone and which the kernel only answers for (its SAs may go, its cover stays).
        var inTimeWait: Bool
    }

    /// Every TCP socket of the namespace that may still send (all but listeners and closed ones; `TIME_WAIT` marked)
    /// and every UDP socket. nil when the kernel could not be asked.
    func liveFlows() -> [LiveFlow]? {
        guard let diagnostics = try? SocketDiagnostics(namespace: configuration.namespace) else { return nil }
        var flows: [LiveFlow] = []
        let tcpStates = TCPState.all.subtracting([.listen, .close, .boundInactive])
        for family in [IPAddressFamily.inet, .inet6] {
            guard let tcp = try? diagnostics.sockets(.tcp, family: family, states: tcpStates),
                let udp = try? diagnostics.sockets(.udp, family: family)
            else { return nil }
            for record in tcp + udp {
                let remote = Self.unmapped(record.remote)
                flows.append(
                    LiveFlow(
                        local: Self.unmapped(record.local), remote: remote.address.isAny ? nil : remote,
                        upper: record.transport == .tcp ? .tcp : .udp,
                        inTimeWait: record.transport == .tcp && record.state == .timeWait))
            }
        }
        return flows
    }

    /// Whether a transport SA or cover with `selector` carries `flow`'s packets, one way or the other.
    static func carries(_ selector: XFRMSelector, _ flow: LiveFlow) -> Bool {
        selector.carries(local: flow.local, remote: flow.remote, upperProtocol: flow.upper)
    }

    /// `::ffff:a.b.c.d` as the IPv4 address the kernel's SAs name.
    static func unmapped(_ endpoint: IPEndpoint) -> IPEndpoint {
        guard endpoint.isV4Mapped else { return endpoint }
        return IPEndpoint(
            address: IPAddress(family: .inet, bytes: Array(endpoint.address.bytes.suffix(4))), port: endpoint.port)
    }
}
