import Glibc
import IPAddressing
import SystemPackage
import SystemSupport
import XFRM

/// What the kernel says about a socket: its identity (`SO_COOKIE`), family, type, and whether it is bound,
/// listening or connected. ALE keys endpoints by cookie, never by fd number: fds are reused, cookies are not.
public struct SocketFacts: Hashable, Sendable {
    public enum Kind: Hashable, Sendable {
        case stream, datagram
        case other(Int32)
    }

    /// The kernel's socket cookie (`SO_COOKIE`), unique for the life of the network namespace's boot.
    public var cookie: UInt64
    /// `AF_INET`, `AF_INET6` or something else (`.unspecified` then, with `rawFamily` kept).
    public var family: IPAddressFamily
    public var rawFamily: Int32
    public var kind: Kind
    /// `IPPROTO_TCP`, `IPPROTO_UDP`, ...
    public var protocolNumber: Int32
    /// Local address and port (port 0 when unbound).
    public var local: IPEndpoint?
    /// Peer address and port when connected.
    public var peer: IPEndpoint?
    /// Whether `listen()` was called (`SO_ACCEPTCONN`).
    public var isListening: Bool

    public init(
        cookie: UInt64, family: IPAddressFamily, rawFamily: Int32, kind: Kind, protocolNumber: Int32,
        local: IPEndpoint?, peer: IPEndpoint?, isListening: Bool
    ) {
        self.cookie = cookie
        self.family = family
        self.rawFamily = rawFamily
        self.kind = kind
        self.protocolNumber = protocolNumber
        self.local = local
        self.peer = peer
        self.isListening = isListening
    }

    public var isBound: Bool { (local?.port ?? 0) != 0 }
    public var isConnected: Bool { peer != nil }
    /// A responder's socket: one that answers peers on its local port (a listening TCP socket, or a bound UDP
    /// socket with no peer).
    public var answersPeers: Bool { isBound && !isConnected && (isListening || kind == .datagram) }
}

public enum SocketInspector {
    /// Reads the facts of `fd`. Throws `ENOTSOCK` for a descriptor that is not a socket, `EBADF` for one that is
    /// not open.
    public static func facts(of fd: CInt) throws(Errno) -> SocketFacts {
        func intOption(_ name: CInt) throws(Errno) -> Int32 {
            var value: Int32 = 0
            var length = socklen_t(MemoryLayout<Int32>.size)
            guard getsockopt(fd, SOL_SOCKET, name, &value, &length) == 0 else { throw Errno(rawValue: errno) }
            return value
        }
        var cookie: UInt64 = 0
        var cookieLength = socklen_t(MemoryLayout<UInt64>.size)
        guard getsockopt(fd, SOL_SOCKET, SO_COOKIE, &cookie, &cookieLength) == 0 else { throw Errno(rawValue: errno) }
        let domain = try intOption(SO_DOMAIN)
        let type = try intOption(SO_TYPE)
        let proto = try intOption(SO_PROTOCOL)
        let listening = try intOption(SO_ACCEPTCONN) != 0
        let family: IPAddressFamily = domain == AF_INET ? .inet : domain == AF_INET6 ? .inet6 : .unspecified
        let kind: SocketFacts.Kind =
            type == Int32(SOCK_STREAM.rawValue)
            ? .stream
            : type == Int32(SOCK_DGRAM.rawValue) ? .datagram : .other(type)
        return SocketFacts(
            cookie: cookie, family: family, rawFamily: domain, kind: kind, protocolNumber: proto,
            local: address(fd, getsockname), peer: address(fd, getpeername), isListening: listening)
    }

    /// The facts of a socket whose cookie, family and kind are already known (a secured socket the endpoint table
    /// holds: only TCP and UDP sockets are secured): its addresses are asked, nothing else (two system calls).
    public static func facts(
        of fd: CInt, cookie: UInt64, family: IPAddressFamily, kind: SocketFacts.Kind
    ) -> SocketFacts {
        SocketFacts(
            cookie: cookie, family: family, rawFamily: family == .inet6 ? AF_INET6 : AF_INET, kind: kind,
            protocolNumber: kind == .stream ? Int32(IPPROTO_TCP) : Int32(IPPROTO_UDP), local: address(fd, getsockname),
            peer: address(fd, getpeername), isListening: false)
    }

    /// The facts of `fd` with fewer system calls when it is an unbound TCP or UDP socket (the common case before
    /// `WSASetSocketSecurity`): cookie, type, protocol and local address. Such a socket is neither listening nor
    /// connected (`listen()` and `connect()` bind it to a port first), so those are not asked; every other socket
    /// gets the full ``facts(of:)``. The result equals ``facts(of:)``'s.
    ///
    /// The type is asked even though a TCP or UDP socket's protocol implies it: a raw socket of protocol TCP or
    /// UDP disconnected with `connect(AF_UNSPEC)` reports port 0 too, and would otherwise pass for one.
    public static func factsExpectingUnbound(of fd: CInt) throws(Errno) -> SocketFacts {
        var cookie: UInt64 = 0
        var cookieLength = socklen_t(MemoryLayout<UInt64>.size)
        guard getsockopt(fd, SOL_SOCKET, SO_COOKIE, &cookie, &cookieLength) == 0 else { throw Errno(rawValue: errno) }
        var proto: Int32 = 0
        var type: Int32 = 0
        var length = socklen_t(MemoryLayout<Int32>.size)
        guard getsockopt(fd, SOL_SOCKET, SO_PROTOCOL, &proto, &length) == 0 else { throw Errno(rawValue: errno) }
        guard getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &length) == 0 else { throw Errno(rawValue: errno) }
        let kind: SocketFacts.Kind
        switch (type, proto) {
        case (Int32(SOCK_STREAM.rawValue), Int32(IPPROTO_TCP)): kind = .stream
        case (Int32(SOCK_DGRAM.rawValue), Int32(IPPROTO_UDP)): kind = .datagram
        default: return try facts(of: fd)
        }
        // Only an AF_INET or AF_INET6 local address is read (another family's protocol numbers mean other things),
        // and only port 0 (a bound, listening or connected socket gets the full facts).
        guard let local = address(fd, getsockname), local.port == 0 else { return try facts(of: fd) }
        return SocketFacts(
            cookie: cookie, family: local.address.family, rawFamily: local.address.family == .inet ? AF_INET : AF_INET6,
            kind: kind, protocolNumber: proto, local: local, peer: nil, isListening: false)
    }

    /// Whether the descriptor is in non-blocking mode (`O_NONBLOCK`): one `fcntl`. A property of the descriptor,
    /// not of the socket (a `dup` shares it, another process's descriptor may differ), so it is asked where it
    /// matters rather than kept among the socket's facts.
    public static func isNonBlocking(_ fd: CInt) -> Bool {
        let flags = fcntl(fd, F_GETFL)
        return flags >= 0 && flags & O_NONBLOCK != 0
    }

    /// Whether `fd` has a peer (`getpeername` succeeds): one system call.
    public static func isConnected(_ fd: CInt) -> Bool { address(fd, getpeername) != nil }

    /// The socket cookie alone (cheap: one getsockopt).
    public static func cookie(of fd: CInt) -> UInt64? {
        var cookie: UInt64 = 0
        var length = socklen_t(MemoryLayout<UInt64>.size)
        return getsockopt(fd, SOL_SOCKET, SO_COOKIE, &cookie, &length) == 0 ? cookie : nil
    }

    /// This process's socket descriptors by cookie (one per socket: the lowest descriptor naming it), read from
    /// `/proc/self/fd`. O(descriptors); for the rare moment a registered descriptor no longer names its socket
    /// (closed, or closed after a `dup`).
    public static func descriptorsByCookie() -> [UInt64: CInt] {
        var found: [UInt64: CInt] = [:]
        for name in Directory.names(in: "/proc/self/fd") {
            guard let fd = CInt(name), let cookie = cookie(of: fd) else { continue }
            if let known = found[cookie], known < fd { continue }
            found[cookie] = fd
        }
        return found
    }

    private static func address(
        _ fd: CInt,
        _ call: (CInt, UnsafeMutablePointer<sockaddr>, UnsafeMutablePointer<socklen_t>) -> CInt
    )
        -> IPEndpoint?
    {
        var storage = sockaddr_storage()
        var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
        let ok = withUnsafeMutablePointer(to: &storage) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { call(fd, $0, &length) == 0 }
        }
        guard ok else { return nil }
        return withUnsafeBytes(of: storage) { IPEndpoint(sockaddr: $0.baseAddress!, length: Int(length)) }
    }
}
