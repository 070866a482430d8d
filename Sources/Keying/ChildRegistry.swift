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
    }

    private let tables = Mutex(Tables())
    /// Wakes ``waitForChild(named:upTo:)`` when a child is recorded.
    private let recorded = ChangeSignal()

    func record(_ event: VICIEvent) {
        let up = event.isUp ?? (event.name == "child-rekey")
        for ike in event.ikeSAs {
            for child in ike.children {
                guard let spi = child.spiIn else { continue }
                if up && (child.isInstalled || event.name == "child-rekey") {
                    guard let reqid = child.reqid, isOurs(reqid) else { continue }
                    insert(
                        StrongSwanBackend.protection(ike: ike, child: child), reqid: reqid, name: child.name,
                        flow: Self.flow(local: child.localTS, remote: child.remoteTS))
                } else if !up {
                    remove(inboundSPI: spi)
                }
            }
        }
    }

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

    /// A flow from a child's first local and remote traffic selectors (`10.0.0.1/32[tcp/5001]`), when both name
    /// one host and one port of one protocol.
    static func flow(local: [String], remote: [String]) -> KeyedFlow? {
        guard let mine = local.first.flatMap(Self.endpoint), let theirs = remote.first.flatMap(Self.endpoint),
            mine.proto == theirs.proto
        else { return nil }
        return KeyedFlow(
            transportProtocol: mine.proto, local: mine.address, localPort: mine.port,
            remote: theirs.address, remotePort: theirs.port)
    }

    private static func endpoint(_ text: String) -> (address: IPAddress, proto: XFRMUpperProtocol, port: UInt16)? {
        guard let open = text.firstIndex(of: "["), text.hasSuffix("]"),
            let slash = text[..<open].firstIndex(of: "/")
        else { return nil }
        let address = String(text[..<slash])
        guard let length = UInt8(text[text.index(after: slash)..<open]), let parsed = IPAddress(address),
            length == parsed.family.addressBits
        else { return nil }
        let inside = text[text.index(after: open)..<text.index(before: text.endIndex)].split(separator: "/")
        guard inside.count == 2 else { return nil }
        let proto: XFRMUpperProtocol
        switch inside[0] {
        case "tcp": proto = .tcp
        case "udp": proto = .udp
        default: return nil
        }
        // charon prints a port with a service name by its name (`[tcp/http]`).
        if let port = UInt16(inside[1]) { return (parsed, proto, port) }
        guard let service = getservbyname(String(inside[1]), String(inside[0])) else { return nil }
        return (parsed, proto, UInt16(bigEndian: UInt16(truncatingIfNeeded: service.pointee.s_port)))
    }

    func protection(inboundSPI: UInt32) -> KeyedProtection? {
        tables.withLock { $0.byInboundSPI[inboundSPI]?.protection }
    }

    /// The installed child named `name`, waiting for its event at most `bound` (woken when it is recorded, not
    /// polled); the name is forgotten once read.
    func waitForChild(named name: String, upTo bound: Duration) -> KeyedProtection? {
        recorded.wait(until: Deadline(after: bound)) { tables.withLock { $0.byName.removeValue(forKey: name) } }
    }
}
