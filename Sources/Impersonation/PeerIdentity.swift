/// What IPsec authenticated about a peer: the input of ``IdentityMap/resolve(_:)``.
///
/// Fill in what the keying daemon reports for the IKE SA (charon's `remote-id`, the peer certificate's subject and
/// subjectAltNames, and `remote-eap-id`/`remote-xauth-id` when a second authentication round ran). As on Windows,
/// where `WSAImpersonateSocketPeer` uses the peer's user token when one exists and the machine token otherwise, a
/// peer that authenticated a user in the second round is that user.
public struct PeerIdentity: Hashable, Sendable, CustomStringConvertible {
    /// The peer's IKE identity as authenticated: an FQDN, an email address, an IP address, a DN, a key id.
    public var ikeIdentity: String?
    /// The subject DN of the peer's certificate, as strongSwan prints it (`C=CH, O=Example, CN=b.example`).
    public var certificateSubject: String?
    /// The subjectAltNames of the peer's certificate as text (DNS names, email addresses, IP addresses, URIs).
    public var subjectAltNames: [String]
    /// The user identity from the second authentication round (EAP or XAuth), nil when there was none.
    public var user: String?

    public init(ikeIdentity: String? = nil, certificateSubject: String? = nil, subjectAltNames: [String] = [],
                user: String? = nil) {
        self.ikeIdentity = ikeIdentity
        self.certificateSubject = certificateSubject
        self.subjectAltNames = subjectAltNames
        self.user = user
    }

    public var description: String {
        var parts: [String] = []
        if let user { parts.append("user \(user)") }
        if let ikeIdentity { parts.append("id \(ikeIdentity)") }
        if let certificateSubject { parts.append("subject \"\(certificateSubject)\"") }
        for san in subjectAltNames { parts.append("san \(san)") }
        return parts.isEmpty ? "(no identity)" : parts.joined(separator: ", ")
    }
}
