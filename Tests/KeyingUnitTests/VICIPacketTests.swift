import XCTest

@testable import Keying
@testable import VICI

/// Tier 1: VICI packets and stream framing, byte for byte against the protocol description, plus a
/// deterministic fuzz of the message and packet decoders (never a crash, only ``VICIError/Code/malformed``).
final class VICIPacketTests: XCTestCase {
    func ascii(_ text: String) -> [UInt8] { Array(text.utf8) }

    func testPacketsByteForByte() throws {
        // CMD_REQUEST "version", empty message: length 9 = type + name length + 7 name bytes.
        XCTAssertEqual(
            try VICIPacket.commandRequest(name: "version", message: [:]).encode(),
            [0, 0, 0, 9, 0, 7] + ascii("version"))
        // CMD_REQUEST "unload-conn" { name = a }: 1 + 1 + 11 + (1 + 1 + 4 + 2 + 1) = 22.
        XCTAssertEqual(
            try VICIPacket.commandRequest(name: "unload-conn", message: ["name": "a"]).encode(),
            [0, 0, 0, 22, 0, 11] + ascii("unload-conn") + [3, 4] + ascii("name") + [0, 1] + ascii("a"))
        // CMD_RESPONSE { success = yes }: 1 + 14.
        XCTAssertEqual(
            try VICIPacket.commandResponse(["success": "yes"]).encode(),
            [0, 0, 0, 15, 1, 3, 7] + ascii("success") + [0, 3] + ascii("yes"))
        XCTAssertEqual(try VICIPacket.commandUnknown.encode(), [0, 0, 0, 1, 2])
        XCTAssertEqual(
            try VICIPacket.eventRegister(name: "ike-updown").encode(), [0, 0, 0, 12, 3, 10] + ascii("ike-updown"))
        XCTAssertEqual(try VICIPacket.eventUnregister(name: "list-sa").encode(), [0, 0, 0, 9, 4, 7] + ascii("list-sa"))
        XCTAssertEqual(try VICIPacket.eventConfirm.encode(), [0, 0, 0, 1, 5])
        XCTAssertEqual(try VICIPacket.eventUnknown.encode(), [0, 0, 0, 1, 6])
        XCTAssertEqual(
            try VICIPacket.event(name: "log", message: ["msg": "hi"]).encode(),
            [0, 0, 0, 14, 7, 3] + ascii("log") + [3, 3] + ascii("msg") + [0, 2] + ascii("hi"))
    }

    func testPacketsRoundTrip() throws {
        let packets: [VICIPacket] = [
            .commandRequest(name: "load-conn", message: ["c": ["local": ["auth": "psk"]]]),
            .commandResponse(["success": "no", "errmsg": "bad"]), .commandUnknown,
            .eventRegister(name: "child-updown"), .eventUnregister(name: "child-updown"), .eventConfirm, .eventUnknown,
            .event(name: "ike-updown", message: ["up": "yes", "conn": ["state": "ESTABLISHED"]]),
            .commandRequest(name: "", message: [:]),
        ]
        for packet in packets {
            let bytes = try packet.encode()
            XCTAssertEqual(try VICIPacket.decode(bytes[4...]), packet)
            var reader = VICIFrameReader()
            reader.append(bytes)
            XCTAssertEqual(try reader.next(), packet)
            XCTAssertNil(try reader.next())
        }
    }

    func testMalformedPackets() {
        func malformed(_ data: [UInt8], _ what: String, file: StaticString = #filePath, line: UInt = #line) {
            XCTAssertThrowsError(try VICIPacket.decode(data), what, file: file, line: line) {
                XCTAssertEqual(($0 as? VICIError)?.code, .malformed, "\($0)", file: file, line: line)
            }
        }
        malformed([], "no type byte")
        malformed([8], "packet type 8")
        malformed([255], "packet type 255")
        malformed([0], "CMD_REQUEST without a name")
        malformed([0, 5, 0x61], "name past the end")
        malformed([7, 3] + ascii("log") + [9], "event with a bad message")
        malformed([2, 0], "CMD_UNKNOWN with trailing bytes")
        malformed([5, 1, 2], "EVENT_CONFIRM with trailing bytes")
        malformed([6, 0], "EVENT_UNKNOWN with trailing bytes")
        malformed([3, 1, 0x61, 3, 1, 0x6b, 0, 0], "EVENT_REGISTER with a message")
        malformed([4], "EVENT_UNREGISTER without a name")
        malformed([1, 1, 1, 0x73], "CMD_RESPONSE with an unclosed section")
    }

    func testPacketEncodingLimits() throws {
        // The largest message that fits: 512 KiB of segment data. Each full KEY_VALUE with a 3-byte name is
        // type + name length + name + value length + 65,535 bytes.
        let element = 1 + 1 + 3 + 2 + 65_535
        let endOverhead = 1 + 1 + 3 + 2
        var fitting = VICIMessage()
        var size = 1 // the CMD_RESPONSE type byte
        for index in 0..<100 where size + element + endOverhead <= VICIPacket.maximumSegmentLength {
            fitting.append("k0\(index)", .value([UInt8](repeating: 0, count: 65_535)))
            size += element
        }
        let rest = VICIPacket.maximumSegmentLength - size - endOverhead
        fitting.append("end", .value([UInt8](repeating: 1, count: rest)))
        let exact = try VICIPacket.commandResponse(fitting).encode()
        XCTAssertEqual(exact.count, 4 + VICIPacket.maximumSegmentLength)
        XCTAssertEqual(Array(exact[0..<4]), [0, 8, 0, 0], "512 KiB = 0x00080000")
        var reader = VICIFrameReader()
        reader.append(exact)
        XCTAssertEqual(try reader.next(), .commandResponse(fitting))

        fitting.append("x", "y")
        XCTAssertThrowsError(try VICIPacket.commandResponse(fitting).encode()) {
            XCTAssertEqual(($0 as? VICIError)?.code, .invalidArgument)
        }
        XCTAssertThrowsError(try VICIPacket.eventRegister(name: String(repeating: "e", count: 256)).encode()) {
            XCTAssertEqual(($0 as? VICIError)?.code, .invalidArgument)
        }
    }

    func testFrameReaderRejectsOversizedLengthBeforeBuffering() {
        var reader = VICIFrameReader()
        reader.append([0, 8, 0, 1]) // 512 KiB + 1
        XCTAssertThrowsError(try reader.next()) { XCTAssertEqual(($0 as? VICIError)?.code, .malformed) }
        var huge = VICIFrameReader()
        huge.append([0xff, 0xff, 0xff, 0xff])
        XCTAssertThrowsError(try huge.next()) { XCTAssertEqual(($0 as? VICIError)?.code, .malformed) }
        var zero = VICIFrameReader()
        zero.append([0, 0, 0, 0])
        XCTAssertThrowsError(try zero.next(), "a zero-length segment has no type byte") {
            XCTAssertEqual(($0 as? VICIError)?.code, .malformed)
        }
        var waiting = VICIFrameReader()
        waiting.append([0, 8, 0, 0, 1])
        XCTAssertNil(try waiting.next(), "exactly 512 KiB announced: waits for the rest")
    }

    func testFrameReaderByteByByteAndSeveralPerChunk() throws {
        let packets: [VICIPacket] = [
            .event(name: "list-sa", message: ["a": ["state": "ESTABLISHED"]]),
            .event(name: "list-sa", message: ["b": ["state": "CONNECTING"]]),
            .commandResponse([:]),
        ]
        let stream = try packets.flatMap { try $0.encode() }
        var reader = VICIFrameReader()
        var seen: [VICIPacket] = []
        for byte in stream {
            reader.append([byte])
            while let packet = try reader.next() { seen.append(packet) }
        }
        XCTAssertEqual(seen, packets)
        XCTAssertEqual(reader.bufferedCount, 0)

        var whole = VICIFrameReader()
        whole.append(stream + [0, 0]) // and half of the next length
        XCTAssertEqual(try whole.next(), packets[0])
        XCTAssertEqual(try whole.next(), packets[1])
        XCTAssertEqual(try whole.next(), packets[2])
        XCTAssertNil(try whole.next())
        XCTAssertEqual(whole.bufferedCount, 2)
    }

    // MARK: - Fuzzing

    /// SplitMix64: deterministic, so a failure reproduces.
    struct Random {
        var state: UInt64
        mutating func next() -> UInt64 {
            state &+= 0x9e37_79b9_7f4a_7c15
            var z = state
            z = (z ^ (z >> 30)) &* 0xbf58_476d_1ce4_e5b9
            z = (z ^ (z >> 27)) &* 0x94d0_49bb_1331_11eb
            return z ^ (z >> 31)
        }
        mutating func below(_ n: Int) -> Int { Int(next() % UInt64(max(n, 1))) }
        mutating func byte() -> UInt8 { UInt8(truncatingIfNeeded: next()) }
    }

    /// A random valid message: sections, lists and values, a few levels deep.
    func randomMessage(_ random: inout Random, depth: Int = 0) -> VICIMessage {
        var message = VICIMessage()
        for i in 0..<random.below(5) {
            let key = "k\(i)" + String(repeating: "x", count: random.below(4))
            switch random.below(depth < 4 ? 3 : 2) {
            case 0: message.append(key, .value((0..<random.below(12)).map { _ in random.byte() }))
            case 1:
                message.append(
                    key, .list((0..<random.below(4)).map { _ in (0..<random.below(6)).map { _ in random.byte() } }))
            default: message.append(key, .section(randomMessage(&random, depth: depth + 1)))
            }
        }
        return message
    }

    /// 20,000 inputs: random bytes biased towards element type values, and valid encodings with bytes flipped,
    /// inserted, removed or cut off. Each either decodes (and then round-trips) or is malformed.
    func testFuzzMessageDecoderNeverCrashes() throws {
        var random = Random(state: 0x5eed_1234)
        var decodedCount = 0
        for round in 0..<20_000 {
            var bytes: [UInt8]
            if round % 2 == 0 {
                bytes = (0..<random.below(48)).map { _ in random.below(3) == 0 ? random.byte() : UInt8(random.below(8))
                }
            } else {
                bytes = try randomMessage(&random).encode()
                for _ in 0..<(1 + random.below(3)) where !bytes.isEmpty {
                    let at = random.below(bytes.count)
                    switch random.below(4) {
                    case 0: bytes[at] = random.byte()
                    case 1: bytes.insert(random.byte(), at: at)
                    case 2: bytes.remove(at: at)
                    default: bytes = Array(bytes[0..<at])
                    }
                }
            }
            do {
                let message = try VICIMessage.decode(bytes)
                decodedCount += 1
                XCTAssertEqual(try VICIMessage.decode(try message.encode()), message, "round \(round)")
            } catch {
                XCTAssertEqual(error.code, .malformed, "round \(round): \(error)")
            }
        }
        XCTAssertGreaterThan(decodedCount, 100, "the fuzzer also reaches valid messages")
    }

    /// Valid messages survive the trip through packets and a frame reader fed in random chunks.
    func testFuzzRandomMessagesThroughFraming() throws {
        var random = Random(state: 42)
        for round in 0..<2_000 {
            let packets = (0..<(1 + random.below(3))).map { i -> VICIPacket in
                i % 2 == 0
                    ? .event(name: "list-sa", message: randomMessage(&random))
                    : .commandResponse(randomMessage(&random))
            }
            var stream = try packets.flatMap { try $0.encode() }
            var reader = VICIFrameReader()
            var seen: [VICIPacket] = []
            while !stream.isEmpty {
                let chunk = min(stream.count, 1 + random.below(16))
                reader.append(stream[0..<chunk])
                stream.removeFirst(chunk)
                while let packet = try reader.next() { seen.append(packet) }
            }
            XCTAssertEqual(seen, packets, "round \(round)")
        }
    }

    /// Random segments: random lengths (some oversized) and random packet bodies. Malformed or a packet, never
    /// a crash or a wait for more than 512 KiB.
    func testFuzzFrameReaderNeverCrashes() {
        var random = Random(state: 7)
        for round in 0..<10_000 {
            var reader = VICIFrameReader()
            let body = (0..<random.below(40)).map { _ in random.below(2) == 0 ? UInt8(random.below(8)) : random.byte() }
            let length = random.below(10) == 0 ? UInt32(truncatingIfNeeded: random.next()) : UInt32(body.count)
            reader.append([
                UInt8(length >> 24), UInt8(length >> 16 & 0xff), UInt8(length >> 8 & 0xff), UInt8(length & 0xff),
            ])
            reader.append(body)
            do {
                _ = try reader.next()
            } catch {
                XCTAssertEqual(error.code, .malformed, "round \(round): \(error)")
            }
        }
    }
}
