import Glibc
import Logging

/// Where the library's decisions are logged. Swift callers hand their own `Logger` to
/// ``SecureSocketEngine/Configuration`` (and to `StrongSwanBackend`); the process-wide engine of the Windows
/// functions (C callers) reads `WSS_LOG`:
///
/// - `WSS_LOG=LEVEL` or `WSS_LOG=LEVEL,DESTINATION`; `LEVEL` is one of swift-log's levels (`trace`, `debug`,
///   `info`, `notice`, `warning`, `error`, `critical`) or `off`; `DESTINATION` is `stderr` or `syslog`
///   (facility `LOG_AUTHPRIV`: these are access decisions).
/// - Unset: `notice,syslog` — refusals, fallbacks to clear text, restarts of charon or of the event monitor.
///   `info` adds every secured connection and every impersonation; `debug` every socket and release.
///
/// Each decision is one line with metadata: the socket (`fd`, `cookie`), its `reqid`, the `peer` address, the
/// `peer-identity` charon authenticated, the SA pair (`spi-in`, `spi-out`, `ike-sa`), the `reason` of a refusal
/// and, for impersonation, the local `account`. Nothing secret is ever logged (no key, no password).
public enum SecureSocketLogging {
    public enum Destination: String, Sendable { case stderr, syslog }

    /// The level and destination `value` names; nil for text that is not a setting (the default then applies).
    public static func parse(_ value: String) -> (level: Logger.Level?, destination: Destination)? {
        let parts = value.lowercased().split(separator: ",", omittingEmptySubsequences: false)
            .map { String($0).trimmingWhitespace() }
        guard (1...2).contains(parts.count) else { return nil }
        let level: Logger.Level?
        if parts[0] == "off" {
            level = nil
        } else if let parsed = Logger.Level(rawValue: parts[0]) {
            level = parsed
        } else {
            return nil
        }
        guard parts.count == 2 else { return (level, .stderr) }
        guard let destination = Destination(rawValue: parts[1]) else { return nil }
        return (level, destination)
    }

    /// The logger `WSS_LOG` asks for (see above), labelled `label`.
    public static func logger(
        label: String, environment value: String? = Glibc.getenv("WSS_LOG").map { String(cString: $0) }
    )
        -> Logger
    {
        let (level, destination) = value.flatMap(parse) ?? (.notice, .syslog)
        guard let level else { return Logger(label: label, factory: { _ in SwiftLogNoOpLogHandler() }) }
        var logger = Logger(
            label: label,
            factory: { label in
                destination == .syslog
                    ? SyslogLogHandler(label: label) as any LogHandler
                    : StreamLogHandler.standardError(label: label) as any LogHandler
            })
        logger.logLevel = level
        return logger
    }
}

/// A swift-log handler writing to syslog(3): one line per message, metadata as `key=value`, the label as the
/// syslog identity's prefix.
public struct SyslogLogHandler: LogHandler {
    public var metadata: Logger.Metadata = [:]
    public var logLevel: Logger.Level = .info
    public let label: String

    public init(label: String) { self.label = label }

    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    public func log(event: LogEvent) {
        let merged = metadata.merging(event.metadata ?? [:]) { _, new in new }
        let fields = merged.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: " ")
        let line = "\(label): \(event.message)" + (fields.isEmpty ? "" : " \(fields)")
        let priority = Self.priority(event.level) | LOG_AUTHPRIV
        withVaList([line]) { vsyslog(priority, "%s", $0) }
    }

    static func priority(_ level: Logger.Level) -> Int32 {
        switch level {
        case .trace, .debug: LOG_DEBUG
        case .info: LOG_INFO
        case .notice: LOG_NOTICE
        case .warning: LOG_WARNING
        case .error: LOG_ERR
        case .critical: LOG_CRIT
        }
    }
}
