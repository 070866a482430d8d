import ALE
import Foundation
import IPAddressing
import Keying
import NetnsTestSupport
import SecureSocket
import TierTesting
import XCTest
import XFRM

/// Tier 3: what happens to a live secured connection, under continuous traffic, when its SAs change under it:
/// charon rekeys its CHILD SA, an administrator flushes the client's SAD (`ip xfrm state flush`), and an SA
/// reaches its hard lifetime. Each time the connection goes on over new SAs with the socket's reqid, no byte
/// is lost (the receiver counts exactly what the sender wrote) and nothing leaves in clear (capture).
extension CharonFlowTests {
    /// A sender that writes numbered chunks until stopped, and a receiver that counts what arrives.
    final class Stream: @unchecked Sendable {
        private let lock = NSLock()
        private var sentBytes = 0
        private var receivedBytes = 0
        private var stopping = false
        private var receiverDone = false
        private var lastArrival: ContinuousClock.Instant?
        private var longestGap: Duration = .zero
        static let chunk = Array("STREAM-MARK-".utf8) + [UInt8](repeating: 0x2e, count: 244)

        var sent: Int { lock.withLock { sentBytes } }
        var received: Int { lock.withLock { receivedBytes } }

        init(from client: TestSocket, to accepted: TestSocket) {
            Thread.detachNewThread { [self] in
                while !lock.withLock({ stopping }) {
                    var offset = 0
                    // Bounded: 30 s of EAGAIN at most (the send timeout is short; the outage is seconds).
                    for _ in 0..<3_000 where offset < Self.chunk.count {
                        let n = Self.chunk[offset...].withUnsafeBytes {
                            Glibc.send(client.fd.rawValue, $0.baseAddress, $0.count, CInt(MSG_NOSIGNAL | MSG_DONTWAIT))
                        }
                        if n > 0 { offset += n } else { usleep(10_000) }
                    }
                    lock.withLock { sentBytes += offset }
                    guard offset == Self.chunk.count else { break }
                    usleep(20_000)
                }
                _ = Glibc.shutdown(client.fd.rawValue, CInt(SHUT_WR))
            }
            Thread.detachNewThread { [self] in
                defer { lock.withLock { receiverDone = true } }
                var buffer = [UInt8](repeating: 0, count: 65_536)
                for _ in 0..<1_000_000 {
                    var entry = pollfd(fd: accepted.fd.rawValue, events: Int16(POLLIN), revents: 0)
                    guard poll(&entry, 1, 30_000) > 0 else { return }
                    let n = buffer.withUnsafeMutableBytes {
                        Glibc.recv(accepted.fd.rawValue, $0.baseAddress, $0.count, 0)
                    }
                    guard n > 0 else { return }
                    let now = ContinuousClock.now
                    lock.withLock {
                        receivedBytes += n
                        if let lastArrival { longestGap = max(longestGap, now - lastArrival) }
                        lastArrival = now
                    }
                }
            }
        }

        /// The longest pause between two arrivals since the last call (the sender writes a chunk every 20 ms).
        func takeLongestGap() -> Duration {
            lock.withLock {
                defer { longestGap = .zero }
                return longestGap
            }
        }

        /// Waits until `bytes` more than now have arrived; false after `seconds`.
        func progresses(by bytes: Int = 2_048, within seconds: Double) -> Bool {
            let target = received + bytes
            let deadline = Date().addingTimeInterval(seconds)
            while Date() < deadline {
                if received >= target { return true }
                usleep(20_000)
            }
            return false
        }

        /// Stops the sender, lets the receiver read to the end (bounded); returns (sent, received).
        func finish() -> (sent: Int, received: Int) {
            lock.withLock { stopping = true }
            let deadline = Date().addingTimeInterval(30)
            while Date() < deadline, !lock.withLock({ receiverDone }) { usleep(20_000) }
            return lock.withLock { (sentBytes, receivedBytes) }
        }
    }

    func testRekeyFlushAndHardExpiryUnderTrafficLoseNoByteAndNeverGoClear() throws {
        try inESPKernel(self) {
            let ends = try Ends(auth: .psk)
            defer { ends.close() }
            let capture = try capture(ends)
            defer {
                capture.stop()
                try? FileManager.default.removeItem(atPath: capture.file)
            }
            let listener = try ends.b.securedListener(in: ends.pair.b, family: .inet, address: ends.pair.addressB4)
            let client = try TestSocket.make(in: ends.pair.a.namespace, family: .inet, kind: .tcp)
            defer { client.closeAbortively() }
            try ends.a.setSecurity(client.fd.rawValue)
            try ends.a.setPeerTargetName(client.fd.rawValue, SocketPeerTargetName(name: "b.example"))
            try ends.a.connect(
                client.fd.rawValue, to: IPEndpoint(address: ends.pair.addressB4, port: listener.localPort))
            let accepted = try listener.accept(timeout: 5)
            defer { accepted.closeAbortively() }
            let cookie = try XCTUnwrap(SocketInspector.cookie(of: client.fd.rawValue))
            let reqid = try XCTUnwrap(ends.a.endpoint(cookie: cookie)?.reqid)
            let xfrmA = try XFRMClient(namespace: ends.pair.a.namespace)
            func spis() throws -> Set<UInt32> {
                // Larval states are not SAs: a pinned template whose SA went away asks for that SPI again (30 s).
                Set(try xfrmA.states().filter { $0.reqid == reqid && !$0.isLarval }.map(\.id.spi))
            }
            func secured() -> Bool { (try? ends.a.query(client.fd.rawValue).flags.contains(.secured)) ?? false }

            let stream = Stream(from: client, to: accepted)
            XCTAssertTrue(stream.progresses(within: 5), "the stream flows over the first SAs")
            let first = try spis()
            XCTAssertEqual(first.count, 2, "one SA pair with the socket's reqid")

            // 1. charon rekeys the connection's CHILD SA: new SPIs, same reqid, the stream goes on.
            let child = try XCTUnwrap(
                try ends.backendA.vici.listSAs().flatMap(\.children)
                    .first { $0.name.hasPrefix("c\(reqid)-") }?.uniqueID, "the connection's own CHILD SA in charon A")
            try ends.backendA.vici.rekey(childID: child)
            // The new pair at once; the old inbound SA lingers a few seconds for packets in flight (charon's
            // delete_rekeyed_delay), then goes.
            var rekeyed: Set<UInt32> = []
            for _ in 0..<240 {
                rekeyed = try spis()
                if rekeyed.count == 2, rekeyed.isDisjoint(with: first) { break }
                usleep(50_000)
            }
            XCTAssertEqual(rekeyed.count, 2, "the rekeyed pair, the old one deleted")
            XCTAssertTrue(rekeyed.isDisjoint(with: first), "new SPIs after the rekey: \(first) → \(rekeyed)")
            XCTAssertTrue(stream.progresses(within: 5), "the stream goes on over the rekeyed SAs")
            // The old pair's deletion is no event of the socket's: it moved to the new pair, so its endpoint stays
            // secured in the table (before any query asks).
            guard case .secured? = ends.a.endpoint(cookie: cookie)?.state else {
                return XCTFail("after the rekey: \(String(describing: ends.a.endpoint(cookie: cookie)?.state))")
            }
            XCTAssertTrue(secured())

            // 2. The client's SAD is flushed: the next segment raises an ACQUIRE for exactly this flow, and the
            // engine negotiates new SAs for the connected socket.
            try xfrmA.flushStates(proto: .esp)
            let flushed = Date()
            let resumed = stream.progresses(within: 15)
            XCTAssertTrue(resumed, "the stream resumes after the flush")
            if !resumed {
                print("A endpoints: \(ends.a.endpoints.map { "\($0.role) \($0.state) reqid \($0.reqid ?? 0)" })")
                print("A states: \((try? xfrmA.states().map(\.description)) ?? [])")
                print("A charon: \(ends.backendA.daemon?.logTail(maxBytes: 4000) ?? "")")
            }
            print("stream resumed \(String(format: "%.2f", Date().timeIntervalSince(flushed))) s after the flush")
            let renegotiated = try spis()
            XCTAssertEqual(renegotiated.count, 2)
            XCTAssertTrue(renegotiated.isDisjoint(with: rekeyed))

            // 3. The outbound SA reaches its hard lifetime (1 s from now): the kernel deletes it and tells
            // charon; the connection gets new SAs the same way.
            var outbound = try XCTUnwrap(
                try xfrmA.states().first {
                    $0.reqid == reqid && !$0.isLarval && $0.id.destination == ends.pair.addressB4
                })
            outbound.lifetime.hardAddExpiresSeconds = 1
            outbound.lifetime.softAddExpiresSeconds = 0
            try xfrmA.updateState(outbound)
            usleep(1_500_000)
            XCTAssertFalse(try spis().contains(outbound.id.spi), "the expired SA is gone")
            let expired = Date()
            XCTAssertTrue(stream.progresses(within: 15), "the stream resumes after the hard expiry")
            print("stream resumed \(String(format: "%.2f", Date().timeIntervalSince(expired))) s after the hard expiry")

            let (sent, received) = stream.finish()
            XCTAssertGreaterThan(sent, 20 * Stream.chunk.count)
            XCTAssertEqual(received, sent, "every byte written arrived, across the rekey, the flush and the expiry")
            XCTAssertTrue(secured(), "still secured at the end")

            capture.stop()
            let analysis = try capture.analyse(markers: [Array("STREAM-MARK-".utf8)])
            XCTAssertEqual(analysis.plainTCPPackets, 0, analysis.summary)
            XCTAssertFalse(analysis.markerFound, "no stream byte in clear")
            XCTAssertGreaterThan(analysis.espPackets, 20)
        }
    }
}

extension CharonFlowTests {
    /// Plain `connect()` retries (the application never calls `WSAConnect`) on ten secured sockets in a row, each
    /// after charon has installed the SAs of the ones before: every one connects and echoes over its own SAs.
    func testPlainConnectRetriesOnTenSocketsInARowAllConnect() throws {
        try inESPKernel(self) {
            let ends = try Ends(auth: .psk)
            defer { ends.close() }
            let listener = try ends.b.securedListener(in: ends.pair.b, family: .inet, address: ends.pair.addressB4)
            var open: [TestSocket] = []
            defer { for item in open { item.closeAbortively() } }
            var spis: Set<UInt32> = []
            for index in 0..<10 {
                let client = try TestSocket.make(in: ends.pair.a.namespace, family: .inet, kind: .tcp)
                open.append(client)
                client.setTimeouts(5)
                try ends.a.setSecurity(client.fd.rawValue)
                try ends.a.setPeerTargetName(client.fd.rawValue, SocketPeerTargetName(name: "b.example"))
                let attempts = try client.connect(ends.pair.addressB4, port: listener.localPort, retryFor: 10)
                XCTAssertGreaterThan(attempts, 1, "socket \(index): the first connect() finds no SA")
                let accepted = try listener.accept(timeout: 5)
                open.append(accepted)
                try client.send([UInt8(index)])
                XCTAssertEqual(try accepted.receiveExactly(1, timeout: 5), [UInt8(index)], "socket \(index) echoes")
                var view = try ends.a.query(client.fd.rawValue)
                for _ in 0..<100 where !view.flags.contains(.secured) {
                    usleep(20_000)
                    view = try ends.a.query(client.fd.rawValue)
                }
                XCTAssertEqual(view.flags, [.secured, .encrypted], "socket \(index)")
                if let spi = view.outboundSA?.spi { spis.insert(spi) }
            }
            XCTAssertEqual(spis.count, 10, "ten connections, ten SA pairs")
        }
    }

    /// charon SIGKILLed while a `WSAConnect` is negotiating: that connect fails closed or succeeds, never in
    /// clear; the library starts its private charon again and the next connection succeeds within a bound.
    func testCharonKilledDuringANegotiationFailsClosedAndRecovers() throws {
        try inESPKernel(self) {
            let ends = try Ends(auth: .psk)
            defer { ends.close() }
            let capture = try capture(ends)
            defer {
                capture.stop()
                try? FileManager.default.removeItem(atPath: capture.file)
            }
            let listener = try ends.b.securedListener(in: ends.pair.b, family: .inet, address: ends.pair.addressB4)
            let peer = IPEndpoint(address: ends.pair.addressB4, port: listener.localPort)
            let client = try TestSocket.make(in: ends.pair.a.namespace, family: .inet, kind: .tcp)
            defer { client.closeAbortively() }
            try ends.a.setSecurity(client.fd.rawValue)
            try ends.a.setPeerTargetName(client.fd.rawValue, SocketPeerTargetName(name: "b.example"))
            let pid = try XCTUnwrap(ends.backendA.daemon?.pid)
            let killer = Thread {
                usleep(15_000)
                kill(pid, SIGKILL)
            }
            killer.start()
            let marker = Array("DURING-KILL-\(UUID().uuidString)".utf8)
            do {
                try ends.a.connect(client.fd.rawValue, to: peer)
                // Negotiated before the kill landed (or again after it): then it is secured.
                XCTAssertEqual(try ends.a.query(client.fd.rawValue).flags, [.secured, .encrypted])
                try? client.send(marker)
            } catch {
                XCTAssertNotEqual(
                    client.connectOnce(ends.pair.addressB4, port: listener.localPort), nil,
                    "no clear connection after a failed negotiation: \(error)")
            }
            let killed = Date()
            var recovered: TimeInterval?
            while recovered == nil, Date().timeIntervalSince(killed) < 20 {
                let next = try TestSocket.make(in: ends.pair.a.namespace, family: .inet, kind: .tcp)
                defer { next.closeAbortively() }
                try ends.a.setSecurity(next.fd.rawValue)
                if (try? ends.a.connect(next.fd.rawValue, to: peer, timeout: .seconds(5))) != nil {
                    XCTAssertEqual(try ends.a.query(next.fd.rawValue).flags, [.secured, .encrypted])
                    recovered = Date().timeIntervalSince(killed)
                }
            }
            let seconds = try XCTUnwrap(recovered, "a new connection within 20 s of the kill")
            print(
                "a new connection succeeded \(String(format: "%.2f", seconds)) s after charon was killed mid-negotiation"
            )
            XCTAssertNotEqual(ends.backendA.daemon?.pid, pid, "the library started charon again")
            capture.stop()
            let analysis = try capture.analyse(markers: [marker])
            XCTAssertEqual(analysis.plainTCPPackets, 0, analysis.summary)
            XCTAssertFalse(analysis.markerFound)
        }
    }
}

extension CharonFlowTests {
    /// A server that closes an accepted connection first (never handing it to the library) and then gets data
    /// from the client answers with a RST from the kernel's control socket, which carries no per-socket policy:
    /// the accepted flow's cover (installed when its SAs appeared) sends that RST under ESP, never in clear.
    func testAServerThatClosesFirstAnswersLateDataUnderESP() throws {
        try inESPKernel(self) {
            let ends = try Ends(auth: .psk)
            defer { ends.close() }
            let capture = try capture(ends)
            defer {
                capture.stop()
                try? FileManager.default.removeItem(atPath: capture.file)
            }
            let listener = try ends.b.securedListener(in: ends.pair.b, family: .inet, address: ends.pair.addressB4)
            defer { listener.closeAbortively() }
            let peer = IPEndpoint(address: ends.pair.addressB4, port: listener.localPort)
            let (client, accepted) = try ends.namedConnection(to: peer, through: listener)
            defer { client.closeAbortively() }
            let hello = Array("HELLO-\(UUID().uuidString)".utf8)
            try client.send(hello)
            XCTAssertEqual(try accepted.receiveExactly(hello.count, timeout: 5), hello)
            accepted.close() // the server closes first: FIN, then FIN_WAIT2 (orphaned)
            XCTAssertEqual(try client.receive(timeout: 5), [], "the client sees the server's FIN")
            let late = Array("LATE-\(UUID().uuidString)".utf8)
            try client.send(late) // answered by a RST from the control socket
            var reset = false
            for _ in 0..<150 where !reset {
                // A RST in CLOSE_WAIT sets EPIPE (elsewhere ECONNRESET) as the socket's error.
                var error: Int32 = 0
                var length = socklen_t(MemoryLayout<Int32>.size)
                getsockopt(client.fd.rawValue, SOL_SOCKET, SO_ERROR, &error, &length)
                reset = error == EPIPE || error == ECONNRESET
                if !reset { usleep(20_000) }
            }
            XCTAssertTrue(reset, "the server's RST reached the client (under ESP)")
            capture.stop()
            let analysis = try capture.analyse(markers: [hello, late])
            XCTAssertEqual(analysis.plainTCPPackets, 0, "no clear segment, the RST included: \(analysis.summary)")
            XCTAssertFalse(analysis.markerFound)
        }
    }
}
