import ALE
import Foundation
import Glibc
import IPAddressing
import Keying
import Logging
import Synchronization
import SystemPackage
import XFRM

// A responder's policy in the SPD: one policy per accepted flow, pinned to that flow's own CHILD_SA before its first
// packet, and one for the port (see the Binding documentation).
extension SecureSocketEngine {
    // MARK: - Listener policy

    /// The priority of a port's catch-all policy: after every flow's own policy (priority 0).
    static let portCoverPriority: UInt32 = 100

    /// Before a socket answers peers (a listener, or a bound UDP socket), its policy moves to the SPD: first two
    /// policies for its port with its template (out from the port, in to it: nothing of the port leaves or enters
    /// without an SA with its reqid), then its per-socket policies get a selector that matches no flow
    /// (``SocketPolicy/deferToSPD(_:on:family:)``), so the kernel looks each flow up in the SPD, where each peer's
    /// CHILD_SA for one flow adds that flow's policy pinned to its SPIs (``peerChild(reqid:flow:protection:)``).
    /// Why: a handshake is answered (SYN-ACK) and a UDP reply sent before the library sees the accepted socket;
    /// with the listener's own reqid-only templates the kernel picks any SA of the reqid that covers the flow, which
    /// with address-only selectors (charon's `set_proto_port_transport_sa = no`) may be another connection's.
    func deferToSPD(_ endpoint: Endpoint, local: IPEndpoint) throws(XFRMError) {
        guard let template = template(for: endpoint), let reqid = endpoint.reqid else { return }
        let proto: XFRMUpperProtocol = endpoint.kind == .stream ? .tcp : .udp
        let policies = [true, false].map { outbound in
            XFRMPolicy(
                selector: .port(local.address, local.port, protocol: proto, outbound: outbound),
                direction: outbound ? .outbound : .inbound, priority: Self.portCoverPriority, templates: [template])
        }
        for policy in policies {
            do { try xfrm.addPolicy(policy) } catch { try xfrm.updatePolicy(policy) }
        }
        // Recorded only while the endpoint is still registered: a release that ran meanwhile found no cover to end,
        // so these end here (lock order: portCovers, then the table; nothing takes them the other way round).
        let recorded = portCovers.withLock { covers -> Bool in
            guard table.contains(cookie: endpoint.cookie) else { return false }
            covers[reqid] = policies
            return true
        }
        guard recorded else {
            for var policy in policies {
                policy.lifetime.hardAddExpiresSeconds = Self.closedFlowCover
                try? xfrm.updatePolicy(policy)
            }
            return
        }
        let failure = withSocket(endpoint) { fd -> XFRMError? in
            do throws(XFRMError) {
                try SocketPolicy.deferToSPD(template, on: FileDescriptor(rawValue: fd), family: endpoint.family)
                return nil
            } catch {
                return error
            }
        }
        if let failure, let failure { throw failure }
    }

    /// The reqid's port is no longer answered: its catch-all policies end by themselves after `TIME_WAIT` (a
    /// connection closing at that moment still needs them), like a closed flow's cover.
    func endPortCover(reqid: UInt32) {
        guard let policies = portCovers.withLock({ $0.removeValue(forKey: reqid) }) else { return }
        for var policy in policies {
            policy.lifetime.hardAddExpiresSeconds = Self.closedFlowCover
            try? xfrm.updatePolicy(policy)
        }
    }

    /// A UDP socket that answered peers starts sending to peers of its own choosing: its per-socket policies cover
    /// every flow again, its port's SPD policies end.
    func returnPolicyToSocket(_ endpoint: Endpoint) {
        guard let reqid = endpoint.reqid, portCovers.withLock({ $0[reqid] != nil }),
            let template = template(for: endpoint)
        else { return }
        _ = withSocket(endpoint) {
            try? SocketPolicy.require([template], on: FileDescriptor(rawValue: $0), family: endpoint.family)
        }
        endPortCover(reqid: reqid)
    }

    /// A peer's CHILD_SA for one flow of a listener: the flow's SPD policies are pinned to its SPIs at once (the
    /// handshake is answered under them), then the connection it carries is bound (see ``peerChild(reqid:flow:)``).
    func peerChild(reqid: UInt32, flow: KeyedFlow?, protection: KeyedProtection) {
        if let flow, let spiIn = protection.inboundSPI, let spiOut = protection.outboundSPI,
            portCovers.withLock({ $0[reqid] != nil }),
            kernelPair(flow, reqid: reqid, inboundSPI: spiIn, outboundSPI: spiOut) != nil
        {
            coverFlow(
                flow, reqid: reqid, for: nil,
                pinned: PinnedSAs(inboundSPI: spiIn, outboundSPI: spiOut, ikeSAID: protection.ikeSAID))
        }
        peerChild(reqid: reqid, flow: flow)
    }

    /// A peer's CHILD_SA went away: the flow's pinned SPD policies end after `TIME_WAIT` unless a connection the
    /// library holds owns the flow (its release ends them; a new CHILD_SA of its peer re-pins them).
    func peerChildGone(reqid: UInt32, flow: KeyedFlow?) {
        guard let flow else { return }
        let held = table.endpoints(reqid: reqid).contains { $0.keying?.flow == flow }
        if !held { coverFlow(flow, reqid: reqid, for: Self.closedFlowCover) }
    }
}
