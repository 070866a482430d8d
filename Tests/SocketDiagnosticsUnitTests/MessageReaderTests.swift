import CNetlink
import Glibc
import IPAddressing
import XCTest

@testable import SocketDiagnostics

/// Hand-built kernel messages: the reply and destroy-event readers, including truncated, oversized and random
/// input, which must end in an error (or an ``SocketDestroyEvent/unreadable(_:)`` event), never a crash.
final class MessageReaderTests: XCTestCase {
    /// An `inet_diag_msg` built from the C struct.
    static func diagMessage(
        family: Int32 = AF_INET, state: UInt8 = 10, source: [UInt8] = [127, 0, 0, 1], sourcePort: UInt16 = 4500,
        destination: [UInt8] = [0, 0, 0, 0], destinationPort: UInt16 = 0, cookie: (UInt32, UInt32) = (0x89ab_cdef, 1),
        uid: UInt32 = 1000, inode: UInt32 = 77, rqueue: UInt32 = 3, wqueue: UInt32 = 128
    ) -> [UInt8] {
        var message = inet_diag_msg()
        message.idiag_family = UInt8(family)
        message.idiag_state = state
        message.id.idiag_sport = sourcePort.bigEndian
        message.id.idiag_dport = destinationPort.bigEndian
        withUnsafeMutableBytes(of: &message.id.idiag_src) { $0.copyBytes(from: source) }
        withUnsafeMutableBytes(of: &message.id.idiag_dst) { $0.copyBytes(from: destination) }
        message.id.idiag_cookie = cookie
        message.idiag_uid = uid
        message.idiag_inode = inode
        message.idiag_rqueue = rqueue
        message.idiag_wqueue = wqueue
        return withUnsafeBytes(of: message) { Array($0) }
    }

    static func attribute(_ type: UInt16, _ payload: [UInt8], length: UInt16? = nil) -> [UInt8] {
        let declared = length ?? UInt16(4 + payload.count)
        var bytes =
            withUnsafeBytes(of: declared.littleEndian) { Array($0) }
            + withUnsafeBytes(of: type.littleEndian) {
                Array($0)
            }
        bytes += payload
        while bytes.count % 4 != 0 { bytes.append(0) }
        return bytes
    }

    static func netlink(type: UInt16, flags: UInt16 = 0, sequence: UInt32 = 0, _ payload: [UInt8]) -> [UInt8] {
        var header = nlmsghdr()
        header.nlmsg_len = UInt32(16 + payload.count)
        header.nlmsg_type = type
        header.nlmsg_flags = flags
        header.nlmsg_seq = sequence
        var bytes = withUnsafeBytes(of: header) { Array($0) } + payload
        while bytes.count % 4 != 0 { bytes.append(0) }
        return bytes
    }

    func read(_ payload: [UInt8], _ transport: InetTransport?) throws -> InetSocketRecord {
        try InetSocketRecord(inetDiagPayload: payload[...], transport: transport, operation: "test")
    }

    func assertMalformed(
        _ payload: [UInt8], _ transport: InetTransport?, _ message: String, file: StaticString = #filePath,
        line: UInt = #line
    ) {
        XCTAssertThrowsError(try read(payload, transport), message, file: file, line: line) {
            XCTAssertEqual(($0 as? SocketDiagnosticsError)?.code, .malformedMessage, file: file, line: line)
        }
    }

    func testIPv4ListenerReadsEveryField() throws {
        let record = try read(Self.diagMessage(), .tcp)
        XCTAssertEqual(record.cookie, 0x1_89ab_cdef, "idiag_cookie[0] | idiag_cookie[1] << 32")
        XCTAssertEqual(record.family, .inet)
        XCTAssertEqual(record.transport, .tcp)
        XCTAssertEqual(record.state, .listen)
        XCTAssertEqual(record.local, IPEndpoint(address: "127.0.0.1", port: 4500))
        XCTAssertEqual(record.remote, IPEndpoint(address: "0.0.0.0", port: 0))
        XCTAssertEqual(record.uid, 1000)
        XCTAssertEqual(record.inode, 77)
        XCTAssertEqual(record.receiveQueue, 3)
        XCTAssertEqual(record.sendQueue, 128)
        XCTAssertTrue(record.isListening)
        XCTAssertFalse(record.isConnected)
        XCTAssertFalse(record.isOrphan)
    }

    func testIPv6ConnectedUDPWithAttributes() throws {
        let local = ("fd00::1" as IPAddress).bytes
        let remote = ("fd00::2" as IPAddress).bytes
        let payload =
            Self.diagMessage(
                family: AF_INET6, state: 1, source: local, sourcePort: 53, destination: remote, destinationPort: 5353)
            + Self.attribute(5, [0]) + Self.attribute(0x8000 | 22, [1, 2]) + Self.attribute(10, [17])
        let record = try read(payload, .udp)
        XCTAssertEqual(record.family, .inet6)
        XCTAssertEqual(record.transport, .udp)
        XCTAssertEqual(record.local, IPEndpoint(address: "fd00::1", port: 53))
        XCTAssertEqual(record.remote, IPEndpoint(address: "fd00::2", port: 5353))
        XCTAssertTrue(record.isConnected)
        XCTAssertFalse(record.isListening)
    }

    func testTransportFromTheProtocolAttribute() throws {
        XCTAssertEqual(try read(Self.diagMessage() + Self.attribute(10, [6]), nil).transport, .tcp)
        XCTAssertEqual(try read(Self.diagMessage() + Self.attribute(10, [17]), nil).transport, .udp)
        assertMalformed(Self.diagMessage(), nil, "no request and no attribute: transport unknown")
        assertMalformed(Self.diagMessage() + Self.attribute(10, []), nil, "empty INET_DIAG_PROTOCOL")
        assertMalformed(Self.diagMessage() + Self.attribute(10, [132]), nil, "SCTP is not read here")
        assertMalformed(Self.diagMessage() + Self.attribute(10, [17]), .tcp, "a UDP socket in a TCP reply")
    }

    func testEveryTruncationOfTheFixedHeaderThrows() {
        let full = Self.diagMessage()
        for length in 0..<full.count {
            assertMalformed(Array(full.prefix(length)), .tcp, "\(length) of 72 bytes")
        }
    }

    func testMalformedAttributesAndFamilyThrow() {
        assertMalformed(Self.diagMessage(family: 7), .tcp, "family 7")
        assertMalformed(Self.diagMessage() + [3, 0, 10, 0], .tcp, "nla_len 3 below the header")
        assertMalformed(Self.diagMessage() + [64, 0, 10, 0, 6, 0, 0, 0], .tcp, "nla_len past the end")
        assertMalformed(Self.diagMessage() + [8, 0], .tcp, "half an attribute header")
    }

    func testUnknownStateIsCarried() throws {
        XCTAssertEqual(try read(Self.diagMessage(state: 14), .tcp).state.rawValue, 14)
    }

    func testOrphanAndConnectedAreDecidedByStateAndInode() throws {
        let orphan = try read(Self.diagMessage(state: 4, destinationPort: 80, inode: 0), .tcp)
        XCTAssertTrue(orphan.isOrphan, "FIN_WAIT1 with inode 0")
        XCTAssertTrue(orphan.isConnected)
        XCTAssertFalse(try read(Self.diagMessage(state: 4, inode: 5), .tcp).isOrphan, "a process holds it")
        XCTAssertFalse(try read(Self.diagMessage(state: 6, inode: 0), .tcp).isOrphan, "TIME_WAIT")
        XCTAssertFalse(try read(Self.diagMessage(state: 3, inode: 0), .tcp).isOrphan, "a connection request")
        XCTAssertFalse(try read(Self.diagMessage(state: 7, inode: 0), .tcp).isOrphan, "a destroyed socket")
        XCTAssertFalse(try read(Self.diagMessage(state: 1, inode: 0), .udp).isOrphan, "UDP has no orphans")
        XCTAssertFalse(try read(Self.diagMessage(state: 6), .tcp).isConnected, "TIME_WAIT")
        XCTAssertFalse(try read(Self.diagMessage(state: 7), .udp).isConnected, "an unconnected UDP socket")
    }

    // MARK: Destroy events

    func testDestroyDatagramWithSeveralMessages() {
        let tcp = Self.netlink(
            type: 20, Self.diagMessage(state: 7, uid: 0, inode: 0, wqueue: 10) + Self.attribute(10, [6]))
        let udp = Self.netlink(
            type: 20,
            Self.diagMessage(family: AF_INET6, state: 7, source: ("::1" as IPAddress).bytes, wqueue: UInt32.max)
                + Self.attribute(10, [17]))
        let events = SocketDestroyEvent.events(inDatagram: (tcp + Self.netlink(type: 1, []) + udp)[...])
        XCTAssertEqual(events.count, 2, "NLMSG_NOOP is skipped")
        guard case .destroyed(let first) = events.first, case .destroyed(let second) = events.last else {
            return XCTFail("\(events)")
        }
        XCTAssertEqual(first.transport, .tcp)
        XCTAssertEqual(first.sendQueue, 10)
        XCTAssertEqual(second.transport, .udp)
        XCTAssertEqual(second.family, .inet6)
        XCTAssertEqual(second.sendQueue, 0, "the kernel's 0 - 1 for a released UDP send memory reads as nothing queued")
    }

    func testDestroyDatagramOddMessages() {
        let good = Self.netlink(type: 20, Self.diagMessage() + Self.attribute(10, [6]))
        let short = Self.netlink(type: 20, Array(Self.diagMessage().prefix(40)))
        let noProtocol = Self.netlink(type: 20, Self.diagMessage())
        let events = SocketDestroyEvent.events(
            inDatagram: (short + good + noProtocol + Self.netlink(type: 4, []) + Self.netlink(type: 77, []))[...])
        XCTAssertEqual(events.count, 5)
        guard case .unreadable = events[0], case .destroyed = events[1], case .unreadable = events[2],
            case .eventsLost = events[3], case .unreadable = events[4]
        else {
            return XCTFail("short, good, no protocol, NLMSG_OVERRUN, unknown type: \(events)")
        }
    }

    func testDatagramThatDoesNotSplitIsOneUnreadableEvent() {
        var bytes = Self.netlink(type: 20, Self.diagMessage() + Self.attribute(10, [6]))
        bytes[0] = 200 // nlmsg_len past the end
        XCTAssertEqual(SocketDestroyEvent.events(inDatagram: bytes[...]).count, 1)
        guard case .unreadable(let error) = SocketDestroyEvent.events(inDatagram: bytes[...]).first else {
            return XCTFail()
        }
        XCTAssertEqual(error.code, .malformedMessage)
        XCTAssertEqual(SocketDestroyEvent.events(inDatagram: [1, 2, 3][...]).count, 1)
        XCTAssertEqual(SocketDestroyEvent.events(inDatagram: [][...]), [])
    }

    func testSplitterBoundsAndStatuses() throws {
        var header = nlmsghdr()
        header.nlmsg_len = 8
        XCTAssertThrowsError(
            try DiagNetlinkMessage.split(withUnsafeBytes(of: header) { Array($0) }[...], operation: "t"))
        var error = nlmsgerr()
        error.error = -2
        let failed = try DiagNetlinkMessage.split(
            Self.netlink(type: 2, withUnsafeBytes(of: error) { Array($0) })[...], operation: "t")
        XCTAssertEqual(try failed[0].errorStatus(operation: "t")?.rawValue, ENOENT)
        error.error = 0
        let ack = try DiagNetlinkMessage.split(
            Self.netlink(type: 2, withUnsafeBytes(of: error) { Array($0) })[...], operation: "t")
        XCTAssertNil(try ack[0].errorStatus(operation: "t"))
        let truncatedError = try DiagNetlinkMessage.split(Self.netlink(type: 2, [1, 2])[...], operation: "t")
        XCTAssertThrowsError(try truncatedError[0].errorStatus(operation: "t"))
        let done = try DiagNetlinkMessage.split(Self.netlink(type: 3, [0xf4, 0xff, 0xff, 0xff])[...], operation: "t")
        XCTAssertEqual(try done[0].doneStatus(operation: "t")?.rawValue, ENOMEM, "status -12")
    }

    /// 20,000 random datagrams and 20,000 mutations of a valid one: every reader answers, nothing traps.
    func testRandomInputNeverCrashes() {
        var generator = SystemRandomNumberGenerator()
        let valid =
            Self.netlink(type: 20, Self.diagMessage() + Self.attribute(10, [6]) + Self.attribute(22, [1, 2, 3]))
            + Self.netlink(type: 20, Self.diagMessage(family: AF_INET6) + Self.attribute(10, [17]))
        var destroyed = 0
        for round in 0..<40_000 {
            var bytes: [UInt8]
            if round < 20_000 {
                bytes = (0..<Int.random(in: 0..<300, using: &generator)).map { _ in UInt8.random(in: 0...255) }
                if bytes.count >= 6 && round % 2 == 0 {
                    // Plausible headers reach the inner readers more often.
                    bytes[0] = UInt8(min(bytes.count, 255))
                    bytes[1] = 0
                    bytes[4] = 20
                    bytes[5] = 0
                }
            } else {
                bytes = valid
                for _ in 0..<Int.random(in: 1...4, using: &generator) {
                    bytes[Int.random(in: 0..<bytes.count, using: &generator)] = UInt8.random(in: 0...255)
                }
                bytes = Array(bytes.prefix(Int.random(in: 0...bytes.count, using: &generator)))
            }
            for event in SocketDestroyEvent.events(inDatagram: bytes[...]) {
                if case .destroyed = event { destroyed += 1 }
            }
            for message in (try? DiagNetlinkMessage.split(bytes[...], operation: "t")) ?? [] {
                _ = try? InetSocketRecord(inetDiagPayload: message.payload, transport: .tcp, operation: "t")
                _ = try? message.errorStatus(operation: "t")
                _ = try? message.doneStatus(operation: "t")
            }
        }
        XCTAssertGreaterThan(destroyed, 0, "some mutations stay readable")
    }
}
