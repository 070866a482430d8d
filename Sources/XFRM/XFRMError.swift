import SystemPackage

/// An error from the XFRM layer. It keeps everything the kernel said: the errno, the extended-ack text
/// (`NLMSGERR_ATTR_MSG`), and which operation failed.
///
/// Equality looks only at ``code`` so tests can write the expected error themselves.
public struct XFRMError: Error, Hashable, CustomStringConvertible, Sendable {
    /// What kind of failure this is. Extensible: new codes may be added.
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        private enum Kind: Hashable, Sendable {
            case kernelRejected, systemCall, dumpInterrupted, unexpectedSender, sequenceMismatch
            case malformedMessage, timedOut, invalidArgument, eventsLost
        }
        private let kind: Kind
        private init(_ kind: Kind) { self.kind = kind }

        /// The kernel answered a request with a negative `NLMSG_ERROR`.
        public static let kernelRejected = Code(.kernelRejected)
        /// A system call (socket, bind, send, recv, setsockopt, setns) failed.
        public static let systemCall = Code(.systemCall)
        /// A dump was interrupted (`NLM_F_DUMP_INTR`) more often than the retry bound allows.
        public static let dumpInterrupted = Code(.dumpInterrupted)
        /// A reply came from a port that is not the kernel's.
        public static let unexpectedSender = Code(.unexpectedSender)
        /// A reply carried a sequence number we did not send.
        public static let sequenceMismatch = Code(.sequenceMismatch)
        /// A message or attribute is truncated, oversized or otherwise not what the kernel's structs say.
        public static let malformedMessage = Code(.malformedMessage)
        /// No complete answer arrived within the receive bound.
        public static let timedOut = Code(.timedOut)
        /// The caller's value cannot be encoded (too many templates, name too long, ...).
        public static let invalidArgument = Code(.invalidArgument)
        /// The kernel dropped multicast events because the monitor fell behind (`ENOBUFS`).
        public static let eventsLost = Code(.eventsLost)

        public var description: String { "\(kind)" }
    }

    public var code: Code
    /// The errno the kernel or the C library reported, never dropped.
    public var errno: Errno?
    /// The kernel's extended-ack message, e.g. "Requested AEAD algorithm not found".
    public var kernelMessage: String?
    /// The operation, in `ip xfrm` words where there is one (`state add`, `policy list`, `setsockopt IP_XFRM_POLICY`).
    public var operation: String
    /// More detail for malformed messages and invalid arguments.
    public var detail: String?

    public init(
        _ code: Code, operation: String, errno: Errno? = nil, kernelMessage: String? = nil,
        detail: String? = nil
    ) {
        self.code = code
        self.operation = operation
        self.errno = errno
        self.kernelMessage = kernelMessage
        self.detail = detail
    }

    public static func == (lhs: XFRMError, rhs: XFRMError) -> Bool { lhs.code == rhs.code }
    public func hash(into hasher: inout Hasher) { hasher.combine(code) }

    public var description: String {
        var text = "\(operation): \(code)"
        if let errno { text += ": \(errno) (errno \(errno.rawValue))" }
        if let kernelMessage { text += ": kernel says \"\(kernelMessage)\"" }
        if let detail { text += ": \(detail)" }
        return text
    }

    @inline(never)
    static func malformed(_ operation: String, _ detail: String) -> XFRMError {
        XFRMError(.malformedMessage, operation: operation, detail: detail)
    }

    @inline(never)
    static func invalid(_ operation: String, _ detail: String) -> XFRMError {
        XFRMError(.invalidArgument, operation: operation, detail: detail)
    }

    @inline(never)
    static func syscall(_ operation: String, _ call: String, errno: Errno) -> XFRMError {
        XFRMError(.systemCall, operation: operation, errno: errno, detail: call)
    }
}
