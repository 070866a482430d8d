import Foundation
import IPAddressing
import VICI
import XFRM

/// What the secure-socket layer asks of a key manager. Two implementations: ``StrongSwanBackend`` (charon
/// over VICI, the default) and ``StaticKeyBackend`` (keys from a file, for deterministic tests and hosts
/// without IKE).
///
/// The contract is the binding model (SecureSocket documentation, "Binding"): SAs are negotiated for one
/// ``KeyedFlow`` at a time, carry the reqid of the socket's templates, and have the flow as their kernel
/// selector, so that no other flow's packets can use them (the kernel checks an SA's selector on output and
/// on input). A socket that initiates has a reqid of its own that is never offered to a responder; a
/// listener's reqid is offered only for flows to its own port.
public protocol KeyingBackend: AnyObject, Sendable {
    /// A short name for logs and inspection (`strongswan`, `static`).
    var name: String { get }

    /// Makes the backend answer as a responder for flows of `request.transportProtocol` to `localPort` on
    /// `localAddress` (nil or the wildcard address: any of this host's), with SAs under `request.reqid` (a
    /// listening TCP socket or a bound, unconnected UDP socket). Never called for a socket that initiates.
    /// Returns what must be released later.
    func listen(_ request: KeyingRequest, localPort: UInt16, localAddress: IPAddress?) throws(KeyingError)
        -> KeyingRegistration

    /// Negotiates (or installs) SAs for exactly `flow` under `request.reqid`, with a peer that proved
    /// `request.requiredPeerIdentity` when one is set, and waits until they are in the kernel (bounded by
    /// `timeout`).
    func negotiate(_ request: KeyingRequest, flow: KeyedFlow, timeout: Duration) throws(KeyingError) -> Negotiated

    /// What the backend knows about the SAs whose inbound SA has `inboundSPI` (from `peer`): the identities
    /// its IKE SA authenticated, ids and algorithms; nil if it knows of none.
    func protection(inboundSPI: UInt32, peer: IPAddress) -> KeyedProtection?

    /// The SA pair (SPIs) and identities the backend knows for exactly `flow`, from the keying daemon's events;
    /// nil when it knows none (the caller then reads the kernel). A hint: the caller checks it in the kernel.
    func protection(flow: KeyedFlow) -> KeyedProtection?

    /// Undoes ``listen(_:localPort:localAddress:)`` or a negotiation: its own CHILD_SAs and configs go, never an IKE SA
    /// that other connections use. With `waiting` false the backend does not wait for the peer to confirm a
    /// CHILD_SA's deletion (a socket that is gone: nothing negotiates its flow again on this registration).
    func release(_ registration: KeyingRegistration, waiting: Bool)

    /// Releases registrations whose sockets are all gone, together (a sweep's harvest: a departed client's
    /// connections): a backend may end an IKE SA that carries nothing but their CHILD_SAs in one exchange, instead
    /// of one exchange per CHILD_SA. Any other is released as ``release(_:waiting:)`` without waiting.
    func release(_ registrations: [KeyingRegistration])

    /// Removes the CHILD_SA whose inbound SA has `inboundSPI` (an accepted connection's own SAs, once it is
    /// closed); other CHILD_SAs with the same peer stay.
    func releaseChild(inboundSPI: UInt32, peer: IPAddress)

    /// Removes what a process that is gone (killed, crashed) left in a shared keying daemon: its configs and
    /// secrets, and the CHILD_SAs under its reqids; IKE SAs other processes use stay.
    func reclaim(deadProcess pid: Int32, reqids: [ClosedRange<UInt32>])

    /// Stops what the backend started (a private keying daemon).
    func shutdown()

    /// Calls `handler` for each ``KeyingEvent`` from now on (on the backend's own thread or task: keep it short).
    func observe(_ handler: @escaping @Sendable (KeyingEvent) -> Void)

    /// Binds a connection a listener with `reqid` accepted to the CHILD_SA that is its own, by what the keying
    /// daemon negotiated (see the SecureSocket documentation, "Binding"): from now on only that peer's children
    /// may carry the flow, and others that cover it are refused.
    func bindAccepted(_ flow: KeyedFlow, reqid: UInt32) -> AcceptedBinding

    /// The accepted connection is gone: its flow is nobody's any more.
    func unbindAccepted(_ flow: KeyedFlow)

    /// Terminates every CHILD_SA peers made on `reqid` (a UDP socket that answered peers starts initiating).
    func dropPeerChildren(reqid: UInt32)
}

/// What the keying tells the sockets above, as it happens.
public enum KeyingEvent: Sendable {
    /// A CHILD_SA was replaced by a new one of the same IKE SA (a rekey): a socket pinned to `oldInboundSPI`
    /// moves to the replacement's SAs.
    case rekeyed(oldInboundSPI: UInt32, replacement: KeyedProtection, reqid: UInt32, flow: KeyedFlow?)
    /// A peer made a CHILD_SA on a listener's reqid; `flow` when it names exactly one (its connection may be
    /// accepted soon); `protection` has its SPIs and the peer's identity.
    case peerChild(reqid: UInt32, flow: KeyedFlow?, protection: KeyedProtection)
    /// A peer's CHILD_SA on a listener's reqid went away (deleted, expired, refused).
    case peerChildGone(reqid: UInt32, flow: KeyedFlow?)
    /// A CHILD_SA on an initiator's reqid came up (charon's own for that socket: its first, or one made again after
    /// a reauthentication): a socket pinned to an older pair of that flow moves to it.
    case ownChild(reqid: UInt32, flow: KeyedFlow?, protection: KeyedProtection)
}

/// The CHILD_SA an accepted connection is bound to.
public enum AcceptedBinding: Hashable, Sendable {
    /// Its own SA pair (SPIs) and the peer that negotiated it.
    case pair(KeyedProtection)
    /// The keying knows no child for the flow (static keys, or an event not seen): the kernel decides alone.
    case unknown
    /// Children of several peers cover the flow: it is bound to none of them.
    case contested([String])
}

/// One transport flow: the unit SAs are negotiated for. `local` may be the wildcard address when the socket
/// is bound to it and has not connected yet (the keying daemon then uses the address it reaches the peer from).
public struct KeyedFlow: Hashable, Sendable, CustomStringConvertible {
    public var transportProtocol: XFRMUpperProtocol
    public var local: IPAddress
    public var localPort: UInt16
    public var remote: IPAddress
    public var remotePort: UInt16

    public init(
        transportProtocol: XFRMUpperProtocol, local: IPAddress, localPort: UInt16, remote: IPAddress,
        remotePort: UInt16
    ) {
        self.transportProtocol = transportProtocol
        self.local = local
        self.localPort = localPort
        self.remote = remote
        self.remotePort = remotePort
    }

    /// The flow between two endpoints.
    public init(_ transportProtocol: XFRMUpperProtocol, local: IPEndpoint, remote: IPEndpoint) {
        self.init(
            transportProtocol: transportProtocol, local: local.address, localPort: local.port, remote: remote.address,
            remotePort: remote.port)
    }

    public var family: IPAddressFamily { remote.family }

    /// The kernel selector of exactly this flow, outbound (local → remote) or inbound.
    public func selector(outbound: Bool) -> XFRMSelector {
        outbound
            ? .host(local, remote, protocol: transportProtocol, sourcePort: localPort, destinationPort: remotePort)
            : .host(remote, local, protocol: transportProtocol, sourcePort: remotePort, destinationPort: localPort)
    }

    /// Whether an SA selector covers this flow in one direction (the kernel's own test).
    public func isCovered(by selector: XFRMSelector, outbound: Bool) -> Bool {
        outbound
            ? selector.covers(
                source: local, sourcePort: localPort, destination: remote, destinationPort: remotePort,
                protocol: transportProtocol)
            : selector.covers(
                source: remote, sourcePort: remotePort, destination: local, destinationPort: localPort,
                protocol: transportProtocol)
    }

    public var description: String {
        let name = transportProtocol == .tcp ? "tcp" : transportProtocol == .udp ? "udp" : "\(transportProtocol)"
        let show = { (address: IPAddress, port: UInt16) in
            address.family == .inet6 ? "[\(address)]:\(port)" : "\(address):\(port)"
        }
        return "\(name) \(show(local, localPort)) -> \(show(remote, remotePort))"
    }
}

/// A negotiation's outcome: what protects the flow, and what to release when the socket is done.
public struct Negotiated: Hashable, Sendable {
    public var protection: KeyedProtection
    public var registration: KeyingRegistration
    public init(protection: KeyedProtection, registration: KeyingRegistration) {
        self.protection = protection
        self.registration = registration
    }
}

/// One endpoint's keying needs.
public struct KeyingRequest: Hashable, Sendable {
    /// The reqid in the socket's templates.
    public var reqid: UInt32
    public var family: IPAddressFamily
    /// The socket's transport protocol.
    public var transportProtocol: XFRMUpperProtocol
    /// The identity the peer must prove (the peer target name), or nil for any authenticated peer.
    public var requiredPeerIdentity: String?
    /// Whether a name mismatch may be tolerated (the peer is still authenticated, the mismatch recorded).
    public var peerIdentityOptional: Bool
    /// Only proposals that encrypt (never integrity-only ESP).
    public var requireEncryption: Bool
    /// A second authentication round (EAP) as this user, so the peer learns who we are.
    public var userName: String?
    public var userPassword: String?

    public init(
        reqid: UInt32, family: IPAddressFamily, transportProtocol: XFRMUpperProtocol = .any,
        requiredPeerIdentity: String? = nil, peerIdentityOptional: Bool = false,
        requireEncryption: Bool = true, userName: String? = nil, userPassword: String? = nil
    ) {
        self.reqid = reqid
        self.family = family
        self.transportProtocol = transportProtocol
        self.requiredPeerIdentity = requiredPeerIdentity
        self.peerIdentityOptional = peerIdentityOptional
        self.requireEncryption = requireEncryption
        self.userName = userName
        self.userPassword = userPassword
    }
}

/// What a backend set up for one request, to release later.
public struct KeyingRegistration: Hashable, Sendable {
    /// What a backend installed for a registration. The backend names its entries from this and the reqid, so a
    /// registration stores no names (it is kept for every open connection).
    public enum Entry: Hashable, Sendable {
        /// One negotiation of an initiator: its conn, its CHILD config and, with a user, that user's secret, all
        /// named by the negotiation's number. On release every CHILD_SA of that config is terminated, the ones a
        /// rekey made included.
        case negotiation(number: Int, userSecret: Bool)
        /// A listener's CHILD config in the shared responder conn.
        case responder
        /// Entries kept under the reqid itself (static keys).
        case installed
    }

    public var reqid: UInt32
    public var entry: Entry

    public init(reqid: UInt32, entry: Entry) {
        self.reqid = reqid
        self.entry = entry
    }

    /// Whether it is an initiator's negotiation (its CHILD_SAs are the flow's own).
    public var isNegotiation: Bool {
        if case .negotiation = entry { true } else { false }
    }
}

/// The protection a backend negotiated or knows of.
public struct KeyedProtection: Hashable, Sendable {
    public var ikeSAID: UInt64?
    public var childSAID: UInt64?
    public var localIdentity: String?
    public var remoteIdentity: String?
    public var remoteUserIdentity: String?
    public var encryptionAlgorithm: String?
    public var integrityAlgorithm: String?
    public var inboundSPI: UInt32?
    public var outboundSPI: UInt32?
    /// This host's address on the SA pair (the inbound SA's destination), when the keying daemon says: a flow
    /// whose socket is bound to the wildcard address finds its inbound SA by it (one lookup instead of a dump).
    public var localAddress: IPAddress?
    /// How the peer proved ``remoteIdentity`` (and ``remoteUserIdentity``); nil when the backend cannot say.
    public var authentication: PeerAuthentication?
    /// The subject and subjectAltNames of the certificate that proved ``remoteIdentity``; nil when the peer
    /// did not authenticate with a certificate or when which certificate it used is not known for sure.
    public var remoteCertificate: CertificateIdentity?
    /// When the IKE SA that carries it was established (when its peer authenticated), as the keying daemon
    /// reported it (to the second); nil when unknown. The certificate that decides is one valid then.
    public var authenticatedAt: Date?

    public init(
        ikeSAID: UInt64? = nil, childSAID: UInt64? = nil, localIdentity: String? = nil,
        remoteIdentity: String? = nil, remoteUserIdentity: String? = nil, encryptionAlgorithm: String? = nil,
        integrityAlgorithm: String? = nil, inboundSPI: UInt32? = nil, outboundSPI: UInt32? = nil,
        authentication: PeerAuthentication? = nil, remoteCertificate: CertificateIdentity? = nil,
        localAddress: IPAddress? = nil
    ) {
        self.localAddress = localAddress
        self.ikeSAID = ikeSAID
        self.childSAID = childSAID
        self.localIdentity = localIdentity
        self.remoteIdentity = remoteIdentity
        self.remoteUserIdentity = remoteUserIdentity
        self.encryptionAlgorithm = encryptionAlgorithm
        self.integrityAlgorithm = integrityAlgorithm
        self.inboundSPI = inboundSPI
        self.outboundSPI = outboundSPI
        self.authentication = authentication
        self.remoteCertificate = remoteCertificate
    }
}

/// A keying failure.
public struct KeyingError: Error, Hashable, CustomStringConvertible, Sendable {
    public enum Code: Hashable, Sendable {
        /// No daemon reachable / could not start one / no keys for that peer.
        case unavailable
        /// The peer did not prove the required identity (or we could not prove ours).
        case authenticationFailed
        /// No proposal both sides accept (e.g. encryption required, peer offers integrity only).
        case noProposalChosen
        /// No SA within the bound.
        case timedOut
        /// The daemon refused the request.
        case rejected
    }

    public var code: Code
    public var detail: String
    /// The error that caused this one (a `VICIError`, a certificate parser's error), kept as a value.
    public var underlying: (any Error & Sendable)?

    public init(_ code: Code, _ detail: String, underlying: (any Error & Sendable)? = nil) {
        self.code = code
        self.detail = detail
        self.underlying = underlying
    }

    public var description: String { "\(code): \(explanation)" }

    /// The detail and, after it, what the underlying error says: for people (logs, failure reasons).
    public var explanation: String { underlying.map { "\(detail): \($0)" } ?? detail }

    /// Equal code and detail (the underlying error is not compared).
    public static func == (lhs: KeyingError, rhs: KeyingError) -> Bool {
        lhs.code == rhs.code && lhs.detail == rhs.detail
    }
    public func hash(into hasher: inout Hasher) {
        hasher.combine(code)
        hasher.combine(detail)
    }
}

extension KeyingBackend {
    /// ``release(_:waiting:)``, waiting for the peer (the registration's flow may be negotiated again at once).
    public func release(_ registration: KeyingRegistration) { release(registration, waiting: true) }

    public func release(_ registrations: [KeyingRegistration]) {
        for registration in registrations { release(registration, waiting: false) }
    }
}
