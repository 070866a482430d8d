import DaemonControl
import Glibc
import SecureSocket
import Synchronization
import SystemPackage
import SystemSupport

/// What inspectors (`wss-inspect`) ask the daemon: the endpoint table as it is now (``answer(_:session:daemon:)``)
/// and its changes as they happen (``follow(_:session:daemon:)``), each limited to what the asking client may
/// see (``KeyingDaemon/inspectedEndpoints(for:)``).
final class DaemonInspection: Sendable {
    private let followers = Atomic<Int>(0)
    /// The most clients following at once (each holds a thread).
    static let maximumFollowers = 16
    /// How long a follower sleeps at most between looks when nothing signals a change.
    static let followInterval: Duration = .seconds(1)

    /// Answers an inspect request with the table in pages, on the daemon's executor (the SAs come from a dump).
    func answer(_ id: UInt32, session: ClientSession, daemon: KeyingDaemon) {
        let accepted = daemon.executor.submit {
            let pages = InspectionPage.pages(
                daemonPID: getpid(), keying: daemon.engine.keying?.name ?? "none",
                clients: UInt32(clamping: daemon.clientCount),
                endpoints: daemon.inspectedEndpoints(for: session.credentials))
            for page in pages {
                guard (try? session.channel.send(ControlFrame(id: id, .inspection(page)))) != nil else { return }
            }
        }
        if !accepted { session.fail(id, busy: "the keying daemon is busy") }
    }

    /// Starts streaming events to the client on a thread of its own, until the client closes the connection.
    func follow(_ id: UInt32, session: ClientSession, daemon: KeyingDaemon) {
        guard followers.add(1, ordering: .relaxed).newValue <= Self.maximumFollowers else {
            followers.subtract(1, ordering: .relaxed)
            return session.fail(id, busy: "\(Self.maximumFollowers) inspectors already follow this daemon")
        }
        do {
            try Threads.detach { [self] in
                defer { followers.subtract(1, ordering: .relaxed) }
                stream(id, session: session, daemon: daemon)
            }
        } catch {
            followers.subtract(1, ordering: .relaxed)
            session.fail(id, busy: "no thread to follow on (\(error))")
        }
    }

    /// Sends the endpoints present now, then each change: woken by the engine's change signal, and at least
    /// every ``followInterval`` (SAs come and go without an endpoint change).
    private func stream(_ id: UInt32, session: ClientSession, daemon: KeyingDaemon) {
        func send(_ message: ControlMessage) -> Bool {
            (try? session.channel.send(ControlFrame(id: id, message))) != nil
        }
        guard send(.done) else { return }
        var last: [UInt64: InspectedEndpoint] = [:]
        var first = true
        while !session.closed.load(ordering: .acquiring) {
            let now = Dictionary(
                daemon.inspectedEndpoints(for: session.credentials).map { ($0.report.cookie, $0) },
                uniquingKeysWith: { first, _ in first })
            for var event in InspectionEvent.changes(from: last, to: now) {
                if first, event.kind == .added { event.kind = .present }
                guard send(.inspectionEvent(event)) else { return }
            }
            first = false
            last = now
            var woken = false
            _ = daemon.engine.endpointChanges.wait(until: Deadline(after: Self.followInterval)) { () -> Void? in
                defer { woken = true }
                return woken ? () : nil
            }
        }
    }
}
