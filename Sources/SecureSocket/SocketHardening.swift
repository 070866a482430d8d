import Glibc
import IPAddressing
import SystemPackage
import XFRM

/// What `WSASetSocketSecurity` does to a socket besides its per-socket policy, so that the application cannot
/// reach around that policy afterwards.
///
/// - No port sharing: `SO_REUSEPORT` is cleared (it would let another socket of the same user bind the port and
///   take a share of its connections). On a TCP socket `SO_REUSEADDR` is the application's: on Linux it only lets
///   a new listener bind beside the old one's `TIME_WAIT` connections (never beside a live listener, unlike
///   Windows), which a restarted server needs. On a UDP socket it is cleared and must stay off
///   (``reusesAddress(_:)``, checked again when the socket's role settles and at each query): two UDP sockets
///   with `SO_REUSEADDR` may bind the same address and port whoever owns them, and the one bound last receives
///   the unicast datagrams, which the kernel has already decrypted.
/// - IPv6 sockets are IPv6-only: `IPV6_V6ONLY` is set, **and** a locked classic BPF socket filter drops every
///   received packet whose network header is not IPv6.
///
/// Why the filter: the per-socket policy of an `AF_INET6` socket (`IPV6_XFRM_POLICY`) has family `AF_INET6`,
/// and the kernel skips a socket policy whose family differs from the flow's (`xfrm_sk_policy_lookup`). If the
/// application clears `IPV6_V6ONLY` again (it may, until bind), an IPv4 peer reaching the socket through a
/// v4-mapped flow matches no socket policy at all and is accepted in clear. `IPV6_V6ONLY` alone is therefore
/// advice; the filter is enforcement. It runs on every packet delivered to the socket (TCP: in `tcp_v4_rcv`/
/// `tcp_v6_rcv` before the listener answers a SYN, so a v4 client never completes the handshake; UDP: before the
/// datagram is queued), it is copied into every socket a listener accepts, and `SO_LOCK_FILTER` makes the kernel
/// refuse `SO_DETACH_FILTER`, `SO_ATTACH_FILTER`, `SO_ATTACH_BPF` and clearing the lock with `EPERM`, whatever
/// the caller's capabilities. A classic filter the application attached *before* `WSASetSocketSecurity` is kept:
/// ours runs first and then hands over to it (an eBPF filter cannot be read back to be combined, so the call
/// fails instead of dropping it). After the call the application can no longer attach a filter of its own.
///
/// ## Limitation: sending to a v4-mapped address
///
/// A socket filter sees only received packets. An `AF_INET6` socket with `IPV6_V6ONLY` cleared that sends to
/// `::ffff:a.b.c.d` with a plain `connect()`/`sendto()` (`WSAConnect` refuses v4-mapped peers) takes the kernel's
/// IPv4 output path, where its `AF_INET6` socket policy does not match either, so only global IPv4 policies
/// apply. Measured on Linux 6.18 with no global policy (tier 2, `DualStackTests.testLimitation…`, captured on
/// the wire):
///
/// - **UDP `sendto()`** succeeds and the datagram, payload included, leaves **in clear** and is delivered.
///   Replies are dropped by the filter, but the outbound payload is already on the wire.
/// - **TCP `connect()`** sends a **clear SYN** and its retransmissions, without payload. The peer's SYN-ACKs are
///   dropped by the filter, so the handshake never completes (`connect()` runs into its timeout) and no `send()`
///   payload ever leaves; without the filter the connection completes and the data goes out in clear. The
///   exception is TCP Fast Open without a cookie (`TCP_FASTOPEN_NO_COOKIE`, or bit 0x4 of
///   `net.ipv4.tcp_fastopen`): `sendto(MSG_FASTOPEN)` puts the **payload in that first clear SYN**.
///
/// No per-socket kernel mechanism that the application cannot undo stops this:
/// - `IP_XFRM_POLICY` on an `AF_INET6` socket is refused (`EOPNOTSUPP`: the key manager compiles only
///   `IPV6_XFRM_POLICY` for it).
/// - `IPV6_XFRM_POLICY` takes a selector of family `AF_INET`, and that does cover the v4-mapped flow (its
///   `connect()` then gets `EAGAIN`), but a socket holds one policy per direction, so its IPv6 flows are then
///   uncovered and connect in clear: a trade, not a fix.
/// - Socket filters are receive-only; `SO_BINDTODEVICE`, `SO_MARK` and `IPV6_V6ONLY` itself are the
///   application's to change.
///
/// Blocking it needs host-wide machinery outside the socket (not tried here): a global IPv4 XFRM policy for
/// that traffic, or a cgroup `connect6`/`sendmsg6` BPF program refusing v4-mapped destinations.
public enum SocketHardening {
    /// One classic BPF instruction (`struct sock_filter`).
    public struct Instruction: Hashable, Sendable, CustomStringConvertible {
        public var code: UInt16
        public var jt: UInt8
        public var jf: UInt8
        public var k: UInt32

        public init(code: UInt16, jt: UInt8 = 0, jf: UInt8 = 0, k: UInt32) {
            self.code = code
            self.jt = jt
            self.jf = jf
            self.k = k
        }

        public var description: String { "{ 0x\(String(code, radix: 16)), \(jt), \(jf), 0x\(String(k, radix: 16)) }" }
    }

    // <linux/bpf_common.h>, <linux/filter.h> (Glibc's module map does not include them).
    static let ldByteAbsolute: UInt16 = 0x30 // BPF_LD | BPF_B | BPF_ABS
    static let ldImmediate: UInt16 = 0x00 // BPF_LD | BPF_W | BPF_IMM
    static let andImmediate: UInt16 = 0x54 // BPF_ALU | BPF_AND | BPF_K
    static let jeqImmediate: UInt16 = 0x15 // BPF_JMP | BPF_JEQ | BPF_K
    static let returnImmediate: UInt16 = 0x06 // BPF_RET | BPF_K
    /// `SKF_NET_OFF` (-0x100000): an absolute load at `SKF_NET_OFF + n` reads byte n of the network header.
    static let networkHeader = UInt32(bitPattern: -0x100000)
    /// `BPF_MAXINSNS`.
    static let maximumInstructions = 4096
    /// `SO_GET_FILTER` is `SO_ATTACH_FILTER`'s number.
    static let getFilter = SO_ATTACH_FILTER

    /// IP version nibble of the network header == 6, else drop. Falls through to what follows with A = 0.
    static let ipv6Guard: [Instruction] = [
        Instruction(code: ldByteAbsolute, k: networkHeader),
        Instruction(code: andImmediate, k: 0xf0),
        Instruction(code: jeqImmediate, jt: 1, jf: 0, k: 0x60),
        Instruction(code: returnImmediate, k: 0),
        // The classic BPF machine starts with A = X = 0; restore A for a program that follows (X is untouched).
        Instruction(code: ldImmediate, k: 0),
    ]

    /// The filter a secured `AF_INET6` socket gets: keep IPv6 packets whole, drop everything else (IPv4).
    public static let ipv6Only: [Instruction] = [
        Instruction(code: ldByteAbsolute, k: networkHeader),
        Instruction(code: andImmediate, k: 0xf0),
        Instruction(code: jeqImmediate, jt: 0, jf: 1, k: 0x60),
        Instruction(code: returnImmediate, k: 0xffff_ffff),
        Instruction(code: returnImmediate, k: 0),
    ]

    /// Hardens `fd` (of `family`) as described above. Before bind; safe to repeat on the same socket.
    public static func apply(to fd: CInt, family: IPAddressFamily, datagram: Bool = false) throws(SecureSocketError) {
        var zero: CInt = 0
        var one: CInt = 1
        let size = socklen_t(MemoryLayout<CInt>.size)
        guard setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &zero, size) == 0 else {
            throw SecureSocketError(.systemCallFailure, "clearing SO_REUSEPORT", errno: Errno(rawValue: errno))
        }
        if datagram, setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &zero, size) != 0 {
            throw SecureSocketError(.systemCallFailure, "clearing SO_REUSEADDR", errno: Errno(rawValue: errno))
        }
        guard family == .inet6 else { return }
        guard setsockopt(fd, CInt(IPPROTO_IPV6), IPV6_V6ONLY, &one, size) == 0 else {
            throw SecureSocketError(.systemCallFailure, "setting IPV6_V6ONLY", errno: Errno(rawValue: errno))
        }
        try attachIPv6OnlyFilter(fd)
    }

    /// Whether `SO_REUSEADDR` is set on the socket (a secured UDP socket must not have it).
    public static func reusesAddress(_ fd: CInt) -> Bool {
        var value: CInt = 0
        var length = socklen_t(MemoryLayout<CInt>.size)
        return getsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &value, &length) == 0 && value != 0
    }

    /// Attaches ``ipv6Only`` (in front of a classic filter already there) and locks the socket's filter.
    static func attachIPv6OnlyFilter(_ fd: CInt) throws(SecureSocketError) {
        let existing: [Instruction]
        do {
            existing = try attachedFilter(on: fd)
        } catch .permissionDenied {
            throw SecureSocketError(
                .invalidArgument,
                "the socket has an eBPF filter, which cannot be combined with the IPv6-only filter",
                errno: .permissionDenied)
        } catch {
            throw SecureSocketError(.systemCallFailure, "reading the socket's filter (SO_GET_FILTER)", errno: error)
        }
        let alreadyOurs = existing == ipv6Only || existing.starts(with: ipv6Guard)
        if !alreadyOurs {
            let program = existing.isEmpty ? ipv6Only : ipv6Guard + existing
            guard program.count <= maximumInstructions else {
                throw SecureSocketError(
                    .invalidArgument, "the socket's filter is too long to put the IPv6-only check in front of it")
            }
            if let error = attach(program, to: fd) {
                throw SecureSocketError(
                    .init(errno: error),
                    error == .notPermitted
                        ? "the socket's filter is locked (SO_LOCK_FILTER) by the application"
                        : "attaching the IPv6-only socket filter (SO_ATTACH_FILTER)",
                    errno: error)
            }
        }
        var one: CInt = 1
        guard setsockopt(fd, SOL_SOCKET, SO_LOCK_FILTER, &one, socklen_t(MemoryLayout<CInt>.size)) == 0 else {
            throw SecureSocketError(
                .systemCallFailure, "locking the socket filter (SO_LOCK_FILTER)", errno: Errno(rawValue: errno))
        }
    }

    /// `SO_ATTACH_FILTER` with `program`; the errno on failure. The `sock_fprog` and `sock_filter` bytes are laid
    /// out here by hand (native byte order, the kernel's offsets): Swift cannot see `<linux/filter.h>`.
    public static func attach(_ program: [Instruction], to fd: CInt) -> Errno? {
        var bytes = encode(program)
        return bytes.withUnsafeMutableBytes { filter -> Errno? in
            // struct sock_fprog { unsigned short len; struct sock_filter *filter; }
            let pointerOffset = MemoryLayout<UnsafeRawPointer>.alignment
            let size = pointerOffset + MemoryLayout<UnsafeRawPointer>.size
            let fprog = UnsafeMutableRawBufferPointer.allocate(byteCount: size, alignment: pointerOffset)
            defer { fprog.deallocate() }
            fprog.initializeMemory(as: UInt8.self, repeating: 0)
            fprog.storeBytes(of: UInt16(program.count), as: UInt16.self)
            fprog.storeBytes(of: filter.baseAddress, toByteOffset: pointerOffset, as: UnsafeMutableRawPointer?.self)
            return setsockopt(fd, SOL_SOCKET, SO_ATTACH_FILTER, fprog.baseAddress, socklen_t(size)) == 0
                ? nil : Errno(rawValue: errno)
        }
    }

    /// The classic filter attached to `fd` (`SO_GET_FILTER`), empty if none. Throws `EACCES` for an eBPF filter.
    public static func attachedFilter(on fd: CInt) throws(Errno) -> [Instruction] {
        // The option length counts instructions, not bytes; 0 asks for the count.
        var count = socklen_t(0)
        guard getsockopt(fd, SOL_SOCKET, getFilter, nil, &count) == 0 else { throw Errno(rawValue: errno) }
        guard count > 0 else { return [] }
        var bytes = [UInt8](repeating: 0, count: Int(count) * 8)
        var length = count
        let status = bytes.withUnsafeMutableBytes { getsockopt(fd, SOL_SOCKET, getFilter, $0.baseAddress, &length) }
        guard status == 0 else { throw Errno(rawValue: errno) }
        return decode(bytes.prefix(Int(length) * 8))
    }

    /// `struct sock_filter { __u16 code; __u8 jt; __u8 jf; __u32 k; }`, 8 bytes each.
    static func encode(_ program: [Instruction]) -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: program.count * 8)
        bytes.withUnsafeMutableBytes { raw in
            for (index, instruction) in program.enumerated() {
                raw.storeBytes(of: instruction.code, toByteOffset: index * 8, as: UInt16.self)
                raw.storeBytes(of: instruction.jt, toByteOffset: index * 8 + 2, as: UInt8.self)
                raw.storeBytes(of: instruction.jf, toByteOffset: index * 8 + 3, as: UInt8.self)
                raw.storeBytes(of: instruction.k, toByteOffset: index * 8 + 4, as: UInt32.self)
            }
        }
        return bytes
    }

    static func decode(_ bytes: ArraySlice<UInt8>) -> [Instruction] {
        bytes.withUnsafeBytes { raw in
            (0..<raw.count / 8).map { index in
                Instruction(
                    code: raw.loadUnaligned(fromByteOffset: index * 8, as: UInt16.self),
                    jt: raw[index * 8 + 2], jf: raw[index * 8 + 3],
                    k: raw.loadUnaligned(fromByteOffset: index * 8 + 4, as: UInt32.self))
            }
        }
    }
}
