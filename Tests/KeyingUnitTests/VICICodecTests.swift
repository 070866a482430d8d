import XCTest

@testable import Keying
@testable import VICI

/// Tier 1: the VICI message encoding, byte for byte against strongSwan's protocol description
/// (`src/libcharon/plugins/vici/README.md`), round trips, and every malformed-input case.
final class VICICodecTests: XCTestCase {
    func ascii(_ text: String) -> [UInt8] { Array(text.utf8) }

    func assertMalformed(_ bytes: [UInt8], _ message: String, file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertThrowsError(try VICIMessage.decode(bytes), message, file: file, line: line) {
            XCTAssertEqual(($0 as? VICIError)?.code, .malformed, "\($0)", file: file, line: line)
        }
    }

    /// The README's "Encoding example", transcribed from its C array.
    let readmeBytes: [UInt8] = {
        func a(_ s: String) -> [UInt8] { Array(s.utf8) }
        return [3, 4] + a("key1") + [0, 6] + a("value1")
            + [1, 8] + a("section1")
            + [1, 11] + a("sub-section")
            + [3, 4] + a("key2") + [0, 6] + a("value2")
            + [2]
            + [4, 5] + a("list1")
            + [5, 0, 5] + a("item1")
            + [5, 0, 5] + a("item2")
            + [6]
            + [2]
    }()

    let readmeMessage: VICIMessage = [
        "key1": "value1",
        "section1": [
            "sub-section": ["key2": "value2"],
            "list1": ["item1", "item2"],
        ],
    ]

    func testReadmeExampleEncodesByteForByte() throws {
        XCTAssertEqual(try readmeMessage.encode(), readmeBytes)
    }

    func testReadmeExampleDecodes() throws {
        let decoded = try VICIMessage.decode(readmeBytes)
        XCTAssertEqual(decoded, readmeMessage)
        XCTAssertEqual(decoded.string("key1"), "value1")
        XCTAssertEqual(decoded.section("section1")?.section("sub-section")?.string("key2"), "value2")
        XCTAssertEqual(decoded.section("section1")?.list("list1"), ["item1", "item2"])
        XCTAssertEqual(decoded.section("section1")?.keys, ["sub-section", "list1"], "order kept")
    }

    func testSmallElementsByteForByte() throws {
        // KEY_VALUE with an empty value: type, name length, name, 16-bit zero length.
        XCTAssertEqual(try (["k": .value([])] as VICIMessage).encode(), [3, 1, 0x6b, 0, 0])
        // An empty section and an empty list.
        XCTAssertEqual(try (["s": [:]] as VICIMessage).encode(), [1, 1, 0x73, 2])
        XCTAssertEqual(try (["l": .list([])] as VICIMessage).encode(), [4, 1, 0x6c, 6])
        // A list item with an empty value.
        XCTAssertEqual(try (["l": .list([[]])] as VICIMessage).encode(), [4, 1, 0x6c, 5, 0, 0, 6])
        // A 300-byte value: length 0x012c big-endian.
        let long = [UInt8](repeating: 0xab, count: 300)
        XCTAssertEqual(try (["v": .value(long)] as VICIMessage).encode(), [3, 1, 0x76, 0x01, 0x2c] + long)
        // Integers and booleans are decimal text and yes/no, as charon's settings parser reads them.
        XCTAssertEqual(
            try (["reqid": 200, "policies": false] as VICIMessage).encode(),
            [3, 5] + ascii("reqid") + [0, 3] + ascii("200") + [3, 8] + ascii("policies") + [0, 2] + ascii("no"))
        XCTAssertEqual(try VICIMessage().encode(), [])
        XCTAssertEqual(try VICIMessage.decode([UInt8]()), VICIMessage())
    }

    func testRoundTripNestedListsEmptyAndBinaryValues() throws {
        let binary = (0...255).map { UInt8($0) }
        var message: VICIMessage = [
            "empty": .value([]),
            "binary": .value(binary),
            "emptylist": .list([]),
            "mixed": .list([[], binary, ascii("x")]),
            "conn": [
                "local": ["auth": "psk", "id": "a.lab.test"],
                "children": ["sock": ["mode": "transport", "local_ts": ["dynamic[tcp/5001]"]]],
                "emptysection": [:],
            ],
            "ünïcode-näme": "välue",
        ]
        message.append("dup", "1")
        message.append("dup", "2")
        message["max-value"] = .value([UInt8](repeating: 7, count: VICIMessage.maximumValueLength))
        message[String(repeating: "n", count: VICIMessage.maximumNameLength)] = "longest name"
        let decoded = try VICIMessage.decode(try message.encode())
        XCTAssertEqual(decoded, message)
        XCTAssertEqual(decoded.bytes("binary"), binary)
        XCTAssertEqual(decoded["mixed"], .list([[], binary, ascii("x")]))
        XCTAssertEqual(decoded.entries.filter { $0.key == "dup" }.count, 2, "duplicates kept on decode")
    }

    func testDeepNestingRoundTripsUpToTheBound() throws {
        func nested(_ depth: Int) -> VICIMessage {
            var message: VICIMessage = ["leaf": "x"]
            for _ in 0..<depth { message = ["s": .section(message)] }
            return message
        }
        let deepest = nested(VICIMessage.maximumDepth)
        XCTAssertEqual(try VICIMessage.decode(try deepest.encode()), deepest)
        XCTAssertThrowsError(try nested(VICIMessage.maximumDepth + 1).encode()) {
            XCTAssertEqual(($0 as? VICIError)?.code, .invalidArgument)
        }
        let tooDeep =
            Array(repeating: [UInt8(1), 1, 0x73], count: VICIMessage.maximumDepth + 1).flatMap { $0 }
            + Array(repeating: UInt8(2), count: VICIMessage.maximumDepth + 1)
        assertMalformed(tooDeep, "65 nested sections")
        // Deep nesting of unbalanced input must not recurse or crash either.
        assertMalformed(Array(repeating: [UInt8(1), 0], count: 100_000).flatMap { $0 }, "100,000 open sections")
    }

    func testEncodingRejectsWhatTheFormatCannotCarry() {
        let longName = String(repeating: "a", count: 256)
        XCTAssertThrowsError(try ([longName: "v"] as VICIMessage).encode()) {
            XCTAssertEqual(($0 as? VICIError)?.code, .invalidArgument)
        }
        XCTAssertThrowsError(try (["v": .value([UInt8](repeating: 0, count: 65_536))] as VICIMessage).encode()) {
            XCTAssertEqual(($0 as? VICIError)?.code, .invalidArgument)
        }
        XCTAssertThrowsError(try (["l": .list([[UInt8](repeating: 0, count: 65_536)])] as VICIMessage).encode()) {
            XCTAssertEqual(($0 as? VICIError)?.code, .invalidArgument)
        }
    }

    func testMalformedElementStreams() {
        assertMalformed([0], "element type 0")
        assertMalformed([7, 1, 0x61], "element type 7")
        assertMalformed([255], "element type 255")
        assertMalformed([2], "SECTION_END at the root")
        assertMalformed([6], "LIST_END without a list")
        assertMalformed([5, 0, 0], "LIST_ITEM outside a list")
        assertMalformed([4, 1, 0x6c, 3, 1, 0x6b, 0, 0, 6], "KEY_VALUE inside a list")
        assertMalformed([4, 1, 0x6c, 1, 1, 0x73, 2, 6], "SECTION_START inside a list")
        assertMalformed([4, 1, 0x6c, 4, 1, 0x6d, 6, 6], "nested list")
        assertMalformed([4, 1, 0x6c, 2], "SECTION_END inside a list")
        assertMalformed([1, 1, 0x73], "unclosed section")
        assertMalformed([1, 1, 0x73, 1, 1, 0x74, 2], "one of two sections unclosed")
        assertMalformed([4, 1, 0x6c, 5, 0, 0], "unclosed list")
        assertMalformed([1, 1, 0x73, 4, 1, 0x6c, 2], "section closed while its list is open")
        assertMalformed([3], "KEY_VALUE without a name length")
        assertMalformed([3, 5, 0x6b], "name runs past the end")
        assertMalformed([3, 1, 0x6b], "no value length")
        assertMalformed([3, 1, 0x6b, 0], "half a value length")
        assertMalformed([3, 1, 0x6b, 0, 5, 0x61], "value runs past the end")
        assertMalformed([3, 1, 0x6b, 0xff, 0xff], "value of 65,535 bytes, none present")
        assertMalformed([4, 1, 0x6c, 5, 0, 9, 1, 6], "list item runs past the end")
        assertMalformed([1, 2, 0xc3, 0x28, 2], "name that is not UTF-8")
        assertMalformed([1], "SECTION_START without a name length")
        assertMalformed([4], "LIST_START without a name length")
    }

    /// Every prefix of a valid message either decodes to a message that re-encodes to exactly that prefix
    /// (it ends on a root-level element boundary) or is malformed.
    func testEveryTruncationIsMalformedOrAValidPrefix() throws {
        for length in 0..<readmeBytes.count {
            let prefix = Array(readmeBytes[0..<length])
            do {
                let decoded = try VICIMessage.decode(prefix)
                XCTAssertEqual(try decoded.encode(), prefix, "prefix \(length)")
            } catch {
                XCTAssertEqual(error.code, .malformed, "prefix \(length): \(error)")
            }
        }
    }

    func testDecodingASliceUsesItsOwnIndices() throws {
        let padded = [0xee, 0xee] + readmeBytes + [0xee]
        XCTAssertEqual(try VICIMessage.decode(padded[2..<(padded.count - 1)]), readmeMessage)
    }

    func testErrorsSayWhereDecodingStopped() {
        XCTAssertThrowsError(try VICIMessage.decode([3, 1, 0x6b, 0, 5, 0x61])) {
            let error = $0 as? VICIError
            XCTAssertEqual(error?.command, "decode")
            XCTAssertTrue(error?.detail?.contains("offset 5") ?? false, "\(String(describing: error))")
        }
    }
}
