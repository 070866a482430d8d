/// One IKE SA as charon describes it in a `list-sa` event (and in `ike-updown`, `child-updown`, …).
///
/// The keys follow strongSwan's vici README ("list-sa"). Every field is optional except the name: charon
/// leaves keys out that do not apply (no `remote-eap-id` without EAP, no algorithms before IKE_SA_INIT
/// completes), and a key that cannot be read as its type is nil here rather than an error. ``raw`` keeps
/// the whole section for anything else.
public struct IKESAInfo: Hashable, Sendable {
    /// The IKE config (conn) name, the section key in the event.
    public var name: String
    /// `uniqueid`: the IKE SA's unique id, what `terminate { ike-id }` and `list-sas { ike-id }` take.
    public var uniqueID: Int?
    /// `version`: 1 or 2.
    public var version: Int?
    /// `state`: `CREATED`, `CONNECTING`, `ESTABLISHED`, `PASSIVE`, `REKEYING`, `REKEYED`, `DELETING`, `DESTROYING`.
    public var state: String?
    public var localHost: String?
    public var localPort: UInt16?
    public var remoteHost: String?
    public var remotePort: UInt16?
    public var localID: String?
    public var remoteID: String?
    /// `remote-eap-id`: the peer's EAP identity, when EAP authenticated it (a second authentication round).
    public var remoteEAPID: String?
    /// `remote-xauth-id`: the peer's XAuth identity (IKEv1).
    public var remoteXAuthID: String?
    /// `initiator = yes` when this side initiated.
    public var isInitiator: Bool
    /// `initiator-spi` / `responder-spi`: hex, 8 bytes each.
    public var initiatorSPI: UInt64?
    public var responderSPI: UInt64?
    /// `nat-any = yes` when either side is behind a NAT (or NAT is faked).
    public var natAny: Bool
    /// `encr-alg`, e.g. `AES_CBC`, `AES_GCM_16`.
    public var encryptionAlgorithm: String?
    public var encryptionKeySize: Int?
    /// `integ-alg`, e.g. `HMAC_SHA2_256_128`; absent with AEAD.
    public var integrityAlgorithm: String?
    public var integrityKeySize: Int?
    /// `prf-alg`, e.g. `PRF_HMAC_SHA2_256`.
    public var prfAlgorithm: String?
    /// `dh-group`, e.g. `MODP_2048`, `ECP_256`, `CURVE_25519`.
    public var dhGroup: String?
    /// `established`: seconds since the IKE SA was established.
    public var establishedSeconds: Int?
    /// `rekey-time` / `reauth-time`: seconds until rekeying / reauthentication.
    public var rekeySeconds: Int?
    public var reauthSeconds: Int?
    /// The CHILD SAs from `child-sas`, in charon's order.
    public var children: [ChildSAInfo]
    /// The whole section.
    public var raw: VICIMessage

    /// `state == ESTABLISHED`.
    public var isEstablished: Bool { state == "ESTABLISHED" }

    /// Reads one IKE SA section; `name` is its key.
    public init(name: String, section s: VICIMessage) {
        self.name = name
        uniqueID = s.int("uniqueid")
        version = s.int("version")
        state = s.string("state")
        localHost = s.string("local-host")
        localPort = s.string("local-port").flatMap { UInt16($0) }
        remoteHost = s.string("remote-host")
        remotePort = s.string("remote-port").flatMap { UInt16($0) }
        localID = s.string("local-id")
        remoteID = s.string("remote-id")
        remoteEAPID = s.string("remote-eap-id")
        remoteXAuthID = s.string("remote-xauth-id")
        isInitiator = s.bool("initiator") ?? false
        initiatorSPI = s.string("initiator-spi").flatMap { UInt64(hex: $0) }
        responderSPI = s.string("responder-spi").flatMap { UInt64(hex: $0) }
        natAny = s.bool("nat-any") ?? false
        encryptionAlgorithm = s.string("encr-alg")
        encryptionKeySize = s.int("encr-keysize")
        integrityAlgorithm = s.string("integ-alg")
        integrityKeySize = s.int("integ-keysize")
        prfAlgorithm = s.string("prf-alg")
        dhGroup = s.string("dh-group")
        establishedSeconds = s.int("established")
        rekeySeconds = s.int("rekey-time")
        reauthSeconds = s.int("reauth-time")
        children = (s.section("child-sas")?.sections ?? []).map { ChildSAInfo(key: $0.key, section: $0.section) }
        raw = s
    }

    /// Every IKE SA section of an event message (`list-sa`, `ike-updown`, `child-updown`, …). Plain keys such
    /// as `up = yes` are skipped.
    public static func parse(event message: VICIMessage) -> [IKESAInfo] {
        message.sections.map { IKESAInfo(name: $0.key, section: $0.section) }
    }
}

/// One CHILD SA from the `child-sas` section of a `list-sa` event.
public struct ChildSAInfo: Hashable, Sendable {
    /// The CHILD config name (`name`; charon keys the section `<name>-<uniqueid>`, used if `name` is missing).
    public var name: String
    /// `uniqueid`: what `terminate { child-id }` takes.
    public var uniqueID: Int?
    /// `reqid`: the kernel reqid of its SAs (equal to the child config's `reqid` when one was set).
    public var reqid: UInt32?
    /// `state`: `CREATED`, `ROUTED`, `INSTALLING`, `INSTALLED`, `UPDATING`, `REKEYING`, `REKEYED`, `DELETING`, …
    public var state: String?
    /// `mode`: `TUNNEL`, `TRANSPORT`, `BEET`.
    public var mode: String?
    /// `protocol`: `ESP` or `AH`.
    public var ipsecProtocol: String?
    /// `encap = yes` for UDP encapsulation.
    public var udpEncapsulation: Bool
    /// `spi-in` / `spi-out`: charon prints them as 8 hex digits (network order value).
    public var spiIn: UInt32?
    public var spiOut: UInt32?
    public var encryptionAlgorithm: String?
    public var encryptionKeySize: Int?
    public var integrityAlgorithm: String?
    public var integrityKeySize: Int?
    public var dhGroup: String?
    public var bytesIn: UInt64?
    public var bytesOut: UInt64?
    public var packetsIn: UInt64?
    public var packetsOut: UInt64?
    public var installSeconds: Int?
    public var rekeySeconds: Int?
    public var lifeSeconds: Int?
    /// `local-ts` / `remote-ts`, e.g. `10.77.0.1/32[tcp/5001]`.
    public var localTS: [String]
    public var remoteTS: [String]
    public var raw: VICIMessage

    /// `state == INSTALLED`.
    public var isInstalled: Bool { state == "INSTALLED" }

    public init(key: String, section s: VICIMessage) {
        name = s.string("name") ?? key
        uniqueID = s.int("uniqueid")
        reqid = s.string("reqid").flatMap { UInt32($0) }
        state = s.string("state")
        mode = s.string("mode")
        ipsecProtocol = s.string("protocol")
        udpEncapsulation = s.bool("encap") ?? false
        spiIn = s.string("spi-in").flatMap { UInt32(hex: $0) }
        spiOut = s.string("spi-out").flatMap { UInt32(hex: $0) }
        encryptionAlgorithm = s.string("encr-alg")
        encryptionKeySize = s.int("encr-keysize")
        integrityAlgorithm = s.string("integ-alg")
        integrityKeySize = s.int("integ-keysize")
        dhGroup = s.string("dh-group")
        bytesIn = s.uint64("bytes-in")
        bytesOut = s.uint64("bytes-out")
        packetsIn = s.uint64("packets-in")
        packetsOut = s.uint64("packets-out")
        installSeconds = s.int("install-time")
        rekeySeconds = s.int("rekey-time")
        lifeSeconds = s.int("life-time")
        localTS = s.list("local-ts") ?? []
        remoteTS = s.list("remote-ts") ?? []
        raw = s
    }
}

extension FixedWidthInteger where Self: UnsignedInteger {
    /// Parses hex digits with an optional `0x`; nil for anything else or an overflow.
    init?(hex text: String) {
        var digits = Substring(text)
        if digits.hasPrefix("0x") || digits.hasPrefix("0X") { digits = digits.dropFirst(2) }
        guard !digits.isEmpty, let value = Self(digits, radix: 16) else { return nil }
        self = value
    }
}
