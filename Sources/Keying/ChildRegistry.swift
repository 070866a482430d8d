import Glibc
import IPAddressing
import Synchronization
import SystemSupport
import VICI
import XFRM

/// The CHILD_SAs charon reported (`child-updown`, `child-rekey`), by inbound SPI, by flow (when their traffic
/// selectors are exactly one flow) and, for the ones we initiated, by child name: a query finds the SA pair of
/// a connection and the identity behind it without a round trip to charon or a dump of the kernel's SAD.
///
/// Only this process's children are kept: those whose reqid the backend uses (``claim(reqid:)``) or that rekey a
/// child already kept. A charon shared by many processes reports every process's children to each of them; kept
/// by all, each process's memory would grow with the whole host's connections instead of its own.
final class ChildRegistry: Sendable {
    /// One child kept: what charon said of it, the flow it is indexed under and its reqid, in one entry (the
    /// query's indexes point at it by inbound SPI). A reference, so the table's empty buckets (a dictionary keeps
    /// up to half of them free) cost a pointer each instead of a whole entry.
    private final class Kept: Sendable {
        let protection: KeyedProtection
        let flow: KeyedFlow?
        let reqid: UInt32?

        init(protection: KeyedProtection, flow: KeyedFlow?, reqid: UInt32?) {
            self.protection = protection
            self.flow = flow
            self.reqid = reqid
        }
    }

    private struct Tables {
        var byInboundSPI: [UInt32: Kept] = [:]
        /// Children we initiated, until their negotiation reads them (``waitForChild(named:upTo:)``).
        var byName: [String: KeyedProtection] = [:]
        /// Inbound SPI by a 64-bit digest of the flow (16 bytes a bucket where the flow itself takes about 70);
        /// a lookup checks the kept child's own flow, so two flows with one digest never answer for each other.
        var byFlow: [UInt64: UInt32] = [:]
        /// The reqids the backend's registrations use, with how many use each.
        var claimed: [UInt32: Int] = [:]
        /// How many children are kept per reqid.
        var keptPerReqid: [UInt32: Int] = [:]
        /// Listeners' reqids (with how many registrations use each), and those whose bound connections outlive
        /// their listener: peers' children on them are policed.
        var responderReqids: [UInt32: Int] = [:]
        var keptResponderReqids: Set<UInt32> = []
        /// Peers' children on those reqids and the connections bound to them.
        var responders = ResponderChildren()
    }

    private let tables = Mutex(Tables())
    /// Wakes ``waitForChild(named:upTo:)`` when a child is recorded.
    private let recorded = ChangeSignal()

    /// What a recorded event means for the sockets above: a child refused (the backend terminates it), a child
    /// rekeyed (a socket pinned to the old one moves), a peer's child on a listener's reqid (its connection may be
    /// accepted soon).
    enum Outcome: Sendable {
        case refused(ResponderChildren.Refusal)
        case rekeyed(oldInboundSPI: UInt32, replacement: KeyedProtection, reqid: UInt32, flow: KeyedFlow?)
        case peerChild(PeerChild, KeyedProtection)
        case peerChildGone(PeerChild)
        case ownChild(reqid: UInt32, flow: KeyedFlow?, protection: KeyedProtection)
    }

    @discardableResult
    func record(_ event: VICIEvent) -> [Outcome] {
        if event.name == "child-rekey" { return recordRekey(event) }
        let up = event.isUp ?? false
        var outcomes: [Outcome] = []
        for ike in event.ikeSAs {
            for child in ike.children {
                guard let spi = child.spiIn else { continue }
                if up && child.isInstalled {
                    guard let reqid = child.reqid, isOurs(reqid) else { continue }
                    let protection = StrongSwanBackend.protection(ike: ike, child: child)
                    if isResponder(reqid), let peerChild = Self.peerChild(ike: ike, child: child, reqid: reqid) {
                        let refused = tables.withLock { $0.responders.add(peerChild) }
                        outcomes += refused.map(Outcome.refused)
                        // A refused child is not kept: nothing may be attributed to it.
                        if refused.contains(where: { $0.child.inboundSPI == spi }) { continue }
                        outcomes.append(.peerChild(peerChild, protection))
                    } else if !isResponder(reqid) {
                        // An initiator's reqid is in no conn a peer can use: a new child on it is charon's own for that
                        // socket (its first, or one charon made again after a reauthentication or a restart).
                        outcomes.append(
                            .ownChild(
                                reqid: reqid, flow: Self.flow(local: child.localTS, remote: child.remoteTS),
                                protection: protection))
                    }
                    insert(
                        protection, reqid: reqid, name: child.name,
                        flow: Self.flow(local: child.localTS, remote: child.remoteTS))
                } else if !up {
                    if let gone = peerChild(inboundSPI: spi) { outcomes.append(.peerChildGone(gone)) }
                    remove(inboundSPI: spi)
                }
            }
        }
        // Rivals refused together: neither stays attributable.
        for case .refused(let refusal) in outcomes {
            remove(inboundSPI: refusal.child.inboundSPI)
            outcomes.append(.peerChildGone(refusal.child))
        }
        return outcomes
    }

    /// `child-rekey`: each child section holds `old` and `new` (strongSwan's vici README); a flat child section
    /// (as `child-updown` has) counts as the new one with no known predecessor.
    private func recordRekey(_ event: VICIEvent) -> [Outcome] {
        var outcomes: [Outcome] = []
        for ike in event.ikeSAs {
            for entry in ike.children {
                let old = entry.raw.section("old").map { ChildSAInfo(key: entry.name, section: $0) }
                let new = entry.raw.section("new").map { ChildSAInfo(key: entry.name, section: $0) } ?? entry
                guard let spi = new.spiIn, new.spiOut != nil else { continue }
                let oldSPI = old?.spiIn
                let kept = oldSPI.map { old in tables.withLock { $0.byInboundSPI[old] != nil } } ?? false
                guard let reqid = new.reqid ?? old?.reqid, isOurs(reqid) || kept else { continue }
                let protection = StrongSwanBackend.protection(ike: ike, child: new)
                if let oldSPI, isResponder(reqid), let peerChild = Self.peerChild(ike: ike, child: new, reqid: reqid) {
                    tables.withLock { $0.responders.rekey(old: oldSPI, new: peerChild) }
                }
                if let oldSPI { remove(inboundSPI: oldSPI) }
                insert(
                    protection, reqid: reqid, name: new.name, flow: Self.flow(local: new.localTS, remote: new.remoteTS))
                if let oldSPI, spi != oldSPI {
                    outcomes.append(
                        .rekeyed(
                            oldInboundSPI: oldSPI, replacement: protection, reqid: reqid,
                            flow: Self.flow(local: new.localTS, remote: new.remoteTS)))
                }
            }
        }
        return outcomes
    }

    private static func peerChild(ike: IKESAInfo, child: ChildSAInfo, reqid: UInt32) -> PeerChild? {
        guard let spiIn = child.spiIn, let spiOut = child.spiOut else { return nil }
        return PeerChild(
            inboundSPI: spiIn, outboundSPI: spiOut, childID: child.uniqueID, ikeSAID: ike.uniqueID.map(UInt64.init),
            peer: PeerName(identity: ike.remoteID, user: ike.remoteEAPID), reqid: reqid,
            coverage: ChildCoverage(local: child.localTS, remote: child.remoteTS))
    }

    /// `reqid` is a listener's (peers make children on it): its children are policed.
    func claimResponder(reqid: UInt32) {
        tables.withLock { t in
            t.claimed[reqid, default: 0] += 1
            t.responderReqids[reqid, default: 0] += 1
        }
    }

    func unclaimResponder(reqid: UInt32) {
        tables.withLock { t in
            if let count = t.claimed[reqid] { t.claimed[reqid] = count > 1 ? count - 1 : nil }
            if let count = t.responderReqids[reqid] { t.responderReqids[reqid] = count > 1 ? count - 1 : nil }
        }
    }

    /// Whether peers' children on `reqid` are policed: a listener's, or one whose children are still bound.
    func isResponder(_ reqid: UInt32) -> Bool {
        tables.withLock { $0.responderReqids[reqid] != nil || $0.keptResponderReqids.contains(reqid) }
    }

    /// The child an accepted connection of a listener with `reqid` is bound to (see ``ResponderChildren``).
    func decide(_ flow: KeyedFlow, reqid: UInt32) -> ResponderChildren.Decision {
        tables.withLock { $0.responders.decide(flow, reqid: reqid) }
    }

    func bind(_ flow: KeyedFlow, to child: PeerChild) {
        tables.withLock { t in
            t.responders.bind(flow, to: child)
            t.keptResponderReqids.insert(child.reqid)
        }
    }

    func unbind(_ flow: KeyedFlow) { tables.withLock { $0.responders.unbind(flow) } }

    /// Every peer child on `reqid`.
    func peerChildren(reqid: UInt32) -> [PeerChild] { tables.withLock { $0.responders.children(reqid: reqid) } }

    /// The peer child by inbound SPI (a listener's).
    func peerChild(inboundSPI: UInt32) -> PeerChild? { tables.withLock { $0.responders.child(inboundSPI: inboundSPI) } }

    /// The backend's registrations use `reqid` (one more of them): its children are kept from now on.
    func claim(reqid: UInt32) { tables.withLock { $0.claimed[reqid, default: 0] += 1 } }

    /// One registration less uses `reqid`; children already kept stay until they go down.
    func unclaim(reqid: UInt32) {
        tables.withLock { t in
            guard let count = t.claimed[reqid] else { return }
            t.claimed[reqid] = count > 1 ? count - 1 : nil
        }
    }

    /// Whether children with `reqid` are this process's: a registration uses it, or a child kept has it (a
    /// rekey of an accepted connection's child after its listener closed).
    func isOurs(_ reqid: UInt32) -> Bool {
        tables.withLock { $0.claimed[reqid] != nil || $0.keptPerReqid[reqid] != nil }
    }

    /// How many children are kept (inspection, tests).
    var count: Int { tables.withLock { $0.byInboundSPI.count } }

    func insert(_ protection: KeyedProtection, reqid: UInt32?, name: String? = nil, flow: KeyedFlow? = nil) {
        guard let spi = protection.inboundSPI else { return }
        tables.withLock { t in
            let previous = t.byInboundSPI.updateValue(
                Kept(protection: protection, flow: flow, reqid: reqid), forKey: spi)
            if let reqid, previous?.reqid != reqid {
                t.keptPerReqid[reqid, default: 0] += 1
                if let old = previous?.reqid { Self.forget(reqid: old, in: &t) }
            }
            // Only our per-flow children have unique names; a listener's children share theirs.
            if let name, name.hasPrefix("c") { t.byName[name] = protection }
            // A rekey's new child replaces the old one for the flow.
            if let flow { t.byFlow[Self.digest(flow)] = spi }
        }
        recorded.notify()
    }

    func remove(inboundSPI: UInt32) {
        tables.withLock { t in
            t.responders.remove(inboundSPI: inboundSPI)
            guard let gone = t.byInboundSPI.removeValue(forKey: inboundSPI) else { return }
            if let reqid = gone.reqid { Self.forget(reqid: reqid, in: &t) }
            if let name = t.byName.first(where: { $0.value.inboundSPI == inboundSPI })?.key { t.byName[name] = nil }
            if let flow = gone.flow, t.byFlow[Self.digest(flow)] == inboundSPI { t.byFlow[Self.digest(flow)] = nil }
        }
    }

    /// A digest of `flow` that stays the same for the life of the process (`Hasher` is seeded per process).
    private static func digest(_ flow: KeyedFlow) -> UInt64 {
        var hasher = Hasher()
        hasher.combine(flow)
        return UInt64(bitPattern: Int64(hasher.finalize()))
    }

    private static func forget(reqid: UInt32, in t: inout Tables) {
        guard let kept = t.keptPerReqid[reqid] else { return }
        t.keptPerReqid[reqid] = kept > 1 ? kept - 1 : nil
    }

    /// The newest CHILD_SA charon reported for exactly `flow`.
    func protection(flow: KeyedFlow) -> KeyedProtection? {
        tables.withLock { t in
            guard let spi = t.byFlow[Self.digest(flow)], let kept = t.byInboundSPI[spi], kept.flow == flow else {
                return nil
            }
            return kept.protection
        }
    }

    /// The flow a child's traffic selectors name, when they are exactly one flow (one host, protocol and port on
    /// each side).
    static func flow(local: [String], remote: [String]) -> KeyedFlow? {
        ChildCoverage(local: local, remote: remote).exactFlow
    }

    func protection(inboundSPI: UInt32) -> KeyedProtection? {
        tables.withLock { $0.byInboundSPI[inboundSPI]?.protection }
    }

    /// The installed child named `name`, waiting for its event at most `bound` (woken when it is recorded, not
    /// polled); the name is forgotten once read.
    func waitForChild(named name: String, upTo bound: Duration) -> KeyedProtection? {
        recorded.wait(until: Deadline(after: bound)) { takeChild(named: name) }
    }

    /// The installed child named `name` if its event has been recorded; the name is forgotten once read.
    func takeChild(named name: String) -> KeyedProtection? {
        tables.withLock { $0.byName.removeValue(forKey: name) }
    }
}
