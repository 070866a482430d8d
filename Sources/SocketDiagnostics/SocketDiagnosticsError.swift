import SystemPackage

/// An error from the socket diagnostics layer: what failed (``operation``), the errno the kernel or the C library
/// reported, and detail for malformed messages.
///
/// Equality looks only at ``code`` so tests can write the expected error themselves.
public struct SocketDiagnosticsError: Error, Hashable, CustomStringConvertible, Sendable {
    /// What kind of failure this is. Extensible: new codes may be added.
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        private enum Kind: Hashable, Sendable {
            case kernelRejected, systemCall, malformedMessage, timedOut, invalidArgument
        }
        private let kind: Kind
        private init(_ kind: Kind) { self.kind = kind }

        /// The kernel answered a request with a negative `NLMSG_ERROR` or `NLMSG_DONE` status.
        public static let kernelRejected = Code(.kernelRejected)
        /// A system call (socket, bind, send, recv, poll, setns) failed.
        public static let systemCall = Code(.systemCall)
        /// A message is truncated, oversized or otherwise not what `<linux/inet_diag.h>` says.
        public static let malformedMessage = Code(.malformedMessage)
        /// No complete answer arrived within the receive bound.
        public static let timedOut = Code(.timedOut)
        /// The caller's value cannot be asked for (an address family other than IPv4 and IPv6).
        public static let invalidArgument = Code(.invalidArgument)

        public var description: String { "\(kind)" }
    }

    public var code: Code
    /// The errno the kernel or the C library reported, never dropped.
    public var errno: Errno?
    /// The operation, in `ss` words where there is one (`dump tcp inet`, `lookup udp inet6`, `destroy monitor`).
    public var operation: String
    /// More detail: the system call, what was malformed, what to do about it.
    public var detail: String?

    public init(_ code: Code, operation: String, errno: Errno? = nil, detail: String? = nil) {
        self.code = code
        self.operation = operation
        self.errno = errno
        self.detail = detail
    }

    public static func == (lhs: SocketDiagnosticsError, rhs: SocketDiagnosticsError) -> Bool { lhs.code == rhs.code }
    public func hash(into hasher: inout Hasher) { hasher.combine(code) }

    public var description: String {
        var text = "\(operation): \(code)"
        if let errno { text += ": \(errno) (errno \(errno.rawValue))" }
        if let detail { text += ": \(detail)" }
        return text
    }

    @inline(never)
    static func malformed(_ operation: String, _ detail: String) -> SocketDiagnosticsError {
        SocketDiagnosticsError(.malformedMessage, operation: operation, detail: detail)
    }

    @inline(never)
    static func syscall(_ operation: String, _ call: String, errno: Errno) -> SocketDiagnosticsError {
        SocketDiagnosticsError(.systemCall, operation: operation, errno: errno, detail: call)
    }
}
