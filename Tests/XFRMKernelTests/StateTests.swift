import NetnsTestSupport
import TierTesting
import XCTest
import XFRM

/// Tier 2: states on the host kernel, which has XFRM but no ESP transforms.
final class StateTests: XCTestCase {
    var ns: TestNamespace!
    var client: XFRMClient!

    override func setUpWithError() throws {
        try requireTier(.hostKernel)
        ns = try TestNamespace(prefix: "sa")
        client = try XFRMClient(namespace: ns.namespace)
    }

    override func tearDown() {
        ns?.remove()
        ns = nil
        client = nil
    }

    func testAllocateSPIGetListFilterAndDelete() throws {
        let recorder = EventRecorder(try XFRMMonitor(namespace: ns.namespace, groups: [.states]))
        defer { recorder.stop() }
        let first = try client.allocateSPI(
            source: "10.3.0.1", destination: "10.3.0.2", reqid: 11,
            range: 0x1000...0x1fff)
        XCTAssertTrue((0x1000...0x1fff).contains(first.id.spi), "spi \(first.id.spi) in the range asked for")
        XCTAssertEqual(first.reqid, 11)
        XCTAssertEqual(first.id.destination, "10.3.0.2")
        let second = try client.allocateSPI(source: "fd00::1", destination: "fd00::2", reqid: 12)
        XCTAssertEqual(second.family, .inet6)

        let fetched = try client.getState(first.id)
        XCTAssertEqual(fetched.id, first.id)
        XCTAssertEqual(fetched.source, "10.3.0.1")
        XCTAssertEqual(fetched.reqid, 11)

        XCTAssertEqual(Set(try client.states().map(\.id)), [first.id, second.id])
        XCTAssertEqual(try client.states(source: "fd00::1").map(\.id), [second.id], "kernel-side address filter")
        XCTAssertEqual(try client.states(destination: "10.3.0.2").map(\.id), [first.id])
        XCTAssertEqual(try client.states(proto: .ah), [], "kernel-side protocol filter")

        try client.deleteState(first.id, source: "10.3.0.1")
        XCTAssertThrowsError(try client.getState(first.id)) {
            // The kernel answers a lookup of a missing SA with ESRCH (xfrm_user_state_lookup).
            XCTAssertEqual(($0 as? XFRMError)?.errno, .noSuchProcess)
        }
        let deleted = try recorder.wait(timeout: 5) {
            if case .stateDeleted(let s) = $0 { return s.id == first.id }
            return false
        }
        XCTAssertNotNil(deleted, "delete event; saw \(recorder.recorded)")
        try client.flushStates()
        XCTAssertEqual(try client.states(), [])
        XCTAssertNotNil(try recorder.wait(timeout: 5) { $0 == .statesFlushed(.any) })
    }

    /// The host kernel has no ESP: the kernel's own reason must reach the caller intact.
    func testKernelRejectionKeepsErrnoAndExtendedAck() throws {
        try XCTSkipIf(TierProbe.espUnavailableReason == nil, "this kernel has ESP; the rejection cannot be seen here")
        let state = XFRMState(
            source: "10.4.0.1", destination: "10.4.0.2", spi: 0x4000, reqid: 1,
            algorithms: [.aesGCM(key: [UInt8](repeating: 1, count: 20))])
        XCTAssertThrowsError(try client.addState(state)) { error in
            let e = error as? XFRMError
            XCTAssertEqual(e?.code, .kernelRejected)
            XCTAssertEqual(e?.operation, "state add")
            XCTAssertNotNil(e?.errno)
            XCTAssertEqual(e?.kernelMessage?.isEmpty, false, "extended ack text: \(String(describing: e))")
        }
    }

    func testBadInputGetsAClearError() throws {
        XCTAssertThrowsError(try client.getState(XFRMStateID(destination: "10.5.0.1", spi: 0x9999))) {
            // The kernel answers a lookup of a missing SA with ESRCH (xfrm_user_state_lookup).
            XCTAssertEqual(($0 as? XFRMError)?.errno, .noSuchProcess)
        }
        let badKey = XFRMState(
            source: "10.5.0.1", destination: "10.5.0.2", spi: 1,
            algorithms: [
                XFRMAlgorithm(
                    .aead(icvBits: 128), name: "rfc4106(gcm(aes))", key: [1, 2],
                    keyBits: 160)
            ])
        XCTAssertThrowsError(try client.addState(badKey)) {
            XCTAssertEqual(($0 as? XFRMError)?.code, .invalidArgument)
        }
    }
}
