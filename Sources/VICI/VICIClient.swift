import Glibc
import Synchronization
import SystemSupport

/// A client for charon's VICI socket: `swanctl`'s transport, in Swift.
///
/// VICI has no sequence numbers, so a connection carries one command at a time (strongSwan's vici README,
/// "Commands"). The client holds one connection behind a mutex: concurrent callers queue, each exchange is
/// complete before the next starts. For parallel commands, open several clients.
///
/// Every wait is bounded by a deadline (``defaultTimeout`` or the call's own), counted from the moment the call
/// has the connection (waiting for the mutex is bounded by the deadline of the exchange in progress). After a timeout, an I/O error or
/// a malformed packet the connection is closed, because a late answer would be taken for the next command's;
/// the next call connects again, which also rides over a daemon restart.
///
/// Do not call back into the same client from an `onEvent` closure: it runs while the mutex is held.
public final class VICIClient: Sendable {
    /// The socket path, e.g. `/var/run/charon.vici` or a private charon's.
    public let path: String
    /// The deadline for one exchange when a call does not give its own.
    public let defaultTimeout: Duration
    private let connection: Mutex<VICIConnection?>

    /// The system charon's default socket (`charon.plugins.vici.socket`, `unix:///var/run/charon.vici`).
    public static let defaultSocketPath = "/var/run/charon.vici"

    /// Connects to the VICI socket at `path` now, so that a missing daemon shows at once
    /// (``VICIError/Code/daemonUnavailable`` with the errno of `connect`).
    public init(path: String = VICIClient.defaultSocketPath, timeout: Duration = .seconds(10)) throws(VICIError) {
        self.path = path
        defaultTimeout = timeout
        let connected = try VICIConnection(path: path, deadline: Deadline(after: timeout), command: "connect")
        connection = Mutex(connected)
    }

    /// The process at the other end of the socket (`SO_PEERCRED`): the charon that answers. nil when not
    /// connected.
    public var daemonProcessID: pid_t? {
        connection.withLock { link -> pid_t? in
            guard let link else { return nil }
            // `struct ucred { pid_t pid; uid_t uid; gid_t gid; }` (Glibc's module leaves it out without _GNU_SOURCE).
            var credentials: (pid: Int32, uid: UInt32, gid: UInt32) = (0, 0, 0)
            var length = socklen_t(MemoryLayout<(Int32, UInt32, UInt32)>.size)
            guard getsockopt(link.fd, SOL_SOCKET, SO_PEERCRED, &credentials, &length) == 0, credentials.pid > 0 else {
                return nil
            }
            return credentials.pid
        }
    }

    /// Closes the connection now (the next call reconnects).
    public func disconnect() {
        connection.withLock { $0 = nil }
    }

    /// Runs one exchange on the connection, connecting first if needed, and drops the connection when the
    /// exchange left it in an unknown state.
    private func exchange<R: Sendable>(
        _ command: String, timeout: Duration?,
        _ body: (VICIConnection, Deadline) throws(VICIError) -> R
    ) throws(VICIError) -> R {
        return try connection.withLock { (current: inout VICIConnection?) throws(VICIError) -> R in
            // The deadline starts once the connection is ours: a call queued behind a long `initiate` does not
            // time out (and drop a healthy connection) because of the wait. That wait is itself bounded by the
            // holder's deadline.
            let deadline = Deadline(after: timeout ?? defaultTimeout)
            let link: VICIConnection
            if let current {
                link = current
            } else {
                link = try VICIConnection(path: path, deadline: deadline, command: command)
                current = link
            }
            do throws(VICIError) {
                return try body(link, deadline)
            } catch {
                if !Self.leavesStreamInStep(error) { current = nil }
                throw error
            }
        }
    }

    /// Whether the connection is still usable after `error`: charon refused something (`success = no`,
    /// `CMD_UNKNOWN`, `EVENT_UNKNOWN`) or nothing was sent (the request could not be encoded). After timeouts,
    /// I/O errors and malformed packets the position in the stream is unknown.
    static func leavesStreamInStep(_ error: VICIError) -> Bool {
        [.commandFailed, .unknownCommand, .unknownEvent, .invalidArgument].contains(error.code)
    }

    /// The most events one exchange accepts before giving up: a bound on the loop, far above any real listing.
    static let maximumEventsPerExchange = 10_000_000

    /// Sends command `name` with `message` and returns charon's response.
    ///
    /// A response with `success = no` throws ``VICIError/Code/commandFailed`` carrying `errmsg` and the
    /// response; `CMD_UNKNOWN` throws ``VICIError/Code/unknownCommand``. Events that arrive meanwhile (only if
    /// this connection registered for some) are skipped.
    @discardableResult
    public func command(_ name: String, _ message: VICIMessage = [:], timeout: Duration? = nil) throws(VICIError)
        -> VICIMessage
    {
        try exchange(name, timeout: timeout) { (link, deadline) throws(VICIError) -> VICIMessage in
            try link.send(.commandRequest(name: name, message: message), deadline: deadline, command: name)
            return try Self.awaitResponse(link, deadline: deadline, command: name) { _, _ in }
        }
    }

    /// Runs a command whose results stream as `event` events before the response: registers for `event`,
    /// sends the command, hands every `event` to `onEvent` in order, takes the response, and unregisters
    /// (the vici README: "A client must register for the appropriate event to receive the stream, and
    /// unregister after the response has been received"). Used by `list-sas` → `list-sa`,
    /// `list-conns` → `list-conn`, `initiate`/`terminate` → `control-log`.
    @discardableResult
    public func streamingCommand(
        _ name: String, _ message: VICIMessage = [:], event: String,
        timeout: Duration? = nil, onEvent: (VICIMessage) -> Void
    ) throws(VICIError)
        -> VICIMessage
    {
        try exchange(name, timeout: timeout) { (link, deadline) throws(VICIError) -> VICIMessage in
            try Self.register(event, on: link, deadline: deadline, command: name)
            let outcome: Result<VICIMessage, VICIError>
            do throws(VICIError) {
                try link.send(.commandRequest(name: name, message: message), deadline: deadline, command: name)
                outcome = .success(
                    try Self.awaitResponse(link, deadline: deadline, command: name) { eventName, body in
                        if eventName == event { onEvent(body) }
                    })
            } catch {
                outcome = .failure(error)
            }
            if case .failure(let error) = outcome, !Self.leavesStreamInStep(error) {
                throw error // the stream is out of step; the connection is dropped, which unregisters too
            }
            try Self.unregister(event, on: link, deadline: deadline, command: name)
            return try outcome.get()
        }
    }

    /// Waits for `CMD_RESPONSE` / `CMD_UNKNOWN`, passing events to `onEvent`.
    static func awaitResponse(
        _ link: VICIConnection, deadline: Deadline, command: String,
        onEvent: (String, VICIMessage) -> Void
    ) throws(VICIError) -> VICIMessage {
        for _ in 0..<maximumEventsPerExchange {
            switch try link.receive(deadline: deadline, command: command) {
            case .commandResponse(let response):
                if response.string("success")?.lowercased() == "no" {
                    throw VICIError(
                        .commandFailed, command: command, errmsg: response.string("errmsg"),
                        response: response)
                }
                return response
            case .commandUnknown:
                throw VICIError(.unknownCommand, command: command, detail: "charon has no handler for \"\(command)\"")
            case .event(let name, let body):
                onEvent(name, body)
            case let other:
                throw .malformed(command, "unexpected packet type \(other.typeByte) while waiting for the response")
            }
        }
        throw VICIError(.timedOut, command: command, detail: "more than \(maximumEventsPerExchange) events")
    }

    /// Sends `EVENT_REGISTER` and waits for `EVENT_CONFIRM` (or `EVENT_UNKNOWN` → ``VICIError/Code/unknownEvent``).
    static func register(_ event: String, on link: VICIConnection, deadline: Deadline, command: String)
        throws(VICIError)
    {
        try link.send(.eventRegister(name: event), deadline: deadline, command: command)
        try awaitConfirm(event, on: link, deadline: deadline, command: command, what: "register")
    }

    /// Sends `EVENT_UNREGISTER` and waits for its confirmation, skipping events still in flight.
    static func unregister(_ event: String, on link: VICIConnection, deadline: Deadline, command: String)
        throws(VICIError)
    {
        try link.send(.eventUnregister(name: event), deadline: deadline, command: command)
        try awaitConfirm(event, on: link, deadline: deadline, command: command, what: "unregister")
    }

    private static func awaitConfirm(
        _ event: String, on link: VICIConnection, deadline: Deadline, command: String,
        what: String
    ) throws(VICIError) {
        for _ in 0..<maximumEventsPerExchange {
            switch try link.receive(deadline: deadline, command: command) {
            case .eventConfirm:
                return
            case .eventUnknown:
                throw VICIError(
                    .unknownEvent, command: command, detail: "\(what) \"\(event)\": charon knows no such event")
            case .event:
                continue
            case let other:
                throw .malformed(
                    command, "unexpected packet type \(other.typeByte) while waiting for \(what) \"\(event)\"")
            }
        }
        throw VICIError(.timedOut, command: command, detail: "more than \(maximumEventsPerExchange) events")
    }
}
