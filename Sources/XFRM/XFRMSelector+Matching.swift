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
