import SystemPackage

/// An error from the VICI layer or the charon supervisor. It keeps everything that was said: the errno of a
/// failed system call, charon's `errmsg` for a refused command, the command or event involved, and detail.
///
/// Equality looks only at ``code`` so tests can write the expected error themselves.
public struct VICIError: Error, Hashable, CustomStringConvertible, Sendable {
    /// What kind of failure this is. Extensible: new codes may be added.
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        private enum Kind: Hashable, Sendable {
            case malformed, io, timedOut, unknownCommand, unknownEvent, commandFailed, daemonUnavailable
            case invalidArgument
        }
        private let kind: Kind
        private init(_ kind: Kind) { self.kind = kind }

        /// Bytes that do not follow the VICI packet or message encoding (truncated, unbalanced, too deep,
        /// oversized), or a packet type that is not allowed at this point of the exchange.
        public static let malformed = Code(.malformed)
        /// A system call on the socket or for the daemon process failed (see ``VICIError/errno``), or the
        /// peer closed the connection in the middle of an exchange.
        public static let io = Code(.io)
        /// No complete answer arrived before the deadline. The connection is closed afterwards, because a late
        /// answer would otherwise be taken for the next command's.
        public static let timedOut = Code(.timedOut)
        /// charon answered `CMD_UNKNOWN`: it has no handler for the command (a plugin missing or too old).
        public static let unknownCommand = Code(.unknownCommand)
        /// charon answered `EVENT_UNKNOWN` to a registration: no such event source.
        public static let unknownEvent = Code(.unknownEvent)
        /// charon answered with `success = no`; ``VICIError/errmsg`` holds its reason.
        public static let commandFailed = Code(.commandFailed)
        /// Nobody answers on the socket (missing, refused), or the private charon exited or never became ready.
        public static let daemonUnavailable = Code(.daemonUnavailable)
        /// The caller's value cannot be encoded (a name longer than 255 bytes, a value longer than 65,535 bytes,
        /// a packet over 512 KiB, a socket path too long for `sockaddr_un`).
        public static let invalidArgument = Code(.invalidArgument)

        public var description: String { "\(kind)" }
    }

    public var code: Code
    /// The command, event or step that failed (`load-conn`, `register ike-updown`, `decode`, `start charon`).
    public var command: String
    /// The errno a system call reported, never dropped.
    public var errno: Errno?
    /// charon's own reason from the response's `errmsg` key, e.g. "unsupported proposal".
    public var errmsg: String?
    /// More detail: where decoding stopped, the tail of charon's log, the last `control-log` lines.
    public var detail: String?
    /// The whole response for ``Code/commandFailed``, for keys beyond `errmsg`.
    public var response: VICIMessage?
    /// The `control-log` lines a failed `initiate` or `terminate` streamed (the first 10,000). Which of them give
    /// charon's reason is charon's wording, read by the keying layer; the description shows the last four.
    public var controlLog: [ControlLog] = []

    public init(
        _ code: Code, command: String, errno: Errno? = nil, errmsg: String? = nil, detail: String? = nil,
        response: VICIMessage? = nil
    ) {
        self.code = code
        self.command = command
        self.errno = errno
        self.errmsg = errmsg
        self.detail = detail
        self.response = response
    }

    public static func == (lhs: VICIError, rhs: VICIError) -> Bool { lhs.code == rhs.code }
    public func hash(into hasher: inout Hasher) { hasher.combine(code) }

    public var description: String {
        var text = "\(command): \(code)"
        if let errno { text += ": \(errno) (errno \(errno.rawValue))" }
        if let errmsg { text += ": charon says \"\(errmsg)\"" }
        if let detail { text += ": \(detail)" }
        if !controlLog.isEmpty {
            text += ": control-log: " + controlLog.suffix(4).map(\.description).joined(separator: " | ")
        }
        return text
    }

    @inline(never)
    static func malformed(_ command: String, _ detail: String) -> VICIError {
        VICIError(.malformed, command: command, detail: detail)
    }

    @inline(never)
    public static func invalid(_ command: String, _ detail: String) -> VICIError {
        VICIError(.invalidArgument, command: command, detail: detail)
    }

    @inline(never)
    public static func syscall(_ command: String, _ call: String, errno: Errno) -> VICIError {
        VICIError(.io, command: command, errno: errno, detail: call)
    }
}
