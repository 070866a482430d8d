import Glibc
import SystemPackage

/// The kernel's word for who is at the other end of a control connection (`SO_PEERCRED`, taken when the
/// connection was made): what the daemon checks a client against, and what a client checks the daemon against.
public struct PeerCredentials: Codable, Hashable, Sendable, CustomStringConvertible {
    public var pid: Int32
    public var uid: UInt32
    public var gid: UInt32

    public init(pid: Int32, uid: UInt32, gid: UInt32) {
        self.pid = pid
        self.uid = uid
        self.gid = gid
    }

    public var description: String { "pid \(pid) uid \(uid) gid \(gid)" }
}

/// Why a control connection failed.
public enum ControlChannelError: Error, Hashable, Sendable, CustomStringConvertible {
    /// A system call failed.
    case system(String, Errno)
    /// The other end sent something that is not a message of the protocol (the connection is then closed).
    case malformed(ControlProtocolError)
    /// The other end closed the connection.
    case closed
    /// Nothing arrived in time.
    case timedOut

    public var errno: Errno? { if case .system(_, let errno) = self { errno } else { nil } }

    public var description: String {
        switch self {
        case .system(let call, let errno): "\(call): \(errno)"
        case .malformed(let error): "\(error)"
        case .closed: "the control connection was closed"
        case .timedOut: "no answer in time on the control connection"
        }
    }
}

/// One end of a control connection, or a listening socket: `AF_UNIX`, `SOCK_SEQPACKET` (a datagram per
/// message, in order, and the attached descriptor travels with its message), on an abstract address, which the
/// kernel scopes to the network namespace: each namespace has its own daemon at the same name, found by no file.
/// (An abstract name carries no file mode: whoever binds it first owns it, so each end checks the other's
/// credentials, ``peerCredentials``.)
///
/// Sending is safe from several threads (one datagram per call); receiving is for one thread at a time.
public final class ControlChannel: @unchecked Sendable {
    /// The address every library and daemon in a namespace use, unless told otherwise (`WSS_KEYD_ADDRESS`).
    public static var defaultName: String {
        getenv("WSS_KEYD_ADDRESS").map { String(cString: $0) } ?? "winsock-secure-socket/keyd"
    }

    public let descriptor: CInt
    private var buffer = [UInt8](repeating: 0, count: ControlMessage.maximumFrameBytes + 1)

    init(descriptor: CInt) { self.descriptor = descriptor }

    deinit { Glibc.close(descriptor) }

    /// A channel over a descriptor someone else opened (the listening socket systemd passes).
    public static func adopting(_ descriptor: CInt) -> ControlChannel { ControlChannel(descriptor: descriptor) }

    static func withAddress<T>(_ name: String, _ body: (UnsafePointer<sockaddr>, socklen_t) -> T) -> T? {
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(name.utf8)
        let capacity = MemoryLayout.size(ofValue: address.sun_path)
        guard !bytes.isEmpty, bytes.count < capacity else { return nil }
        withUnsafeMutableBytes(of: &address.sun_path) { path in
            path[0] = 0 // abstract
            for (index, byte) in bytes.enumerated() { path[index + 1] = byte }
        }
        let length = socklen_t(MemoryLayout<sa_family_t>.size + 1 + bytes.count)
        return withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { body($0, length) }
        }
    }

    static func makeSocket() throws(ControlChannelError) -> CInt {
        let fd = socket(AF_UNIX, Int32(SOCK_SEQPACKET.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw .system("socket(AF_UNIX, SOCK_SEQPACKET)", Errno(rawValue: errno)) }
        return fd
    }

    /// Listens on the abstract address `name` of the current network namespace (`EADDRINUSE`: a daemon is there).
    public static func listen(name: String = defaultName, backlog: CInt = 128) throws(ControlChannelError)
        -> ControlChannel
    {
        let fd = try makeSocket()
        let bound = withAddress(name) { Glibc.bind(fd, $0, $1) } ?? -1
        guard bound == 0, Glibc.listen(fd, backlog) == 0 else {
            let error = Errno(rawValue: errno)
            Glibc.close(fd)
            throw .system("bind/listen @\(name)", error)
        }
        return ControlChannel(descriptor: fd)
    }

    /// Connects to the daemon at the abstract address `name` (`ECONNREFUSED`: nobody listens there).
    public static func connect(name: String = defaultName) throws(ControlChannelError) -> ControlChannel {
        let fd = try makeSocket()
        while true {
            let rc = withAddress(name) { Glibc.connect(fd, $0, $1) } ?? -1
            if rc == 0 { return ControlChannel(descriptor: fd) }
            if errno == EINTR { continue }
            let error = Errno(rawValue: errno)
            Glibc.close(fd)
            throw .system("connect @\(name)", error)
        }
    }

    /// The next client of a listening channel (blocks; `EINVAL` once ``shutdown()`` ended the listener).
    public func accept() throws(ControlChannelError) -> ControlChannel {
        while true {
            // (accept4 is not in Swift's Glibc module: close-on-exec is set at once instead.)
            let fd = Glibc.accept(descriptor, nil, nil)
            if fd >= 0 {
                _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
                return ControlChannel(descriptor: fd)
            }
            switch errno {
            case EINTR, ECONNABORTED: continue
            default: throw .system("accept", Errno(rawValue: errno))
            }
        }
    }

    /// Who is at the other end (as of the connection).
    public var peerCredentials: PeerCredentials? {
        // struct ucred (not in Swift's Glibc module without _GNU_SOURCE): pid, uid, gid, 32 bits each.
        struct KernelCredentials {
            var pid: Int32 = 0
            var uid: UInt32 = 0
            var gid: UInt32 = 0
        }
        var credentials = KernelCredentials()
        var length = socklen_t(MemoryLayout<KernelCredentials>.size)
        guard getsockopt(descriptor, SOL_SOCKET, SO_PEERCRED, &credentials, &length) == 0 else { return nil }
        return PeerCredentials(pid: credentials.pid, uid: credentials.uid, gid: credentials.gid)
    }

    /// Wakes a thread blocked in ``accept()`` or ``receive(timeout:)`` on this channel: they fail from now on.
    public func shutdown() { _ = Glibc.shutdown(descriptor, CInt(SHUT_RDWR)) }

    /// Sends one message, with `socket` attached (`SCM_RIGHTS`) when given. The descriptor stays the caller's.
    public func send(_ frame: ControlFrame, socket: CInt? = nil) throws(ControlChannelError) {
        var bytes = frame.encoded()
        let control = socket.map { Self.rightsMessage($0) } ?? []
        let sent = bytes.withUnsafeMutableBytes { payload in
            var control = control
            return control.withUnsafeMutableBytes { controlBytes in
                var vector = iovec(iov_base: payload.baseAddress, iov_len: payload.count)
                return withUnsafeMutablePointer(to: &vector) { vectorPointer in
                    var header = msghdr()
                    header.msg_iov = vectorPointer
                    header.msg_iovlen = 1
                    if !controlBytes.isEmpty {
                        header.msg_control = controlBytes.baseAddress
                        header.msg_controllen = controlBytes.count
                    }
                    while true {
                        let rc = sendmsg(descriptor, &header, CInt(MSG_NOSIGNAL))
                        if rc < 0 && errno == EINTR { continue }
                        return rc
                    }
                }
            }
        }
        guard sent >= 0 else {
            if errno == EPIPE || errno == ECONNRESET { throw .closed }
            throw .system("sendmsg", Errno(rawValue: errno))
        }
    }

    /// The next message and the descriptor attached to it, if any (the caller's to close). A message that is too
    /// long, carries more than one descriptor, carries one it should not or lacks one it needs is refused
    /// (``ControlChannelError/malformed(_:)``), and whatever descriptors came with it are closed.
    public func receive(timeout: Duration? = nil) throws(ControlChannelError) -> (ControlFrame, CInt?) {
        if let timeout {
            let (seconds, attoseconds) = timeout.components
            let milliseconds = Int32(clamping: max(0, seconds * 1000 + attoseconds / 1_000_000_000_000_000))
            var pfd = pollfd(fd: descriptor, events: Int16(POLLIN), revents: 0)
            while true {
                let ready = poll(&pfd, 1, milliseconds)
                if ready < 0 && errno == EINTR { continue }
                if ready < 0 { throw .system("poll", Errno(rawValue: errno)) }
                if ready == 0 { throw .timedOut }
                break
            }
        }
        // Room for a few descriptors, so that more than one is seen (and closed) rather than truncated away.
        var control = [UInt8](repeating: 0, count: Self.controlSpace(descriptors: 4))
        var flags: CInt = 0
        let count = buffer.withUnsafeMutableBytes { payload in
            control.withUnsafeMutableBytes { controlBytes in
                var vector = iovec(iov_base: payload.baseAddress, iov_len: payload.count)
                return withUnsafeMutablePointer(to: &vector) { vectorPointer in
                    var header = msghdr()
                    header.msg_iov = vectorPointer
                    header.msg_iovlen = 1
                    header.msg_control = controlBytes.baseAddress
                    header.msg_controllen = controlBytes.count
                    while true {
                        let rc = recvmsg(descriptor, &header, CInt(MSG_CMSG_CLOEXEC))
                        if rc < 0 && errno == EINTR { continue }
                        flags = header.msg_flags
                        return (rc, header.msg_controllen)
                    }
                }
            }
        }
        let (received, controlLength) = count
        guard received >= 0 else {
            if errno == ECONNRESET { throw .closed }
            throw .system("recvmsg", Errno(rawValue: errno))
        }
        let descriptors = Self.descriptors(in: control, length: controlLength)
        func refuse(_ error: ControlProtocolError) -> ControlChannelError {
            for fd in descriptors { Glibc.close(fd) }
            return .malformed(error)
        }
        if received == 0 && descriptors.isEmpty { throw .closed }
        if flags & CInt(MSG_TRUNC) != 0 { throw refuse(.oversized(received)) }
        if flags & CInt(MSG_CTRUNC) != 0 { throw refuse(.invalid("too many descriptors")) }
        guard descriptors.count <= 1 else { throw refuse(.invalid("\(descriptors.count) descriptors")) }
        let frame: ControlFrame
        do {
            frame = try ControlFrame(decoding: Array(buffer[0..<received]))
        } catch {
            throw refuse(error)
        }
        guard frame.message.carriesSocket == !descriptors.isEmpty else {
            throw refuse(.invalid(descriptors.isEmpty ? "a socket is missing" : "an unexpected descriptor"))
        }
        return (frame, descriptors.first)
    }

    // MARK: - SCM_RIGHTS

    static var headerSize: Int { MemoryLayout<cmsghdr>.size }
    static func aligned(_ length: Int) -> Int { (length + MemoryLayout<Int>.size - 1) & ~(MemoryLayout<Int>.size - 1) }
    static func controlSpace(descriptors: Int) -> Int {
        aligned(headerSize) + aligned(descriptors * MemoryLayout<CInt>.size)
    }

    static func rightsMessage(_ fd: CInt) -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: controlSpace(descriptors: 1))
        bytes.withUnsafeMutableBytes { raw in
            var header = cmsghdr()
            header.cmsg_len = aligned(headerSize) + MemoryLayout<CInt>.size
            header.cmsg_level = SOL_SOCKET
            header.cmsg_type = CInt(SCM_RIGHTS)
            raw.storeBytes(of: header, as: cmsghdr.self)
            raw.storeBytes(of: fd, toByteOffset: aligned(headerSize), as: CInt.self)
        }
        return bytes
    }

    /// Every descriptor `SCM_RIGHTS` messages in `control` carry (bounded by `length`).
    static func descriptors(in control: [UInt8], length: Int) -> [CInt] {
        var found: [CInt] = []
        var offset = 0
        let end = min(length, control.count)
        control.withUnsafeBytes { raw in
            while offset + headerSize <= end {
                let header = raw.loadUnaligned(fromByteOffset: offset, as: cmsghdr.self)
                let messageLength = Int(header.cmsg_len)
                guard messageLength >= headerSize, offset + messageLength <= end else { break }
                if header.cmsg_level == SOL_SOCKET && header.cmsg_type == CInt(SCM_RIGHTS) {
                    let dataStart = offset + aligned(headerSize)
                    var position = dataStart
                    while position + MemoryLayout<CInt>.size <= offset + messageLength {
                        found.append(raw.loadUnaligned(fromByteOffset: position, as: CInt.self))
                        position += MemoryLayout<CInt>.size
                    }
                }
                offset += aligned(messageLength)
            }
        }
        return found
    }
}
