import DirectoryNames

/// What IPsec authenticated about a peer: the input of ``IdentityMap/resolve(_:)``.
///
/// Fill in what the keying daemon reports for the IKE SA (charon's `remote-id`, the peer certificate's subject and
/// subjectAltNames, and `remote-eap-id`/`remote-xauth-id` when a second authentication round ran), and how the peer
/// machine proved its identity. As on Windows, where `WSAImpersonateSocketPeer` uses the peer's user token when one
/// exists and the machine token otherwise, a peer that authenticated a user in the second round is that user.
public struct PeerIdentity: Hashable, Sendable, CustomStringConvertible {
    /// How the peer machine proved ``ikeIdentity``.
    public enum Authentication: String, Hashable, Sendable, CaseIterable {
        /// A certificate from a trusted authority that names the identity.
        case certificate
        /// A pre-shared key held by this peer (and us) only.
        case peerKey = "peer-key"
        /// A pre-shared key every member of a group holds: it proves membership, not the identity, which any member
        /// could claim. Mapped only by `id` rules marked `accept-group-key` (see ``IdentityMap``).
        case groupKey = "group-key"
        /// SAs keyed by hand for this peer, no IKE.
        case manualKeys = "manual-keys"
    }

    /// The peer's IKE identity as authenticated: an FQDN, an email address, an IP address, a DN, a key id.
    public var ikeIdentity: String?
    /// The subject DN of the peer's certificate, as its structure (RDN by RDN, attribute by attribute), as the
    /// certificate holds it: never text, which a value holding `, O=…` could make look like more RDNs.
    public var certificateSubject: RDNSequence?
    /// The subjectAltNames of the peer's certificate that are text (DNS names, email addresses, IP addresses,
    /// URIs, registered ids).
    public var subjectAltNames: [String]
    /// The subjectAltNames of the peer's certificate that are directory names (directoryName), as structures.
    public var directoryNames: [RDNSequence]
    /// The user identity from the second authentication round (EAP or XAuth), nil when there was none.
    public var user: String?
    /// How the machine round authenticated; nil when the caller does not say (treated as proven, as before this
    /// field existed: only ``Authentication/groupKey`` is restricted).
    public var authentication: Authentication?
    /// The peer authenticated with a certificate, but which one is not known for sure (charon's cache holds
    /// certificates for its identity that disagree, or none any more): its subject and subjectAltNames are
    /// unknown, never guessed, and only ``ikeIdentity`` can match a rule.
    public var certificateUnknown: Bool {
        authentication == .certificate && certificateSubject == nil && subjectAltNames.isEmpty
            && directoryNames.isEmpty
    }

    public init(
        ikeIdentity: String? = nil, certificateSubject: RDNSequence? = nil, subjectAltNames: [String] = [],
        directoryNames: [RDNSequence] = [], user: String? = nil, authentication: Authentication? = nil
    ) {
        self.ikeIdentity = ikeIdentity
        self.certificateSubject = certificateSubject
        self.subjectAltNames = subjectAltNames
        self.directoryNames = directoryNames
        self.user = user
        self.authentication = authentication
    }

    /// This identity without the second round's user: what the peer machine is (a machine token's identity).
    public var machine: PeerIdentity {
        var machine = self
        machine.user = nil
        return machine
    }

    public var description: String {
        var parts: [String] = []
        if let user { parts.append("user \(user)") }
        if let ikeIdentity { parts.append("id \(ikeIdentity)") }
        if let certificateSubject { parts.append("subject \"\(certificateSubject)\"") }
        for san in subjectAltNames { parts.append("san \(san)") }
        for name in directoryNames { parts.append("san dirName \"\(name)\"") }
        if parts.isEmpty { parts.append("(no identity)") }
        if let authentication { parts.append("by \(authentication.rawValue)") }
        if certificateUnknown { parts.append("certificate not known for sure: its identity alone") }
        return parts.joined(separator: ", ")
    }
}
