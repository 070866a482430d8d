import ALE
import EngineTestSupport
import Foundation
import IPAddressing
import Impersonation
import Keying
import NetnsTestSupport
import SecureSocket
import TierTesting
import VICI
import XCTest
import XFRM

/// Tier 3: the server half of the binding. Each accepted connection is pinned, in the kernel, to the SA pair of
/// the IKE SA that made its flow; a second IKE daemon at the client's address, holding a valid certificate for
/// another name, gets nothing of it, wide or exact, TCP or UDP.
final class ServerBindingTests: XCTestCase {
    typealias Ends = EnginePair

    /// Mallory: a stock charon at alice's address (namespace A, IKE ports 1500/1501 beside alice's own charon),
    /// trusted by the server's CA as `c.example`.
    final class Mallory {
        let daemon: CharonDaemon
        let ends: Ends
        let certificate: [UInt8]
        private var conns: [String] = []

        init(_ ends: Ends) throws {
            self.ends = ends
            var options = CharonDaemon.Options()
            options.ikePort = 1500
            options.natTraversalPort = 1501
            daemon = try CharonDaemon(namespace: ends.pair.a.namespace, options: options)
            let certificates = try XCTUnwrap(ends.certificates)
            certificate = try certificates.certificate("c.example")
            try daemon.vici.loadCert(try certificates.authority(), flag: .ca)
            try daemon.vici.loadCert(certificate)
            _ = try daemon.vici.loadKey(try certificates.key("c.example"))
        }

        /// Negotiates a CHILD_SA with the server for `local` (Mallory's side, alice's address) and `remote` (the
        /// server's side); returns its SPIs as charon logged them when it was established (the server may have
        /// deleted it again before `initiate` answers), nil when it was not.
        @discardableResult
        func negotiate(
            local: TrafficSelector, remote: TrafficSelector, server: IPAddress? = nil
        ) throws -> (inbound: UInt32, outbound: UInt32)? {
            let name = "mallory-\(conns.count)"
            conns.append(name)
            try daemon.vici.loadConn(
                IKEConnConfig(
                    name: name, localAddresses: ["\(ends.pair.addressA4)"],
                    remoteAddresses: ["\(server ?? ends.pair.addressB4)"],
                    localAuth: [.pubkey(id: "c.example", certificates: [certificate])],
                    remoteAuth: [.pubkey(id: "%any")],
                    children: [
                        ChildConfig(
                            name: "\(name)-grab", mode: .transport, policies: false,
                            espProposals: StrongSwanBackend.espProposals, localTS: [local], remoteTS: [remote])
                    ]))
            var logs: [ControlLog] = []
            do {
                logs = try daemon.vici.initiate(child: "\(name)-grab", ike: name, timeout: .seconds(5))
            } catch {
                logs = []
            }
            // "CHILD_SA mallory-0-grab{1} established with SPIs c20a05f3_i ccfd4c99_o and TS …"
            for log in logs {
                guard let range = log.message.range(of: "established with SPIs ") else { continue }
                let words = log.message[range.upperBound...].split(separator: " ")
                guard words.count >= 2, let spiIn = UInt32(words[0].prefix(8), radix: 16),
                    let spiOut = UInt32(words[1].prefix(8), radix: 16)
                else { continue }
                return (spiIn, spiOut)
            }
            return nil
        }

        func stop() { daemon.stop() }
    }

    func capture(_ ends: Ends) throws -> PacketCapture {
        try PacketCapture(
            namespace: ends.pair.b, interface: ends.pair.interfaceB,
            file: FileManager.default.temporaryDirectory.appendingPathComponent("sb-\(UUID().uuidString).pcap").path)
    }

    static func makeEnds(identityMap: IdentityMap? = nil) throws -> Ends {
        let pair = try NamespacePair(prefix: "sb")
        var options = EnginePair.Options()
        options.extraCertificateNames = ["c.example"]
        options.removesPairOnClose = true
        options.identityMapOfB = identityMap
        do {
            return try EnginePair(pair: pair, keying: .ecdsa, options: options)
        } catch {
            pair.remove()
            throw error
        }
    }

    /// SAs of the listener's reqid in the server's kernel (larval states are not SAs).
    static func listenerSAs(_ ends: Ends, reqid: UInt32) throws -> [XFRMState] {
        try XFRMClient(namespace: ends.pair.b.namespace).states().filter { $0.reqid == reqid && !$0.isLarval }
    }

    /// The SAs of `reqid` other than `own` still in the server's kernel after they had up to 5 s to go (every 5 ms).
    static func foreignSAsLeft(_ ends: Ends, reqid: UInt32, own: Set<UInt32>) throws -> [XFRMState] {
        let deadline = Date().addingTimeInterval(5)
        var left: [XFRMState] = []
        repeat {
            left = try listenerSAs(ends, reqid: reqid).filter { !own.contains($0.id.spi) }
            if left.isEmpty { break }
            usleep(5_000)
        } while Date() < deadline
        return left
    }

    /// alice (a.example) is connected to a secured listener and held as `a.example`. Mallory then negotiates
    /// (a) a wide CHILD_SA (alice's address, every TCP port) and (b) one with exactly alice's 5-tuple, on the
    /// listener's reqid. Each is refused by the server at once; meanwhile and after, the server's data for alice
    /// never leaves under Mallory's SPIs (capture), alice receives every byte, the server receives only alice's,
    /// the query on alice's accepted socket keeps naming `a.example` with alice's own SPIs, impersonation runs
    /// as alice's account (`daemon`), never Mallory's (`nobody`), and the kernel's counters of alice's own SA
    /// pair carried every packet of the connection.
    func testASecondIKEDaemonAtTheClientsAddressGetsNothingOfAnAcceptedConnection() throws {
        try inESPKernel(self, timeout: 300) {
            let fixture = try CharonFlowTests.ImpersonationFixture(
                rules: "id a.example -> daemon\nid c.example -> nobody\n")
            defer { fixture.remove() }
            let ends = try Self.makeEnds(identityMap: fixture.map)
            defer { ends.close() }
            let capture = try capture(ends)
            defer {
                capture.stop()
                try? FileManager.default.removeItem(atPath: capture.file)
            }
            let listener = try ends.b.securedListener(in: ends.pair.b, family: .inet, address: ends.pair.addressB4)
            let port = listener.localPort
            let (client, accepted) = try ends.namedConnection(
                to: IPEndpoint(address: ends.pair.addressB4, port: port), through: listener)
            let before = try ends.b.query(accepted.fd.rawValue)
            XCTAssertEqual(before.peerMachineIdentity, "a.example")
            let endpoint = try XCTUnwrap(ends.b.endpoint(accepted.fd.rawValue))
            let pinned = try XCTUnwrap(endpoint.pinned, "the accepted connection is pinned to its SA pair")
            XCTAssertEqual(pinned.inboundSPI, before.inboundSA?.spi)
            let reqid = try XCTUnwrap(endpoint.reqid)
            let alicePort = client.localPort

            let mallory = try Mallory(ends)
            defer { mallory.stop() }
            var malloryInbound: Set<UInt32> = [] // her inbound SPIs: what the server would send her under
            var exchanged = 0
            func exchange(_ label: String) throws {
                for round in 0..<5 {
                    let down = Array("server to alice \(label) \(round) \(UUID().uuidString)".utf8)
                    try accepted.send(down)
                    XCTAssertEqual(try client.receiveExactly(down.count, timeout: 5), down, "\(label): alice receives")
                    let up = Array("alice to server \(label) \(round)".utf8)
                    try client.send(up)
                    XCTAssertEqual(try accepted.receiveExactly(up.count, timeout: 5), up, "\(label): server receives")
                    exchanged += 1
                }
                let view = try ends.b.query(accepted.fd.rawValue)
                XCTAssertEqual(view.peerMachineIdentity, "a.example", "\(label): the query names alice")
                XCTAssertEqual(ends.b.endpoint(accepted.fd.rawValue)?.pinned?.inboundSPI, pinned.inboundSPI, label)
                let account = try ends.b.withPeerImpersonation(accepted.fd.rawValue) { account -> String in
                    XCTAssertEqual(geteuid(), 1, "\(label): the thread runs as daemon (uid 1)")
                    return account.name
                }
                XCTAssertEqual(account, "daemon", "\(label): impersonation runs as alice's account, never Mallory's")
            }
            try exchange("before")
            for (label, local) in [
                ("(a) wide", TrafficSelector.dynamic(protocol: "tcp")),
                ("(b) exact", TrafficSelector.dynamic(protocol: "tcp", port: alicePort)),
            ] {
                let child = try mallory.negotiate(local: local, remote: .dynamic(protocol: "tcp", port: port))
                let established = Date() // `initiate` answers once Mallory's side has installed its SAs
                if let spi = child?.inbound { malloryInbound.insert(spi) }
                // Refused by the server: gone from its kernel within a bounded time (how long the refused child
                // existed there is the window its SAs could have been used in; a pinned connection never uses them).
                let left = try Self.foreignSAsLeft(
                    ends, reqid: reqid, own: [pinned.inboundSPI, pinned.outboundSPI])
                let spis = child.map { "in \(String($0.inbound, radix: 16)) out \(String($0.outbound, radix: 16))" }
                print(
                    "ServerBinding \(label): Mallory's child \(spis ?? "not established"); gone from the server's kernel "
                        + "\(Int(Date().timeIntervalSince(established) * 1000)) ms after her initiate answered")
                try exchange(label)
                XCTAssertEqual(
                    left.map(\.description), [], "\(label): Mallory's SAs on the listener's reqid are deleted")
                try exchange("\(label), after")
            }
            capture.stop()
            let bySPI = try capture.espPacketsBySPI()
            let underMallory = malloryInbound.reduce(0) { $0 + (bySPI[$1] ?? 0) }
            print(
                "ServerBinding: ESP packets by SPI \(bySPI.map { "\(String($0.key, radix: 16)): \($0.value)" }); Mallory's inbound SPIs \(malloryInbound.map { String($0, radix: 16) })"
            )
            XCTAssertFalse(malloryInbound.isEmpty, "Mallory's children were established (the attack ran)")
            XCTAssertEqual(underMallory, 0, "no packet left the server under Mallory's SAs")
            XCTAssertGreaterThan(bySPI[pinned.outboundSPI] ?? 0, exchanged, "alice's data left under alice's own SA")
            XCTAssertEqual(try capture.analyse(markers: []).plainTCPPackets, 0, "nothing in clear")
            // The server kernel's own counters: alice's SA pair carried the connection both ways, and no SA of
            // the listener's reqid other than hers is left to have carried anything.
            let counters = try Self.listenerSAs(ends, reqid: reqid)
            let inbound = counters.first { $0.id.spi == pinned.inboundSPI }?.counters.packets ?? 0
            let outbound = counters.first { $0.id.spi == pinned.outboundSPI }?.counters.packets ?? 0
            print(
                "ServerBinding: alice's SA pair counted \(inbound) packets in, \(outbound) out; exchanges \(exchanged)")
            XCTAssertGreaterThanOrEqual(
                inbound, UInt64(exchanged), "every segment of alice's reached the server under her SA")
            XCTAssertGreaterThanOrEqual(outbound, UInt64(exchanged), "every segment to alice left under her SA")
            XCTAssertEqual(
                counters.filter { ![pinned.inboundSPI, pinned.outboundSPI].contains($0.id.spi) }.map(\.description), [],
                "no other SA on the listener's reqid")
            for socket in [client, accepted, listener] {
                ends.a.release(socket.fd.rawValue)
                ends.b.release(socket.fd.rawValue)
                socket.closeAbortively()
            }
        }
    }

    /// A pinned connection under continuous traffic in both directions while each end's charon rekeys its
    /// CHILD_SA in turn: both sockets move to the new SA pair, every byte arrives, nothing leaves in clear; the
    /// longest pause in each direction around each rekey is printed (the senders write a chunk every 20 ms).
    func testRekeysOfAPinnedConnectionUnderTrafficBothWays() throws {
        try inESPKernel(self, timeout: 300) {
            let ends = try Self.makeEnds()
            defer { ends.close() }
            let capture = try capture(ends)
            defer {
                capture.stop()
                try? FileManager.default.removeItem(atPath: capture.file)
            }
            let listener = try ends.b.securedListener(in: ends.pair.b, family: .inet, address: ends.pair.addressB4)
            let (client, accepted) = try ends.namedConnection(
                to: IPEndpoint(address: ends.pair.addressB4, port: listener.localPort), through: listener)
            _ = try ends.b.query(accepted.fd.rawValue)
            func pins() -> (a: PinnedSAs?, b: PinnedSAs?) {
                (ends.a.endpoint(client.fd.rawValue)?.pinned, ends.b.endpoint(accepted.fd.rawValue)?.pinned)
            }
            XCTAssertNotNil(pins().a, "the client is pinned")
            XCTAssertNotNil(pins().b, "the accepted connection is pinned")
            let up = CharonFlowTests.Stream(from: client, to: accepted)
            let down = CharonFlowTests.Stream(from: accepted, to: client)
            XCTAssertTrue(up.progresses(within: 5), "client to server flows")
            XCTAssertTrue(down.progresses(within: 5), "server to client flows")
            var figures: [String] = []
            for (label, backend, clientSide) in [
                ("the client's charon rekeys", ends.backendA, true),
                ("the server's charon rekeys", ends.backendB, false),
            ] {
                usleep(500_000)
                _ = (up.takeLongestGap(), down.takeLongestGap())
                let before = pins()
                let own = try XCTUnwrap(clientSide ? before.a : before.b)
                let child = try XCTUnwrap(
                    try backend.vici.listSAs().flatMap(\.children).first { $0.spiIn == own.inboundSPI }?.uniqueID,
                    "\(label): the pinned CHILD_SA in charon")
                let started = ContinuousClock.now
                try backend.vici.rekey(childID: child)
                var moved: Duration?
                let deadline = Date().addingTimeInterval(10)
                while Date() < deadline {
                    let now = pins()
                    if let a = now.a, let b = now.b, let oldA = before.a, let oldB = before.b,
                        a.inboundSPI != oldA.inboundSPI, a.outboundSPI != oldA.outboundSPI,
                        b.inboundSPI != oldB.inboundSPI, b.outboundSPI != oldB.outboundSPI,
                        a.pendingInboundSPI == nil, a.pendingOutboundSPI == nil, b.pendingInboundSPI == nil,
                        b.pendingOutboundSPI == nil
                    {
                        moved = ContinuousClock.now - started
                        break
                    }
                    usleep(5_000)
                }
                XCTAssertNotNil(moved, "\(label): both sockets moved to the new SA pair: \(before) -> \(pins())")
                XCTAssertTrue(up.progresses(within: 5), "\(label): client to server goes on")
                XCTAssertTrue(down.progresses(within: 5), "\(label): server to client goes on")
                // Both ends stay secured in their tables across the rekey (the old pair's deletion is not theirs).
                for (side, state) in [
                    ("client", ends.a.endpoint(client.fd.rawValue)?.state),
                    ("server", ends.b.endpoint(accepted.fd.rawValue)?.state),
                ] {
                    guard case .secured? = state else {
                        XCTFail("\(label): the \(side)'s endpoint is \(String(describing: state))")
                        continue
                    }
                }
                usleep(1_000_000)
                let gaps = (up: up.takeLongestGap(), down: down.takeLongestGap())
                figures.append(
                    "\(label): both pins moved after \(moved.map { "\($0)" } ?? "never"); longest pause client to "
                        + "server \(gaps.up), server to client \(gaps.down)")
            }
            let (sentUp, receivedUp) = up.finish()
            let (sentDown, receivedDown) = down.finish()
            print("ServerBinding rekeys: " + figures.joined(separator: "; "))
            print(
                "ServerBinding rekeys: client to server \(receivedUp)/\(sentUp) B, server to client \(receivedDown)/\(sentDown) B"
            )
            XCTAssertGreaterThan(sentUp, 20 * CharonFlowTests.Stream.chunk.count)
            XCTAssertEqual(receivedUp, sentUp, "every byte client to server arrived")
            XCTAssertEqual(receivedDown, sentDown, "every byte server to client arrived")
            capture.stop()
            let analysis = try capture.analyse(markers: [])
            XCTAssertGreaterThan(analysis.espPackets, 0)
            XCTAssertEqual(analysis.plainTCPPackets, 0, "nothing in clear: \(analysis.summary.prefix(2_000))")
            for socket in [client, accepted, listener] {
                ends.a.release(socket.fd.rawValue)
                ends.b.release(socket.fd.rawValue)
                socket.closeAbortively()
            }
        }
    }

    /// A listener bound to one of the server's addresses is offered for that address only: a peer asking for a
    /// CHILD_SA to the same port on another address of the server (10.77.0.3, its IKE SA with that address) gets
    /// none on the listener's reqid (`TS_UNACCEPTABLE`), while one for the listener's own address is made.
    func testAListenerBoundToOneAddressIsOfferedForThatAddressOnly() throws {
        try inESPKernel(self, timeout: 300) {
            let ends = try Self.makeEnds()
            defer { ends.close() }
            let other: IPAddress = "10.77.0.3"
            _ = try ends.pair.b.exec(["ip", "addr", "add", "\(other)/24", "dev", ends.pair.interfaceB])
            let listener = try ends.b.securedListener(in: ends.pair.b, family: .inet, address: ends.pair.addressB4)
            let port = listener.localPort
            // The listener is offered once the engine has seen it listen (bounded).
            let offered = Date().addingTimeInterval(5)
            while Date() < offered, ends.b.endpoint(listener.fd.rawValue)?.role != .responder(port: port) {
                usleep(10_000)
            }
            let reqid = try XCTUnwrap(ends.b.endpoint(listener.fd.rawValue)?.reqid)
            let mallory = try Mallory(ends)
            defer { mallory.stop() }
            // Her IKE SA is with the other address, so `dynamic` there would be that address.
            let elsewhere = try mallory.negotiate(
                local: .dynamic(protocol: "tcp"), remote: .dynamic(protocol: "tcp", port: port), server: other)
            XCTAssertNil(elsewhere, "no CHILD_SA for the listener's port on another address")
            let sas = try Self.listenerSAs(ends, reqid: reqid)
            XCTAssertFalse(
                sas.contains { $0.selector.source == other || $0.selector.destination == other },
                "nothing on the listener's reqid for \(other): \(sas.map(\.description))")
            // The listener's own address is offered (the attacker's child there is then refused by policing or
            // kept as a wide child of a flow nobody holds: either way it was offered).
            let own = try mallory.negotiate(
                local: .dynamic(protocol: "tcp"),
                remote: .subnet("\(ends.pair.addressB4)/32", protocol: "tcp", port: port))
            XCTAssertNotNil(own, "the listener's own address and port are offered")
            listener.closeAbortively()
        }
    }

    /// A UDP responder (one socket, many peers): alice's flow is bound to alice by her first CHILD_SA; Mallory's
    /// children for it, exact or wide, are refused; the server's replies to alice leave under alice's SA only, and
    /// the query for alice's address names alice.
    func testAUDPResponderKeepsEachPeersFlowToThatPeer() throws {
        try inESPKernel(self, timeout: 300) {
            let ends = try Self.makeEnds()
            defer { ends.close() }
            let capture = try capture(ends)
            defer {
                capture.stop()
                try? FileManager.default.removeItem(atPath: capture.file)
            }
            let server = try TestSocket.make(in: ends.pair.b.namespace, family: .inet, kind: .udp)
            try ends.b.setSecurity(server.fd.rawValue)
            try server.bind(ends.pair.addressB4, port: 0)
            let port = server.localPort
            let client = try TestSocket.make(in: ends.pair.a.namespace, family: .inet, kind: .udp)
            try ends.a.setSecurity(client.fd.rawValue)
            let peer = IPEndpoint(address: ends.pair.addressB4, port: port)
            try ends.a.setPeerTargetName(client.fd.rawValue, SocketPeerTargetName(peerAddress: peer, name: "b.example"))
            try ends.a.connect(client.fd.rawValue, to: peer)
            let alice = IPEndpoint(address: ends.pair.addressA4, port: client.localPort)
            func exchange(_ label: String) throws {
                let up = Array("alice \(label) \(UUID().uuidString)".utf8)
                try client.send(up)
                XCTAssertEqual(try server.receive(timeout: 5), up, "\(label): the server receives alice's datagram")
                let down = Array("to alice \(label)".utf8)
                XCTAssertNil(server.sendTo(down, alice.address, port: alice.port), label)
                XCTAssertEqual(try client.receive(timeout: 5), down, "\(label): alice receives the reply")
                let view = try ends.b.query(server.fd.rawValue, SocketSecurityQueryTemplate(peerAddress: alice))
                XCTAssertEqual(view.peerMachineIdentity, "a.example", "\(label): the query names alice")
            }
            try exchange("before")
            let reqid = try XCTUnwrap(ends.b.endpoint(server.fd.rawValue)?.reqid)
            let own = Set(try Self.listenerSAs(ends, reqid: reqid).map(\.id.spi))
            let mallory = try Mallory(ends)
            defer { mallory.stop() }
            var malloryInbound: Set<UInt32> = []
            for (label, local) in [
                ("(a) exact", TrafficSelector.dynamic(protocol: "udp", port: alice.port)),
                ("(b) wide", TrafficSelector.dynamic(protocol: "udp")),
            ] {
                let child = try mallory.negotiate(local: local, remote: .dynamic(protocol: "udp", port: port))
                if let spi = child?.inbound { malloryInbound.insert(spi) }
                let left = try Self.foreignSAsLeft(ends, reqid: reqid, own: own)
                XCTAssertEqual(
                    left.map(\.description), [], "\(label): Mallory's SAs on the responder's reqid are deleted")
                try exchange(label)
            }
            capture.stop()
            let bySPI = try capture.espPacketsBySPI()
            XCTAssertFalse(malloryInbound.isEmpty, "Mallory's children were established (the attack ran)")
            XCTAssertEqual(malloryInbound.reduce(0) { $0 + (bySPI[$1] ?? 0) }, 0, "nothing left under Mallory's SAs")
            for socket in [client, server] {
                ends.a.release(socket.fd.rawValue)
                ends.b.release(socket.fd.rawValue)
                socket.close()
            }
        }
    }

    /// An IPv6 responder is `IPV6_V6ONLY`, so another socket may bind the same port on IPv4: a peer negotiating
    /// IPv4 SAs for that port gets none (the responder's child is in its family's conn only), and the IPv4
    /// socket receives nothing the kernel decrypted.
    func testAnIPv6ResponderGetsNoIPv4SAs() throws {
        try inESPKernel(self, timeout: 300) {
            let ends = try Self.makeEnds()
            defer { ends.close() }
            let server = try TestSocket.make(in: ends.pair.b.namespace, family: .inet6, kind: .udp)
            try ends.b.setSecurity(server.fd.rawValue)
            try server.bind(.any(.inet6), port: 0)
            let port = server.localPort
            let beside = try TestSocket.make(in: ends.pair.b.namespace, family: .inet, kind: .udp)
            try beside.bind(.any(.inet), port: port)
            usleep(100_000) // the responder settles
            let client = try TestSocket.make(in: ends.pair.a.namespace, family: .inet, kind: .udp)
            try ends.a.setSecurity(client.fd.rawValue)
            let peer = IPEndpoint(address: ends.pair.addressB4, port: port)
            XCTAssertThrowsError(try ends.a.connect(client.fd.rawValue, to: peer, timeout: .seconds(4)))
            _ = client.sendTo(Array("to the IPv4 socket".utf8), ends.pair.addressB4, port: port)
            XCTAssertThrowsError(try beside.receive(timeout: 1), "the IPv4 socket beside it receives nothing")
            let reqid = try XCTUnwrap(ends.b.endpoint(server.fd.rawValue)?.reqid)
            XCTAssertEqual(try Self.listenerSAs(ends, reqid: reqid).filter { $0.id.destination.family == .inet }, [])
            // IPv6 peers still reach it.
            let client6 = try TestSocket.make(in: ends.pair.a.namespace, family: .inet6, kind: .udp)
            try ends.a.setSecurity(client6.fd.rawValue)
            try ends.a.connect(client6.fd.rawValue, to: IPEndpoint(address: ends.pair.addressB6, port: port))
            let marker = Array("over IPv6".utf8)
            try client6.send(marker)
            XCTAssertEqual(try server.receive(timeout: 5), marker)
            for socket in [client, client6, server, beside] {
                ends.a.release(socket.fd.rawValue)
                ends.b.release(socket.fd.rawValue)
                socket.close()
            }
        }
    }
}
