import CNetlink
import Glibc
import SystemPackage

/// One NETLINK_XFRM socket, opened through libmnl (which also rejects datagrams not sent by the kernel).
///
/// Not thread-safe: ``XFRMClient`` guards it with a mutex, ``XFRMMonitor`` gives it to one reader thread.
final class NetlinkSocket {
    private let handle: OpaquePointer
    let portID: UInt32
    private var nextSequence: UInt32
    var receiveBuffer: [UInt8]

    /// Opens and binds a socket in `namespace`, joined to `groups` (XFRMNLGRP_* numbers).
    init(
        namespace: NetworkNamespace, groups: [UInt32] = [], receiveTimeout: Duration,
        receiveBufferBytes: Int32? = nil, operation: String
    ) throws(XFRMError) {
        let opened: Result<OpaquePointer, XFRMError>
        do {
            opened = try namespace.perform { () -> Result<OpaquePointer, XFRMError> in
                guard let handle = mnl_socket_open2(_NETLINK_XFRM, Int32(SOCK_CLOEXEC.rawValue)) else {
                    return .failure(.syscall(operation, "socket(NETLINK_XFRM)", errno: Errno(rawValue: errno)))
                }
                return .success(handle)
            }
        } catch let error as XFRMError {
            throw error
        } catch {
            throw XFRMError(.systemCall, operation: operation, detail: "\(error)")
        }
        let handle = try opened.get()
        self.handle = handle
        var one: CInt = 1
        // Extended acks carry the kernel's error text; capped acks do not echo our request back.
        _ = mnl_socket_setsockopt(handle, _NETLINK_EXT_ACK, &one, socklen_t(MemoryLayout<CInt>.size))
        _ = mnl_socket_setsockopt(handle, _NETLINK_CAP_ACK, &one, socklen_t(MemoryLayout<CInt>.size))
        let (seconds, attoseconds) = receiveTimeout.components
        var timeout = timeval(tv_sec: Int(seconds), tv_usec: Int(attoseconds / 1_000_000_000_000))
        let fd = mnl_socket_get_fd(handle)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
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
            throw .syscall(operation, "bind", errno: error)
        }
        portID = mnl_socket_get_portid(handle)
        nextSequence = UInt32(truncatingIfNeeded: time(nil))
        receiveBuffer = [UInt8](repeating: 0, count: 1 << 16)
    }

    deinit { mnl_socket_close(handle) }

    var fileDescriptor: CInt { mnl_socket_get_fd(handle) }

    func allocateSequence() -> UInt32 {
        nextSequence &+= 1
        if nextSequence == 0 { nextSequence = 1 }
        return nextSequence
    }

    func send(_ bytes: [UInt8], operation: String) throws(XFRMError) {
        let sent = bytes.withUnsafeBytes { mnl_socket_sendto(handle, $0.baseAddress, $0.count) }
        guard sent >= 0 else { throw .syscall(operation, "sendto", errno: Errno(rawValue: errno)) }
        guard sent == bytes.count else {
            throw XFRMError(.systemCall, operation: operation, detail: "sendto wrote \(sent) of \(bytes.count) bytes")
        }
    }

    /// Receives one datagram. Returns nil when the receive timeout passed with nothing to read.
    ///
    /// Datagrams whose sender address is not the kernel's (`nl_pid != 0`) or that were truncated are errors.
    func receive(operation: String) throws(XFRMError) -> ArraySlice<UInt8>? {
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
                    throw XFRMError(
                        .unexpectedSender, operation: operation,
                        detail: "netlink datagram from port \(sender.nl_pid), not the kernel")
                }
                return receiveBuffer[0..<count]
            }
            let error = Errno(rawValue: errno)
            switch error {
            case .interrupted: continue
            case .resourceTemporarilyUnavailable: return nil
            case .noBufferSpace:
                throw XFRMError(
                    .eventsLost, operation: operation, errno: error,
                    detail: "the kernel dropped messages: receive buffer overrun")
            default:
                throw .syscall(operation, "recvmsg", errno: error)
            }
        }
    }
}
