import CNetlink
import Glibc
import SystemPackage
import XFRM

/// One NETLINK_SOCK_DIAG socket, opened through libmnl inside a namespace.
///
/// Not thread-safe: ``SocketDiagnostics`` guards it with a mutex, ``SocketDestroyMonitor`` gives it to one reader
/// thread. Closed on deinit.
final class DiagSocket {
    private let handle: OpaquePointer
    let portID: UInt32
    private var nextSequence: UInt32
    private var receiveBuffer: [UInt8]

    /// Opens and binds a socket in `namespace`, joined to the multicast `groups` (SKNLGRP_* numbers).
    ///
    /// `receiveTimeout` bounds each blocking receive; nil opens the socket non-blocking (the caller polls).
    init(
        namespace: NetworkNamespace, groups: [UInt32] = [], receiveTimeout: Duration?,
        receiveBufferBytes: Int32? = nil, operation: String
    ) throws(SocketDiagnosticsError) {
        let type = CInt(SOCK_CLOEXEC.rawValue) | (receiveTimeout == nil ? CInt(SOCK_NONBLOCK.rawValue) : 0)
        let opened: Result<OpaquePointer, SocketDiagnosticsError>
        do {
            opened = try namespace.perform { () -> Result<OpaquePointer, SocketDiagnosticsError> in
                guard let handle = mnl_socket_open2(_NETLINK_SOCK_DIAG, type) else {
                    return .failure(.syscall(operation, "socket(NETLINK_SOCK_DIAG)", errno: Errno(rawValue: errno)))
                }
                return .success(handle)
            }
        } catch let error as XFRMError {
            // Entering the namespace failed (its file is gone, or setns was refused).
            throw SocketDiagnosticsError(.systemCall, operation: operation, errno: error.errno, detail: "\(error)")
        } catch {
            throw SocketDiagnosticsError(.systemCall, operation: operation, detail: "\(error)")
        }
        let handle = try opened.get()
        let fd = mnl_socket_get_fd(handle)
        if let receiveTimeout {
            let (seconds, attoseconds) = receiveTimeout.components
            var timeout = timeval(tv_sec: Int(seconds), tv_usec: Int(attoseconds / 1_000_000_000_000))
            setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        }
        if var size = receiveBufferBytes {
            // SO_RCVBUFFORCE passes net.core.rmem_max when we have CAP_NET_ADMIN; SO_RCVBUF is capped by it.
            if setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &size, socklen_t(MemoryLayout<Int32>.size)) != 0 {
                setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, socklen_t(MemoryLayout<Int32>.size))
            }
        }
        let mask = groups.reduce(UInt32(0)) { $0 | cnl_group_bit($1) }
        guard mnl_socket_bind(handle, mask, pid_t(MNL_SOCKET_AUTOPID)) == 0 else {
            let error = Errno(rawValue: errno)
            mnl_socket_close(handle)
            throw .syscall(operation, groups.isEmpty ? "bind" : "bind to the destroy groups", errno: error)
        }
        self.handle = handle
        portID = mnl_socket_get_portid(handle)
        nextSequence = UInt32(truncatingIfNeeded: time(nil))
        // A dump datagram is at most 32 KiB (the kernel sizes it by our largest receive, capped there).
        receiveBuffer = [UInt8](repeating: 0, count: 1 << 16)
    }

    deinit { mnl_socket_close(handle) }

    var fileDescriptor: CInt { mnl_socket_get_fd(handle) }

    func allocateSequence() -> UInt32 {
        nextSequence &+= 1
        if nextSequence == 0 { nextSequence = 1 }
        return nextSequence
    }

    func send(_ bytes: [UInt8], operation: String) throws(SocketDiagnosticsError) {
        let sent = bytes.withUnsafeBytes { mnl_socket_sendto(handle, $0.baseAddress, $0.count) }
        guard sent >= 0 else { throw .syscall(operation, "sendto", errno: Errno(rawValue: errno)) }
        guard sent == bytes.count else {
            throw .syscall(operation, "sendto wrote \(sent) of \(bytes.count) bytes", errno: .ioError)
        }
    }

    /// Receives one datagram; nil when the receive timeout passed (or, non-blocking, nothing is queued).
    ///
    /// A datagram not sent by the kernel (sender `nl_pid != 0`) or cut short by the buffer is an error. A receive
    /// overrun (`ENOBUFS`: the kernel dropped multicast messages) throws ``SocketDiagnosticsError/Code/systemCall``
    /// with that errno; the socket stays usable.
    func receive(operation: String) throws(SocketDiagnosticsError) -> ArraySlice<UInt8>? {
        let fd = fileDescriptor
        while true {
            var sender = sockaddr_nl()
            var flags: CInt = 0
            var senderLength = socklen_t(MemoryLayout<sockaddr_nl>.size)
            let count = receiveBuffer.withUnsafeMutableBytes { buffer in
                withUnsafeMutablePointer(to: &sender) { senderPointer in
                    var vector = iovec(iov_base: buffer.baseAddress, iov_len: buffer.count)
                    return withUnsafeMutablePointer(to: &vector) { vectorPointer in
                        var message = msghdr()
                        message.msg_name = UnsafeMutableRawPointer(senderPointer)
                        message.msg_namelen = senderLength
                        message.msg_iov = vectorPointer
                        message.msg_iovlen = 1
                        let n = recvmsg(fd, &message, 0)
                        flags = message.msg_flags
                        senderLength = message.msg_namelen
                        return n
                    }
                }
            }
            if count >= 0 {
                guard flags & CInt(MSG_TRUNC) == 0 else {
                    throw .malformed(operation, "netlink datagram larger than the \(receiveBuffer.count)-byte buffer")
                }
                guard senderLength == socklen_t(MemoryLayout<sockaddr_nl>.size), sender.nl_pid == 0 else {
                    throw .malformed(operation, "netlink datagram from port \(sender.nl_pid), not the kernel")
                }
                return receiveBuffer[0..<count]
            }
            let error = Errno(rawValue: errno)
            switch error {
            case .interrupted: continue
            case .resourceTemporarilyUnavailable: return nil
            default: throw .syscall(operation, "recvmsg", errno: error)
            }
        }
    }
}
