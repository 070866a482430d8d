/// How an endpoint's protection ended up, as far as the kernel and the keying daemon have told us.
public struct ProtectionInfo: Hashable, Sendable {
    /// The IKE SA and CHILD SA unique ids charon reports (`uniqueid`), for the IPSEC2 query form.
    public var ikeSAID: UInt64?
    public var childSAID: UInt64?
    /// The authenticated peer identity (IKE `remote-id`) and, after a second round, the peer user (`remote-eap-id`).
    public var peerIdentity: String?
    public var peerUserIdentity: String?
    /// Algorithms of the CHILD SA, in charon's words (`AES_GCM_16`, `HMAC_SHA2_256_128`).
    public var encryptionAlgorithm: String?
    public var integrityAlgorithm: String?

    public init(
        ikeSAID: UInt64? = nil, childSAID: UInt64? = nil, peerIdentity: String? = nil,
        peerUserIdentity: String? = nil, encryptionAlgorithm: String? = nil, integrityAlgorithm: String? = nil
    ) {
        self.ikeSAID = ikeSAID
        self.childSAID = childSAID
        self.peerIdentity = peerIdentity
        self.peerUserIdentity = peerUserIdentity
        self.encryptionAlgorithm = encryptionAlgorithm
        self.integrityAlgorithm = integrityAlgorithm
    }
}

/// Why an endpoint could not be secured.
public enum EndpointFailure: Hashable, Sendable, CustomStringConvertible {
    /// No SA within the bound.
    case negotiationTimedOut(after: Duration)
    /// The peer authenticated as someone other than the peer target name.
    case peerNameMismatch(expected: String, detail: String)
    /// The keying daemon refused or failed (its own words).
    case negotiationFailed(String)
    /// No keying daemon could be reached or started.
    case keyingUnavailable(String)
    /// The SAs were negotiated without encryption although encryption is guaranteed.
    case encryptionNotNegotiated(String)

    public var description: String {
        switch self {
        case .negotiationTimedOut(let bound): "no IPsec SA within \(bound)"
        case .peerNameMismatch(let expected, let detail): "peer is not \(expected): \(detail)"
        case .negotiationFailed(let text): "negotiation failed: \(text)"
        case .keyingUnavailable(let text): "keying daemon unavailable: \(text)"
        case .encryptionNotNegotiated(let text): "encryption required but not negotiated: \(text)"
        }
    }
}

/// The life of one secured endpoint: requested → negotiating → secured / failed(reason) → closed, plus
/// `insecure` when `ALLOW_INSECURE` let it fall back to clear text after a failed negotiation, and `closing` for
/// the grace period of a socket closed without a release (its kernel socket may still send its last data and
/// its FIN under the SAs).
public indirect enum EndpointState: Hashable, Sendable, CustomStringConvertible {
    case requested
    case negotiating
    case secured(ProtectionInfo)
    case failed(EndpointFailure)
    case insecure(after: EndpointFailure)
    /// The library refused the socket for good (peers contest its flow; a setting would let another socket
    /// share its port): it is never reported secured again, whatever SAs appear.
    case refused(String)
    /// No descriptor names the socket any more; its resources go at `until` unless a
    /// descriptor naming it turns up (a `dup`). `previous` is the state it had, and keeps following events.
    case closing(until: ContinuousClock.Instant, previous: EndpointState)
    case closed

    public var description: String {
        switch self {
        case .requested: "requested"
        case .negotiating: "negotiating"
        case .secured(let info): "secured (peer \(info.peerIdentity ?? "?"))"
        case .failed(let failure): "failed: \(failure)"
        case .insecure(let failure): "insecure after \(failure)"
        case .refused(let reason): "refused: \(reason)"
        case .closing(_, let previous): "closing (was \(previous))"
        case .closed: "closed"
        }
    }

    /// Whether the socket is gone and the endpoint in its close grace period.
    public var isClosing: Bool { if case .closing = self { true } else { false } }

    /// The state apart from a closing grace period: what the socket's traffic still has.
    public var settled: EndpointState {
        if case .closing(_, let previous) = self { previous } else { self }
    }
}

/// What happened to an endpoint (from the kernel's XFRM events, the keying daemon's events, or the library).
public enum EndpointEvent: Hashable, Sendable {
    /// The library asked the keying daemon to negotiate, or the kernel raised an ACQUIRE for the endpoint.
    case negotiationStarted
    /// A CHILD SA protecting the endpoint is up (also after a rekey).
    case childUp(ProtectionInfo)
    /// The CHILD SA went down or its SAs expired hard.
    case childDown
    case failed(EndpointFailure)
    /// `ALLOW_INSECURE`: after a failure the endpoint now sends in clear.
    case fellBackToClear
    /// The library refuses the socket for good (see ``EndpointState/refused(_:)``).
    case refused(String)
    /// The sweep found no descriptor naming the socket at `at`: closed without a release.
    /// With `grace` zero the endpoint closes at once; otherwise it is `closing` until `at + grace`.
    case socketGone(at: ContinuousClock.Instant, grace: Duration)
    /// A descriptor naming a closing socket turned up (the one registered was closed after a `dup`).
    case socketFound
    /// The sweep's clock: a closing endpoint whose grace period ended at `now` closes.
    case tick(now: ContinuousClock.Instant)
    /// Released by the application, or the engine shuts down.
    case closed
}

/// What the owner of the machine must do after an event.
public enum EndpointAction: Hashable, Sendable {
    /// What an inspector sees changed: publish the endpoint snapshot.
    case publish
    /// Release the reqid, the keying configs and the SAs the endpoint held (once, when closed). With
    /// `coverClosedFlow` (it was secured) its TCP flow stays covered while the kernel may still answer for it
    /// (`TIME_WAIT`), so nothing of it ever leaves in clear.
    case releaseResources(coverClosedFlow: Bool)
}

/// The pure state machine of one endpoint: events in, actions out, no I/O. It holds both dimensions of the
/// socket's life: its protection (``state``) and what it turned out to be (``role``).
public struct EndpointStateMachine: Hashable, Sendable {
    public private(set) var state: EndpointState = .requested
    /// What the socket turned out to be: changed only through ``settle(as:)``.
    public private(set) var role: EndpointRole
    /// Whether clear text is an allowed outcome (the `ALLOW_INSECURE` setting).
    public let allowInsecure: Bool

    /// A socket secured by the application (`undetermined` until it listens or connects), accepted from a
    /// listener (`accepted`), or adopted with a connection it already has (`initiator`).
    public init(allowInsecure: Bool, role: EndpointRole = .undetermined) {
        self.allowInsecure = allowInsecure
        self.role = role
    }

    init(state: EndpointState, role: EndpointRole, allowInsecure: Bool) {
        self.state = state
        self.role = role
        self.allowInsecure = allowInsecure
    }

    /// The socket turned out to be `newRole`. An undetermined socket becomes an initiator or a responder, and a
    /// responder (a UDP socket answering on its port) that sends to peers of its own choosing an initiator.
    /// Nothing else changes: an accepted connection stays one, an initiator never starts answering peers, a
    /// responder keeps its port, a closed endpoint stays what it was. Returns whether the role changed (the
    /// caller that changed it acts on it, once).
    public mutating func settle(as newRole: EndpointRole) -> Bool {
        if case .closed = state { return false }
        switch (role, newRole) {
        case (.undetermined, .initiator), (.undetermined, .responder), (.responder, .initiator):
            role = newRole
            return true
        default:
            return false
        }
    }

    public mutating func handle(_ event: EndpointEvent) -> [EndpointAction] {
        switch (state, event) {
        case (.closing(let until, let previous), _):
            return handleClosing(event, until: until, previous: previous)
        case (.closed, _):
            return []
        case (_, .closed):
            return close(from: state)
        case (_, .socketGone(let at, let grace)):
            guard grace > .zero else { return close(from: state) }
            state = .closing(until: at.advanced(by: grace), previous: state)
            return [.publish]
        case (_, .socketFound), (_, .tick):
            return []
        case (.refused, _):
            return [] // final until the socket closes
        case (_, .refused(let reason)):
            state = .refused(reason)
            return [.publish]
        case (.requested, .negotiationStarted), (.failed, .negotiationStarted):
            state = .negotiating
            return []
        case (.negotiating, .negotiationStarted), (.secured, .negotiationStarted), (.insecure, .negotiationStarted):
            return []
        case (_, .childUp(let info)):
            if case .insecure = state { return [] } // a clear connection stays clear for its whole life
            state = .secured(info)
            return [.publish]
        case (.secured, .childDown):
            state = .negotiating
            return [.publish]
        case (_, .childDown):
            return []
        case (.secured, .failed):
            return [] // a late failure report for a connection that is already protected
        case (_, .failed(let failure)):
            if case .insecure = state { return [] }
            state = .failed(failure)
            return [.publish]
        case (.failed(let failure), .fellBackToClear) where allowInsecure:
            state = .insecure(after: failure)
            return [.publish]
        case (_, .fellBackToClear):
            return []
        }
    }

    /// A closing endpoint: closes when released or when its grace period ends, returns to what it was when its
    /// socket turns up again, and otherwise lets `previous` follow the event (a rekey during the grace period).
    private mutating func handleClosing(_ event: EndpointEvent, until: ContinuousClock.Instant, previous: EndpointState)
        -> [EndpointAction]
    {
        switch event {
        case .closed:
            return close(from: previous)
        case .tick(let now):
            return now >= until ? close(from: previous) : []
        case .socketFound:
            state = previous
            return [.publish]
        case .socketGone:
            return []
        default:
            var inner = EndpointStateMachine(state: previous, role: role, allowInsecure: allowInsecure)
            let actions = inner.handle(event)
            state = .closing(until: until, previous: inner.state)
            return actions
        }
    }

    private mutating func close(from previous: EndpointState) -> [EndpointAction] {
        let secured = if case .secured = previous { true } else { false }
        state = .closed
        return [.publish, .releaseResources(coverClosedFlow: secured)]
    }
}
