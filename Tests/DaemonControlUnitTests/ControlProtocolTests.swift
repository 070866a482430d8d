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
            .inspect, .follow,
            .resecure(.default, names: []),
            .resecure(
                SocketSecuritySettings(flags: .guaranteeEncryption),
                names: [
                    SocketPeerTargetName(name: "host/a.example"),
                    SocketPeerTargetName(peerAddress: IPEndpoint(address: "10.0.0.2", port: 53), name: "b.example"),
                ]),
            .inspection(
                InspectionPage(
                    daemonPID: 12, keying: "strongswan", clients: 2, endpoints: [sampleEndpoint(cookie: 1)],
                    isLast: true)),
            .inspection(InspectionPage(daemonPID: 12, keying: "none", clients: 0, endpoints: [], isLast: false)),
            .inspectionEvent(
                InspectionEvent(kind: .saAdded, endpoint: sampleEndpoint(cookie: 2), sa: sampleSA(spi: 0xc000_0003))),
            .inspectionEvent(InspectionEvent(kind: .removed, endpoint: sampleEndpoint(cookie: 3, owner: nil))),
        ]
    }

    static func sampleSA(spi: UInt32) -> SAReport {
        SAReport(
            text: "src 10.0.0.1 dst 10.0.0.2 proto esp spi 0x\(String(spi, radix: 16)) reqid 7 mode transport",
            source: "10.0.0.1", destination: "10.0.0.2", spi: spi, reqid: 7, algorithms: ["rfc4106(gcm(aes))"],
            bytes: 1234, packets: 5)
    }

    static func sampleEndpoint(
        cookie: UInt64, owner: PeerCredentials? = PeerCredentials(pid: 41, uid: 65534, gid: 65534),
        sas: [SAReport] = [sampleSA(spi: 0xc000_0001)]
    ) -> InspectedEndpoint {
        InspectedEndpoint(
            owner: owner,
            report: EndpointReport(
                cookie: cookie, descriptor: 5, family: "inet", kind: "tcp", reqid: 7, role: "accepted",
                state: "secured (peer b.example)", peerIdentity: "b.example", peerUserIdentity: nil,
                peerTargetNames: ["*": "host/b.example", "10.0.0.2": "b.example"], settings: "ipsec default",
                localPort: 27015, pinned: "in 0xc0000001 out 0xc0000002", sas: sas))
    }

    /// The fuzzer's hand-made seeds (Fuzzing/SeedTools/control.py) are each a valid frame: the seed tool and
    /// the protocol agree, so fuzzing starts from every message kind.
    func testTheHandMadeFuzzSeedsAreValidFrames() throws {
        let corpus = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent().appendingPathComponent("Fuzzing/Corpus/control")
        let seeds = try FileManager.default.contentsOfDirectory(atPath: corpus.path).filter { $0.hasPrefix("hand-") }
        var kinds: Set<String> = []
        for seed in seeds {
            let bytes = try [UInt8](Data(contentsOf: corpus.appendingPathComponent(seed)))
            let frame = try ControlFrame(decoding: bytes)
            XCTAssertEqual(frame.encoded(), bytes, seed)
            kinds.insert("\(frame.message)".prefix { $0 != "(" }.description)
        }
        XCTAssertEqual(kinds.count, 20, "every message kind has a seed: \(kinds.sorted())")
    }

    /// A table larger than one datagram comes in pages, each within the frame limit and the array limit, the
    /// last marked; nothing is lost or repeated.
    func testLargeInspectionsArePagedWithinTheFrameLimit() throws {
        let endpoints = (1...300).map { cookie in
            Self.sampleEndpoint(cookie: UInt64(cookie), sas: (0..<4).map { Self.sampleSA(spi: UInt32($0)) })
        }
        let pages = InspectionPage.pages(daemonPID: 1, keying: "strongswan", clients: 3, endpoints: endpoints)
        XCTAssertGreaterThan(pages.count, 1)
        XCTAssertEqual(pages.map(\.isLast), Array(repeating: false, count: pages.count - 1) + [true])
        XCTAssertEqual(pages.flatMap(\.endpoints), endpoints)
        for page in pages {
            let bytes = ControlFrame(id: 1, .inspection(page)).encoded()
            XCTAssertLessThanOrEqual(bytes.count, ControlMessage.maximumFrameBytes)
            XCTAssertEqual(try ControlFrame(decoding: bytes).message, .inspection(page))
        }
        // An empty table is one last page.
        let empty = InspectionPage.pages(daemonPID: 1, keying: "none", clients: 0, endpoints: [])
        XCTAssertEqual(empty.map(\.isLast), [true])
        XCTAssertEqual(empty.first?.endpoints, [])
    }

    /// The follow stream's events: additions with their SAs, changes that are not only counters, SAs by SPI,
    /// removals.
    func testFollowEventsDescribeTheDifferenceBetweenTwoTables() {
        let kept = Self.sampleEndpoint(cookie: 1)
        var counted = kept
        counted.report.sas[0].bytes += 1_000 // counters alone are no change
        var rekeyed = kept
        rekeyed.report.sas = [Self.sampleSA(spi: 0xc000_0009)]
        rekeyed.report.pinned = "in 0xc0000009 out 0xc000000a"
        let gone = Self.sampleEndpoint(cookie: 2)
        let new = Self.sampleEndpoint(cookie: 3)
        XCTAssertEqual(InspectionEvent.changes(from: [1: kept], to: [1: counted]), [])
        let events = InspectionEvent.changes(from: [1: kept, 2: gone], to: [1: rekeyed, 3: new])
        XCTAssertEqual(
            events.map {
                "\($0.kind.rawValue) \($0.endpoint.report.cookie) \($0.sa.map { String($0.spi, radix: 16) } ?? "-")"
            },
            [
                "changed 1 -", "sa-added 1 c0000009", "sa-removed 1 c0000001", "added 3 -", "sa-added 3 c0000001",
                "removed 2 -",
            ])
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
