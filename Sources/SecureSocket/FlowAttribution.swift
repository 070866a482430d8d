import Keying
import XFRM

/// Which SA pair protects one flow, read from the kernel: the outbound and inbound ESP transport SAs with the
/// socket's reqid whose selectors cover the flow (two filtered dumps, one netlink request each).
///
/// Flow-exact selectors (the binding) name one connection; an address-only selector (a system charon without
/// `set_proto_port_transport_sa`, static keys) covers every connection between the two hosts under that
/// reqid, so it is attributed only when it is the only candidate on a reqid of the socket's own.
struct FlowAttribution {
    var outbound: XFRMState
    var inbound: XFRMState
    /// Both selectors are exactly the flow.
    var exact: Bool
    /// The pair can be named as this flow's own: exact, or the only pair covering the flow.
    /// When false the flow is protected (the kernel found SAs with the reqid) but by whose, it cannot say.
    var attributable: Bool
    /// How many flow-exact SA pairs cover the flow (1 when it has exactly its own).
    var exactCount = 1

    /// - Parameters:
    ///   - exactOnly: only flow-exact SAs count (a socket that may run in clear must not borrow another
    ///     connection's SAs as proof).
    /// The pair named by a hint (SPIs the keying daemon reported for this flow), checked in the kernel: both
    /// SAs exist, carry `reqid`, are transport mode and have exactly the flow as selector. Two lookups by SPI,
    /// whatever the number of SAs; nil if any check fails (the caller then dumps).
    static func known(in xfrm: XFRMClient, flow: KeyedFlow, reqid: UInt32, inboundSPI: UInt32, outboundSPI: UInt32)
        -> FlowAttribution?
    {
        guard !flow.local.isAny,
            let into = try? xfrm.getState(XFRMStateID(destination: flow.local, spi: inboundSPI, proto: .esp)),
            let out = try? xfrm.getState(XFRMStateID(destination: flow.remote, spi: outboundSPI, proto: .esp))
        else { return nil }
        for (state, outbound) in [(out, true), (into, false)] {
            guard state.reqid == reqid, state.mode == .transport, state.selector.isFlowExact,
                flow.isCovered(by: state.selector, outbound: outbound)
            else { return nil }
        }
        return FlowAttribution(outbound: out, inbound: into, exact: true, attributable: true)
    }

    static func find(in xfrm: XFRMClient, flow: KeyedFlow, reqid: UInt32, exactOnly: Bool) throws(XFRMError)
        -> FlowAttribution?
    {
        let local = flow.local.isAny ? nil : flow.local
        let usable = { (state: XFRMState) in state.reqid == reqid && state.mode == .transport && !state.isLarval }
        // A socket bound to the wildcard address (an unconnected UDP server) has no local address of its own:
        // each SA's own local address stands in for it.
        let outbound = try xfrm.states(source: local, destination: flow.remote, proto: .esp).filter { state in
            var own = flow
            if local == nil { own.local = state.source }
            return usable(state) && own.isCovered(by: state.selector, outbound: true)
        }
        let inbound = try xfrm.states(source: flow.remote, destination: local, proto: .esp).filter { state in
            var own = flow
            if local == nil { own.local = state.id.destination }
            return usable(state) && own.isCovered(by: state.selector, outbound: false)
        }
        let exactOut = outbound.filter { $0.selector.isFlowExact }
        let exactIn = inbound.filter { $0.selector.isFlowExact }
        if let out = exactOut.last, let into = exactIn.last {
            // Several flow-exact pairs (another peer's child for the same flow): protected, but by whose, the
            // kernel cannot say.
            let count = max(exactOut.count, exactIn.count)
            return FlowAttribution(
                outbound: out, inbound: into, exact: true, attributable: count == 1, exactCount: count)
        }
        guard !exactOnly, let out = outbound.last, let into = inbound.last else { return nil }
        // Address-only SAs: attributable only when they are the only pair covering the flow. With several (a
        // shared reqid, several connections between the two hosts) the kernel uses the newest for output,
        // whoever it belongs to: protected, but not attributable to a peer.
        return FlowAttribution(
            outbound: out, inbound: into, exact: false,
            attributable: outbound.count == 1 && inbound.count == 1)
    }
}
