import IPAddressing
import NetnsTestSupport
import TierTesting
import XCTest
import XFRM

/// Tier 2: global policies on the host kernel, in a fresh namespace per test.
final class PolicyTests: XCTestCase {
    var ns: TestNamespace!
    var client: XFRMClient!

    override func setUpWithError() throws {
        try requireTier(.hostKernel)
        ns = try TestNamespace(prefix: "pol")
        client = try XFRMClient(namespace: ns.namespace)
    }

    override func tearDown() {
        if let ns {
            let name = ns.name
            ns.remove()
            let list = (try? Command.run(["ip", "netns", "list"]).output) ?? ""
            XCTAssertFalse(list.contains(name), "namespace \(name) left behind")
        }
        ns = nil
        client = nil
    }

    func testPolicyAddGetUpdateDeleteRoundTrip() throws {
        let selector = XFRMSelector.host("10.1.0.1", "10.1.0.2", protocol: .tcp, destinationPort: 443)
        let policy = XFRMPolicy(
            selector: selector, direction: .outbound, priority: 10,
            templates: [XFRMTemplate(reqid: 5), XFRMTemplate(proto: .ah, reqid: 6, level: .use)])
        try client.addPolicy(policy)

        var fetched = try client.getPolicy(.selector(selector, .outbound))
        XCTAssertNotEqual(fetched.index, 0, "the kernel assigns an index")
        XCTAssertEqual(fetched.index & 7, UInt32(XFRMDirection.outbound.rawValue), "index & 7 == dir")
        let index = fetched.index
        fetched.index = 0
        fetched.counters = policy.counters
        XCTAssertEqual(fetched.selector, policy.selector)
        XCTAssertEqual(fetched.priority, 10)
        XCTAssertEqual(fetched.templates.map(\.reqid), [5, 6])
        XCTAssertEqual(fetched.templates.map(\.level), [.required, .use])
        XCTAssertEqual(fetched.templates.map(\.proto), [.esp, .ah])

        // The same policy by index.
        XCTAssertEqual(try client.getPolicy(.index(index, .outbound)).selector, selector)

        // Adding it again is EEXIST, with the errno kept.
        XCTAssertThrowsError(try client.addPolicy(policy)) { error in
            let e = error as? XFRMError
            XCTAssertEqual(e?.code, .kernelRejected)
            XCTAssertEqual(e?.errno, .fileExists)
            XCTAssertEqual(e?.operation, "policy add")
        }

        var updated = policy
        updated.priority = 20
        updated.action = .block
        try client.updatePolicy(updated)
        let afterUpdate = try client.getPolicy(.selector(selector, .outbound))
        XCTAssertEqual(afterUpdate.priority, 20)
        XCTAssertEqual(afterUpdate.action, .block)

        XCTAssertEqual(try client.policies().count, 1)
        try client.deletePolicy(.selector(selector, .outbound))
        XCTAssertThrowsError(try client.getPolicy(.selector(selector, .outbound))) { error in
            XCTAssertEqual((error as? XFRMError)?.errno, .noSuchFileOrDirectory)
        }
        XCTAssertEqual(try client.policies(), [])
    }

    func testIPv6PolicyWithMarkAndFlush() throws {
        let mark = XFRMMark(value: 0x42, mask: 0xff)
        for port in [1, 2, 3] as [UInt16] {
            try client.addPolicy(
                XFRMPolicy(
                    selector: .host("fd00::1", "fd00::2", protocol: .udp, destinationPort: port),
                    direction: .inbound, templates: [XFRMTemplate(reqid: UInt32(port))],
                    mark: mark))
        }
        let listed = try client.policies()
        XCTAssertEqual(listed.count, 3)
        XCTAssertEqual(Set(listed.map(\.mark)), [mark])
        XCTAssertEqual(Set(listed.map { $0.selector.destinationPort }), [1, 2, 3])
        XCTAssertEqual(Set(listed.map(\.selector.family)), [.inet6])
        try client.flushPolicies()
        XCTAssertEqual(try client.policies(), [])
    }

    /// Thousands of policies: batched adds, a dump spread over many datagrams, batched deletes; a duplicate in
    /// a batch is reported with its position and does not stop the others.
    func testBatchedAddDumpAndDelete() throws {
        let count = 2_000
        var policies: [XFRMPolicy] = []
        for i in 0..<count {
            let source = IPAddress(bytes: [10, 9, UInt8(i >> 8), UInt8(i & 0xff)])!
            let selector = XFRMSelector.host(source, "10.8.0.1")
            policies.append(
                XFRMPolicy(
                    selector: selector, direction: .outbound,
                    templates: [XFRMTemplate(reqid: UInt32(i + 1))]))
        }
        try client.addPolicies(policies)
        let listed = try client.policies()
        XCTAssertEqual(listed.count, count)
        XCTAssertEqual(Set(listed.flatMap { $0.templates.map(\.reqid) }), Set((1...count).map(UInt32.init)))

        let again = [
            XFRMPolicy(selector: .host("10.7.0.1", "10.7.0.2"), direction: .inbound), policies[5],
            XFRMPolicy(selector: .host("10.7.0.3", "10.7.0.4"), direction: .inbound),
        ]
        XCTAssertThrowsError(try client.addPolicies(again)) { error in
            let e = error as? XFRMError
            XCTAssertEqual(e?.errno, .fileExists)
            XCTAssertEqual(e?.detail, "request 1 of 3")
        }
        XCTAssertEqual(try client.policies().count, count + 2, "the other two of the batch were added")

        try client.deletePolicies(policies.map { XFRMPolicyID.selector($0.selector, $0.direction) })
        XCTAssertEqual(try client.policies().count, 2)
    }

    func testMonitorReportsPolicyEvents() throws {
        let recorder = EventRecorder(try XFRMMonitor(namespace: ns.namespace, groups: [.policies]))
        defer { recorder.stop() }
        let selector = XFRMSelector.host("10.2.0.1", "10.2.0.2")
        try client.addPolicy(XFRMPolicy(selector: selector, direction: .forward, templates: [XFRMTemplate(reqid: 9)]))
        try client.deletePolicy(.selector(selector, .forward))
        // The kernel reports a flush only when there was something to flush.
        try client.addPolicy(XFRMPolicy(selector: selector, direction: .inbound))
        try client.flushPolicies()
        let added = try recorder.wait(timeout: 5) {
            if case .policyAdded(let p) = $0 { return p.selector == selector && p.templates.first?.reqid == 9 }
            return false
        }
        XCTAssertNotNil(added, "policy add event; saw \(recorder.recorded)")
        let deleted = try recorder.wait(timeout: 5) {
            if case .policyDeleted(let p) = $0 { return p.selector == selector && p.direction == .forward }
            return false
        }
        XCTAssertNotNil(deleted, "policy delete event; saw \(recorder.recorded)")
        XCTAssertNotNil(try recorder.wait(timeout: 5) { $0 == .policiesFlushed })
    }

    /// Two decoders of one kernel dump: ours and libnl-xfrm's caches must agree on every policy.
    func testLibnlReadsTheSameSPD() throws {
        try client.addPolicies([
            XFRMPolicy(
                selector: .host("10.10.0.1", "10.10.0.2", protocol: .tcp, destinationPort: 443),
                direction: .outbound, priority: 5, templates: [XFRMTemplate(reqid: 1), XFRMTemplate(reqid: 2)]),
            XFRMPolicy(selector: .host("fd10::1", "fd10::2"), direction: .inbound, action: .block, priority: 6),
            XFRMPolicy(selector: .any(.inet), direction: .forward, priority: 7, templates: [XFRMTemplate(reqid: 3)]),
        ])
        let socket = try TestSocket.make(in: ns.namespace, family: .inet, kind: .udp)
        defer { socket.close() }
        try SocketPolicy.require([XFRMTemplate(reqid: 99)], on: socket.fd)

        let ours = try client.policies().map { p in
            LibnlOracle.Policy(
                index: p.index, direction: p.direction.rawValue, priority: p.priority,
                action: p.action.rawValue, source: p.selector.source, destination: p.selector.destination,
                destinationPort: p.selector.destinationPort, reqids: p.templates.map(\.reqid))
        }
        let theirs = try LibnlOracle.policies(in: ns.namespace)
        XCTAssertEqual(ours.count, 5)
        XCTAssertEqual(Set(ours), Set(theirs))
    }
}
