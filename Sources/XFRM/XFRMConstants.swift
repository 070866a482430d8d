import CNetlink

/// The IPsec protocol of a state or template (`proto` in iproute2).
public struct XFRMProtocol: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    public var rawValue: UInt8
    public init(rawValue: UInt8) { self.rawValue = rawValue }

    /// Encapsulating Security Payload. The corresponding C constant is `IPPROTO_ESP`.
    public static let esp = XFRMProtocol(rawValue: 50)
    /// Authentication Header. The corresponding C constant is `IPPROTO_AH`.
    public static let ah = XFRMProtocol(rawValue: 51)
    /// IP payload compression. The corresponding C constant is `IPPROTO_COMP`.
    public static let comp = XFRMProtocol(rawValue: 108)
    /// Any IPsec protocol (`ip xfrm state flush` without `proto`). The C value is `IPSEC_PROTO_ANY`.
    public static let any = XFRMProtocol(rawValue: 255)

    @available(*, unavailable, renamed: "esp") public static var IPPROTO_ESP: Self { esp }
    @available(*, unavailable, renamed: "ah") public static var IPPROTO_AH: Self { ah }
    @available(*, unavailable, renamed: "comp") public static var IPPROTO_COMP: Self { comp }

    public var description: String {
        switch self {
        case .esp: "esp"
        case .ah: "ah"
        case .comp: "comp"
        case .any: "any"
        default: "proto \(rawValue)"
        }
    }
}

/// The mode of a state or template (`mode` in iproute2).
public struct XFRMMode: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    public var rawValue: UInt8
    public init(rawValue: UInt8) { self.rawValue = rawValue }

    /// Transport mode. The corresponding C constant is `XFRM_MODE_TRANSPORT`.
    public static let transport = XFRMMode(rawValue: UInt8(CNetlink.XFRM_MODE_TRANSPORT))
    /// Tunnel mode. The corresponding C constant is `XFRM_MODE_TUNNEL`.
    public static let tunnel = XFRMMode(rawValue: UInt8(CNetlink.XFRM_MODE_TUNNEL))
    /// Mobile IPv6 route optimisation. The corresponding C constant is `XFRM_MODE_ROUTEOPTIMIZATION`.
    public static let routeOptimization = XFRMMode(rawValue: UInt8(XFRM_MODE_ROUTEOPTIMIZATION))
    /// Mobile IPv6 inbound trigger. The corresponding C constant is `XFRM_MODE_IN_TRIGGER`.
    public static let inTrigger = XFRMMode(rawValue: UInt8(XFRM_MODE_IN_TRIGGER))
    /// Bound end-to-end tunnel. The corresponding C constant is `XFRM_MODE_BEET`.
    public static let beet = XFRMMode(rawValue: UInt8(XFRM_MODE_BEET))

    @available(*, unavailable, renamed: "transport") public static var XFRM_MODE_TRANSPORT: Self { transport }
    @available(*, unavailable, renamed: "tunnel") public static var XFRM_MODE_TUNNEL: Self { tunnel }

    public var description: String {
        switch self {
        case .transport: "transport"
        case .tunnel: "tunnel"
        case .routeOptimization: "ro"
        case .inTrigger: "in_trigger"
        case .beet: "beet"
        default: "mode \(rawValue)"
        }
    }
}

/// A policy's direction (`dir` in iproute2).
public struct XFRMDirection: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    public var rawValue: UInt8
    public init(rawValue: UInt8) { self.rawValue = rawValue }

    /// Inbound. The corresponding C constant is `XFRM_POLICY_IN`.
    public static let inbound = XFRMDirection(rawValue: UInt8(CNetlink.XFRM_POLICY_IN))
    /// Outbound. The corresponding C constant is `XFRM_POLICY_OUT`.
    public static let outbound = XFRMDirection(rawValue: UInt8(CNetlink.XFRM_POLICY_OUT))
    /// Forwarded. The corresponding C constant is `XFRM_POLICY_FWD`.
    public static let forward = XFRMDirection(rawValue: UInt8(CNetlink.XFRM_POLICY_FWD))
    /// A per-socket inbound policy as it shows in dumps (`XFRM_POLICY_MAX + XFRM_POLICY_IN`).
    public static let socketInbound = XFRMDirection(rawValue: UInt8(XFRM_POLICY_MAX) + UInt8(CNetlink.XFRM_POLICY_IN))
    /// A per-socket outbound policy as it shows in dumps (`XFRM_POLICY_MAX + XFRM_POLICY_OUT`).
    public static let socketOutbound = XFRMDirection(rawValue: UInt8(XFRM_POLICY_MAX) + UInt8(CNetlink.XFRM_POLICY_OUT))

    @available(*, unavailable, renamed: "inbound") public static var XFRM_POLICY_IN: Self { inbound }
    @available(*, unavailable, renamed: "outbound") public static var XFRM_POLICY_OUT: Self { outbound }
    @available(*, unavailable, renamed: "forward") public static var XFRM_POLICY_FWD: Self { forward }

    /// Whether this is one of the per-socket directions a dump reports.
    public var isSocketPolicy: Bool { self == .socketInbound || self == .socketOutbound }

    public var description: String {
        switch self {
        case .inbound: "in"
        case .outbound: "out"
        case .forward: "fwd"
        case .socketInbound: "socket in"
        case .socketOutbound: "socket out"
        default: "dir \(rawValue)"
        }
    }
}

/// What a policy does with matching traffic (`action` in iproute2).
public struct XFRMPolicyAction: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    public var rawValue: UInt8
    public init(rawValue: UInt8) { self.rawValue = rawValue }

    /// Let it pass (through the templates' transforms). The corresponding C constant is `XFRM_POLICY_ALLOW`.
    public static let allow = XFRMPolicyAction(rawValue: UInt8(XFRM_POLICY_ALLOW))
    /// Drop it. The corresponding C constant is `XFRM_POLICY_BLOCK`.
    public static let block = XFRMPolicyAction(rawValue: UInt8(XFRM_POLICY_BLOCK))

    public var description: String {
        switch self {
        case .allow: "allow"
        case .block: "block"
        default: "action \(rawValue)"
        }
    }
}

/// Whether a template must be satisfied (`level` in iproute2).
public enum XFRMTemplateLevel: Hashable, Sendable, CustomStringConvertible {
    /// The transform is mandatory: no SA, no traffic (`optional = 0`).
    case required
    /// The transform is used when an SA exists, traffic flows in clear otherwise (`optional = 1`).
    case use

    public var description: String { self == .required ? "required" : "use" }
}

/// A transport-layer protocol number in a selector (`proto` in an iproute2 selector).
public struct XFRMUpperProtocol: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    public var rawValue: UInt8
    public init(rawValue: UInt8) { self.rawValue = rawValue }

    /// Any protocol.
    public static let any = XFRMUpperProtocol(rawValue: 0)
    /// TCP. The corresponding C constant is `IPPROTO_TCP`.
    public static let tcp = XFRMUpperProtocol(rawValue: 6)
    /// UDP. The corresponding C constant is `IPPROTO_UDP`.
    public static let udp = XFRMUpperProtocol(rawValue: 17)
    /// ICMP. The corresponding C constant is `IPPROTO_ICMP`.
    public static let icmp = XFRMUpperProtocol(rawValue: 1)
    /// ICMPv6. The corresponding C constant is `IPPROTO_ICMPV6`.
    public static let icmpv6 = XFRMUpperProtocol(rawValue: 58)

    public var description: String {
        switch self {
        case .any: "any"
        case .tcp: "tcp"
        case .udp: "udp"
        case .icmp: "icmp"
        case .icmpv6: "ipv6-icmp"
        default: "\(rawValue)"
        }
    }
}
