/// What `version` answers (strongSwan's vici README, "version").
public struct CharonVersion: Hashable, Sendable {
    /// The IKE daemon's name: `charon` (or `charon-systemd`).
    public var daemon: String
    /// The strongSwan version, e.g. `5.9.8`.
    public var version: String
    public var sysname: String?
    public var release: String?
    public var machine: String?
}

/// The parts of `stats` the library uses; ``raw`` has the rest (uptime, queues, mallinfo).
public struct CharonStats: Hashable, Sendable {
    /// `ikesas.total`: IKE SAs in any state.
    public var ikeSAs: Int?
    /// `ikesas.half-open`: IKE SAs still in IKE_SA_INIT.
    public var halfOpenIKESAs: Int?
    /// `workers.total` / `workers.idle`.
    public var workers: Int?
    public var idleWorkers: Int?
    /// `plugins`: the names of the loaded plugins.
    public var plugins: [String]
    public var raw: VICIMessage
}

/// A loaded connection as `list-conn` describes it; ``raw`` keeps the whole section.
public struct ConnInfo: Hashable, Sendable {
    public var name: String
    public var localAddresses: [String]
    public var remoteAddresses: [String]
    /// `IKEv1`, `IKEv2` or `0` (any).
    public var version: String?
    /// The CHILD config names under `children`, in order.
    public var children: [String]
    public var raw: VICIMessage
}

/// One `control-log` line streamed during `initiate` / `terminate`.
public struct ControlLog: Hashable, Sendable, CustomStringConvertible {
    /// Subsystem, e.g. `IKE`, `CFG`, `KNL`.
    public var group: String?
    public var level: Int?
    public var ikeSAName: String?
    /// The unique id of the IKE SA the line is about (absent for lines about no IKE SA).
    public var ikeSAID: Int?
    public var message: String

    /// A `control-log` event, or a `log` event (which has the same fields, plus `thread`).
    public init(_ m: VICIMessage) {
        group = m.string("group")
        level = m.int("level")
        ikeSAName = m.string("ikesa-name")
        ikeSAID = m.int("ikesa-uniqueid")
        message = m.string("msg") ?? ""
    }

    public var description: String { "[\(group ?? "?")] \(message)" }
}

/// The kind of a shared secret for `load-shared` (`type`).
public enum SharedSecretType: String, Sendable {
    /// An IKE pre-shared key (`IKE`).
    case ike = "IKE"
    /// An EAP password (`EAP`, also used for EAP-MSCHAPv2 / EAP-MD5).
    case eap = "EAP"
    /// An IKEv1 XAuth password (`XAUTH`).
    case xauth = "XAUTH"
}

/// The kind of a certificate for `load-cert` (`type` and `flag`).
public enum CertificateType: String, Sendable {
    case x509 = "X509"
    case x509AttributeCertificate = "X509_AC"
    case x509CRL = "X509_CRL"
}

public enum CertificateFlag: String, Sendable {
    case none = "NONE"
    case ca = "CA"
    case aa = "AA"
    case ocsp = "OCSP"
}

/// One certificate from `list-certs` (a `list-cert` event).
public struct ListedCertificate: Hashable, Sendable {
    /// `type`: `X509`, `X509_AC`, `X509_CRL`, `OCSP_RESPONSE`, `PUBKEY`.
    public var type: String?
    /// `flag`: for X.509, `NONE` (end entity), `CA`, `AA` or `OCSP`.
    public var flag: String?
    /// `has_privkey = yes`: charon holds the private key (one of its own certificates).
    public var hasPrivateKey: Bool
    /// `data`: the certificate, DER.
    public var data: [UInt8]
}

/// The kind of a private key for `load-key` (`type`). `any` lets charon detect it (5.9: `any`).
public enum PrivateKeyType: String, Sendable {
    case rsa
    case ecdsa
    case ed25519
    case ed448
    case any
}

extension VICIClient {
    /// `version`: the daemon's name and strongSwan version.
    public func version() throws(VICIError) -> CharonVersion {
        let r = try command("version")
        guard let daemon = r.string("daemon"), let version = r.string("version") else {
            throw .malformed("version", "response without daemon/version: \(r)")
        }
        return CharonVersion(
            daemon: daemon, version: version, sysname: r.string("sysname"),
            release: r.string("release"), machine: r.string("machine"))
    }

    /// `stats`: IKE SA counts, workers, loaded plugins.
    public func stats() throws(VICIError) -> CharonStats {
        let r = try command("stats")
        return CharonStats(
            ikeSAs: r.section("ikesas")?.int("total"),
            halfOpenIKESAs: r.section("ikesas")?.int("half-open"),
            workers: r.section("workers")?.int("total"),
            idleWorkers: r.section("workers")?.int("idle"),
            plugins: r.list("plugins") ?? [], raw: r)
    }

    /// `load-shared`: an IKE PSK, EAP or XAuth secret for the identities in `owners` (an empty list matches any
    /// identity). `id` names the secret so that `unload-shared` can remove it (strongSwan ≥ 5.7).
    public func loadShared(_ type: SharedSecretType, secret: [UInt8], owners: [String], id: String? = nil)
        throws(VICIError)
    {
        var m: VICIMessage = [:]
        if let id { m["id"] = .string(id) }
        m["type"] = .string(type.rawValue)
        m["data"] = .value(secret)
        m["owners"] = .strings(owners)
        try command("load-shared", m)
    }

    /// `load-shared` with a text secret.
    public func loadShared(_ type: SharedSecretType, secret: String, owners: [String], id: String? = nil)
        throws(VICIError)
    {
        try loadShared(type, secret: Array(secret.utf8), owners: owners, id: id)
    }

    /// `unload-shared`: removes the secret loaded with `id`.
    public func unloadShared(id: String) throws(VICIError) {
        try command("unload-shared", ["id": .string(id)])
    }

    /// `load-cert`: a PEM or DER certificate (charon's `pem` plugin detects PEM).
    public func loadCert(_ data: [UInt8], type: CertificateType = .x509, flag: CertificateFlag = .none)
        throws(VICIError)
    {
        try command(
            "load-cert", ["type": .string(type.rawValue), "flag": .string(flag.rawValue), "data": .value(data)])
    }

    /// `load-key`: a PEM or DER private key. Returns the key's id (`id`, hex of its public key hash) if given.
    @discardableResult
    public func loadKey(_ data: [UInt8], type: PrivateKeyType = .any) throws(VICIError) -> String? {
        try command("load-key", ["type": .string(type.rawValue), "data": .value(data)]).string("id")
    }

    /// `list-certs` (streams `list-cert`): the certificates charon knows (loaded, and cached from peers), of
    /// `type` and `flag` when given (charon's default is any), and only those whose subject or subjectAltName is
    /// `subject` (an identity as charon parses it). At most ``listLimit`` are returned.
    public func listCerts(type: CertificateType? = nil, flag: CertificateFlag? = nil, subject: String? = nil)
        throws(VICIError) -> [ListedCertificate]
    {
        var m: VICIMessage = [:]
        if let type { m["type"] = .string(type.rawValue) }
        if let flag { m["flag"] = .string(flag.rawValue) }
        if let subject { m["subject"] = .string(subject) }
        var result: [ListedCertificate] = []
        try streamingCommand("list-certs", m, event: "list-cert") { event in
            guard result.count < Self.listLimit, let data = event.bytes("data") else { return }
            result.append(
                ListedCertificate(
                    type: event.string("type"), flag: event.string("flag"),
                    hasPrivateKey: event.bool("has_privkey") ?? false, data: data))
        }
        return result
    }

    /// The most entries a listing command keeps.
    public static let listLimit = 10_000

    /// `clear-creds`: drops every credential loaded over VICI.
    public func clearCreds() throws(VICIError) {
        try command("clear-creds")
    }

    /// `load-conn`: loads (or replaces) the IKE config `name` with `config` (swanctl.conf's `connections.<name>`
    /// section, see ``IKEConnConfig``).
    public func loadConn(name: String, config: VICIMessage) throws(VICIError) {
        try command("load-conn", [name: .section(config)])
    }

    /// `load-conn` of a typed configuration.
    public func loadConn(_ conn: IKEConnConfig) throws(VICIError) {
        try loadConn(name: conn.name, config: conn.message)
    }

    /// `unload-conn`: removes the IKE config `name` (its SAs stay until terminated).
    public func unloadConn(name: String) throws(VICIError) {
        try command("unload-conn", ["name": .string(name)])
    }

    /// `get-conns`: the names of the connections loaded over VICI.
    public func getConns() throws(VICIError) -> [String] {
        try command("get-conns").list("conns") ?? []
    }

    /// `list-conns` (streams `list-conn`): every loaded connection, or only `ike`.
    public func listConns(ike: String? = nil) throws(VICIError) -> [ConnInfo] {
        var request: VICIMessage = [:]
        if let ike { request["ike"] = .string(ike) }
        var result: [ConnInfo] = []
        try streamingCommand("list-conns", request, event: "list-conn") { event in
            for (name, s) in event.sections {
                result.append(
                    ConnInfo(
                        name: name, localAddresses: s.list("local_addrs") ?? [],
                        remoteAddresses: s.list("remote_addrs") ?? [], version: s.string("version"),
                        children: s.section("children")?.keys ?? [], raw: s))
            }
        }
        return result
    }

    /// `install`: installs the trap (or drop/bypass) policy of CHILD config `child`. With `policies = no` and
    /// `start_action = trap` this registers the trap by reqid only (keying-notes: charon's trap manager matches
    /// ACQUIREs on the child config's reqid).
    public func install(child: String, ike: String? = nil) throws(VICIError) {
        var m: VICIMessage = ["child": .string(child)]
        if let ike { m["ike"] = .string(ike) }
        try command("install", m)
    }

    /// `uninstall`: removes what `install` installed.
    public func uninstall(child: String, ike: String? = nil) throws(VICIError) {
        var m: VICIMessage = ["child": .string(child)]
        if let ike { m["ike"] = .string(ike) }
        try command("uninstall", m)
    }

    /// `initiate` (streams `control-log`): negotiates CHILD config `child` (under IKE config `ike`), or the IKE
    /// SA `ike` alone when `child` is nil (charon ≥ 5.9.6 accepts an IKE-only initiate).
    ///
    /// `timeout` is passed to charon, which answers `success = no` when it elapses; this side waits 5 s more.
    /// On failure the error's `controlLog` holds the last `control-log` lines (charon's reason among them, e.g.
    /// "unable to install IPsec SA (SAD) in kernel"). Returns every `control-log` line.
    @discardableResult
    public func initiate(
        child: String?, ike: String? = nil, timeout: Duration = .seconds(10),
        logLevel: Int? = nil, onLog: ((ControlLog) -> Void)? = nil
    ) throws(VICIError) -> [ControlLog] {
        var m: VICIMessage = [:]
        if let child { m["child"] = .string(child) }
        if let ike { m["ike"] = .string(ike) }
        guard child != nil || ike != nil else { throw .invalid("initiate", "neither child nor ike given") }
        m["timeout"] = .number(Self.milliseconds(timeout))
        if let logLevel { m["loglevel"] = .number(logLevel) }
        return try controlLogged("initiate", m, timeout: timeout, onLog: onLog)
    }

    /// `initiate` without waiting (`timeout = -1`): charon starts the negotiation of CHILD config `child` (under
    /// IKE config `ike`) and answers once it has been started, with no `control-log` stream. While an `initiate`
    /// waits, charon's controller formats every log message of every level (it registers a logger at level 4 for
    /// the callback), which costs it more than the exchange itself when traffic selectors name ports; this does
    /// not. The outcome is charon's events (`child-updown`) and its `log` stream.
    public func startInitiate(child: String, ike: String? = nil) throws(VICIError) {
        var m: VICIMessage = ["child": .string(child), "timeout": .number(-1)]
        if let ike { m["ike"] = .string(ike) }
        try command("initiate", m)
    }

    /// `terminate` (streams `control-log`) by IKE config name, IKE SA unique id, CHILD config name or CHILD SA
    /// unique id (`ike`, `ike-id`, `child`, `child-id`; at least one). `force` deletes without waiting for the
    /// peer's answer.
    @discardableResult
    ///
    /// With `waiting: false` charon answers at once (`timeout` -1) and completes the deletion on its own; `timeout`
    /// then bounds only the wait for that answer.
    public func terminate(
        ike: String? = nil, ikeID: Int? = nil, child: String? = nil, childID: Int? = nil,
        force: Bool = false, timeout: Duration = .seconds(10), waiting: Bool = true,
        onLog: ((ControlLog) -> Void)? = nil
    ) throws(VICIError) -> [ControlLog] {
        var m: VICIMessage = [:]
        if let ike { m["ike"] = .string(ike) }
        if let ikeID { m["ike-id"] = .number(ikeID) }
        if let child { m["child"] = .string(child) }
        if let childID { m["child-id"] = .number(childID) }
        guard !m.isEmpty else { throw .invalid("terminate", "no SA named: give ike, ikeID, child or childID") }
        if force { m["force"] = .bool(true) }
        m["timeout"] = .number(waiting ? Self.milliseconds(timeout) : -1)
        // Not waiting and no one to read its log: one round trip, without registering for `control-log` (a
        // daemon releasing a departed client's many connections pays one exchange each, not three).
        guard waiting || onLog != nil else {
            try command("terminate", m, timeout: timeout + .seconds(5))
            return []
        }
        return try controlLogged("terminate", m, timeout: timeout, onLog: onLog)
    }

    /// `rekey`: rekeys an IKE SA or CHILD SA by name or unique id (`reauth` for a reauthentication).
    public func rekey(
        ike: String? = nil, ikeID: Int? = nil, child: String? = nil, childID: Int? = nil,
        reauth: Bool = false
    ) throws(VICIError) {
        var m: VICIMessage = [:]
        if let ike { m["ike"] = .string(ike) }
        if let ikeID { m["ike-id"] = .number(ikeID) }
        if let child { m["child"] = .string(child) }
        if let childID { m["child-id"] = .number(childID) }
        guard !m.isEmpty else { throw .invalid("rekey", "no SA named: give ike, ikeID, child or childID") }
        if reauth { m["reauth"] = .bool(true) }
        try command("rekey", m)
    }

    /// `list-sas` (streams `list-sa`): every IKE SA with its CHILD SAs, or those of IKE config `ike`, or the one
    /// with unique id `ikeID`. `noblock` skips IKE SAs that are busy instead of waiting for them. `child` /
    /// `childID` keep only the CHILD SAs of that CHILD config name / unique id (charon still lists every
    /// matching IKE SA, with an empty `child-sas` section where none of its children match).
    public func listSAs(
        ike: String? = nil, ikeID: Int? = nil, child: String? = nil, childID: Int? = nil,
        noblock: Bool = false
    ) throws(VICIError) -> [IKESAInfo] {
        var m: VICIMessage = [:]
        if noblock { m["noblock"] = .bool(true) }
        if let ike { m["ike"] = .string(ike) }
        if let ikeID { m["ike-id"] = .number(ikeID) }
        if let child { m["child"] = .string(child) }
        if let childID { m["child-id"] = .number(childID) }
        var result: [IKESAInfo] = []
        try streamingCommand("list-sas", m, event: "list-sa") { result += IKESAInfo.parse(event: $0) }
        return result
    }

    private func controlLogged(
        _ name: String, _ m: VICIMessage, timeout: Duration,
        onLog: ((ControlLog) -> Void)?
    ) throws(VICIError) -> [ControlLog] {
        var lines: [ControlLog] = []
        do throws(VICIError) {
            try streamingCommand(name, m, event: "control-log", timeout: timeout + .seconds(5)) { event in
                let line = ControlLog(event)
                if lines.count < 10_000 { lines.append(line) }
                onLog?(line)
            }
        } catch {
            var error = error
            error.controlLog = lines
            throw error
        }
        return lines
    }

    static func milliseconds(_ duration: Duration) -> Int {
        let (seconds, attoseconds) = duration.components
        return Int(clamping: seconds * 1000 + attoseconds / 1_000_000_000_000_000)
    }
}
