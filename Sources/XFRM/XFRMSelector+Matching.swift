import IPAddressing

/// Which flows a selector covers, as the kernel decides it (`xfrm_selector_match` in
/// net/xfrm/xfrm_policy.c): addresses under their prefixes, ports under their masks, the protocol unless it
/// is `.any`. The kernel applies it to an SA's selector on output (an SA whose selector does not cover the
/// flow is skipped, `xfrm_state_look_at`) and on input (a packet decrypted by an SA whose selector does not
/// cover the packet is dropped, counted as `XfrmInStateMismatch`).
extension XFRMSelector {
    /// Whether a packet from `source`:`sourcePort` to `destination`:`destinationPort` of `upper` is covered.
    public func covers(
        source: IPAddress, sourcePort: UInt16, destination: IPAddress, destinationPort: UInt16,
        protocol upper: XFRMUpperProtocol
    ) -> Bool {
        guard family == source.family, family == destination.family else { return false }
        guard self.source.hasPrefix(of: source, length: sourcePrefixLength),
            self.destination.hasPrefix(of: destination, length: destinationPrefixLength)
        else { return false }
        guard (self.sourcePort ^ sourcePort) & sourcePortMask == 0,
            (self.destinationPort ^ destinationPort) & destinationPortMask == 0
        else { return false }
        return upperProtocol == .any || upperProtocol == upper
    }

    /// Whether a transport SA (or policy) with this selector carries the packets of a socket bound to `local` and
    /// connected to `remote` (nil: not connected, any peer), one way or the other. A wildcard end (an unbound
    /// address, an unconnected peer's address and port) stands for whatever the selector names.
    public func carries(local: IPEndpoint, remote: IPEndpoint?, upperProtocol upper: XFRMUpperProtocol) -> Bool {
        guard local.address.family == family || local.address.isAny else { return false }
        func covered(from source: IPEndpoint, to destination: IPEndpoint, peerIsSource: Bool) -> Bool {
            var source = source
            var destination = destination
            if source.address.isAny { source.address = self.source }
            if destination.address.isAny { destination.address = self.destination }
            if remote == nil {
                if peerIsSource { source.port = sourcePort } else { destination.port = destinationPort }
            }
            return covers(
                source: source.address, sourcePort: source.port, destination: destination.address,
                destinationPort: destination.port, protocol: upper)
        }
        let peer = remote ?? IPEndpoint(address: .any(family), port: 0)
        return covered(from: local, to: peer, peerIsSource: false) || covered(from: peer, to: local, peerIsSource: true)
    }

    /// Whether the selector names exactly one flow: full-length prefixes, a protocol and both ports exact.
    public var isFlowExact: Bool {
        sourcePrefixLength == family.addressBits && destinationPrefixLength == family.addressBits
            && upperProtocol != .any && sourcePortMask == 0xffff && destinationPortMask == 0xffff
    }
}

extension IPAddress {
    /// Whether the first `length` bits of `self` and `other` agree (same family only).
    public func hasPrefix(of other: IPAddress, length: UInt8) -> Bool {
        guard family == other.family else { return false }
        let mine = bytes
        let theirs = other.bytes
        var remaining = Int(length)
        var index = 0
        while remaining > 0, index < min(mine.count, theirs.count) {
            let bits = min(8, remaining)
            let mask = UInt8(truncatingIfNeeded: 0xff << (8 - bits))
            if (mine[index] ^ theirs[index]) & mask != 0 { return false }
            remaining -= bits
            index += 1
        }
        return true
    }
}
