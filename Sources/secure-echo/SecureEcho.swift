import ALE
import ArgumentParser
import CSecureSocketABI
import Foundation
import Glibc
import IPAddressing
import WinsockSecureSocket
import XFRM

/// The Windows secure-socket sample on Linux, through the Windows-named functions: a client that requires IPsec
/// and a peer name, and a server that queries the connection, impersonates the peer to write a file as it, and
/// reverts. Run as root; keying from `$WSS_KEYING_CONFIG`, identities from `$WSS_IDENTITY_MAP`.
@main
struct SecureEcho: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "secure-echo",
        abstract: "Echo over a socket secured with the Winsock secure-socket functions.",
        subcommands: [Server.self, Client.self, Hold.self, ServeMany.self])

    static func fail(_ call: String) -> ExitCode {
        let code = WSAGetLastError()
        let names: [Int32: String] = [
            10013: "WSAEACCES", 10014: "WSAEFAULT", 10022: "WSAEINVAL", 10038: "WSAENOTSOCK",
            10040: "WSAEMSGSIZE", 10045: "WSAEOPNOTSUPP", 10051: "WSAENETUNREACH",
            10060: "WSAETIMEDOUT", 10061: "WSAECONNREFUSED", 10107: "WSASYSCALLFAILURE",
        ]
        print("\(call) failed: \(names[code] ?? "error") (\(code))")
        fflush(nil)
        return ExitCode(3)
    }

    static func address(_ text: String, _ port: UInt16) throws -> IPEndpoint {
        guard let address = IPAddressParser.parse(text) else { throw ValidationError("not an IP address: \(text)") }
        return IPEndpoint(address: address, port: port)
    }

    static func queryLine(_ socket: Int32) -> (String, SOCKET_SECURITY_QUERY_INFO_IPSEC2)? {
        var template = SOCKET_SECURITY_QUERY_TEMPLATE_IPSEC2()
        template.SecurityProtocol = SOCKET_SECURITY_PROTOCOL_IPSEC2
        template.PeerTokenAccessMask = 1
        template.FieldMask = SOCKET_QUERY_IPSEC2_FIELD_MASK_MM_SA_ID | SOCKET_QUERY_IPSEC2_FIELD_MASK_QM_SA_ID
        var info = SOCKET_SECURITY_QUERY_INFO_IPSEC2()
        var length = UInt32(MemoryLayout<SOCKET_SECURITY_QUERY_INFO_IPSEC2>.size)
        guard
            WSAQuerySocketSecurity(
                socket, &template, UInt32(MemoryLayout.size(ofValue: template)), &info, &length, nil, nil) == 0
        else { return nil }
        var words: [String] = []
        if info.Flags & SOCKET_INFO_CONNECTION_SECURED != 0 { words.append("SECURED") }
        if info.Flags & SOCKET_INFO_CONNECTION_ENCRYPTED != 0 { words.append("ENCRYPTED") }
        if info.Flags & SOCKET_INFO_CONNECTION_IMPERSONATED != 0 { words.append("IMPERSONATED") }
        var line = "query: flags \(words.isEmpty ? "none" : words.joined(separator: " "))"
        for (label, handle) in [
            ("machine", info.PeerMachineAccessTokenHandle), ("user", info.PeerApplicationAccessTokenHandle),
        ]
        where handle != 0 {
            var buffer = [CChar](repeating: 0, count: 512)
            var size = UInt32(buffer.count)
            if WSSGetTokenIdentity(handle, &buffer, &size) == 0 {
                line +=
                    " \(label)=\(String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self))"
            }
            _ = WSSCloseToken(handle)
        }
        line += " ike-sa \(info.MmSaId) child-sa \(info.QmSaId)"
        if info.NegotiationWinerr != 0 { line += " negotiation-error \(info.NegotiationWinerr)" }
        return (line, info)
    }

    struct Server: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Accept, query, impersonate the peer to write a file, revert, echo.")
        @Option(help: "Address to bind.") var bind: String
        @Option(help: "Port.") var port: UInt16 = 27015
        @Option(help: "Folder (tmpfs, mode 0777) the peer's file is written to while impersonating.") var directory:
            String
        @Option(help: "A root-only file the impersonated thread must fail to open.") var rootOnly: String?
        @Option(help: "Connections to serve before exiting.") var count: Int = 1

        func run() throws {
            let family = bind.contains(":") ? AF_INET6 : AF_INET
            let listener = socket(family, Int32(SOCK_STREAM.rawValue), 0)
            var settings = SOCKET_SECURITY_SETTINGS(
                SecurityProtocol: SOCKET_SECURITY_PROTOCOL_DEFAULT,
                SecurityFlags: SOCKET_SETTINGS_GUARANTEE_ENCRYPTION)
            guard WSASetSocketSecurity(listener, &settings, 8, nil, nil) == 0 else {
                throw SecureEcho.fail("WSASetSocketSecurity")
            }
            let local = try SecureEcho.address(bind, port)
            guard local.withSockaddr({ Glibc.bind(listener, $0, $1) }) == 0, listen(listener, 10) == 0 else {
                throw ValidationError("bind/listen failed: errno \(errno)")
            }
            print("listening on \(local)")
            fflush(nil)
            for index in 1...max(1, count) {
                let client = accept(listener, nil, nil)
                guard client >= 0 else { throw ExitCode(4) }
                defer { close(client) }
                var buffer = [UInt8](repeating: 0, count: 4096)
                let received = recv(client, &buffer, buffer.count, 0)
                guard received > 0 else { continue }
                let message = Array(buffer.prefix(received))
                print("connection \(index): received \(received) bytes")
                if let (line, _) = SecureEcho.queryLine(client) {
                    print(line)
                } else {
                    print(SecureEcho.fail("WSAQuerySocketSecurity"))
                }

                // Act as the peer: only this thread changes identity, and it comes back.
                if WSAImpersonateSocketPeer(client, nil, 0) == 0 {
                    let uid = geteuid()
                    let path = "\(directory)/from-peer-\(index).txt"
                    let fd = open(path, O_CREAT | O_TRUNC | O_WRONLY, 0o644)
                    var owner: uid_t = 999_999
                    if fd >= 0 {
                        _ = message.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
                        var info = stat()
                        fstat(fd, &info)
                        owner = info.st_uid
                        close(fd)
                    }
                    let name = getpwuid(uid).map { String(cString: $0.pointee.pw_name) } ?? "?"
                    print("impersonated: uid \(uid) (\(name)) wrote \(path) owner \(owner)")
                    if let rootOnly {
                        let secret = open(rootOnly, O_RDONLY)
                        print(
                            "root-only file while impersonating: \(secret >= 0 ? "OPENED" : "refused (errno \(errno))")"
                        )
                        if secret >= 0 { close(secret) }
                    }
                    guard WSARevertImpersonation() == 0 else { throw SecureEcho.fail("WSARevertImpersonation") }
                    print("reverted: uid \(geteuid())")
                } else {
                    print(SecureEcho.fail("WSAImpersonateSocketPeer"))
                }
                _ = message.withUnsafeBytes { send(client, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
                print("echoed \(message.count) bytes")
                fflush(nil)
                // Wait for the client to finish (bounded), so the connection can be inspected meanwhile.
                var pfd = pollfd(fd: client, events: Int16(POLLIN), revents: 0)
                _ = poll(&pfd, 1, 30_000)
            }
            close(listener)
        }
    }

    struct Client: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Require IPsec and a peer name, connect, query, send, read the echo.")
        @Option(help: "Server address.") var server: String
        @Option(help: "Port.") var port: UInt16 = 27015
        @Option(help: "The identity the server must prove (an SPN like host/b.example).") var target: String
        @Option(help: "A user for the second authentication round.") var user: String?
        @Option(help: "That user's domain.") var domain: String?
        @Option(help: "That user's password.") var password: String?
        @Option(help: "The message.") var message: String = "12345678"
        @Option(help: "Seconds to keep the connection open after the echo.") var hold: Double = 0

        func run() throws {
            let family = server.contains(":") ? AF_INET6 : AF_INET
            let s = socket(family, Int32(SOCK_STREAM.rawValue), 0)
            var settings = ipsecSettings()
            guard WSASetSocketSecurity(s, &settings, UInt32(settings.count), nil, nil) == 0 else {
                throw SecureEcho.fail("WSASetSocketSecurity")
            }
            var name = peerTargetName(target)
            guard WSASetSocketPeerTargetName(s, &name, UInt32(name.count), nil, nil) == 0 else {
                throw SecureEcho.fail("WSASetSocketPeerTargetName")
            }
            let peer = try SecureEcho.address(server, port)
            let started = Date()
            let rc = peer.withSockaddr { WSAConnect(s, $0, Int32($1), nil, nil, nil, nil) }
            guard rc == 0 else { throw SecureEcho.fail("WSAConnect") }
            print(String(format: "connected to \(peer), secured in %.1f ms", Date().timeIntervalSince(started) * 1000))
            if let (line, _) = SecureEcho.queryLine(s) { print(line) }
            let bytes = Array(message.utf8)
            _ = bytes.withUnsafeBytes { send(s, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            var buffer = [UInt8](repeating: 0, count: 4096)
            var pfd = pollfd(fd: s, events: Int16(POLLIN), revents: 0)
            guard poll(&pfd, 1, 10_000) > 0 else {
                print("no echo")
                throw ExitCode(4)
            }
            let received = recv(s, &buffer, buffer.count, 0)
            print("echo: \(String(decoding: buffer.prefix(max(0, received)), as: UTF8.self))")
            fflush(nil)
            if hold > 0 { usleep(UInt32(hold * 1_000_000)) }
            close(s)
        }

        func ipsecSettings() -> [UInt8] { SecureEcho.ipsecSettings(user: user, domain: domain, password: password) }
        func peerTargetName(_ name: String) -> [UInt8] { SecureEcho.peerTargetName(name) }
    }

    /// `SOCKET_SECURITY_SETTINGS_IPSEC` with the user, domain and password as UTF-16 after the 84-byte header.
    static func ipsecSettings(user: String?, domain: String?, password: String?) -> [UInt8] {
        var header = SOCKET_SECURITY_SETTINGS_IPSEC()
        header.SecurityProtocol = SOCKET_SECURITY_PROTOCOL_IPSEC
        header.SecurityFlags = SOCKET_SETTINGS_GUARANTEE_ENCRYPTION
        let strings = [user ?? "", domain ?? "", password ?? ""].map { text in
            Array(text.utf16).flatMap { withUnsafeBytes(of: $0.littleEndian) { Array($0) } }
        }
        header.UserNameStringLen = UInt32(strings[0].count)
        header.DomainNameStringLen = UInt32(strings[1].count)
        header.PasswordStringLen = UInt32(strings[2].count)
        var bytes = Array(withUnsafeBytes(of: header) { Array($0) }.prefix(84)) + strings.joined()
        if bytes.count < 88 { bytes += [UInt8](repeating: 0, count: 88 - bytes.count) }
        return bytes
    }

    /// `SOCKET_PEER_TARGET_NAME` as Microsoft's sample builds it: sizeof + 2 * characters, the character count stored.
    static func peerTargetName(_ name: String) -> [UInt8] {
        var header = SOCKET_PEER_TARGET_NAME()
        let units = Array(name.utf16)
        header.PeerTargetNameStringLen = UInt32(units.count)
        return Array(withUnsafeBytes(of: header) { Array($0) }.prefix(140))
            + units.flatMap { withUnsafeBytes(of: $0.littleEndian) { Array($0) } } + [0, 0, 0, 0]
    }
}

enum IPAddressParser {
    static func parse(_ text: String) -> IPAddress? { IPAddress(text) }
}
