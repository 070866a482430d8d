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

/// Tier 3: every connection bound to its own SAs and its own authenticated peer (the binding model in the
/// SecureSocket documentation), against many connections at once, several users on one host, and an
/// authenticated peer that is not the peer target name. Each test captures the veth.
final class BindingTests: XCTestCase {
    typealias Ends = CharonFlowTests.Ends

    func capture(_ ends: Ends, on side: TestNamespace? = nil) throws -> PacketCapture {
        let namespace = side ?? ends.pair.b
        return try PacketCapture(
            namespace: namespace,
            interface: namespace.name == ends.pair.a.name ? ends.pair.interfaceA : ends.pair.interfaceB,
            file: FileManager.default.temporaryDirectory
                .appendingPathComponent("bt-\(UUID().uuidString).pcap").path)
    }

    /// One client process, one server: 200 secured connections opened one after another and all held open,
    /// then a round of echoes on every one. Each connection has an SA pair of its own whose selectors are its
    /// flow, and every connection answers: the newest SA no longer takes every older connection's replies.
    func testTwoHundredConnectionsHeldOpenAllEcho() throws {
        try inESPKernel(self, timeout: 420) { try heldConnections(try Ends(auth: .ecdsa), exactSelectors: true) }
    }

    /// The same with an operator's charon on each host (started outside the library, strongSwan's defaults:
    /// `set_proto_port_transport_sa = no`, so every transport SA has address-only selectors and the kernel
    /// cannot tell the connections' SAs apart by flow): every connection is pinned to its own SA pair, so all
    /// echo, the query stays under a millisecond, and everything is gone once they are released.
    func testTwoHundredConnectionsOnOperatorCharonsAllEcho() throws {
        try inESPKernel(self, timeout: 420) {
            let pair = try NamespacePair(prefix: "op")
            var options = EnginePair.Options()
            options.systemCharons = true
            options.systemCharonOptions.flowSelectorsOnTransportSAs = false
            options.removesPairOnClose = true
            let ends: Ends
            do {
                ends = try EnginePair(pair: pair, keying: .ecdsa, options: options)
            } catch {
                pair.remove()
                throw error
            }
            try heldConnections(ends, exactSelectors: false)
        }
    }

    /// `count` connections from one process, held, then echoed and queried one by one (see the two tests above).
    func heldConnections(_ ends: Ends, exactSelectors: Bool) throws {
        do {
            defer { ends.close() }
            let capture = try capture(ends)
            defer {
                capture.stop()
                try? FileManager.default.removeItem(atPath: capture.file)
            }
            let listener = try ends.b.securedListener(in: ends.pair.b, family: .inet, address: ends.pair.addressB4)
            let peer = IPEndpoint(address: ends.pair.addressB4, port: listener.localPort)
            let count = Int(ProcessInfo.processInfo.environment["WSS_HELD_CONNECTIONS"] ?? "") ?? 200
            var clients: [TestSocket] = []
            var accepted: [TestSocket] = []
            let started = Date()
            for index in 0..<count {
                let client = try TestSocket.make(in: ends.pair.a.namespace, family: .inet, kind: .tcp)
                client.setTimeouts(5)
                try ends.a.setSecurity(client.fd.rawValue, SocketSecuritySettings(flags: .guaranteeEncryption))
                try ends.a.setPeerTargetName(client.fd.rawValue, SocketPeerTargetName(name: "host/b.example"))
                do {
                    try ends.a.connect(client.fd.rawValue, to: peer)
                } catch {
                    XCTFail("connection \(index): \(error)")
                    throw error
                }
                clients.append(client)
                let server = try listener.accept(timeout: 5)
                server.setTimeouts(5)
                accepted.append(server)
            }
            let opened = Date().timeIntervalSince(started)
            print(
                "opened \(count) secured connections in \(String(format: "%.1f", opened)) s "
                    + "(\(String(format: "%.1f", opened * 1000 / Double(count))) ms each)")

            let xfrmA = try XFRMClient(namespace: ends.pair.a.namespace)
            let xfrmB = try XFRMClient(namespace: ends.pair.b.namespace)
            let statsBefore = try XFRMStatistics.read(in: ends.pair.a.namespace)
            var answered = 0
            var outboundSPIs = Set<UInt32>()
            var markers: [[UInt8]] = []
            for (index, (client, server)) in zip(clients, accepted).enumerated() {
                let marker = Array("echo-\(index)-\(UUID().uuidString.prefix(8))".utf8)
                markers.append(marker)
                try client.send(marker)
                let got = try server.receiveExactly(marker.count, timeout: 5)
                try server.send(got)
                if (try? client.receiveExactly(marker.count, timeout: 5)) == marker { answered += 1 }
                let view = try ends.b.query(server.fd.rawValue)
                XCTAssertEqual(view.flags, [.secured, .encrypted], "connection \(index): \(view)")
                XCTAssertEqual(view.peerMachineIdentity, "a.example", "connection \(index)")
                if let out = view.outboundSA {
                    outboundSPIs.insert(out.spi)
                    // The server's SA for this connection is exactly its flow.
                    let state = try xfrmB.getState(out)
                    XCTAssertEqual(
                        ends.b.endpoint(server.fd.rawValue)?.pinned?.outboundSPI, out.spi,
                        "connection \(index): pinned to its own SA")
                    if exactSelectors {
                        XCTAssertTrue(state.selector.isFlowExact, "connection \(index): \(state.selector)")
                        XCTAssertEqual(
                            state.selector.destinationPort,
                            try XCTUnwrap(SocketInspector.facts(of: client.fd.rawValue).local?.port))
                    } else {
                        XCTAssertFalse(state.selector.isFlowExact, "the operator's charon: address-only selectors")
                    }
                }
            }
            XCTAssertEqual(answered, count, "every held connection echoes")
            XCTAssertEqual(outboundSPIs.count, count, "each connection has an outbound SA of its own")
            // The query of a pinned connection: two lookups by SPI, whatever the number of SAs.
            let queryStarted = ContinuousClock.now
            for client in clients { _ = try ends.a.query(client.fd.rawValue) }
            let perQuery = (ContinuousClock.now - queryStarted) / count
            // Baseline in the same run: the kernel lookups a pinned query needs at least (its two SAs by SPI).
            var pins: [PinnedSAs] = []
            for client in clients {
                if let pinned = ends.a.endpoint(client.fd.rawValue)?.pinned { pins.append(pinned) }
            }
            let baselineStarted = ContinuousClock.now
            for (client, pinned) in zip(clients, pins) {
                let flow = try XCTUnwrap(SocketInspector.facts(of: client.fd.rawValue).local)
                _ = try? xfrmA.getState(
                    XFRMStateID(
                        destination: flow.address.isAny ? ends.pair.addressA4 : flow.address, spi: pinned.inboundSPI))
                _ = try? xfrmA.getState(XFRMStateID(destination: ends.pair.addressB4, spi: pinned.outboundSPI))
            }
            let perBaseline = (ContinuousClock.now - baselineStarted) / max(1, pins.count)
            let ratio = perQuery / perBaseline
            print(
                "query at \(count) held connections: \(perQuery) each (client side); two GETSA: \(perBaseline); "
                    + "ratio \(String(format: "%.2f", ratio))")
            // 0.93 ms at 200 on an operator's charon when the test runs alone in user-mode-linux; an absolute bound
            // flakes with two kernels on two busy cores, the ratio to the kernel's own lookups does not.
            XCTAssertLessThan(ratio, 5, "the query is a few kernel lookups, whatever the held connections")
            let statsAfter = try XFRMStatistics.read(in: ends.pair.a.namespace)
            XCTAssertEqual(
                statsAfter["XfrmInTmplMismatch"], statsBefore["XfrmInTmplMismatch"], "no reply dropped by a policy")
            XCTAssertEqual(statsAfter["XfrmInStateMismatch"], statsBefore["XfrmInStateMismatch"])
            let clientSAs = try xfrmA.states().filter { !$0.isLarval && $0.mode == .transport }
            print(
                "client SAD: \(clientSAs.count) SAs for \(count) connections; XfrmIn* increase: "
                    + "\(statsAfter.increase(since: statsBefore))")

            capture.stop()
            let analysis = try capture.analyse(markers: markers)
            XCTAssertGreaterThan(analysis.espPackets, 0)
            XCTAssertEqual(analysis.plainTCPPackets, 0, analysis.summary)
            XCTAssertFalse(analysis.markerFound)
            for socket in clients {
                ends.a.release(socket.fd.rawValue)
                socket.closeAbortively()
            }
            for socket in accepted {
                ends.b.release(socket.fd.rawValue)
                socket.closeAbortively()
            }
            ends.b.release(listener.fd.rawValue)
            listener.closeAbortively()
            // Released: every CHILD_SA goes, in both kernels, within the close grace period and a second.
            let released = Date()
            let bound = released.addingTimeInterval(Double(ends.a.closeGrace.components.seconds) + 1)
            var left = 0
            repeat {
                left = try (xfrmA.states() + xfrmB.states()).filter { !$0.isLarval }.count
                if left == 0 { break }
                usleep(100_000)
            } while Date() < bound
            print(
                "released \(count) connections: \(left) SAs left after \(String(format: "%.2f", Date().timeIntervalSince(released))) s"
            )
            XCTAssertEqual(left, 0, "no SA left in either kernel")
        }
    }

    /// The same from 4 client processes sharing one charon (`secure-echo hold`, through the C ABI), 50 connections
    /// each, against one server process that echoes every connection on a thread of its own: every process
    /// echoes on all of its connections, nothing in clear, and nothing is left in charon or the kernel after
    /// the processes exit.
    func testTwoHundredConnectionsFromFourProcesses() throws {
        try inESPKernel(self, timeout: 420) { try fourProcesses(operatorCharons: false) }
    }

    /// The same with an operator's charon on both hosts (strongSwan's defaults: address-only transport SAs), the
    /// server process pointed at its host's one too.
    func testTwoHundredConnectionsFromFourProcessesOnOperatorCharons() throws {
        try inESPKernel(self, timeout: 420) { try fourProcesses(operatorCharons: true) }
    }

    func fourProcesses(operatorCharons: Bool) throws {
        do {
            let binaries = URL(
                fileURLWithPath: try FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")
            )
            .deletingLastPathComponent().path
            let echo = "\(binaries)/secure-echo"
            XCTAssertTrue(FileManager.default.isExecutableFile(atPath: echo), "build the secure-echo product first")
            let certificates = try TestCertificates(names: ["a.example", "b.example"])
            defer { certificates.remove() }
            let c = certificates.folder
            let pair = try NamespacePair(prefix: "bp")
            defer { pair.remove() }
            // One charon for the client host, shared by the four processes.
            var charonOptions = CharonDaemon.Options()
            charonOptions.flowSelectorsOnTransportSAs = !operatorCharons
            let charonA = try CharonDaemon(namespace: pair.a.namespace, options: charonOptions)
            defer { charonA.stop() }
            let charonB = operatorCharons ? try CharonDaemon(namespace: pair.b.namespace, options: charonOptions) : nil
            defer { charonB?.stop() }
            let aConf = try certificates.writeKeyingFile(for: "a.example", charon: charonA.socketPath)
            let bConf = try certificates.writeKeyingFile(for: "b.example", charon: charonB?.socketPath ?? "private")
            let capture = try PacketCapture(namespace: pair.b, interface: pair.interfaceB, file: "\(c)/veth-b.pcap")
            defer { capture.stop() }
            let server = try NamespaceProcess(
                in: pair.b, environment: ["WSS_KEYING_CONFIG": bConf],
                [
                    echo, "serve-many", "--bind", "\(pair.addressB4)", "--port", "27015",
                    "--seconds", "240",
                ], log: "\(c)/server.log")
            XCTAssertTrue(server.wait(for: "listening", timeout: 20), server.output)
            let clients = try (0..<4).map { index in
                try NamespaceProcess(
                    in: pair.a, environment: ["WSS_KEYING_CONFIG": aConf],
                    [
                        echo, "hold", "--server", "\(pair.addressB4)", "--target", "host/b.example",
                        "--connections", "50", "--linger", "3",
                    ], log: "\(c)/client-\(index).log")
            }
            for (index, client) in clients.enumerated() {
                XCTAssertTrue(client.waitForExit(timeout: 300), "client \(index) finished")
                print("client process \(index): \(client.output)")
                XCTAssertTrue(client.output.contains("echoed 50/50"), "client \(index): \(client.output)")
                if !client.isRunning { XCTAssertEqual(client.terminationStatus, 0, "client \(index)") }
            }
            // The processes are gone: nothing of theirs is left in the shared charon or in the kernel. The keying
            // daemon they shared releases their 200 connections once the kernel has closed their sockets (a CHILD_SA
            // deletion each, one after another: about 60 ms each in user-mode-linux), then exits, its conns unloaded.
            let exited = Date()
            let settled = exited.addingTimeInterval(40)
            var conns: [String] = []
            var childSAs: [XFRMState] = []
            let xfrmA = try XFRMClient(namespace: pair.a.namespace)
            repeat {
                conns = try charonA.vici.getConns()
                childSAs = try xfrmA.states().filter { !$0.isLarval }
                if conns.isEmpty && childSAs.isEmpty { break }
                usleep(200_000)
            } while Date() < settled
            if !conns.isEmpty {
                // The keying daemon the clients started logs to the first client's output.
                for client in clients { print("client log, after:\n\(client.output.suffix(4000))") }
            }
            let endedWithIKESA = clients.map {
                $0.output.components(separatedBy: "released departed sockets' connections with the IKE SA").count - 1
            }.reduce(0, +)
            print(
                "four processes (operator charons \(operatorCharons)): their 200 connections released \(String(format: "%.1f", Date().timeIntervalSince(exited))) s after the last one exited"
                    + " (IKE SAs ended with all their connections at once: \(endedWithIKESA))"
            )
            XCTAssertEqual(conns, [], "the client processes' conns are gone from the shared charon")
            XCTAssertEqual(childSAs.count, 0, "no SA left in the client's kernel: \(childSAs.prefix(3))")
            capture.stop()
            let analysis = try capture.analyse(markers: [])
            XCTAssertGreaterThan(analysis.espPackets, 0)
            XCTAssertEqual(analysis.plainTCPPackets, 0, analysis.summary)
        }
    }

    // MARK: - An authenticated peer that is not the peer target name

    /// The peer at the address the client wants holds a valid certificate from the trusted CA, but for
    /// `c.example`, not `b.example`. (a) It initiates IKE towards the client after WSASetSocketSecurity and
    /// before WSAConnect; (b) it answers the client; (c) the client host already has an IKE SA with it (a
    /// socket without a peer target name connected first). In each, WSAConnect and a plain connect() refuse,
    /// no SA ever carries the client socket's reqid with that peer, and the attacker's application receives
    /// no byte.
    func testAuthenticatedPeerWithTheWrongNameNeverGetsTheConnection() throws {
        try inESPKernel(self, timeout: 300) {
            let ends = try Ends(auth: .ecdsa, identityOfB: "c.example")
            defer { ends.close() }
            let capture = try capture(ends)
            defer {
                capture.stop()
                try? FileManager.default.removeItem(atPath: capture.file)
            }
            // The attacker's service: secured (its charon answers any authenticated peer) and a plain one.
            let attackerSecured = try ends.b.securedListener(
                in: ends.pair.b, family: .inet, address: ends.pair.addressB4)
            let attackerPlain = try TestSocket.make(in: ends.pair.b.namespace, family: .inet, kind: .tcp)
            try attackerPlain.bind(ends.pair.addressB4, port: 0)
            try attackerPlain.listen()
            // The client host also serves (so it has a responder config a peer could try to use).
            let clientListener = try ends.a.securedListener(
                in: ends.pair.a, family: .inet, address: ends.pair.addressA4)
            let xfrmA = try XFRMClient(namespace: ends.pair.a.namespace)
            var markers: [[UInt8]] = []

            func refuses(_ label: String, port: UInt16) throws {
                let client = try TestSocket.make(in: ends.pair.a.namespace, family: .inet, kind: .tcp)
                client.setTimeouts(3)
                try ends.a.setSecurity(client.fd.rawValue)
                try ends.a.setPeerTargetName(client.fd.rawValue, SocketPeerTargetName(name: "host/b.example"))
                let cookie = try XCTUnwrap(SocketInspector.cookie(of: client.fd.rawValue))
                let reqid = try XCTUnwrap(ends.a.endpoint(cookie: cookie)?.reqid)
                var attackName: String?
                defer {
                    // The attacker's own config stays out of the later cases (its charon would pick it for them).
                    if let attackName {
                        _ = try? ends.backendB.vici.terminate(ike: attackName, force: true, timeout: .seconds(2))
                        try? ends.backendB.vici.unloadConn(name: attackName)
                    }
                }
                if label.hasPrefix("(a)") {
                    // The attacker initiates towards the client, proposing every port of both hosts.
                    let attack = IKEConnConfig(
                        name: "attack-\(UUID().uuidString.prefix(6))", localAddresses: ["\(ends.pair.addressB4)"],
                        remoteAddresses: ["\(ends.pair.addressA4)"],
                        localAuth: [
                            .pubkey(
                                id: "c.example",
                                certificates: [try XCTUnwrap(ends.certificates).certificate("c.example")])
                        ],
                        remoteAuth: [.pubkey(id: "%any")],
                        children: [
                            ChildConfig(
                                name: "grab", mode: .transport, policies: false,
                                espProposals: StrongSwanBackend.espProposals,
                                localTS: [.dynamic], remoteTS: [.dynamic])
                        ])
                    try ends.backendB.vici.loadConn(attack)
                    _ = try? ends.backendB.vici.initiate(child: "grab", ike: attack.name, timeout: .seconds(5))
                    let onReqid = try xfrmA.states().filter { $0.reqid == reqid && !$0.isLarval }
                    XCTAssertEqual(onReqid.count, 0, "\(label): the attacker put SAs on the client's reqid: \(onReqid)")
                    attackName = attack.name
                }
                let target = IPEndpoint(address: ends.pair.addressB4, port: port)
                XCTAssertThrowsError(try ends.a.connect(client.fd.rawValue, to: target, timeout: .seconds(4)), label) {
                    XCTAssertEqual(($0 as? SecureSocketError)?.code, .accessDenied, "\(label): \($0)")
                }
                let state = ends.a.endpoint(cookie: cookie)?.state
                XCTAssertFalse(
                    { if case .secured = state { true } else { false } }(), "\(label): \(String(describing: state))")
                XCTAssertEqual(
                    try xfrmA.states().filter { $0.reqid == reqid && !$0.isLarval }.count, 0,
                    "\(label): no SA carries the client's reqid")
                ends.a.release(client.fd.rawValue)
                client.closeAbortively()

                // A plain connect() on a secured socket: the ACQUIRE path checks the name too.
                let plain = try TestSocket.make(in: ends.pair.a.namespace, family: .inet, kind: .tcp)
                try ends.a.setSecurity(plain.fd.rawValue)
                try ends.a.setPeerTargetName(plain.fd.rawValue, SocketPeerTargetName(name: "host/b.example"))
                XCTAssertThrowsError(try plain.connect(ends.pair.addressB4, port: port, retryFor: 3), label)
                let marker = Array("secret-\(label)-\(UUID().uuidString)".utf8)
                markers.append(marker)
                _ = try? plain.send(marker)
                ends.a.release(plain.fd.rawValue)
                plain.closeAbortively()
            }

            for port in [attackerSecured.localPort, attackerPlain.localPort] {
                try refuses("(a) attacker initiated first, port \(port)", port: port)
                try refuses("(b) attacker answers, port \(port)", port: port)
            }
            // (c) A socket without a peer target name accepts any authenticated peer: the client host now has
            // an IKE SA with the attacker. A named socket must not ride on it.
            let unnamed = try TestSocket.make(in: ends.pair.a.namespace, family: .inet, kind: .tcp)
            try ends.a.setSecurity(unnamed.fd.rawValue)
            try ends.a.connect(
                unnamed.fd.rawValue,
                to: IPEndpoint(
                    address: ends.pair.addressB4,
                    port: attackerSecured.localPort))
            XCTAssertEqual(try ends.a.query(unnamed.fd.rawValue).peerMachineIdentity, "c.example")
            let acceptedUnnamed = try attackerSecured.accept(timeout: 5)
            for port in [attackerSecured.localPort, attackerPlain.localPort] {
                try refuses("(c) IKE SA already up, port \(port)", port: port)
            }

            // The attacker's applications got nothing from the named sockets.
            XCTAssertThrowsError(try attackerSecured.accept(timeout: 0.5), "no further connection reached the attacker")
            XCTAssertThrowsError(
                try attackerPlain.accept(timeout: 0.5), "no connection reached the attacker's plain service")
            capture.stop()
            let analysis = try capture.analyse(markers: markers)
            XCTAssertFalse(analysis.markerFound, "no secret in clear on the wire")
            XCTAssertEqual(analysis.plainTCPPackets, 0, analysis.summary)
            for socket in [unnamed, acceptedUnnamed, attackerSecured, attackerPlain, clientListener] {
                ends.a.release(socket.fd.rawValue)
                ends.b.release(socket.fd.rawValue)
                socket.closeAbortively()
            }
        }
    }

    // MARK: - Several users on one client host

    /// alice and bob connect from one client host with a second authentication round, interleaved, 20
    /// connections each: every connection's query and impersonation name its own user, each connection has its
    /// own SA pair with its own flow as selectors, and the server's replies to alice leave through alice's SA.
    func testTwoUsersOnOneHostEachGetTheirOwnIdentityAndSAs() throws {
        try inESPKernel(self, timeout: 300) {
            let fixture = try CharonFlowTests.ImpersonationFixture(rules: "user alice -> nobody\nuser bob -> daemon\n")
            defer { fixture.remove() }
            let ends = try Ends(auth: .ecdsa, usersOfB: ["alice": "alice's secret", "bob": "bob's secret"])
            defer {
                ends.close()
                try? FileManager.default.removeItem(atPath: ends.reqidFolders[1] + "-imp")
            }
            let server = try SecureSocketEngine(
                .init(
                    negotiationTimeout: .seconds(10), keying: ends.backendB,
                    reqidDirectory: ends.reqidFolders[1] + "-imp",
                    namespace: ends.pair.b.namespace, identityMap: fixture.map))
            let capture = try capture(ends)
            defer {
                capture.stop()
                try? FileManager.default.removeItem(atPath: capture.file)
            }
            let listener = try server.securedListener(in: ends.pair.b, family: .inet, address: ends.pair.addressB4)
            let peer = IPEndpoint(address: ends.pair.addressB4, port: listener.localPort)
            let xfrmB = try XFRMClient(namespace: ends.pair.b.namespace)
            var connections: [(user: String, client: TestSocket, accepted: TestSocket)] = []
            for index in 0..<40 {
                let user = index % 2 == 0 ? "alice" : "bob"
                let client = try TestSocket.make(in: ends.pair.a.namespace, family: .inet, kind: .tcp)
                client.setTimeouts(5)
                try ends.a.setSecurity(
                    client.fd.rawValue,
                    SocketSecuritySettings(
                        securityProtocol: .ipsec,
                        ipsec: IPsecSettings(
                            userName: user, password: "\(user)'s secret")))
                try ends.a.setPeerTargetName(client.fd.rawValue, SocketPeerTargetName(name: "host/b.example"))
                try ends.a.connect(client.fd.rawValue, to: peer)
                let accepted = try listener.accept(timeout: 5)
                accepted.setTimeouts(5)
                connections.append((user, client, accepted))
            }
            var inboundSPIs = Set<UInt32>()
            var markers: [[UInt8]] = []
            for (index, connection) in connections.enumerated() {
                let view = try server.query(connection.accepted.fd.rawValue)
                XCTAssertEqual(
                    view.flags, [.secured, .encrypted, .impersonated], "\(index) \(connection.user): \(view)")
                XCTAssertEqual(view.peerUserIdentity, connection.user, "connection \(index)")
                XCTAssertEqual(view.peerMachineIdentity, "a.example")
                let account = try server.withPeerImpersonation(connection.accepted.fd.rawValue) { $0.name }
                XCTAssertEqual(account, connection.user == "alice" ? "nobody" : "daemon", "connection \(index)")
                let out = try XCTUnwrap(view.outboundSA)
                let inbound = try XCTUnwrap(view.inboundSA)
                inboundSPIs.insert(inbound.spi)
                let before = try xfrmB.getState(out).counters.packets
                let marker = Array("to-\(connection.user)-\(index)".utf8)
                markers.append(marker)
                try connection.accepted.send(marker)
                XCTAssertEqual(
                    try connection.client.receiveExactly(marker.count, timeout: 5), marker, "connection \(index)")
                let after = try xfrmB.getState(out)
                XCTAssertGreaterThan(
                    after.counters.packets, before, "the reply left through \(connection.user)'s own SA")
                XCTAssertTrue(after.selector.isFlowExact, "\(after.selector)")
            }
            XCTAssertEqual(inboundSPIs.count, 40, "an SA pair per connection")
            capture.stop()
            let analysis = try capture.analyse(markers: markers)
            XCTAssertEqual(analysis.plainTCPPackets, 0, analysis.summary)
            XCTAssertFalse(analysis.markerFound)
            for connection in connections {
                ends.a.release(connection.client.fd.rawValue)
                server.release(connection.accepted.fd.rawValue)
                connection.client.closeAbortively()
                connection.accepted.closeAbortively()
            }
            server.release(listener.fd.rawValue)
            listener.closeAbortively()
        }
    }

    /// Two connections to one peer share its IKE SA; releasing one removes its own CHILD_SA only, and the other
    /// keeps echoing (before, release terminated the shared IKE SA).
    func testClosingOneOfTwoConnectionsLeavesTheOtherWorking() throws {
        try inESPKernel(self) {
            let ends = try Ends(auth: .psk)
            defer { ends.close() }
            let listener = try ends.b.securedListener(in: ends.pair.b, family: .inet, address: ends.pair.addressB4)
            let peer = IPEndpoint(address: ends.pair.addressB4, port: listener.localPort)
            let pairs = try (0..<2).map { _ in try ends.namedConnection(to: peer, through: listener) }
            let views = try pairs.map { try ends.a.query($0.0.fd.rawValue) }
            XCTAssertEqual(views[0].ikeSAID, views[1].ikeSAID, "one IKE SA for both connections")
            // Each secured connection's flow is covered by global policies with its template, for the packets
            // the kernel sends for it from its control socket (TIME_WAIT ACKs, RSTs).
            let xfrm = try XFRMClient(namespace: ends.pair.a.namespace)
            let first = try XCTUnwrap(SocketInspector.facts(of: pairs[0].0.fd.rawValue))
            let outSelector = XFRMSelector.host(
                ends.pair.addressA4, ends.pair.addressB4, protocol: .tcp,
                sourcePort: first.local!.port, destinationPort: listener.localPort)
            let cover = try xfrm.policies().filter { !$0.direction.isSocketPolicy && $0.selector == outSelector }
            XCTAssertEqual(cover.count, 1, "\(cover)")
            XCTAssertEqual(
                cover.first?.templates.first?.reqid,
                ends.a.endpoint(cookie: first.cookie)?.reqid, "with the socket's reqid")
            XCTAssertEqual(cover.first?.lifetime.hardAddExpiresSeconds, XFRMLifetime.infinite.hardAddExpiresSeconds)
            // The server's side of the same flow is covered too, from the moment its SAs exist, although the
            // application never handed the accepted socket to the library (a server that closes first is the
            // side in TIME_WAIT).
            let xfrmB = try XFRMClient(namespace: ends.pair.b.namespace)
            let serverSelector = XFRMSelector.host(
                ends.pair.addressB4, ends.pair.addressA4, protocol: .tcp,
                sourcePort: listener.localPort, destinationPort: first.local!.port)
            func serverCover() throws -> [XFRMPolicy] {
                try xfrmB.policies().filter { !$0.direction.isSocketPolicy && $0.selector == serverSelector }
            }
            var covered: [XFRMPolicy] = []
            for _ in 0..<100 where covered.isEmpty {
                covered = try serverCover()
                if covered.isEmpty { usleep(20_000) }
            }
            XCTAssertEqual(covered.count, 1, "the accepted flow's cover on the server")
            let listenerReqid = try XCTUnwrap(
                ends.b.endpoint(listener.fd.rawValue)?.reqid)
            XCTAssertEqual(covered.first?.templates.first?.reqid, listenerReqid, "with the listener's reqid")
            XCTAssertEqual(covered.first?.lifetime.hardAddExpiresSeconds, XFRMLifetime.infinite.hardAddExpiresSeconds)
            XCTAssertNotEqual(views[0].childSAID, views[1].childSAID, "a CHILD SA each")
            let xfrmA = try XFRMClient(namespace: ends.pair.a.namespace)
            ends.a.release(pairs[0].0.fd.rawValue)
            pairs[0].0.closeAbortively()
            // (A larval state with the same SPI may follow: the closed socket's RST asks for its pinned SA again.)
            func releasedSA() throws -> XFRMState? {
                (try? xfrmA.getState(try XCTUnwrap(views[0].outboundSA))).flatMap { $0.isLarval ? nil : $0 }
            }
            let gone = Date().addingTimeInterval(3)
            while Date() < gone, try releasedSA() != nil { usleep(20_000) }
            XCTAssertNil(try releasedSA(), "the released connection's SA is gone")
            let after = try xfrm.policies().filter { !$0.direction.isSocketPolicy && $0.selector == outSelector }
            XCTAssertEqual(after.first?.lifetime.hardAddExpiresSeconds, 120, "the cover ends by itself after TIME_WAIT")
            var serverAfter: [XFRMPolicy] = []
            // The server learns it from charon's event for the peer's DELETE: up to 10 s on a loaded host.
            for _ in 0..<500 {
                serverAfter = try serverCover()
                if serverAfter.first?.lifetime.hardAddExpiresSeconds == 120 { break }
                usleep(20_000)
            }
            XCTAssertEqual(
                serverAfter.first?.lifetime.hardAddExpiresSeconds, 120,
                "the server's cover ends by itself after TIME_WAIT once the flow's SAs are gone")
            for round in 0..<3 {
                try pairs[1].0.send([UInt8(round)])
                XCTAssertEqual(try pairs[1].1.receiveExactly(1, timeout: 5), [UInt8(round)])
                try pairs[1].1.send([UInt8(round)])
                XCTAssertEqual(
                    try pairs[1].0.receiveExactly(1, timeout: 5), [UInt8(round)], "the other connection still echoes")
            }
            XCTAssertEqual(try ends.a.query(pairs[1].0.fd.rawValue).flags, [.secured, .encrypted])
            XCTAssertEqual(try ends.backendA.vici.listSAs().count, 1, "the IKE SA stays for the other connection")
            for socket in [pairs[1].0, pairs[1].1, pairs[0].1, listener] {
                ends.a.release(socket.fd.rawValue)
                ends.b.release(socket.fd.rawValue)
                socket.closeAbortively()
            }
        }
    }

    // MARK: - Listeners

    /// Two secured listeners on different ports, connected in both orders: both reachable, each connection's
    /// SAs carry its own listener's reqid.
    func testTwoSecuredListenersAreBothReachable() throws {
        try inESPKernel(self) {
            let ends = try Ends(auth: .psk)
            defer { ends.close() }
            let first = try ends.b.securedListener(in: ends.pair.b, family: .inet, address: ends.pair.addressB4)
            let second = try ends.b.securedListener(in: ends.pair.b, family: .inet, address: ends.pair.addressB4)
            let xfrmB = try XFRMClient(namespace: ends.pair.b.namespace)
            for order in [[first, second], [second, first]] {
                for listener in order {
                    let client = try TestSocket.make(in: ends.pair.a.namespace, family: .inet, kind: .tcp)
                    try ends.a.setSecurity(client.fd.rawValue)
                    try ends.a.connect(
                        client.fd.rawValue,
                        to: IPEndpoint(
                            address: ends.pair.addressB4,
                            port: listener.localPort))
                    let accepted = try listener.accept(timeout: 5)
                    try client.send([7])
                    XCTAssertEqual(try accepted.receiveExactly(1, timeout: 5), [7])
                    let view = try ends.b.query(accepted.fd.rawValue)
                    XCTAssertEqual(view.flags, [.secured, .encrypted])
                    let listenerReqid = ends.b.endpoint(listener.fd.rawValue)?.reqid
                    XCTAssertEqual(try xfrmB.getState(try XCTUnwrap(view.outboundSA)).reqid, listenerReqid)
                    ends.a.release(client.fd.rawValue)
                    ends.b.release(accepted.fd.rawValue)
                    client.closeAbortively()
                    accepted.closeAbortively()
                }
            }
            for listener in [first, second] {
                ends.b.release(listener.fd.rawValue)
                listener.closeAbortively()
            }
        }
    }

    /// An `ALLOW_INSECURE` listener: a plain connection from a host that also has a secured connection is
    /// reported not secured, and impersonation on it fails; the secured one is reported with its peer.
    func testAllowInsecureListenerNeverLendsAnotherConnectionsSAs() throws {
        try inESPKernel(self) {
            let fixture = try CharonFlowTests.ImpersonationFixture(rules: "id a.example -> daemon\n")
            defer { fixture.remove() }
            let ends = try Ends(auth: .ecdsa)
            defer {
                ends.close()
                try? FileManager.default.removeItem(atPath: ends.reqidFolders[1] + "-imp")
            }
            let server = try SecureSocketEngine(
                .init(
                    negotiationTimeout: .seconds(10), keying: ends.backendB,
                    reqidDirectory: ends.reqidFolders[1] + "-imp",
                    namespace: ends.pair.b.namespace, identityMap: fixture.map))
            let listener = try server.securedListener(
                in: ends.pair.b, family: .inet, address: ends.pair.addressB4,
                SocketSecuritySettings(flags: .allowInsecure))
            let secured = try TestSocket.make(in: ends.pair.a.namespace, family: .inet, kind: .tcp)
            try ends.a.setSecurity(secured.fd.rawValue)
            try ends.a.connect(
                secured.fd.rawValue, to: IPEndpoint(address: ends.pair.addressB4, port: listener.localPort))
            let securedAccepted = try listener.accept(timeout: 5)
            let plain = try TestSocket.make(in: ends.pair.a.namespace, family: .inet, kind: .tcp)
            _ = try plain.connect(ends.pair.addressB4, port: listener.localPort, retryFor: 3)
            let plainAccepted = try listener.accept(timeout: 5)

            let securedView = try server.query(securedAccepted.fd.rawValue)
            XCTAssertEqual(securedView.flags, [.secured, .encrypted])
            XCTAssertEqual(securedView.peerMachineIdentity, "a.example")
            let plainView = try server.query(plainAccepted.fd.rawValue)
            XCTAssertFalse(plainView.flags.contains(.secured), "\(plainView)")
            XCTAssertNil(plainView.peerMachineIdentity)
            XCTAssertThrowsError(try server.impersonatePeer(plainAccepted.fd.rawValue)) {
                XCTAssertEqual(($0 as? SecureSocketError)?.code, .accessDenied, "\($0)")
            }
            XCTAssertEqual(try server.withPeerImpersonation(securedAccepted.fd.rawValue) { $0.name }, "daemon")
            for socket in [secured, securedAccepted, plain, plainAccepted, listener] {
                ends.a.release(socket.fd.rawValue)
                server.release(socket.fd.rawValue)
                socket.closeAbortively()
            }
        }
    }
}
