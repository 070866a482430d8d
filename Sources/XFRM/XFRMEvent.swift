import CNetlink
import IPAddressing

/// An `XFRM_MSG_ACQUIRE`: the kernel needs an SA for a flow that a policy requires.
public struct XFRMAcquire: Hashable, Sendable {
    /// Destination (the peer), SPI 0, protocol.
    public var id: XFRMStateID
    /// The local source address.
    public var source: IPAddress
    /// The exact flow (source port 0 for an unbound connecting socket).
    public var selector: XFRMSelector
    /// A copy of the policy that asked; a socket policy shows direction out and `index & 7 == 4`.
    public var policy: XFRMPolicy
    /// The policy's templates (`XFRMA_TMPL`): reqid, level, algorithm masks.
    public var templates: [XFRMTemplate]
    public var authenticationAlgorithms: UInt32
    public var encryptionAlgorithms: UInt32
    public var compressionAlgorithms: UInt32
    /// The acquire sequence number, to answer with `XFRMState.sequence`.
    public var sequence: UInt32

    /// Whether the triggering policy is a per-socket one (its index's low bits are `XFRM_POLICY_MAX + dir`).
    public var isFromSocketPolicy: Bool { policy.index & 7 >= 3 }
}

/// A typed event from the XFRM multicast groups (what `ip xfrm monitor` prints).
public enum XFRMEvent: Hashable, Sendable {
    /// `XFRM_MSG_ACQUIRE` (group acquire).
    case acquire(XFRMAcquire)
    /// `XFRM_MSG_EXPIRE` (group expire): a state reached a soft or hard limit; hard means it is gone.
    /// A larval (SPI 0) state expiring hard ends an unanswered ACQUIRE.
    case expire(XFRMState, hard: Bool)
    /// `XFRM_MSG_POLEXPIRE` (group expire).
    case policyExpire(XFRMPolicy, hard: Bool)
    /// `XFRM_MSG_NEWSA` / `XFRM_MSG_UPDSA` / `XFRM_MSG_DELSA` (group SA).
    case stateAdded(XFRMState)
    case stateUpdated(XFRMState)
    case stateDeleted(XFRMState)
    /// `XFRM_MSG_FLUSHSA` (group SA).
    case statesFlushed(XFRMProtocol)
    /// `XFRM_MSG_NEWPOLICY` / `XFRM_MSG_UPDPOLICY` / `XFRM_MSG_DELPOLICY` (group policy).
    case policyAdded(XFRMPolicy)
    case policyUpdated(XFRMPolicy)
    case policyDeleted(XFRMPolicy)
    /// `XFRM_MSG_FLUSHPOLICY` (group policy).
    case policiesFlushed
    /// A message type this layer does not decode (report, mapping, migrate, aevent).
    case other(messageType: UInt16)

    /// Decodes one multicast message.
    static func decode(_ message: NetlinkMessage) throws(XFRMError) -> XFRMEvent {
        let payload = message.payload
        switch message.type {
        case _XFRM_MSG_ACQUIRE:
            let operation = "monitor acquire"
            let a = try payload.loadHeader(xfrm_user_acquire.self, operation: operation)
            let attributes = try NetlinkAttribute.parse(
                payload.afterHeader(xfrm_user_acquire.self),
                operation: operation)
            let family = IPAddressFamily(rawValue: a.sel.family)
            let addressFamily: IPAddressFamily = family == .inet6 ? .inet6 : .inet
            let policy = try XFRMPolicy(info: a.policy, attributes: [], operation: operation)
            var templates: [XFRMTemplate] = []
            if let tmpl = attributes.first(_XFRMA_TMPL) {
                templates = try XFRMPolicy.decodeTemplates(
                    tmpl.payload, policyFamily: addressFamily,
                    operation: operation)
            }
            return .acquire(
                XFRMAcquire(
                    id: XFRMStateID(
                        destination: IPAddress(family: addressFamily, kernelValue: a.id.daddr),
                        spi: UInt32(bigEndian: a.id.spi), proto: XFRMProtocol(rawValue: a.id.proto)),
                    source: IPAddress(family: addressFamily, kernelValue: a.saddr),
                    selector: XFRMSelector(kernelValue: a.sel, fallbackFamily: addressFamily),
                    policy: policy, templates: templates, authenticationAlgorithms: a.aalgos,
                    encryptionAlgorithms: a.ealgos, compressionAlgorithms: a.calgos, sequence: a.seq))
        case _XFRM_MSG_EXPIRE:
            let operation = "monitor expire"
            let e = try payload.loadHeader(xfrm_user_expire.self, operation: operation)
            let attributes = try NetlinkAttribute.parse(
                payload.afterHeader(xfrm_user_expire.self),
                operation: operation)
            return .expire(
                try XFRMState(info: e.state, attributes: attributes, operation: operation), hard: e.hard != 0)
        case _XFRM_MSG_POLEXPIRE:
            let operation = "monitor policy expire"
            let e = try payload.loadHeader(xfrm_user_polexpire.self, operation: operation)
            let attributes = try NetlinkAttribute.parse(
                payload.afterHeader(xfrm_user_polexpire.self),
                operation: operation)
            return .policyExpire(
                try XFRMPolicy(info: e.pol, attributes: attributes, operation: operation),
                hard: e.hard != 0)
        case _XFRM_MSG_NEWSA:
            return .stateAdded(try XFRMClient.decodeState(payload, operation: "monitor new state"))
        case _XFRM_MSG_UPDSA:
            return .stateUpdated(try XFRMClient.decodeState(payload, operation: "monitor updated state"))
        case _XFRM_MSG_DELSA:
            // Header: xfrm_usersa_id; the whole state follows in XFRMA_SA.
            let operation = "monitor deleted state"
            _ = try payload.loadHeader(xfrm_usersa_id.self, operation: operation)
            let attributes = try NetlinkAttribute.parse(payload.afterHeader(xfrm_usersa_id.self), operation: operation)
            guard let sa = attributes.first(_XFRMA_SA) else { throw .malformed(operation, "no XFRMA_SA attribute") }
            let info = try sa.load(xfrm_usersa_info.self, operation: operation)
            return .stateDeleted(try XFRMState(info: info, attributes: attributes, operation: operation))
        case _XFRM_MSG_FLUSHSA:
            let flush = try payload.loadHeader(xfrm_usersa_flush.self, operation: "monitor flush states")
            return .statesFlushed(XFRMProtocol(rawValue: flush.proto))
        case _XFRM_MSG_NEWPOLICY:
            return .policyAdded(try XFRMClient.decodePolicy(payload, operation: "monitor new policy"))
        case _XFRM_MSG_UPDPOLICY:
            return .policyUpdated(try XFRMClient.decodePolicy(payload, operation: "monitor updated policy"))
        case _XFRM_MSG_DELPOLICY:
            // Header: xfrm_userpolicy_id; the whole policy follows in XFRMA_POLICY.
            let operation = "monitor deleted policy"
            _ = try payload.loadHeader(xfrm_userpolicy_id.self, operation: operation)
            let attributes = try NetlinkAttribute.parse(
                payload.afterHeader(xfrm_userpolicy_id.self),
                operation: operation)
            guard let info = attributes.first(_XFRMA_POLICY) else {
                throw .malformed(operation, "no XFRMA_POLICY attribute")
            }
            let policyInfo = try info.load(xfrm_userpolicy_info.self, operation: operation)
            return .policyDeleted(try XFRMPolicy(info: policyInfo, attributes: attributes, operation: operation))
        case _XFRM_MSG_FLUSHPOLICY:
            return .policiesFlushed
        default:
            return .other(messageType: message.type)
        }
    }
}
