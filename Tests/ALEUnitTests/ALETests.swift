import ALE
import Dispatch
import Glibc
import XCTest
import XFRM
import SystemPackage
import Foundation

final class EndpointStateMachineTests: XCTestCase {
    let info = ProtectionInfo(ikeSAID: 1, childSAID: 2, peerIdentity: "b.example", encryptionAlgorithm: "AES_GCM_16")

    func testHappyPath() {
        var machine = EndpointStateMachine(allowInsecure: false)
        XCTAssertEqual(machine.state, .requested)
        XCTAssertEqual(machine.handle(.negotiationStarted), [])
        XCTAssertEqual(machine.state, .negotiating)
        XCTAssertEqual(machine.handle(.childUp(info)), [.notifyWaiters])
        XCTAssertEqual(machine.state, .secured(info))
        XCTAssertEqual(machine.handle(.closed), [.notifyWaiters, .releaseResources])
        XCTAssertEqual(machine.state, .closed)
        XCTAssertEqual(machine.handle(.closed), [], "resources are released once")
        XCTAssertEqual(machine.handle(.childUp(info)), [])
        XCTAssertEqual(machine.state, .closed)
    }

    func testFailureWithoutAllowInsecureNeverFallsBack() {
        var machine = EndpointStateMachine(allowInsecure: false)
        _ = machine.handle(.negotiationStarted)
        XCTAssertEqual(machine.handle(.failed(.negotiationTimedOut(seconds: 5))), [.notifyWaiters])
        XCTAssertEqual(machine.handle(.fellBackToClear), [])
        XCTAssertEqual(machine.state, .failed(.negotiationTimedOut(seconds: 5)))
    }

    func testAllowInsecureFallsBackAndStaysClear() {
        var machine = EndpointStateMachine(allowInsecure: true)
        _ = machine.handle(.negotiationStarted)
        _ = machine.handle(.failed(.negotiationTimedOut(seconds: 1)))
        XCTAssertEqual(machine.handle(.fellBackToClear), [.notifyWaiters])
        XCTAssertEqual(machine.state, .insecure(after: .negotiationTimedOut(seconds: 1)))
        // A TCP connection opened in clear stays clear for its whole life (kernel-notes), so a late SA changes nothing.
        XCTAssertEqual(machine.handle(.childUp(info)), [])
        XCTAssertEqual(machine.state, .insecure(after: .negotiationTimedOut(seconds: 1)))
    }

    func testRekeyAndChildDown() {
        var machine = EndpointStateMachine(allowInsecure: false)
        _ = machine.handle(.childUp(info))
        var rekeyed = info
        rekeyed.childSAID = 3
        XCTAssertEqual(machine.handle(.childUp(rekeyed)), [.notifyWaiters])
        XCTAssertEqual(machine.state, .secured(rekeyed))
        XCTAssertEqual(machine.handle(.failed(.negotiationFailed("late"))), [], "a protected connection stays secured")
        XCTAssertEqual(machine.handle(.childDown), [.notifyWaiters])
        XCTAssertEqual(machine.state, .negotiating)
    }

    func testPeerNameMismatchIsRecorded() {
        var machine = EndpointStateMachine(allowInsecure: false)
        _ = machine.handle(.negotiationStarted)
        let failure = EndpointFailure.peerNameMismatch(expected: "b.example", detail: "AUTHENTICATION_FAILED")
        _ = machine.handle(.failed(failure))
        XCTAssertEqual(machine.state, .failed(failure))
        XCTAssertTrue(machine.state.description.contains("b.example"))
    }
}

final class EndpointTableTests: XCTestCase {
    func endpoint(_ cookie: UInt64, reqid: UInt32?) -> Endpoint {
        Endpoint(cookie: cookie, descriptor: 3, family: .inet, kind: .stream, reqid: reqid, allowInsecure: false,
                 summary: "test")
    }

    func testInsertOnceLookupByCookieAndReqid() throws {
        let table = EndpointTable()
        try table.insert(endpoint(1, reqid: 100))
        try table.insert(endpoint(2, reqid: 100))
        try table.insert(endpoint(3, reqid: nil))
        XCTAssertThrowsError(try table.insert(endpoint(1, reqid: 5))) {
            XCTAssertEqual($0 as? EndpointTable.InsertError, .alreadyRegistered)
        }
        XCTAssertEqual(table.endpoint(cookie: 1)?.reqid, 100)
        XCTAssertEqual(Set(table.endpoints(reqid: 100).map(\.cookie)), [1, 2])
        XCTAssertEqual(table.users(of: 100), 2)
        table.update(cookie: 2) { $0.reqid = 200 }
        XCTAssertEqual(table.users(of: 100), 1)
        XCTAssertEqual(table.endpoints(reqid: 200).map(\.cookie), [2])
        XCTAssertEqual(table.handle(.childUp(ProtectionInfo()), cookie: 1), [.notifyWaiters])
        XCTAssertEqual(table.handle(.childUp(ProtectionInfo()), cookie: 99), [], "unknown cookie: nothing")
        XCTAssertEqual(table.remove(cookie: 1)?.cookie, 1)
        XCTAssertEqual(table.users(of: 100), 0)
        XCTAssertEqual(table.count, 2)
    }

    func testPeerTargetNamesPerAddressWithCatchAll() {
        var e = endpoint(1, reqid: 1)
        e.peerTargetNames[nil] = "any.example"
        e.peerTargetNames["10.0.0.2"] = "b.example"
        XCTAssertEqual(e.peerTargetName(for: "10.0.0.2"), "b.example")
        XCTAssertEqual(e.peerTargetName(for: "10.0.0.3"), "any.example")
        e.peerTargetNames[nil] = nil
        XCTAssertNil(e.peerTargetName(for: "10.0.0.3"))
    }

    func testConcurrentUpdatesAreSerialised() throws {
        let table = EndpointTable()
        for cookie in 0..<64 as Range<UInt64> { try table.insert(endpoint(cookie, reqid: UInt32(cookie % 4))) }
        DispatchQueue.concurrentPerform(iterations: 8) { worker in
            for i in 0..<2_000 {
                let cookie = UInt64((worker * 7 + i) % 64)
                table.update(cookie: cookie) { $0.reqid = UInt32(i % 8) }
                _ = table.endpoints(reqid: UInt32(i % 8))
            }
        }
        let total = (0..<8).map { table.users(of: UInt32($0)) }.reduce(0, +)
        XCTAssertEqual(total, 64, "every endpoint indexed under exactly one reqid")
    }
}

final class ReqidAllocatorTests: XCTestCase {
    var directory: String!

    override func setUpWithError() throws {
        directory = FileManager.default.temporaryDirectory.appendingPathComponent("reqid-test-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
    }

    override func tearDown() {
        if let directory { _ = try? FileManager.default.removeItem(atPath: directory) }
    }

    func testConcurrentAllocationsAreUnique() throws {
        let allocator = try ReqidAllocator(directory: directory + "/ids", range: 1000...1999)
        let results = UnsafeMutableBufferPointer<UInt32>.allocate(capacity: 800)
        defer { results.deallocate() }
        nonisolated(unsafe) let out = results
        DispatchQueue.concurrentPerform(iterations: 8) { worker in
            for i in 0..<100 { out[worker * 100 + i] = (try? allocator.allocate()) ?? 0 }
        }
        XCTAssertFalse(results.contains(0))
        XCTAssertEqual(Set(results).count, 800, "no reqid handed out twice")
        XCTAssertEqual(allocator.heldReqids.count, 800)
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: directory + "/ids").count, 800)
        allocator.releaseAll()
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: directory + "/ids").count, 0)
    }

    func testTwoAllocatorsSharingAFolderNeverCollide() throws {
        // Two allocators stand for two processes of one namespace.
        let a = try ReqidAllocator(directory: directory + "/ids", range: 10...20)
        let b = try ReqidAllocator(directory: directory + "/ids", range: 10...20)
        var seen = Set<UInt32>()
        for _ in 0..<5 {
            XCTAssertTrue(seen.insert(try a.allocate()).inserted)
            XCTAssertTrue(seen.insert(try b.allocate()).inserted)
        }
        XCTAssertEqual(seen.count, 10)
        _ = try a.allocate()
        XCTAssertThrowsError(try b.allocate(), "the range of 11 is exhausted")
    }

    func testStaleEntriesOfDeadProcessesAreReclaimedLiveOnesAreNot() throws {
        let folder = directory + "/ids"
        let allocator = try ReqidAllocator(directory: folder, range: 50...51)
        // 50 belongs to a process that no longer exists, 51 to a live one (pid 1).
        try "999999999\n".write(toFile: folder + "/50", atomically: true, encoding: .utf8)
        try "1\n".write(toFile: folder + "/51", atomically: true, encoding: .utf8)
        XCTAssertEqual(try allocator.allocate(), 50)
        XCTAssertThrowsError(try allocator.allocate())
        allocator.release(50)
        XCTAssertFalse(FileManager.default.fileExists(atPath: folder + "/50"))
        XCTAssertTrue(FileManager.default.fileExists(atPath: folder + "/51"), "another owner's reqid is never touched")
    }
}

final class SocketInspectorTests: XCTestCase {
    func testFactsOfRealSockets() throws {
        let tcp = socket(AF_INET6, Int32(SOCK_STREAM.rawValue), 0)
        let udp = socket(AF_INET, Int32(SOCK_DGRAM.rawValue), 0)
        let unix = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(tcp); close(udp); close(unix) }
        let t = try SocketInspector.facts(of: tcp)
        XCTAssertEqual(t.family, .inet6)
        XCTAssertEqual(t.kind, .stream)
        XCTAssertFalse(t.isBound)
        XCTAssertFalse(t.isConnected)
        XCTAssertNotEqual(t.cookie, 0)
        let u = try SocketInspector.facts(of: udp)
        XCTAssertEqual(u.kind, .datagram)
        XCTAssertNotEqual(u.cookie, t.cookie, "cookies differ per socket")
        XCTAssertEqual(try SocketInspector.facts(of: unix).family, .unspecified)

        let address = SocketEndpointAddress(address: "127.0.0.1", port: 0)
        _ = address.withSockaddr { bind(udp, $0, $1) }
        XCTAssertTrue(try SocketInspector.facts(of: udp).isBound)

        let file = open("/dev/null", O_RDONLY)
        defer { close(file) }
        XCTAssertThrowsError(try SocketInspector.facts(of: file)) { XCTAssertEqual($0 as? Errno, .notSocket) }
        XCTAssertThrowsError(try SocketInspector.facts(of: 987_654)) { XCTAssertEqual($0 as? Errno, .badFileDescriptor) }
    }

    func testV4MappedDetection() {
        XCTAssertTrue(SocketEndpointAddress(address: "::ffff:10.0.0.1", port: 1).isV4Mapped)
        XCTAssertFalse(SocketEndpointAddress(address: "fd00::1", port: 1).isV4Mapped)
        XCTAssertFalse(SocketEndpointAddress(address: "10.0.0.1", port: 1).isV4Mapped)
    }
}
