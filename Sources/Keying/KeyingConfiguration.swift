import ConfigurationFile
import Foundation
import Logging
import VICI
import XFRM

/// The keying configuration a service gives the library: one file, for the people who run servers.
///
/// Found at `$WSS_KEYING_CONFIG`, else `/etc/winsock-secure-socket/keying.conf`. One setting per line,
/// `#` starts a comment, values may be quoted:
///
/// ```
/// # This host's IKE identity (an FQDN, address, email, or a name in its certificate's subjectAltName).
/// identity     a.example
/// # Either pre-shared keys: one per peer (repeat the line; each key is offered for that peer's identity only) ...
/// peer-psk     b.example "b's secret"
/// peer-psk     c.example "c's secret"
/// # ... or one group key for every peer (text, or 0x-prefixed hex; see "Group key" below) ...
/// # psk        "correct horse battery staple"
/// # ... or a certificate with its private key, and the authorities that sign peers' certificates (PEM or DER).
/// certificate  /etc/winsock-secure-socket/a.example.crt
/// private-key  /etc/winsock-secure-socket/a.example.key
/// authority    /etc/winsock-secure-socket/ca.crt
/// # Which charon: auto (a system charon when its VICI socket answers, otherwise a private one for this
/// # namespace that ends with the process), private, or the path of a VICI socket.
/// charon       auto
/// # A server that requires a second authentication round (EAP-MD5) lists its users and their secrets.
/// eap-user    alice "alice's secret"
/// # Seconds WSAConnect waits for the SAs.
/// negotiation-timeout 10
/// ```
///
/// ## Who may write the files
///
/// Whoever can write this file, or a certificate, key or authority file it names, chooses the keys, whose
/// certificates are believed and who may claim which identity. So each is read only if it is a regular file owned
/// by root or by the process's effective user and not writable by its group or by others, and a `private-key`
/// file, and this file when it holds a `psk`, `peer-psk` or `eap-user` secret, must not be readable by them
/// either (`chmod 600`); otherwise loading fails with an error that names the
/// file and the rule it breaks (`writable by group or others (mode 666): …`). The checks run on the opened
/// descriptor and the bytes are read through it. A symbolic link is followed, and the file it leads to is what is
/// checked (as for the identity map); the folders on the way are not checked, so keep them writable by root only.
/// ``load(path:)`` checks this file, ``credentials()`` the files it names.
///
/// ## Group key and per-peer keys
///
/// `psk` is a group key: it is loaded for every identity (charon's owners `%any`), so every host that holds it can
/// claim ANY identity and authenticate as it (its INITIAL_CONTACT deletes nothing: the library's conns are
/// `unique = never`). The query reports such peers as
/// ``PeerAuthentication/Machine/groupKey`` and the identity map refuses to map them unless a rule opts in.
/// `peer-psk ID SECRET` loads SECRET for the peer identity ID only (owners `[ID]`, never this host's own identity,
/// never a pattern): only a host that holds that peer's key can authenticate as that peer
/// (``PeerAuthentication/Machine/peerKey``). The two cannot be combined: charon tries every key that matches either
/// identity of an IKE SA until one verifies the peer's AUTH payload, so a group key beside per-peer keys would let
/// any group member authenticate as a peer that has a key of its own.
///
/// A charon shared with other services (the system charon) also holds their keys, and a key someone loaded without
/// owners matches every identity: with pre-shared keys nothing here can stop those keys from authenticating our
/// peers. Use `charon private` (or certificates) where that matters.
public struct KeyingConfiguration: Hashable, Sendable {
    public enum Charon: Hashable, Sendable {
        case auto
        case `private`
        case socket(String)
    }

    public var identity: String
    public var psk: String?
    public var certificatePath: String?
    public var privateKeyPath: String?
    public var authorityPaths: [String]
    public var charon: Charon
    public var negotiationTimeout: Duration
    public var eapUsers: [String: String] = [:]
    /// Local users (names or numeric uids) besides root whose applications the keying daemon secures sockets for
    /// (`client-user`); the daemon refuses everyone else.
    public var clientUsers: [String] { clientRules.map(\.user) }
    /// What each of those users may do (`client-user NAME [peers=…] [insecure=no]`, ``ClientUserRule``).
    public var clientRules: [ClientUserRule] = []
    /// Per-peer pre-shared keys (`peer-psk`), by peer identity. Never together with ``psk``.
    public var peerKeys: [String: String] = [:]

    /// Why the file was refused, as a value (the error's message says it in words, without any secret).
    public enum ParseReason: Hashable, Sendable {
        /// A line the format does not allow, a missing or invalid value.
        case syntax
        /// `psk` (a group key, offered for every identity) together with `peer-psk` lines.
        case groupKeyWithPeerKeys
        /// Two `peer-psk` lines for one identity.
        case duplicatePeerKey(identity: String)
        /// A `peer-psk` for this host's own `identity` (it would be offered for every IKE SA of ours).
        case peerKeyForOwnIdentity
        /// A `peer-psk` identity that charon would read as a pattern (`%any`, `*`).
        case peerKeyIdentityIsPattern(identity: String)
        /// Pre-shared keys together with a certificate, or neither.
        case credentials
    }

    /// A refused keying file: the first problem, its line and its ``ParseReason``.
    public typealias ParseError = ConfigurationError<ParseReason>

    /// The file the library reads when nothing is configured in code.
    public static var defaultPath: String {
        ProcessInfo.processInfo.environment["WSS_KEYING_CONFIG"] ?? "/etc/winsock-secure-socket/keying.conf"
    }

    public static func parse(_ text: String) throws(ParseError) -> KeyingConfiguration {
        var identity: String?
        var psk: String?
        var certificate: String?
        var key: String?
        var authorities: [String] = []
        var charon = Charon.auto
        var timeout: Duration = .seconds(10)
        var eapUsers: [String: String] = [:]
        var peerKeys: [String: String] = [:]
        var clientRules: [ClientUserRule] = []
        var pskLine = 0
        var firstPeerKeyLine = 0
        for result in ConfigurationReader.lines(text) {
            let line: ConfigurationLine
            switch result {
            case .success(let read): line = read
            case .failure(let issue): throw ParseError(line: issue.line, message: issue.message, reason: .syntax)
            }
            let number = line.number
            let name = line.tokens[0].text
            guard line.tokens.count >= 2 else {
                throw ParseError(line: number, message: "`\(name)` has no value", reason: .syntax)
            }
            let value = line.value(after: 0)
            switch name {
            case "identity": identity = value
            case "psk":
                psk = value
                pskLine = number
            case "peer-psk":
                guard line.tokens.count == 3, !line.tokens[1].text.isEmpty, !line.tokens[2].text.isEmpty else {
                    throw ParseError(
                        line: number, message: "peer-psk PEER-IDENTITY SECRET (quote an identity with spaces)",
                        reason: .syntax)
                }
                let (peer, secret) = (line.tokens[1].text, line.tokens[2].text)
                guard PeerIdentityText.isLiteral(peer) else {
                    throw ParseError(
                        line: number,
                        message: "peer-psk identity `\(peer)` is a pattern (`%` or `*`): "
                            + "its key would be offered for any peer, as a group key is",
                        reason: .peerKeyIdentityIsPattern(identity: peer))
                }
                guard !peerKeys.keys.contains(where: { Self.sameIdentity($0, peer) }) else {
                    throw ParseError(
                        line: number, message: "a second peer-psk for `\(peer)`",
                        reason: .duplicatePeerKey(identity: peer))
                }
                peerKeys[peer] = secret
                if firstPeerKeyLine == 0 { firstPeerKeyLine = number }
            case "certificate": certificate = value
            case "private-key": key = value
            case "authority": authorities.append(value)
            case "charon":
                charon = value == "auto" ? .auto : value == "private" ? .private : .socket(value)
                if case .socket(let path) = charon, !path.hasPrefix("/") {
                    throw ParseError(
                        line: number, message: "charon is auto, private or an absolute socket path", reason: .syntax)
                }
            case "eap-user":
                let secret = line.value(after: 1)
                guard line.tokens.count >= 3, !secret.isEmpty else {
                    throw ParseError(line: number, message: "eap-user NAME SECRET", reason: .syntax)
                }
                eapUsers[line.tokens[1].text] = secret
            case "client-user":
                guard line.tokens.count >= 2, !line.tokens[1].text.isEmpty else {
                    throw ParseError(
                        line: number, message: "client-user NAME-OR-UID [peers=ID,…] [insecure=no] (one per line)",
                        reason: .syntax)
                }
                switch ClientUserRule.options(line.tokens.dropFirst(2).map(\.text)) {
                case .success(let options):
                    clientRules.append(
                        ClientUserRule(
                            user: line.tokens[1].text, peers: options.peers, allowsInsecure: options.allowsInsecure,
                            line: number))
                case .failure(let failure):
                    throw ParseError(line: number, message: failure.message, reason: .syntax)
                }
            case "negotiation-timeout":
                guard let seconds = Double(value), seconds > 0, seconds <= 300 else {
                    throw ParseError(
                        line: number, message: "negotiation-timeout is seconds in (0, 300]", reason: .syntax)
                }
                timeout = .milliseconds(Int64((seconds * 1000).rounded()))
            default:
                throw ParseError(line: number, message: "unknown setting `\(name)`", reason: .syntax)
            }
        }
        guard let identity, !identity.isEmpty else {
            throw ParseError(line: 0, message: "`identity` is required", reason: .syntax)
        }
        if psk != nil && !peerKeys.isEmpty {
            throw ParseError(
                line: max(pskLine, firstPeerKeyLine),
                message: "`psk` is a group key and cannot be combined with `peer-psk`: charon offers a group "
                    + "key for every identity and tries every matching key when it checks a peer, so any "
                    + "holder of the group key could authenticate as a peer that has a key of its own; "
                    + "give every peer a `peer-psk`, or use `psk` alone",
                reason: .groupKeyWithPeerKeys)
        }
        if peerKeys.keys.contains(where: { Self.sameIdentity($0, identity) }) {
            throw ParseError(
                line: firstPeerKeyLine,
                message: "peer-psk for this host's own identity `\(identity)`: charon would offer it for "
                    + "every IKE SA of this host, as a group key; a peer-psk names the peer",
                reason: .peerKeyForOwnIdentity)
        }
        let hasKeys = psk != nil || !peerKeys.isEmpty
        switch (hasKeys, certificate, key) {
        case (true, nil, nil): break
        case (false, .some, .some): break
        case (true, _, _):
            throw ParseError(
                line: 0, message: "give either psk / peer-psk or certificate + private-key, not both",
                reason: .credentials)
        default:
            throw ParseError(
                line: 0, message: "give psk, peer-psk lines, or certificate and private-key",
                reason: .credentials)
        }
        var configuration = KeyingConfiguration(
            identity: identity, psk: psk, certificatePath: certificate,
            privateKeyPath: key, authorityPaths: authorities, charon: charon,
            negotiationTimeout: timeout)
        configuration.eapUsers = eapUsers
        configuration.peerKeys = peerKeys
        configuration.clientRules = clientRules
        return configuration
    }

    /// charon compares FQDN and email identities ASCII case-insensitively.
    static func sameIdentity(_ a: String, _ b: String) -> Bool {
        a.utf8.count == b.utf8.count
            && zip(a.utf8, b.utf8).allSatisfy { x, y in
                (x >= 0x41 && x <= 0x5a ? x + 0x20 : x) == (y >= 0x41 && y <= 0x5a ? y + 0x20 : y)
            }
    }

    /// The credentials this configuration names, files read now, each checked as every file the library trusts is
    /// (`ProtectedFile`, ConfigurationFile module): a regular file owned by root or the process's effective user,
    /// not writable by group or others, and for the private key not readable by them either.
    ///
    /// - Throws: ``KeyingError/Code/unavailable`` naming the setting, with the `ProtectedFileError` (the file and
    ///   the rule it breaks) as its underlying error.
    public func credentials() throws(KeyingError) -> StrongSwanBackend.Credentials {
        if let psk {
            return StrongSwanBackend.Credentials(identity: identity, method: .psk(psk), eapUsers: eapUsers)
        }
        if !peerKeys.isEmpty {
            return StrongSwanBackend.Credentials(identity: identity, method: .peerKeys(peerKeys), eapUsers: eapUsers)
        }
        func read(_ path: String, _ setting: String, _ protection: FileProtection) throws(KeyingError) -> [UInt8] {
            do {
                return try ProtectedFile.read(path, protection)
            } catch {
                throw KeyingError(.unavailable, "keying file's \(setting)", underlying: error)
            }
        }
        return StrongSwanBackend.Credentials(
            identity: identity,
            method: .certificate(
                certificate: try read(certificatePath!, "certificate", Self.certificateProtection),
                privateKey: try read(privateKeyPath!, "private-key", Self.privateKeyProtection),
                authorities: try authorityPaths.map { (path) throws(KeyingError) in
                    try read(path, "authority", Self.authorityProtection)
                }),
            eapUsers: eapUsers)
    }

    // MARK: The files

    /// The keying file: whoever can write it chooses the keys, whose certificates are believed and which identity
    /// this host claims.
    public static let fileProtection = FileProtection(
        writerDecides: "chooses the keys, whose certificates are believed and which identity this host claims")
    /// A `certificate` file.
    public static let certificateProtection = FileProtection(
        writerDecides: "chooses the certificate this host presents")
    /// A `private-key` file: a secret.
    public static let privateKeyProtection = FileProtection(
        writerDecides: "chooses this host's key", readerCan: "can authenticate as this host")
    /// An `authority` file.
    public static let authorityProtection = FileProtection(
        writerDecides: "chooses whose certificates are believed, and so who may claim which identity")

    /// Reads and parses the keying file at `path` (the one ``defaultPath`` names unless told otherwise), checked
    /// first as every file the library trusts is (`ProtectedFile`, ConfigurationFile module): a regular file,
    /// owned by root or the process's effective user, not writable by group or others, and when it holds a secret
    /// (`psk`, `peer-psk`, `eap-user`) not readable by group or others either. The certificate, key and
    /// authority files it names are read, checked the same way (and a private key must not be readable by group or
    /// others either), by ``credentials()``.
    ///
    /// - Throws: ``ParseError``: with its `file` set (and line 0) when the file itself was refused or could not be
    ///   read (`file?.isMissing` when it does not exist), else the first problem of its lines.
    public static func load(path: String = defaultPath) throws(ParseError) -> KeyingConfiguration {
        let bytes: [UInt8]
        do {
            // A file holding secrets (psk, peer-psk, eap-user) is a secret itself.
            bytes = try ProtectedFile.read(path, fileProtection) { content in
                holdsSecrets(String(decoding: content, as: UTF8.self))
                    ? "knows the pre-shared keys or EAP secrets it holds" : nil
            }
        } catch {
            throw ParseError(file: error)
        }
        return try parse(String(decoding: bytes, as: UTF8.self))
    }

    /// Whether any line of `text` sets a secret (`psk`, `peer-psk`, `eap-user`), whether or not the rest parses.
    /// Read with the file's own line reader (comments, quoting), so it sees the keywords ``parse(_:)`` sees.
    static func holdsSecrets(_ text: String) -> Bool {
        ConfigurationReader.lines(text).contains { result in
            guard case .success(let line) = result, let keyword = line.tokens.first?.text else { return false }
            return ["psk", "peer-psk", "eap-user"].contains(keyword)
        }
    }

    /// The backend this configuration asks for, in `namespace`.
    public func makeBackend(
        namespace: NetworkNamespace = .current,
        logger: Logger = Logger(label: "wss.keying")
    ) throws(KeyingError) -> StrongSwanBackend {
        let credentials = try credentials()
        switch charon {
        case .auto:
            return try StrongSwanBackend.systemOrPrivate(credentials: credentials, namespace: namespace, logger: logger)
        case .private:
            let daemon: CharonDaemon
            do { daemon = try CharonDaemon(namespace: namespace) } catch {
                throw KeyingError(.unavailable, "starting a private charon", underlying: error)
            }
            return try StrongSwanBackend(vici: daemon.vici, credentials: credentials, daemon: daemon, logger: logger)
        case .socket(let path):
            do {
                return try StrongSwanBackend(vici: try VICIClient(path: path), credentials: credentials, logger: logger)
            } catch let error as KeyingError {
                throw error
            } catch {
                throw KeyingError(.unavailable, "VICI socket \(path)", underlying: error)
            }
        }
    }
}
