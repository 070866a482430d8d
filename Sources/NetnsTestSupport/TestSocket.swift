import ALE
import Foundation
import IPAddressing
import SystemPackage
import XFRM

/// A failed socket call, with its errno.
public struct SocketError: Error, CustomStringConvertible {
    public var call: String
    public var errno: Errno
    public var description: String { "\(call): \(errno) (errno \(errno.rawValue))" }
}

/// A blocking TCP or UDP socket for tests and demos, created inside a given namespace.
public final class TestSocket: @unchecked Sendable {
    public enum Kind: Sendable { case tcp, udp }

    public let fd: FileDescriptor
    public let family: IPAddressFamily
    public let kind: Kind
    private var closed = false

    init(fd: FileDescriptor, family: IPAddressFamily, kind: Kind) {
        self.fd = fd
        self.family = family
        self.kind = kind
    }

    /// Creates a socket of `family` in `namespace` (the socket stays in that namespace).
    public static func make(in namespace: NetworkNamespace, family: IPAddressFamily, kind: Kind) throws -> TestSocket {
        let fd: CInt = try namespace.perform {
            let type = kind == .tcp ? CInt(SOCK_STREAM.rawValue) : CInt(SOCK_DGRAM.rawValue)
            let fd = socket(family == .inet6 ? AF_INET6 : AF_INET, type | CInt(SOCK_CLOEXEC.rawValue), 0)
            guard fd >= 0 else { throw SocketError(call: "socket", errno: Errno(rawValue: errno)) }
            return fd
        }
        let result = TestSocket(fd: FileDescriptor(rawValue: fd), family: family, kind: kind)
        if family == .inet6 {
            var one: CInt = 1
            setsockopt(fd, CInt(IPPROTO_IPV6), IPV6_V6ONLY, &one, socklen_t(MemoryLayout<CInt>.size))
        }
        var one: CInt = 1
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<CInt>.size))
        return result
    }

    deinit { close() }

    public func close() {
        guard !closed else { return }
        closed = true
        try? fd.close()
    }

    /// Closes with `SO_LINGER {on, 0}`: the kernel frees the socket (and its XFRM policies) at once instead
    /// of keeping it in FIN_WAIT while unsent data waits for an SA that will never come.
    public func closeAbortively() {
        guard !closed else { return }
        var option = linger(l_onoff: 1, l_linger: 0)
        setsockopt(fd.rawValue, SOL_SOCKET, SO_LINGER, &option, socklen_t(MemoryLayout<linger>.size))
        close()
    }

    /// Sets send and receive timeouts so no call blocks for longer than `seconds`.
    public func setTimeouts(_ seconds: Double) {
        var tv = timeval(tv_sec: Int(seconds), tv_usec: Int((seconds - Double(Int(seconds))) * 1e6))
        setsockopt(fd.rawValue, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        setsockopt(fd.rawValue, SOL_SOCKET, SO_SNDTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
    }

    public func bind(_ address: IPAddress, port: UInt16) throws {
        try withSockaddr(address, port) { sa, len in
            guard Glibc.bind(fd.rawValue, sa, len) == 0 else {
                throw SocketError(call: "bind", errno: Errno(rawValue: errno))
            }
        }
    }

    public func listen(backlog: Int32 = 16) throws {
        guard Glibc.listen(fd.rawValue, backlog) == 0 else {
            throw SocketError(call: "listen", errno: Errno(rawValue: errno))
        }
    }

    /// Waits at most `timeout` seconds for a connection.
    public func accept(timeout: Double) throws -> TestSocket {
        var pfd = pollfd(fd: fd.rawValue, events: Int16(POLLIN), revents: 0)
        let ready = poll(&pfd, 1, Int32(timeout * 1000))
        guard ready > 0 else {
            throw SocketError(call: "accept (poll)", errno: ready == 0 ? .timedOut : Errno(rawValue: errno))
        }
        let child = Glibc.accept(fd.rawValue, nil, nil)
        guard child >= 0 else { throw SocketError(call: "accept", errno: Errno(rawValue: errno)) }
        return TestSocket(fd: FileDescriptor(rawValue: child), family: family, kind: kind)
    }

    /// One `connect()` call; returns the errno it failed with, or nil on success.
    public func connectOnce(_ address: IPAddress, port: UInt16) -> Errno? {
        do {
            return try withSockaddr(address, port) { sa, len -> Errno? in
                Glibc.connect(fd.rawValue, sa, len) == 0 ? nil : Errno(rawValue: errno)
            }
        } catch {
            return .invalidArgument
        }
    }

    /// Connects, retrying while the kernel answers `EAGAIN` (no SA yet), at most `seconds` long.
    /// Returns how many attempts it took.
    @discardableResult
    public func connect(_ address: IPAddress, port: UInt16, retryFor seconds: Double = 5) throws -> Int {
        let deadline = Date().addingTimeInterval(seconds)
        var attempts = 0
        while true {
            attempts += 1
            guard let error = connectOnce(address, port: port) else { return attempts }
            guard error == .resourceTemporarilyUnavailable, Date() < deadline, attempts < 10_000 else {
                throw SocketError(call: "connect (after \(attempts) attempts)", errno: error)
            }
            usleep(10_000)
        }
    }

    public func send(_ bytes: [UInt8]) throws {
        var offset = 0
        while offset < bytes.count {
            let n = bytes[offset...].withUnsafeBytes {
                Glibc.send(fd.rawValue, $0.baseAddress, $0.count, CInt(MSG_NOSIGNAL))
            }
            guard n > 0 else { throw SocketError(call: "send", errno: Errno(rawValue: errno)) }
            offset += n
        }
    }

    /// One `sendto()`; returns the errno it failed with, or nil.
    public func sendTo(_ bytes: [UInt8], _ address: IPAddress, port: UInt16) -> Errno? {
        do {
            return try withSockaddr(address, port) { sa, len -> Errno? in
                bytes.withUnsafeBytes { Glibc.sendto(fd.rawValue, $0.baseAddress, $0.count, 0, sa, len) } >= 0
                    ? nil : Errno(rawValue: errno)
            }
        } catch {
            return .invalidArgument
        }
    }

    /// Receives up to `count` bytes, waiting at most `timeout` seconds.
    public func receive(upTo count: Int = 65536, timeout: Double) throws -> [UInt8] {
        var pfd = pollfd(fd: fd.rawValue, events: Int16(POLLIN), revents: 0)
        let ready = poll(&pfd, 1, Int32(timeout * 1000))
        guard ready > 0 else {
            throw SocketError(call: "recv (poll)", errno: ready == 0 ? .timedOut : Errno(rawValue: errno))
        }
        var buffer = [UInt8](repeating: 0, count: count)
        let n = buffer.withUnsafeMutableBytes { Glibc.recv(fd.rawValue, $0.baseAddress, $0.count, 0) }
        guard n >= 0 else { throw SocketError(call: "recv", errno: Errno(rawValue: errno)) }
        return Array(buffer.prefix(n))
    }

    /// Receives exactly `count` bytes or throws, within `timeout` seconds in all.
    public func receiveExactly(_ count: Int, timeout: Double) throws -> [UInt8] {
        var result: [UInt8] = []
        let deadline = Date().addingTimeInterval(timeout)
        while result.count < count {
            let left = deadline.timeIntervalSinceNow
            guard left > 0 else {
                throw SocketError(call: "recv (\(result.count) of \(count) bytes)", errno: .timedOut)
            }
            let chunk = try receive(upTo: count - result.count, timeout: left)
            guard !chunk.isEmpty else { throw SocketError(call: "recv (peer closed)", errno: .connectionReset) }
            result += chunk
        }
        return result
    }

    /// The bound local port.
    public var localPort: UInt16 {
        var storage = sockaddr_storage()
        var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
        withUnsafeMutablePointer(to: &storage) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { _ = getsockname(fd.rawValue, $0, &length) }
        }
        return withUnsafeBytes(of: storage) { raw in
            UInt16(bigEndian: raw.loadUnaligned(fromByteOffset: 2, as: UInt16.self))
        }
    }

    private func withSockaddr<T>(
        _ address: IPAddress, _ port: UInt16,
        _ body: (UnsafePointer<sockaddr>, socklen_t) throws -> T
    ) throws -> T {
        try IPEndpoint(address: address, port: port).withSockaddr(body)
    }
}
