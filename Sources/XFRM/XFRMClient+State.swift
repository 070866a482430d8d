import CNetlink
import IPAddressing

/// The `ip xfrm state` verbs.
extension XFRMClient {
    /// Adds a state; fails with `EEXIST` if one with the same ID exists.
    ///
    /// Equivalent to: `ip xfrm state add src S dst D proto esp spi SPI mode M reqid R ALGO... [sel SELECTOR]`.
    public func addState(_ state: XFRMState) throws(XFRMError) {
        try state.validate(operation: "state add")
        _ = try request(Self.stateMessage(state, type: _XFRM_MSG_NEWSA, create: true), operation: "state add")
    }

    /// Replaces a state with the same ID (or the larval state an ACQUIRE or ALLOCSPI created). The kernel
    /// answers `ESRCH` when there is nothing to replace; use ``addOrUpdateState(_:)`` for either.
    ///
    /// Equivalent to: `ip xfrm state update …`.
    public func updateState(_ state: XFRMState) throws(XFRMError) {
        try state.validate(operation: "state update")
        _ = try request(Self.stateMessage(state, type: _XFRM_MSG_UPDSA, create: false), operation: "state update")
    }

    /// Adds the state, or replaces the one with the same ID.
    public func addOrUpdateState(_ state: XFRMState) throws(XFRMError) {
        do {
            try addState(state)
        } catch  where error.code == .kernelRejected && error.errno == .fileExists {
            try updateState(state)
        }
    }

    /// Adds many states with as few system calls as fit (see ``XFRMClient``'s batching); each is acked.
    ///
    /// Equivalent to: `ip -batch FILE` with one `xfrm state add` line per state.
    public func addStates(_ states: [XFRMState]) throws(XFRMError) {
        for state in states { try state.validate(operation: "state add") }
        try batch(states.map { Self.stateMessage($0, type: _XFRM_MSG_NEWSA, create: true) }, operation: "state add")
    }

    /// Deletes a state.
    ///
    /// Equivalent to: `ip xfrm state delete src S dst D proto P spi SPI`.
    public func deleteState(_ id: XFRMStateID, source: IPAddress? = nil, mark: XFRMMark? = nil) throws(XFRMError) {
        _ = try request(
            Self.stateIDMessage(id, type: _XFRM_MSG_DELSA, source: source, mark: mark),
            operation: "state delete")
    }

    /// Deletes many states, batched.
    public func deleteStates(_ ids: [XFRMStateID]) throws(XFRMError) {
        try batch(
            ids.map { Self.stateIDMessage($0, type: _XFRM_MSG_DELSA, source: nil, mark: nil) },
            operation: "state delete")
    }

    /// Reads one state with its counters.
    ///
    /// Equivalent to: `ip -s xfrm state get src S dst D proto P spi SPI`.
    public func getState(_ id: XFRMStateID, source: IPAddress? = nil, mark: XFRMMark? = nil) throws(XFRMError)
        -> XFRMState
    {
        let replies = try request(
            Self.stateIDMessage(id, type: _XFRM_MSG_GETSA, source: source, mark: mark),
            operation: "state get")
        guard let reply = replies.first(where: { $0.type == _XFRM_MSG_NEWSA }) else {
            throw .malformed("state get", "no XFRM_MSG_NEWSA in the reply")
        }
        return try Self.decodeState(reply.payload, operation: "state get")
    }

    /// Lists states, optionally only those between two addresses (the kernel filters with
    /// `XFRMA_ADDRESS_FILTER`, prefix lengths full) and of one protocol (`XFRMA_PROTO`).
    ///
    /// Equivalent to: `ip -s xfrm state list [src S] [dst D] [proto P]`.
    public func states(
        source: IPAddress? = nil, destination: IPAddress? = nil,
        proto: XFRMProtocol? = nil
    ) throws(XFRMError) -> [XFRMState] {
        var builder = NetlinkMessageBuilder(type: _XFRM_MSG_GETSA, flags: _NLM_F_REQUEST | _NLM_F_DUMP)
        if source != nil || destination != nil {
            guard source == nil || destination == nil || source!.family == destination!.family else {
                throw .invalid("state list", "filter addresses of different families")
            }
            let family = (source ?? destination)!.family
            var filter = xfrm_address_filter()
            filter.family = family.rawValue
            if let source {
                filter.saddr = source.kernelValue
                filter.splen = family.addressBits
            }
            if let destination {
                filter.daddr = destination.kernelValue
                filter.dplen = family.addressBits
            }
            builder.appendAttribute(_XFRMA_ADDRESS_FILTER, filter)
        }
        if let proto { builder.appendAttribute(_XFRMA_PROTO, bytes: [proto.rawValue]) }
        var result: [XFRMState] = []
        for message in try dump(builder, operation: "state list") where message.type == _XFRM_MSG_NEWSA {
            result.append(try Self.decodeState(message.payload, operation: "state list"))
        }
        return result
    }

    /// Deletes every state of a protocol (`.any` for all).
    ///
    /// Equivalent to: `ip xfrm state flush [proto P]`.
    public func flushStates(proto: XFRMProtocol = .any) throws(XFRMError) {
        var builder = NetlinkMessageBuilder(type: _XFRM_MSG_FLUSHSA, flags: _NLM_F_REQUEST | _NLM_F_ACK)
        var flush = xfrm_usersa_flush()
        flush.proto = proto.rawValue
        builder.append(flush)
        _ = try request(builder, operation: "state flush")
    }

    /// Reserves an SPI in `range` for a state from `source` to `destination`; the kernel creates a larval
    /// state (lifetime `xfrm_acq_expires`) that a later ``updateState(_:)`` completes.
    ///
    /// Equivalent to: `ip xfrm state allocspi src S dst D proto P mode M reqid R min MIN max MAX`.
    public func allocateSPI(
        source: IPAddress, destination: IPAddress, proto: XFRMProtocol = .esp,
        mode: XFRMMode = .transport, reqid: UInt32 = 0, sequence: UInt32 = 0,
        range: ClosedRange<UInt32> = 0x100...0xffff_ffff
    ) throws(XFRMError) -> XFRMState {
        var template = XFRMState(
            source: source, destination: destination, proto: proto, spi: 0, mode: mode,
            reqid: reqid, sequence: sequence)
        template.selector = .any(destination.family)
        try template.validate(operation: "state allocspi")
        var info = xfrm_userspi_info()
        info.info = template.userSAInfo
        info.min = range.lowerBound
        info.max = range.upperBound
        var builder = NetlinkMessageBuilder(type: _XFRM_MSG_ALLOCSPI, flags: _NLM_F_REQUEST | _NLM_F_ACK)
        builder.append(info)
        let replies = try request(builder, operation: "state allocspi")
        guard let reply = replies.first(where: { $0.type == _XFRM_MSG_NEWSA }) else {
            throw .malformed("state allocspi", "no XFRM_MSG_NEWSA in the reply")
        }
        return try Self.decodeState(reply.payload, operation: "state allocspi")
    }

    // MARK: Encoding

    static func stateMessage(_ state: XFRMState, type: UInt16, create: Bool) -> NetlinkMessageBuilder {
        let flags = _NLM_F_REQUEST | _NLM_F_ACK | (create ? _NLM_F_CREATE | _NLM_F_EXCL : 0)
        var builder = NetlinkMessageBuilder(type: type, flags: flags)
        builder.append(state.userSAInfo)
        state.appendAttributes(to: &builder)
        return builder
    }

    static func stateIDMessage(
        _ id: XFRMStateID, type: UInt16, source: IPAddress?,
        mark: XFRMMark?
    ) -> NetlinkMessageBuilder {
        var builder = NetlinkMessageBuilder(type: type, flags: _NLM_F_REQUEST | _NLM_F_ACK)
        builder.append(id.userSAID())
        if let source { builder.appendAttribute(_XFRMA_SRCADDR, source.kernelValue) }
        if let mark { builder.appendAttribute(_XFRMA_MARK, mark.kernelValue) }
        return builder
    }

    static func decodeState(_ payload: ArraySlice<UInt8>, operation: String) throws(XFRMError) -> XFRMState {
        let info = try payload.loadHeader(xfrm_usersa_info.self, operation: operation)
        let attributes = try NetlinkAttribute.parse(payload.afterHeader(xfrm_usersa_info.self), operation: operation)
        return try XFRMState(info: info, attributes: attributes, operation: operation)
    }
}
