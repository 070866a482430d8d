import IPAddressing
import XFRM

/// Who a peer proved to be: its IKE identity and, after a second authentication round, its user.
public struct PeerName: Hashable, Sendable, CustomStringConvertible {
    public var identity: String?
    public var user: String?

    public init(identity: String?, user: String? = nil) {
        self.identity = identity
        self.user = user
    }

    public var description: String { (identity ?? "?") + (user.map { " (user \($0))" } ?? "") }
}

/// One CHILD_SA a peer made on one of our reqids, as charon reported it.
public struct PeerChild: Hashable, Sendable {
    public var inboundSPI: UInt32
    public var outboundSPI: UInt32
    /// charon's unique id of the CHILD_SA (what `terminate` takes).
    public var childID: Int?
    public var ikeSAID: UInt64?
    public var peer: PeerName
    public var reqid: UInt32
    public var coverage: ChildCoverage

    public init(
        inboundSPI: UInt32, outboundSPI: UInt32, childID: Int?, ikeSAID: UInt64?, peer: PeerName, reqid: UInt32,
        coverage: ChildCoverage
    ) {
        self.inboundSPI = inboundSPI
        self.outboundSPI = outboundSPI
        self.childID = childID
        self.ikeSAID = ikeSAID
        self.peer = peer
        self.reqid = reqid
        self.coverage = coverage
    }
}

/// The CHILD_SAs peers made on listeners' reqids, the accepted connections bound to one of them, and the rules
/// that keep one peer from carrying another's connection (the server half of the binding; see the SecureSocket
/// documentation, "Binding"). Pure: the keying backend feeds it charon's events and acts on its answers.
///
/// Peers are compared by ``PeerName`` (identity and user): children of one peer may overlap (a rekey, a peer
/// whose charon restarted and made a new IKE SA), children of two peers may not:
/// - a child that covers a connection bound to another peer is refused;
/// - a child that covers no single flow (a wide one: a range of ports or hosts) is refused when it overlaps any
///   child of another peer;
/// - two peers' children for exactly the same flow, before a connection is bound to either, are both refused
///   and the flow is contested: nobody can say which one the connection came under, so it is bound to neither;
/// - a flow-exact child inside another peer's wide child is kept (the exact one is the flow's own).
///
/// An accepted connection is bound (``decide(_:reqid:)``) to the newest child that names exactly its flow, or,
/// without one, to the newest wide child covering it, provided every such candidate is of one peer. A UDP flow has
/// no accept: its first flow-exact child binds it to that peer for as long as the peer has a child for it.
struct ResponderChildren: Sendable {
    /// Why a child was refused: what the backend logs and terminates.
    struct Refusal: Hashable, Sendable {
        var child: PeerChild
        var reason: String
    }

    enum Decision: Hashable, Sendable {
        /// The connection's own child.
        case child(PeerChild)
        /// No child of any peer covers the flow (yet).
        case unknown
        /// Children of several peers cover it: no one is named, nothing is bound.
        case contested([PeerName])
    }

    private struct Kept: Sendable {
        var child: PeerChild
        var sequence: Int
    }

    private var children: [UInt32: Kept] = [:]
    private var sequence = 0
    /// Connections bound to a child: the flow, its reqid, the peer that owns it and the child it is pinned to.
    private var bound: [KeyedFlow: Binding] = [:]
    private struct Binding: Sendable {
        var reqid: UInt32
        var peer: PeerName
        var inboundSPI: UInt32?
        /// An accepted TCP connection stays bound while it exists; a UDP flow while its peer has a child for it.
        var sticky: Bool
    }
    private var contested: Set<KeyedFlow> = []

    var count: Int { children.count }
    var boundCount: Int { bound.count }

    func child(inboundSPI: UInt32) -> PeerChild? { children[inboundSPI]?.child }

    func children(reqid: UInt32) -> [PeerChild] { children.values.map(\.child).filter { $0.reqid == reqid } }

    /// Records a child a peer made on a listener's reqid; returns the children to refuse (terminate), the new one
    /// or older ones, each with why. A refused child is not kept.
    mutating func add(_ child: PeerChild) -> [Refusal] {
        sequence += 1
        let others = children.values.filter { $0.child.reqid == child.reqid && $0.child.peer != child.peer }
        // 1. A connection bound to another peer.
        for (flow, owner) in bound where owner.reqid == child.reqid && owner.peer != child.peer {
            if child.coverage.covers(flow) {
                return [
                    Refusal(
                        child: child,
                        reason: "covers the connection \(flow), which \(owner.peer) holds")
                ]
            }
        }
        if let flow = child.coverage.exactFlow {
            if contested.contains(flow) {
                return [Refusal(child: child, reason: "the flow \(flow) is contested between peers")]
            }
            // 2. Another peer's child for the same flow, nobody bound yet: both go.
            let rivals = others.filter { $0.child.coverage.exactFlow == flow }
            if !rivals.isEmpty {
                contested.insert(flow)
                for rival in rivals { children[rival.child.inboundSPI] = nil }
                let names = rivals.map { "\($0.child.peer)" }.joined(separator: ", ")
                return [Refusal(child: child, reason: "\(names) made a child for the same flow \(flow)")]
                    + rivals.map {
                        Refusal(child: $0.child, reason: "\(child.peer) made a child for the same flow \(flow)")
                    }
            }
        } else {
            // 3. A wide child never overlaps another peer's children.
            if let other = others.first(where: { Self.overlap(child.coverage, $0.child.coverage) }) {
                return [
                    Refusal(
                        child: child,
                        reason: "covers more than one flow and overlaps \(other.child.peer)'s child "
                            + "\(other.child.coverage)")
                ]
            }
        }
        children[child.inboundSPI] = Kept(child: child, sequence: sequence)
        if let flow = child.coverage.exactFlow, flow.transportProtocol == .udp, bound[flow] == nil {
            bound[flow] = Binding(reqid: child.reqid, peer: child.peer, inboundSPI: child.inboundSPI, sticky: false)
        }
        return []
    }

    /// A child charon rekeyed: the new one replaces it, and a connection pinned to the old one moves to the new
    /// one (same IKE SA, so the same peer).
    mutating func rekey(old inboundSPI: UInt32, new child: PeerChild) {
        children[inboundSPI] = nil
        sequence += 1
        children[child.inboundSPI] = Kept(child: child, sequence: sequence)
        for (flow, owner) in bound where owner.inboundSPI == inboundSPI {
            bound[flow]?.inboundSPI = child.inboundSPI
        }
    }

    /// A child went down; a connection bound to it stays bound to its peer (a new child of that peer may take
    /// its place, none of another peer may).
    mutating func remove(inboundSPI: UInt32) {
        children[inboundSPI] = nil
        for (flow, owner) in bound where owner.inboundSPI == inboundSPI {
            if owner.sticky {
                bound[flow]?.inboundSPI = nil
            } else if let next = newest(for: flow, peer: owner.peer) {
                bound[flow]?.inboundSPI = next.inboundSPI
            } else {
                bound[flow] = nil
            }
        }
    }

    /// The child an accepted connection on `reqid` is bound to (see the type's documentation).
    func decide(_ flow: KeyedFlow, reqid: UInt32) -> Decision {
        if contested.contains(flow) { return .contested([]) }
        let covering = children.values.filter { $0.child.reqid == reqid && $0.child.coverage.covers(flow) }
        let exact = covering.filter { $0.child.coverage.exactFlow == flow }
        let candidates = exact.isEmpty ? covering : exact
        let peers = Set(candidates.map(\.child.peer))
        if let owner = bound[flow]?.peer, !peers.isEmpty, peers != [owner] {
            return .contested(Array(peers.union([owner])))
        }
        guard peers.count <= 1 else { return .contested(Array(peers)) }
        guard let newest = candidates.max(by: { $0.sequence < $1.sequence }) else { return .unknown }
        return .child(newest.child)
    }

    /// Binds an accepted connection to `child` (its socket is pinned to that child's SAs).
    mutating func bind(_ flow: KeyedFlow, to child: PeerChild) {
        bound[flow] = Binding(reqid: child.reqid, peer: child.peer, inboundSPI: child.inboundSPI, sticky: true)
    }

    /// The connection is gone (closed, released): its flow may be used again by anyone.
    mutating func unbind(_ flow: KeyedFlow) {
        bound[flow] = nil
        contested.remove(flow)
    }

    /// The newest live child of `peer` that names exactly `flow` (a connection's child that replaces a lost one).
    func newest(for flow: KeyedFlow, peer: PeerName) -> PeerChild? {
        children.values.filter { $0.child.peer == peer && $0.child.coverage.exactFlow == flow }
            .max(by: { $0.sequence < $1.sequence })?.child
    }

    /// The peer a bound connection belongs to.
    func owner(of flow: KeyedFlow) -> PeerName? { bound[flow]?.peer }

    /// Whether two children's selectors share at least one flow.
    static func overlap(_ a: ChildCoverage, _ b: ChildCoverage) -> Bool {
        a.local.contains { x in b.local.contains { x.intersects($0) } }
            && a.remote.contains { x in b.remote.contains { x.intersects($0) } }
    }
}

extension ChildTrafficSelector {
    /// Whether some address, protocol and port are covered by both.
    func intersects(_ other: ChildTrafficSelector) -> Bool {
        if family == .unspecified || other.family == .unspecified { return true }
        guard family == other.family else { return false }
        guard
            transportProtocol == .any || other.transportProtocol == .any
                || transportProtocol == other.transportProtocol
        else { return false }
        guard ports.overlaps(other.ports) else { return false }
        return !high.lexicographicallyPrecedes(other.low) && !other.high.lexicographicallyPrecedes(low)
    }
}
