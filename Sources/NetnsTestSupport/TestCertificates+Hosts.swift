import Foundation

extension TestCertificates {
    /// One host certificate to make: its IKE identity (the key and certificate file names), its subject DN and its
    /// subjectAltNames (`pki --san`: an FQDN, an email address or an IP address each).
    public struct Host: Sendable {
        public var name: String
        public var subject: String
        public var subjectAltNames: [String]
        /// A subject in OpenSSL's `-subj` form (`/CN=admin, O=Example`: one RDN whose value holds a comma), which
        /// `pki --dn` cannot write: the certificate is then issued by `openssl` (DNS subjectAltNames only).
        public var opensslSubject: String?

        public init(
            _ name: String, subject: String? = nil, subjectAltNames: [String]? = nil, opensslSubject: String? = nil
        ) {
            self.name = name
            self.subject = subject ?? "CN=\(name)"
            self.subjectAltNames = subjectAltNames ?? [name]
            self.opensslSubject = opensslSubject
        }
    }

    /// A CA and, for each host, a key and a certificate with the host's subject and subjectAltNames.
    public init(hosts: [Host], keyType: String = "ecdsa") throws {
        guard Command.locate("pki") != nil else { throw CommandError.notFound("pki (apt install strongswan-pki)") }
        let folder = NSTemporaryDirectory() + "wss-certs-\(getpid())-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: false)
        let quote = { (text: String) in "'" + text.replacingOccurrences(of: "'", with: "'\\''") + "'" }
        var script = """
            set -e
            umask 022
            cd \(quote(folder))
            pki --gen --type \(keyType) --outform pem > ca.key 2>/dev/null
            pki --self --in ca.key --type \(keyType) --dn 'CN=WSS Test CA' --ca --outform pem > ca.crt 2>/dev/null

            """
        for host in hosts {
            if let subject = host.opensslSubject {
                let sans = host.subjectAltNames.map { "DNS:\($0)" }.joined(separator: ",")
                script += """
                    pki --gen --type \(keyType) --outform pem > \(quote(host.name + ".key")) 2>/dev/null
                    openssl req -new -key \(quote(host.name + ".key")) -subj \(quote(subject)) \\
                      -out \(quote(host.name + ".csr")) 2>/dev/null
                    printf '%s\\n' \(quote("subjectAltName=" + sans)) > \(quote(host.name + ".ext"))
                    openssl x509 -req -in \(quote(host.name + ".csr")) -CA ca.crt -CAkey ca.key -CAcreateserial \\
                      -days 30 -extfile \(quote(host.name + ".ext")) -out \(quote(host.name + ".crt")) 2>/dev/null

                    """
                continue
            }
            let sans = host.subjectAltNames.map { "--san \(quote($0))" }.joined(separator: " ")
            script += """
                pki --gen --type \(keyType) --outform pem > \(quote(host.name + ".key")) 2>/dev/null
                pki --issue --in \(quote(host.name + ".key")) --type priv --cacert ca.crt --cakey ca.key \\
                  --dn \(quote(host.subject)) \(sans) --outform pem > \(quote(host.name + ".crt")) 2>/dev/null

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
        self.folder = folder
    }
}
