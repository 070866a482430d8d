import XFRM

/// What the secure-socket layer asks of a key manager. Two implementations: ``StrongSwanBackend`` (charon
/// over VICI, the default) and ``StaticKeyBackend`` (keys from a file, for deterministic tests and hosts
/// without IKE).
///
/// The contract rests on the kernel facts in `kernel-notes.md`: a socket's templates carry a reqid that is
/// ours alone; the SAs the backend installs (or makes charon install) must carry that same reqid, in
/// transport mode, for the socket's addresses.
public protocol KeyingBackend: AnyObject, Sendable {
    /// A short name for logs and inspection (`strongswan`, `static`).
    var name: String { get }

    /// Makes the backend ready to answer for `request.reqid` as a responder (a peer may start IKE towards us
    /// at any time after this returns). Returns what must be released later.
    func prepare(_ request: KeyingRequest) throws(KeyingError) -> KeyingRegistration

    /// Negotiates (or installs) the SAs for `request` towards `peer` now and waits until they are in the
    /// kernel, at most `timeout` seconds.
    func negotiate(_ request: KeyingRequest, local: XFRMAddress?, peer: XFRMAddress, peerPort: UInt16,
                   timeout: Double) throws(KeyingError) -> KeyedProtection

    /// What the backend knows about the SAs protecting traffic with `peer` under `reqid` (identities, ids,
    /// algorithms), or nil.
    func protection(reqid: UInt32, peer: XFRMAddress) -> KeyedProtection?

    /// Undoes ``prepare(_:)`` and any negotiation for the registration: configs unloaded, SAs deleted.
    func release(_ registration: KeyingRegistration)
}

/// One endpoint's keying needs.
public struct KeyingRequest: Hashable, Sendable {
    /// The reqid in the socket's templates.
    public var reqid: UInt32
    public var family: XFRMAddressFamily
    /// The transport protocol and local port the socket uses (0 when not yet bound), to narrow traffic selectors.
    public var transportProtocol: XFRMUpperProtocol
    public var localPort: UInt16
    /// The identity the peer must prove (the peer target name), or nil for any authenticated peer.
    public var requiredPeerIdentity: String?
    /// Whether a name mismatch may be tolerated (the peer is still authenticated, the mismatch recorded).
    public var peerIdentityOptional: Bool
    /// Only proposals that encrypt (never integrity-only ESP).
    public var requireEncryption: Bool
    /// A second authentication round (EAP) as this user, so the peer learns who we are.
    public var userName: String?
    public var userPassword: String?

    public init(reqid: UInt32, family: XFRMAddressFamily, transportProtocol: XFRMUpperProtocol = .any,
                localPort: UInt16 = 0, requiredPeerIdentity: String? = nil, peerIdentityOptional: Bool = false,
                requireEncryption: Bool = true, userName: String? = nil, userPassword: String? = nil) {
        self.reqid = reqid
        self.family = family
        self.transportProtocol = transportProtocol
        self.localPort = localPort
        self.requiredPeerIdentity = requiredPeerIdentity
        self.peerIdentityOptional = peerIdentityOptional
        self.requireEncryption = requireEncryption
        self.userName = userName
        self.userPassword = userPassword
    }
}

/// What a backend set up for one request, to release later.
public struct KeyingRegistration: Hashable, Sendable {
    public var reqid: UInt32
    /// Backend-specific names (charon conn names, static key entries).
    public var names: [String]
    public init(reqid: UInt32, names: [String]) {
        self.reqid = reqid
        self.names = names
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

    public init(ikeSAID: UInt64? = nil, childSAID: UInt64? = nil, localIdentity: String? = nil,
                remoteIdentity: String? = nil, remoteUserIdentity: String? = nil, encryptionAlgorithm: String? = nil,
                integrityAlgorithm: String? = nil, inboundSPI: UInt32? = nil, outboundSPI: UInt32? = nil) {
        self.ikeSAID = ikeSAID
        self.childSAID = childSAID
        self.localIdentity = localIdentity
        self.remoteIdentity = remoteIdentity
        self.remoteUserIdentity = remoteUserIdentity
        self.encryptionAlgorithm = encryptionAlgorithm
        self.integrityAlgorithm = integrityAlgorithm
        self.inboundSPI = inboundSPI
        self.outboundSPI = outboundSPI
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

    public init(_ code: Code, _ detail: String) {
        self.code = code
        self.detail = detail
    }

    public var description: String { "\(code): \(detail)" }
}
