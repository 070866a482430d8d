import CNetlink
import Glibc
import Synchronization
import SystemPackage
import SystemSupport

/// Typed events from the XFRM multicast groups of one namespace: `ip xfrm monitor` as an `AsyncSequence`.
///
/// The socket is opened and joined to its groups when the monitor is created, so events that happen after
/// `init` returns are never missed. Note the kernel only creates larval states and sends ACQUIREs while
/// some socket listens on the acquire group in that namespace.
///
/// A dedicated thread reads the socket with a bounded receive timeout and stops when the monitor is
/// cancelled (the consuming task is cancelled, or ``stop()`` is called). Malformed messages and kernel
/// overruns end the sequence with an ``XFRMError``, nothing is dropped silently.
public final class XFRMMonitor: AsyncSequence, Sendable {
    public typealias Element = XFRMEvent

    /// The multicast groups to join (`XFRMNLGRP_*`).
    public struct Groups: OptionSet, Sendable {
        public let rawValue: UInt32
        public init(rawValue: UInt32) { self.rawValue = rawValue }
        /// ACQUIRE messages. The C constant is `XFRMNLGRP_ACQUIRE`.
        public static let acquire = Groups(rawValue: 1 << 0)
        /// Soft/hard expiry of states and policies. The C constant is `XFRMNLGRP_EXPIRE`.
        public static let expire = Groups(rawValue: 1 << 1)
        /// States added, updated, deleted, flushed. The C constant is `XFRMNLGRP_SA`.
        public static let states = Groups(rawValue: 1 << 2)
        /// Policies added, updated, deleted, flushed. The C constant is `XFRMNLGRP_POLICY`.
        public static let policies = Groups(rawValue: 1 << 3)
        public static let all: Groups = [.acquire, .expire, .states, .policies]

        var numbers: [UInt32] {
            var result: [UInt32] = []
            if contains(.acquire) { result.append(_XFRMNLGRP_ACQUIRE) }
            if contains(.expire) { result.append(_XFRMNLGRP_EXPIRE) }
            if contains(.states) { result.append(_XFRMNLGRP_SA) }
            if contains(.policies) { result.append(_XFRMNLGRP_POLICY) }
            return result
        }
    }

    public let namespace: NetworkNamespace
    private let stream: AsyncThrowingStream<XFRMEvent, any Error>?

    /// Opens the event socket in `namespace` and starts reading; the events are this sequence's elements.
    public init(namespace: NetworkNamespace = .current, groups: Groups = .all) throws(XFRMError) {
        self.namespace = namespace
        let (stream, continuation) = AsyncThrowingStream<XFRMEvent, any Error>.makeStream(bufferingPolicy: .unbounded)
        self.stream = stream
        let stopFlag = StopFlag()
        continuation.onTermination = { _ in stopFlag.stop() }
        self.stopFlag = stopFlag
        try Self.startReader(
            namespace: namespace, groups: groups, stop: stopFlag,
            sink: EventSink(
                deliver: { continuation.yield($0) },
                end: { error in
                    if let error { continuation.finish(throwing: error) } else { continuation.finish() }
                }))
    }

    /// Opens the event socket in `namespace` and calls `handle` with each event on the monitor's own thread (no
    /// Swift concurrency involved), then `ended` once, with the error that ended the reading (an overrun:
    /// `ENOBUFS`) or nil after ``stop()``. The sequence of a monitor made this way is empty.
    public init(
        namespace: NetworkNamespace = .current, groups: Groups = .all,
        handle: @escaping @Sendable (XFRMEvent) -> Void, ended: @escaping @Sendable (XFRMError?) -> Void
    ) throws(XFRMError) {
        self.namespace = namespace
        self.stream = nil
        let stopFlag = StopFlag()
        self.stopFlag = stopFlag
        try Self.startReader(
            namespace: namespace, groups: groups, stop: stopFlag, sink: EventSink(deliver: handle, end: ended))
    }

    private static func startReader(
        namespace: NetworkNamespace, groups: Groups, stop: StopFlag, sink: EventSink
    ) throws(XFRMError) {
        let socket = try NetlinkSocket(
            namespace: namespace, groups: groups.numbers, receiveTimeout: .milliseconds(100),
            receiveBufferBytes: 4 << 20, operation: "monitor")
        let context = ReaderContext(reader: EventReader(socket: socket, sink: sink), stop: stop)
        do {
            try Threads.detach { context.reader.run(until: context.stop) }
        } catch {
            throw .syscall("monitor", "pthread_create", errno: error)
        }
    }

    private let stopFlag: StopFlag

    /// Stops reading; the sequence finishes (or `ended` is called) within the receive timeout (100 ms).
    public func stop() { stopFlag.stop() }

    deinit { stopFlag.stop() }

    public func makeAsyncIterator() -> AsyncThrowingStream<XFRMEvent, any Error>.Iterator {
        (stream ?? AsyncThrowingStream { $0.finish() }).makeAsyncIterator()
    }
}

/// Where the reader thread puts what it reads.
private struct EventSink: Sendable {
    let deliver: @Sendable (XFRMEvent) -> Void
    let end: @Sendable (XFRMError?) -> Void
}

final class StopFlag: Sendable {
    private let flag = Atomic<Bool>(false)
    func stop() { flag.store(true, ordering: .releasing) }
    var isStopped: Bool { flag.load(ordering: .acquiring) }
}

/// Handed to the reader thread, used there only.
private final class ReaderContext: @unchecked Sendable {
    let reader: EventReader
    let stop: StopFlag
    init(reader: EventReader, stop: StopFlag) {
        self.reader = reader
        self.stop = stop
    }
}

/// Owns the socket on the reader thread; closes it when the loop ends.
private final class EventReader {
    let socket: NetlinkSocket
    let sink: EventSink

    init(socket: NetlinkSocket, sink: EventSink) {
        self.socket = socket
        self.sink = sink
    }

    /// Each receive waits at most 100 ms, so the loop notices `stop` within that bound.
    func run(until stop: StopFlag) {
        do throws(XFRMError) {
            while !stop.isStopped {
                guard let datagram = try socket.receive(operation: "monitor") else { continue }
                for message in try NetlinkMessage.split(datagram, operation: "monitor") {
                    // The sender is the kernel (checked on the datagram's source address). The header's
                    // `nlmsg_pid` is not: the kernel copies the requester's port id into the multicast copy
                    // of its request (charon's NEWSA carries charon's), so it says nothing about the sender.
                    if message.type == _NLMSG_NOOP || message.type == _NLMSG_DONE { continue }
                    sink.deliver(try XFRMEvent.decode(message))
                }
            }
            sink.end(nil)
        } catch {
            sink.end(error)
        }
    }
}
