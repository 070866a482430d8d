import IPAddressing

/// The key that names a state in the kernel: destination, SPI and protocol (`ID` in iproute2).
public struct XFRMStateID: Hashable, Sendable, CustomStringConvertible {
    public var destination: IPAddress
    /// The SPI in host byte order.
    public var spi: UInt32
    public var proto: XFRMProtocol

    public init(destination: IPAddress, spi: UInt32, proto: XFRMProtocol = .esp) {
        self.destination = destination
        self.spi = spi
        self.proto = proto
    }

    public var description: String {
        "dst \(destination) proto \(proto) spi 0x\(String(spi, radix: 16).leftPadded(to: 8))"
    }
}

/// A security association (SA): the kernel's `struct xfrm_usersa_info` and its attributes.
///
/// iproute2's words: `ip xfrm state add src ADDR dst ADDR proto esp spi SPI mode M reqid R
/// [replay-window N] [flag F] [sel SELECTOR] [ALGO...] [limit LIMIT] [mark MARK] [encap ENCAP]`.
public struct XFRMState: Hashable, Sendable, CustomStringConvertible {
    /// Destination, SPI, protocol.
    public var id: XFRMStateID
    /// The outer source address (`src`).
    public var source: IPAddress
    /// Family of the outer addresses.
    public var family: IPAddressFamily
    public var mode: XFRMMode
    /// Request id that ties the SA to policy templates.
    public var reqid: UInt32
    /// Replay window in packets (0 disables the check).
    public var replayWindow: UInt8
    /// `XFRM_STATE_*` flags (`noecn` 1, `decap-dscp` 2, `nopmtudisc` 4, `wildrecv` 8, `icmp` 16, `af-unspec` 32,
    /// `align4` 64, `esn` 128).
    public var flags: UInt8
    /// Which inner traffic the SA may carry; the zero selector leaves it to policies.
    public var selector: XFRMSelector
    public var lifetime: XFRMLifetime
    /// The algorithms (an AEAD alone, or encryption plus authentication, or compression).
    public var algorithms: [XFRMAlgorithm]

    /// Whether this is a larval state (`XFRM_STATE_ACQ`) the kernel made while a key manager is asked for an SA:
    /// it has no algorithms. Its SPI is 0, or the SPI a template pinned (see ``SocketPolicy/pin(_:inboundSPI:outboundSPI:on:family:)``).
    public var isLarval: Bool { id.spi == 0 || algorithms.isEmpty }
    public var mark: XFRMMark?
    public var encapsulation: XFRMEncapsulation?
    /// The ACQUIRE sequence number this SA answers (`xfrm_usersa_info.seq`); 0 otherwise.
    public var sequence: UInt32
    /// Usage counters (filled in by `get`/`list`; ignored on add).
    public var counters: XFRMLifetimeCounters
    /// Replay/integrity failure statistics (`stats replay-window … replay … failed …`), read only.
    public var statistics: Statistics

    /// Error counters the kernel keeps per SA (`struct xfrm_stats`).
    public struct Statistics: Hashable, Sendable {
        public var replayWindow: UInt32 = 0
        public var replay: UInt32 = 0
        public var integrityFailed: UInt32 = 0
        public init() {}
    }

    public init(
        source: IPAddress, destination: IPAddress, proto: XFRMProtocol = .esp, spi: UInt32,
        mode: XFRMMode = .transport, reqid: UInt32 = 0, algorithms: [XFRMAlgorithm] = [],
        selector: XFRMSelector? = nil, replayWindow: UInt8 = 0, flags: UInt8 = 0,
        lifetime: XFRMLifetime = .infinite, mark: XFRMMark? = nil,
        encapsulation: XFRMEncapsulation? = nil, sequence: UInt32 = 0
    ) {
        self.id = XFRMStateID(destination: destination, spi: spi, proto: proto)
        self.source = source
        self.family = destination.family
        self.mode = mode
        self.reqid = reqid
        self.replayWindow = replayWindow
        self.flags = flags
        self.selector = selector ?? .any(destination.family)
        self.lifetime = lifetime
        self.algorithms = algorithms
        self.mark = mark
        self.encapsulation = encapsulation
        self.sequence = sequence
        self.counters = XFRMLifetimeCounters()
        self.statistics = Statistics()
    }

    /// `src 10.0.0.1 dst 10.0.0.2 proto esp spi 0x00001000 reqid 42 mode transport`, as `ip xfrm state` prints it
    /// (keys are not printed).
    public var description: String {
        var text =
            "src \(source) dst \(id.destination) proto \(id.proto) spi 0x\(String(id.spi, radix: 16).leftPadded(to: 8))"
        text += " reqid \(reqid) mode \(mode)"
        if replayWindow != 0 { text += " replay-window \(replayWindow)" }
        for algorithm in algorithms {
            text += " " + algorithm.description.split(separator: " ").prefix(2).joined(separator: " ")
        }
        if selector != .any(family) { text += " sel \(selector)" }
        if let mark { text += " mark 0x\(String(mark.value, radix: 16))/0x\(String(mark.mask, radix: 16))" }
        return text
    }
}
