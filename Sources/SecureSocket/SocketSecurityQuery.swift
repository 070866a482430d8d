import ALE
import IPAddressing
import Impersonation
import XFRM

/// What `WSAQuerySocketSecurity` takes (`SOCKET_SECURITY_QUERY_TEMPLATE[_IPSEC2]`).
public struct SocketSecurityQueryTemplate: Hashable, Sendable {
    public var securityProtocol: SocketSecurityProtocol
    /// Required for datagram sockets (which peer); ignored for TCP.
    public var peerAddress: IPEndpoint?
    /// 0: no token handles are returned.
    public var peerTokenAccessMask: UInt32
    /// The IPSEC2 form's `Flags` and `FieldMask`.
    public var ipsec2Flags: UInt32
    public var ipsec2FieldMask: UInt32

    public init(
        securityProtocol: SocketSecurityProtocol = .default, peerAddress: IPEndpoint? = nil,
        peerTokenAccessMask: UInt32 = 0, ipsec2Flags: UInt32 = 0, ipsec2FieldMask: UInt32 = 0
    ) {
        self.securityProtocol = securityProtocol
        self.peerAddress = peerAddress
        self.peerTokenAccessMask = peerTokenAccessMask
        self.ipsec2Flags = ipsec2Flags
        self.ipsec2FieldMask = ipsec2FieldMask
    }
}

/// `SOCKET_INFO_CONNECTION_*`.
public struct SocketSecurityInfoFlags: OptionSet, Hashable, Sendable {
    public let rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }
    /// The traffic is protected by IPsec SAs the kernel holds for this socket's flow.
    public static let secured = SocketSecurityInfoFlags(rawValue: 0x1)
    /// ...and those SAs encrypt (never without ``secured``).
    public static let encrypted = SocketSecurityInfoFlags(rawValue: 0x2)
    /// A peer user identity is known (impersonation would use the user, not the machine).
    public static let impersonated = SocketSecurityInfoFlags(rawValue: 0x4)
}

/// What `WSAQuerySocketSecurity` returns.
public struct SocketSecurityQueryInfo: Hashable, Sendable {
    public var securityProtocol: SocketSecurityProtocol
    public var flags: SocketSecurityInfoFlags
    /// Authenticated identities (the IKE identity of the peer machine; the EAP identity of the peer user).
    public var peerMachineIdentity: String?
    public var peerUserIdentity: String?
    /// Everything IPsec authenticated about the peer, the identity map's input: the identities above, how the
    /// machine proved its identity (certificate, per-peer key, group key), and its certificate's subject and
    /// subjectAltNames. nil when the keying backend knows nothing of the SAs.
    public var peer: PeerIdentity?
    /// Token handles (0 when not asked for with a non-zero access mask, or when there is no such identity).
    public var peerApplicationToken: UInt64
    public var peerMachineToken: UInt64
    /// IPSEC2: charon's IKE SA and CHILD SA unique ids, and why negotiation failed (a Win32-style number, 0 if not).
    public var ikeSAID: UInt64
    public var childSAID: UInt64
    public var negotiationError: UInt32
    /// The SAs found in the kernel for this flow (outbound, inbound), for inspection.
    public var outboundSA: XFRMStateID?
    public var inboundSA: XFRMStateID?
    public var encryptionAlgorithm: String?

    public init(securityProtocol: SocketSecurityProtocol, flags: SocketSecurityInfoFlags) {
        self.securityProtocol = securityProtocol
        self.flags = flags
        self.peerApplicationToken = 0
        self.peerMachineToken = 0
        self.ikeSAID = 0
        self.childSAID = 0
        self.negotiationError = 0
    }
}
