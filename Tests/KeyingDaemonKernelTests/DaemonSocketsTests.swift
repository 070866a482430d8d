import ALE
import DaemonClient
import DaemonControl
import Foundation
import Glibc
import Keying
import KeyingDaemon
import Logging
import NetnsTestSupport
import SecureSocket
import SystemSupport
import TierTesting
import XCTest
import XFRM

/// Tier 2: the keying daemon learns that a client's socket is gone from the kernel's socket-destroy
/// notifications, not by looking at every socket each second. A daemon (its engine with no keying peers) and a
/// client in this test process, in a namespace of the test's own: a socket the client closes starts its close
/// grace period at once and is released right after it; while sockets stay open, the daemon does not list the
/// namespace's sockets again.
final class DaemonSocketsTests: XCTestCase {
    func testAClosedSocketIsReleasedAtOnceAndOpenOnesAreNotPolled() throws {
        try requireTier(.hostKernel)
        let bed = try DaemonInProcess(prefix: "kdsock")
        defer { bed.close() }
        let (ns, engine, sockets, client) = (bed.ns, bed.engine, bed.sockets, bed.client)
        XCTAssertTrue(sockets.reportsEveryDestruction || sockets.fullLooks == 0, "the destroy monitor is joined")

        let kept = try TestSocket.make(in: ns.namespace, family: .inet, kind: .tcp)
        try client.setSecurity(kept.fd.rawValue, .default)
        let closed = try TestSocket.make(in: ns.namespace, family: .inet, kind: .udp)
        try client.setSecurity(closed.fd.rawValue, .default)
        try closed.bind(.any(.inet), port: 0)
        XCTAssertEqual(engine.endpointCount, 2)
        // The first sweep looks at every socket once; from then on the notifications are trusted.
        let settled = Date().addingTimeInterval(3)
        while Date() < settled, !sockets.reportsEveryDestruction { usleep(10_000) }
        XCTAssertTrue(sockets.reportsEveryDestruction)
        let looksBefore = sockets.fullLooks

        let cookie = try XCTUnwrap(SocketInspector.cookie(of: closed.fd.rawValue))
        let closedAt = ContinuousClock.now
        closed.close()
        var released: Duration?
        let deadline = Date().addingTimeInterval(5)
        while Date() < deadline {
            if engine.endpoint(cookie: cookie) == nil {
                released = ContinuousClock.now - closedAt
                break
            }
            usleep(5_000)
        }
        print(
            "DaemonSockets: a closed socket released \(released.map { "\($0)" } ?? "never") after close (grace 200 ms)")
        let bound = try XCTUnwrap(released, "released")
        XCTAssertLessThan(bound, .seconds(3), "released within the grace period and a sweep tick or two")
        // Three more seconds with a socket open: no look at every socket (the sweep ticks only closing ones).
        usleep(3_000_000)
        XCTAssertEqual(sockets.fullLooks, looksBefore, "no per-second look at the namespace's sockets")
        print(
            "DaemonSockets: \(sockets.fullLooks) looks at every socket, \(sockets.roleLooks) role-watch looks "
                + "(listeners and UDP sockets only) in about 4 s with one undetermined TCP socket")
        XCTAssertNotNil(engine.endpoint(kept.fd.rawValue), "the open socket stays")
        client.release(kept.fd.rawValue)
        kept.close()
    }

    /// A client's listener closed while a connection it accepted is open and was never queried (the daemon has
    /// never seen that socket): the daemon finds the connection in the kernel's tables and adopts it, so the
    /// listener's reqid, which the connection's inherited policies carry, stays held until it closes too.
    func testAClientsClosedListenerLeavesItsUnqueriedConnectionsTheirReqid() throws {
        try requireTier(.hostKernel)
        let bed = try DaemonInProcess(prefix: "kdacc")
        defer { bed.close() }
        let (ns, engine, client) = (bed.ns, bed.engine, bed.client)

        let listener = try TestSocket.make(in: ns.namespace, family: .inet, kind: .tcp)
        try client.setSecurity(listener.fd.rawValue, SocketSecuritySettings(flags: .allowInsecure))
        try listener.bind("127.0.0.1", port: 0)
        try listener.listen()
        let listenerCookie = try XCTUnwrap(SocketInspector.cookie(of: listener.fd.rawValue))
        let reqid = try XCTUnwrap(engine.endpoint(cookie: listenerCookie)?.reqid)
        let responding = Date().addingTimeInterval(3)
        while Date() < responding, engine.endpoint(cookie: listenerCookie)?.role.isResponder != true { usleep(10_000) }
        XCTAssertEqual(engine.endpoint(cookie: listenerCookie)?.role.isResponder, true, "the role watch saw it listen")

        let peer = try TestSocket.make(in: ns.namespace, family: .inet, kind: .tcp)
        peer.setTimeouts(5)
        _ = try peer.connect("127.0.0.1", port: listener.localPort)
        let accepted = try listener.accept(timeout: 5)
        let acceptedCookie = try XCTUnwrap(SocketInspector.cookie(of: accepted.fd.rawValue))
        XCTAssertNil(engine.endpoint(cookie: acceptedCookie), "never queried: the daemon has not seen it")

        client.release(listener.fd.rawValue)
        listener.close()
        let adopted = try XCTUnwrap(engine.endpoint(cookie: acceptedCookie), "adopted from the kernel's tables")
        XCTAssertEqual(adopted.role, .accepted)
        XCTAssertEqual(adopted.reqid, reqid)
        XCTAssertTrue(engine.holdsReqid(reqid), "the reqid its policies carry stays held")
        XCTAssertNil(engine.endpoint(cookie: listenerCookie), "the listener itself is released")

        accepted.close()
        peer.close()
        // The endpoint goes first; a sweep's batch gives the reqid back once its keying releases are made.
        let deadline = Date().addingTimeInterval(5)
        while Date() < deadline, engine.endpoint(cookie: acceptedCookie) != nil || engine.holdsReqid(reqid) {
            usleep(10_000)
        }
        XCTAssertNil(engine.endpoint(cookie: acceptedCookie), "released once the kernel destroyed it")
        XCTAssertFalse(engine.holdsReqid(reqid), "and the reqid with it")
    }
}

/// A keying daemon (its engine with no keying peers, a 200-ms close grace) and one client in this test process, in
/// a namespace of the test's own.
final class DaemonInProcess {
    let ns: TestNamespace
    let engine: SecureSocketEngine
    let sockets: DaemonSockets
    let daemon: KeyingDaemon
    let client: KeyingDaemonClient
    private let reqids: String

    init(prefix: String) throws {
        let ns = try TestNamespace(prefix: prefix)
        self.ns = ns
        let reqids = FileManager.default.temporaryDirectory.appendingPathComponent("kd-\(UUID().uuidString)").path
        self.reqids = reqids
        // Whatever was made before a failure goes with it (no namespace is left behind).
        var made = false
        defer {
            if !made {
                ns.remove()
                try? FileManager.default.removeItem(atPath: reqids)
            }
        }
        let name = "wss-test-keyd-\(UUID().uuidString.prefix(8))"
        let logger = Logger(label: "test.keyd")
        sockets = try DaemonSockets(namespace: ns.namespace)
        var configuration = SecureSocketEngine.Configuration(
            negotiationTimeout: .seconds(1), keying: try StaticKeyBackend(peers: [], namespace: ns.namespace),
            reqidDirectory: reqids, namespace: ns.namespace, closeGrace: .milliseconds(200))
        configuration.clientSockets = sockets
        engine = try SecureSocketEngine(configuration)
        let listener = try ns.namespace.perform { try ControlChannel.listen(name: name) }
        daemon = try KeyingDaemon(
            engine: engine, listener: listener, admission: ClientAdmission(clientUsers: []), logger: logger)
        sockets.attach(daemon)
        let daemon = self.daemon
        try Threads.detach { daemon.acceptClients() }
        do {
            client = try ns.namespace.perform { try KeyingDaemonClient(name: name, identityMap: nil, logger: logger) }
        } catch {
            daemon.stop()
            sockets.stop()
            engine.shutdown()
            throw error
        }
        made = true
    }

    func close() {
        daemon.stop()
        sockets.stop()
        engine.shutdown()
        ns.remove()
        try? FileManager.default.removeItem(atPath: reqids)
    }
}
