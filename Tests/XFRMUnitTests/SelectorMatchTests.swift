import IPAddressing
import XCTest
import XFRM

/// Tier 1: the kernel's selector match (`xfrm_selector_match`) and which sockets a transport SA's selector
/// carries, as the reclaim of a dead owner's SAs asks it.
final class SelectorMatchTests: XCTestCase {
    let a: IPAddress = "10.77.0.1"
    let b: IPAddress = "10.77.0.2"

    func ip(_ text: String) -> IPAddress { IPAddress(text)! }

    func testPrefixes() {
        XCTAssertTrue(ip("10.77.0.9").lies(in: "10.77.0.0", length: 24))
        XCTAssertFalse(ip("10.77.1.9").lies(in: "10.77.0.0", length: 24))
        XCTAssertTrue(ip("10.77.0.9").lies(in: "10.77.0.8", length: 29))
        XCTAssertFalse(ip("10.77.0.17").lies(in: "10.77.0.8", length: 29))
        XCTAssertTrue(ip("fd00::1").lies(in: "::", length: 0))
        XCTAssertFalse(ip("fd00::1").lies(in: "0.0.0.0", length: 0), "another family")
        XCTAssertTrue(ip("fd00::1").lies(in: "fd00::1", length: 128))
    }

    func testAFlowExactSelectorMatchesItsFlowOnly() {
        let selector = XFRMSelector.host(a, b, protocol: .tcp, sourcePort: 40000, destinationPort: 443)
        let client = IPEndpoint(address: a, port: 40000)
        let server = IPEndpoint(address: b, port: 443)
        XCTAssertTrue(selector.matches(source: client, destination: server, upperProtocol: .tcp))
        XCTAssertFalse(selector.matches(source: client, destination: server, upperProtocol: .udp))
        XCTAssertFalse(selector.matches(source: server, destination: client, upperProtocol: .tcp), "one way")
        XCTAssertTrue(selector.carries(local: client, remote: server, upperProtocol: .tcp))
        XCTAssertTrue(selector.carries(local: server, remote: client, upperProtocol: .tcp), "the other way")
        XCTAssertFalse(
            selector.carries(local: IPEndpoint(address: a, port: 40001), remote: server, upperProtocol: .tcp))
        XCTAssertFalse(selector.carries(local: client, remote: server, upperProtocol: .udp))
    }

    func testAnAddressOnlySelectorCarriesEverySocketBetweenTheHosts() {
        let selector = XFRMSelector.host(a, b)
        XCTAssertTrue(
            selector.carries(
                local: IPEndpoint(address: a, port: 1234), remote: IPEndpoint(address: b, port: 80),
                upperProtocol: .tcp))
        XCTAssertFalse(
            selector.carries(
                local: IPEndpoint(address: a, port: 1234), remote: IPEndpoint(address: "10.77.0.3", port: 80),
                upperProtocol: .tcp))
    }

    func testAnUnconnectedUDPSocketIsCarriedByItsPortsSAs() {
        let selector = XFRMSelector.host(b, a, protocol: .udp, sourcePort: 5353, destinationPort: 53)
        let responder = IPEndpoint(address: .any(.inet), port: 53)
        XCTAssertTrue(selector.carries(local: responder, remote: nil, upperProtocol: .udp))
        XCTAssertFalse(
            selector.carries(local: IPEndpoint(address: .any(.inet), port: 54), remote: nil, upperProtocol: .udp))
        // A dual-stack socket bound to [::]:53 receives IPv4 too.
        XCTAssertTrue(
            selector.carries(local: IPEndpoint(address: .any(.inet6), port: 53), remote: nil, upperProtocol: .udp))
        XCTAssertFalse(
            selector.carries(local: IPEndpoint(address: ip("fd00::1"), port: 53), remote: nil, upperProtocol: .udp))
    }
}
