import XFRM

extension FuzzTarget {
    /// The netlink / XFRM readers, on one datagram as a NETLINK_XFRM socket receives it from the kernel: the
    /// message splitter, the attribute (TLV) reader, `NLMSG_ERROR` with extended-ack attributes, a dump's
    /// `NLMSG_DONE`, and every XFRM message ``XFRMEvent`` decodes (ACQUIRE, EXPIRE, POLEXPIRE, NEWSA / UPDSA /
    /// DELSA with `xfrm_usersa_info` and its algorithm, mark and encapsulation attributes, NEWPOLICY /
    /// UPDPOLICY / DELPOLICY with their templates, flushes); `get` and dump replies use the same readers.
    ///
    /// Invariant: a state or policy the readers return, encoded again by the request encoders (when they take
    /// it) and read back, is the same value, apart from the usage counters and statistics a request never
    /// carries.
    public static let netlink = FuzzTarget(name: "netlink") { input in
        let datagram = Array(input)
        guard let messages = try? XFRMReceivedMessage.read(datagram: datagram[...]) else { return .refused }
        var accepted = false
        for case .success(let message) in messages {
            accepted = true
            _ = String(describing: message)
            guard let again = message.encodedAgain else { continue }
            guard let reread = try? XFRMReceivedMessage.read(datagram: again[...]), reread.count == 1,
                case .success(let second) = reread[0]
            else {
                return .violated("a \(kind(message)) encoded again does not read back")
            }
            guard comparable(message) == comparable(second) else {
                return .violated(
                    "a \(kind(message)) changes when encoded again and read back: "
                        + "\(String(describing: comparable(message))) became "
                        + "\(String(describing: comparable(second)))")
            }
        }
        return accepted ? .accepted : .refused
    }

    private static func kind(_ message: XFRMReceivedMessage) -> String {
        if case .event(let event) = message { return String(describing: event).prefix { $0 != "(" }.description }
        return String(describing: message)
    }

    /// The state or policy a message carries, without what only the kernel reports (counters, statistics).
    private static func comparable(_ message: XFRMReceivedMessage) -> AnyHashable? {
        guard case .event(let event) = message else { return nil }
        switch event {
        case .stateAdded(var state), .stateUpdated(var state), .stateDeleted(var state), .expire(var state, _):
            state.counters = XFRMLifetimeCounters()
            state.statistics = XFRMState.Statistics()
            return state
        case .policyAdded(var policy), .policyUpdated(var policy), .policyDeleted(var policy),
            .policyExpire(var policy, _):
            policy.counters = XFRMLifetimeCounters()
            return policy
        default:
            return nil
        }
    }
}
