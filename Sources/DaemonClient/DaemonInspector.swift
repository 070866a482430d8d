import DaemonControl
import Glibc
import SecureSocket
import SystemPackage
import SystemSupport

/// An inspector's connection to the namespace's keying daemon (what `wss-inspect` uses): the endpoints and SAs
/// the daemon holds now, or their changes as they happen. It never starts a daemon. The daemon shows root every
/// endpoint, and any other user the endpoints its own processes registered.
public struct DaemonInspector: Sendable {
    /// What the daemon answered to one inspection.
    public struct Inspection: Codable, Hashable, Sendable {
        public var daemon: PeerCredentials
        public var keying: String
        public var clients: UInt32
        public var endpoints: [InspectedEndpoint]
    }

    let channel: ControlChannel
    /// The daemon, as the kernel named it.
    public let daemon: PeerCredentials

    /// Connects to the daemon at `name` in this network namespace; the daemon must run as root or as this
    /// process's user. `WSAENETDOWN` when none answers.
    public init(name: String = ControlChannel.defaultName) throws(SecureSocketError) {
        let channel: ControlChannel
        do {
            channel = try ControlChannel.connect(name: name)
        } catch {
            throw SecureSocketError(
                .networkDown, "no keying daemon answers in this network namespace (@\(name))", errno: error.errno,
                underlying: error)
        }
        let daemon = try KeyingDaemonClient.believedDaemon(channel, name: name)
        self.channel = channel
        self.daemon = daemon
        let welcome = try exchange(
            .hello(
                minimumVersion: ControlMessage.versions.lowerBound, maximumVersion: ControlMessage.versions.upperBound),
            id: 1)
        guard case .welcome = welcome else { throw unexpected(welcome) }
    }

    /// Closes the connection.
    public func close() { channel.shutdown() }

    /// The endpoints this process may see and their SAs, as the daemon holds them now.
    public func inspect(timeout: Duration = .seconds(15)) throws(SecureSocketError) -> Inspection {
        try send(.inspect, id: 2)
        let deadline = Deadline(after: timeout)
        var inspection: Inspection?
        // Bounded: each page is one datagram received before the deadline, and the last one ends the loop.
        while true {
            let answer = try receive(id: 2, deadline: deadline)
            guard case .inspection(let page) = answer else { throw unexpected(answer) }
            if inspection == nil {
                inspection = Inspection(daemon: daemon, keying: page.keying, clients: page.clients, endpoints: [])
            }
            inspection!.endpoints += page.endpoints
            if page.isLast { return inspection! }
        }
    }

    /// Calls `handle` with each event the daemon streams (first the endpoints present now) until `handle` returns
    /// false, `deadline` passes, or the daemon closes the connection. Returns whether it ended at the daemon's
    /// side.
    public func follow(until deadline: Deadline? = nil, _ handle: (InspectionEvent) -> Bool)
        throws(SecureSocketError) -> Bool
    {
        let first = try exchange(.follow, id: 3)
        guard case .done = first else { throw unexpected(first) }
        while true {
            let event: ControlMessage
            do {
                event = try receive(id: 3, deadline: deadline)
            } catch  where error.code == .networkDown {
                return true
            }
            guard case .inspectionEvent(let value) = event else { throw unexpected(event) }
            guard handle(value) else { return false }
        }
    }

    // MARK: - The connection

    private func exchange(_ message: ControlMessage, id: UInt32) throws(SecureSocketError) -> ControlMessage {
        try send(message, id: id)
        return try receive(id: id, deadline: Deadline(after: .seconds(15)))
    }

    private func send(_ message: ControlMessage, id: UInt32) throws(SecureSocketError) {
        do {
            try channel.send(ControlFrame(id: id, message))
        } catch {
            throw SecureSocketError(
                .networkDown, "the keying daemon's connection failed: \(error)", errno: error.errno, underlying: error)
        }
    }

    /// The next message for request `id` (the daemon sends nothing else to an inspector); a failure answer is
    /// thrown as the error it names.
    private func receive(id: UInt32, deadline: Deadline?) throws(SecureSocketError) -> ControlMessage {
        let frame: ControlFrame
        do {
            let (received, socket) = try channel.receive(timeout: deadline.map { max(.zero, $0.remaining) })
            if let socket { Glibc.close(socket) }
            frame = received
        } catch .timedOut {
            throw SecureSocketError(.timedOut, "the keying daemon did not answer in time")
        } catch {
            throw SecureSocketError(
                .networkDown, "the keying daemon's connection ended: \(error)", errno: error.errno, underlying: error)
        }
        guard frame.id == id else { throw unexpected(frame.message) }
        if case .failure(let code, let errno, let detail) = frame.message {
            throw SecureSocketError(
                SecureSocketError.Code(rawValue: code), detail, errno: errno == 0 ? nil : Errno(rawValue: errno))
        }
        return frame.message
    }

    private func unexpected(_ answer: ControlMessage) -> SecureSocketError {
        SecureSocketError(.systemCallFailure, "unexpected answer from the keying daemon: \(answer)")
    }
}
