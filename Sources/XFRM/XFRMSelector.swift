import IPAddressing

/// Which packets a policy or a state applies to: the kernel's `struct xfrm_selector`.
///
/// iproute2's words: `src ADDR[/PLEN] dst ADDR[/PLEN] [dev DEV] [proto P [sport PORT] [dport PORT]]`.
/// A zero selector of a family matches every flow of that family.
public struct XFRMSelector: Hashable, Sendable, CustomStringConvertible {
    /// The address family. Per-socket policies require `.inet` or `.inet6`.
    public var family: IPAddressFamily
    /// Source address and prefix length.
    public var source: IPAddress
    public var sourcePrefixLength: UInt8
    /// Destination address and prefix length.
    public var destination: IPAddress
    public var destinationPrefixLength: UInt8
    /// Source port (host order) and its mask; mask `0` means any port.
    public var sourcePort: UInt16
    public var sourcePortMask: UInt16
    /// Destination port (host order) and its mask; mask `0` means any port.
    public var destinationPort: UInt16
    public var destinationPortMask: UInt16
    /// Upper-layer protocol; `.any` for all.
    public var upperProtocol: XFRMUpperProtocol
    /// Interface index (`dev`), 0 for any.
    public var interfaceIndex: Int32
    /// The `user` field (a uid the kernel keeps but never matches on).
    public var user: UInt32

    /// A selector that matches every flow of `family`.
    public static func any(_ family: IPAddressFamily) -> XFRMSelector {
        XFRMSelector(
            family: family, source: .any(family), sourcePrefixLength: 0,
            destination: .any(family), destinationPrefixLength: 0)
    }

    /// Every flow from (outbound) or to (inbound) one local port of one protocol, the local address given or any.
    public static func port(
        _ local: IPAddress, _ port: UInt16, protocol upper: XFRMUpperProtocol, outbound: Bool
    ) -> XFRMSelector {
        let family = local.family
        let length: UInt8 = local.isAny ? 0 : family.addressBits
        return outbound
            ? XFRMSelector(
                family: family, source: local, sourcePrefixLength: length, destination: .any(family),
                destinationPrefixLength: 0, sourcePort: port, sourcePortMask: 0xffff, upperProtocol: upper)
            : XFRMSelector(
                family: family, source: .any(family), sourcePrefixLength: 0, destination: local,
                destinationPrefixLength: length, destinationPort: port, destinationPortMask: 0xffff,
                upperProtocol: upper)
    }

    /// A selector no IP flow matches (protocol 255, reserved): a socket policy with it leaves every flow of the
    /// socket to the SPD.
    public static func noFlow(_ family: IPAddressFamily) -> XFRMSelector {
        XFRMSelector(
            family: family, source: .any(family), sourcePrefixLength: 0, destination: .any(family),
            destinationPrefixLength: 0, upperProtocol: XFRMUpperProtocol(rawValue: 255))
    }

    /// A host-to-host selector (full-length prefixes), optionally narrowed to a protocol and ports.
    public static func host(
        _ source: IPAddress, _ destination: IPAddress,
        protocol upper: XFRMUpperProtocol = .any,
        sourcePort: UInt16? = nil, destinationPort: UInt16? = nil
    ) -> XFRMSelector {
        XFRMSelector(
            family: source.family, source: source, sourcePrefixLength: source.family.addressBits,
            destination: destination, destinationPrefixLength: destination.family.addressBits,
            sourcePort: sourcePort ?? 0, sourcePortMask: sourcePort == nil ? 0 : 0xffff,
            destinationPort: destinationPort ?? 0, destinationPortMask: destinationPort == nil ? 0 : 0xffff,
            upperProtocol: upper)
    }

    public init(
        family: IPAddressFamily, source: IPAddress, sourcePrefixLength: UInt8,
        destination: IPAddress, destinationPrefixLength: UInt8,
        sourcePort: UInt16 = 0, sourcePortMask: UInt16 = 0,
        destinationPort: UInt16 = 0, destinationPortMask: UInt16 = 0,
        upperProtocol: XFRMUpperProtocol = .any, interfaceIndex: Int32 = 0, user: UInt32 = 0
    ) {
        self.family = family
        self.source = source
        self.sourcePrefixLength = sourcePrefixLength
        self.destination = destination
        self.destinationPrefixLength = destinationPrefixLength
        self.sourcePort = sourcePort
        self.sourcePortMask = sourcePortMask
        self.destinationPort = destinationPort
        self.destinationPortMask = destinationPortMask
        self.upperProtocol = upperProtocol
        self.interfaceIndex = interfaceIndex
        self.user = user
    }

    /// `src 10.0.0.1/32 dst 10.0.0.2/32 proto tcp dport 5001`, as `ip xfrm` prints it.
    public var description: String {
        var words = ["src \(source)/\(sourcePrefixLength)", "dst \(destination)/\(destinationPrefixLength)"]
        if upperProtocol != .any { words.append("proto \(upperProtocol)") }
        if sourcePortMask != 0 { words.append("sport \(sourcePort)") }
        if destinationPortMask != 0 { words.append("dport \(destinationPort)") }
        if interfaceIndex != 0 { words.append("dev if\(interfaceIndex)") }
        return words.joined(separator: " ")
    }
}
