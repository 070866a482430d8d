import CNetlink
import Glibc
import Synchronization
import SystemPackage
import SystemSupport

/// A NETLINK_XFRM client bound to one network namespace: the `ip xfrm state` and `ip xfrm policy` verbs.
///
/// The socket is opened inside the namespace when the client is created (on a dedicated thread), so the
/// client can be used from any thread or task afterwards. Requests are serialised on one socket.
///
/// Every reply is checked: it must come from the kernel, carry our sequence number and our port id.
/// Receives are bounded in time (``receiveTimeout`` per datagram, ``requestDeadline`` per request) and
/// dumps interrupted by concurrent changes (`NLM_F_DUMP_INTR`) are retried at most ``dumpRetries`` times.
public final class XFRMClient: Sendable {
    /// The namespace this client's socket lives in.
    public let namespace: NetworkNamespace
    /// How many times an interrupted dump is restarted before ``XFRMError/Code/dumpInterrupted`` is thrown.
    public static let dumpRetries = 5
    /// Longest wait for one datagram.
    public static let receiveTimeout: Duration = .seconds(2)
    /// Longest time one request (including a whole dump) may take.
    public static let requestDeadline: Duration = .seconds(120)
    /// Largest batch sent in one `sendto` (kept well under the default socket send buffer).
    static let batchBytes = 60 * 1024
    /// Most requests in one batch: each ack costs about 1 KiB of the receive buffer (skb truesize), and an
    /// overrun loses acks (`ENOBUFS`), after which nobody can tell which requests were applied.
    static let batchMessages = 128

    private let socket: Mutex<NetlinkSocket>

    /// Opens a client in `namespace`.
    public init(namespace: NetworkNamespace = .current) throws(XFRMError) {
        self.namespace = namespace
        let socket = try NetlinkSocket(
            namespace: namespace, receiveTimeout: Self.receiveTimeout,
            receiveBufferBytes: 1 << 20, operation: "open xfrm client")
        self.socket = Mutex(socket)
    }

    // MARK: Request engine

    /// Sends one request with `NLM_F_ACK` and collects the data messages that precede the ack.
    func request(_ builder: NetlinkMessageBuilder, operation: String) throws(XFRMError) -> [NetlinkMessage] {
        try socket.withLock { (socket) throws(XFRMError) -> [NetlinkMessage] in
            var builder = builder
            let sequence = socket.allocateSequence()
            builder.setSequence(sequence)
            try socket.send(builder.finished(), operation: operation)
            var replies: [NetlinkMessage] = []
            var acknowledged = false
            try Self.receiveUntil(socket, operation: operation) { (message) throws(XFRMError) -> Bool in
                try Self.check(message, sequences: sequence...sequence, socket: socket, operation: operation)
                if message.type == _NLMSG_ERROR {
                    try Self.throwIfError(message, operation: operation)
                    acknowledged = true
                    return true
                }
                replies.append(message)
                return false
            }
            guard acknowledged else { throw XFRMError(.timedOut, operation: operation, detail: "no ack") }
            return replies
        }
    }

    /// Runs a dump request (`NLM_F_DUMP`) and returns every data message, restarting when interrupted.
    func dump(_ builder: NetlinkMessageBuilder, operation: String) throws(XFRMError) -> [NetlinkMessage] {
        for _ in 0...Self.dumpRetries {
            let result = try socket.withLock { (socket) throws(XFRMError) -> [NetlinkMessage]? in
                var builder = builder
                let sequence = socket.allocateSequence()
                builder.setSequence(sequence)
                try socket.send(builder.finished(), operation: operation)
                var messages: [NetlinkMessage] = []
                var interrupted = false
                try Self.receiveUntil(socket, operation: operation) { (message) throws(XFRMError) -> Bool in
                    try Self.check(message, sequences: sequence...sequence, socket: socket, operation: operation)
                    if message.flags & _NLM_F_DUMP_INTR != 0 { interrupted = true }
                    switch message.type {
                    case _NLMSG_DONE:
                        try Self.throwIfDumpFailed(message, operation: operation)
                        return true
                    case _NLMSG_ERROR:
                        try Self.throwIfError(message, operation: operation)
                        return true
                    default:
                        messages.append(message)
                        return false
                    }
                }
                return interrupted ? nil : messages
            }
            if let result { return result }
        }
        throw XFRMError(
            .dumpInterrupted, operation: operation,
            detail: "NLM_F_DUMP_INTR on \(Self.dumpRetries + 1) consecutive attempts")
    }

    /// Sends many requests packed into as few datagrams as fit in ``batchBytes``, each with its own ack.
    /// All are sent; the first failure (with its index) is thrown after every ack has been read.
    func batch(_ builders: [NetlinkMessageBuilder], operation: String) throws(XFRMError) {
        try socket.withLock { (socket) throws(XFRMError) in
            var firstError: XFRMError?
            var index = 0
            while index < builders.count {
                var datagram: [UInt8] = []
                let first = socket.allocateSequence()
                var last = first
                var count = 0
                while index < builders.count {
                    var builder = builders[index]
                    let sequence = count == 0 ? first : socket.allocateSequence()
                    builder.setSequence(sequence)
                    let bytes = builder.finished()
                    if !datagram.isEmpty
                        && (datagram.count + bytes.count > Self.batchBytes || count == Self.batchMessages)
                    {
                        break
                    }
                    datagram += bytes
                    last = sequence
                    count += 1
                    index += 1
                }
                try socket.send(datagram, operation: operation)
                var acked = 0
                let base = index - count
                try Self.receiveUntil(socket, operation: operation) { (message) throws(XFRMError) -> Bool in
                    try Self.check(message, sequences: first...last, socket: socket, operation: operation)
                    guard message.type == _NLMSG_ERROR else { return false }
                    do throws(XFRMError) {
                        try Self.throwIfError(message, operation: operation)
                    } catch {
                        if firstError == nil {
                            var annotated = error
                            let position = base + Int(message.sequence &- first)
                            annotated.detail = "request \(position) of \(builders.count)"
                            firstError = annotated
                        }
                    }
                    acked += 1
                    return acked == count
                }
            }
            if let firstError { throw firstError }
        }
    }

    /// Reads datagrams until `handle` returns true, bounded by ``requestDeadline`` and the receive timeout.
    private static func receiveUntil(
        _ socket: NetlinkSocket, operation: String,
        _ handle: (NetlinkMessage) throws(XFRMError) -> Bool
    ) throws(XFRMError) {
        let deadline = Deadline(after: requestDeadline)
        while !deadline.hasPassed {
            guard let datagram = try socket.receive(operation: operation) else {
                throw XFRMError(
                    .timedOut, operation: operation,
                    detail: "no reply within \(receiveTimeout)")
            }
            for message in try NetlinkMessage.split(datagram, operation: operation) {
                if try handle(message) { return }
            }
        }
        throw XFRMError(.timedOut, operation: operation, detail: "request took longer than \(requestDeadline)")
    }

    private static func check(
        _ message: NetlinkMessage, sequences: ClosedRange<UInt32>, socket: NetlinkSocket,
        operation: String
    ) throws(XFRMError) {
        guard message.portID == socket.portID || message.portID == 0 else {
            throw XFRMError(
                .unexpectedSender, operation: operation,
                detail: "reply addressed to port \(message.portID), ours is \(socket.portID)")
        }
        guard sequences.contains(message.sequence) else {
            throw XFRMError(
                .sequenceMismatch, operation: operation,
                detail: "reply sequence \(message.sequence), expected \(sequences)")
        }
    }

    /// Reads the status an `NLMSG_DONE` ends a dump with; throws the kernel's errno when it is negative.
    static func throwIfDumpFailed(_ message: NetlinkMessage, operation: String) throws(XFRMError) {
        guard message.payload.count >= 4 else { return }
        let status = message.payload.loadStruct(Int32.self)
        // -Int32.min does not exist (and is no errno): not something the kernel sends.
        guard status != .min else { throw .malformed(operation, "NLMSG_DONE status \(status)") }
        if status < 0 {
            throw XFRMError(.kernelRejected, operation: operation, errno: Errno(rawValue: -status))
        }
    }

    /// Decodes an `NLMSG_ERROR`; returns for an ack (error 0), throws the kernel's errno and text otherwise.
    static func throwIfError(_ message: NetlinkMessage, operation: String) throws(XFRMError) {
        let header = try message.payload.loadHeader(nlmsgerr.self, operation: operation)
        guard header.error != 0 else { return }
        // -Int32.min does not exist (and is no errno): not something the kernel sends.
        guard header.error != .min else { throw .malformed(operation, "NLMSG_ERROR error \(header.error)") }
        var kernelMessage: String?
        if message.flags & _NLM_F_ACK_TLVS != 0 {
            // With NETLINK_CAP_ACK the original request is not echoed: only its header follows the error.
            let echoed = message.flags & _NLM_F_CAPPED != 0 ? 0 : Int(header.msg.nlmsg_len) - nlmsghdrSize
            let offset = MemoryLayout<nlmsgerr>.size + max(0, echoed)
            if offset <= message.payload.count {
                let tlvs = message.payload[(message.payload.startIndex + offset)...]
                if let attributes = try? NetlinkAttribute.parse(tlvs, operation: operation),
                    let text = attributes.first(_NLMSGERR_ATTR_MSG)
                {
                    kernelMessage = String(decoding: text.payload.prefix { $0 != 0 }, as: UTF8.self)
                }
            }
        }
        throw XFRMError(
            .kernelRejected, operation: operation, errno: Errno(rawValue: -header.error),
            kernelMessage: kernelMessage)
    }
}
