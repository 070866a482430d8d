import CNetlink
import Glibc
import IPAddressing
import SystemPackage

/// Per-socket XFRM policies: `setsockopt(IP_XFRM_POLICY)` on IPv4 sockets, `setsockopt(IPV6_XFRM_POLICY)` on
/// IPv6 sockets. A socket policy is used instead of the SPD for that socket's flows (of its family).
///
/// What the kernel does (see `kernel-notes.md`): one policy per direction, `dir` must be in or out, a second
/// call for a direction replaces it; removal clears both directions; policies cannot be read back
/// (`getsockopt` gives `ENOPROTOOPT`); a listener's policies are copied into each accepted socket; an
/// `AF_INET6` policy does not apply to v4-mapped peers. Setting or clearing needs `CAP_NET_ADMIN`.
public enum SocketPolicy {
    /// Sets `policy` for its direction on the socket `fd`, replacing what that direction had.
    ///
    /// The policy's selector family must match the socket's (`.inet` on IPv4 sockets; `.inet6` on IPv6
    /// sockets, except to cover v4-mapped flows). The corresponding C call is
    /// `setsockopt(fd, SOL_IP, IP_XFRM_POLICY, &xfrm_userpolicy_info + xfrm_user_tmpl[n], len)`.
    public static func set(_ policy: XFRMPolicy, on fd: FileDescriptor) throws(XFRMError) {
        try set(policy, on: fd, family: try socketFamily(fd))
    }

    /// `set` with the socket's family already known (one `SO_DOMAIN` lookup per call of the public API). The
    /// operation's name is built only for an error: this is the hot path of `WSASetSocketSecurity`.
    private static func set(_ policy: XFRMPolicy, on fd: FileDescriptor, family: IPAddressFamily) throws(XFRMError) {
        func operation() -> String { "setsockopt \(optionName(family))" }
        try check(policy, family: family)
        let (level, option) = socketOption(family)
        let bytes = encode(policy)
        let rc = bytes.withUnsafeBytes { setsockopt(fd.rawValue, level, option, $0.baseAddress, socklen_t($0.count)) }
        guard rc == 0 else { throw .syscall(operation(), "setsockopt", errno: Errno(rawValue: errno)) }
    }

    /// Sets the same templates for both directions: the usual way to require IPsec on a socket.
    public static func require(
        _ templates: [XFRMTemplate], on fd: FileDescriptor,
        selector: XFRMSelector? = nil
    ) throws(XFRMError) {
        try require(templates, on: fd, family: try socketFamily(fd), selector: selector)
    }

    /// ``require(_:on:selector:)`` for a socket whose family the caller already read (one system call less).
    /// `family` must be the socket's own (`SO_DOMAIN`): the kernel refuses the other family's option.
    public static func require(
        _ templates: [XFRMTemplate], on fd: FileDescriptor, family: IPAddressFamily,
        selector: XFRMSelector? = nil
    ) throws(XFRMError) {
        let selector = selector ?? .any(family)
        var policy = XFRMPolicy(selector: selector, direction: .outbound, templates: templates)
        try check(policy, family: family)
        // One buffer on the stack, the templates encoded once: only the direction differs between the calls
        // (this is the hot path of `WSASetSocketSecurity`).
        let infoSize = MemoryLayout<xfrm_userpolicy_info>.size
        let templateSize = MemoryLayout<xfrm_user_tmpl>.size
        let (level, option) = socketOption(family)
        let failed: (XFRMDirection, Errno)? = withUnsafeTemporaryAllocation(
            byteCount: infoSize + templates.count * templateSize,
            alignment: MemoryLayout<xfrm_userpolicy_info>.alignment
        ) { buffer in
            for (index, template) in templates.enumerated() {
                buffer.storeBytes(
                    of: template.kernelValue(policyFamily: selector.family),
                    toByteOffset: infoSize + index * templateSize, as: xfrm_user_tmpl.self)
            }
            func apply(_ direction: XFRMDirection) -> (XFRMDirection, Errno)? {
                policy.direction = direction
                buffer.storeBytes(of: policy.userPolicyInfo, toByteOffset: 0, as: xfrm_userpolicy_info.self)
                let rc = setsockopt(fd.rawValue, level, option, buffer.baseAddress, socklen_t(buffer.count))
                return rc == 0 ? nil : (direction, Errno(rawValue: errno))
            }
            return apply(.outbound) ?? apply(.inbound)
        }
        if let (direction, error) = failed {
            throw .syscall("setsockopt \(optionName(family)) \(direction)", "setsockopt", errno: error)
        }
    }

    /// Binds the socket to one SA pair: its outbound policy's template carries `outboundSPI`, its inbound
    /// policy's `inboundSPI`, both with `template`'s reqid, mode and level. Output then uses only that SA (even
    /// when a newer one with the same reqid covers the flow) and input accepts only packets it decrypted
    /// (`xfrm_state_find` and `xfrm_state_ok` compare a non-zero template SPI). Replaces the socket's policies
    /// (a connected or accepted socket's too, at once); never leaves the socket without one.
    ///
    /// Pin only to SAs the kernel already holds: a pinned outbound SPI that is missing makes the kernel create
    /// a larval state with that SPI, which then blocks the keying daemon's `XFRM_MSG_NEWSA` for it (`EEXIST`).
    public static func pin(
        _ template: XFRMTemplate, inboundSPI: UInt32, outboundSPI: UInt32, on fd: FileDescriptor,
        family: IPAddressFamily
    ) throws(XFRMError) {
        precondition(inboundSPI != 0 && outboundSPI != 0, "a pinned template names an SA")
        for (direction, spi) in [(XFRMDirection.outbound, outboundSPI), (.inbound, inboundSPI)] {
            var pinned = template
            pinned.spi = spi
            try set(
                XFRMPolicy(selector: .any(family), direction: direction, templates: [pinned]), on: fd,
                family: family)
        }
    }

    /// Leaves every flow of the socket to the SPD: both per-socket policies get `template` with a selector that
    /// matches no flow (``XFRMSelector/noFlow(_:)``), so the kernel, finding no socket policy for a flow, looks
    /// the flow up in the SPD. A socket that must not leave clear text then needs SPD policies covering all its
    /// flows (a listener: one per accepted flow, pinned, and one for its port). Accepted sockets inherit it.
    public static func deferToSPD(_ template: XFRMTemplate, on fd: FileDescriptor, family: IPAddressFamily)
        throws(XFRMError)
    {
        for direction in [XFRMDirection.outbound, .inbound] {
            try set(
                XFRMPolicy(selector: .noFlow(family), direction: direction, templates: [template]), on: fd,
                family: family)
        }
    }

    /// Re-pins one direction only (a rekey makes the new inbound SA before the new outbound one).
    public static func pin(
        _ template: XFRMTemplate, spi: UInt32, direction: XFRMDirection, on fd: FileDescriptor,
        family: IPAddressFamily
    ) throws(XFRMError) {
        precondition(spi != 0, "a pinned template names an SA")
        var pinned = template
        pinned.spi = spi
        try set(XFRMPolicy(selector: .any(family), direction: direction, templates: [pinned]), on: fd, family: family)
    }

    /// Lets the socket's traffic bypass every global policy (an `allow` policy without templates in both
    /// directions), as IKE daemons do on their own sockets.
    public static func setBypass(on fd: FileDescriptor) throws(XFRMError) {
        try require([], on: fd)
    }

    /// Removes the socket's policies, both directions (the kernel has no per-direction removal).
    /// The corresponding C call is `setsockopt(fd, SOL_IP, IP_XFRM_POLICY, NULL, 0)`.
    public static func clear(on fd: FileDescriptor) throws(XFRMError) {
        let family = try socketFamily(fd)
        let operation = "clear \(optionName(family))"
        let (level, option) = socketOption(family)
        guard setsockopt(fd.rawValue, level, option, nil, 0) == 0 else {
            throw .syscall(operation, "setsockopt", errno: Errno(rawValue: errno))
        }
    }

    /// Whether the kernel could take `policy` as a socket policy of `family` (an in or out direction, a selector
    /// family, prefixes and templates within bounds). The operation's name is built only for an error.
    private static func check(_ policy: XFRMPolicy, family: IPAddressFamily) throws(XFRMError) {
        func operation() -> String { "setsockopt \(optionName(family))" }
        guard policy.direction == .inbound || policy.direction == .outbound else {
            throw .invalid(operation(), "a socket policy's direction is in or out, not \(policy.direction)")
        }
        guard policy.selector.family == .inet || policy.selector.family == .inet6 else {
            throw .invalid(operation(), "a socket policy needs a selector family (inet or inet6)")
        }
        do {
            try policy.validate(operation: "")
        } catch {
            var named = error
            named.operation = operation()
            throw named
        }
    }

    /// The exact bytes given to `setsockopt`: `struct xfrm_userpolicy_info` then the templates.
    public static func encode(_ policy: XFRMPolicy) -> [UInt8] {
        withUnsafeBytes(of: policy.userPolicyInfo) { Array($0) } + policy.templateBytes
    }

    /// `(SOL_IP, IP_XFRM_POLICY)` or `(SOL_IPV6, IPV6_XFRM_POLICY)`.
    private static func socketOption(_ family: IPAddressFamily) -> (level: CInt, option: CInt) {
        family == .inet6 ? (CInt(IPPROTO_IPV6), _IPV6_XFRM_POLICY) : (CInt(IPPROTO_IP), _IP_XFRM_POLICY)
    }

    /// The socket's address family (`SO_DOMAIN`); only IPv4 and IPv6 sockets take XFRM policies.
    static func socketFamily(_ fd: FileDescriptor) throws(XFRMError) -> IPAddressFamily {
        var domain: CInt = 0
        var length = socklen_t(MemoryLayout<CInt>.size)
        guard getsockopt(fd.rawValue, SOL_SOCKET, SO_DOMAIN, &domain, &length) == 0 else {
            throw .syscall("socket policy", "getsockopt SO_DOMAIN", errno: Errno(rawValue: errno))
        }
        switch domain {
        case AF_INET: return .inet
        case AF_INET6: return .inet6
        default:
            throw XFRMError(
                .invalidArgument, operation: "socket policy", errno: .notSupported,
                detail: "socket family \(domain) takes no XFRM policy (only AF_INET and AF_INET6)")
        }
    }

    private static func optionName(_ family: IPAddressFamily) -> String {
        family == .inet6 ? "IPV6_XFRM_POLICY" : "IP_XFRM_POLICY"
    }
}
