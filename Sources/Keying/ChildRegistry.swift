import Glibc
import IPAddressing
import Synchronization
import SystemSupport
import VICI
import XFRM

/// The CHILD_SAs charon reported (`child-updown`, `child-rekey`), by inbound SPI, by flow (when their traffic
/// selectors are exactly one flow) and, for the ones we initiated, by child name: a query finds the SA pair of
/// a connection and the identity behind it without a round trip to charon or a dump of the kernel's SAD.
final class ChildRegistry: Sendable {
    private struct Tables {
        var byInboundSPI: [UInt32: KeyedProtection] = [:]
        var byName: [String: KeyedProtection] = [:]
        var byFlow: [KeyedFlow: UInt32] = [:]
        var flowOfSPI: [UInt32: KeyedFlow] = [:]
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
                    insert(
                        StrongSwanBackend.protection(ike: ike, child: child), name: child.name,
                        flow: Self.flow(local: child.localTS, remote: child.remoteTS))
                } else if !up {
                    remove(inboundSPI: spi)
                }
            }
        }
    }

    func insert(_ protection: KeyedProtection, name: String? = nil, flow: KeyedFlow? = nil) {
        guard let spi = protection.inboundSPI else { return }
        tables.withLock { t in
            t.byInboundSPI[spi] = protection
            // Only our per-flow children have unique names; a listener's children share theirs.
            if let name, name.hasPrefix("c") { t.byName[name] = protection }
            if let flow {
                t.byFlow[flow] = spi // a rekey's new child replaces the old one for the flow
                t.flowOfSPI[spi] = flow
            }
        }
        recorded.notify()
    }

    func remove(inboundSPI: UInt32) {
        tables.withLock { t in
            guard let gone = t.byInboundSPI.removeValue(forKey: inboundSPI) else { return }
            if let name = t.byName.first(where: { $0.value.inboundSPI == gone.inboundSPI })?.key {
                t.byName[name] = nil
            }
            if let flow = t.flowOfSPI.removeValue(forKey: inboundSPI), t.byFlow[flow] == inboundSPI {
                t.byFlow[flow] = nil
            }
        }
    }

    /// The newest CHILD_SA charon reported for exactly `flow`.
    func protection(flow: KeyedFlow) -> KeyedProtection? {
        tables.withLock { t in t.byFlow[flow].flatMap { t.byInboundSPI[$0] } }
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

    func protection(inboundSPI: UInt32) -> KeyedProtection? { tables.withLock { $0.byInboundSPI[inboundSPI] } }

    /// The installed child named `name`, waiting for its event at most `bound` (woken when it is recorded, not
    /// polled); the name is forgotten once read.
    func waitForChild(named name: String, upTo bound: Duration) -> KeyedProtection? {
        recorded.wait(until: Deadline(after: bound)) { tables.withLock { $0.byName.removeValue(forKey: name) } }
    }
}
