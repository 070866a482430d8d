import ALE
import CSecureSocketABI
import Foundation
import Glibc
import IPAddressing
import Keying
import SecureSocket
import XCTest

@testable import WinsockSecureSocket

/// Tier 1 (no privileges): the C entry points' argument validation and error codes, the Windows struct
/// layouts, and WSAGetLastError per thread. Success paths that install kernel policy are tier 2.
final class WinsockABITests: XCTestCase {
    static let engine: SecureSocketEngine = {
        let folder = FileManager.default.temporaryDirectory.appendingPathComponent("wsa-unit-\(getpid())").path
        let engine = try! SecureSocketEngine(.init(keying: try! StaticKeyBackend(peers: []), reqidDirectory: folder))
        SecureSocketEngine.setShared(engine)
        return engine
    }()

    override func setUp() { _ = Self.engine }

    func lastError(_ rc: Int32, file: StaticString = #filePath, line: UInt = #line) -> Int32 {
        XCTAssertEqual(rc, SOCKET_ERROR, "the call must fail", file: file, line: line)
        return WSAGetLastError()
    }

    func testStructLayoutsMatchWindows() {
        XCTAssertEqual(MemoryLayout<SOCKET_SECURITY_SETTINGS>.size, 8)
        XCTAssertEqual(MemoryLayout<SOCKET_SECURITY_SETTINGS_IPSEC>.size, 88)
        XCTAssertEqual(MemoryLayout<SOCKET_SECURITY_SETTINGS_IPSEC>.offset(of: \.UserNameStringLen), 72)
        XCTAssertEqual(MemoryLayout<SOCKET_PEER_TARGET_NAME>.size, 144)
        XCTAssertEqual(MemoryLayout<SOCKET_PEER_TARGET_NAME>.offset(of: \.PeerTargetNameStringLen), 136)
        XCTAssertEqual(MemoryLayout<SOCKET_SECURITY_QUERY_TEMPLATE>.size, 144)
        XCTAssertEqual(MemoryLayout<SOCKET_SECURITY_QUERY_TEMPLATE_IPSEC2>.size, 152)
        XCTAssertEqual(MemoryLayout<SOCKET_SECURITY_QUERY_INFO>.size, 24)
        XCTAssertEqual(MemoryLayout<SOCKET_SECURITY_QUERY_INFO_IPSEC2>.size, 64)
        XCTAssertEqual(MemoryLayout<SOCKET_SECURITY_QUERY_INFO_IPSEC2>.offset(of: \.NegotiationWinerr), 40)
    }

    // MARK: WSASetSocketSecurity

    func testSetSecurityOnNonSocket() {
        let file = open("/dev/null", O_RDONLY)
        defer { close(file) }
        XCTAssertEqual(lastError(WSASetSocketSecurity(file, nil, 0, nil, nil)), WSAENOTSOCK)
        XCTAssertEqual(lastError(WSASetSocketSecurity(123_456, nil, 0, nil, nil)), WSAENOTSOCK)
    }

    func testSetSecurityOnUnixSocket() {
        let unix = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(unix) }
        XCTAssertEqual(lastError(WSASetSocketSecurity(unix, nil, 0, nil, nil)), WSAEINVAL)
    }

    func testSetSecurityOnConnectedUDPAndBoundSockets() {
        let udp = socket(AF_INET, Int32(SOCK_DGRAM.rawValue), 0)
        defer { close(udp) }
        _ = IPEndpoint(address: "127.0.0.1", port: 9).withSockaddr { connect(udp, $0, $1) }
        XCTAssertEqual(lastError(WSASetSocketSecurity(udp, nil, 0, nil, nil)), WSAEISCONN)
        let bound = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(bound) }
        _ = IPEndpoint(address: "127.0.0.1", port: 0).withSockaddr { bind(bound, $0, $1) }
        XCTAssertEqual(lastError(WSASetSocketSecurity(bound, nil, 0, nil, nil)), WSAEINVAL, "after bind")
    }

    func testSettingsBufferRules() throws {
        let tcp = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(tcp) }
        var settings = SOCKET_SECURITY_SETTINGS(SecurityProtocol: SOCKET_SECURITY_PROTOCOL_DEFAULT, SecurityFlags: 1)
        XCTAssertEqual(lastError(WSASetSocketSecurity(tcp, &settings, 7, nil, nil)), WSAEMSGSIZE, "len < 8")
        settings.SecurityProtocol = SOCKET_SECURITY_PROTOCOL_INVALID
        XCTAssertEqual(lastError(WSASetSocketSecurity(tcp, &settings, 8, nil, nil)), WSAEINVAL, "protocol INVALID")
        settings = SOCKET_SECURITY_SETTINGS(SecurityProtocol: SOCKET_SECURITY_PROTOCOL_DEFAULT, SecurityFlags: 3)
        XCTAssertEqual(
            lastError(WSASetSocketSecurity(tcp, &settings, 8, nil, nil)), WSAEINVAL, "GUARANTEE|ALLOW_INSECURE")
        settings.SecurityFlags = 0x10
        XCTAssertEqual(lastError(WSASetSocketSecurity(tcp, &settings, 8, nil, nil)), WSAEINVAL, "unknown flag")
    }

    /// An IPSEC settings buffer: 84-byte header + UTF-16 user, domain, password.
    func ipsecSettings(
        user: String, domain: String, password: String, flags: UInt32 = 0,
        declaredLengths: (Int, Int, Int)? = nil, bufferShortBy: Int = 0
    ) -> [UInt8] {
        let strings = [user, domain, password].map {
            Array($0.utf16).flatMap { withUnsafeBytes(of: $0.littleEndian) { Array($0) } }
        }
        var header = SOCKET_SECURITY_SETTINGS_IPSEC()
        header.SecurityProtocol = SOCKET_SECURITY_PROTOCOL_IPSEC
        header.SecurityFlags = 1
        header.IpsecFlags = flags
        header.UserNameStringLen = UInt32(declaredLengths?.0 ?? strings[0].count)
        header.DomainNameStringLen = UInt32(declaredLengths?.1 ?? strings[1].count)
        header.PasswordStringLen = UInt32(declaredLengths?.2 ?? strings[2].count)
        let bytes = Array(withUnsafeBytes(of: header) { Array($0) }.prefix(84)) + strings.joined()
        return Array(bytes.dropLast(bufferShortBy))
    }

    func testIPsecSettingsParsing() throws {
        let parsed = try WindowsStructs.settings(
            ipsecSettings(user: "alice", domain: "EXAMPLE", password: "s3cret", flags: 0x2), length: UInt32(84 + 36))
        XCTAssertEqual(parsed.securityProtocol, .ipsec)
        XCTAssertEqual(parsed.flags, .guaranteeEncryption)
        XCTAssertEqual(parsed.ipsec?.userName, "alice")
        XCTAssertEqual(parsed.ipsec?.domainName, "EXAMPLE")
        XCTAssertEqual(parsed.ipsec?.password, "s3cret")
        XCTAssertEqual(parsed.ipsec?.flags, .optionalPeerNameVerification)

        let short = ipsecSettings(user: "alice", domain: "", password: "pw", bufferShortBy: 2)
        XCTAssertThrowsError(try WindowsStructs.settings(short, length: UInt32(short.count))) {
            XCTAssertEqual(($0 as? SecureSocketError)?.code, .messageSize)
        }
        let odd = ipsecSettings(user: "alice", domain: "", password: "pw", declaredLengths: (9, 0, 4))
        XCTAssertThrowsError(try WindowsStructs.settings(odd, length: UInt32(odd.count))) {
            XCTAssertEqual(($0 as? SecureSocketError)?.code, .invalidArgument)
        }
        let empty = try WindowsStructs.settings(ipsecSettings(user: "", domain: "", password: ""), length: 88)
        XCTAssertNil(empty.ipsec?.userName)
    }

    func testIPsecSettingsThroughTheCEntryPoint() {
        let tcp = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(tcp) }
        var unsupported = ipsecSettings(user: "", domain: "", password: "", flags: 0x4)
        XCTAssertEqual(
            lastError(WSASetSocketSecurity(tcp, &unsupported, 88, nil, nil)), WSAEOPNOTSUPP,
            "ALLOW_FIRST_INBOUND_PKT_UNENCRYPTED")
        var userWithoutPassword = ipsecSettings(user: "bob", domain: "", password: "")
        XCTAssertEqual(
            lastError(WSASetSocketSecurity(tcp, &userWithoutPassword, UInt32(userWithoutPassword.count), nil, nil)),
            WSAEINVAL)
    }

    // MARK: WSASetSocketPeerTargetName / WSADeleteSocketPeerTargetName

    func peerTargetName(_ name: String, peer: IPEndpoint? = nil, characters: Bool = false) -> [UInt8] {
        var header = SOCKET_PEER_TARGET_NAME()
        let units = Array(name.utf16)
        header.PeerTargetNameStringLen = UInt32(characters ? units.count : units.count * 2)
        if let peer {
            peer.withSockaddr { address, length in
                withUnsafeMutableBytes(of: &header.PeerAddress) {
                    $0.copyMemory(from: UnsafeRawBufferPointer(start: address, count: Int(length)))
                }
            }
        }
        return Array(withUnsafeBytes(of: header) { Array($0) }.prefix(140))
            + units.flatMap { withUnsafeBytes(of: $0.littleEndian) { Array($0) } }
    }

    func testPeerTargetNameParsingBothLengthConventions() throws {
        let bytesForm = peerTargetName("host/b.example")
        XCTAssertEqual(
            try WindowsStructs.peerTargetName(bytesForm, length: UInt32(bytesForm.count)).name, "host/b.example")
        // Microsoft's sample stores the character count, with a buffer of 144 + 2 * characters.
        let charsForm = peerTargetName("host/b.example", characters: true) + [0, 0, 0, 0]
        XCTAssertEqual(
            try WindowsStructs.peerTargetName(charsForm, length: UInt32(charsForm.count)).name, "host/b.example")
        XCTAssertThrowsError(try WindowsStructs.peerTargetName(bytesForm, length: 139)) {
            XCTAssertEqual(($0 as? SecureSocketError)?.code, .messageSize)
        }
        XCTAssertThrowsError(try WindowsStructs.peerTargetName(bytesForm, length: UInt32(bytesForm.count - 10))) {
            XCTAssertEqual(($0 as? SecureSocketError)?.code, .messageSize)
        }
        let withPeer = peerTargetName("b", peer: IPEndpoint(address: "fd00::2", port: 500))
        XCTAssertEqual(
            try WindowsStructs.peerTargetName(withPeer, length: UInt32(withPeer.count)).peerAddress,
            IPEndpoint(address: "fd00::2", port: 500))
    }

    func testPeerTargetNameErrors() {
        let tcp = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(tcp) }
        XCTAssertEqual(lastError(WSASetSocketPeerTargetName(tcp, nil, 0, nil, nil)), WSAEFAULT)
        var name = peerTargetName("b.example")
        XCTAssertEqual(lastError(WSASetSocketPeerTargetName(tcp, &name, 100, nil, nil)), WSAEMSGSIZE)
        XCTAssertEqual(
            lastError(WSASetSocketPeerTargetName(tcp, &name, UInt32(name.count), nil, nil)), WSAEINVAL,
            "WSASetSocketSecurity must come first")
        let file = open("/dev/null", O_RDONLY)
        defer { close(file) }
        XCTAssertEqual(lastError(WSASetSocketPeerTargetName(file, &name, UInt32(name.count), nil, nil)), WSAENOTSOCK)

        XCTAssertEqual(lastError(WSADeleteSocketPeerTargetName(tcp, nil, 0, nil, nil)), WSAEFAULT)
        var short = sockaddr_in()
        short.sin_family = sa_family_t(AF_INET)
        XCTAssertEqual(lastError(WSADeleteSocketPeerTargetName(tcp, &short, 8, nil, nil)), WSAEMSGSIZE)
        var unix = sockaddr_un()
        unix.sun_family = sa_family_t(AF_UNIX)
        XCTAssertEqual(
            lastError(WSADeleteSocketPeerTargetName(tcp, &unix, UInt32(MemoryLayout<sockaddr_un>.size), nil, nil)),
            WSAEAFNOSUPPORT)
    }

    // MARK: WSAQuerySocketSecurity

    func connectedTCPPair() throws -> (client: Int32, server: Int32, listener: Int32) {
        let listener = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        _ = IPEndpoint(address: "127.0.0.1", port: 0).withSockaddr { bind(listener, $0, $1) }
        listen(listener, 1)
        let port = try XCTUnwrap(SocketInspector.facts(of: listener).local?.port)
        let client = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        _ = IPEndpoint(address: "127.0.0.1", port: port).withSockaddr { connect(client, $0, $1) }
        let server = accept(listener, nil, nil)
        return (client, server, listener)
    }

    func testQuerySizeProbeAndClearConnection() throws {
        let (client, server, listener) = try connectedTCPPair()
        defer {
            close(client)
            close(server)
            close(listener)
        }
        XCTAssertEqual(lastError(WSAQuerySocketSecurity(client, nil, 0, nil, nil, nil, nil)), WSAEFAULT, "NULL length")
        var length: UInt32 = 0
        XCTAssertEqual(
            lastError(WSAQuerySocketSecurity(client, nil, 0, nil, &length, nil, nil)), WSAEFAULT,
            "TCP size probe (Microsoft's sample)")
        XCTAssertEqual(length, 24)
        var info = SOCKET_SECURITY_QUERY_INFO()
        info.Flags = 0xffff
        XCTAssertEqual(WSAQuerySocketSecurity(client, nil, 0, &info, &length, nil, nil), 0)
        XCTAssertEqual(length, 24)
        XCTAssertEqual(info.Flags, 0, "a clear connection reports neither SECURED nor ENCRYPTED")
        XCTAssertEqual(info.PeerApplicationAccessTokenHandle, 0)

        var template = SOCKET_SECURITY_QUERY_TEMPLATE_IPSEC2()
        template.SecurityProtocol = SOCKET_SECURITY_PROTOCOL_IPSEC2
        length = 24
        XCTAssertEqual(lastError(WSAQuerySocketSecurity(client, &template, 152, &info, &length, nil, nil)), WSAEFAULT)
        XCTAssertEqual(length, 64, "the IPSEC2 form needs 64 bytes")
        var info2 = SOCKET_SECURITY_QUERY_INFO_IPSEC2()
        XCTAssertEqual(WSAQuerySocketSecurity(client, &template, 152, &info2, &length, nil, nil), 0)
        XCTAssertEqual(info2.SecurityProtocol, SOCKET_SECURITY_PROTOCOL_IPSEC2)
    }

    func testQueryErrors() {
        let udp = socket(AF_INET, Int32(SOCK_DGRAM.rawValue), 0)
        let tcp = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer {
            close(udp)
            close(tcp)
        }
        var length: UInt32 = 24
        var info = SOCKET_SECURITY_QUERY_INFO()
        XCTAssertEqual(
            lastError(WSAQuerySocketSecurity(udp, nil, 0, &info, &length, nil, nil)), WSAEMSGSIZE,
            "UDP needs a template")
        var template = SOCKET_SECURITY_QUERY_TEMPLATE()
        XCTAssertEqual(lastError(WSAQuerySocketSecurity(udp, &template, 143, &info, &length, nil, nil)), WSAEMSGSIZE)
        XCTAssertEqual(lastError(WSAQuerySocketSecurity(udp, &template, 144, nil, &length, nil, nil)), WSAEMSGSIZE)
        XCTAssertEqual(
            lastError(WSAQuerySocketSecurity(tcp, nil, 0, &info, &length, nil, nil)), WSAENOTCONN,
            "unconnected TCP (our documented choice)")
        let unix = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(unix) }
        XCTAssertEqual(lastError(WSAQuerySocketSecurity(unix, nil, 0, &info, &length, nil, nil)), WSAEINVAL)
    }

    // MARK: WSAConnect, WSAGetLastError

    func testConnectRejectsUnsupportedArguments() {
        let tcp = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(tcp) }
        XCTAssertEqual(lastError(WSAConnect(tcp, nil, 0, nil, nil, nil, nil)), WSAEFAULT)
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        var qos = 0
        XCTAssertEqual(
            lastError(WSAConnect(tcp, &address, Int32(MemoryLayout<sockaddr_in>.size), nil, nil, &qos, nil)),
            WSAEOPNOTSUPP)
    }

    func testLastErrorIsPerThread() {
        WSASetLastError(10022)
        nonisolated(unsafe) var seen: (Int32, Int32) = (-1, -1)
        let done = DispatchSemaphore(value: 0)
        let thread = Thread {
            let before = WSAGetLastError()
            WSASetLastError(10038)
            seen = (before, WSAGetLastError())
            done.signal()
        }
        thread.start()
        XCTAssertEqual(done.wait(timeout: .now() + 5), .success)
        XCTAssertEqual(seen.0, 0, "a new thread starts clean")
        XCTAssertEqual(seen.1, 10038)
        XCTAssertEqual(WSAGetLastError(), 10022, "another thread's error does not leak here")
    }
}

final class PeerTokenTests: XCTestCase {
    func testOpenDuplicateCloseAndLeakCount() {
        let table = PeerTokenTable()
        let machine = table.open(.machine, identity: "b.example", accessMask: 1)
        let user = table.open(.user, identity: "alice", accessMask: 1)
        XCTAssertNotEqual(machine.handle, 0)
        XCTAssertNotEqual(machine.handle, user.handle)
        let copy = table.duplicate(machine.handle)
        XCTAssertEqual(copy?.identity, "b.example")
        XCTAssertNotEqual(copy?.handle, machine.handle)
        XCTAssertEqual(table.openCount, 3)
        XCTAssertTrue(table.close(machine.handle))
        XCTAssertFalse(table.close(machine.handle), "a closed handle is not open any more")
        XCTAssertEqual(table.token(copy!.handle)?.identity, "b.example", "the duplicate lives on")
        XCTAssertNil(table.duplicate(machine.handle))
        table.close(copy!.handle)
        table.close(user.handle)
        XCTAssertEqual(table.openCount, 0)
    }

    func testCEntryPoints() throws {
        _ = WinsockABITests.engine
        let engine = try XCTUnwrap(SecureSocketEngine.shared)
        let token = engine.tokens.open(.machine, identity: "host.example", accessMask: 1)
        var length: UInt32 = 0
        XCTAssertEqual(WSSGetTokenIdentity(token.handle, nil, &length), SOCKET_ERROR)
        XCTAssertEqual(WSAGetLastError(), WSAEMSGSIZE)
        XCTAssertEqual(length, 13)
        var buffer = [CChar](repeating: 0, count: Int(length))
        XCTAssertEqual(WSSGetTokenIdentity(token.handle, &buffer, &length), 0)
        XCTAssertEqual(
            String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self), "host.example")
        var copy: UInt64 = 0
        XCTAssertEqual(WSSDuplicateToken(token.handle, &copy), 0)
        XCTAssertEqual(WSSCloseToken(token.handle), 0)
        XCTAssertEqual(WSSCloseToken(token.handle), SOCKET_ERROR)
        XCTAssertEqual(WSAGetLastError(), WSAEINVAL)
        XCTAssertEqual(WSSCloseToken(copy), 0)
        XCTAssertEqual(WSSGetTokenIdentity(12345, &buffer, &length), SOCKET_ERROR)
        XCTAssertEqual(WSAGetLastError(), WSAEINVAL)
    }
}
