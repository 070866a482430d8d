import ALE
import Foundation
import IPAddressing
import Keying
import NetnsTestSupport
import SecureSocket
import SystemPackage
import SystemSupport
import TierTesting
import XCTest
import XFRM

/// Tier 2: the engine on the host kernel, in a fresh pair of namespaces per test. Keying is the static-key
/// backend with no keys, so every negotiation fails: what must hold then is that nothing goes out in clear.
final class SecureSocketEngineTests: XCTestCase {
    var pair: NamespacePair!
    var engine: SecureSocketEngine!
    var client: XFRMClient!
    var reqidFolder: String!

    override func setUpWithError() throws {
        try requireTier(.hostKernel)
        pair = try NamespacePair(prefix: "ss")
        reqidFolder =
            FileManager.default.temporaryDirectory.appendingPathComponent("ss-reqids-\(UUID().uuidString)").path
        engine = try SecureSocketEngine(
            .init(
                negotiationTimeout: .seconds(1),
                keying: try StaticKeyBackend(peers: [], namespace: pair.a.namespace),
                reqidDirectory: reqidFolder, namespace: pair.a.namespace, closeGrace: .zero))
        client = try XFRMClient(namespace: pair.a.namespace)
    }

    override func tearDown() {
        engine = nil
        pair?.remove()
        pair = nil
        if let reqidFolder { try? FileManager.default.removeItem(atPath: reqidFolder) }
    }

    func socketPolicies() throws -> [XFRMPolicy] { try client.policies().filter(\.direction.isSocketPolicy) }

    func testSetSecurityInstallsRequiredPoliciesOnceBeforeBind() throws {
        for (family, kind) in [
            (IPAddressFamily.inet, TestSocket.Kind.tcp), (.inet6, .tcp), (.inet, .udp), (.inet6, .udp),
        ] {
            let socket = try TestSocket.make(in: pair.a.namespace, family: family, kind: kind)
            try engine.setSecurity(socket.fd.rawValue, SocketSecuritySettings(flags: .guaranteeEncryption))
            let policies = try socketPolicies()
            XCTAssertEqual(policies.count, 2, "\(family) \(kind): one policy per direction")
            let reqid = try XCTUnwrap(
                engine.endpoint(socket.fd.rawValue)?.reqid)
            for policy in policies {
                XCTAssertEqual(policy.templates.map(\.reqid), [reqid])
                XCTAssertEqual(policy.templates.map(\.level), [.required])
                XCTAssertEqual(policy.templates.first?.authenticationAlgorithms, .max, "aalgos all ones")
                XCTAssertEqual(policy.selector.family, family)
            }
            XCTAssertThrowsError(try engine.setSecurity(socket.fd.rawValue)) {
                XCTAssertEqual(($0 as? SecureSocketError)?.code, .invalidArgument, "only once per socket")
            }
            if family == .inet6 {
                var v6only: CInt = 0
                var length = socklen_t(MemoryLayout<CInt>.size)
                getsockopt(socket.fd.rawValue, CInt(IPPROTO_IPV6), IPV6_V6ONLY, &v6only, &length)
                XCTAssertEqual(v6only, 1, "a secured IPv6 socket cannot reach v4-mapped peers")
            }
            XCTAssertTrue(engine.holdsReqid(reqid), "reqid claimed")
            XCTAssertEqual(
                try FileManager.default.contentsOfDirectory(atPath: reqidFolder).filter { $0.hasPrefix("block-") }
                    .count,
                1, "claimed from the namespace in a block")
            engine.release(socket.fd.rawValue)
            socket.close()
            XCTAssertEqual(try socketPolicies(), [], "closing the socket removes its policies")
            XCTAssertFalse(engine.holdsReqid(reqid), "reqid released")
        }
    }

    func testOrderingAndSocketKindRules() throws {
        let bound = try TestSocket.make(in: pair.a.namespace, family: .inet, kind: .tcp)
        try bound.bind(pair.addressA4, port: 0)
        XCTAssertThrowsError(try engine.setSecurity(bound.fd.rawValue)) {
            XCTAssertEqual(($0 as? SecureSocketError)?.code, .invalidArgument, "after bind")
        }
        let connected = try TestSocket.make(in: pair.a.namespace, family: .inet, kind: .udp)
        XCTAssertNil(connected.connectOnce(pair.addressB4, port: 9))
        XCTAssertThrowsError(try engine.setSecurity(connected.fd.rawValue)) {
            XCTAssertEqual(($0 as? SecureSocketError)?.code, .isConnected)
        }
        let raw: CInt = try pair.a.namespace.perform { socket(AF_INET, Int32(SOCK_RAW.rawValue), 253) }
        defer { close(raw) }
        XCTAssertThrowsError(try engine.setSecurity(raw)) {
            XCTAssertEqual(($0 as? SecureSocketError)?.code, .invalidArgument, "SOCK_RAW")
        }
        // A raw socket of protocol TCP, disconnected (its port then reads 0 as an unbound TCP socket's does), and
        // stream or datagram sockets of other protocols than TCP and UDP: all refused.
        let rawTCP: CInt = try pair.a.namespace.perform {
            let fd = socket(AF_INET, Int32(SOCK_RAW.rawValue), Int32(IPPROTO_TCP))
            var unspecified = sockaddr()
            unspecified.sa_family = sa_family_t(AF_UNSPEC)
            _ = Glibc.connect(fd, &unspecified, socklen_t(MemoryLayout<sockaddr>.size))
            return fd
        }
        defer { close(rawTCP) }
        XCTAssertThrowsError(try engine.setSecurity(rawTCP)) {
            XCTAssertEqual(($0 as? SecureSocketError)?.code, .invalidArgument, "disconnected SOCK_RAW of TCP")
        }
        let others: [(String, Int32, Int32)] = [
            ("UDP-Lite", Int32(SOCK_DGRAM.rawValue), Int32(IPPROTO_UDPLITE)),
            ("SCTP", Int32(SOCK_STREAM.rawValue), Int32(IPPROTO_SCTP)),
            ("MPTCP", Int32(SOCK_STREAM.rawValue), 262),
        ]
        for (name, type, proto) in others {
            let fd: CInt = try pair.a.namespace.perform { socket(AF_INET, type, proto) }
            guard fd >= 0 else {
                print("note: \(name) sockets are not available in this kernel (errno \(errno)); not checked")
                continue
            }
            defer { close(fd) }
            XCTAssertThrowsError(try engine.setSecurity(fd)) {
                XCTAssertEqual(($0 as? SecureSocketError)?.code, .invalidArgument, name)
            }
        }
        XCTAssertEqual(try socketPolicies(), [], "no policy left by a refused call")
    }

    /// `WSAConnect` on a secured listener is refused before anything changes (Windows: `WSAEINVAL`): the listener
    /// keeps its role and its policy, so it goes on answering its peers.
    func testAListeningSocketCannotConnect() throws {
        let listener = try TestSocket.make(in: pair.a.namespace, family: .inet, kind: .tcp)
        defer { listener.close() }
        try engine.setSecurity(listener.fd.rawValue)
        try listener.bind(pair.addressA4, port: 0)
        try listener.listen()
        // The role watch sees it listening first (its policy may move to the SPD then).
        let settled = Date().addingTimeInterval(5)
        while !(engine.endpoint(listener.fd.rawValue)?.role.isResponder ?? false), Date() < settled {
            usleep(10_000)
        }
        XCTAssertTrue(engine.endpoint(listener.fd.rawValue)?.role.isResponder ?? false, "seen listening")
        let before = (try socketPolicies(), try client.policies().filter { !$0.direction.isSocketPolicy })
        XCTAssertThrowsError(
            try engine.connect(listener.fd.rawValue, to: IPEndpoint(address: pair.addressB4, port: 9))
        ) {
            XCTAssertEqual(($0 as? SecureSocketError)?.code, .invalidArgument, "\($0)")
        }
        XCTAssertTrue(engine.endpoint(listener.fd.rawValue)?.role.isResponder ?? false, "still answering peers")
        XCTAssertNil(engine.endpoint(listener.fd.rawValue)?.peer, "no peer recorded")
        XCTAssertEqual(try socketPolicies(), before.0, "its socket policy is untouched")
        XCTAssertEqual(
            try client.policies().filter { !$0.direction.isSocketPolicy }, before.1, "its port's SPD policies too")
        engine.release(listener.fd.rawValue)
    }

    func testSkipFilterAndAllowInsecureMapping() throws {
        let skip = try TestSocket.make(in: pair.a.namespace, family: .inet, kind: .tcp)
        try engine.setSecurity(
            skip.fd.rawValue,
            SocketSecuritySettings(
                securityProtocol: .ipsec, flags: [],
                ipsec: IPsecSettings(flags: .skipFilterInstantiation)))
        XCTAssertEqual(try socketPolicies(), [], "SKIP_FILTER_INSTANTIATION: no per-socket policy")
        let insecure = try TestSocket.make(in: pair.a.namespace, family: .inet, kind: .tcp)
        try engine.setSecurity(insecure.fd.rawValue, SocketSecuritySettings(flags: .allowInsecure))
        XCTAssertEqual(Set(try socketPolicies().flatMap { $0.templates.map(\.level) }), [.use])
    }

    /// No keys for the peer: WSAConnect fails within the bound and not one segment leaves in clear; a plain
    /// connect() gets EAGAIN from the kernel.
    func testFailedNegotiationNeverSendsClearText() throws {
        let listener = try TestSocket.make(in: pair.b.namespace, family: .inet, kind: .tcp)
        try listener.bind(pair.addressB4, port: 0)
        try listener.listen()
        let capture = try PacketCapture(
            namespace: pair.b, interface: pair.interfaceB,
            file: FileManager.default.temporaryDirectory.appendingPathComponent("ss-\(UUID().uuidString).pcap").path)
        defer {
            capture.stop()
            try? FileManager.default.removeItem(atPath: capture.file)
        }
        let socket = try TestSocket.make(in: pair.a.namespace, family: .inet, kind: .tcp)
        try engine.setSecurity(socket.fd.rawValue)
        let started = Date()
        XCTAssertThrowsError(
            try engine.connect(
                socket.fd.rawValue,
                to: IPEndpoint(address: pair.addressB4, port: listener.localPort))
        ) {
            XCTAssertEqual(($0 as? SecureSocketError)?.code, .networkUnreachable, "\($0)")
        }
        XCTAssertLessThan(Date().timeIntervalSince(started), 5)
        XCTAssertEqual(socket.connectOnce(pair.addressB4, port: listener.localPort), .resourceTemporarilyUnavailable)
        // That connect() raised an ACQUIRE, which the engine answers (and fails again): wait for it to settle.
        let cookie = try XCTUnwrap(SocketInspector.cookie(of: socket.fd.rawValue))
        let settle = Date().addingTimeInterval(3)
        var state = engine.endpoint(cookie: cookie)?.state
        while Date() < settle {
            state = engine.endpoint(cookie: cookie)?.state
            if case .failed = state { break }
            usleep(10_000)
        }
        guard case .failed? = state else { return XCTFail("endpoint state \(String(describing: state))") }
        capture.stop()
        XCTAssertEqual(try capture.analyse(markers: []).plainTCPPackets, 0, "not one clear TCP segment")
    }

    /// ALLOW_INSECURE: negotiation fails, the connection proceeds in clear and the query says so.
    func testAllowInsecureFallsBackAndQuerySaysNotSecured() throws {
        let listener = try TestSocket.make(in: pair.b.namespace, family: .inet, kind: .tcp)
        try listener.bind(pair.addressB4, port: 0)
        try listener.listen()
        let socket = try TestSocket.make(in: pair.a.namespace, family: .inet, kind: .tcp)
        try engine.setSecurity(socket.fd.rawValue, SocketSecuritySettings(flags: .allowInsecure))
        try engine.connect(
            socket.fd.rawValue, to: IPEndpoint(address: pair.addressB4, port: listener.localPort))
        let accepted = try listener.accept(timeout: 5)
        defer { accepted.close() }
        let info = try engine.query(socket.fd.rawValue)
        XCTAssertFalse(info.flags.contains(.secured))
        XCTAssertFalse(info.flags.contains(.encrypted))
        XCTAssertEqual(info.negotiationError, 13800)
        let endpoint = try XCTUnwrap(engine.endpoint(socket.fd.rawValue))
        guard case .insecure = endpoint.state else { return XCTFail("endpoint state \(endpoint.state)") }
    }

    /// The async API runs on the engine's bounded blocking executor: 64 overlapping async queries never run on
    /// more than its bound of threads, and calls one after another start none (no thread per call).
    func testAsyncCallsRunOnTheEnginesBoundedThreads() async throws {
        let sockets = try (0..<8).map { _ in try TestSocket.make(in: pair.a.namespace, family: .inet, kind: .tcp) }
        for socket in sockets { try engine.setSecurity(socket.fd.rawValue) }
        let engine = try XCTUnwrap(engine)
        let descriptors = sockets.map(\.fd.rawValue)
        let errors = try await withThrowingTaskGroup(of: SecureSocketError.Code?.self) { group in
            for index in 0..<64 {
                group.addTask {
                    do {
                        _ = try await engine.query(descriptors[index % descriptors.count])
                        return nil
                    } catch {
                        return (error as? SecureSocketError)?.code
                    }
                }
            }
            var codes: [SecureSocketError.Code?] = []
            for try await code in group {
                XCTAssertLessThanOrEqual(engine.blockingThreadsRunning, 16, "bounded while calls overlap")
                codes.append(code)
            }
            return codes
        }
        XCTAssertEqual(
            errors, Array(repeating: SecureSocketError.Code.notConnected, count: 64), "each call ran and answered")
        XCTAssertGreaterThanOrEqual(engine.blockingThreadsRunning, 1)
        XCTAssertLessThanOrEqual(engine.blockingThreadsRunning, 16)
        // Calls one after another take the idle threads: none starts for them.
        let afterBurst = engine.blockingThreadsRunning
        for index in 0..<32 {
            await XCTAssertThrowsErrorAsync(try await engine.query(descriptors[index % descriptors.count]))
        }
        XCTAssertLessThanOrEqual(engine.blockingThreadsRunning, afterBurst, "32 sequential calls start no thread")
        for socket in sockets { socket.close() }
    }

    func testPeerTargetNamesPerPeerAndDelete() throws {
        let udp = try TestSocket.make(in: pair.a.namespace, family: .inet, kind: .udp)
        try engine.setSecurity(udp.fd.rawValue)
        XCTAssertThrowsError(try engine.setPeerTargetName(udp.fd.rawValue, SocketPeerTargetName(name: "b.example"))) {
            XCTAssertEqual(($0 as? SecureSocketError)?.code, .invalidArgument, "datagram needs an address")
        }
        let b = IPEndpoint(address: pair.addressB4, port: 0)
        let c = IPEndpoint(address: "10.77.0.3", port: 53)
        try engine.setPeerTargetName(udp.fd.rawValue, SocketPeerTargetName(peerAddress: b, name: "host/b.example"))
        try engine.setPeerTargetName(udp.fd.rawValue, SocketPeerTargetName(peerAddress: c, name: "c.example"))
        XCTAssertEqual(
            engine.peerTargetNames(udp.fd.rawValue), [pair.addressB4: "host/b.example", "10.77.0.3": "c.example"])
        try engine.deletePeerTargetName(udp.fd.rawValue, address: b)
        XCTAssertEqual(engine.peerTargetNames(udp.fd.rawValue), ["10.77.0.3": "c.example"])
        try engine.deletePeerTargetName(udp.fd.rawValue, address: b) // unknown: nothing to forget, no error

        let tcp = try TestSocket.make(in: pair.a.namespace, family: .inet, kind: .tcp)
        try engine.setSecurity(tcp.fd.rawValue)
        try engine.setPeerTargetName(tcp.fd.rawValue, SocketPeerTargetName(name: "host/b.example"))
        XCTAssertEqual(engine.peerTargetNames(tcp.fd.rawValue), [nil: "host/b.example"])
    }

    /// Peer target names are identities, never patterns: what charon would read as a wildcard is refused with
    /// WSAEINVAL (in SPN and raw form), and nothing is recorded.
    func testPeerTargetNamesThatArePatternsAreRefused() throws {
        let tcp = try TestSocket.make(in: pair.a.namespace, family: .inet, kind: .tcp)
        try engine.setSecurity(tcp.fd.rawValue)
        for name in [
            "host/%any", "%any", "*.example", "host/*.example", "b.%example", "*", "CN=*, O=example",
            "%any6", "host/b.exa*mple",
        ] {
            XCTAssertThrowsError(
                try engine.setPeerTargetName(tcp.fd.rawValue, SocketPeerTargetName(name: name)),
                name
            ) {
                XCTAssertEqual(($0 as? SecureSocketError)?.code, .invalidArgument, name)
            }
        }
        XCTAssertEqual(engine.peerTargetNames(tcp.fd.rawValue), [:], "no pattern was recorded")
        try engine.setPeerTargetName(tcp.fd.rawValue, SocketPeerTargetName(name: "host/b.example"))
        XCTAssertEqual(engine.peerTargetNames(tcp.fd.rawValue), [nil: "host/b.example"])

        let raw = try TestSocket.make(in: pair.a.namespace, family: .inet, kind: .tcp)
        try engine.setSecurity(
            raw.fd.rawValue,
            SocketSecuritySettings(
                securityProtocol: .ipsec, ipsec: IPsecSettings(flags: .peerNameIsRawFormat)))
        XCTAssertThrowsError(try engine.setPeerTargetName(raw.fd.rawValue, SocketPeerTargetName(name: "%any")))
        try engine.setPeerTargetName(raw.fd.rawValue, SocketPeerTargetName(name: "CN=b.example, O=Example"))
    }

    func testClosedSocketsAreReleased() throws {
        let socket = try TestSocket.make(in: pair.a.namespace, family: .inet, kind: .tcp)
        try engine.setSecurity(socket.fd.rawValue)
        let reqid = try XCTUnwrap(engine.endpoints.first?.reqid)
        XCTAssertEqual(engine.endpointCount, 1)
        socket.close()
        // The kernel's destroy notification releases it (or, without them, the next sweep).
        XCTAssertTrue(eventually { engine.endpointCount == 0 }, "released")
        XCTAssertTrue(engine.holdsReqid(reqid) == false, "the reqid is given back")
    }

    /// With the kernel's socket-destroy notifications followed, a closed socket is known gone when the kernel
    /// destroys it, and the sweep no longer looks at every secured socket each second (only every
    /// presenceCheckInterval): the cost of knowing follows the sockets that close, not the ones held. A socket
    /// still open through a duplicate descriptor stays secured and reachable.
    func testOwnSocketsAreKnownGoneFromTheKernelsDestroyNotifications() throws {
        let looksBefore = engine.ownSocketFullLooks
        var sockets: [TestSocket] = []
        for index in 0..<100 {
            let socket = try TestSocket.make(
                in: pair.a.namespace, family: index % 2 == 0 ? .inet : .inet6, kind: index % 3 == 0 ? .udp : .tcp)
            try engine.setSecurity(socket.fd.rawValue)
            sockets.append(socket)
        }
        usleep(2_500_000) // two or three sweeps
        let looksHeld = engine.ownSocketFullLooks - looksBefore
        XCTAssertLessThanOrEqual(looksHeld, 1, "100 held sockets: at most the first sweep looked at them all")
        for socket in sockets.suffix(50) { socket.close() }
        XCTAssertTrue(eventually(within: .seconds(3)) { engine.endpointCount == 50 }, "\(engine.endpointCount) left")
        XCTAssertEqual(
            engine.ownSocketFullLooks - looksBefore, looksHeld, "known gone from the kernel, not from a look")

        // A socket closed through its registered descriptor while a duplicate holds it open is not gone.
        let kept = sockets[2] // TCP over IPv4
        let cookie = try XCTUnwrap(SocketInspector.cookie(of: kept.fd.rawValue))
        let duplicate = dup(kept.fd.rawValue)
        XCTAssertGreaterThanOrEqual(duplicate, 0)
        kept.close()
        usleep(1_200_000)
        XCTAssertNotNil(engine.endpoint(cookie: cookie), "a descriptor still names the socket")
        // The engine reaches it through the duplicate: its role watch sees it listen.
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                bind(duplicate, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
            }
        }
        XCTAssertEqual(bound, 0)
        XCTAssertEqual(listen(duplicate, 4), 0)
        XCTAssertTrue(
            eventually { engine.endpoint(cookie: cookie)?.role.isResponder == true },
            "the role watch saw it listen through the duplicate: \(String(describing: engine.endpoint(cookie: cookie)?.role))"
        )
        close(duplicate)
        XCTAssertTrue(eventually { engine.endpoint(cookie: cookie) == nil }, "the last descriptor closed: released")
        for (index, socket) in sockets.prefix(50).enumerated() where index != 2 { socket.close() }
        XCTAssertTrue(eventually { engine.endpointCount == 0 })
    }
}

extension SecureSocketEngineTests {
    /// A listener closed while a connection it accepted is still open: the sweep adopts the accepted socket,
    /// so the shared reqid (and the keying behind it) stays until that connection closes too.
    func testClosingAListenerKeepsItsAcceptedConnectionsSecured() throws {
        let serverEngine = try SecureSocketEngine(
            .init(
                negotiationTimeout: .seconds(1),
                keying: try StaticKeyBackend(peers: [], namespace: pair.b.namespace),
                reqidDirectory: reqidFolder + "-b", namespace: pair.b.namespace,
                followEvents: false, closeGrace: .zero))
        defer { try? FileManager.default.removeItem(atPath: reqidFolder + "-b") }
        let listener = try TestSocket.make(in: pair.b.namespace, family: .inet, kind: .tcp)
        try serverEngine.setSecurity(listener.fd.rawValue, SocketSecuritySettings(flags: .allowInsecure))
        try listener.bind(pair.addressB4, port: 0)
        try listener.listen()
        XCTAssertEqual(serverEngine.sweep(), 0, "the first sweep notes the listener's port")
        let client = try TestSocket.make(in: pair.a.namespace, family: .inet, kind: .tcp)
        client.setTimeouts(5)
        try client.connect(pair.addressB4, port: listener.localPort)
        let accepted = try listener.accept(timeout: 5)
        let reqid = try XCTUnwrap(serverEngine.endpoints.first?.reqid)

        listener.close()
        XCTAssertEqual(serverEngine.sweep(), 1, "the listener is released")
        let adopted = try XCTUnwrap(
            serverEngine.endpoint(accepted.fd.rawValue))
        XCTAssertEqual(adopted.reqid, reqid, "the accepted socket holds the listener's reqid now")
        XCTAssertTrue(serverEngine.holdsReqid(reqid), "the reqid is still claimed")

        accepted.close()
        XCTAssertEqual(serverEngine.sweep(), 1)
        XCTAssertEqual(serverEngine.endpointCount, 0)
        XCTAssertFalse(serverEngine.holdsReqid(reqid), "released with the last user")
        client.close()
    }
}

extension SecureSocketEngineTests {
    /// A listener released (the application's closesocket) while a connection it accepted is open and was never
    /// queried: the accepted socket is adopted first, so it keeps the listener's reqid, which its inherited
    /// policies carry and which therefore must not go to another socket.
    func testReleasingAListenerKeepsItsUnqueriedAcceptedConnectionsReqid() throws {
        let serverEngine = try SecureSocketEngine(
            .init(
                negotiationTimeout: .seconds(1),
                keying: try StaticKeyBackend(peers: [], namespace: pair.b.namespace),
                reqidDirectory: reqidFolder + "-r", namespace: pair.b.namespace,
                followEvents: false, closeGrace: .zero))
        defer { try? FileManager.default.removeItem(atPath: reqidFolder + "-r") }
        let listener = try TestSocket.make(in: pair.b.namespace, family: .inet, kind: .tcp)
        try serverEngine.setSecurity(listener.fd.rawValue, SocketSecuritySettings(flags: .allowInsecure))
        try listener.bind(pair.addressB4, port: 0)
        try listener.listen()
        let client = try TestSocket.make(in: pair.a.namespace, family: .inet, kind: .tcp)
        client.setTimeouts(5)
        try client.connect(pair.addressB4, port: listener.localPort)
        let accepted = try listener.accept(timeout: 5)
        let reqid = try XCTUnwrap(serverEngine.endpoints.first?.reqid)

        serverEngine.release(listener.fd.rawValue)
        listener.close()
        let adopted = try XCTUnwrap(serverEngine.endpoint(accepted.fd.rawValue), "the accepted socket is adopted")
        XCTAssertEqual(adopted.reqid, reqid)
        XCTAssertEqual(adopted.role, .accepted)
        XCTAssertTrue(serverEngine.holdsReqid(reqid), "the reqid its policies carry is still held")
        serverEngine.release(accepted.fd.rawValue)
        XCTAssertFalse(serverEngine.holdsReqid(reqid), "released with the last user")
        accepted.close()
        client.close()
    }

    /// A socket closed without release keeps its keying for the grace period (its FIN still needs the SAs),
    /// then the sweep frees everything.
    func testClosedSocketsKeepTheirKeyingForTheGracePeriod() throws {
        let graceful = try SecureSocketEngine(
            .init(
                negotiationTimeout: .seconds(1),
                keying: try StaticKeyBackend(peers: [], namespace: pair.a.namespace),
                reqidDirectory: reqidFolder + "-g", namespace: pair.a.namespace,
                followEvents: false, closeGrace: .milliseconds(500)))
        defer { try? FileManager.default.removeItem(atPath: reqidFolder + "-g") }
        let socket = try TestSocket.make(in: pair.a.namespace, family: .inet, kind: .tcp)
        try graceful.setSecurity(socket.fd.rawValue)
        socket.close()
        XCTAssertEqual(graceful.sweep(), 0, "first seen gone: grace starts")
        XCTAssertEqual(graceful.endpointCount, 1)
        usleep(600_000)
        XCTAssertEqual(graceful.sweep(), 1, "after the grace period")
        XCTAssertEqual(graceful.endpointCount, 0)
    }
}

extension SecureSocketEngineTests {
    /// A child forked from the engine's process that shuts the engine down and exits (as `atexit` would) leaves
    /// the parent's endpoints, reqid claims and keying alone; the parent keeps securing sockets.
    func testAForkedChildNeverTearsDownTheParentsEngine() throws {
        let socket = try TestSocket.make(in: pair.a.namespace, family: .inet, kind: .tcp)
        try engine.setSecurity(socket.fd.rawValue)
        let reqid = try XCTUnwrap(engine.endpoints.first?.reqid)
        let claims = try FileManager.default.contentsOfDirectory(atPath: reqidFolder)
        let fresh = try TestSocket.make(in: pair.a.namespace, family: .inet, kind: .tcp)
        let child = fork()
        if child == 0 {
            // The child's calls get a clear error instead of using the parent's sockets and locks.
            var code: Int32 = 0
            do {
                try engine.setSecurity(fresh.fd.rawValue)
            } catch {
                code = error.code == .notInitialised ? 0 : 2
            }
            if code == 0, (try? engine.query(socket.fd.rawValue)) != nil { code = 3 }
            // Release in the child leaves the parent's endpoint, reqid and policies (checked below).
            engine.release(socket.fd.rawValue)
            engine.shutdown()
            SecureSocketEngine.shutdownShared()
            _exit(code)
        }
        XCTAssertGreaterThan(child, 0)
        var status: CInt = 0
        XCTAssertEqual(waitpid(child, &status, 0), child)
        XCTAssertEqual(status, 0, "the forked child's calls failed with WSANOTINITIALISED (exit status \(status >> 8))")
        XCTAssertEqual(engine.endpointCount, 1, "the parent's endpoint is still there")
        XCTAssertTrue(engine.holdsReqid(reqid))
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: reqidFolder), claims, "its claims too")
        XCTAssertEqual(try socketPolicies().count, 2, "and the socket's policies")
        let another = try TestSocket.make(in: pair.a.namespace, family: .inet, kind: .tcp)
        try engine.setSecurity(another.fd.rawValue)
        XCTAssertEqual(engine.endpointCount, 2)
    }
}

extension SecureSocketEngineTests {
    /// `connect`'s timeout bounds the TCP handshake too: a peer that drops every SYN (an XFRM block policy in its
    /// namespace) makes the call fail with WSAETIMEDOUT at the deadline, not after TCP's two minutes of retries;
    /// the socket is blocking again afterwards.
    func testConnectTimeoutBoundsTheTCPHandshake() throws {
        let listener = try TestSocket.make(in: pair.b.namespace, family: .inet, kind: .tcp)
        try listener.bind(pair.addressB4, port: 0)
        try listener.listen()
        _ = try pair.b.ip(
            "xfrm", "policy", "add", "dir", "in", "src", "\(pair.addressA4)/32", "dst", "\(pair.addressB4)/32",
            "proto", "tcp", "dport", "\(listener.localPort)", "action", "block")
        let socket = try TestSocket.make(in: pair.a.namespace, family: .inet, kind: .tcp)
        try engine.setSecurity(
            socket.fd.rawValue,
            SocketSecuritySettings(
                securityProtocol: .ipsec, ipsec: IPsecSettings(flags: .skipFilterInstantiation)))
        let started = Date()
        XCTAssertThrowsError(
            try engine.connect(
                socket.fd.rawValue,
                to: IPEndpoint(address: pair.addressB4, port: listener.localPort),
                timeout: .milliseconds(1500))
        ) {
            XCTAssertEqual(($0 as? SecureSocketError)?.code, .timedOut, "\($0)")
        }
        let elapsed = Date().timeIntervalSince(started)
        XCTAssertGreaterThanOrEqual(elapsed, 1.4)
        XCTAssertLessThan(elapsed, 3, "bounded by the timeout, not by TCP's retries")
        XCTAssertEqual(fcntl(socket.fd.rawValue, F_GETFL) & O_NONBLOCK, 0, "blocking again")
    }
}

extension SecureSocketEngineTests {
    /// Liveness is the socket's, not its first descriptor's: after `dup` and closing the original, the sweep
    /// finds the duplicate and keeps the endpoint (and its keying); closing the last descriptor releases it.
    func testADuplicatedSocketKeepsItsEndpointAfterTheOriginalDescriptorCloses() throws {
        // An engine that follows no events: only its sweep's look at every socket tells it they are gone.
        let engine = try SecureSocketEngine(
            .init(
                negotiationTimeout: .seconds(1),
                keying: try StaticKeyBackend(peers: [], namespace: pair.a.namespace),
                reqidDirectory: reqidFolder + "-d", namespace: pair.a.namespace,
                followEvents: false, closeGrace: .zero))
        defer { try? FileManager.default.removeItem(atPath: reqidFolder + "-d") }
        let socket = try TestSocket.make(in: pair.a.namespace, family: .inet, kind: .tcp)
        try engine.setSecurity(socket.fd.rawValue)
        let cookie = try XCTUnwrap(SocketInspector.cookie(of: socket.fd.rawValue))
        let reqid = try XCTUnwrap(engine.endpoint(cookie: cookie)?.reqid)
        let duplicate = dup(socket.fd.rawValue)
        XCTAssertGreaterThanOrEqual(duplicate, 0)
        socket.close()
        XCTAssertEqual(engine.sweep(), 0, "a descriptor still names the socket")
        XCTAssertEqual(engine.endpoint(cookie: cookie)?.descriptor, duplicate, "the duplicate is registered now")
        XCTAssertTrue(engine.holdsReqid(reqid))
        close(duplicate)
        XCTAssertEqual(engine.sweep(), 1, "the last descriptor is gone: released")
        XCTAssertNil(engine.endpoint(cookie: cookie))
        XCTAssertFalse(engine.holdsReqid(reqid))
    }
}

extension SecureSocketEngineTests {
    /// The event pump starts its XFRM monitor again when it ends (as on a kernel overrun), and events flow
    /// again: an ACQUIRE raised afterwards is answered (here the negotiation fails, which the state shows).
    func testTheEventMonitorIsStartedAgainAfterItEnds() throws {
        engine.interruptEventMonitor()
        let restarted = Date().addingTimeInterval(3)
        while Date() < restarted, engine.monitorRestarts == 0 { usleep(10_000) }
        XCTAssertEqual(engine.monitorRestarts, 1)

        let listener = try TestSocket.make(in: pair.b.namespace, family: .inet, kind: .tcp)
        try listener.bind(pair.addressB4, port: 0)
        try listener.listen()
        let socket = try TestSocket.make(in: pair.a.namespace, family: .inet, kind: .tcp)
        try engine.setSecurity(socket.fd.rawValue)
        let cookie = try XCTUnwrap(SocketInspector.cookie(of: socket.fd.rawValue))
        XCTAssertEqual(socket.connectOnce(pair.addressB4, port: listener.localPort), .resourceTemporarilyUnavailable)
        let answered = Date().addingTimeInterval(3)
        var state = engine.endpoint(cookie: cookie)?.state
        while Date() < answered {
            state = engine.endpoint(cookie: cookie)?.state
            if case .failed = state { break }
            usleep(10_000)
        }
        guard case .failed? = state else {
            return XCTFail("the ACQUIRE was not answered: \(String(describing: state))")
        }
    }
}

extension SecureSocketEngineTests {
    /// A connection that fell back to clear (`ALLOW_INSECURE`, no keys) gets no flow cover: its `TIME_WAIT`
    /// ACKs are as clear as the connection was, and nothing global is left behind by it. (A secured connection's
    /// cover is shown in tier 3, `BindingTests.testClosingOneOfTwoConnectionsLeavesTheOtherWorking`.)
    func testAConnectionThatFellBackToClearGetsNoFlowCover() throws {
        let listener = try TestSocket.make(in: pair.b.namespace, family: .inet, kind: .tcp)
        try listener.bind(pair.addressB4, port: 0)
        try listener.listen()
        let socket = try TestSocket.make(in: pair.a.namespace, family: .inet, kind: .tcp)
        try engine.setSecurity(socket.fd.rawValue, SocketSecuritySettings(flags: .allowInsecure))
        try engine.connect(
            socket.fd.rawValue, to: IPEndpoint(address: pair.addressB4, port: listener.localPort))
        engine.release(socket.fd.rawValue)
        XCTAssertEqual(try client.policies().filter { !$0.direction.isSocketPolicy }, [])
        socket.close()
    }
}

extension SecureSocketEngineTests {
    /// 10,000 sockets opened, secured, named and closed (half released by the application, half found closed by
    /// the sweep): nothing stays behind, neither in the kernel (policies, SAs) nor in the engine (endpoints,
    /// reqids, claim files, token handles) nor in the process (descriptors), and memory stays flat.
    func testTenThousandSecureAndCloseCyclesLeaveNothingBehind() throws {
        // Descriptors of this process, without the snapshot the event pump may be writing at that moment (a
        // temporary file, open only while it is written).
        func descriptors() -> Int {
            let entries = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd")) ?? []
            return entries.filter { entry in
                let target =
                    (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/fd/\(entry)")) ?? ""
                return !target.hasSuffix(".tmp")
            }.count
        }
        func anonymousKiB() -> Int {
            guard let text = try? String(contentsOfFile: "/proc/self/status", encoding: .utf8),
                let line = text.split(separator: "\n").first(where: { $0.hasPrefix("RssAnon:") })
            else { return -1 }
            return Int(line.split(whereSeparator: { $0 == " " || $0 == "\t" })[1]) ?? -1
        }
        func cycles(_ count: Int) throws {
            for index in 0..<count {
                let socket = try TestSocket.make(
                    in: pair.a.namespace, family: index % 3 == 0 ? .inet6 : .inet,
                    kind: index % 2 == 0 ? .tcp : .udp)
                try engine.setSecurity(socket.fd.rawValue)
                try engine.setPeerTargetName(
                    socket.fd.rawValue,
                    SocketPeerTargetName(
                        peerAddress: IPEndpoint(address: pair.addressB4, port: 9), name: "host/b.example"))
                if index % 2 == 0 { engine.release(socket.fd.rawValue) }
                socket.close()
                if index % 500 == 499 { engine.sweep() }
            }
            engine.sweep()
            XCTAssertTrue(eventually { engine.endpointCount == 0 }, "every closed socket released")
        }
        let fdsBefore = descriptors()
        try cycles(2_000) // warm-up: the first blocks, tables and code paths
        let memoryAfterWarmUp = anonymousKiB()
        try cycles(8_000)
        let memoryAfter = anonymousKiB()

        XCTAssertEqual(engine.endpointCount, 0, "no endpoint left")
        XCTAssertEqual(try client.policies().count, 0, "no socket or global policy left")
        XCTAssertEqual(try client.states().count, 0, "no SA left")
        XCTAssertEqual(engine.tokens.openCount, 0, "no token handle left")
        let claims = (try? FileManager.default.contentsOfDirectory(atPath: reqidFolder)) ?? []
        XCTAssertEqual(claims, [], "every reqid block given back")
        XCTAssertLessThanOrEqual(descriptors(), fdsBefore, "no descriptor left")
        XCTAssertLessThan(
            memoryAfter - memoryAfterWarmUp, 1_024,
            "8,000 more cycles grew anonymous memory by \(memoryAfter - memoryAfterWarmUp) KiB")
    }
}

extension SecureSocketEngineTests {
    /// The snapshot the inspection tools read: every endpoint, in cookie order, written whole (a temporary file
    /// renamed over it, none left behind) and not rewritten while nothing changed.
    func testTheSnapshotListsEveryEndpointAndIsRewrittenOnlyWhenTheyChange() throws {
        var sockets: [TestSocket] = []
        for _ in 0..<3 {
            let socket = try TestSocket.make(in: pair.a.namespace, family: .inet, kind: .tcp)
            try engine.setSecurity(socket.fd.rawValue)
            sockets.append(socket)
        }
        let decoder = JSONDecoder()
        decoder.dateDecodingStrategy = .iso8601
        func snapshot() throws -> (EndpointSnapshot, inode: ino_t) {
            var info = stat()
            XCTAssertEqual(stat(engine.snapshotFile, &info), 0, "the snapshot exists")
            let data = try XCTUnwrap(FileManager.default.contents(atPath: engine.snapshotFile))
            return (try decoder.decode(EndpointSnapshot.self, from: data), info.st_ino)
        }
        engine.publish()
        let (first, inode) = try snapshot()
        XCTAssertEqual(first.pid, getpid())
        let cookies = try sockets.map { try XCTUnwrap(engine.endpoint($0.fd.rawValue)?.cookie) }
        XCTAssertEqual(first.endpoints.map(\.cookie), cookies.sorted())
        engine.publish()
        XCTAssertEqual(try snapshot().inode, inode, "nothing changed: not rewritten")
        sockets.removeLast()
        XCTAssertTrue(eventually { engine.endpointCount == 2 }, "the closed socket is released")
        engine.publish()
        let (second, newInode) = try snapshot()
        XCTAssertNotEqual(newInode, inode)
        XCTAssertEqual(second.endpoints.map(\.cookie), Array(cookies.prefix(2)).sorted())
        let folder = URL(fileURLWithPath: engine.snapshotFile).deletingLastPathComponent().path
        let leftovers = try FileManager.default.contentsOfDirectory(atPath: folder).filter { $0.hasSuffix(".tmp") }
        XCTAssertEqual(leftovers, [], "no temporary file is left")
    }
}

/// `XCTAssertThrowsError` for an async expression.
func XCTAssertThrowsErrorAsync<T>(
    _ expression: @autoclosure () async throws -> T, file: StaticString = #filePath, line: UInt = #line
) async {
    do {
        _ = try await expression()
        XCTFail("no error thrown", file: file, line: line)
    } catch {}
}

/// Waits (bounded) until `condition` holds; returns whether it does.
func eventually(within bound: Duration = .seconds(2), _ condition: () -> Bool) -> Bool {
    let deadline = Deadline(after: bound)
    while !condition() {
        if deadline.hasPassed { return false }
        usleep(10_000)
    }
    return true
}
