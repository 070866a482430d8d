import XCTest
import XFRM

@testable import Keying
@testable import VICI

/// Tier 1: the CHILD_SA registry the query reads instead of charon or the kernel's whole SAD.
final class ChildRegistryTests: XCTestCase {
    func testFlowsFromTrafficSelectors() {
        let flow = ChildRegistry.flow(local: ["10.77.0.1/32[tcp/33516]"], remote: ["10.77.0.2/32[tcp/27015]"])
        XCTAssertEqual(
            flow,
            KeyedFlow(
                transportProtocol: .tcp, local: "10.77.0.1", localPort: 33516,
                remote: "10.77.0.2", remotePort: 27015))
        XCTAssertEqual(
            ChildRegistry.flow(local: ["fd77::1/128[udp/53]"], remote: ["fd77::2/128[udp/4000]"])?.remotePort, 4000)
        XCTAssertEqual(
            ChildRegistry.flow(local: ["10.0.0.1/32[tcp/http]"], remote: ["10.0.0.2/32[tcp/40000]"])?.localPort, 80,
            "charon prints a well-known port by its service name")
        // Anything wider than one flow is not indexed.
        for (local, remote) in [
            ("10.77.0.1/32[tcp]", "10.77.0.2/32[tcp/27015]"),
            ("10.77.0.0/24[tcp/1]", "10.77.0.2/32[tcp/27015]"),
            ("10.77.0.1/32[tcp/1000-2000]", "10.77.0.2/32[tcp/27015]"),
            ("10.77.0.1/32[tcp/1]", "10.77.0.2/32[udp/2]"),
            ("10.77.0.1/32", "10.77.0.2/32"),
            ("garbage", "10.77.0.2/32[tcp/2]"),
        ] {
            XCTAssertNil(ChildRegistry.flow(local: [local], remote: [remote]), "\(local) === \(remote)")
        }
    }

    func testEventsIndexChildrenBySPIFlowAndNameAndForgetThemWhenDown() throws {
        let registry = ChildRegistry()
        registry.claim(reqid: 7)
        registry.record(event(true, spiIn: "c0000001", local: "10.0.0.1/32[tcp/40000]"))
        let flow = KeyedFlow(
            transportProtocol: .tcp, local: "10.0.0.1", localPort: 40000, remote: "10.0.0.2", remotePort: 5001)
        XCTAssertEqual(registry.protection(flow: flow)?.inboundSPI, 0xc000_0001)
        XCTAssertEqual(registry.protection(flow: flow)?.outboundSPI, 0xc000_0002)
        XCTAssertEqual(registry.protection(inboundSPI: 0xc000_0001)?.remoteIdentity, "b.example")
        XCTAssertEqual(registry.waitForChild(named: "c7-1", upTo: .milliseconds(10))?.childSAID, 9)
        XCTAssertNil(registry.waitForChild(named: "c7-1", upTo: .milliseconds(10)), "read once")
        registry.record(event(false, spiIn: "c0000001", local: "10.0.0.1/32[tcp/40000]"))
        XCTAssertNil(registry.protection(flow: flow))
        XCTAssertNil(registry.protection(inboundSPI: 0xc000_0001))
    }

    /// A charon shared by several processes reports every process's children to each: only the children of
    /// reqids this backend uses are kept (and their rekeys, even after the reqid's last registration ended).
    func testOnlyThisProcesssChildrenAreKept() throws {
        let registry = ChildRegistry()
        registry.claim(reqid: 7)
        registry.record(event(true, spiIn: "c0000011", name: "l8", reqid: "8"))
        XCTAssertNil(registry.protection(inboundSPI: 0xc000_0011), "another process's child is not kept")
        registry.record(event(true, spiIn: "c0000012", name: "l7"))
        XCTAssertEqual(registry.count, 1)
        registry.unclaim(reqid: 7)
        registry.record(event(true, spiIn: "c0000013", name: "l7", kind: "child-rekey"))
        XCTAssertNotNil(
            registry.protection(inboundSPI: 0xc000_0013), "a kept child's rekey is kept after its listener closed")
        registry.record(event(false, spiIn: "c0000012", name: "l7"))
        registry.record(event(false, spiIn: "c0000013", name: "l7"))
        XCTAssertEqual(registry.count, 0, "down always removes")
        registry.record(event(true, spiIn: "c0000014", name: "l7"))
        XCTAssertNil(registry.protection(inboundSPI: 0xc000_0014), "nothing of reqid 7 is kept or claimed any more")
    }
}

/// A `child-updown` (or `child-rekey`) event as charon sends it, for one child of IKE SA 3 with b.example.
private func event(
    _ up: Bool, spiIn: String, local: String = "10.0.0.1/32[tcp/40000]", name: String = "c7-1",
    reqid: String = "7", kind: String = "child-updown"
) -> VICIEvent {
    VICIEvent(
        name: kind,
        message: [
            "up": .bool(up),
            "ike": .section([
                "uniqueid": "3", "remote-id": "b.example", "state": "ESTABLISHED",
                "child-sas": .section([
                    name: .section([
                        "name": .string(name), "uniqueid": "9", "reqid": .string(reqid), "state": "INSTALLED",
                        "spi-in": .string(spiIn), "spi-out": "c0000002",
                        "local-ts": .strings([local]), "remote-ts": .strings(["10.0.0.2/32[tcp/5001]"]),
                    ])
                ]),
            ]),
        ])
}
