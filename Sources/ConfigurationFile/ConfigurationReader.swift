/// The line syntax the library's three files share (the keying file, the static keys file and the identity map):
///
/// - Lines end with `LF` or `CR LF`; `#` outside quotes starts a comment that runs to the end of the line.
/// - Tokens are separated by spaces or tabs. `"` opens a quoted token, which may hold spaces and `#`; inside it,
///   `\"` and `\\` are escapes and any other backslash is kept as it is (for DN escapes like `\,`). A closing quote
///   must be followed by a space, a tab, a comment or the end of the line; a quote inside an unquoted token is an
///   error (quote the whole token).
/// - Control characters are refused outside quotes.
///
/// Each format gives the tokens their meaning; every problem is reported with its line number
/// (``ConfigurationIssue``, ``ConfigurationError``).
public enum ConfigurationReader {
    /// The lines of `text` that hold tokens, or the problem of each line that could not be split. Blank lines and
    /// comment lines are left out; line numbers count every line, from 1. A line longer than
    /// `maximumLineBytes` is a problem and is not split.
    public static func lines(_ text: String, maximumLineBytes: Int = 4096)
        -> [Result<ConfigurationLine, ConfigurationIssue>]
    {
        var result: [Result<ConfigurationLine, ConfigurationIssue>] = []
        // Split on the Characters "\n" and "\r\n" (Swift reads CR LF as ONE Character, never equal to "\n").
        // Bounded by the text's length.
        let rawLines = text.split(omittingEmptySubsequences: false, whereSeparator: { $0 == "\n" || $0 == "\r\n" })
        for (index, rawLine) in rawLines.enumerated() {
            let number = index + 1
            guard rawLine.utf8.count <= maximumLineBytes else {
                result.append(
                    .failure(ConfigurationIssue(line: number, message: "line longer than \(maximumLineBytes) bytes")))
                continue
            }
            switch ConfigurationLine.split(rawLine, number: number) {
            case .success(let line) where line.tokens.isEmpty: continue
            case .success(let line): result.append(.success(line))
            case .failure(let issue): result.append(.failure(issue))
            }
        }
        return result
    }

    /// How many lines `text` has, as ``lines(_:maximumLineBytes:)`` numbers them.
    public static func lineCount(_ text: String) -> Int {
        text.reduce(into: 1) { count, character in if character == "\n" || character == "\r\n" { count += 1 } }
    }
}

/// One token of a line: its text (quotes and escapes removed) and whether it was quoted.
public struct ConfigurationToken: Hashable, Sendable, CustomStringConvertible {
    public var text: String
    public var quoted: Bool
    /// Where the token ends in its line (an offset in Unicode scalars), for values that run to the end of the line.
    let end: Int

    public var description: String { quoted ? "\"\(text)\"" : text }
}

/// A line that holds tokens.
public struct ConfigurationLine: Hashable, Sendable {
    /// 1-based.
    public let number: Int
    public let tokens: [ConfigurationToken]
    /// The line without its comment, in Unicode scalars.
    private let content: [Unicode.Scalar]

    /// The value of a `NAME VALUE` setting whose value may hold spaces unquoted (a distinguished name): the text
    /// after token `index` to the comment or the end of the line, trimmed, or the text of the one quoted token
    /// that follows it. Empty when nothing follows.
    public func value(after index: Int) -> String {
        guard index + 1 < tokens.count else { return "" }
        if tokens.count == index + 2, tokens[index + 1].quoted { return tokens[index + 1].text }
        var view = String.UnicodeScalarView()
        view.append(contentsOf: content[tokens[index].end...])
        return String(view).trimmingSpacesAndTabs()
    }

    static func split(_ line: Substring, number: Int) -> Result<ConfigurationLine, ConfigurationIssue> {
        func problem(_ message: String) -> Result<ConfigurationLine, ConfigurationIssue> {
            .failure(ConfigurationIssue(line: number, message: message))
        }
        let scalars = Array(line.unicodeScalars)
        var tokens: [ConfigurationToken] = []
        var index = 0
        var contentEnd = scalars.count
        // Bounded: every iteration consumes at least one scalar.
        while index < scalars.count {
            let scalar = scalars[index]
            if scalar == " " || scalar == "\t" {
                index += 1
                continue
            }
            if scalar == "#" {
                contentEnd = index
                break
            }
            if scalar == "\"" {
                var text = String.UnicodeScalarView()
                index += 1
                var closed = false
                while index < scalars.count {
                    let current = scalars[index]
                    if current == "\\", index + 1 < scalars.count,
                        scalars[index + 1] == "\"" || scalars[index + 1] == "\\"
                    {
                        text.append(scalars[index + 1])
                        index += 2
                        continue
                    }
                    index += 1
                    if current == "\"" {
                        closed = true
                        break
                    }
                    text.append(current)
                }
                guard closed else { return problem("unterminated quote") }
                if index < scalars.count, scalars[index] != " ", scalars[index] != "\t", scalars[index] != "#" {
                    return problem("a closing quote must be followed by a space")
                }
                tokens.append(ConfigurationToken(text: String(text), quoted: true, end: index))
                continue
            }
            var text = String.UnicodeScalarView()
            while index < scalars.count, scalars[index] != " ", scalars[index] != "\t", scalars[index] != "#" {
                if scalars[index] == "\"" { return problem("a quote may only open a token (quote the whole token)") }
                if scalars[index].properties.generalCategory == .control {
                    return problem("control character in the line")
                }
                text.append(scalars[index])
                index += 1
            }
            tokens.append(ConfigurationToken(text: String(text), quoted: false, end: index))
        }
        return .success(ConfigurationLine(number: number, tokens: tokens, content: Array(scalars[..<contentEnd])))
    }
}

extension String {
    fileprivate func trimmingSpacesAndTabs() -> String {
        let scalars = unicodeScalars
        guard let first = scalars.firstIndex(where: { $0 != " " && $0 != "\t" }),
            let last = scalars.lastIndex(where: { $0 != " " && $0 != "\t" })
        else { return "" }
        return String(scalars[first...last])
    }
}
