import Foundation
import Glibc
import IPAddressing
import Logging
import Synchronization
import SystemSupport
import VICI
import XFRM

/// Keying through strongSwan's charon over VICI: the library's default backend.
///
/// How it maps the per-flow binding onto charon (facts in keying-notes.md; model in the SecureSocket
/// documentation, "Binding"):
/// - Every conn and child has `policies = no` and `mode = transport`: charon installs SAs only, and the kernel
///   ties them to a socket by reqid and by the SA's selector.
/// - **Initiator** (a socket that connects, or sends to a peer): per flow, a conn with `remote_addrs = peer`, the
///   remote identity pinned to the peer target name (`%any` only when the application set none) and the remote
///   trust pinned to this configuration's authorities, holding one child whose reqid is the socket's and whose
///   traffic selectors are exactly the flow (`dynamic[proto/port]` on both sides). charon reuses an IKE SA of
///   an equal conn (same addresses, identities and authentication), so a new connection to a known peer costs
///   one CREATE_CHILD_SA. After `initiate` the child's IKE SA identity is checked again. The socket's reqid is
///   in no other conn: no peer can put SAs on it by initiating towards us.
/// - **Responder** (a listening socket): one conn per backend and address family (`remote_addrs = 0.0.0.0/0` or
///   `::/0`), holding one child per listener of that family (its reqid, `local_ts = ADDRESS/32[proto/port]`, `/128` for IPv6,
///   or `dynamic[proto/port]` for a wildcard listener), so
///   each listener is reachable and a peer's narrowed selectors make SAs for one connection. The children peers
///   make there are followed and policed (`ResponderChildren`): another peer's child covering a bound
///   connection, a wide one overlapping another peer's, and rival ones for one flow are terminated.
/// - With a private charon, `set_proto_port_transport_sa = yes` makes the SA selectors the negotiated flow. A
///   system charon without it installs address-only selectors; the sockets above are pinned to their SA pair by
///   SPI, so that does not matter to them (see the SecureSocket documentation, "Binding").
/// - Release terminates the registration's own CHILD_SAs by unique id and unloads its conn; IKE SAs stay for
///   other connections (charon closes idle ones by its own rules).
/// - Only encrypting ESP proposals are offered (AES-GCM, AES-CBC+SHA-2), so `GUARANTEE_ENCRYPTION` holds by
///   construction; the query still checks the installed SAs.
/// - Peer authentication: a group key (`psk`, owners `%any`) proves group membership only, per-peer keys
///   (owners `[peer]`, never our own identity) prove the peer, certificates prove what they name. Every
///   ``KeyedProtection`` says which (``PeerAuthentication``); with certificates it also carries the subject and
///   subjectAltNames of the peer's certificate, fetched once per IKE SA with `list-certs` (see
///   ``PeerCertificateLookup``).
/// - Names carry the pid and an instance number (`wss<pid>x<n>…`), so several processes (and several backends
///   in one process) share one charon without name collisions; reqids never collide (ALE's reqid allocator).
public final class StrongSwanBackend: KeyingBackend, Sendable {
    /// How this host authenticates itself.
    public struct Credentials: Sendable {
        public enum Method: Sendable {
            /// A group key: one pre-shared key for every peer (charon's owners `%any`). Any holder can claim any
            /// identity; peers authenticated with it are ``PeerAuthentication/Machine/groupKey``.
            case psk(String)
            /// One pre-shared key per peer, by peer identity, each offered for that identity only (owners
            /// `[identity]`); peers are ``PeerAuthentication/Machine/peerKey``. Never a group key beside them: charon
            /// tries every matching key when it checks a peer, so the group key would authenticate any claim.
            case peerKeys([String: String])
            /// A certificate (PEM or DER) with its private key, and the authorities that sign peers' certificates.
            case certificate(certificate: [UInt8], privateKey: [UInt8], authorities: [[UInt8]])
        }

        /// This host's IKE identity (an FQDN, an address, an email, or a certificate subject / subjectAltName).
        public var identity: String
        public var method: Method
        /// Users a server accepts in a second authentication round (EAP-MD5), by name and secret. When there are
        /// any, the responder requires that round, and the query reports the peer user.
        public var eapUsers: [String: String]

        public init(identity: String, method: Method, eapUsers: [String: String] = [:]) {
            self.identity = identity
            self.method = method
            self.eapUsers = eapUsers
        }
    }

    public let name = "strongswan"
    public let vici: VICIClient
    /// The private daemon when the backend started one (nil for a system charon).
    public let daemon: CharonDaemon?
    public let credentials: Credentials
    /// ESP proposals: all encrypt.
    public static let espProposals = ["aes256gcm16", "aes128gcm16", "aes256-sha256", "aes128-sha256"]
    /// How long a negotiation keeps retrying a peer that answers `TS_UNACCEPTABLE` or has no config yet (a
    /// listener the peer's library has not yet seen listening).
    static let notReadyRetryBudget: Duration = .milliseconds(1500)

    private let prefix: String
    private static let instances = Atomic<Int>(0)
    private let negotiations = Atomic<Int>(0)
    /// Each listener's child (by reqid) in the responder conn of its family.
    private let responderChildren = Mutex<[UInt32: (family: IPAddressFamily, child: ChildConfig)]>([:])
    /// What charon told us about the CHILD_SAs it installed, by inbound SPI (fed by `child-updown` and
    /// `child-rekey`), so a query never walks `list-sas`.
    private let children = ChildRegistry()
    /// Negotiations started without a waiting `initiate`, followed through charon's `log` stream.
    private let watches = NegotiationWatches()
    /// How negotiations to each peer may start.
    private let peers = PeerNegotiations()
    private let logLines: LogSubscription
    private let events = Mutex<VICIEventStream?>(nil)
    /// Wakes the event supervisor's back-off when the backend stops.
    private let eventsWake = ChangeSignal()
    /// Counts subscriptions to charon's events: the one whose number is current is followed.
    private let eventGeneration = Atomic<Int>(0)
    private let stopped = Atomic<Bool>(false)
    /// How often charon was found gone and the backend's state loaded into it again.
    public var resyncs: Int { resyncCount.load(ordering: .relaxed) }
    private let resyncCount = Atomic<Int>(0)
    /// How many negotiations were started without a waiting `initiate` (a first contact: charon's answer comes
    /// as events), and how many of those a line of charon's log ended (inspection, tests).
    public var startedNegotiations: (started: Int, endedByLog: Int) {
        (startedCount.load(ordering: .relaxed), endedByLogCount.load(ordering: .relaxed))
    }
    private let startedCount = Atomic<Int>(0)
    private let endedByLogCount = Atomic<Int>(0)
    /// The peer certificate of each IKE SA (certificate credentials only).
    private let peerCertificates: PeerCertificateCache?

    /// Where the backend says what it does about charon (restarts, reloads); secrets are never logged.
    public let logger: Logger

    /// Uses `vici` (a system charon or a private one) and loads `credentials` into it.
    public init(
        vici: VICIClient, credentials: Credentials, daemon: CharonDaemon? = nil,
        logger: Logger = Logger(label: "wss.keying")
    ) throws(KeyingError) {
        self.logger = logger
        self.vici = vici
        self.daemon = daemon
        self.credentials = credentials
        logLines = LogSubscription(
            path: vici.path, deliver: { [watches] line in watches.record(line) },
            lost: { [watches] in watches.streamLost() })
        for folder in daemon?.reclaimedFolders ?? [] {
            logger.notice(
                "removed the private charon folder of a process that died without stopping its charon",
                metadata: ["folder": "\(folder)"])
        }
        // pid + instance: unique among every process and backend sharing one charon.
        self.prefix = "wss\(getpid())x\(Self.instances.wrappingAdd(1, ordering: .relaxed).oldValue)"
        if case .certificate(_, _, let authorities) = credentials.method {
            peerCertificates = PeerCertificateCache(selector: PeerCertificateSelector(authorities: authorities))
        } else {
            peerCertificates = nil
        }
        // charon's words differ by series (CharonLog): read once it answers, and again after each restart.
        if let version = try? vici.version() { logWords.withLock { $0 = CharonLog(version: version.version) } }
        try loadCredentials()
        do {
            for family in [IPAddressFamily.inet, .inet6] { try loadResponder(family) }
        } catch {
            shutdown()
            throw KeyingError(.unavailable, "load-conn \(prefix)-responder", underlying: error)
        }
        // The first subscription before init returns, so no event of a first negotiation is missed.
        superviseEvents()
    }

    deinit {
        stopped.store(true, ordering: .releasing)
        events.withLock { $0?.stop() }
        eventsWake.notify()
    }

    /// Follows charon's `child-updown` / `child-rekey` events for the registry, on the event stream's own thread.
    /// When the stream ends, charon has gone (killed, crashed, restarted by its supervisor): the backend then
    /// brings it back into the state it needs (see ``resync()``), retrying with a bounded back-off, and follows
    /// the new charon's events. The first subscription is made before `init` returns, so no event of a first
    /// negotiation is missed.
    private func superviseEvents() {
        do throws(VICIError) {
            try followEvents()
        } catch {
            // charon is not there yet: the supervisor brings it back, on a thread of its own.
            try? Threads.detach { [weak self] in self?.eventsEnded(error) }
        }
    }

    /// Subscribes to charon's child events, handled by this backend on the stream's thread.
    /// Only the end of the current subscription starts the supervisor (a stale one stopped on purpose does not).
    private func followEvents() throws(VICIError) {
        let generation = eventGeneration.add(1, ordering: .acquiringAndReleasing).newValue
        let stream = try VICIEventStream(
            path: vici.path, events: ["child-updown", "child-rekey", "ike-updown"],
            handle: { [weak self] event in self?.handle(event) },
            ended: { [weak self] error in
                guard let self, eventGeneration.load(ordering: .acquiring) == generation else { return }
                eventsEnded(error)
            })
        events.withLock { $0 = stream }
        seedIKESAs()
    }

    /// What charon's IKE SAs are now, in any state, once the events follow them (events missed while no stream
    /// was subscribed are not waited for). Only a private charon's: only there are first contacts started without
    /// a waiting `initiate` (``mayStart(peer:)``).
    private func seedIKESAs() {
        guard daemon != nil, let sas = try? vici.listSAs(noblock: true) else { return }
        peers.add(listed: sas)
    }

    /// The event stream ended (on its finishing thread): unless the backend stopped, subscribe again and resync
    /// charon, with a back-off from 100 ms to 5 s between attempts.
    private func eventsEnded(_ error: VICIError?) {
        var backoff = Backoff(initial: .milliseconds(100), maximum: .seconds(5))
        // Bounded by the backend's life: each turn waits its pause unless the backend stops.
        while !stopped.load(ordering: .acquiring), daemon?.wasStopped != true {
            let pause = backoff.next()
            logger.warning(
                "charon's event stream ended: bringing charon back",
                metadata: [
                    "vici": "\(vici.path)", "private": "\(daemon != nil)", "retry-in": "\(pause)",
                    "error": "\(error.map { "\($0)" } ?? "none")",
                ])
            _ = eventsWake.wait(until: Deadline(after: pause)) { stopped.load(ordering: .acquiring) ? () : nil }
            guard !stopped.load(ordering: .acquiring), daemon?.wasStopped != true else { return }
            do throws(KeyingError) {
                // The resync brings a private charon back (it starts it), then the new charon's events are
                // followed.
                try resync()
                do throws(VICIError) {
                    try followEvents()
                } catch {
                    throw charonLog.classify(error)
                }
                logger.notice(
                    "charon is back: credentials, responder conn and listeners reloaded",
                    metadata: ["charon-pid": "\(daemon?.pid ?? vici.daemonProcessID ?? 0)"])
                return
            } catch {
                logger.error("charon is not back yet", metadata: ["reason": "\(error)"])
            }
        }
    }

    /// One of charon's child events: recorded, then acted on (a refused child terminated, the sockets above told).
    private func handle(_ event: VICIEvent) {
        if event.name == "ike-updown" {
            peers.record(ikeUpdown: event)
            return
        }
        defer { watches.changed.notify() }
        if event.name == "child-rekey" { logger.trace("charon event", metadata: ["event": "\(event)"]) }
        for outcome in children.record(event) {
            switch outcome {
            case .refused(let refusal):
                refuse(refusal)
            case .rekeyed(let old, let replacement, let reqid, let flow):
                notify(.rekeyed(oldInboundSPI: old, replacement: authenticated(replacement), reqid: reqid, flow: flow))
            case .peerChild(let child, let protection):
                notify(.peerChild(reqid: child.reqid, flow: child.coverage.exactFlow, protection: protection))
            case .peerChildGone(let child):
                notify(.peerChildGone(reqid: child.reqid, flow: child.coverage.exactFlow))
            case .ownChild(let reqid, let flow, let protection):
                notify(.ownChild(reqid: reqid, flow: flow, protection: authenticated(protection)))
            }
        }
    }

    /// Terminates a child a peer made on a listener's reqid that the binding does not allow, and says why.
    private func refuse(_ refusal: ResponderChildren.Refusal) {
        let child = refusal.child
        logger.warning(
            "CHILD_SA refused on a listener's reqid",
            metadata: [
                "peer-identity": "\(child.peer)", "reqid": "\(child.reqid)",
                "traffic-selectors": "\(child.coverage)", "spi-in": "\(String(child.inboundSPI, radix: 16))",
                "ike-sa": "\(child.ikeSAID.map(String.init) ?? "?")", "reason": "\(refusal.reason)",
            ])
        let vici = self.vici
        guard let id = child.childID else { return }
        // Off the event stream's task: a terminate waits for charon's answer.
        try? Threads.detach { _ = try? vici.terminate(childID: id, force: true, timeout: .seconds(2)) }
    }

    private let observers = Mutex<[@Sendable (KeyingEvent) -> Void]>([])

    public func observe(_ handler: @escaping @Sendable (KeyingEvent) -> Void) {
        observers.withLock { $0.append(handler) }
    }

    private func notify(_ event: KeyingEvent) {
        for handler in observers.withLock({ $0 }) { handler(event) }
    }

    public func bindAccepted(_ flow: KeyedFlow, reqid: UInt32) -> AcceptedBinding {
        switch children.decide(flow, reqid: reqid) {
        case .child(let child):
            children.bind(flow, to: child)
            guard let protection = childProtection(inboundSPI: child.inboundSPI, peer: flow.remote) else {
                return .unknown
            }
            return .pair(identified(authenticated(protection)))
        case .unknown:
            return .unknown
        case .contested(let peers):
            return .contested(peers.map(\.description))
        }
    }

    public func unbindAccepted(_ flow: KeyedFlow) { children.unbind(flow) }

    public func dropPeerChildren(reqid: UInt32) {
        for child in children.peerChildren(reqid: reqid) {
            children.remove(inboundSPI: child.inboundSPI)
            if let id = child.childID { _ = try? vici.terminate(childID: id, force: true, timeout: .seconds(2)) }
        }
    }

    /// Makes charon ready again after it went away: a private charon is started again; then this
    /// configuration's credentials, the responder conn and the listeners' children are loaded into it. The
    /// kernel's SAs of established connections were never charon's to keep: they go on protecting their flows
    /// meanwhile. Initiators load their own conns per connection.
    func resync() throws(KeyingError) {
        guard !stopped.load(ordering: .acquiring) else { return }
        if let daemon, !daemon.isRunning {
            peers.forgetIKESAs()
            do { try daemon.restart() } catch {
                throw KeyingError(.unavailable, "restarting the private charon", underlying: error)
            }
        }
        vici.disconnect()
        do {
            let version = try vici.version()
            logWords.withLock { $0 = CharonLog(version: version.version) }
        } catch {
            throw KeyingError(.unavailable, "charon does not answer", underlying: error)
        }
        try loadCredentials()
        do {
            for family in [IPAddressFamily.inet, .inet6] { try loadResponder(family) }
        } catch {
            throw KeyingError(.unavailable, "load-conn \(prefix)-responder", underlying: error)
        }
        resyncCount.add(1, ordering: .relaxed)
    }

    /// A system charon when its VICI socket answers, otherwise a private charon for `namespace`.
    public static func systemOrPrivate(
        credentials: Credentials, namespace: NetworkNamespace = .current,
        options: CharonDaemon.Options = CharonDaemon.Options(),
        logger: Logger = Logger(label: "wss.keying")
    ) throws(KeyingError)
        -> StrongSwanBackend
    {
        if let path = CharonDaemon.systemVICISocket(namespace: namespace) {
            do {
                return try StrongSwanBackend(vici: try VICIClient(path: path), credentials: credentials, logger: logger)
            } catch {
                throw KeyingError(.unavailable, "system charon at \(path)", underlying: error)
            }
        }
        let daemon: CharonDaemon
        do {
            daemon = try CharonDaemon(namespace: namespace, options: options)
        } catch {
            throw KeyingError(.unavailable, "starting a private charon", underlying: error)
        }
        return try StrongSwanBackend(vici: daemon.vici, credentials: credentials, daemon: daemon, logger: logger)
    }

    /// Stops following charon, unloads the responder conns and stops the private charon. Once: a second call
    /// (the engine's shutdown, then its owner's) does nothing.
    public func shutdown() {
        guard !stopped.exchange(true, ordering: .acquiringAndReleasing) else { return }
        events.withLock { $0?.stop() }
        logLines.stop()
        eventsWake.notify()
        // A private charon that is gone took its conns along.
        let charonGone = daemon.map { !$0.isRunning } ?? false
        for family in [IPAddressFamily.inet, .inet6] where !charonGone {
            let name = responderName(family)
            // charon may still be busy with the deletions just asked for: a refused or late unload is tried again;
            // a charon that does not answer at all is not.
            for attempt in 1...3 {
                do throws(VICIError) {
                    try vici.unloadConn(name: name)
                    break
                } catch {
                    guard error.code != .daemonUnavailable else { break }
                    logger.notice(
                        "unloading the responder conn failed",
                        metadata: ["conn": "\(name)", "attempt": "\(attempt)", "error": "\(error)"])
                    sleepFor(.milliseconds(200))
                }
            }
        }
        daemon?.stop()
    }

    /// Loads this configuration's credentials into charon (at start, and again after charon restarted).
    private func loadCredentials() throws(KeyingError) {
        do {
            switch credentials.method {
            case .psk(let secret):
                try vici.loadShared(.ike, secret: secret, owners: [], id: "\(prefix)-psk")
            case .peerKeys(let keys):
                for (index, identity) in keys.keys.sorted().enumerated() {
                    guard PeerIdentityText.isLiteral(identity),
                        !KeyingConfiguration.sameIdentity(identity, credentials.identity)
                    else {
                        throw KeyingError(
                            .rejected,
                            "peer key \(index) names `\(identity)`: a per-peer key names one "
                                + "peer, never a pattern nor this host's own identity")
                    }
                    try vici.loadShared(.ike, secret: keys[identity]!, owners: [identity], id: "\(prefix)-psk\(index)")
                }
            case .certificate(let certificate, let key, let authorities):
                for authority in authorities { try vici.loadCert(authority, flag: .ca) }
                try vici.loadCert(certificate)
                _ = try vici.loadKey(key)
            }
            for (user, secret) in credentials.eapUsers.sorted(by: { $0.key < $1.key }) {
                try vici.loadShared(.eap, secret: secret, owners: [user], id: "\(prefix)-eap-\(user)")
            }
        } catch let error as KeyingError {
            throw error
        } catch {
            throw KeyingError(.unavailable, "loading credentials into charon", underlying: error)
        }
    }

    // MARK: - Authentication rounds

    /// One responder conn per address family: a listener's child is in its socket's family's conn, which only
    /// peers of that family reach (`remote_addrs`), so an `AF_INET6` listener's reqid never gets IPv4 SAs (which
    /// another user's IPv4 socket on the same port would receive, decrypted).
    private func responderName(_ family: IPAddressFamily) -> String {
        "\(prefix)-responder\(family == .inet6 ? "6" : "4")"
    }

    /// The names of one negotiation's entries in charon: its conn, its CHILD config, its user's secret.
    private func connName(reqid: UInt32, number: Int) -> String { "\(prefix)-c\(reqid)-\(number)" }
    private static func childName(reqid: UInt32, number: Int) -> String { "c\(reqid)-\(number)" }
    private func userSecretID(reqid: UInt32, number: Int) -> String { "\(prefix)-user-\(reqid)-\(number)" }

    private var authorities: [[UInt8]] {
        if case .certificate(_, _, let authorities) = credentials.method { return authorities }
        return []
    }

    private func localAuth() -> AuthConfig {
        switch credentials.method {
        case .psk, .peerKeys: .psk(id: credentials.identity)
        case .certificate(let certificate, _, _): .pubkey(id: credentials.identity, certificates: [certificate])
        }
    }

    /// The peer's round: its identity (pinned when known) and, for certificates, only this configuration's
    /// authorities as trust anchors, so other credentials in a shared charon cannot vouch for our peers.
    private func remoteAuth(identity: String?) -> AuthConfig {
        switch credentials.method {
        case .psk, .peerKeys: .psk(id: identity ?? "%any")
        case .certificate: .pubkey(id: identity ?? "%any", caCertificates: authorities)
        }
    }

    /// Options every conn of ours carries. `unique = never`: many connections, users and processes share IKE
    /// SAs with one peer, so an IKE_AUTH that carries INITIAL_CONTACT (a peer's charon that restarted, or any
    /// holder of a group key claiming an identity) must not make charon delete the other IKE SAs with that
    /// peer and every connection on them; our initiators send none either.
    static let connOptions: VICIMessage = ["unique": "never"]

    static func protocolName(_ p: XFRMUpperProtocol) -> String? {
        switch p {
        case .tcp: "tcp"
        case .udp: "udp"
        default: nil
        }
    }

    // MARK: - Responder

    /// The responder conn stays loaded for the backend's life, with no child while nothing listens: a peer
    /// that arrives just before a listener is seen gets an IKE SA and `TS_UNACCEPTABLE` for its child (which
    /// our initiators retry) instead of an authentication failure.
    private func loadResponder(_ family: IPAddressFamily) throws(VICIError) {
        let children = responderChildren.withLock { table in
            table.keys.sorted().compactMap { table[$0] }.filter { $0.family == family }.map(\.child)
        }
        // With EAP users configured, the peer must also authenticate a user (RFC 4739 second round).
        var remote = [remoteAuth(identity: nil)]
        if !credentials.eapUsers.isEmpty { remote.append(AuthConfig(method: .eapMD5, eapID: "%any")) }
        try vici.loadConn(
            IKEConnConfig(
                name: responderName(family), remoteAddresses: [family == .inet6 ? "::/0" : "0.0.0.0/0"],
                localAuth: [localAuth()], remoteAuth: remote, children: children, extra: Self.connOptions))
    }

    /// A listener bound to one address offers only that address (`local_ts = ADDRESS/32[proto/port]`): a peer
    /// cannot put SAs on its reqid for the same port on another of this host's addresses.
    public func listen(_ request: KeyingRequest, localPort: UInt16, localAddress: IPAddress?) throws(KeyingError)
        -> KeyingRegistration
    {
        let proto = Self.protocolName(request.transportProtocol)
        let local: TrafficSelector =
            if let localAddress, !localAddress.isAny {
                .subnet("\(localAddress)/\(localAddress.family == .inet6 ? 128 : 32)", protocol: proto, port: localPort)
            } else {
                .dynamic(protocol: proto, port: localPort)
            }
        let child = ChildConfig(
            name: "l\(request.reqid)", mode: .transport, policies: false, reqid: request.reqid,
            startAction: .none, espProposals: Self.espProposals,
            localTS: [local],
            remoteTS: [.dynamic(protocol: proto, port: nil)])
        let family: IPAddressFamily = request.family == .inet6 ? .inet6 : .inet
        responderChildren.withLock { $0[request.reqid] = (family, child) }
        children.claimResponder(reqid: request.reqid)
        do {
            try loadResponder(family)
        } catch {
            responderChildren.withLock { _ = $0.removeValue(forKey: request.reqid) }
            children.unclaimResponder(reqid: request.reqid)
            throw KeyingError(.unavailable, "load-conn \(responderName(family))", underlying: error)
        }
        return KeyingRegistration(reqid: request.reqid, entry: .responder)
    }

    // MARK: - Initiator

    public func negotiate(_ request: KeyingRequest, flow: KeyedFlow, timeout: Duration) throws(KeyingError)
        -> Negotiated
    {
        let deadline = ContinuousClock.now + timeout
        let number = negotiations.wrappingAdd(1, ordering: .relaxed).oldValue
        let conn = connName(reqid: request.reqid, number: number)
        let childName = Self.childName(reqid: request.reqid, number: number)
        let pinned = request.peerIdentityOptional ? nil : request.requiredPeerIdentity
        if let pinned, !PeerIdentityText.isLiteral(pinned) {
            throw KeyingError(.rejected, "peer identity `\(pinned)` is a pattern, not an identity")
        }
        let proto = Self.protocolName(flow.transportProtocol)
        var localRounds = [localAuth()]
        var secrets: [String] = []
        if let user = request.userName, let password = request.userPassword {
            // The second round: this user, proven with EAP-MD5, so the server learns who is calling.
            let id = userSecretID(reqid: request.reqid, number: number)
            do {
                try vici.loadShared(.eap, secret: password, owners: [user], id: id)
            } catch {
                throw KeyingError(.unavailable, "load-shared for \(user)", underlying: error)
            }
            secrets.append(id)
            localRounds.append(AuthConfig(method: .eap, id: credentials.identity, eapID: user))
        }
        let registration = KeyingRegistration(
            reqid: request.reqid, entry: .negotiation(number: number, userSecret: !secrets.isEmpty))
        // Claimed before the conn is loaded, so the child's event is kept; every path out releases (unclaims).
        children.claim(reqid: request.reqid)
        var config = IKEConnConfig(
            name: conn, localAddresses: ["%any"], remoteAddresses: ["\(flow.remote)"],
            localAuth: localRounds, remoteAuth: [remoteAuth(identity: pinned)],
            children: [
                ChildConfig(
                    name: childName, mode: .transport, policies: false, reqid: request.reqid,
                    startAction: .none, espProposals: Self.espProposals,
                    localTS: [.dynamic(protocol: proto, port: flow.localPort)],
                    remoteTS: [.dynamic(protocol: proto, port: flow.remotePort)])
            ],
            extra: connOptions(for: flow.remote))
        // A charon that went away is brought back once (resync) and the negotiation runs again in it.
        for attempt in 0..<2 {
            do throws(KeyingError) {
                do {
                    try vici.loadConn(config)
                } catch {
                    throw KeyingError(.unavailable, "load-conn \(conn)", underlying: error)
                }
                let child = try peers.negotiating(with: flow.remote) { () throws(KeyingError) in
                    try initiate(child: childName, conn: conn, peer: flow.remote, deadline: deadline) {
                        // The IKE SA did not answer: a new generation of the conn, loaded before the next attempt.
                        self.generations.withLock { $0[flow.remote, default: 0] += 1 }
                        config.extra = self.connOptions(for: flow.remote)
                        try? self.vici.loadConn(config)
                    }
                }
                // The registration names its child config (childNames): release terminates every CHILD_SA of that
                // config, rekeyed ones included, so the unique id is not kept (one array less per connection).
                try verify(child, request: request)
                return Negotiated(protection: authenticated(child), registration: registration)
            } catch  where error.code == .unavailable && attempt == 0 && !stopped.load(ordering: .acquiring) {
                guard (try? resync()) != nil else {
                    release(registration)
                    throw error
                }
            } catch {
                release(registration)
                throw error
            }
        }
        release(registration)
        throw KeyingError(.unavailable, "charon went away during the negotiation")
    }

    /// Starts the negotiation without a waiting `initiate` and waits, at most `bound`, for its CHILD_SA's
    /// `child-updown` event or for a line of charon's `log` stream that ends it. It then fails as a waiting
    /// `initiate` would have: with charon's answer and the negotiation's lines as its `control-log`, or with "not
    /// established after" when nothing came. Its cost to charon is the exchange's: a waiting `initiate` makes
    /// charon format every log message meanwhile (``VICIClient/startInitiate(child:ike:)``).
    ///
    /// Nil when charon's `log` stream cannot be followed: the attempt is then made with a waiting `initiate`.
    private func start(child childName: String, conn: String, bound: Duration) throws(VICIError) -> KeyedProtection? {
        let until = Deadline(after: bound)
        do {
            try logLines.retain(timeout: min(bound / 4, .seconds(1)))
        } catch {
            logger.notice("charon's log stream cannot be followed", metadata: ["error": "\(error)"])
            return nil
        }
        defer { logLines.release() }
        startedCount.add(1, ordering: .relaxed)
        watches.begin(child: childName, conn: conn, words: charonLog)
        defer { watches.end(child: childName) }
        do {
            // A session of its own: charon starts the IKE SA before it answers, which waits while that SA is busy.
            let session = try VICIClient(path: vici.path, timeout: max(until.remaining, .milliseconds(1)))
            defer { session.disconnect() }
            try session.startInitiate(child: childName, ike: conn)
        } catch  where error.code == .timedOut {
            // charon may have started it all the same: its outcome is awaited, not asked for again.
        }
        let outcome = watches.changed.wait(until: until) { () -> Result<KeyedProtection, VICIError>? in
            if let child = children.takeChild(named: childName) { return .success(child) }
            guard let outcome = watches.outcome(child: childName) else { return nil }
            if outcome.streamLost {
                return .failure(VICIError(.io, command: "initiate", detail: "charon's log stream ended"))
            }
            guard outcome.ended else { return nil }
            endedByLogCount.add(1, ordering: .relaxed)
            return .failure(Self.startedFailure(child: childName, lines: outcome.lines))
        }
        switch outcome {
        case .success(let child)?:
            return child
        case .failure(let error)?:
            throw error
        case nil:
            var unanswered = VICIError(
                .commandFailed, command: "initiate",
                errmsg: "CHILD_SA '\(childName)' not established after \(Int(bound / .milliseconds(1)))ms")
            unanswered.controlLog = watches.outcome(child: childName)?.lines ?? []
            throw unanswered
        }
    }

    /// The error a waiting `initiate` of `child` answers when it fails (`vici_control.c`), with the negotiation's
    /// `log` lines as its `control-log`.
    static func startedFailure(child: String, lines: [ControlLog]) -> VICIError {
        var failed = VICIError(.commandFailed, command: "initiate", errmsg: "establishing CHILD_SA '\(child)' failed")
        failed.controlLog = lines
        return failed
    }

    /// Whether a negotiation to `peer` may start without a waiting `initiate`: only in a private charon (the
    /// `log` stream it needs costs a shared charon's other tenants too), and where charon will make an IKE SA for
    /// its conn (``PeerNegotiations``).
    private func mayStart(peer: IPAddress) -> Bool {
        daemon != nil && peers.mayStartWithoutWaiting(peer)
    }

    /// `initiate` on a connection of its own (a slow peer never holds up other calls), retried while the peer
    /// answers as a host whose listener is not ready yet; then the child as charon lists it.
    ///
    /// Where it may (``mayStart(peer:)``), the first attempt is started without waiting (``start(child:conn:bound:)``)
    /// and fails as a waiting `initiate` would, so what follows a failure is the same either way.
    private func initiate(
        child childName: String, conn: String, peer: IPAddress, deadline: ContinuousClock.Instant,
        onStaleIKESA: () -> Void
    ) throws(KeyingError) -> KeyedProtection {
        let started = ContinuousClock.now
        var pause: Duration = .milliseconds(50)
        var staleChecked = false
        var startWithoutWaiting = deadline - started > Self.startedNegotiationMinimum && mayStart(peer: peer)
        var transientRetries = 0
        var duplicatesTerminated = 0
        while true {
            let left = deadline - ContinuousClock.now
            guard left > .zero else { throw KeyingError(.timedOut, "no CHILD SA for \(conn) before the deadline") }
            // A CREATE_CHILD_SA over an IKE SA the peer no longer knows (its charon restarted) is never
            // answered: the first attempt is bounded, and then such IKE SAs are dropped and a fresh one made.
            let attempt = staleChecked ? left : min(left, Self.staleIKESABound)
            do {
                if startWithoutWaiting {
                    startWithoutWaiting = false
                    if let child = try start(child: childName, conn: conn, bound: attempt) { return child }
                    continue
                }
                let session = try VICIClient(path: vici.path, timeout: attempt + .seconds(5))
                defer { session.disconnect() }
                try session.initiate(child: childName, ike: conn, timeout: attempt)
                break
            } catch {
                let classified = charonLog.classify(error)
                if classified.code == .timedOut, !staleChecked, deadline - ContinuousClock.now > .milliseconds(500) {
                    staleChecked = true
                    _ = try? vici.terminate(child: childName, force: true, timeout: .seconds(1))
                    onStaleIKESA()
                    continue
                }
                // charon still counts an older CHILD_SA of this very flow and reqid as installed (its SA just expired
                // or was flushed in the kernel, and charon has not handled that yet) and refuses a duplicate: that
                // one is the socket's own (same reqid), so it goes, and the negotiation runs again.
                if let duplicate = charonLog.existingDuplicate(classified.detail), duplicatesTerminated < 3,
                    deadline - ContinuousClock.now > pause
                {
                    duplicatesTerminated += 1
                    _ = try? vici.terminate(childID: duplicate, force: true, timeout: .seconds(2))
                    sleepFor(pause)
                    continue
                }
                let notReady = charonLog.peerNotReady(classified.detail)
                // charon 5.9's `initiate` watches the IKE SA, not the child: another CHILD_SA of that IKE SA
                // going down (a peer's DELETE) ends it with "failed" while ours is still being created. A failure
                // without a stated reason therefore waits for our child's own event first, and is then tried again
                // a few times within the same budget; refusals that name a reason are final.
                let reasonless = classified.code == .rejected && !notReady
                // When the log shows another CHILD_SA of the IKE SA closing, ours is still queued on it (charon
                // runs one exchange at a time per IKE SA, and a process that exits may have queued hundreds of
                // DELETEs before it): its event is awaited for the whole budget, not 2 s.
                let othersClosed = charonLog.anotherChildClosed(classified.detail)
                if reasonless,
                    let known = children.waitForChild(
                        named: childName,
                        upTo: othersClosed
                            ? deadline - ContinuousClock.now : min(deadline - ContinuousClock.now, .seconds(2)))
                {
                    return known
                }
                let transient = reasonless && transientRetries < 3
                if transient { transientRetries += 1 }
                // A peer not ready yet is retried within its own budget; a transient failure within the deadline.
                let withinBudget = transient || ContinuousClock.now - started + pause < Self.notReadyRetryBudget
                guard notReady || transient, withinBudget, deadline - ContinuousClock.now > pause
                else {
                    if ContinuousClock.now >= deadline {
                        throw KeyingError(
                            .timedOut, "no CHILD SA for \(conn) before the deadline: \(classified.detail)")
                    }
                    throw classified
                }
                _ = try? vici.terminate(child: childName, force: true, timeout: .seconds(1))
                sleepFor(pause)
                pause = pause * 2
            }
        }
        // charon's `child-updown` event names the child (usually before `initiate` answers): no round trip. The
        // same IKE SA quirk can report success when another of its children was installed: ours may still come.
        if let known = children.waitForChild(named: childName, upTo: min(deadline - ContinuousClock.now, .seconds(2))) {
            return known
        }
        // `initiate` answers once the CHILD SA is installed; the IKE SA may still be busy for a moment.
        for attempt in 0..<20 {
            if let found = try? vici.listSAs(child: childName) {
                for ike in found where ike.isEstablished {
                    if let child = ike.children.first(where: { $0.name == childName && $0.isInstalled }) {
                        return Self.protection(ike: ike, child: child)
                    }
                }
            }
            if attempt < 19 { sleepFor(.milliseconds(25)) }
        }
        throw KeyingError(.rejected, "charon reported success but CHILD SA \(childName) is not installed")
    }

    /// How long a first `initiate` may take before the IKE SA it rides on is taken for stale.
    static let staleIKESABound: Duration = .seconds(4)

    /// Below this budget a negotiation is not started without waiting: its log subscription and `initiate` could
    /// eat the whole of it.
    static let startedNegotiationMinimum: Duration = .seconds(1)

    /// Conns to a peer whose IKE SA went unanswered get a new generation: charon reuses an IKE SA only for an
    /// equal conn, and the generation makes ours differ (in `rekey_time`, by that many seconds modulo 16), so the next
    /// negotiation makes a fresh IKE SA while the stale one keeps its CHILD_SAs, and the connections on them keep
    /// flowing over their kernel SAs until charon gives that IKE SA up. By peer address.
    private let generations = Mutex<[IPAddress: Int]>([:])

    /// How many departing CHILD_SAs make ending their IKE SA worth it: fewer are deleted one by one (one exchange
    /// each), so a client that closes a few connections keeps its IKE SA for the next one.
    static let childrenWorthEndingIKESA = 8

    /// CHILD configs whose release was asked, with when: charon may still have their DELETE queued on the IKE SA
    /// (one exchange at a time), so an IKE SA left with only these and a batch can end at once. Entries older than
    /// two minutes are forgotten.
    private let releasing = Mutex<[String: ContinuousClock.Instant]>([:])

    private func noteReleasing(_ child: String) {
        let now = ContinuousClock.now
        releasing.withLock { pending in
            if pending.count >= 256 { pending = pending.filter { $0.value.duration(to: now) < .seconds(120) } }
            pending[child] = now
        }
    }

    /// How this charon says what only its log tells (chosen by its `version`).
    private let logWords = Mutex<CharonLog>(.fallback)
    public var charonLog: CharonLog { logWords.withLock { $0 } }

    /// This backend's own IKE SAs: its conns differ from every other backend's (another process on the same
    /// charon) in `rekey_time` by `16 × ikeSASalt` seconds, so charon gives each its own IKE SA to a peer. A shared
    /// one makes tenants wait on each other: charon runs one exchange at a time per IKE SA, and a process that
    /// exits with 250 connections queues 250 DELETEs there, ahead of every other process's CREATE_CHILD_SA (seen:
    /// 10 s and more). Two backends with the same salt (1 in 256) merely share, as before.
    private let ikeSASalt = Int.random(in: 0..<256)

    /// IKE SAs are rekeyed after 4 hours (charon's default), plus this backend's salt and the peer's generation
    /// (at most 4 h + 4,095 s).
    private func connOptions(for peer: IPAddress) -> VICIMessage {
        var options = Self.connOptions
        let generation = generations.withLock { $0[peer] ?? 0 } % 16
        options["rekey_time"] = .string("\(14_400 + ikeSASalt * 16 + generation)s")
        return options
    }

    /// Belt and braces over charon's own check: the IKE SA that carries the child authenticated the pinned
    /// identity exactly (charon matched it as an identity, and names are never patterns here).
    private func verify(_ child: KeyedProtection, request: KeyingRequest) throws(KeyingError) {
        guard let required = request.requiredPeerIdentity, !request.peerIdentityOptional else { return }
        guard child.remoteIdentity == required else {
            throw KeyingError(
                .authenticationFailed,
                "the IKE SA authenticated `\(child.remoteIdentity ?? "nobody")`, not `\(required)`")
        }
    }

    static func protection(ike: IKESAInfo, child: ChildSAInfo) -> KeyedProtection {
        var protection = KeyedProtection(
            ikeSAID: ike.uniqueID.map(UInt64.init), childSAID: child.uniqueID.map(UInt64.init),
            localIdentity: ike.localID, remoteIdentity: ike.remoteID, remoteUserIdentity: ike.remoteEAPID,
            encryptionAlgorithm: child.encryptionAlgorithm, integrityAlgorithm: child.integrityAlgorithm,
            inboundSPI: child.spiIn, outboundSPI: child.spiOut, localAddress: ike.localHost.flatMap(IPAddress.init))
        protection.authenticatedAt = ike.establishedSeconds.map { Date().addingTimeInterval(-Double($0)) }
        return protection
    }

    // MARK: - What protects a flow

    /// What protects the flow, with how the peer authenticated and, for certificates, what its certificate names.
    public func protection(flow: KeyedFlow) -> KeyedProtection? { children.protection(flow: flow) }

    public func protection(inboundSPI: UInt32, peer: IPAddress) -> KeyedProtection? {
        childProtection(inboundSPI: inboundSPI, peer: peer).map { identified(authenticated($0)) }
    }

    /// How every peer of this backend authenticates: its conns offer one method, and charon reuses an IKE SA
    /// only for a conn equal to ours (same authentication rounds), so the credentials decide.
    private var machineAuthentication: PeerAuthentication.Machine {
        switch credentials.method {
        case .psk: .groupKey
        case .peerKeys: .peerKey
        case .certificate: .certificate
        }
    }

    private func authenticated(_ protection: KeyedProtection) -> KeyedProtection {
        var protection = protection
        protection.authentication = PeerAuthentication(
            machine: machineAuthentication,
            user: protection.remoteUserIdentity == nil ? nil : .eap)
        return protection
    }

    /// Adds the peer certificate's subject and subjectAltNames when exactly one certificate qualifies (see
    /// ``PeerCertificateSelector``). A `list-certs` that fails leaves them unknown for this query only.
    private func identified(_ protection: KeyedProtection) -> KeyedProtection {
        guard let peerCertificates, let ike = protection.ikeSAID, let remote = protection.remoteIdentity else {
            return protection
        }
        var protection = protection
        // charon prints a DN identity without escaping (`dntoa`) and parses list-certs' `subject` again from that
        // text, so it would not list a certificate whose values hold `, X=` although the peer may have used it,
        // and would list another that prints the same. For a DN identity every certificate is listed: all that
        // print the remote-id count, and structurally different ones make the lookup ambiguous (none believed).
        let subject: String? = remote.contains("=") ? nil : remote
        let first = peerCertificates.known(ikeSAID: ike) == nil
        // The certificate must have been valid when the IKE SA was authenticated (now, if charon did not say).
        let lookup = try? peerCertificates.lookup(
            ikeSAID: ike, remoteIdentity: remote, authenticatedAt: protection.authenticatedAt ?? Date()
        ) { () throws(VICIError) in
            try vici.listCerts(type: .x509, flag: CertificateFlag.none, subject: subject).map(\.data)
        }
        if case .identified(let identity)? = lookup {
            protection.remoteCertificate = identity
        } else if first {
            logger.notice(
                "peer certificate not known for sure: only its IKE identity decides (subject and subjectAltName rules do not apply)",
                metadata: [
                    "peer-identity": "\(remote)", "ike-sa": "\(ike)",
                    "lookup": "\(lookup.map { "\($0)" } ?? "list-certs failed")",
                ])
        }
        return protection
    }

    /// The peer certificate lookup of IKE SA `ikeSAID` once a query has made it (for inspection and tests).
    public func peerCertificateLookup(ikeSAID: UInt64) -> PeerCertificateLookup? {
        peerCertificates?.known(ikeSAID: ikeSAID)
    }

    private func childProtection(inboundSPI: UInt32, peer: IPAddress) -> KeyedProtection? {
        if let known = children.protection(inboundSPI: inboundSPI) { return known }
        // Not seen as an event (charon was busy, or the child predates us): ask, without waiting on busy SAs.
        guard let sas = try? vici.listSAs(noblock: true) else { return nil }
        let peerText = "\(peer)"
        for ike in sas where ike.isEstablished && ike.remoteHost == peerText {
            if let child = ike.children.first(where: { $0.spiIn == inboundSPI && $0.isInstalled }) {
                let found = Self.protection(ike: ike, child: child)
                children.insert(found, reqid: child.reqid)
                return found
            }
        }
        return nil
    }

    // MARK: - Release

    public func release(_ registration: KeyingRegistration, waiting: Bool) {
        let reqid = registration.reqid
        defer {
            if case .responder = registration.entry {
                children.unclaimResponder(reqid: reqid)
            } else {
                children.unclaim(reqid: reqid)
            }
        }
        switch registration.entry {
        case .negotiation(let number, let userSecret):
            noteReleasing(Self.childName(reqid: reqid, number: number))
            // By config name: a rekeyed CHILD_SA has a new unique id but the same config name. For a socket that is
            // gone, charon completes the DELETE exchange on its own: a daemon releasing the many connections of a
            // client that exited is not held one round trip per connection.
            _ = try? vici.terminate(
                child: Self.childName(reqid: reqid, number: number), force: true, timeout: .seconds(2),
                waiting: waiting)
            try? vici.unloadConn(name: connName(reqid: reqid, number: number))
            if userSecret { try? vici.unloadShared(id: userSecretID(reqid: reqid, number: number)) }
        case .responder:
            let family = responderChildren.withLock { $0.removeValue(forKey: reqid)?.family }
            // Connections the listener accepted keep their CHILD_SAs until they close (releaseChild).
            if let family { try? loadResponder(family) }
        case .installed:
            break
        }
    }

    /// Releases registrations together: an IKE SA whose CHILD_SAs are all theirs or already being released, and
    /// at least `childrenWorthEndingIKESA` (8) of them (charon's own list, asked once), is ended in one DELETE
    /// exchange, and their conns and secrets unloaded; charon runs one exchange at a time per IKE SA, so
    /// terminating each CHILD_SA costs one exchange apiece (a departed client's 200 connections: 12 s). The others
    /// are released one by one.
    public func release(_ registrations: [KeyingRegistration]) {
        var byChild: [String: KeyingRegistration] = [:]
        var others: [KeyingRegistration] = []
        for registration in registrations {
            if case .negotiation(let number, _) = registration.entry {
                byChild[Self.childName(reqid: registration.reqid, number: number)] = registration
            } else {
                others.append(registration)
            }
        }
        var ended: Set<String> = []
        let earlier = releasing.withLock { $0 }
        if !byChild.isEmpty, let sas = try? vici.listSAs(noblock: true) {
            for ike in sas {
                // Its children are these, or ones released earlier whose DELETE charon still has queued; and enough
                // of them that their DELETEs one by one would cost more than the next connection's new IKE SA.
                guard let id = ike.uniqueID, ike.children.count >= Self.childrenWorthEndingIKESA,
                    ike.children.contains(where: { byChild[$0.name] != nil }),
                    ike.children.allSatisfy({ byChild[$0.name] != nil || earlier[$0.name] != nil })
                else { continue }
                _ = try? vici.terminate(ikeID: id, force: true, timeout: .seconds(2), waiting: false)
                let names = Set(ike.children.map(\.name))
                for name in names {
                    guard let registration = byChild[name],
                        case .negotiation(let number, let userSecret) = registration.entry
                    else { continue }
                    try? vici.unloadConn(name: connName(reqid: registration.reqid, number: number))
                    if userSecret {
                        try? vici.unloadShared(id: userSecretID(reqid: registration.reqid, number: number))
                    }
                    children.unclaim(reqid: registration.reqid)
                }
                ended.formUnion(names)
                releasing.withLock { pending in for name in names { pending[name] = nil } }
                logger.notice(
                    "released departed sockets' connections with the IKE SA that carried only them",
                    metadata: ["ike-sa": "\(id)", "connections": "\(names.count)"])
            }
        }
        for (name, registration) in byChild where !ended.contains(name) { release(registration, waiting: false) }
        for registration in others { release(registration, waiting: false) }
    }

    public func reclaim(deadProcess pid: Int32, reqids: [ClosedRange<UInt32>]) {
        guard pid != getpid() else { return }
        let prefix = "wss\(pid)x"
        for name in (try? vici.getConns()) ?? [] where name.hasPrefix(prefix) { try? vici.unloadConn(name: name) }
        if let shared = try? vici.command("get-shared"), let keys = shared.list("keys") {
            for id in keys where id.hasPrefix(prefix) { try? vici.unloadShared(id: id) }
        }
        for ike in (try? vici.listSAs(noblock: true)) ?? [] {
            for child in ike.children {
                guard let reqid = child.reqid, reqids.contains(where: { $0.contains(reqid) }), let id = child.uniqueID
                else { continue }
                _ = try? vici.terminate(childID: id, force: true, timeout: .seconds(2))
            }
        }
    }

    public func releaseChild(inboundSPI: UInt32, peer: IPAddress) {
        guard let id = childProtection(inboundSPI: inboundSPI, peer: peer)?.childSAID else { return }
        children.remove(inboundSPI: inboundSPI)
        _ = try? vici.terminate(childID: Int(id), force: true, timeout: .seconds(2))
    }
}

/// Peer identities are literal: what strongSwan would read as a pattern is refused.
public enum PeerIdentityText {
    /// False for text strongSwan matches as a wildcard: `%any` and other `%` keywords, `*` anywhere.
    public static func isLiteral(_ identity: String) -> Bool {
        !identity.isEmpty && !identity.utf8.contains { $0 == UInt8(ascii: "*") || $0 == UInt8(ascii: "%") }
    }
}

func sleepFor(_ duration: Duration) {
    let (seconds, attoseconds) = duration.components
    var request = timespec(tv_sec: Int(seconds), tv_nsec: Int(attoseconds / 1_000_000_000))
    var remaining = timespec()
    while nanosleep(&request, &remaining) != 0 && errno == EINTR { request = remaining }
}
