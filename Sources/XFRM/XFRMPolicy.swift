/// A security policy (SP): the kernel's `struct xfrm_userpolicy_info` and its templates.
///
/// iproute2's words: `ip xfrm policy add SELECTOR dir DIR [action allow|block] [priority P] [index I]
/// [mark MARK] [tmpl TMPL...]`. The same value is used for global policies (through ``XFRMClient``) and for
/// per-socket policies (through `setsockopt`, see ``SocketPolicy``).
public struct XFRMPolicy: Hashable, Sendable, CustomStringConvertible {
    public var selector: XFRMSelector
    public var direction: XFRMDirection
    public var action: XFRMPolicyAction
    /// Lower is preferred.
    public var priority: UInt32
    /// The kernel-assigned index (`index & 7 == direction`); 0 lets the kernel choose on add.
    public var index: UInt32
    /// `XFRM_POLICY_LOCALOK` (1), `XFRM_POLICY_ICMP` (2).
    public var flags: UInt8
    public var share: UInt8
    public var lifetime: XFRMLifetime
    /// Up to 6 transforms applied in order.
    public var templates: [XFRMTemplate]
    public var mark: XFRMMark?
    /// Usage counters (filled in by `get`/`list`).
    public var counters: XFRMLifetimeCounters

    public init(
        selector: XFRMSelector, direction: XFRMDirection, action: XFRMPolicyAction = .allow,
        priority: UInt32 = 0, index: UInt32 = 0, flags: UInt8 = 0, share: UInt8 = 0,
        lifetime: XFRMLifetime = .infinite, templates: [XFRMTemplate] = [], mark: XFRMMark? = nil
    ) {
        self.selector = selector
        self.direction = direction
        self.action = action
        self.priority = priority
        self.index = index
        self.flags = flags
        self.share = share
        self.lifetime = lifetime
        self.templates = templates
        self.mark = mark
        self.counters = XFRMLifetimeCounters()
    }

    /// The most templates the kernel accepts in one policy (`XFRM_MAX_DEPTH`, kernel-internal).
    public static let maximumTemplates = 6

    /// `src 10.0.0.1/32 dst 10.0.0.2/32 dir out priority 0 action allow tmpl …`.
    public var description: String {
        var text = "\(selector) dir \(direction) priority \(priority)"
        if index != 0 { text += " index \(index)" }
        text += " action \(action)"
        if let mark { text += " mark 0x\(String(mark.value, radix: 16))/0x\(String(mark.mask, radix: 16))" }
        for template in templates { text += " \(template)" }
        return text
    }
}

/// The key that names a global policy: selector and direction, or index and direction (`ip xfrm policy get`).
public enum XFRMPolicyID: Hashable, Sendable {
    case selector(XFRMSelector, XFRMDirection, mark: XFRMMark? = nil)
    case index(UInt32, XFRMDirection, mark: XFRMMark? = nil)
}
