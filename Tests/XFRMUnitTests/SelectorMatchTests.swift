import IPAddressing
import XCTest
import XFRM

/// Tier 1: which sockets a transport SA's selector carries (`carries`, on the kernel's `xfrm_selector_match`,
/// `covers`), as the reclaim of a dead owner's SAs and the adoption of a connection after a restart ask it.
final class SelectorMatchTests: XCTestCase {
    let a: IPAddress = "10.77.0.1"
    let b: IPAddress = "10.77.0.2"

    func ip(_ text: String) -> IPAddress { IPAddress(text)! }

    func testPrefixesOfEachFamily() {
        XCTAssertTrue(ip("10.77.0.9").hasPrefix(of: "10.77.0.0", length: 24))
        XCTAssertFalse(ip("10.77.1.9").hasPrefix(of: "10.77.0.0", length: 24))
        XCTAssertTrue(ip("10.77.0.9").hasPrefix(of: "10.77.0.8", length: 29))
        XCTAssertFalse(ip("10.77.0.17").hasPrefix(of: "10.77.0.8", length: 29))
        XCTAssertTrue(ip("fd00::1").hasPrefix(of: "::", length: 0))
        XCTAssertFalse(ip("fd00::1").hasPrefix(of: "0.0.0.0", length: 0), "another family")
        XCTAssertTrue(ip("fd00::1").hasPrefix(of: "fd00::1", length: 128))
    }

    func testAFlowExactSelectorMatchesItsFlowOnly() {
        let selector = XFRMSelector.host(a, b, protocol: .tcp, sourcePort: 40000, destinationPort: 443)
        let client = IPEndpoint(address: a, port: 40000)
        let server = IPEndpoint(address: b, port: 443)
        func covers(_ from: IPEndpoint, _ to: IPEndpoint, _ upper: XFRMUpperProtocol) -> Bool {
            selector.covers(
                source: from.address, sourcePort: from.port, destination: to.address, destinationPort: to.port,
                protocol: upper)
        }
        XCTAssertTrue(covers(client, server, .tcp))
        XCTAssertFalse(covers(client, server, .udp))
        XCTAssertFalse(covers(server, client, .tcp), "one way")
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
