import VICI

/// How a keying backend authenticated a peer: the machine round (the IKE identity) and, when one ran, the
/// user round. Reported with every ``KeyedProtection``; the identity map uses it to refuse identities that were
/// only claimed, never proven (a group key).
public struct PeerAuthentication: Hashable, Sendable, CustomStringConvertible {
    /// What proved the peer machine's IKE identity.
    public enum Machine: String, Hashable, Sendable, CaseIterable {
        /// A signature with a certificate that chains to one of this configuration's authorities and names the
        /// identity (subject or subjectAltName).
        case certificate
        /// A pre-shared key held by this peer and us only (`peer-psk`): the identity is proven, as far as the key
        /// is kept by those two.
        case peerKey = "peer-key"
        /// A pre-shared key every member of a group holds (`psk`): it proves membership of the group, NOT the
        /// identity. Any holder can claim any identity and authenticate.
        case groupKey = "group-key"
        /// No IKE: SAs keyed by hand for this peer (``StaticKeyBackend``); the identity is what the key file says.
        case manualKeys = "manual-keys"
    }

    /// What proved the peer user (the second authentication round).
    public enum User: String, Hashable, Sendable {
        /// EAP (EAP-MD5 with the user's own secret): the user is proven, whatever proved the machine.
        case eap
    }

    public var machine: Machine
    /// nil when no second round ran.
    public var user: User?

    public init(machine: Machine, user: User? = nil) {
        self.machine = machine
        self.user = user
    }

    public var description: String { user.map { "\(machine.rawValue)+\($0.rawValue)" } ?? machine.rawValue }
}
