import IPAddressing
import NetnsTestSupport
import SystemPackage
import TierTesting
import XCTest
import XFRM

/// Tier 2: per-socket policies on the host kernel, in a fresh pair of namespaces per test.
final class SocketPolicyTests: XCTestCase {
    var pair: NamespacePair!

    override func setUpWithError() throws {
        try requireTier(.hostKernel)
        pair = try NamespacePair(prefix: "sp")
    }

    override func tearDown() {
        if let pair {
            let names = [pair.a.name, pair.b.name]
            pair.remove()
            let list = (try? Command.run(["ip", "netns", "list"]).output) ?? ""
            for name in names { XCTAssertFalse(list.contains(name), "namespace \(name) left behind") }
        }
        pair = nil
    }

    func testRequiredESPOnUDPBlocksSendRaisesAcquireAndClearingLetsItThrough() throws {
        try requiredESPScenario(family: .inet)
    }

    func testRequiredESPOnUDPOverIPv6() throws {
        try requiredESPScenario(family: .inet6)
    }

    func requiredESPScenario(family: IPAddressFamily) throws {
        let (addressA, addressB) = pair.addresses(family)
        let clientA = try XFRMClient(namespace: pair.a.namespace)
        // The larval state an ACQUIRE creates lives net.core.xfrm_acq_expires seconds (per namespace); make it
        // short so its hard EXPIRE can be seen.
        try pair.a.exec(["sysctl", "-q", "-w", "net.core.xfrm_acq_expires=1"])
        // The kernel only raises ACQUIREs while someone listens in the namespace.
        let recorder = EventRecorder(try XFRMMonitor(namespace: pair.a.namespace, groups: [.acquire, .expire]))
        defer { recorder.stop() }

        let receiver = try TestSocket.make(in: pair.b.namespace, family: family, kind: .udp)
        try receiver.bind(addressB, port: 0)
        let serverPort = receiver.localPort
        let sender = try TestSocket.make(in: pair.a.namespace, family: family, kind: .udp)
        try sender.bind(addressA, port: 0)
        let clientPort = sender.localPort

        let reqid: UInt32 = 4242
        try SocketPolicy.require([XFRMTemplate(reqid: reqid)], on: sender.fd)
        let sockets = try clientA.policies().filter(\.direction.isSocketPolicy)
        XCTAssertEqual(
            Set(sockets.map(\.direction)), [.socketInbound, .socketOutbound],
            "socket policies show in the dump as socket in/out")

        let payload = Array("must not leave in clear".utf8)
        XCTAssertEqual(
            sender.sendTo(payload, addressB, port: serverPort), .resourceTemporarilyUnavailable,
            "no SA: sendto fails with EAGAIN")

        let event = try recorder.wait(timeout: 5) {
            if case .acquire = $0 { return true }
            return false
        }
        guard case .acquire(let acquire)? = event else {
            return XCTFail("no ACQUIRE; saw \(recorder.recorded)")
        }
        XCTAssertEqual(acquire.selector.family, family)
        XCTAssertEqual(acquire.selector.source, addressA)
        XCTAssertEqual(acquire.selector.destination, addressB)
        XCTAssertEqual(acquire.selector.sourcePort, clientPort)
        XCTAssertEqual(acquire.selector.destinationPort, serverPort)
        XCTAssertEqual(acquire.selector.upperProtocol, .udp)
        XCTAssertEqual(acquire.id.destination, addressB)
        XCTAssertEqual(acquire.id.proto, .esp)
        XCTAssertEqual(acquire.source, addressA)
        XCTAssertEqual(acquire.templates.map(\.reqid), [reqid])
        XCTAssertEqual(acquire.templates.first?.level, .required)
        XCTAssertTrue(acquire.isFromSocketPolicy, "policy index \(acquire.policy.index) names a socket policy")
        XCTAssertNotEqual(acquire.sequence, 0)

        // The unanswered ACQUIRE ends with a hard EXPIRE of the larval (SPI 0) state.
        let expired = try recorder.wait(timeout: 10) {
            if case .expire(let state, hard: true) = $0 { return state.id.spi == 0 && state.reqid == reqid }
            return false
        }
        guard case .expire(let larval, _)? = expired else { return XCTFail("no hard EXPIRE; saw \(recorder.recorded)") }
        XCTAssertEqual(larval.id.destination, addressB)
        XCTAssertEqual(larval.selector.destinationPort, serverPort)

        // Nothing reached the receiver meanwhile.
        XCTAssertThrowsError(try receiver.receive(timeout: 0.2))

        try SocketPolicy.clear(on: sender.fd)
        XCTAssertEqual(try clientA.policies().filter(\.direction.isSocketPolicy), [], "clear removes both directions")
        XCTAssertNil(sender.sendTo(payload, addressB, port: serverPort))
        XCTAssertEqual(try receiver.receive(timeout: 5), payload, "without the policy the datagram goes through")

        // Leave nothing: the ACQUIRE's larval state is flushed, the sockets' policies go with the sockets.
        sender.close()
        receiver.close()
        try clientA.flushStates()
        XCTAssertEqual(try clientA.states(), [])
        XCTAssertEqual(try clientA.policies(), [])
    }

    func testAcceptedSocketInheritsListenerPolicies() throws {
        let clientB = try XFRMClient(namespace: pair.b.namespace)
        let listener = try TestSocket.make(in: pair.b.namespace, family: .inet, kind: .tcp)
        // `level use`: with no SA the handshake still completes in clear, so inheritance can be observed here.
        try SocketPolicy.require([XFRMTemplate(reqid: 77, level: .use)], on: listener.fd)
        try listener.bind(pair.addressB4, port: 0)
        try listener.listen()
        let before = try clientB.policies().filter(\.direction.isSocketPolicy)
        XCTAssertEqual(before.count, 2)

        let client = try TestSocket.make(in: pair.a.namespace, family: .inet, kind: .tcp)
        client.setTimeouts(5)
        try client.connect(pair.addressB4, port: listener.localPort)
        let accepted = try listener.accept(timeout: 5)

        let after = try clientB.policies().filter(\.direction.isSocketPolicy)
        XCTAssertEqual(after.count, 4, "the accepted socket got its own copy of both policies")
        for direction in [XFRMDirection.socketInbound, .socketOutbound] {
            let copies = after.filter { $0.direction == direction }
            XCTAssertEqual(copies.count, 2)
            XCTAssertEqual(Set(copies.map(\.index)).count, 1, "the child keeps the listener's index")
            XCTAssertEqual(copies.flatMap { $0.templates.map(\.reqid) }, [77, 77])
        }

        listener.close()
        XCTAssertEqual(
            try clientB.policies().filter(\.direction.isSocketPolicy).count, 2,
            "the child's policies outlive the listener")
        accepted.close()
        client.close()
        XCTAssertEqual(try clientB.policies(), [])
        try clientB.flushStates()
        XCTAssertEqual(try clientB.states(), [])
    }

    /// A second `setsockopt` for a direction replaces that direction only.
    func testSettingADirectionAgainReplacesIt() throws {
        let socket = try TestSocket.make(in: pair.a.namespace, family: .inet6, kind: .tcp)
        defer { socket.close() }
        let client = try XFRMClient(namespace: pair.a.namespace)
        try SocketPolicy.require([XFRMTemplate(reqid: 1)], on: socket.fd)
        try SocketPolicy.set(
            XFRMPolicy(
                selector: .any(.inet6), direction: .outbound,
                templates: [XFRMTemplate(reqid: 2, level: .use)]), on: socket.fd)
        let policies = try client.policies()
        XCTAssertEqual(policies.count, 2)
        XCTAssertEqual(policies.first { $0.direction == .socketOutbound }?.templates.map(\.reqid), [2])
        XCTAssertEqual(policies.first { $0.direction == .socketOutbound }?.templates.map(\.level), [.use])
        XCTAssertEqual(policies.first { $0.direction == .socketInbound }?.templates.map(\.reqid), [1])
        XCTAssertEqual(Set(policies.map(\.selector.family)), [.inet6])
    }

    func testBypassAndValidation() throws {
        let socket = try TestSocket.make(in: pair.a.namespace, family: .inet, kind: .udp)
        try SocketPolicy.setBypass(on: socket.fd)
        let client = try XFRMClient(namespace: pair.a.namespace)
        let policies = try client.policies()
        XCTAssertEqual(policies.count, 2)
        XCTAssertTrue(policies.allSatisfy { $0.templates.isEmpty && $0.action == .allow })

        XCTAssertThrowsError(
            try SocketPolicy.set(XFRMPolicy(selector: .any(.inet), direction: .forward), on: socket.fd)
        ) {
            XCTAssertEqual(($0 as? XFRMError)?.code, .invalidArgument)
        }
        XCTAssertThrowsError(
            try SocketPolicy.set(
                XFRMPolicy(selector: .any(.unspecified), direction: .outbound),
                on: socket.fd))
        let seven = XFRMPolicy(
            selector: .any(.inet), direction: .outbound,
            templates: Array(repeating: XFRMTemplate(reqid: 1), count: 7))
        XCTAssertThrowsError(try SocketPolicy.set(seven, on: socket.fd))

        // A socket that is not IPv4/IPv6 gets a clear error, not a kernel surprise.
        let unix = Glibc.socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue), 0)
        defer { close(unix) }
        XCTAssertThrowsError(try SocketPolicy.setBypass(on: FileDescriptor(rawValue: unix))) {
            XCTAssertEqual(($0 as? XFRMError)?.code, .invalidArgument)
        }
        socket.close()
        XCTAssertEqual(try client.policies(), [])
    }
}
