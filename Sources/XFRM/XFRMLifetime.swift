import CNetlink
import IPAddressing

/// Soft and hard limits of a state or policy: the kernel's `struct xfrm_lifetime_cfg`.
///
/// iproute2's words: `limit {time-soft|time-hard|time-use-soft|time-use-hard} SECONDS`,
/// `limit {byte-soft|byte-hard|packet-soft|packet-hard} COUNT`. The default is no limit (`XFRM_INF`).
public struct XFRMLifetime: Hashable, Sendable {
    public var softByteLimit: UInt64
    public var hardByteLimit: UInt64
    public var softPacketLimit: UInt64
    public var hardPacketLimit: UInt64
    /// Seconds after adding.
    public var softAddExpiresSeconds: UInt64
    public var hardAddExpiresSeconds: UInt64
    /// Seconds after first use.
    public var softUseExpiresSeconds: UInt64
    public var hardUseExpiresSeconds: UInt64

    /// No limit at all, what `ip xfrm` sets when no `limit` is given.
    public static let infinite = XFRMLifetime(
        softByteLimit: _XFRM_INF, hardByteLimit: _XFRM_INF, softPacketLimit: _XFRM_INF, hardPacketLimit: _XFRM_INF,
        softAddExpiresSeconds: 0, hardAddExpiresSeconds: 0, softUseExpiresSeconds: 0, hardUseExpiresSeconds: 0)

    /// The value meaning "no limit" for byte and packet limits. The corresponding C macro is `XFRM_INF`.
    public static let unlimited: UInt64 = _XFRM_INF

    public init(
        softByteLimit: UInt64, hardByteLimit: UInt64, softPacketLimit: UInt64, hardPacketLimit: UInt64,
        softAddExpiresSeconds: UInt64, hardAddExpiresSeconds: UInt64,
        softUseExpiresSeconds: UInt64, hardUseExpiresSeconds: UInt64
    ) {
        self.softByteLimit = softByteLimit
        self.hardByteLimit = hardByteLimit
        self.softPacketLimit = softPacketLimit
        self.hardPacketLimit = hardPacketLimit
        self.softAddExpiresSeconds = softAddExpiresSeconds
        self.hardAddExpiresSeconds = hardAddExpiresSeconds
        self.softUseExpiresSeconds = softUseExpiresSeconds
        self.hardUseExpiresSeconds = hardUseExpiresSeconds
    }
}

/// What a state or policy has used so far: the kernel's `struct xfrm_lifetime_cur` (`ip -s xfrm state`).
public struct XFRMLifetimeCounters: Hashable, Sendable {
    public var bytes: UInt64
    public var packets: UInt64
    /// Seconds since the epoch when added / first used (0 if never).
    public var addTime: UInt64
    public var useTime: UInt64

    public init(bytes: UInt64 = 0, packets: UInt64 = 0, addTime: UInt64 = 0, useTime: UInt64 = 0) {
        self.bytes = bytes
        self.packets = packets
        self.addTime = addTime
        self.useTime = useTime
    }
}

/// A firewall mark and mask (`mark MARK mask MASK`): the kernel's `struct xfrm_mark`.
public struct XFRMMark: Hashable, Sendable {
    public var value: UInt32
    public var mask: UInt32
    public init(value: UInt32, mask: UInt32 = .max) {
        self.value = value
        self.mask = mask
    }
}

/// UDP encapsulation of ESP (`encap espinudp SPORT DPORT OADDR`): the kernel's `struct xfrm_encap_tmpl`.
public struct XFRMEncapsulation: Hashable, Sendable {
    /// `UDP_ENCAP_ESPINUDP` (2) or `UDP_ENCAP_ESPINUDP_NON_IKE` (1).
    public var type: UInt16
    public var sourcePort: UInt16
    public var destinationPort: UInt16
    public var originalAddress: IPAddress

    /// RFC 3948 ESP-in-UDP (`espinudp`).
    public static func espInUDP(
        sourcePort: UInt16, destinationPort: UInt16,
        originalAddress: IPAddress
    ) -> XFRMEncapsulation {
        XFRMEncapsulation(
            type: 2, sourcePort: sourcePort, destinationPort: destinationPort,
            originalAddress: originalAddress)
    }

    public init(type: UInt16, sourcePort: UInt16, destinationPort: UInt16, originalAddress: IPAddress) {
        self.type = type
        self.sourcePort = sourcePort
        self.destinationPort = destinationPort
        self.originalAddress = originalAddress
    }
}
