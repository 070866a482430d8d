import IPAddressing

/// One transform a policy requires: the kernel's `struct xfrm_user_tmpl`.
///
/// iproute2's words: `tmpl [src ADDR] [dst ADDR] [proto P] [spi SPI] [mode M] [reqid R] [level required|use]`.
public struct XFRMTemplate: Hashable, Sendable, CustomStringConvertible {
    /// Outer destination (`dst`); keep it `.any` in transport mode (the flow's address is used, and a
    /// non-zero one makes every retry raise a new ACQUIRE).
    public var destination: IPAddress
    /// Outer source (`src`); `.any` in transport mode for the same reason.
    public var source: IPAddress
    /// SPI to require, 0 for any.
    public var spi: UInt32
    /// ESP, AH or IPComp.
    public var proto: XFRMProtocol
    /// Template family; `.unspecified` takes the policy's.
    public var family: IPAddressFamily
    /// The request id: on output the SA's reqid must equal it; on input 0 accepts any SA.
    public var reqid: UInt32
    /// Transport, tunnel, ...
    public var mode: XFRMMode
    /// `required` or `use`.
    public var level: XFRMTemplateLevel
    /// Share mode (`XFRM_SHARE_ANY` = 0).
    public var share: UInt8
    /// Bit masks over the SADB algorithm numbers. `authenticationAlgorithms` must not be 0: the inbound
    /// check rejects every packet then. The kernel never checks the other two on input.
    public var authenticationAlgorithms: UInt32
    public var encryptionAlgorithms: UInt32
    public var compressionAlgorithms: UInt32

    public init(
        proto: XFRMProtocol = .esp, mode: XFRMMode = .transport, reqid: UInt32 = 0,
        level: XFRMTemplateLevel = .required, family: IPAddressFamily = .unspecified,
        source: IPAddress? = nil, destination: IPAddress? = nil, spi: UInt32 = 0, share: UInt8 = 0,
        authenticationAlgorithms: UInt32 = .max, encryptionAlgorithms: UInt32 = .max,
        compressionAlgorithms: UInt32 = .max
    ) {
        let addressFamily = family == .unspecified ? (source?.family ?? destination?.family ?? .inet) : family
        self.destination = destination ?? .any(addressFamily)
        self.source = source ?? .any(addressFamily)
        self.spi = spi
        self.proto = proto
        self.family = family
        self.reqid = reqid
        self.mode = mode
        self.level = level
        self.share = share
        self.authenticationAlgorithms = authenticationAlgorithms
        self.encryptionAlgorithms = encryptionAlgorithms
        self.compressionAlgorithms = compressionAlgorithms
    }

    /// `tmpl src 0.0.0.0 dst 0.0.0.0 proto esp reqid 42 mode transport level required`.
    public var description: String {
        var words = ["tmpl src \(source) dst \(destination)", "proto \(proto)"]
        if spi != 0 { words.append("spi 0x\(String(spi, radix: 16))") }
        words.append("reqid \(reqid)")
        words.append("mode \(mode)")
        words.append("level \(level)")
        return words.joined(separator: " ")
    }
}
