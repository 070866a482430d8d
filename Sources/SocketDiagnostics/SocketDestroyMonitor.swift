import Glibc
import Synchronization
import SystemPackage
import SystemSupport
import XFRM

/// Tells when TCP and UDP sockets of one network namespace are destroyed: the kernel's destroy multicast groups of
/// NETLINK_SOCK_DIAG (`SKNLGRP_INET_TCP_DESTROY`, `SKNLGRP_INET_UDP_DESTROY`, `SKNLGRP_INET6_TCP_DESTROY`,
/// `SKNLGRP_INET6_UDP_DESTROY`), read on one dedicated thread that calls the handler with each
/// ``SocketDestroyEvent``.
///
/// The socket is opened and joined to the groups when the monitor is created, so a socket destroyed after `init`
/// returns is never missed unseen: it is reported, or an overrun is (``SocketDestroyEvent/eventsLost``). Sockets
/// of other namespaces are never reported. The kernel lets any process join these groups (no capability is
/// checked); the receive buffer is raised with `SO_RCVBUFFORCE` when the process may, `SO_RCVBUF` otherwise.
///
/// The handler runs on the monitor's thread, one event at a time; while it runs, events queue in the receive
/// buffer. ``stop()`` ends the thread and closes the socket, and returns once both are done (bounded by
/// ``stopTimeout``).
public final class SocketDestroyMonitor: Sendable {
    /// The namespace whose sockets this reports.
    public let namespace: NetworkNamespace
    /// Longest time ``stop()`` waits for the thread to end (it only waits while the handler is running).
    public static let stopTimeout: Duration = .seconds(5)
    /// Each wait for events ends after this long, to look at the stop flag again (the wake-up descriptor normally
    /// ends it at once).
    static let pollInterval: Int32 = 1000

    private let shared: MonitorShared

    /// Joins the destroy groups in `namespace` and starts the thread that calls `handler`.
    ///
    /// `receiveBufferBytes`: the socket's receive buffer, how many events may wait while the handler runs (each
    /// takes about 1 KiB of it for UDP, 2 KiB for TCP).
    public init(
        namespace: NetworkNamespace = .current, receiveBufferBytes: Int32 = 4 << 20,
        handler: @escaping @Sendable (SocketDestroyEvent) -> Void
    ) throws(SocketDiagnosticsError) {
        self.namespace = namespace
        let operation = "destroy monitor"
        let groups = [
            _SKNLGRP_INET_TCP_DESTROY, _SKNLGRP_INET_UDP_DESTROY, _SKNLGRP_INET6_TCP_DESTROY,
            _SKNLGRP_INET6_UDP_DESTROY,
        ]
        let socket: DiagSocket
        do {
            socket = try DiagSocket(
                namespace: namespace, groups: groups, receiveTimeout: nil, receiveBufferBytes: receiveBufferBytes,
                operation: operation)
        } catch  where error.errno == .permissionDenied || error.errno == .notPermitted {
            var refused = error
            refused.detail = "the kernel refused to join the sock_diag destroy groups: \(error.detail ?? "bind")"
            throw refused
        }
        var pipeEnds: [CInt] = [-1, -1]
        guard pipe(&pipeEnds) == 0 else { throw .syscall(operation, "pipe", errno: Errno(rawValue: errno)) }
        for end in pipeEnds {
            _ = fcntl(end, F_SETFD, FD_CLOEXEC)
            _ = fcntl(end, F_SETFL, O_NONBLOCK)
        }
        let shared = MonitorShared(wakePipe: (pipeEnds[0], pipeEnds[1]))
        self.shared = shared
        let reader = MonitorReader(socket: socket, shared: shared, handler: handler)
        do throws(Errno) {
            try Threads.detach { reader.run() }
        } catch {
            shared.closeWakePipe()
            throw .syscall(operation, "pthread_create", errno: error)
        }
    }

    /// Stops the monitor: the thread ends and the socket is closed. Returns true once both are done; false if the
    /// handler was still running after ``stopTimeout`` (the thread then ends as soon as it returns). Called from the
    /// handler itself, it returns at once and the thread ends when the handler returns. Safe to call more than once.
    @discardableResult
    public func stop() -> Bool {
        shared.requestStop()
        if shared.isReaderThread { return false }
        let ended = shared.changed.wait(until: Deadline(after: Self.stopTimeout)) { shared.hasFinished ? true : nil }
        guard ended == true else { return false }
        shared.closeWakePipe()
        return true
    }

    deinit { stop() }
}

/// What the monitor and its thread share: the stop request, the wake-up pipe, whether the thread ended.
private final class MonitorShared: Sendable {
    private let stopRequested = Atomic<Bool>(false)
    private let finished = Atomic<Bool>(false)
    private let readerThread = Atomic<UInt>(0)
    /// A pipe whose read end the thread polls beside the netlink socket; a byte written ends the wait at once. -1
    /// once closed. Closed only after the thread ended (or on deinit, when nobody polls it any more), so its
    /// numbers are never reused under the thread.
    private let wakePipe: Mutex<(read: CInt, write: CInt)>
    let changed = ChangeSignal()

    init(wakePipe: (CInt, CInt)) { self.wakePipe = Mutex((read: wakePipe.0, write: wakePipe.1)) }

    deinit { closeWakePipe() }

    /// The descriptor to poll, read once by the thread before its loop.
    var wakeDescriptorForPolling: CInt { wakePipe.withLock { $0.read } }

    var isStopRequested: Bool { stopRequested.load(ordering: .acquiring) }
    var hasFinished: Bool { finished.load(ordering: .acquiring) }
    var isReaderThread: Bool {
        let reader = readerThread.load(ordering: .acquiring)
        return reader != 0 && pthread_equal(pthread_t(reader), pthread_self()) != 0
    }

    func markReaderThread() { readerThread.store(UInt(pthread_self()), ordering: .releasing) }

    func requestStop() {
        stopRequested.store(true, ordering: .releasing)
        wakePipe.withLock { ends in
            guard ends.write >= 0 else { return }
            var byte: UInt8 = 1
            _ = write(ends.write, &byte, 1) // a full pipe already wakes the thread
        }
    }

    func markFinished() {
        finished.store(true, ordering: .releasing)
        changed.notify()
    }

    func closeWakePipe() {
        wakePipe.withLock { ends in
            if ends.read >= 0 { Glibc.close(ends.read) }
            if ends.write >= 0 { Glibc.close(ends.write) }
            ends = (read: -1, write: -1)
        }
    }
}

/// The thread's side: owns the netlink socket and closes it before saying it ended.
private final class MonitorReader: @unchecked Sendable {
    private var socket: DiagSocket?
    private let shared: MonitorShared
    private let handler: @Sendable (SocketDestroyEvent) -> Void

    init(socket: DiagSocket, shared: MonitorShared, handler: @escaping @Sendable (SocketDestroyEvent) -> Void) {
        self.socket = socket
        self.shared = shared
        self.handler = handler
    }

    func run() {
        shared.markReaderThread()
        if let socket { read(socket) }
        socket = nil
        shared.markFinished()
    }

    /// Waits for datagrams or the wake-up byte, then reads every queued datagram, until stopped or failed.
    private func read(_ socket: DiagSocket) {
        let operation = "destroy monitor"
        var descriptors = [
            pollfd(fd: socket.fileDescriptor, events: Int16(POLLIN), revents: 0),
            pollfd(fd: shared.wakeDescriptorForPolling, events: Int16(POLLIN), revents: 0),
        ]
        while !shared.isStopRequested {
            let ready = poll(&descriptors, nfds_t(descriptors.count), SocketDestroyMonitor.pollInterval)
            if ready < 0 {
                let error = Errno(rawValue: errno)
                if error == .interrupted { continue }
                handler(.failed(.syscall(operation, "poll", errno: error)))
                return
            }
            if descriptors[1].revents != 0 || shared.isStopRequested { return }
            guard descriptors[0].revents != 0 else { continue }
            // POLLIN, or POLLERR for an overrun: the receive reports which.
            while !shared.isStopRequested {
                do throws(SocketDiagnosticsError) {
                    guard let datagram = try socket.receive(operation: operation) else { break }
                    for event in SocketDestroyEvent.events(inDatagram: datagram) { handler(event) }
                } catch  where error.errno == .noBufferSpace {
                    handler(.eventsLost)
                } catch {
                    handler(.failed(error))
                    return
                }
            }
        }
    }
}
