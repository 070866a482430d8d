import Glibc
import IPAddressing
import XFRM

/// One traffic selector as charon prints it in a child's `local-ts` / `remote-ts`: `10.0.0.1/32[tcp/5001]`,
/// `10.0.0.0/24`, `fd77::1/128[udp]`, `10.0.0.1..10.0.0.9[tcp/1000-2000]`, `10.0.0.1/32[tcp/http]`.
///
/// What a peer's child may carry is decided from these, not from the kernel SA's selector: charon installs
/// transport SAs with address-only selectors unless `set_proto_port_transport_sa = yes`, while the traffic
/// selectors are always what was negotiated. Text that cannot be read covers everything (a selector we cannot
/// understand is never taken for a narrow one).
public struct ChildTrafficSelector: Hashable, Sendable, CustomStringConvertible {
    /// The first and last address, in the family's byte order (inclusive).
    public var low: [UInt8]
    public var high: [UInt8]
    public var family: IPAddressFamily
    /// `.any` for every protocol.
    public var transportProtocol: XFRMUpperProtocol
    public var ports: ClosedRange<UInt16>
    /// The text charon printed.
    public var text: String

    public var description: String { text }

    /// The selector that covers everything (of both families).
    static func everything(_ text: String) -> ChildTrafficSelector {
        ChildTrafficSelector(
            low: [], high: [], family: .unspecified, transportProtocol: .any, ports: 0...65535, text: text)
    }

    /// Reads charon's text; unreadable text covers everything.
    public init(_ text: String) {
        self = Self.parse(text) ?? .everything(text)
    }

    private init(
        low: [UInt8], high: [UInt8], family: IPAddressFamily, transportProtocol: XFRMUpperProtocol,
        ports: ClosedRange<UInt16>, text: String
    ) {
        self.low = low
        self.high = high
        self.family = family
        self.transportProtocol = transportProtocol
        self.ports = ports
        self.text = text
    }

    private static func parse(_ text: String) -> ChildTrafficSelector? {
        var addressPart = Substring(text)
        var proto = XFRMUpperProtocol.any
        var ports: ClosedRange<UInt16> = 0...65535
        if let open = text.firstIndex(of: "[") {
            guard text.hasSuffix("]") else { return nil }
            addressPart = text[..<open]
            let inside = text[text.index(after: open)..<text.index(before: text.endIndex)]
            let parts = inside.split(separator: "/", maxSplits: 1, omittingEmptySubsequences: false)
            guard let name = parts.first else { return nil }
            switch name {
            case "tcp": proto = .tcp
            case "udp": proto = .udp
            default:
                guard let number = UInt8(name) else { return nil }
                proto = XFRMUpperProtocol(rawValue: number)
            }
            if parts.count == 2 {
                guard let range = portRange(parts[1], proto: String(name)) else { return nil }
                ports = range
            }
        }
        let low: IPAddress
        let high: IPAddress
        if let dots = addressPart.range(of: "..") {
            guard let first = IPAddress(String(addressPart[..<dots.lowerBound])),
                let last = IPAddress(String(addressPart[dots.upperBound...])), first.family == last.family
            else { return nil }
            (low, high) = (first, last)
        } else {
            let pieces = addressPart.split(separator: "/", omittingEmptySubsequences: false)
            guard let address = pieces.first.flatMap({ IPAddress(String($0)) }) else { return nil }
            let length = pieces.count == 2 ? Int(pieces[1]) : Int(address.family.addressBits)
            guard let length, length >= 0, length <= Int(address.family.addressBits), pieces.count <= 2 else {
                return nil
            }
            (low, high) = prefixRange(address, length: length)
        }
        guard low.bytes.lexicographicallyPrecedes(high.bytes) || low.bytes == high.bytes else { return nil }
        return ChildTrafficSelector(
            low: low.bytes, high: high.bytes, family: low.family, transportProtocol: proto, ports: ports, text: text)
    }

    /// `5001`, `1000-2000`, `http` (a service name), `%any`/empty (every port).
    private static func portRange(_ text: Substring, proto: String) -> ClosedRange<UInt16>? {
        if text.isEmpty || text == "%any" { return 0...65535 }
        if let dash = text.firstIndex(of: "-") {
            guard let first = UInt16(text[..<dash]), let last = UInt16(text[text.index(after: dash)...]),
                first <= last
            else { return nil }
            return first...last
        }
        if let port = UInt16(text) { return port...port }
        guard let port = ServicePort.lookup(String(text), protocol: proto) else { return nil }
        return port...port
    }

    private static func prefixRange(_ address: IPAddress, length: Int) -> (IPAddress, IPAddress) {
        var low = address.bytes
        var high = address.bytes
        for index in 0..<low.count {
            let bitsBefore = index * 8
            let keep = max(0, min(8, length - bitsBefore))
            let mask: UInt8 = keep == 0 ? 0 : UInt8(truncatingIfNeeded: 0xff << (8 - keep))
            low[index] &= mask
            high[index] |= ~mask
        }
        return (IPAddress(family: address.family, bytes: low), IPAddress(family: address.family, bytes: high))
    }

    /// Whether the selector covers this address, protocol and port.
    public func covers(_ address: IPAddress, protocol upper: XFRMUpperProtocol, port: UInt16) -> Bool {
        if family == .unspecified { return true }
        guard address.family == family else { return false }
        let bytes = address.bytes
        guard !bytes.lexicographicallyPrecedes(low), !high.lexicographicallyPrecedes(bytes) else { return false }
        guard transportProtocol == .any || transportProtocol == upper else { return false }
        return ports.contains(port)
    }

    /// Whether the selector names one host, one protocol and one port.
    public var isExact: Bool {
        family != .unspecified && low == high && transportProtocol != .any && ports.count == 1
    }
}

/// What a child's traffic selectors cover: the flows whose local end one of its local selectors and whose remote
/// end one of its remote selectors covers.
public struct ChildCoverage: Hashable, Sendable, CustomStringConvertible {
    public var local: [ChildTrafficSelector]
    public var remote: [ChildTrafficSelector]

    public init(local: [String], remote: [String]) {
        self.local = local.map(ChildTrafficSelector.init)
        self.remote = remote.map(ChildTrafficSelector.init)
    }

    public func covers(_ flow: KeyedFlow) -> Bool {
        local.contains { $0.covers(flow.local, protocol: flow.transportProtocol, port: flow.localPort) }
            && remote.contains { $0.covers(flow.remote, protocol: flow.transportProtocol, port: flow.remotePort) }
    }

    /// The one flow the child covers, when both sides are exactly one selector naming one host and port.
    public var exactFlow: KeyedFlow? {
        guard local.count == 1, remote.count == 1, let mine = local.first, let theirs = remote.first, mine.isExact,
            theirs.isExact, mine.transportProtocol == theirs.transportProtocol,
            let localAddress = IPAddress(bytes: mine.low), let remoteAddress = IPAddress(bytes: theirs.low)
        else { return nil }
        return KeyedFlow(
            transportProtocol: mine.transportProtocol, local: localAddress, localPort: mine.ports.lowerBound,
            remote: remoteAddress, remotePort: theirs.ports.lowerBound)
    }

    public var description: String {
        "\(local.map(\.text).joined(separator: ",")) === \(remote.map(\.text).joined(separator: ","))"
    }
}

/// A service name's port (`http` → 80), as charon prints well-known ports by name.
enum ServicePort {
    static func lookup(_ name: String, protocol proto: String) -> UInt16? {
        guard let service = getservbyname(name, proto) else { return nil }
        return UInt16(bigEndian: UInt16(truncatingIfNeeded: service.pointee.s_port))
    }
}
