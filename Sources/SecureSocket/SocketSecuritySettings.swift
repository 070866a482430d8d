import ALE
import Foundation
import IPAddressing
import XFRM

/// The security protocol a settings, name or query structure is about. `default` behaves like `ipsec`.
public enum SocketSecurityProtocol: UInt32, Hashable, Sendable {
    /// `SOCKET_SECURITY_PROTOCOL_DEFAULT`: the system's choice, which is IPsec.
    case `default` = 0
    /// `SOCKET_SECURITY_PROTOCOL_IPSEC`.
    case ipsec = 1
    /// `SOCKET_SECURITY_PROTOCOL_IPSEC2`: selects the IPSEC2 query forms.
    case ipsec2 = 2
}

/// `SOCKET_SETTINGS_*`.
public struct SocketSecurityFlags: OptionSet, Hashable, Sendable {
    public let rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }
    /// `SOCKET_SETTINGS_GUARANTEE_ENCRYPTION`: integrity alone is not enough; nothing is sent otherwise.
    public static let guaranteeEncryption = SocketSecurityFlags(rawValue: 0x1)
    /// `SOCKET_SETTINGS_ALLOW_INSECURE`: after a failed negotiation (bounded), clear text is allowed.
    public static let allowInsecure = SocketSecurityFlags(rawValue: 0x2)
    static let known: SocketSecurityFlags = [.guaranteeEncryption, .allowInsecure]
}

/// `SOCKET_SETTINGS_IPSEC_*`.
public struct IPsecSettingsFlags: OptionSet, Hashable, Sendable {
    public let rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }
    /// No per-socket policy: policies that already exist (global SPD) apply.
    public static let skipFilterInstantiation = IPsecSettingsFlags(rawValue: 0x1)
    /// A peer name mismatch is recorded but does not fail the connection when the peer proved some identity.
    public static let optionalPeerNameVerification = IPsecSettingsFlags(rawValue: 0x2)
    /// Not supported on Linux: the kernel has no "first inbound packet in clear" switch for socket policies.
    public static let allowFirstInboundPacketUnencrypted = IPsecSettingsFlags(rawValue: 0x4)
    /// The peer target name is used exactly as given (no `host/` SPN prefix stripping).
    public static let peerNameIsRawFormat = IPsecSettingsFlags(rawValue: 0x8)
    static let known: IPsecSettingsFlags = [
        .skipFilterInstantiation, .optionalPeerNameVerification,
        .allowFirstInboundPacketUnencrypted, .peerNameIsRawFormat,
    ]
}

/// The IPsec-specific part of the settings (`SOCKET_SECURITY_SETTINGS_IPSEC`).
public struct IPsecSettings: Hashable, Sendable {
    public var flags: IPsecSettingsFlags
    /// WFP provider-context keys have no Linux counterpart; they must be nil (all-zero GUID).
    public var mainModePolicyKey: UUID?
    public var quickModePolicyKey: UUID?
    /// Credentials for a second authentication round (EAP) so the server learns the peer user.
    public var userName: String?
    public var domainName: String?
    public var password: String?

    public init(
        flags: IPsecSettingsFlags = [], mainModePolicyKey: UUID? = nil, quickModePolicyKey: UUID? = nil,
        userName: String? = nil, domainName: String? = nil, password: String? = nil
    ) {
        self.flags = flags
        self.mainModePolicyKey = mainModePolicyKey
        self.quickModePolicyKey = quickModePolicyKey
        self.userName = userName
        self.domainName = domainName
        self.password = password
    }
}

/// What `WSASetSocketSecurity` takes: `SOCKET_SECURITY_SETTINGS` or `SOCKET_SECURITY_SETTINGS_IPSEC`.
public struct SocketSecuritySettings: Hashable, Sendable {
    public var securityProtocol: SocketSecurityProtocol
    public var flags: SocketSecurityFlags
    /// Present for the IPsec form.
    public var ipsec: IPsecSettings?

    /// The defaults `WSASetSocketSecurity(s, NULL, 0, …)` applies: IPsec, encryption not forced (the proposals
    /// offered all encrypt anyway), no clear text.
    public static let `default` = SocketSecuritySettings(securityProtocol: .default, flags: [])

    public init(
        securityProtocol: SocketSecurityProtocol = .default, flags: SocketSecurityFlags = [],
        ipsec: IPsecSettings? = nil
    ) {
        self.securityProtocol = securityProtocol
        self.flags = flags
        self.ipsec = ipsec
    }

    /// Checks the values (not the socket). Every rejection is `WSAEINVAL` unless noted.
    public func validate() throws(SecureSocketError) {
        guard SocketSecurityFlags.known.isSuperset(of: flags) else {
            throw SecureSocketError(
                .invalidArgument, "unknown SecurityFlags bits 0x\(String(flags.rawValue, radix: 16))")
        }
        guard !flags.isSuperset(of: [.guaranteeEncryption, .allowInsecure]) else {
            throw SecureSocketError(.invalidArgument, "GUARANTEE_ENCRYPTION and ALLOW_INSECURE contradict each other")
        }
        guard let ipsec else { return }
        guard securityProtocol == .ipsec else {
            throw SecureSocketError(.invalidArgument, "the IPsec settings form needs SOCKET_SECURITY_PROTOCOL_IPSEC")
        }
        guard IPsecSettingsFlags.known.isSuperset(of: ipsec.flags) else {
            throw SecureSocketError(
                .invalidArgument, "unknown IpsecFlags bits 0x\(String(ipsec.flags.rawValue, radix: 16))")
        }
        if ipsec.flags.contains(.allowFirstInboundPacketUnencrypted) {
            throw SecureSocketError(
                .operationNotSupported,
                "ALLOW_FIRST_INBOUND_PKT_UNENCRYPTED has no Linux equivalent for socket policies")
        }
        if ipsec.mainModePolicyKey != nil || ipsec.quickModePolicyKey != nil {
            throw SecureSocketError(
                .operationNotSupported, "AuthIP policy keys name WFP provider contexts, which Linux lacks")
        }
        let credentials = [ipsec.userName, ipsec.domainName, ipsec.password].map { ($0 ?? "").isEmpty }
        if credentials[0] && (!credentials[1] || !credentials[2]) {
            throw SecureSocketError(.invalidArgument, "a domain or password without a user name")
        }
        if !credentials[0] && credentials[2] {
            throw SecureSocketError(.invalidArgument, "a user name without a password")
        }
    }

    /// Whether a per-socket policy is installed (not with `SKIP_FILTER_INSTANTIATION`).
    public var installsPolicy: Bool { !(ipsec?.flags.contains(.skipFilterInstantiation) ?? false) }
}

/// What `WSASetSocketPeerTargetName` takes.
public struct SocketPeerTargetName: Hashable, Sendable {
    public var securityProtocol: SocketSecurityProtocol
    /// The peer this name applies to; nil (or the zero address) for "the peer" of a TCP socket.
    public var peerAddress: IPEndpoint?
    /// The identity the peer must prove, e.g. `host/server.example` (SPN) or `server.example`.
    public var name: String

    public init(
        securityProtocol: SocketSecurityProtocol = .default, peerAddress: IPEndpoint? = nil,
        name: String
    ) {
        self.securityProtocol = securityProtocol
        self.peerAddress = peerAddress
        self.name = name
    }

    /// The IKE identity to require: an SPN's service prefix (`host/`) is dropped unless the name is raw.
    public func identity(raw: Bool) -> String {
        guard !raw, let slash = name.firstIndex(of: "/") else { return name }
        return String(name[name.index(after: slash)...])
    }
}
