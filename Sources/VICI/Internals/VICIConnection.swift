import Glibc
import SystemPackage
import SystemSupport

/// One connected VICI stream socket (`AF_UNIX`, non-blocking, close-on-exec).
///
/// Every wait is a `poll(2)` bounded by the caller's ``Deadline``; writes use `MSG_NOSIGNAL` so a daemon that
/// went away gives `EPIPE`, not a `SIGPIPE` for the whole process. Not thread-safe: ``VICIClient`` guards it
/// with a mutex, ``VICIEventStream`` gives it to one reader thread.
final class VICIConnection {
    let fd: CInt
    let path: String
    private var frames = VICIFrameReader()
    /// One `read(2)`'s worth; packets longer than this arrive over several reads (the frame reader joins them).
    /// Small, because every negotiation opens a connection of its own and pays for the buffer.
    private var readBuffer = [UInt8](repeating: 0, count: 16 * 1024)

    /// Connects to the VICI socket at `path`. A missing socket (`ENOENT`), nobody listening (`ECONNREFUSED`)
    /// and no permission (`EACCES`) are ``VICIError/Code/daemonUnavailable``; a full listen backlog (`EAGAIN`) is
    /// retried until `deadline`.
    init(path: String, deadline: Deadline, command: String) throws(VICIError) {
        self.path = path
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let pathBytes = Array(path.utf8)
        let capacity = MemoryLayout.size(ofValue: address.sun_path)
        guard !pathBytes.isEmpty, pathBytes.count < capacity, !pathBytes.contains(0) else {
            throw .invalid(
                command, "socket path of \(pathBytes.count) bytes (sockaddr_un holds at most \(capacity - 1))")
        }
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            for (i, byte) in pathBytes.enumerated() { raw[i] = byte }
        }
        let fd = socket(
            AF_UNIX, CInt(SOCK_STREAM.rawValue) | CInt(SOCK_CLOEXEC.rawValue) | CInt(SOCK_NONBLOCK.rawValue), 0)
        guard fd >= 0 else { throw .syscall(command, "socket(AF_UNIX)", errno: Errno(rawValue: errno)) }
        // The descriptor becomes the connection's only once connected: a failed connect closes it here, once
        // (a throw after every stored property is set would also run deinit, and a second close could hit a
        // descriptor another thread has opened meanwhile under the same number).
        do throws(VICIError) {
            try Self.connect(fd, to: address, path: path, deadline: deadline, command: command)
        } catch {
            close(fd)
            throw error
        }
        self.fd = fd
    }

    /// Connects `fd` to `address`, retrying while the listen backlog is full until `deadline`. Closes nothing.
    private static func connect(
        _ fd: CInt, to address: sockaddr_un, path: String, deadline: Deadline, command: String
    ) throws(VICIError) {
        var address = address
        let length = socklen_t(MemoryLayout<sockaddr_un>.size)
        // Bounded: each try either connects, fails for good, or (backlog full) sleeps 5 ms until the deadline.
        for _ in 0..<100_000 {
            let rc = withUnsafePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd, $0, length) }
            }
            if rc == 0 { return }
            let error = Errno(rawValue: errno)
            switch error {
            case .interrupted:
                continue
            case .resourceTemporarilyUnavailable where !deadline.hasPassed:
                usleep(5_000)
                continue
            case .nowInProgress:
                // Not expected for AF_UNIX, but honour it: wait for writability, then read SO_ERROR.
                try waitFor(fd, CShort(POLLOUT), path: path, deadline: deadline, command: command)
                var soError: CInt = 0
                var soLength = socklen_t(MemoryLayout<CInt>.size)
                getsockopt(fd, SOL_SOCKET, SO_ERROR, &soError, &soLength)
                if soError == 0 { return }
                throw Self.connectError(Errno(rawValue: soError), path: path, command: command)
            default:
                throw Self.connectError(error, path: path, command: command)
            }
        }
        throw VICIError(.timedOut, command: command, detail: "connect to \(path): listen backlog stayed full")
    }

    private static func connectError(_ error: Errno, path: String, command: String) -> VICIError {
        switch error {
        case .noSuchFileOrDirectory, .connectionRefused, .permissionDenied, .resourceTemporarilyUnavailable:
            VICIError(.daemonUnavailable, command: command, errno: error, detail: "connect to \(path)")
        default:
            VICIError(.io, command: command, errno: error, detail: "connect to \(path)")
        }
    }

    deinit { close(fd) }

    /// Waits until `events` are ready on the socket or the deadline passes (``VICIError/Code/timedOut``).
    private func waitFor(_ events: CShort, deadline: Deadline, command: String) throws(VICIError) {
        try Self.waitFor(fd, events, path: path, deadline: deadline, command: command)
    }

    private static func waitFor(
        _ fd: CInt, _ events: CShort, path: String, deadline: Deadline, command: String
    ) throws(VICIError) {
        for _ in 0..<1_000_000 {
            var entry = pollfd(fd: fd, events: events, revents: 0)
            let rc = poll(&entry, 1, deadline.pollMilliseconds)
            if rc > 0 { return }
            if rc == 0 {
                throw VICIError(.timedOut, command: command, detail: "no answer from \(path) in time")
            }
            let error = Errno(rawValue: errno)
            guard error == .interrupted else { throw .syscall(command, "poll", errno: error) }
            if deadline.hasPassed {
                throw VICIError(.timedOut, command: command, detail: "no answer from \(path) in time")
            }
        }
        throw VICIError(.timedOut, command: command, detail: "poll interrupted too often")
    }

    /// Writes a whole packet before the deadline.
    func send(_ packet: VICIPacket, deadline: Deadline, command: String) throws(VICIError) {
        let bytes = try packet.encode()
        var sent = 0
        // Bounded: every pass writes something or waits in a deadline-bounded poll.
        for _ in 0..<1_000_000 where sent < bytes.count {
            let n = bytes.withUnsafeBytes { raw -> Int in
                guard let base = raw.baseAddress else { return 0 }
                return Glibc.send(fd, base + sent, raw.count - sent, CInt(MSG_NOSIGNAL))
            }
            if n > 0 {
                sent += n
                continue
            }
            let error = Errno(rawValue: errno)
            switch error {
            case .interrupted: continue
            case .resourceTemporarilyUnavailable: try waitFor(CShort(POLLOUT), deadline: deadline, command: command)
            case .brokenPipe, .connectionReset:
                throw VICIError(.daemonUnavailable, command: command, errno: error, detail: "charon closed \(path)")
            default: throw .syscall(command, "send", errno: error)
            }
        }
        guard sent == bytes.count else {
            throw VICIError(.timedOut, command: command, detail: "sent \(sent) of \(bytes.count) bytes")
        }
    }

    /// Reads the next packet before the deadline. End of stream is ``VICIError/Code/daemonUnavailable``.
    func receive(deadline: Deadline, command: String) throws(VICIError) -> VICIPacket {
        for _ in 0..<1_000_000 {
            if let packet = try frames.next() { return packet }
            try waitFor(CShort(POLLIN), deadline: deadline, command: command)
            let n = readBuffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if n > 0 {
                frames.append(readBuffer[0..<n])
                continue
            }
            if n == 0 {
                throw VICIError(
                    .daemonUnavailable, command: command,
                    detail: "charon closed \(path) (\(frames.bufferedCount) byte(s) of a packet pending)")
            }
            let error = Errno(rawValue: errno)
            switch error {
            case .interrupted, .resourceTemporarilyUnavailable: continue
            case .connectionReset:
                throw VICIError(.daemonUnavailable, command: command, errno: error, detail: "charon reset \(path)")
            default: throw .syscall(command, "read", errno: error)
            }
        }
        throw VICIError(.timedOut, command: command, detail: "too many reads without a complete packet")
    }

    /// Like ``receive(deadline:command:)`` but returns nil when nothing complete arrives within `wait`
    /// (for the event reader's short polls). Throws on errors and end of stream.
    func receiveIfReady(within wait: Duration, command: String) throws(VICIError) -> VICIPacket? {
        do throws(VICIError) {
            return try receive(deadline: Deadline(after: wait), command: command)
        } catch {
            if error.code == .timedOut { return nil }
            throw error
        }
    }
}
