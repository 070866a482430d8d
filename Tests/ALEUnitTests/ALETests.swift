import ALE
import Dispatch
import Foundation
import Glibc
import IPAddressing
import Keying
import SystemPackage
import XCTest
import XFRM

final class EndpointStateMachineTests: XCTestCase {
    let info = ProtectionInfo(ikeSAID: 1, childSAID: 2, peerIdentity: "b.example", encryptionAlgorithm: "AES_GCM_16")
    /// The clock's origin for the life-cycle tests: every instant below is an offset from it.
    let t0 = ContinuousClock.now

    func testHappyPath() {
        var machine = EndpointStateMachine(allowInsecure: false)
        XCTAssertEqual(machine.state, .requested)
        XCTAssertEqual(machine.handle(.negotiationStarted), [])
        XCTAssertEqual(machine.state, .negotiating)
        XCTAssertEqual(machine.handle(.childUp(info)), [.publish])
        XCTAssertEqual(machine.state, .secured(info))
        XCTAssertEqual(machine.handle(.closed), [.publish, .releaseResources(coverClosedFlow: true)])
        XCTAssertEqual(machine.state, .closed)
        XCTAssertEqual(machine.handle(.closed), [], "resources are released once")
        XCTAssertEqual(machine.handle(.childUp(info)), [])
        XCTAssertEqual(machine.state, .closed)
    }

    func testFailureWithoutAllowInsecureNeverFallsBack() {
        var machine = EndpointStateMachine(allowInsecure: false)
        _ = machine.handle(.negotiationStarted)
        XCTAssertEqual(machine.handle(.failed(.negotiationTimedOut(after: .seconds(5)))), [.publish])
        XCTAssertEqual(machine.handle(.fellBackToClear), [])
        XCTAssertEqual(machine.state, .failed(.negotiationTimedOut(after: .seconds(5))))
    }

    func testAllowInsecureFallsBackAndStaysClear() {
        var machine = EndpointStateMachine(allowInsecure: true)
        _ = machine.handle(.negotiationStarted)
        _ = machine.handle(.failed(.negotiationTimedOut(after: .seconds(1))))
        XCTAssertEqual(machine.handle(.fellBackToClear), [.publish])
        XCTAssertEqual(machine.state, .insecure(after: .negotiationTimedOut(after: .seconds(1))))
        // A TCP connection opened in clear stays clear for its whole life (kernel-notes), so a late SA changes nothing.
        XCTAssertEqual(machine.handle(.childUp(info)), [])
        XCTAssertEqual(machine.state, .insecure(after: .negotiationTimedOut(after: .seconds(1))))
    }

    func testRekeyAndChildDown() {
        var machine = EndpointStateMachine(allowInsecure: false)
        _ = machine.handle(.childUp(info))
        var rekeyed = info
        rekeyed.childSAID = 3
        XCTAssertEqual(machine.handle(.childUp(rekeyed)), [.publish])
        XCTAssertEqual(machine.state, .secured(rekeyed))
        XCTAssertEqual(machine.handle(.failed(.negotiationFailed("late"))), [], "a protected connection stays secured")
        XCTAssertEqual(machine.handle(.childDown), [.publish])
        XCTAssertEqual(machine.state, .negotiating)
    }

    func testASocketClosedWithoutReleaseClosesAfterItsGracePeriod() {
        var machine = EndpointStateMachine(allowInsecure: false)
        _ = machine.handle(.childUp(info))
        XCTAssertEqual(machine.handle(.socketGone(at: t0 + .seconds(100), grace: .seconds(2))), [.publish])
        XCTAssertEqual(machine.state, .closing(until: t0 + .seconds(102), previous: .secured(info)))
        XCTAssertEqual(machine.state.settled, .secured(info))
        XCTAssertEqual(
            machine.handle(.socketGone(at: t0 + .seconds(101), grace: .seconds(2))), [], "the grace period starts once")
        XCTAssertEqual(machine.handle(.tick(now: t0 + .milliseconds(101900))), [])
        var rekeyed = info
        rekeyed.childSAID = 9
        XCTAssertEqual(machine.handle(.childUp(rekeyed)), [.publish], "the previous state follows a rekey")
        XCTAssertEqual(machine.state, .closing(until: t0 + .seconds(102), previous: .secured(rekeyed)))
        XCTAssertEqual(
            machine.handle(.tick(now: t0 + .seconds(102))), [.publish, .releaseResources(coverClosedFlow: true)])
        XCTAssertEqual(machine.state, .closed)
        XCTAssertEqual(machine.handle(.tick(now: t0 + .seconds(200))), [], "released once")
    }

    func testASocketFoundAgainDuringItsGracePeriodGoesBackToWhatItWas() {
        var machine = EndpointStateMachine(allowInsecure: false)
        _ = machine.handle(.childUp(info))
        _ = machine.handle(.socketGone(at: t0 + .seconds(5), grace: .seconds(2)))
        XCTAssertEqual(machine.handle(.socketFound), [.publish])
        XCTAssertEqual(machine.state, .secured(info))
        XCTAssertEqual(machine.handle(.tick(now: t0 + .seconds(50))), [], "a live socket is not closed by the clock")
        XCTAssertEqual(machine.handle(.socketFound), [])
    }

    func testWithoutAGracePeriodOrWhenReleasedTheEndpointClosesAtOnce() {
        var secured = EndpointStateMachine(allowInsecure: false)
        _ = secured.handle(.childUp(info))
        XCTAssertEqual(
            secured.handle(.socketGone(at: t0 + .seconds(5), grace: .seconds(0))),
            [.publish, .releaseResources(coverClosedFlow: true)])
        var closing = EndpointStateMachine(allowInsecure: false)
        _ = closing.handle(.childUp(info))
        _ = closing.handle(.socketGone(at: t0 + .seconds(5), grace: .seconds(2)))
        XCTAssertEqual(closing.handle(.closed), [.publish, .releaseResources(coverClosedFlow: true)])
        // Only a secured flow is covered after close: one that never had SAs, or went clear, has nothing to hide.
        var clear = EndpointStateMachine(allowInsecure: true)
        _ = clear.handle(.failed(.negotiationTimedOut(after: .seconds(1))))
        _ = clear.handle(.fellBackToClear)
        XCTAssertEqual(clear.handle(.closed), [.publish, .releaseResources(coverClosedFlow: false)])
        var requested = EndpointStateMachine(allowInsecure: false)
        XCTAssertEqual(
            requested.handle(.socketGone(at: t0 + .seconds(1), grace: .seconds(0))),
            [.publish, .releaseResources(coverClosedFlow: false)])
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
        Endpoint(
            cookie: cookie, descriptor: 3, family: .inet, kind: .stream, reqid: reqid, allowInsecure: false,
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
        XCTAssertEqual(table.handle(.childUp(ProtectionInfo()), cookie: 1), [.publish])
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
        e.setPeerTargetName("c.example", for: "10.0.0.4")
        e.setPeerTargetName("all.example", for: nil)
        XCTAssertEqual(e.peerTargetNames, [nil: "all.example", "10.0.0.2": "b.example", "10.0.0.4": "c.example"])
        e.setPeerTargetName(nil, for: "10.0.0.2")
        XCTAssertEqual(e.peerTargetName(for: "10.0.0.2"), "all.example")
    }

    /// The role changes only as a socket's life allows: undetermined to initiator or responder, a UDP responder
    /// to initiator; never back, never from accepted, never after close.
    func testTheRoleChangesOnlyAsASocketsLifeAllows() {
        var listener = endpoint(1, reqid: 1)
        XCTAssertTrue(listener.settle(as: .responder(port: 443)))
        XCTAssertFalse(listener.settle(as: .responder(port: 444)), "a responder keeps its port")
        XCTAssertFalse(listener.settle(as: .undetermined))
        XCTAssertFalse(listener.settle(as: .initiator), "a TCP listener never connects")
        XCTAssertEqual(listener.role, .responder(port: 443))
        var udp = Endpoint(
            cookie: 4, descriptor: 5, family: .inet, kind: .datagram, reqid: 3, allowInsecure: false, summary: "udp")
        XCTAssertTrue(udp.settle(as: .responder(port: 53)))
        XCTAssertTrue(udp.settle(as: .initiator), "a UDP responder that sends to a peer of its choosing")
        XCTAssertFalse(udp.settle(as: .responder(port: 53)), "an initiator never starts answering peers")
        var accepted = Endpoint(
            cookie: 2, descriptor: 4, family: .inet, kind: .stream, reqid: 1, allowInsecure: false,
            summary: "accepted", role: .accepted)
        XCTAssertFalse(accepted.settle(as: .initiator))
        XCTAssertEqual(accepted.role, .accepted)
        var closed = endpoint(3, reqid: 2)
        XCTAssertEqual(closed.handle(.closed), [.publish, .releaseResources(coverClosedFlow: false)])
        XCTAssertFalse(closed.settle(as: .initiator), "a closed endpoint stays what it was")
        XCTAssertEqual(closed.role, .undetermined)
    }

    /// What a socket holds in the keying backend is part of its record: registrations added while it lives, none
    /// once it is removed (the caller then releases what it negotiated), and none for a socket keying with nothing.
    func testKeyingIsPartOfTheRecord() throws {
        let table = EndpointTable()
        var keyed = endpoint(1, reqid: 9)
        keyed.keying = EndpointKeying(request: KeyingRequest(reqid: 9, family: .inet, transportProtocol: .tcp))
        try table.insert(keyed)
        try table.insert(endpoint(2, reqid: nil))
        let negotiation = KeyingRegistration(reqid: 9, entry: .negotiation(number: 1, userSecret: false))
        XCTAssertTrue(table.addRegistration(negotiation, cookie: 1))
        XCTAssertTrue(table.addRegistration(KeyingRegistration(reqid: 9, entry: .responder), cookie: 1))
        XCTAssertFalse(table.addRegistration(negotiation, cookie: 2), "keys with nothing")
        XCTAssertEqual(table.keyingRequest(cookie: 1)?.reqid, 9)
        XCTAssertNil(table.keyingRequest(cookie: 2))
        let flow = KeyedFlow(
            transportProtocol: .tcp, local: "10.0.0.1", localPort: 40000, remote: "10.0.0.2", remotePort: 443)
        table.setFlow(flow, cookie: 1)
        XCTAssertEqual(table.flow(cookie: 1), flow)
        XCTAssertEqual(table.takeRegistrations(cookie: 1, where: \.isNegotiation), [negotiation])
        let removed = table.remove(cookie: 1)
        XCTAssertEqual(removed?.keying?.registrations.all, [KeyingRegistration(reqid: 9, entry: .responder)])
        XCTAssertEqual(removed?.keying?.flow, flow)
        XCTAssertFalse(table.addRegistration(negotiation, cookie: 1), "released meanwhile: the caller releases it")
    }

    /// A pinned socket is found by its inbound SPI, and while a rekey's SAs are not in the kernel yet, by theirs;
    /// the indexes follow the record's pins through every change and go with it.
    func testPinsAndARekeysPendingSAsFindTheirSocket() throws {
        let table = EndpointTable()
        try table.insert(endpoint(1, reqid: 5))
        table.update(cookie: 1) { $0.pinned = PinnedSAs(inboundSPI: 0x100, outboundSPI: 0x200, ikeSAID: 1) }
        XCTAssertEqual(table.endpoint(pinnedInboundSPI: 0x100)?.cookie, 1)
        XCTAssertTrue(table.cookiesWithPendingPins.isEmpty)
        table.update(cookie: 1) {
            $0.pinned?.pendingInboundSPI = 0x101
            $0.pinned?.pendingOutboundSPI = 0x201
        }
        XCTAssertEqual(table.endpoints(pendingSPI: 0x101).map(\.cookie), [1])
        XCTAssertEqual(table.endpoints(pendingSPI: 0x201).map(\.cookie), [1])
        // Another peer picked the same outbound SPI for its rekey: both sockets wait for it.
        try table.insert(endpoint(2, reqid: 6))
        table.update(cookie: 2) {
            $0.pinned = PinnedSAs(inboundSPI: 0x300, outboundSPI: 0x400, ikeSAID: 2)
            $0.pinned?.pendingOutboundSPI = 0x201
        }
        XCTAssertEqual(Set(table.endpoints(pendingSPI: 0x201).map(\.cookie)), [1, 2])
        XCTAssertEqual(table.cookiesWithPendingPins, [1, 2])
        table.remove(cookie: 2)
        XCTAssertEqual(table.cookiesWithPendingPins, [1])
        table.update(cookie: 1) {
            $0.pinned?.inboundSPI = 0x101
            $0.pinned?.pendingInboundSPI = nil
        }
        XCTAssertNil(table.endpoint(pinnedInboundSPI: 0x100), "moved to the rekey's inbound SA")
        XCTAssertEqual(table.endpoint(pinnedInboundSPI: 0x101)?.cookie, 1)
        XCTAssertTrue(table.endpoints(pendingSPI: 0x101).isEmpty)
        XCTAssertEqual(table.endpoints(pendingSPI: 0x201).map(\.cookie), [1], "the outbound one still waits")
        table.remove(cookie: 1)
        XCTAssertNil(table.endpoint(pinnedInboundSPI: 0x101))
        XCTAssertTrue(table.endpoints(pendingSPI: 0x201).isEmpty)
        XCTAssertTrue(table.cookiesWithPendingPins.isEmpty)
    }

    /// A reqid's users: one, then many (a listener and its accepted sockets), then one and none again.
    /// The table knows which endpoints are in their close grace period, so the sweep ticks those only.
    func testEndpointsInTheirGracePeriodAreIndexed() throws {
        let table = EndpointTable()
        for cookie in 1...3 as ClosedRange<UInt64> { try table.insert(endpoint(cookie, reqid: 7)) }
        XCTAssertEqual(table.closingCookies, [])
        let now = ContinuousClock.now
        _ = table.handle(.socketGone(at: now, grace: .seconds(2)), cookie: 1)
        _ = table.handle(.socketGone(at: now, grace: .seconds(2)), cookie: 2)
        XCTAssertEqual(Set(table.closingCookies), [1, 2])
        _ = table.handle(.socketFound, cookie: 2)
        XCTAssertEqual(table.closingCookies, [1], "found again: no longer closing")
        _ = table.handle(.tick(now: now + .seconds(3)), cookie: 1)
        XCTAssertEqual(table.closingCookies, [], "closed after its grace period")
        _ = table.handle(.socketGone(at: now, grace: .seconds(2)), cookie: 3)
        table.remove(cookie: 3)
        XCTAssertEqual(table.closingCookies, [], "removed while closing")
    }

    func testReqidUsersGrowAndShrink() throws {
        let table = EndpointTable()
        for cookie in 1...3 as ClosedRange<UInt64> { try table.insert(endpoint(cookie, reqid: 7)) }
        XCTAssertEqual(table.users(of: 7), 3)
        XCTAssertEqual(Set(table.endpoints(reqid: 7).map(\.cookie)), [1, 2, 3])
        table.remove(cookie: 2)
        table.update(cookie: 3) { $0.reqid = nil }
        XCTAssertEqual(table.endpoints(reqid: 7).map(\.cookie), [1])
        table.remove(cookie: 1)
        XCTAssertEqual(table.users(of: 7), 0)
        try table.insert(endpoint(4, reqid: 7))
        XCTAssertEqual(table.endpoints(reqid: 7).map(\.cookie), [4])
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
        directory =
            FileManager.default.temporaryDirectory.appendingPathComponent("reqid-test-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
    }

    override func tearDown() {
        if let directory { _ = try? FileManager.default.removeItem(atPath: directory) }
    }

    func testConcurrentAllocationsAreUnique() throws {
        let allocator = try ReqidAllocator(directory: directory + "/ids", range: 1000...1999, blockSize: 64)
        let results = UnsafeMutableBufferPointer<UInt32>.allocate(capacity: 800)
        defer { results.deallocate() }
        nonisolated(unsafe) let out = results
        DispatchQueue.concurrentPerform(iterations: 8) { worker in
            for i in 0..<100 { out[worker * 100 + i] = (try? allocator.allocate()) ?? 0 }
        }
        XCTAssertFalse(results.contains(0))
        XCTAssertEqual(Set(results).count, 800, "no reqid handed out twice")
        XCTAssertEqual(allocator.heldReqids.count, 800)
        XCTAssertTrue(results.allSatisfy { (1000...1999).contains($0) })
        let files = try FileManager.default.contentsOfDirectory(atPath: directory + "/ids")
        XCTAssertEqual(files.count, allocator.heldBlocks.count, "one claim file per block: \(files)")
        XCTAssertTrue(
            (13...14).contains(allocator.heldBlocks.count),
            "800 reqids in blocks of 64 (one of 16 is partial): \(allocator.heldBlocks.count)")
        allocator.releaseAll()
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: directory + "/ids").count, 0)
    }

    func testTwoAllocatorsSharingAFolderNeverCollide() throws {
        // Two allocators stand for two processes of one namespace: together they get the whole range of 20
        // (five blocks of 4), each reqid once, and then both are refused.
        let a = try ReqidAllocator(directory: directory + "/ids", range: 10...29, blockSize: 4)
        let b = try ReqidAllocator(directory: directory + "/ids", range: 10...29, blockSize: 4)
        var seen = Set<UInt32>()
        var exhausted = [false, false]
        while !(exhausted[0] && exhausted[1]) {
            for (index, allocator) in [a, b].enumerated() where !exhausted[index] {
                if let reqid = try? allocator.allocate() {
                    XCTAssertTrue(seen.insert(reqid).inserted, "\(reqid) handed out twice")
                } else {
                    exhausted[index] = true
                }
            }
        }
        XCTAssertEqual(seen, Set(10...29))
        XCTAssertTrue(a.heldBlocks.isDisjoint(with: b.heldBlocks), "blocks are never shared")
    }

    func testReleasedReqidsAreReusedAndEmptyBlocksGoBack() throws {
        let allocator = try ReqidAllocator(directory: directory + "/ids", range: 100...115, blockSize: 4)
        let first = try (0..<6).map { _ in try allocator.allocate() }
        XCTAssertEqual(allocator.heldBlocks.count, 2)
        for reqid in first.suffix(2) { allocator.release(reqid) }
        XCTAssertEqual(allocator.heldBlocks.count, 1, "a block whose reqids are all free again goes back")
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: directory + "/ids").count, 1)
        allocator.release(first[0])
        let again = try allocator.allocate()
        XCTAssertTrue(first.prefix(4).contains(again), "reuses its held block before claiming another")
        XCTAssertEqual(allocator.heldBlocks.count, 1)
    }

    func testReqidsComeBackOnlyAfterTheCursorWentRoundTheBlock() throws {
        let allocator = try ReqidAllocator(directory: directory + "/ids", range: 200...207, blockSize: 8)
        // Churn of one socket at a time: each new socket gets the next reqid, never the one just given back.
        var seen: [UInt32] = []
        for _ in 0..<10 {
            let reqid = try allocator.allocate()
            XCTAssertTrue(allocator.holds(reqid))
            XCTAssertEqual(allocator.heldCount, 1)
            allocator.release(reqid)
            XCTAssertFalse(allocator.holds(reqid))
            seen.append(reqid)
        }
        XCTAssertEqual(seen, [200, 201, 202, 203, 204, 205, 206, 207, 200, 201])
        // The block full, two given back out of order: handed out in cyclic order from after the last one.
        let all = try (0..<8).map { _ in try allocator.allocate() }
        XCTAssertEqual(all.sorted(), Array(200...207))
        XCTAssertThrowsError(try allocator.allocate(), "the range is exhausted")
        allocator.release(206)
        allocator.release(203)
        XCTAssertEqual(try allocator.allocate(), 203)
        XCTAssertEqual(try allocator.allocate(), 206)
        XCTAssertEqual(allocator.heldCount, 8)
        allocator.release(999)
        allocator.release(203)
        allocator.release(203)
        XCTAssertEqual(allocator.heldCount, 7, "only reqids it holds are given back, each once")
        XCTAssertEqual(allocator.heldReqids, Set(200...207).subtracting([203]))
    }

    /// A dead owner's block is never taken over by allocating: what it left may still be in use (a killed keying
    /// daemon's clients' connections). It is listed (`deadBlocks`) and freed only by `forget`, after which it is
    /// handed out again. A live owner's block is never touched; a recycled pid's counts as dead.
    func testBlocksOfDeadOrRecycledProcessesAreFreedOnlyByForget() throws {
        let folder = directory + "/ids"
        let allocator = try ReqidAllocator(directory: folder, range: 50...57, blockSize: 4)
        // Block 50 belongs to a process that no longer exists, block 54 to a live one (pid 1, its real start time).
        try "999999999 12345\n".write(toFile: folder + "/block-50", atomically: true, encoding: .utf8)
        let start = try String(contentsOfFile: "/proc/1/stat", encoding: .utf8).split(separator: ")").last!
            .split(separator: " ")[19]
        try "1 \(start)\n".write(toFile: folder + "/block-54", atomically: true, encoding: .utf8)
        XCTAssertThrowsError(try allocator.allocate(), "neither block is free: one dead owner's, one live owner's")
        XCTAssertEqual(allocator.deadBlocks().map(\.reqids), [50...53])
        XCTAssertEqual(allocator.deadBlocks().map(\.pid), [999_999_999])
        XCTAssertTrue(FileManager.default.fileExists(atPath: folder + "/block-50"), "listed, left in place")
        let dead = try XCTUnwrap(allocator.deadBlocks().first)
        XCTAssertTrue(allocator.forget(dead))
        XCTAssertFalse(allocator.forget(dead), "once")
        XCTAssertEqual(try (0..<4).map { _ in try allocator.allocate() }.sorted(), [50, 51, 52, 53])
        XCTAssertThrowsError(try allocator.allocate())
        XCTAssertTrue(
            FileManager.default.fileExists(atPath: folder + "/block-54"), "another owner's block is never touched")
        // A pid now used by a process that started at another time is a recycled pid: its block is dead too.
        try "1 \(UInt64(start)! + 1)\n".write(toFile: folder + "/block-54", atomically: true, encoding: .utf8)
        XCTAssertEqual(allocator.reclaimDeadBlocks().map(\.reqids), [54...57])
        XCTAssertEqual(try allocator.allocate(), 54)
        allocator.releaseAll()
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: folder), [])
    }
}

final class SocketInspectorTests: XCTestCase {
    func testFactsOfRealSockets() throws {
        let tcp = socket(AF_INET6, Int32(SOCK_STREAM.rawValue), 0)
        let udp = socket(AF_INET, Int32(SOCK_DGRAM.rawValue), 0)
        let unix = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        defer {
            close(tcp)
            close(udp)
            close(unix)
        }
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

        let address = IPEndpoint(address: "127.0.0.1", port: 0)
        _ = address.withSockaddr { bind(udp, $0, $1) }
        XCTAssertTrue(try SocketInspector.facts(of: udp).isBound)

        let file = open("/dev/null", O_RDONLY)
        defer { close(file) }
        XCTAssertThrowsError(try SocketInspector.facts(of: file)) { XCTAssertEqual($0 as? Errno, .notSocket) }
        XCTAssertThrowsError(try SocketInspector.facts(of: 987_654)) {
            XCTAssertEqual($0 as? Errno, .badFileDescriptor)
        }
    }

    /// The cheaper read gives exactly the full facts, for sockets in every state (unbound, bound, listening,
    /// connected, non-blocking) and of every kind (TCP, UDP, raw, Unix); it refuses what the full read refuses.
    func testFactsExpectingUnboundEqualFullFacts() throws {
        var sockets: [CInt] = []
        defer { for item in sockets { close(item) } }
        func make(_ family: Int32, _ type: Int32, _ proto: Int32 = 0) -> CInt {
            let fd = socket(family, type, proto)
            XCTAssertGreaterThanOrEqual(fd, 0)
            sockets.append(fd)
            return fd
        }
        let stream = Int32(SOCK_STREAM.rawValue)
        let datagram = Int32(SOCK_DGRAM.rawValue)
        let loopback = IPEndpoint(address: "127.0.0.1", port: 0)
        let unboundTCP = make(AF_INET, stream)
        let unboundUDP6 = make(AF_INET6, datagram)
        let nonBlocking = make(AF_INET, stream | Int32(SOCK_NONBLOCK.rawValue))
        let boundUDP = make(AF_INET, datagram)
        _ = loopback.withSockaddr { bind(boundUDP, $0, $1) }
        let listener = make(AF_INET, stream)
        _ = loopback.withSockaddr { bind(listener, $0, $1) }
        XCTAssertEqual(listen(listener, 4), 0)
        let connected = make(AF_INET, stream)
        let listening = try XCTUnwrap(SocketInspector.facts(of: listener).local)
        _ = listening.withSockaddr { Glibc.connect(connected, $0, $1) }
        let connectedUDP = make(AF_INET, datagram)
        _ = listening.withSockaddr { Glibc.connect(connectedUDP, $0, $1) }
        let raw = make(AF_INET, Int32(SOCK_RAW.rawValue), Int32(IPPROTO_ICMP))
        let unix = make(AF_UNIX, stream)
        // Raw sockets of protocol TCP or UDP: their protocol number alone would read as a TCP or UDP socket.
        let rawTCP = make(AF_INET, Int32(SOCK_RAW.rawValue), Int32(IPPROTO_TCP))
        let rawUDP6 = make(AF_INET6, Int32(SOCK_RAW.rawValue), Int32(IPPROTO_UDP))
        // Disconnected (connect with AF_UNSPEC), a raw socket's port reads 0, like an unbound TCP or UDP socket's.
        var unspecified = sockaddr()
        unspecified.sa_family = sa_family_t(AF_UNSPEC)
        let disconnectedRawTCP = make(AF_INET, Int32(SOCK_RAW.rawValue), Int32(IPPROTO_TCP))
        let disconnectedRawUDP6 = make(AF_INET6, Int32(SOCK_RAW.rawValue), Int32(IPPROTO_UDP))
        for fd in [disconnectedRawTCP, disconnectedRawUDP6] {
            XCTAssertEqual(Glibc.connect(fd, &unspecified, socklen_t(MemoryLayout<sockaddr>.size)), 0)
            XCTAssertEqual(try SocketInspector.facts(of: fd).local?.port, 0, "the case this checks: port 0")
        }
        let udpLite = make(AF_INET, datagram, Int32(IPPROTO_UDPLITE))
        for fd in [
            unboundTCP, unboundUDP6, nonBlocking, boundUDP, listener, connected, connectedUDP, raw, unix, rawTCP,
            rawUDP6, disconnectedRawTCP, disconnectedRawUDP6, udpLite,
        ] {
            XCTAssertEqual(
                try SocketInspector.factsExpectingUnbound(of: fd), try SocketInspector.facts(of: fd), "fd \(fd)")
        }
        XCTAssertTrue(SocketInspector.isNonBlocking(nonBlocking))
        XCTAssertFalse(SocketInspector.isNonBlocking(unboundTCP))
        XCTAssertTrue(SocketInspector.isConnected(connected))
        XCTAssertFalse(SocketInspector.isConnected(unboundTCP))
        let file = open("/dev/null", O_RDONLY)
        defer { close(file) }
        XCTAssertThrowsError(try SocketInspector.factsExpectingUnbound(of: file)) {
            XCTAssertEqual($0 as? Errno, .notSocket)
        }
        XCTAssertThrowsError(try SocketInspector.factsExpectingUnbound(of: 987_654)) {
            XCTAssertEqual($0 as? Errno, .badFileDescriptor)
        }
    }

    func testV4MappedDetection() {
        XCTAssertTrue(IPEndpoint(address: "::ffff:10.0.0.1", port: 1).isV4Mapped)
        XCTAssertFalse(IPEndpoint(address: "fd00::1", port: 1).isV4Mapped)
        XCTAssertFalse(IPEndpoint(address: "10.0.0.1", port: 1).isV4Mapped)
    }
}
