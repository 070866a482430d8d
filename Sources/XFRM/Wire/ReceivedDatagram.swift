import CNetlink

/// What one message of a datagram received on a NETLINK_XFRM socket reads as.
///
/// `package`, with ``read(datagram:)``: the byte-level readers of kernel replies and events in one entry point,
/// for the fuzz targets and their replay tests (`Fuzzing/`). Nothing in the library calls it.
package enum XFRMReceivedMessage: Hashable, Sendable {
    /// An XFRM message: a multicast event, or a `get` / dump reply (`XFRM_MSG_NEWSA` and `XFRM_MSG_NEWPOLICY`
    /// replies go through the same readers as the events of those types).
    case event(XFRMEvent)
    /// `NLMSG_ERROR` with error 0.
    case ack
    /// `NLMSG_DONE` without a negative status.
    case done
    /// `NLMSG_NOOP`.
    case noop

    /// Reads a received datagram as ``XFRMClient`` and ``XFRMMonitor`` read the kernel's: the message splitter,
    /// then per message the `NLMSG_ERROR` reader (an ack, or the kernel's errno and extended-ack text), a dump's
    /// `NLMSG_DONE` status, or ``XFRMEvent``'s decoder. A datagram that does not split throws; each message's
    /// own failure is its result, so one input reaches every message in it.
    package static func read(datagram: ArraySlice<UInt8>) throws(XFRMError) -> [Result<Self, XFRMError>] {
        let operation = "read datagram"
        return try NetlinkMessage.split(datagram, operation: operation).map { message in
            Result { () throws(XFRMError) -> Self in
                switch message.type {
                case _NLMSG_NOOP:
                    return .noop
                case _NLMSG_DONE:
                    try XFRMClient.throwIfDumpFailed(message, operation: operation)
                    return .done
                case _NLMSG_ERROR:
                    try XFRMClient.throwIfError(message, operation: operation)
                    return .ack
                default:
                    return .event(try XFRMEvent.decode(message))
                }
            }
        }
    }

    /// For a state or policy message, the same value encoded again by the request encoders (an
    /// `XFRM_MSG_NEWSA` / `XFRM_MSG_NEWPOLICY` netlink message, as ``XFRMClient/addState(_:)`` and
    /// ``XFRMClient/addPolicy(_:)`` send it), for round-trip checks; nil for other messages and for values the
    /// encoders refuse (what `validate` rejects).
    package var encodedAgain: [UInt8]? {
        switch self {
        case .event(.stateAdded(let state)), .event(.stateUpdated(let state)), .event(.stateDeleted(let state)),
            .event(.expire(let state, _)):
            guard (try? state.validate(operation: "encode again")) != nil else { return nil }
            return XFRMClient.stateMessage(state, type: _XFRM_MSG_NEWSA, create: true).finished()
        case .event(.policyAdded(let policy)), .event(.policyUpdated(let policy)), .event(.policyDeleted(let policy)),
            .event(.policyExpire(let policy, _)):
            guard (try? policy.validate(operation: "encode again")) != nil else { return nil }
            return XFRMClient.policyMessage(policy, type: _XFRM_MSG_NEWPOLICY, create: true).finished()
        default:
            return nil
        }
    }
}
