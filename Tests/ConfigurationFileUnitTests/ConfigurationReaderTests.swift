import ConfigurationFile
import XCTest

/// The line syntax the keying file, the static keys file and the identity map share.
final class ConfigurationReaderTests: XCTestCase {
    func lines(_ text: String) -> [ConfigurationLine] {
        ConfigurationReader.lines(text).compactMap { try? $0.get() }
    }

    func issues(_ text: String) -> [ConfigurationIssue] {
        ConfigurationReader.lines(text).compactMap {
            if case .failure(let issue) = $0 { return issue } else { return nil }
        }
    }

    func testBlankAndCommentLinesAreLeftOutAndNumbersCountEveryLine() {
        let read = lines("# header\n\n  first a b  # trailing\n\t\nsecond \"quoted # not a comment\"\n")
        XCTAssertEqual(read.map(\.number), [3, 5])
        XCTAssertEqual(read[0].tokens.map(\.text), ["first", "a", "b"])
        XCTAssertEqual(read[1].tokens.map(\.text), ["second", "quoted # not a comment"])
        XCTAssertEqual(read[1].tokens.map(\.quoted), [false, true])
        XCTAssertEqual(ConfigurationReader.lineCount("a\nb\r\nc"), 3)
    }

    func testCRLFEndsALineAsLFDoes() {
        let read = lines("one 1\r\ntwo 2\r\n\r\nthree 3")
        XCTAssertEqual(read.map(\.number), [1, 2, 4])
        XCTAssertEqual(read.map { $0.tokens.last?.text }, ["1", "2", "3"], "no CR is left in a token")
    }

    func testQuotesEscapesAndDNBackslashes() {
        let read = lines(#"k "a \"b\" c" "x\\y" "CN=a\, b""#)
        XCTAssertEqual(read[0].tokens.map(\.text), ["k", #"a "b" c"#, #"x\y"#, #"CN=a\, b"#])
    }

    func testValueAfterANameRunsToTheCommentOrIsTheOneQuotedToken() {
        let read = lines(
            "identity C=CH, O=strongSwan, CN=moon   # the host\npsk \"two words\"\nempty\nsecret a \"b c\"")
        XCTAssertEqual(read[0].value(after: 0), "C=CH, O=strongSwan, CN=moon")
        XCTAssertEqual(read[1].value(after: 0), "two words")
        XCTAssertEqual(read[2].value(after: 0), "")
        XCTAssertEqual(read[3].value(after: 0), "a \"b c\"", "several tokens: the text as written")
        XCTAssertEqual(read[3].value(after: 1), "b c")
    }

    func testEachBrokenLineIsReportedWithItsNumberAndTheOthersAreStillRead() {
        let text = [
            "good 1", "bad \"unterminated", "bad a\"b", "bad \"x\"y", "bad a\u{7}b",
            String(repeating: "x", count: 5000), "good 2",
        ].joined(separator: "\n")
        let found = issues(text)
        XCTAssertEqual(found.map(\.line), [2, 3, 4, 5, 6])
        XCTAssertTrue(found[0].message.contains("unterminated quote"), found[0].message)
        XCTAssertTrue(found[1].message.contains("quote may only open a token"), found[1].message)
        XCTAssertTrue(found[2].message.contains("closing quote"), found[2].message)
        XCTAssertTrue(found[3].message.contains("control character"), found[3].message)
        XCTAssertTrue(found[4].message.contains("longer than 4096"), found[4].message)
        XCTAssertEqual(lines(text).map(\.number), [1, 7])
    }

    func testAnErrorListsItsIssuesInOrderAndKeepsItsReason() {
        enum Rule: Hashable, Sendable { case conflict }
        let one = ConfigurationError<Rule>(line: 3, message: "two keys", reason: .conflict)
        XCTAssertEqual(one.line, 3)
        XCTAssertEqual(one.reason, .conflict)
        XCTAssertEqual(one.description, "line 3: two keys")
        let whole = ConfigurationError<Never>(line: 0, message: "`identity` is required")
        XCTAssertEqual(whole.description, "`identity` is required", "a problem of the whole file names no line")
        let many = ConfigurationError<Never>(issues: [.init(line: 1, message: "a"), .init(line: 4, message: "b")])
        XCTAssertEqual(many.description, "line 1: a; line 4: b")
    }
}
