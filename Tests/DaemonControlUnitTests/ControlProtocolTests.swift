import DaemonControl
import DirectoryNames
import Foundation
import Glibc
import IPAddressing
import Impersonation
import SecureSocket
import XCTest
import XFRM

/// Tier 1: the control protocol's codec (every message round-trips; truncated, oversized, unknown and trailing
/// bytes are refused) and its channel (one datagram per message, the socket travels with it, a missing or
/// unexpected descriptor is refused and closed).
final class ControlProtocolTests: XCTestCase {
    static var samples: [ControlMessage] {
        var info = SocketSecurityQueryInfo(securityProtocol: .ipsec, flags: [.secured, .encrypted])
        info.peerMachineIdentity = "b.example"
        info.peer = PeerIdentity(
            ikeIdentity: "b.example",
            certificateSubject: RDNSequence([
                RDNSequence.RDN([
                    RDNSequence.Attribute(type: RDNSequence.AttributeType(oid: [2, 5, 4, 3]), text: "admin, O=Example")
                ])
            ]), subjectAltNames: ["b.example"], user: "alice", authentication: .certificate)
        info.ikeSAID = 7
        info.childSAID = 9
        info.outboundSA = XFRMStateID(destination: ("10.0.0.2" as IPAddress), spi: 0xc000_0001)
        info.inboundSA = XFRMStateID(destination: ("fd00::1" as IPAddress), spi: 0xc000_0002)
        info.encryptionAlgorithm = "rfc4106(gcm(aes))"
        return [
            .hello(minimumVersion: 1, maximumVersion: 1),
            .setSecurity(.default),
            .setSecurity(
                SocketSecuritySettings(
                    securityProtocol: .ipsec, flags: [.guaranteeEncryption],
                    ipsec: IPsecSettings(
                        flags: [.peerNameIsRawFormat], mainModePolicyKey: UUID(), userName: "alice", domainName: "EX",
                        password: "secret"))),
            .setPeerTargetName(
                SocketPeerTargetName(
                    peerAddress: IPEndpoint(address: ("10.0.0.2" as IPAddress), port: 0), name: "host/b.example")),
            .deletePeerTargetName(IPEndpoint(address: ("fd00::2" as IPAddress), port: 9)),
            .prepareConnect(peer: IPEndpoint(address: ("10.0.0.2" as IPAddress), port: 27015), timeoutMilliseconds: 0),
            .query(nil),
            .query(SocketSecurityQueryTemplate(securityProtocol: .ipsec2, peerTokenAccessMask: 1, ipsec2FieldMask: 3)),
            .release, .lent(cookie: 42, held: false), .lent(cookie: 43, held: true),
            .welcome(version: 1, daemonPID: 99), .done, .secured(cookie: 5), .connectReady(handshakeMilliseconds: 9000),
            .queryInfo(info), .failure(code: 10013, errno: 13, detail: "uid 65533 may not"), .lend(cookie: 77),
        ]
    }

    func testEveryMessageRoundTripsAndEncodesCanonically() throws {
        for (index, message) in Self.samples.enumerated() {
            let frame = ControlFrame(id: UInt32(index + 1), message)
            let bytes = frame.encoded()
            let decoded = try ControlFrame(decoding: bytes)
            XCTAssertEqual(decoded, frame, "\(message)")
            XCTAssertEqual(decoded.encoded(), bytes)
        }
    }

    func testMalformedFramesAreRefused() throws {
        let bytes = ControlFrame(id: 1, .setPeerTargetName(SocketPeerTargetName(name: "b.example"))).encoded()
        for cut in 0..<bytes.count {
            XCTAssertThrowsError(try ControlFrame(decoding: Array(bytes.prefix(cut))), "cut at \(cut)")
        }
        XCTAssertThrowsError(try ControlFrame(decoding: bytes + [0]), "trailing byte") {
            XCTAssertEqual($0 as? ControlProtocolError, .invalid("1 bytes after the message"))
        }
        var otherVersion = bytes
        otherVersion[4] = 2
        XCTAssertThrowsError(try ControlFrame(decoding: otherVersion)) {
            XCTAssertEqual($0 as? ControlProtocolError, .unsupported("protocol version 2"))
        }
        var unknownKind = bytes
        unknownKind[5] = 200
        XCTAssertThrowsError(try ControlFrame(decoding: unknownKind))
        XCTAssertThrowsError(
            try ControlFrame(decoding: [UInt8](repeating: 0, count: ControlMessage.maximumFrameBytes + 1))
        ) {
            XCTAssertEqual($0 as? ControlProtocolError, .oversized(ControlMessage.maximumFrameBytes + 1))
        }
        // A name with a NUL would read shorter in C.
        var writer = ControlWriter()
        writer.data(Array("b.exa\u{0}mple".utf8))
        var reader = ControlReader(writer.bytes)
        XCTAssertThrowsError(try reader.string())
    }

    func testTheSocketTravelsWithItsMessageAndStrayDescriptorsAreClosed() throws {
        var fds: [CInt] = [0, 0]
        XCTAssertEqual(socketpair(AF_UNIX, Int32(SOCK_SEQPACKET.rawValue), 0, &fds), 0)
        let (a, b) = (ControlChannel.adopting(fds[0]), ControlChannel.adopting(fds[1]))
        let passed = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(passed) }
        var cookie: UInt64 = 0
        var length = socklen_t(8)
        XCTAssertEqual(getsockopt(passed, SOL_SOCKET, SO_COOKIE, &cookie, &length), 0)

        try a.send(ControlFrame(id: 3, .release), socket: passed)
        let (frame, received) = try b.receive(timeout: .seconds(2))
        XCTAssertEqual(frame, ControlFrame(id: 3, .release))
        let fd = try XCTUnwrap(received)
        defer { close(fd) }
        var receivedCookie: UInt64 = 0
        XCTAssertEqual(getsockopt(fd, SOL_SOCKET, SO_COOKIE, &receivedCookie, &length), 0)
        XCTAssertEqual(receivedCookie, cookie, "the same socket, not a copy")
        XCTAssertEqual(fcntl(fd, F_GETFD) & FD_CLOEXEC, FD_CLOEXEC, "received close-on-exec")

        // A request that needs a socket and has none, and a message that carries one it should not.
        try a.send(ControlFrame(id: 4, .release))
        XCTAssertThrowsError(try b.receive(timeout: .seconds(2))) {
            XCTAssertEqual($0 as? ControlChannelError, .malformed(.invalid("a socket is missing")))
        }
        let before = Self.openDescriptors()
        try a.send(ControlFrame(id: 5, .done), socket: passed)
        XCTAssertThrowsError(try b.receive(timeout: .seconds(2))) {
            XCTAssertEqual($0 as? ControlChannelError, .malformed(.invalid("an unexpected descriptor")))
        }
        XCTAssertEqual(Self.openDescriptors(), before, "the stray descriptor is closed")
        XCTAssertThrowsError(try b.receive(timeout: .milliseconds(50))) {
            XCTAssertEqual($0 as? ControlChannelError, .timedOut)
        }
        XCTAssertEqual(b.peerCredentials?.pid, getpid())
    }

    static func openDescriptors() -> Int {
        (try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd").count) ?? -1
    }
}
