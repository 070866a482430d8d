import Foundation

/// A throw-away CA and host certificates made with strongSwan's `pki` for a test run.
public struct TestCertificates: Sendable {
    public let folder: String

    /// A CA and, for each name, a key and a certificate whose CN and subjectAltName are the name.
    /// `keyType` is `ecdsa` (P-256, needs charon's openssl plugin) or `rsa`.
    public init(names: [String], keyType: String = "ecdsa") throws {
        guard Command.locate("pki") != nil else { throw CommandError.notFound("pki (apt install strongswan-pki)") }
        folder = NSTemporaryDirectory() + "wss-certs-\(getpid())-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: false)
        // pki writes to stdout and complains about absent plugins on stderr: keep them apart.
        var script = """
            set -e
            umask 022
            cd '\(folder)'
            pki --gen --type \(keyType) --outform pem > ca.key 2>/dev/null
            pki --self --in ca.key --type \(keyType) --dn 'CN=WSS Test CA' --ca --outform pem > ca.crt 2>/dev/null

            """
        for name in names {
            script += """
                pki --gen --type \(keyType) --outform pem > '\(name).key' 2>/dev/null
                pki --issue --in '\(name).key' --type priv --cacert ca.crt --cakey ca.key \\
                  --dn 'CN=\(name)' --san '\(name)' --outform pem > '\(name).crt' 2>/dev/null

                """
        }
        // The library reads a private key only if group and others cannot read it (ProtectedFile).
        script += "chmod 600 *.key\n"
        do {
            try Command.run(["sh", "-c", script], timeout: 120)
        } catch {
            try? FileManager.default.removeItem(atPath: folder)
            throw error
        }
    }

    public func authority() throws -> [UInt8] { try read("ca.crt") }
    public func certificate(_ name: String) throws -> [UInt8] { try read("\(name).crt") }
    public func key(_ name: String) throws -> [UInt8] { try read("\(name).key") }

    public func remove() { try? FileManager.default.removeItem(atPath: folder) }

    private func read(_ file: String) throws -> [UInt8] {
        [UInt8](try Data(contentsOf: URL(fileURLWithPath: "\(folder)/\(file)")))
    }
}
