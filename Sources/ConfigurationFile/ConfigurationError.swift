/// One problem in a configuration file, at a line.
public struct ConfigurationIssue: Error, Hashable, Sendable, CustomStringConvertible {
    /// 1-based line number; 0 for a problem of the whole file (a missing setting, two that conflict).
    public var line: Int
    public var message: String

    public init(line: Int, message: String) {
        self.line = line
        self.message = message
    }

    public var description: String { line > 0 ? "line \(line): \(message)" : message }
}

/// A configuration file the library refused: every problem found, each with its line, and, where the format
/// names them, the rule that was broken (`Reason`; `Never` for formats without such rules). A file refused as a
/// whole before its lines were read (its owner, its mode, not a regular file: ``ProtectedFile``) has ``file`` set
/// and one issue at line 0 that says it.
public struct ConfigurationError<Reason: Hashable & Sendable>: Error, Hashable, Sendable, CustomStringConvertible {
    /// The problems, in line order; never empty.
    public var issues: [ConfigurationIssue]
    /// The rule the first problem broke, when the format names it; nil for a syntax error and a refused file.
    public var reason: Reason?
    /// Why the file itself was refused before any line was read; nil for a problem in its lines.
    public var file: ProtectedFileError?

    public init(issues: [ConfigurationIssue], reason: Reason? = nil) {
        precondition(!issues.isEmpty, "a configuration error has at least one issue")
        self.issues = issues
        self.reason = reason
    }

    public init(line: Int, message: String, reason: Reason? = nil) {
        self.init(issues: [ConfigurationIssue(line: line, message: message)], reason: reason)
    }

    public init(_ issue: ConfigurationIssue) { self.init(issues: [issue]) }

    /// The file refused as a whole: one issue at line 0, `path: rule` (``ProtectedFileError/description``).
    public init(file: ProtectedFileError) {
        self.init(issues: [ConfigurationIssue(line: 0, message: file.description)])
        self.file = file
    }

    /// The first problem's line (0: the whole file).
    public var line: Int { issues[0].line }
    /// The first problem's message.
    public var message: String { issues[0].message }

    public var description: String { issues.map(\.description).joined(separator: "; ") }
}
