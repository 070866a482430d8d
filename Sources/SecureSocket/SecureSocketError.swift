import SystemPackage

/// An error from the secure-socket API. ``code`` is the Windows error the same failure gives on Windows
/// (what `WSAGetLastError()` returns through the C ABI); ``errno`` and ``detail`` keep the Linux cause.
public struct SecureSocketError: Error, Hashable, CustomStringConvertible, Sendable {
    /// Winsock error numbers.
    public struct Code: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
        public var rawValue: Int32
        public init(rawValue: Int32) { self.rawValue = rawValue }

        /// `WSAEINTR` 10004.
        public static let interrupted = Code(rawValue: 10004)
        /// `WSAEACCES` 10013.
        public static let accessDenied = Code(rawValue: 10013)
        /// `WSAEFAULT` 10014: a required pointer is NULL.
        public static let fault = Code(rawValue: 10014)
        /// `WSAEINVAL` 10022.
        public static let invalidArgument = Code(rawValue: 10022)
        /// `WSAEWOULDBLOCK` 10035.
        public static let wouldBlock = Code(rawValue: 10035)
        /// `WSAENOTSOCK` 10038.
        public static let notSocket = Code(rawValue: 10038)
        /// `WSAEMSGSIZE` 10040: a buffer is too small.
        public static let messageSize = Code(rawValue: 10040)
        /// `WSAEOPNOTSUPP` 10045.
        public static let operationNotSupported = Code(rawValue: 10045)
        /// `WSAEAFNOSUPPORT` 10047.
        public static let addressFamilyNotSupported = Code(rawValue: 10047)
        /// `WSAEADDRINUSE` 10048.
        public static let addressInUse = Code(rawValue: 10048)
        /// `WSAENETDOWN` 10050: no keying daemon answers in this network namespace (or it went away).
        public static let networkDown = Code(rawValue: 10050)
        /// `WSAENETUNREACH` 10051.
        public static let networkUnreachable = Code(rawValue: 10051)
        /// `WSAECONNABORTED` 10053.
        public static let connectionAborted = Code(rawValue: 10053)
        /// `WSAECONNRESET` 10054.
        public static let connectionReset = Code(rawValue: 10054)
        /// `WSAEISCONN` 10056.
        public static let isConnected = Code(rawValue: 10056)
        /// `WSAENOTCONN` 10057.
        public static let notConnected = Code(rawValue: 10057)
        /// `WSAETIMEDOUT` 10060.
        public static let timedOut = Code(rawValue: 10060)
        /// `WSAECONNREFUSED` 10061.
        public static let connectionRefused = Code(rawValue: 10061)
        /// `WSAEHOSTUNREACH` 10065.
        public static let hostUnreachable = Code(rawValue: 10065)
        /// `WSANOTINITIALISED` 10093: this process has no engine of its own (it was forked from the one that
        /// made it).
        public static let notInitialised = Code(rawValue: 10093)
        /// `WSASYSCALLFAILURE` 10107.
        public static let systemCallFailure = Code(rawValue: 10107)

        public var description: String {
            let names: [Int32: String] = [
                10004: "WSAEINTR", 10013: "WSAEACCES", 10014: "WSAEFAULT", 10022: "WSAEINVAL", 10035: "WSAEWOULDBLOCK",
                10038: "WSAENOTSOCK", 10040: "WSAEMSGSIZE", 10045: "WSAEOPNOTSUPP", 10047: "WSAEAFNOSUPPORT",
                10048: "WSAEADDRINUSE", 10050: "WSAENETDOWN", 10051: "WSAENETUNREACH", 10053: "WSAECONNABORTED",
                10054: "WSAECONNRESET",
                10056: "WSAEISCONN", 10057: "WSAENOTCONN", 10060: "WSAETIMEDOUT", 10061: "WSAECONNREFUSED",
                10065: "WSAEHOSTUNREACH", 10093: "WSANOTINITIALISED", 10107: "WSASYSCALLFAILURE",
            ]
            return names[rawValue] ?? "WSA error \(rawValue)"
        }

        /// The Winsock error for a Linux errno from a socket call.
        public init(errno: Errno) {
            switch errno {
            case .notSocket, .badFileDescriptor: self = .notSocket
            case .interrupted: self = .interrupted
            case .permissionDenied, .notPermitted: self = .accessDenied
            case .badAddress: self = .fault
            case .resourceTemporarilyUnavailable, .nowInProgress: self = .wouldBlock
            case .messageTooLong: self = .messageSize
            case .notSupported, .protocolNotSupported: self = .operationNotSupported
            case .addressFamilyNotSupported: self = .addressFamilyNotSupported
            case .addressInUse: self = .addressInUse
            case .networkUnreachable: self = .networkUnreachable
            case .connectionAbort: self = .connectionAborted
            case .connectionReset: self = .connectionReset
            case .socketIsConnected: self = .isConnected
            case .socketNotConnected: self = .notConnected
            case .timedOut: self = .timedOut
            case .connectionRefused: self = .connectionRefused
            case .noRouteToHost: self = .hostUnreachable
            default: self = .invalidArgument
            }
        }
    }

    public var code: Code
    /// The Linux errno behind it, when there is one.
    public var errno: Errno?
    /// What was wrong, in words.
    public var detail: String
    /// The error that caused this one (a `KeyingError`, an allocator's or a parser's error), kept as a value so a
    /// caller can inspect it, not only read it.
    public var underlying: (any Error & Sendable)?

    public init(_ code: Code, _ detail: String, errno: Errno? = nil, underlying: (any Error & Sendable)? = nil) {
        self.code = code
        self.detail = detail
        self.errno = errno
        self.underlying = underlying
    }

    public static func == (lhs: Self, rhs: Self) -> Bool { lhs.code == rhs.code }
    public func hash(into hasher: inout Hasher) { hasher.combine(code) }

    public var description: String {
        var text = "\(code) (\(code.rawValue)): \(detail)"
        if let underlying { text += ": \(underlying)" }
        if let errno { text += " [\(errno), errno \(errno.rawValue)]" }
        return text
    }
}
