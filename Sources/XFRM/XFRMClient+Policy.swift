import CNetlink

/// The `ip xfrm policy` verbs (global policies, the SPD). Per-socket policies are set on the socket itself,
/// see ``SocketPolicy``; they show in ``policies()`` with a socket direction but cannot be changed here.
extension XFRMClient {
    /// Adds a policy; fails with `EEXIST` if one with the same selector and direction exists.
    ///
    /// Equivalent to: `ip xfrm policy add SELECTOR dir DIR [action A] [priority P] [tmpl …]`.
    public func addPolicy(_ policy: XFRMPolicy) throws(XFRMError) {
        try policy.validate(operation: "policy add")
        _ = try request(Self.policyMessage(policy, type: _XFRM_MSG_NEWPOLICY, create: true), operation: "policy add")
    }

    /// Replaces the policy with the same selector and direction, or adds it.
    ///
    /// Equivalent to: `ip xfrm policy update …`.
    public func updatePolicy(_ policy: XFRMPolicy) throws(XFRMError) {
        try policy.validate(operation: "policy update")
        _ = try request(
            Self.policyMessage(policy, type: _XFRM_MSG_UPDPOLICY, create: false),
            operation: "policy update")
    }

    /// Adds many policies, batched; each is acked and the first failure is reported with its position.
    ///
    /// Equivalent to: `ip -batch FILE` with one `xfrm policy add` line per policy.
    public func addPolicies(_ policies: [XFRMPolicy]) throws(XFRMError) {
        for policy in policies { try policy.validate(operation: "policy add") }
        try batch(
            policies.map { Self.policyMessage($0, type: _XFRM_MSG_NEWPOLICY, create: true) },
            operation: "policy add")
    }

    /// Deletes a policy by selector and direction, or by index.
    ///
    /// Equivalent to: `ip xfrm policy delete SELECTOR dir DIR` / `ip xfrm policy delete index I dir DIR`.
    public func deletePolicy(_ id: XFRMPolicyID) throws(XFRMError) {
        _ = try request(Self.policyIDMessage(id, type: _XFRM_MSG_DELPOLICY), operation: "policy delete")
    }

    /// Deletes many policies, batched.
    public func deletePolicies(_ ids: [XFRMPolicyID]) throws(XFRMError) {
        try batch(ids.map { Self.policyIDMessage($0, type: _XFRM_MSG_DELPOLICY) }, operation: "policy delete")
    }

    /// Reads one policy.
    ///
    /// Equivalent to: `ip -s xfrm policy get SELECTOR dir DIR` / `… get index I dir DIR`.
    public func getPolicy(_ id: XFRMPolicyID) throws(XFRMError) -> XFRMPolicy {
        let replies = try request(Self.policyIDMessage(id, type: _XFRM_MSG_GETPOLICY), operation: "policy get")
        guard let reply = replies.first(where: { $0.type == _XFRM_MSG_NEWPOLICY }) else {
            throw .malformed("policy get", "no XFRM_MSG_NEWPOLICY in the reply")
        }
        return try Self.decodePolicy(reply.payload, operation: "policy get")
    }

    /// Lists every policy, per-socket ones included (their direction is ``XFRMDirection/socketInbound`` or
    /// ``XFRMDirection/socketOutbound``).
    ///
    /// Equivalent to: `ip -s xfrm policy list`.
    public func policies() throws(XFRMError) -> [XFRMPolicy] {
        let builder = NetlinkMessageBuilder(type: _XFRM_MSG_GETPOLICY, flags: _NLM_F_REQUEST | _NLM_F_DUMP)
        var result: [XFRMPolicy] = []
        for message in try dump(builder, operation: "policy list") where message.type == _XFRM_MSG_NEWPOLICY {
            result.append(try Self.decodePolicy(message.payload, operation: "policy list"))
        }
        return result
    }

    /// Deletes every global (main) policy. Per-socket policies stay: only closing the socket removes them.
    ///
    /// Equivalent to: `ip xfrm policy flush`.
    public func flushPolicies() throws(XFRMError) {
        let builder = NetlinkMessageBuilder(type: _XFRM_MSG_FLUSHPOLICY, flags: _NLM_F_REQUEST | _NLM_F_ACK)
        _ = try request(builder, operation: "policy flush")
    }

    // MARK: Encoding

    static func policyMessage(_ policy: XFRMPolicy, type: UInt16, create: Bool) -> NetlinkMessageBuilder {
        let flags = _NLM_F_REQUEST | _NLM_F_ACK | (create ? _NLM_F_CREATE | _NLM_F_EXCL : 0)
        var builder = NetlinkMessageBuilder(type: type, flags: flags)
        builder.append(policy.userPolicyInfo)
        policy.appendAttributes(to: &builder)
        return builder
    }

    static func policyIDMessage(_ id: XFRMPolicyID, type: UInt16) -> NetlinkMessageBuilder {
        var builder = NetlinkMessageBuilder(type: type, flags: _NLM_F_REQUEST | _NLM_F_ACK)
        builder.append(id.userPolicyID)
        if let mark = id.mark { builder.appendAttribute(_XFRMA_MARK, mark.kernelValue) }
        return builder
    }

    static func decodePolicy(_ payload: ArraySlice<UInt8>, operation: String) throws(XFRMError) -> XFRMPolicy {
        let info = try payload.loadHeader(xfrm_userpolicy_info.self, operation: operation)
        let attributes = try NetlinkAttribute.parse(
            payload.afterHeader(xfrm_userpolicy_info.self),
            operation: operation)
        return try XFRMPolicy(info: info, attributes: attributes, operation: operation)
    }
}
