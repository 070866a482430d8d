import IPAddressing
import XCTest
import XFRM

@testable import Keying
@testable import VICI

/// Tier 1: charon's traffic selector text, and the rules that keep one peer's CHILD_SAs on a listener's reqid from
/// carrying another peer's connection (the server half of the binding).
final class ResponderChildrenTests: XCTestCase {
    let alice = PeerName(identity: "a.example")
    let mallory = PeerName(identity: "c.example")
    let reqid: UInt32 = 40

    /// alice's connection to the listener on 10.0.0.2:5001.
    let flow = KeyedFlow(
        transportProtocol: .tcp, local: "10.0.0.2", localPort: 5001, remote: "10.0.0.1", remotePort: 40000)

    func testTrafficSelectorsAsCharonPrintsThem() {
        let exact = ChildTrafficSelector("10.0.0.1/32[tcp/40000]")
        XCTAssertTrue(exact.isExact)
        XCTAssertTrue(exact.covers("10.0.0.1", protocol: .tcp, port: 40000))
        XCTAssertFalse(exact.covers("10.0.0.1", protocol: .tcp, port: 40001))
        XCTAssertFalse(exact.covers("10.0.0.1", protocol: .udp, port: 40000))
        let anyPort = ChildTrafficSelector("10.0.0.1/32[tcp]")
        XCTAssertFalse(anyPort.isExact)
        XCTAssertTrue(anyPort.covers("10.0.0.1", protocol: .tcp, port: 1))
        let subnet = ChildTrafficSelector("10.0.0.0/24")
        XCTAssertTrue(subnet.covers("10.0.0.200", protocol: .udp, port: 9))
        XCTAssertFalse(subnet.covers("10.0.1.1", protocol: .udp, port: 9))
        let range = ChildTrafficSelector("10.0.0.1..10.0.0.9[udp/1000-2000]")
        XCTAssertTrue(range.covers("10.0.0.9", protocol: .udp, port: 2000))
        XCTAssertFalse(range.covers("10.0.0.10", protocol: .udp, port: 1500))
        XCTAssertFalse(range.covers("10.0.0.5", protocol: .udp, port: 999))
        XCTAssertTrue(ChildTrafficSelector("fd77::1/128[tcp/http]").covers("fd77::1", protocol: .tcp, port: 80))
        XCTAssertFalse(ChildTrafficSelector("fd77::1/128[tcp/5001]").covers("10.0.0.1", protocol: .tcp, port: 5001))
        // What cannot be read is never taken for narrow: it covers everything.
        let garbage = ChildTrafficSelector("dynamic[tcp/5001]")
        XCTAssertFalse(garbage.isExact)
        XCTAssertTrue(garbage.covers("192.0.2.1", protocol: .udp, port: 7))
        XCTAssertTrue(ChildTrafficSelector("10.0.0.1/33[tcp/1]").covers("192.0.2.1", protocol: .tcp, port: 9))
    }

    func testCoverageNamesOneFlowOnlyWhenBothSidesAreExact() {
        XCTAssertEqual(coverage(remote: "10.0.0.1/32[tcp/40000]").exactFlow, flow)
        XCTAssertNil(coverage(remote: "10.0.0.1/32[tcp]").exactFlow)
        XCTAssertTrue(coverage(remote: "10.0.0.1/32[tcp]").covers(flow))
        XCTAssertFalse(coverage(remote: "10.0.0.3/32[tcp]").covers(flow))
        XCTAssertNil(ChildCoverage(local: ["10.0.0.2/32[tcp/5001]"], remote: ["10.0.0.1/32[udp/40000]"]).exactFlow)
    }

    /// Mallory at alice's address, after alice's connection was bound: neither a wide nor an exact child of hers
    /// is kept, and the connection stays alice's.
    func testAnotherPeersChildCoveringABoundConnectionIsRefused() throws {
        var children = ResponderChildren()
        let own = child(0x100, alice, remote: "10.0.0.1/32[tcp/40000]")
        XCTAssertEqual(children.add(own), [])
        XCTAssertEqual(children.decide(flow, reqid: reqid), .child(own))
        children.bind(flow, to: own)
        for remote in ["10.0.0.1/32[tcp]", "10.0.0.1/32[tcp/40000]", "10.0.0.0/24", "0.0.0.0/0"] {
            let hers = child(0x200, mallory, remote: remote)
            let refused = children.add(hers)
            XCTAssertEqual(refused.map(\.child), [hers], remote)
            XCTAssertTrue(refused.first?.reason.contains("a.example") ?? false, "the log names the holder")
            XCTAssertNil(children.child(inboundSPI: 0x200))
        }
        XCTAssertEqual(children.decide(flow, reqid: reqid), .child(own))
        // The same peer (a rekey, a new IKE SA after its restart) may add children for its own connection.
        let again = child(0x300, alice, remote: "10.0.0.1/32[tcp/40000]", ike: 9)
        XCTAssertEqual(children.add(again), [])
        XCTAssertEqual(children.decide(flow, reqid: reqid), .child(again), "the newest of the owner's children")
    }

    /// Two peers' children for exactly one flow before any connection is bound: which one the connection came
    /// under cannot be known, so both go and the flow is contested until the connection is gone.
    func testTwoPeersChildrenForOneUnboundFlowAreBothRefused() {
        var children = ResponderChildren()
        let hers = child(0x200, mallory, remote: "10.0.0.1/32[tcp/40000]")
        XCTAssertEqual(children.add(hers), [])
        let own = child(0x100, alice, remote: "10.0.0.1/32[tcp/40000]")
        let refused = children.add(own)
        XCTAssertEqual(Set(refused.map(\.child.inboundSPI)), [0x100, 0x200])
        XCTAssertEqual(children.count, 0)
        guard case .contested = children.decide(flow, reqid: reqid) else {
            return XCTFail("a contested flow binds to nobody")
        }
        XCTAssertEqual(children.add(child(0x101, alice, remote: "10.0.0.1/32[tcp/40000]")).count, 1)
        children.unbind(flow)
        XCTAssertEqual(children.add(child(0x102, alice, remote: "10.0.0.1/32[tcp/40000]")), [], "usable again")
    }

    /// A wide child never overlaps another peer's children; a flow-exact child inside another peer's wide child is
    /// the flow's own.
    func testWideChildrenAndExactOnes() {
        var children = ResponderChildren()
        let own = child(0x100, alice, remote: "10.0.0.1/32[tcp/40000]")
        XCTAssertEqual(children.add(own), [])
        XCTAssertEqual(children.add(child(0x200, mallory, remote: "10.0.0.1/32[tcp]")).count, 1)
        XCTAssertEqual(children.add(child(0x201, mallory, remote: "10.0.0.9/32[tcp]")), [], "elsewhere: kept")

        var other = ResponderChildren()
        let wide = child(0x200, mallory, remote: "10.0.0.1/32[tcp]")
        XCTAssertEqual(other.add(wide), [])
        XCTAssertEqual(other.decide(flow, reqid: reqid), .child(wide), "a host-to-host peer alone is its own")
        XCTAssertEqual(other.add(own), [], "an exact child inside another peer's wide one")
        XCTAssertEqual(other.decide(flow, reqid: reqid), .child(own), "the exact child is the flow's")
        XCTAssertEqual(other.add(child(0x202, alice, remote: "10.0.0.1/32[tcp]")).count, 1, "wide over wide")
    }

    /// A rekey moves a bound connection to the new child; a child that goes down leaves the connection to its peer.
    func testRekeyAndLossKeepTheConnectionWithItsPeer() {
        var children = ResponderChildren()
        let own = child(0x100, alice, remote: "10.0.0.1/32[tcp/40000]")
        _ = children.add(own)
        children.bind(flow, to: own)
        let rekeyed = child(0x110, alice, remote: "10.0.0.1/32[tcp/40000]")
        children.rekey(old: 0x100, new: rekeyed)
        XCTAssertNil(children.child(inboundSPI: 0x100))
        XCTAssertEqual(children.decide(flow, reqid: reqid), .child(rekeyed))
        children.remove(inboundSPI: 0x110)
        XCTAssertEqual(children.decide(flow, reqid: reqid), .unknown)
        XCTAssertEqual(children.owner(of: flow), alice)
        XCTAssertEqual(children.add(child(0x200, mallory, remote: "10.0.0.1/32[tcp/40000]")).count, 1)
        XCTAssertEqual(children.add(child(0x120, alice, remote: "10.0.0.1/32[tcp/40000]")), [])
    }

    /// charon's real `child-rekey` event (captured from strongSwan 5.9.8): `old` and `new` inside the child.
    func testRegistryFollowsARealRekeyEvent() throws {
        let registry = ChildRegistry()
        registry.claimResponder(reqid: reqid)
        let up = registry.record(
            VICIEvent(
                name: "child-updown",
                message: [
                    "up": .bool(true),
                    "wss1x0-responder": .section(
                        ike(children: ["l40-1": .section(childSection(spiIn: "c0000100", id: "1"))])),
                ]))
        guard case .peerChild(let child, _)? = up.first else { return XCTFail("a peer's child: \(up)") }
        XCTAssertEqual(child.coverage.exactFlow, flow)
        let outcomes = registry.record(
            VICIEvent(
                name: "child-rekey",
                message: [
                    "wss1x0-responder": .section(
                        ike(children: [
                            "l40": .section([
                                "old": .section(childSection(spiIn: "c0000100", id: "1")),
                                "new": .section(childSection(spiIn: "c0000110", id: "2")),
                            ])
                        ]))
                ]))
        guard case .rekeyed(let old, let replacement, _, _)? = outcomes.first else { return XCTFail("\(outcomes)") }
        XCTAssertEqual(old, 0xc000_0100)
        XCTAssertEqual(replacement.inboundSPI, 0xc000_0110)
        XCTAssertEqual(replacement.remoteIdentity, "a.example")
        XCTAssertNil(registry.protection(inboundSPI: 0xc000_0100), "the old child is forgotten")
        XCTAssertEqual(registry.protection(flow: flow)?.inboundSPI, 0xc000_0110)
    }

    // MARK: - Helpers

    func coverage(remote: String) -> ChildCoverage {
        ChildCoverage(local: ["10.0.0.2/32[tcp/5001]"], remote: [remote])
    }

    func child(_ spi: UInt32, _ peer: PeerName, remote: String, ike: UInt64 = 1) -> PeerChild {
        PeerChild(
            inboundSPI: spi, outboundSPI: spi + 1, childID: Int(spi), ikeSAID: peer == alice ? ike : ike + 100,
            peer: peer, reqid: reqid, coverage: coverage(remote: remote))
    }

    func ike(children: VICIMessage) -> VICIMessage {
        [
            "uniqueid": "1", "state": "ESTABLISHED", "local-host": "10.0.0.2", "remote-host": "10.0.0.1",
            "local-id": "b.example", "remote-id": "a.example", "child-sas": .section(children),
        ]
    }

    func childSection(spiIn: String, id: String) -> VICIMessage {
        [
            "name": "l40", "uniqueid": .string(id), "reqid": "40", "state": "INSTALLED", "mode": "TRANSPORT",
            "protocol": "ESP", "spi-in": .string(spiIn), "spi-out": "c0000fff", "encr-alg": "AES_GCM_16",
            "local-ts": .strings(["10.0.0.2/32[tcp/5001]"]), "remote-ts": .strings(["10.0.0.1/32[tcp/40000]"]),
        ]
    }
}
