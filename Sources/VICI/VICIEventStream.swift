import Glibc
import Synchronization
import SystemSupport

/// One event charon raised: its name (`ike-updown`, `child-updown`, `ike-rekey`, `child-rekey`, `alert`, `log`)
/// and its message.
public struct VICIEvent: Hashable, Sendable, CustomStringConvertible {
    public var name: String
    public var message: VICIMessage

    public init(name: String, message: VICIMessage) {
        self.name = name
        self.message = message
    }

    /// `up = yes` / `up = no` in `ike-updown` and `child-updown`; nil for other events. charon omits `up`
    /// on a down event in some versions, so a present section without `up = yes` counts as down.
    public var isUp: Bool? {
        guard name == "ike-updown" || name == "child-updown" else { return nil }
        return message.bool("up") ?? false
    }

    /// The IKE SAs the event talks about (`ike-updown`, `child-updown`, `child-rekey`), parsed like `list-sa`.
    public var ikeSAs: [IKESAInfo] { IKESAInfo.parse(event: message) }

    public var description: String { "\(name) {\(message)}" }
}

/// Long-lived listening to charon's events on a connection of its own: `swanctl --monitor` as an
/// `AsyncSequence`.
///
/// Every event is registered (and confirmed by charon) before `init` returns, so events that happen after
/// that are never missed. A dedicated thread reads the socket with polls of at most 100 ms and stops when the
/// stream is cancelled (the consuming task is cancelled, or ``stop()`` is called) or deinitialised; the socket
/// closes with it, which ends the registrations on charon's side. A malformed packet or the daemon going away
/// ends the sequence with a ``VICIError``; nothing is dropped silently.
public final class VICIEventStream: AsyncSequence, Sendable {
    public typealias Element = VICIEvent

    /// The socket path the events come from.
    public let path: String
    /// The events registered.
    public let events: [String]
    private let stream: AsyncThrowingStream<VICIEvent, any Error>?
    private let stopFlag: EventStopFlag

    /// Connects to `path`, registers every event in `events` (``VICIError/Code/unknownEvent`` if charon knows
    /// one not) and starts reading; the events are this sequence's elements.
    public init(path: String, events: [String], timeout: Duration = .seconds(10)) throws(VICIError) {
        self.path = path
        self.events = events
        let (stream, continuation) = AsyncThrowingStream<VICIEvent, any Error>.makeStream(bufferingPolicy: .unbounded)
        self.stream = stream
        let stopFlag = EventStopFlag()
        self.stopFlag = stopFlag
        continuation.onTermination = { _ in stopFlag.stop() }
        try Self.start(
            path: path, events: events, timeout: timeout, stop: stopFlag,
            sink: EventSink(
                deliver: { continuation.yield($0) },
                end: { error in
                    if let error { continuation.finish(throwing: error) } else { continuation.finish() }
                }))
    }

    /// Connects and registers as above, then calls `handle` with each event on the stream's own thread (no Swift
    /// concurrency involved), and `ended` once: with the error that ended it (charon gone, a malformed packet) or
    /// nil after ``stop()``. The sequence of a stream made this way is empty.
    public init(
        path: String, events: [String], timeout: Duration = .seconds(10),
        handle: @escaping @Sendable (VICIEvent) -> Void, ended: @escaping @Sendable (VICIError?) -> Void
    ) throws(VICIError) {
        self.path = path
        self.events = events
        self.stream = nil
        let stopFlag = EventStopFlag()
        self.stopFlag = stopFlag
        try Self.start(
            path: path, events: events, timeout: timeout, stop: stopFlag,
            sink: EventSink(deliver: handle, end: ended))
    }

    private static func start(
        path: String, events: [String], timeout: Duration, stop: EventStopFlag, sink: EventSink
    ) throws(VICIError) {
        let deadline = Deadline(after: timeout)
        let link = try VICIConnection(path: path, deadline: deadline, command: "event stream")
        for event in events {
            try VICIClient.register(event, on: link, deadline: deadline, command: "register \(event)")
        }
        let context = EventReaderContext(link: link, sink: sink, stop: stop)
        do {
            try Threads.detach { context.run() }
        } catch {
            throw .syscall("event stream", "pthread_create", errno: error)
        }
    }

    /// Stops reading; the sequence finishes (or `ended` is called) within one poll (100 ms) and the socket is
    /// closed.
    public func stop() { stopFlag.stop() }

    deinit { stopFlag.stop() }

    public func makeAsyncIterator() -> AsyncThrowingStream<VICIEvent, any Error>.Iterator {
        (stream ?? AsyncThrowingStream { $0.finish() }).makeAsyncIterator()
    }
}

/// Where the reader thread puts what it reads.
private struct EventSink: Sendable {
    let deliver: @Sendable (VICIEvent) -> Void
    let end: @Sendable (VICIError?) -> Void
}

final class EventStopFlag: Sendable {
    private let flag = Atomic<Bool>(false)
    func stop() { flag.store(true, ordering: .releasing) }
    var isStopped: Bool { flag.load(ordering: .acquiring) }
}

/// Owns the connection on the reader thread (handed to it, used there only); closes it when the loop ends.
private final class EventReaderContext: @unchecked Sendable {
    let link: VICIConnection
    let sink: EventSink
    let stop: EventStopFlag

    init(link: VICIConnection, sink: EventSink, stop: EventStopFlag) {
        self.link = link
        self.sink = sink
        self.stop = stop
    }

    /// Each wait is at most 100 ms, so the loop notices `stop` within that bound. Ends at the first error.
    func run() {
        do throws(VICIError) {
            while !stop.isStopped {
                guard let packet = try link.receiveIfReady(within: .milliseconds(100), command: "event stream") else {
                    continue
                }
                switch packet {
                case .event(let name, let message):
                    sink.deliver(VICIEvent(name: name, message: message))
                case .eventConfirm:
                    continue
                default:
                    throw .malformed("event stream", "unexpected packet type \(packet.typeByte) on an event connection")
                }
            }
            sink.end(nil)
        } catch {
            sink.end(error)
        }
    }
}
