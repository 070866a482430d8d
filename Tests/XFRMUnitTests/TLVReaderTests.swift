import CNetlink
import XCTest

@testable import XFRM

/// Tier 1: the TLV and message readers get truncated, oversized and random input and answer with
/// errors, never a crash or an out-of-bounds read.
final class TLVReaderTests: XCTestCase {
    func attribute(type: UInt16, length: UInt16, payload: [UInt8]) -> [UInt8] {
        withUnsafeBytes(of: length.littleEndian) { Array($0) } + withUnsafeBytes(of: type.littleEndian) { Array($0) }
            + payload
    }

    func assertMalformed(_ bytes: [UInt8], _ message: String, file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertThrowsError(try NetlinkAttribute.parse(bytes[...], operation: "test"), message, file: file, line: line)
        {
            XCTAssertEqual(($0 as? XFRMError)?.code, .malformedMessage, file: file, line: line)
        }
    }

    func testWellFormedAttributes() throws {
        let bytes =
            attribute(type: 5, length: 8, payload: [1, 2, 3, 4])
            + attribute(type: 0x8000 | 6, length: 5, payload: [9, 0, 0, 0])
        let parsed = try NetlinkAttribute.parse(bytes[...], operation: "test")
        XCTAssertEqual(parsed.map(\.type), [5, 6], "nested flag masked off")
        XCTAssertEqual(Array(parsed[0].payload), [1, 2, 3, 4])
        XCTAssertEqual(Array(parsed[1].payload), [9], "length 5 means one payload byte, padding skipped")
        XCTAssertEqual(try NetlinkAttribute.parse([][...], operation: "test").count, 0)
    }

    func testLastAttributeWithoutTrailingPaddingIsAccepted() throws {
        let bytes = attribute(type: 1, length: 5, payload: [7])
        XCTAssertEqual(try NetlinkAttribute.parse(bytes[...], operation: "test").first.map { Array($0.payload) }, [7])
    }

    func testTruncatedHeader() {
        assertMalformed([8, 0, 1], "three bytes cannot hold an attribute header")
        assertMalformed(attribute(type: 1, length: 4, payload: []) + [4, 0], "trailing partial header")
    }

    func testLengthBelowHeaderSize() {
        assertMalformed(attribute(type: 1, length: 3, payload: [0, 0, 0, 0]), "nla_len 3 < 4")
        assertMalformed(attribute(type: 1, length: 0, payload: []), "nla_len 0 would loop forever")
    }

    func testOversizedAttribute() {
        assertMalformed(attribute(type: 1, length: 100, payload: [1, 2, 3, 4]), "nla_len past the end")
        assertMalformed(attribute(type: 1, length: 0xffff, payload: []), "maximum length, nothing behind it")
    }

    func testStructAttributeShorterThanStruct() throws {
        let bytes = attribute(type: 21, length: 8, payload: [1, 0, 0, 0]) // xfrm_mark needs 8 payload bytes
        let parsed = try NetlinkAttribute.parse(bytes[...], operation: "test")
        XCTAssertThrowsError(try parsed[0].load(xfrm_mark.self, operation: "test")) {
            XCTAssertEqual(($0 as? XFRMError)?.code, .malformedMessage)
        }
    }

    func testMessageSplitBounds() {
        func header(length: UInt32) -> [UInt8] {
            var h = nlmsghdr()
            h.nlmsg_len = length
            return withUnsafeBytes(of: h) { Array($0) }
        }
        XCTAssertThrowsError(try NetlinkMessage.split([1, 2, 3][...], operation: "test"))
        XCTAssertThrowsError(try NetlinkMessage.split(header(length: 8)[...], operation: "test"))
        XCTAssertThrowsError(try NetlinkMessage.split(header(length: 64)[...], operation: "test"))
        XCTAssertEqual(
            try NetlinkMessage.split((header(length: 16) + header(length: 16))[...], operation: "test").count, 2)
    }

    func testTruncatedEventPayloadsThrow() throws {
        // Every event type with a payload one byte short of its fixed header.
        let cases: [(Int32, Int)] = [
            (XFRM_MSG_ACQUIRE, MemoryLayout<xfrm_user_acquire>.size),
            (XFRM_MSG_EXPIRE, MemoryLayout<xfrm_user_expire>.size),
            (XFRM_MSG_POLEXPIRE, MemoryLayout<xfrm_user_polexpire>.size),
            (XFRM_MSG_NEWSA, MemoryLayout<xfrm_usersa_info>.size),
            (XFRM_MSG_DELSA, MemoryLayout<xfrm_usersa_id>.size),
            (XFRM_MSG_NEWPOLICY, MemoryLayout<xfrm_userpolicy_info>.size),
            (XFRM_MSG_DELPOLICY, MemoryLayout<xfrm_userpolicy_id>.size),
        ].map { (Int32($0.0), $0.1) }
        for (type, size) in cases {
            let message = NetlinkMessage(
                type: UInt16(type), flags: 0, sequence: 0, portID: 0,
                payload: [UInt8](repeating: 0, count: size - 1)[...])
            XCTAssertThrowsError(try XFRMEvent.decode(message), "type \(type)") {
                XCTAssertEqual(($0 as? XFRMError)?.code, .malformedMessage)
            }
        }
    }

    func testDeletedStateWithoutSAAttributeThrows() {
        let message = NetlinkMessage(
            type: UInt16(XFRM_MSG_DELSA), flags: 0, sequence: 0, portID: 0,
            payload: [UInt8](repeating: 0, count: MemoryLayout<xfrm_usersa_id>.size)[...])
        XCTAssertThrowsError(try XFRMEvent.decode(message))
    }

    /// Random bytes through every decoder: each call returns or throws, and never traps.
    func testRandomInputNeverCrashes() {
        var generator = SplitMix64(seed: 0x5eed)
        let types: [UInt16] = [
            XFRM_MSG_ACQUIRE, XFRM_MSG_EXPIRE, XFRM_MSG_POLEXPIRE, XFRM_MSG_NEWSA, XFRM_MSG_UPDSA,
            XFRM_MSG_DELSA, XFRM_MSG_NEWPOLICY, XFRM_MSG_DELPOLICY, XFRM_MSG_FLUSHSA,
        ].map { UInt16($0) }
        var decoded = 0
        var rejected = 0
        for round in 0..<20_000 {
            let length = Int(generator.next() % 600)
            var bytes = (0..<length).map { _ in UInt8(truncatingIfNeeded: generator.next()) }
            // Give half the inputs plausible attribute lengths so the attribute paths are reached.
            if round % 2 == 0, length > 300 {
                for offset in stride(from: 280, to: length - 4, by: 40) {
                    bytes[offset] = UInt8(truncatingIfNeeded: generator.next() % 120)
                    bytes[offset + 1] = 0
                }
            }
            _ = try? NetlinkAttribute.parse(bytes[...], operation: "fuzz")
            _ = try? NetlinkMessage.split(bytes[...], operation: "fuzz")
            let message = NetlinkMessage(
                type: types[round % types.count], flags: 0, sequence: 0, portID: 0,
                payload: bytes[...])
            if (try? XFRMEvent.decode(message)) != nil { decoded += 1 } else { rejected += 1 }
        }
        XCTAssertEqual(decoded + rejected, 20_000)
        XCTAssertGreaterThan(rejected, 0)
    }

    func testKernelErrorWithExtendedAck() {
        // NLMSG_ERROR, capped (only the request header echoed), with NLMSGERR_ATTR_MSG.
        var error = nlmsgerr()
        error.error = -2 // ENOENT
        error.msg.nlmsg_len = 40
        let text = Array("No such state".utf8) + [0]
        let payload =
            withUnsafeBytes(of: error) { Array($0) } + attribute(type: 1, length: UInt16(4 + text.count), payload: text)
        let message = NetlinkMessage(
            type: UInt16(NLMSG_ERROR), flags: UInt16(NLM_F_CAPPED | NLM_F_ACK_TLVS), sequence: 1,
            portID: 0, payload: payload[...])
        XCTAssertThrowsError(try XFRMClient.throwIfError(message, operation: "state get")) {
            let e = $0 as? XFRMError
            XCTAssertEqual(e?.code, .kernelRejected)
            XCTAssertEqual(e?.errno, .noSuchFileOrDirectory)
            XCTAssertEqual(e?.kernelMessage, "No such state")
            XCTAssertEqual(e?.operation, "state get")
        }
        var ack = nlmsgerr()
        ack.error = 0
        let ackMessage = NetlinkMessage(
            type: UInt16(NLMSG_ERROR), flags: 0, sequence: 1, portID: 0,
            payload: withUnsafeBytes(of: ack) { Array($0) }[...])
        XCTAssertNoThrow(try XFRMClient.throwIfError(ackMessage, operation: "ack"))
    }
}

/// A small deterministic generator so fuzz rounds are reproducible.
struct SplitMix64: RandomNumberGenerator {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9e37_79b9_7f4a_7c15
        var z = state
        z = (z ^ (z >> 30)) &* 0xbf58_476d_1ce4_e5b9
        z = (z ^ (z >> 27)) &* 0x94d0_49bb_1331_11eb
        return z ^ (z >> 31)
    }
}
