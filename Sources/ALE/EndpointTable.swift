import IPAddressing
import Synchronization
import XFRM

/// What a secured socket turned out to be, which decides whose SAs may carry its reqid: an initiator's reqid
/// is in no responder config (no peer can put SAs on it by initiating towards us); a responder's reqid is
/// offered to peers for flows to its own port only; an accepted socket shares its listener's reqid, and its
/// own SAs are told apart by their flow-exact selectors.
public enum EndpointRole: Hashable, Sendable, CustomStringConvertible {
    /// Secured, neither listening nor connecting yet.
    case undetermined
    /// Connects (or sends) to peers: negotiates per flow.
    case initiator
    /// Listens (TCP) or receives unconnected (UDP) on this local port: answers peers.
    case responder(port: UInt16)
    /// A connection a responder accepted (inherits its policies and reqid).
    case accepted

    public var isResponder: Bool { if case .responder = self { true } else { false } }

    public var description: String {
        switch self {
        case .undetermined: "undetermined"
        case .initiator: "initiator"
        case .responder(let port): "responder on port \(port)"
        case .accepted: "accepted"
        }
    }
}

/// One socket the library secures, keyed by its kernel cookie: its one record (identity, settings, role and
/// protection, keying registrations, flow, pinned SAs), changed in place under the table's lock.
public struct Endpoint: Sendable {
    public var cookie: UInt64
    /// The descriptor it was registered through (informational: fds are reused, cookies are not).
    public var descriptor: Int32
    /// The keying daemon's client that holds the socket (`descriptor` is then that client's number, not this
    /// process's); nil when this process holds it.
    public var client: UInt64?
    public var family: IPAddressFamily
    public var kind: SocketFacts.Kind
    /// The reqid in the socket's policy templates; nil when no per-socket policy was set.
    public var reqid: UInt32?
    /// The name for whatever peer (TCP with a zero PeerAddress): most sockets have only this one, which costs
    /// no dictionary.
    private var catchAllPeerTargetName: String?
    /// Names for particular peer addresses.
    private var peerTargetNamesByAddress: [IPAddress: String] = [:]

    /// Peer target names by peer address; `nil` key for "whatever peer".
    public var peerTargetNames: [IPAddress?: String] {
        get {
            var all: [IPAddress?: String] = [:]
            if let catchAllPeerTargetName { all[nil] = catchAllPeerTargetName }
            for (address, name) in peerTargetNamesByAddress { all[address] = name }
            return all
        }
        set {
            catchAllPeerTargetName = nil
            peerTargetNamesByAddress = [:]
            for (address, name) in newValue { setPeerTargetName(name, for: address) }
        }
    }

    /// Sets (or, with nil, deletes) the name for `peer`, or the catch-all one when `peer` is nil.
    public mutating func setPeerTargetName(_ name: String?, for peer: IPAddress?) {
        if let peer { peerTargetNamesByAddress[peer] = name } else { catchAllPeerTargetName = name }
    }
    /// The socket's protection and role: changed only through ``handle(_:)`` and ``settle(as:)``.
    public private(set) var machine: EndpointStateMachine
    /// What the socket holds in the keying backend; nil when it keys with nothing (no reqid, no keying).
    public var keying: EndpointKeying?
    /// Settings in force, as a free-form summary for inspection tools.
    public var summary: String
    /// The local port last seen for the socket (kept so that a closed listener's accepted sockets can be found).
    public var lastLocalPort: UInt16?
    /// The local address the socket was last seen bound to (a closed listener's accepted sockets must share it,
    /// unless it was the wildcard).
    public var lastLocalAddress: IPAddress?
    /// Whether the socket was last seen listening.
    public var wasListening = false
    /// The peer of a connected (or accepted) socket; events about SAs with other hosts do not touch it.
    public var peer: IPAddress?
    /// `PEER_NAME_IS_RAW_FORMAT`: peer target names are identities as given (no `service/` SPN prefix removed).
    public var peerNameIsRaw = false
    /// What the socket turned out to be (see ``EndpointRole``).
    public var role: EndpointRole { machine.role }
    /// The SA pair the socket's policies are pinned to (their templates carry these SPIs), once known: a
    /// connected or accepted TCP socket, or a connected UDP socket. Nil while the templates name the reqid only.
    public var pinned: PinnedSAs?
    /// When it was registered, to watch young undetermined sockets closely.
    public var registeredAt: ContinuousClock.Instant = .now

    public var state: EndpointState { machine.state }

    public init(
        cookie: UInt64, descriptor: Int32, family: IPAddressFamily, kind: SocketFacts.Kind, reqid: UInt32?,
        allowInsecure: Bool, summary: String, role: EndpointRole = .undetermined, keying: EndpointKeying? = nil
    ) {
        self.cookie = cookie
        self.descriptor = descriptor
        self.family = family
        self.kind = kind
        self.reqid = reqid
        self.machine = EndpointStateMachine(allowInsecure: allowInsecure, role: role)
        self.summary = summary
        self.keying = keying
    }

    /// Feeds an event to the endpoint's state machine; returns what the owner must do.
    public mutating func handle(_ event: EndpointEvent) -> [EndpointAction] { machine.handle(event) }

    /// The socket turned out to be `role` (see ``EndpointStateMachine/settle(as:)``); returns whether it changed.
    /// Only a UDP responder becomes an initiator (a listening TCP socket never connects).
    public mutating func settle(as role: EndpointRole) -> Bool {
        if self.role.isResponder, role == .initiator, kind != .datagram { return false }
        return machine.settle(as: role)
    }

    /// The name that applies to a peer: its own, else the catch-all one.
    public func peerTargetName(for peer: IPAddress?) -> String? {
        if let peer, let name = peerTargetNamesByAddress[peer] { return name }
        return catchAllPeerTargetName
    }
}

/// The SA pair a socket is pinned to, and the IKE SA that negotiated it (nil when the keying cannot say, as with
/// static keys).
public struct PinnedSAs: Hashable, Sendable, CustomStringConvertible {
    public var inboundSPI: UInt32
    public var outboundSPI: UInt32
    public var ikeSAID: UInt64?
    /// A rekey's new outbound SA, not in the kernel yet: the outbound template moves to it once it is (a
    /// template naming a missing SA would make the kernel create a larval state with that SPI, which blocks
    /// the keying daemon's own `XFRM_MSG_NEWSA` for it).
    public var pendingOutboundSPI: UInt32?
    /// The same for the inbound direction (charon reports a rekey once its new inbound SA is installed, so this
    /// is rarely needed).
    public var pendingInboundSPI: UInt32?

    /// The SPIs of a rekey's SAs it waits for.
    var pendingSPIs: [UInt32] { [pendingInboundSPI, pendingOutboundSPI].compactMap(\.self) }

    public init(inboundSPI: UInt32, outboundSPI: UInt32, ikeSAID: UInt64?) {
        self.inboundSPI = inboundSPI
        self.outboundSPI = outboundSPI
        self.ikeSAID = ikeSAID
    }

    public var description: String {
        "in 0x\(String(inboundSPI, radix: 16)) out 0x\(String(outboundSPI, radix: 16))"
            + (ikeSAID.map { " ike \($0)" } ?? "")
    }
}

/// The endpoint table: O(1) by cookie, by reqid and by pinned inbound SPI, safe from any thread.
public final class EndpointTable: Sendable {
    /// An endpoint in the table, by reference: changed in place under the table's lock (no copy out and back),
    /// and the dictionary's free buckets cost a pointer each instead of a whole endpoint.
    private final class Slot {
        var endpoint: Endpoint
        init(_ endpoint: Endpoint) { self.endpoint = endpoint }
    }

    private struct Storage {
        var byCookie: [UInt64: Slot] = [:]
        var byReqid: [UInt32: ReqidUsers] = [:]
        /// Pinned endpoints by the inbound SPI they are pinned to (a rekey names the old one).
        var byPinnedSPI: [UInt32: UInt64] = [:]
        /// Pinned endpoints by the SPIs of a rekey's SAs they wait for (``PinnedSAs/pendingInboundSPI``,
        /// ``PinnedSAs/pendingOutboundSPI``): the kernel's report of a new SA finds its sockets. Several may wait
        /// for one SPI: outbound SPIs are chosen by the peers, so two peers may pick the same.
        var byPendingSPI: [UInt32: [UInt64]] = [:]
        /// Endpoints in their close grace period (``EndpointState/closing(until:previous:)``): the sweep's ticks
        /// go to these only.
        var closing: Set<UInt64> = []

        mutating func reindexClosing(cookie: UInt64, _ endpoint: Endpoint?) {
            if let endpoint, case .closing = endpoint.state { closing.insert(cookie) } else { closing.remove(cookie) }
        }

        /// Keeps the SPI indexes in step with an endpoint's pins (`old` before a change, `new` after).
        mutating func reindexPins(cookie: UInt64, old: PinnedSAs?, new: PinnedSAs?) {
            if old?.inboundSPI != new?.inboundSPI {
                if let spi = old?.inboundSPI, byPinnedSPI[spi] == cookie { byPinnedSPI[spi] = nil }
                if let spi = new?.inboundSPI { byPinnedSPI[spi] = cookie }
            }
            let oldPending = old?.pendingSPIs ?? []
            let newPending = new?.pendingSPIs ?? []
            guard oldPending != newPending else { return }
            for spi in oldPending {
                byPendingSPI[spi]?.removeAll { $0 == cookie }
                if byPendingSPI[spi]?.isEmpty == true { byPendingSPI[spi] = nil }
            }
            for spi in newPending where byPendingSPI[spi]?.contains(cookie) != true {
                byPendingSPI[spi, default: []].append(cookie)
            }
        }
    }

    /// The endpoints of one reqid: an initiator's own reqid has one, held without an allocation; a listener's is
    /// shared with its accepted sockets. Callers take the value out of the table before changing it, so the set is
    /// not copied.
    private enum ReqidUsers {
        case one(UInt64)
        case many(Set<UInt64>)

        var cookies: [UInt64] {
            switch self {
            case .one(let cookie): [cookie]
            case .many(let set): Array(set)
            }
        }

        var count: Int {
            switch self {
            case .one: 1
            case .many(let set): set.count
            }
        }

        static func adding(_ cookie: UInt64, to users: ReqidUsers?) -> ReqidUsers {
            switch users {
            case nil: return .one(cookie)
            case .one(let first)?: return first == cookie ? .one(first) : .many([first, cookie])
            case .many(var set)?:
                set.insert(cookie)
                return .many(set)
            }
        }

        /// Without `cookie`; nil when no endpoint is left.
        static func removing(_ cookie: UInt64, from users: ReqidUsers?) -> ReqidUsers? {
            switch users {
            case nil: return nil
            case .one(let only)?: return only == cookie ? nil : .one(only)
            case .many(var set)?:
                set.remove(cookie)
                if set.count == 1, let last = set.first { return .one(last) }
                return set.isEmpty ? nil : .many(set)
            }
        }
    }

    private let storage = Mutex(Storage())

    public init() {}

    public enum InsertError: Error, Equatable { case alreadyRegistered }

    /// Registers an endpoint; a cookie can be registered once.
    public func insert(_ endpoint: Endpoint) throws(InsertError) {
        try storage.withLock { (s) throws(InsertError) in
            guard s.byCookie[endpoint.cookie] == nil else { throw .alreadyRegistered }
            s.byCookie[endpoint.cookie] = Slot(endpoint)
            if let reqid = endpoint.reqid {
                s.byReqid[reqid] = .adding(endpoint.cookie, to: s.byReqid.removeValue(forKey: reqid))
            }
            s.reindexPins(cookie: endpoint.cookie, old: nil, new: endpoint.pinned)
            s.reindexClosing(cookie: endpoint.cookie, endpoint)
        }
    }

    /// The endpoints in their close grace period.
    public var closingCookies: [UInt64] { storage.withLock { Array($0.closing) } }

    /// The endpoint pinned to the inbound SA `spi`.
    public func endpoint(pinnedInboundSPI spi: UInt32) -> Endpoint? {
        storage.withLock { s in s.byPinnedSPI[spi].flatMap { s.byCookie[$0]?.endpoint } }
    }

    /// The endpoints waiting for an SA with SPI `spi` (a rekey's, not in the kernel yet when it was pinned).
    public func endpoints(pendingSPI spi: UInt32) -> [Endpoint] {
        storage.withLock { s in (s.byPendingSPI[spi] ?? []).compactMap { s.byCookie[$0]?.endpoint } }
    }

    /// The endpoints waiting for a rekey's SA, by cookie.
    public var cookiesWithPendingPins: Set<UInt64> { storage.withLock { Set($0.byPendingSPI.values.joined()) } }

    public func endpoint(cookie: UInt64) -> Endpoint? { storage.withLock { $0.byCookie[cookie]?.endpoint } }

    public func contains(cookie: UInt64) -> Bool { storage.withLock { $0.byCookie[cookie] != nil } }

    /// What `body` reads from an endpoint, without copying the endpoint out; nil if the cookie is unknown.
    public func read<T>(cookie: UInt64, _ body: (borrowing Endpoint) -> T) -> T? {
        storage.withLock { s in
            guard let slot = s.byCookie[cookie] else { return nil }
            return body(slot.endpoint)
        }
    }

    /// The endpoints whose policies carry `reqid` (a listener and its accepted sockets share one).
    public func endpoints(reqid: UInt32) -> [Endpoint] {
        storage.withLock { s in (s.byReqid[reqid]?.cookies ?? []).compactMap { s.byCookie[$0]?.endpoint } }
    }

    public var all: [Endpoint] { storage.withLock { $0.byCookie.values.map(\.endpoint) } }
    /// Every endpoint's cookie, in no order (8 bytes each, where ``all`` copies every endpoint).
    public var cookies: [UInt64] { storage.withLock { Array($0.byCookie.keys) } }
    public var count: Int { storage.withLock { $0.byCookie.count } }

    /// Whether an endpoint satisfies `predicate` (read in place, stopping at the first).
    public func contains(where predicate: (borrowing Endpoint) -> Bool) -> Bool {
        storage.withLock { s in
            for slot in s.byCookie.values where predicate(slot.endpoint) { return true }
            return false
        }
    }

    /// Changes an endpoint in place; returns what `body` returns, or nil if the cookie is unknown.
    @discardableResult
    public func update<T>(cookie: UInt64, _ body: (inout Endpoint) -> T) -> T? {
        storage.withLock { s in
            guard let slot = s.byCookie[cookie] else { return nil }
            let oldReqid = slot.endpoint.reqid
            let oldPins = slot.endpoint.pinned
            let result = body(&slot.endpoint)
            let newReqid = slot.endpoint.reqid
            if oldPins != slot.endpoint.pinned {
                s.reindexPins(cookie: cookie, old: oldPins, new: slot.endpoint.pinned)
            }
            s.reindexClosing(cookie: cookie, slot.endpoint)
            if oldReqid != newReqid {
                if let oldReqid {
                    s.byReqid[oldReqid] = .removing(cookie, from: s.byReqid.removeValue(forKey: oldReqid))
                }
                if let newReqid {
                    s.byReqid[newReqid] = .adding(cookie, to: s.byReqid.removeValue(forKey: newReqid))
                }
            }
            return result
        }
    }

    /// Feeds an event to an endpoint's state machine; returns the actions (empty for an unknown cookie).
    public func handle(_ event: EndpointEvent, cookie: UInt64) -> [EndpointAction] {
        update(cookie: cookie) { $0.handle(event) } ?? []
    }

    /// Removes an endpoint; returns it.
    @discardableResult
    public func remove(cookie: UInt64) -> Endpoint? {
        storage.withLock { s in
            guard let endpoint = s.byCookie.removeValue(forKey: cookie)?.endpoint else { return nil }
            s.reindexPins(cookie: cookie, old: endpoint.pinned, new: nil)
            s.reindexClosing(cookie: cookie, nil)
            if let reqid = endpoint.reqid {
                s.byReqid[reqid] = .removing(cookie, from: s.byReqid.removeValue(forKey: reqid))
            }
            return endpoint
        }
    }

    /// How many endpoints still use `reqid`.
    public func users(of reqid: UInt32) -> Int { storage.withLock { $0.byReqid[reqid]?.count ?? 0 } }
}
