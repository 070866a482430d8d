import Glibc
import Synchronization
import XFRM

/// Keying through strongSwan's charon over VICI: the library's default backend.
///
/// How it maps the per-socket model onto charon (facts in keying-notes.md, "Per-socket patterns"):
/// - Every conn and child has `policies = no` and `mode = transport`: charon installs SAs only, and the kernel
///   ties them to a socket by reqid. The child's `reqid` is the socket's.
/// - **Responder**: one conn per backend, `remote_addrs = %any`, holding one child per secured endpoint (reqid R,
///   `local_ts = dynamic[proto]`, narrowed to the port once known). charon picks the child from the initiator's
///   traffic selectors, so the SAs it installs carry the listener's reqid, which the accepted sockets inherit.
/// - **Initiator**: at connect time a conn per (reqid, peer), `remote_addrs = peer`, remote identity = the peer
///   target name (charon then refuses a peer that proves another identity: `AUTHENTICATION_FAILED`), child
///   reqid R with `remote_ts = dynamic[proto/port]`, then VICI `initiate` and wait (bounded).
/// - Only encrypting ESP proposals are offered (AES-GCM, AES-CBC+SHA-2), so `GUARANTEE_ENCRYPTION` holds by
///   construction; the query still checks the installed SAs.
/// - Names carry the pid and an instance number (`wss<pid>x<n>…`), so several processes (and several backends
///   in one process) share one charon without name collisions; reqids never collide (ALE's reqid allocator).
public final class StrongSwanBackend: KeyingBackend, Sendable {
    /// How this host authenticates itself.
    public struct Credentials: Sendable {
        public enum Method: Sendable {
            /// A pre-shared key (any peer identity may use it).
            case psk(String)
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

    private let prefix: String
    private static let instances = Atomic<Int>(0)
    private let responderChildren = Mutex<[UInt32: ChildConfig]>([:])
    private let initiatorConns = Mutex<[UInt32: Set<String>]>([:])

    /// Uses `vici` (a system charon or a private one) and loads `credentials` into it.
    public init(vici: VICIClient, credentials: Credentials, daemon: CharonDaemon? = nil) throws(KeyingError) {
        self.vici = vici
        self.daemon = daemon
        self.credentials = credentials
        // pid + instance: unique among every process and backend sharing one charon.
        self.prefix = "wss\(getpid())x\(Self.instances.wrappingAdd(1, ordering: .relaxed).oldValue)"
        do {
            switch credentials.method {
            case .psk(let secret):
                try vici.loadShared(.ike, secret: secret, owners: [], id: "\(prefix)-psk")
            case .certificate(let certificate, let key, let authorities):
                for authority in authorities { try vici.loadCert(authority, flag: .ca) }
                try vici.loadCert(certificate)
                _ = try vici.loadKey(key)
            }
            for (user, secret) in credentials.eapUsers.sorted(by: { $0.key < $1.key }) {
                try vici.loadShared(.eap, secret: secret, owners: [user], id: "\(prefix)-eap-\(user)")
            }
        } catch {
            throw KeyingError(.unavailable, "loading credentials into charon: \(error)")
        }
    }

    /// A system charon when its VICI socket answers, otherwise a private charon for `namespace`.
    public static func systemOrPrivate(credentials: Credentials, namespace: NetworkNamespace = .current,
                                       options: CharonDaemon.Options = CharonDaemon.Options()) throws(KeyingError)
        -> StrongSwanBackend {
        if namespace == .current, let path = CharonDaemon.systemVICISocket() {
            do {
                return try StrongSwanBackend(vici: try VICIClient(path: path), credentials: credentials)
            } catch {
                throw KeyingError(.unavailable, "system charon at \(path): \(error)")
            }
        }
        let daemon: CharonDaemon
        do {
            daemon = try CharonDaemon(namespace: namespace, options: options)
        } catch {
            throw KeyingError(.unavailable, "starting a private charon: \(error)")
        }
        return try StrongSwanBackend(vici: daemon.vici, credentials: credentials, daemon: daemon)
    }

    // MARK: - Conns

    private var responderName: String { "\(prefix)-responder" }

    private func localAuth() -> AuthConfig {
        switch credentials.method {
        case .psk: .psk(id: credentials.identity)
        case .certificate(let certificate, _, _): .pubkey(id: credentials.identity, certificates: [certificate])
        }
    }

    private func remoteAuth(identity: String?) -> AuthConfig {
        switch credentials.method {
        case .psk: .psk(id: identity ?? "%any")
        case .certificate: .pubkey(id: identity ?? "%any")
        }
    }

    private func protocolName(_ p: XFRMUpperProtocol) -> String? {
        switch p {
        case .tcp: "tcp"
        case .udp: "udp"
        default: nil
        }
    }

    private func loadResponder(_ children: [ChildConfig]) throws(VICIError) {
        guard !children.isEmpty else {
            try? vici.unloadConn(name: responderName)
            return
        }
        // With EAP users configured, the peer must also authenticate a user (RFC 4739 second round).
        var remote = [remoteAuth(identity: nil)]
        if !credentials.eapUsers.isEmpty { remote.append(AuthConfig(method: .eapMD5, eapID: "%any")) }
        try vici.loadConn(IKEConnConfig(name: responderName, remoteAddresses: ["%any"], localAuth: [localAuth()],
                                        remoteAuth: remote, children: children))
    }

    public func prepare(_ request: KeyingRequest) throws(KeyingError) -> KeyingRegistration {
        let child = ChildConfig(name: "r\(request.reqid)", mode: .transport, policies: false, reqid: request.reqid,
                                startAction: .none, espProposals: Self.espProposals,
                                localTS: [.dynamic(protocol: protocolName(request.transportProtocol),
                                                   port: request.localPort == 0 ? nil : request.localPort)],
                                remoteTS: [.dynamic])
        let children = responderChildren.withLock { table -> [ChildConfig] in
            table[request.reqid] = child
            return table.keys.sorted().compactMap { table[$0] }
        }
        do {
            try loadResponder(children)
        } catch {
            responderChildren.withLock { _ = $0.removeValue(forKey: request.reqid) }
            throw KeyingError(.unavailable, "load-conn \(responderName): \(error)")
        }
        return KeyingRegistration(reqid: request.reqid, names: [responderName])
    }

    public func negotiate(_ request: KeyingRequest, local: XFRMAddress?, peer: XFRMAddress, peerPort: UInt16,
                          timeout: Double) throws(KeyingError) -> KeyedProtection {
        let conn = "\(prefix)-i\(request.reqid)-\(peer)"
        let childName = "i\(request.reqid)"
        let remoteIdentity = request.peerIdentityOptional ? nil : request.requiredPeerIdentity
        let proto = protocolName(request.transportProtocol)
        var localRounds = [localAuth()]
        if let user = request.userName, let password = request.userPassword {
            // The second round: this user, proven with EAP-MD5, so the server learns who is calling.
            do {
                try vici.loadShared(.eap, secret: password, owners: [user], id: "\(prefix)-user-\(request.reqid)")
            } catch {
                throw KeyingError(.unavailable, "load-shared for \(user): \(error)")
            }
            localRounds.append(AuthConfig(method: .eap, id: credentials.identity, eapID: user))
        }
        let config = IKEConnConfig(
            name: conn, localAddresses: [local.map { "\($0)" } ?? "%any"], remoteAddresses: ["\(peer)"],
            localAuth: localRounds, remoteAuth: [remoteAuth(identity: remoteIdentity)],
            children: [ChildConfig(name: childName, mode: .transport, policies: false, reqid: request.reqid,
                                   startAction: .none, espProposals: Self.espProposals,
                                   localTS: [.dynamic(protocol: proto, port: nil)],
                                   remoteTS: [.dynamic(protocol: proto, port: peerPort == 0 ? nil : peerPort)])])
        do {
            try vici.loadConn(config)
        } catch {
            throw KeyingError(.unavailable, "load-conn \(conn): \(error)")
        }
        initiatorConns.withLock { _ = $0[request.reqid, default: []].insert(conn) }
        if let existing = protection(reqid: request.reqid, peer: peer) { return existing }
        do {
            try vici.initiate(child: childName, ike: conn, timeout: .milliseconds(Int(timeout * 1000)))
        } catch {
            throw Self.classify(error)
        }
        // `initiate` answers when the CHILD SA is up; the IKE SA may still be busy for a moment, so ask with
        // waiting (not `noblock`), a few times within a second.
        var found: KeyedProtection?
        for attempt in 0..<20 {
            found = protection(reqid: request.reqid, peer: peer, wait: true)
            if found != nil { break }
            if attempt < 19 { usleep(50_000) }
        }
        guard let protection = found else {
            throw KeyingError(.rejected, "charon reported success but no CHILD SA with reqid \(request.reqid) is installed")
        }
        if let required = request.requiredPeerIdentity, request.peerIdentityOptional,
           protection.remoteIdentity != required {
            // OPTIONAL_PEER_NAME_VERIFICATION: authenticated, but as someone else; recorded, not fatal.
            var noted = protection
            noted.remoteIdentity = protection.remoteIdentity.map { "\($0) (not \(required))" }
            return noted
        }
        return protection
    }

    /// Maps charon's words to a keying error.
    static func classify(_ error: VICIError) -> KeyingError {
        let text = "\(error.errmsg ?? "") \(error.detail ?? "")"
        if error.code == .daemonUnavailable || error.code == .io { return KeyingError(.unavailable, "\(error)") }
        if error.code == .timedOut { return KeyingError(.timedOut, "\(error)") }
        let authentication = ["AUTHENTICATION_FAILED", "AUTH_FAILED", "EAP_FAILURE", "authentication failed",
                              "constraint check failed", "no trusted", "no shared key found"]
        if authentication.contains(where: text.contains) || (text.contains("authentication of") && text.contains("failed")) {
            return KeyingError(.authenticationFailed, text)
        }
        if text.contains("NO_PROPOSAL_CHOSEN") { return KeyingError(.noProposalChosen, text) }
        if text.contains("TS_UNACCEPTABLE") { return KeyingError(.rejected, text) }
        if text.contains("timeout") || text.contains("giving up after") || text.contains("retransmit") {
            return KeyingError(.timedOut, text)
        }
        return KeyingError(.rejected, text)
    }

    public func protection(reqid: UInt32, peer: XFRMAddress) -> KeyedProtection? {
        protection(reqid: reqid, peer: peer, wait: false)
    }

    /// `wait: false` skips IKE SAs that are busy (`noblock`), so a query never stalls behind a negotiation.
    func protection(reqid: UInt32, peer: XFRMAddress, wait: Bool) -> KeyedProtection? {
        guard let sas = try? vici.listSAs(noblock: !wait) else { return nil }
        let peerText = "\(peer)"
        for ike in sas where ike.isEstablished && ike.remoteHost == peerText {
            guard let child = ike.children.first(where: { $0.reqid == reqid && $0.isInstalled }) else { continue }
            return KeyedProtection(
                ikeSAID: ike.uniqueID.map(UInt64.init), childSAID: child.uniqueID.map(UInt64.init),
                localIdentity: ike.localID, remoteIdentity: ike.remoteID, remoteUserIdentity: ike.remoteEAPID,
                encryptionAlgorithm: child.encryptionAlgorithm, integrityAlgorithm: child.integrityAlgorithm,
                inboundSPI: child.spiIn, outboundSPI: child.spiOut)
        }
        return nil
    }

    public func release(_ registration: KeyingRegistration) {
        let reqid = registration.reqid
        for conn in initiatorConns.withLock({ $0.removeValue(forKey: reqid) }) ?? [] {
            _ = try? vici.terminate(ike: conn, force: true, timeout: .seconds(2))
            try? vici.unloadConn(name: conn)
        }
        try? vici.unloadShared(id: "\(prefix)-user-\(reqid)")
        let children = responderChildren.withLock { table -> [ChildConfig]? in
            guard table.removeValue(forKey: reqid) != nil else { return nil }
            return table.keys.sorted().compactMap { table[$0] }
        }
        if let children {
            // Close the CHILD SAs peers negotiated with this endpoint's reqid.
            if let sas = try? vici.listSAs(noblock: true) {
                for ike in sas {
                    for child in ike.children where child.reqid == reqid {
                        if let id = child.uniqueID { _ = try? vici.terminate(childID: id, force: true, timeout: .seconds(2)) }
                    }
                }
            }
            try? loadResponder(children)
        }
    }
}
