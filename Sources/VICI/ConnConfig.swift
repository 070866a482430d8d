/// A traffic selector as swanctl.conf writes it: `dynamic` (the IKE address), a subnet or range, with an
/// optional `[protocol/port]` suffix, e.g. `dynamic[tcp/5001]`.
public struct TrafficSelector: Hashable, Sendable, ExpressibleByStringLiteral, CustomStringConvertible {
    public var text: String

    public init(_ text: String) { self.text = text }
    public init(stringLiteral value: String) { text = value }

    /// `dynamic`: the address the IKE SA runs over, which for per-socket transport mode is the host itself.
    public static let dynamic = TrafficSelector("dynamic")

    /// `dynamic[proto/port]`: narrows to one protocol and/or port; `%any` stands for a missing protocol.
    public static func dynamic(protocol proto: String? = nil, port: UInt16? = nil) -> TrafficSelector {
        TrafficSelector("dynamic" + suffix(proto, port))
    }

    /// A subnet (`10.0.0.0/24`, `fd00::/64`), address or range, with an optional `[proto/port]`.
    public static func subnet(_ subnet: String, protocol proto: String? = nil, port: UInt16? = nil) -> TrafficSelector {
        TrafficSelector(subnet + suffix(proto, port))
    }

    private static func suffix(_ proto: String?, _ port: UInt16?) -> String {
        switch (proto, port) {
        case (nil, nil): ""
        case (let proto?, nil): "[\(proto)]"
        case (let proto, let port?): "[\(proto ?? "%any")/\(port)]"
        }
    }

    public var description: String { text }
}

/// One authentication round of a conn (`local`, `remote`, or `local-N` / `remote-N` with several rounds),
/// swanctl.conf's `connections.<conn>.local<suffix>` / `remote<suffix>`.
public struct AuthConfig: Hashable, Sendable {
    /// The `auth` method: `psk`, `pubkey`, `eap-md5`, `eap-mschapv2`, `eap` (any, as a client), `eap-identity`…
    public struct Method: Hashable, Sendable, ExpressibleByStringLiteral, CustomStringConvertible {
        public var rawValue: String
        public init(_ rawValue: String) { self.rawValue = rawValue }
        public init(stringLiteral value: String) { rawValue = value }
        /// Pre-shared key (secret loaded with `load-shared` type `IKE`).
        public static let psk = Method("psk")
        /// Public key signature (certificate or raw key; private key loaded with `load-key`).
        public static let pubkey = Method("pubkey")
        /// EAP as a client, letting the server pick the method.
        public static let eap = Method("eap")
        public static let eapMD5 = Method("eap-md5")
        public static let eapMSCHAPv2 = Method("eap-mschapv2")
        public var description: String { rawValue }
    }

    public var method: Method
    /// `id`: the IKE identity (FQDN, email, IP, DN; `%any` on a responder's remote side).
    public var id: String?
    /// `eap_id`: the EAP identity (client: its user name; server: `%any` to ask the client for one).
    public var eapID: String?
    /// `certs`: certificates to send / accept, PEM or DER blobs (VICI carries the data, not file names).
    public var certificates: [[UInt8]]
    /// `cacerts`: CA certificates the peer's chain must end in (remote side), PEM or DER blobs.
    public var caCertificates: [[UInt8]]
    /// Anything else for this round (e.g. `revocation`, `pubkeys`, `aaa_id`).
    public var extra: VICIMessage

    public init(
        method: Method, id: String? = nil, eapID: String? = nil, certificates: [[UInt8]] = [],
        caCertificates: [[UInt8]] = [], extra: VICIMessage = [:]
    ) {
        self.method = method
        self.id = id
        self.eapID = eapID
        self.certificates = certificates
        self.caCertificates = caCertificates
        self.extra = extra
    }

    /// `auth = psk` with identity `id`.
    public static func psk(id: String?) -> AuthConfig { AuthConfig(method: .psk, id: id) }
    /// `auth = pubkey` with identity `id` and certificates.
    public static func pubkey(id: String?, certificates: [[UInt8]] = [], caCertificates: [[UInt8]] = []) -> AuthConfig {
        AuthConfig(method: .pubkey, id: id, certificates: certificates, caCertificates: caCertificates)
    }

    public var message: VICIMessage {
        var m: VICIMessage = ["auth": .string(method.rawValue)]
        if let id { m["id"] = .string(id) }
        if let eapID { m["eap_id"] = .string(eapID) }
        if !certificates.isEmpty { m["certs"] = .list(certificates) }
        if !caCertificates.isEmpty { m["cacerts"] = .list(caCertificates) }
        m.entries += extra.entries
        return m
    }
}

/// A CHILD config: swanctl.conf's `connections.<conn>.children.<child>`, shaped for per-socket IPsec.
///
/// Defaults follow keying-notes' verified per-socket pattern: `mode = transport`, `policies = no` (charon
/// installs only SAs; the kernel matches them to the socket's template by reqid), `local_ts = remote_ts =
/// dynamic`, and a fixed `reqid` equal to the socket template's.
public struct ChildConfig: Hashable, Sendable {
    /// `mode`.
    public enum Mode: String, Hashable, Sendable {
        case transport, tunnel, beet, pass, drop
    }
    /// `start_action`: `none` waits for `initiate`; `trap` installs a trap by reqid at load time (and makes
    /// `install` unnecessary), answering the kernel's ACQUIREs; `start` initiates at load time.
    public enum StartAction: String, Hashable, Sendable {
        case none, trap, start
    }

    public var name: String
    public var mode: Mode
    /// `policies`: whether charon installs IPsec policies. `false` for per-socket policies.
    public var policies: Bool
    /// `reqid`: the kernel reqid of the SAs, equal to the socket template's. nil lets charon pick one.
    public var reqid: UInt32?
    public var startAction: StartAction
    /// `esp_proposals`, e.g. `aes256gcm16`, `aes128-sha256`; empty keeps charon's default.
    public var espProposals: [String]
    public var localTS: [TrafficSelector]
    public var remoteTS: [TrafficSelector]
    /// Anything else (e.g. `rekey_time`, `life_time`, `close_action`, `dpd_action`, `updown`).
    public var extra: VICIMessage

    public init(
        name: String, mode: Mode = .transport, policies: Bool = false, reqid: UInt32? = nil,
        startAction: StartAction = .none, espProposals: [String] = [],
        localTS: [TrafficSelector] = [.dynamic], remoteTS: [TrafficSelector] = [.dynamic],
        extra: VICIMessage = [:]
    ) {
        self.name = name
        self.mode = mode
        self.policies = policies
        self.reqid = reqid
        self.startAction = startAction
        self.espProposals = espProposals
        self.localTS = localTS
        self.remoteTS = remoteTS
        self.extra = extra
    }

    public var message: VICIMessage {
        var m: VICIMessage = [
            "mode": .string(mode.rawValue),
            "policies": .bool(policies),
        ]
        if let reqid { m["reqid"] = .number(reqid) }
        m["start_action"] = .string(startAction.rawValue)
        if !espProposals.isEmpty { m["esp_proposals"] = .strings(espProposals) }
        m["local_ts"] = .strings(localTS.map(\.text))
        m["remote_ts"] = .strings(remoteTS.map(\.text))
        m.entries += extra.entries
        return m
    }
}

/// An IKE config: swanctl.conf's `connections.<conn>`, loaded with `load-conn`.
///
/// Two shapes cover the per-socket patterns (keying-notes, "Per-socket patterns"): ``initiator(name:local:remote:localAuth:remoteAuth:children:proposals:)``
/// with both addresses, and ``responder(name:local:localAuth:remoteAuth:children:proposals:)`` with
/// `remote_addrs = %any`. charon selects a responder config by identities first, so keep one conn per
/// (local id, remote id) pair holding all its children.
public struct IKEConnConfig: Hashable, Sendable {
    public var name: String
    /// `version`: 2 (IKEv2) unless set; 0 accepts both.
    public var version: Int
    /// `local_addrs` / `remote_addrs` (`%any` by default on either side).
    public var localAddresses: [String]
    public var remoteAddresses: [String]
    /// `local_port` / `remote_port` (charon's `port`, 500, by default).
    public var localPort: UInt16?
    public var remotePort: UInt16?
    /// `proposals` (IKE), e.g. `aes256-sha256-modp2048`, `aes256gcm16-prfsha256-x25519`; empty keeps the default.
    public var proposals: [String]
    /// The local authentication rounds: one gives `local`, several give `local-1`, `local-2`, … (RFC 4739).
    public var localAuth: [AuthConfig]
    public var remoteAuth: [AuthConfig]
    public var children: [ChildConfig]
    /// Anything else at conn level (e.g. `encap`, `mobike`, `dpd_delay`, `rekey_time`, `unique`, `keyingtries`).
    public var extra: VICIMessage

    public init(
        name: String, version: Int = 2, localAddresses: [String] = [], remoteAddresses: [String] = [],
        localPort: UInt16? = nil, remotePort: UInt16? = nil, proposals: [String] = [],
        localAuth: [AuthConfig], remoteAuth: [AuthConfig], children: [ChildConfig], extra: VICIMessage = [:]
    ) {
        self.name = name
        self.version = version
        self.localAddresses = localAddresses
        self.remoteAddresses = remoteAddresses
        self.localPort = localPort
        self.remotePort = remotePort
        self.proposals = proposals
        self.localAuth = localAuth
        self.remoteAuth = remoteAuth
        self.children = children
        self.extra = extra
    }

    /// The initiating side: talks from `local` to `remote`.
    public static func initiator(
        name: String, local: String, remote: String, localAuth: AuthConfig,
        remoteAuth: AuthConfig, children: [ChildConfig], proposals: [String] = []
    )
        -> IKEConnConfig
    {
        IKEConnConfig(
            name: name, localAddresses: [local], remoteAddresses: [remote], proposals: proposals,
            localAuth: [localAuth], remoteAuth: [remoteAuth], children: children)
    }

    /// The responding side: accepts any peer address (`remote_addrs = %any`); `local` nil listens on all.
    public static func responder(
        name: String, local: String? = nil, localAuth: AuthConfig, remoteAuth: AuthConfig,
        children: [ChildConfig], proposals: [String] = []
    ) -> IKEConnConfig {
        IKEConnConfig(
            name: name, localAddresses: local.map { [$0] } ?? [], remoteAddresses: ["%any"],
            proposals: proposals, localAuth: [localAuth], remoteAuth: [remoteAuth], children: children)
    }

    /// The `load-conn` body for this conn (without the outer section named after it).
    public var message: VICIMessage {
        var m: VICIMessage = ["version": .number(version)]
        if !localAddresses.isEmpty { m["local_addrs"] = .strings(localAddresses) }
        if !remoteAddresses.isEmpty { m["remote_addrs"] = .strings(remoteAddresses) }
        if let localPort { m["local_port"] = .number(localPort) }
        if let remotePort { m["remote_port"] = .number(remotePort) }
        if !proposals.isEmpty { m["proposals"] = .strings(proposals) }
        for (prefix, rounds) in [("local", localAuth), ("remote", remoteAuth)] {
            for (index, round) in rounds.enumerated() {
                m.append(rounds.count == 1 ? prefix : "\(prefix)-\(index + 1)", .section(round.message))
            }
        }
        var children = VICIMessage()
        for child in self.children { children.append(child.name, .section(child.message)) }
        m["children"] = .section(children)
        m.entries += extra.entries
        return m
    }
}
