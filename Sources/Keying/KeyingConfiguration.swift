import Foundation
import XFRM

/// The keying configuration a service gives the library: one file, for the people who run servers.
///
/// Found at `$WSS_KEYING_CONFIG`, else `/etc/winsock-secure-socket/keying.conf`. One setting per line,
/// `#` starts a comment, values may be quoted:
///
/// ```
/// # This host's IKE identity (an FQDN, address, email, or a name in its certificate's subjectAltName).
/// identity     a.example
/// # Either a pre-shared key (text, or 0x-prefixed hex) ...
/// psk          "correct horse battery staple"
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
    public var negotiationTimeout: Double
    public var eapUsers: [String: String] = [:]

    public struct ParseError: Error, CustomStringConvertible {
        public var line: Int
        public var message: String
        public var description: String { line > 0 ? "line \(line): \(message)" : message }
    }

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
        var timeout = 10.0
        var eapUsers: [String: String] = [:]
        for (index, raw) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            let number = index + 1
            let line = Self.stripComment(String(raw)).trimmingCharacters(in: .whitespaces)
            if line.isEmpty { continue }
            let parts = line.split(maxSplits: 1, whereSeparator: { $0 == " " || $0 == "\t" })
            guard parts.count == 2 else { throw ParseError(line: number, message: "`\(line)` has no value") }
            let name = String(parts[0])
            var value = parts[1].trimmingCharacters(in: .whitespaces)
            if value.count >= 2, value.hasPrefix("\""), value.hasSuffix("\"") { value = String(value.dropFirst().dropLast()) }
            switch name {
            case "identity": identity = value
            case "psk": psk = value
            case "certificate": certificate = value
            case "private-key": key = value
            case "authority": authorities.append(value)
            case "charon":
                charon = value == "auto" ? .auto : value == "private" ? .private : .socket(value)
                if case .socket(let path) = charon, !path.hasPrefix("/") {
                    throw ParseError(line: number, message: "charon is auto, private or an absolute socket path")
                }
            case "eap-user":
                let fields = value.split(maxSplits: 1, whereSeparator: { $0 == " " || $0 == "\t" })
                guard fields.count == 2 else { throw ParseError(line: number, message: "eap-user NAME SECRET") }
                var secret = fields[1].trimmingCharacters(in: .whitespaces)
                if secret.count >= 2, secret.hasPrefix("\""), secret.hasSuffix("\"") { secret = String(secret.dropFirst().dropLast()) }
                eapUsers[String(fields[0])] = secret
            case "negotiation-timeout":
                guard let seconds = Double(value), seconds > 0, seconds <= 300 else {
                    throw ParseError(line: number, message: "negotiation-timeout is seconds in (0, 300]")
                }
                timeout = seconds
            default:
                throw ParseError(line: number, message: "unknown setting `\(name)`")
            }
        }
        guard let identity, !identity.isEmpty else { throw ParseError(line: 0, message: "`identity` is required") }
        switch (psk, certificate, key) {
        case (.some, nil, nil): break
        case (nil, .some, .some): break
        case (.some, _, _): throw ParseError(line: 0, message: "give either psk or certificate + private-key, not both")
        default: throw ParseError(line: 0, message: "give psk, or certificate and private-key")
        }
        var configuration = KeyingConfiguration(identity: identity, psk: psk, certificatePath: certificate,
                                                privateKeyPath: key, authorityPaths: authorities, charon: charon,
                                                negotiationTimeout: timeout)
        configuration.eapUsers = eapUsers
        return configuration
    }

    private static func stripComment(_ line: String) -> String {
        var inQuotes = false
        for (offset, character) in line.enumerated() {
            if character == "\"" { inQuotes.toggle() }
            if character == "#" && !inQuotes { return String(line.prefix(offset)) }
        }
        return line
    }

    /// The credentials this configuration names, files read now.
    public func credentials() throws(KeyingError) -> StrongSwanBackend.Credentials {
        if let psk {
            return StrongSwanBackend.Credentials(identity: identity, method: .psk(psk), eapUsers: eapUsers)
        }
        func read(_ path: String) throws(KeyingError) -> [UInt8] {
            guard let data = FileManager.default.contents(atPath: path) else {
                throw KeyingError(.unavailable, "cannot read \(path)")
            }
            return [UInt8](data)
        }
        return StrongSwanBackend.Credentials(identity: identity, method: .certificate(
            certificate: try read(certificatePath!), privateKey: try read(privateKeyPath!),
            authorities: try authorityPaths.map { (path) throws(KeyingError) in try read(path) }), eapUsers: eapUsers)
    }

    /// The backend this configuration asks for, in `namespace`.
    public func makeBackend(namespace: NetworkNamespace = .current) throws(KeyingError) -> StrongSwanBackend {
        let credentials = try credentials()
        switch charon {
        case .auto:
            return try StrongSwanBackend.systemOrPrivate(credentials: credentials, namespace: namespace)
        case .private:
            let daemon: CharonDaemon
            do { daemon = try CharonDaemon(namespace: namespace) } catch {
                throw KeyingError(.unavailable, "starting a private charon: \(error)")
            }
            return try StrongSwanBackend(vici: daemon.vici, credentials: credentials, daemon: daemon)
        case .socket(let path):
            do {
                return try StrongSwanBackend(vici: try VICIClient(path: path), credentials: credentials)
            } catch let error as KeyingError {
                throw error
            } catch {
                throw KeyingError(.unavailable, "VICI socket \(path): \(error)")
            }
        }
    }
}
