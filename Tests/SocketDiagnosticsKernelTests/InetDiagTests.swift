import Foundation
import Glibc
import IPAddressing
import NetnsTestSupport
import SocketDiagnostics
import TierTesting
import XCTest
import XFRM

/// Tier 2: dumps and lookups against the host kernel's inet_diag, each test in a fresh namespace; the sockets are
/// real ones the test holds, compared with what `SO_COOKIE`, `getsockname`, `getpeername` and `fstat` say.
final class InetDiagTests: XCTestCase {
    var ns: TestNamespace!
    var diagnostics: SocketDiagnostics!

    override func setUpWithError() throws {
        try requireTier(.hostKernel)
        ns = try TestNamespace(prefix: "sdiag")
        diagnostics = try SocketDiagnostics(namespace: ns.namespace)
    }

    override func tearDown() {
        diagnostics = nil
        if let ns {
            let name = ns.name
            ns.remove()
            let list = (try? Command.run(["ip", "netns", "list"]).output) ?? ""
            XCTAssertFalse(list.contains(name), "namespace \(name) left behind")
        }
        ns = nil
    }

    func listener(_ family: IPAddressFamily, _ address: IPAddress) throws -> TestSocket {
        let socket = try TestSocket.make(in: ns.namespace, family: family, kind: .tcp)
        try socket.bind(address, port: 0)
        try socket.listen()
        return socket
    }

    func testListeningSocketIsFoundByItsCookie() throws {
        let socket = try listener(.inet, "127.0.0.1")
        let found = try XCTUnwrap(try diagnostics.socket(cookie: socket.cookie, transport: .tcp, family: .inet))
        XCTAssertEqual(found.cookie, socket.cookie, "the dump's idiag_cookie words are SO_COOKIE")
        XCTAssertEqual(found.state, .listen)
        XCTAssertTrue(found.isListening)
        XCTAssertFalse(found.isConnected)
        XCTAssertFalse(found.isOrphan)
        XCTAssertEqual(found.local, IPEndpoint(address: "127.0.0.1", port: socket.localPort))
        XCTAssertEqual(found.remote, IPEndpoint(address: "0.0.0.0", port: 0))
        XCTAssertEqual(found.inode, socket.inode, "the inode fstat gives the descriptor")
        XCTAssertEqual(found.uid, getuid())
        XCTAssertEqual(found.sendQueue, 16, "a listener reports its backlog limit as the send queue")

        // The kernel filters by state; the exact lookup finds the same socket by its tuple and cookie.
        XCTAssertEqual(try diagnostics.sockets(.tcp, family: .inet, states: [.listen]).map(\.cookie), [socket.cookie])
        XCTAssertEqual(try diagnostics.sockets(.tcp, family: .inet, states: [.established, .synSent]), [])
        XCTAssertEqual(try diagnostics.socket(matching: found), found)
        XCTAssertNil(
            try diagnostics.socket(cookie: socket.cookie, transport: .tcp, family: .inet6), "not in the IPv6 dump")
        XCTAssertNil(try diagnostics.socket(cookie: socket.cookie, transport: .udp, family: .inet), "not a UDP socket")

        socket.close()
        XCTAssertNil(try diagnostics.socket(cookie: found.cookie, transport: .tcp, family: .inet), "closed: gone")
        XCTAssertNil(try diagnostics.socket(matching: found), "the exact lookup says so too")
    }

    /// The kernel's exact lookup works from the tuple: the right cookie under another tuple finds nothing, and the
    /// right tuple with another cookie finds nothing either. Hence `socket(cookie:transport:family:)` is a dump.
    func testExactLookupNeedsTheTupleAndTheCookie() throws {
        let socket = try listener(.inet, "127.0.0.1")
        let found = try XCTUnwrap(try diagnostics.socket(cookie: socket.cookie, transport: .tcp, family: .inet))
        var cookieOnly = found
        cookieOnly.local = IPEndpoint(address: "0.0.0.0", port: 0)
        XCTAssertNil(try diagnostics.socket(matching: cookieOnly), "the cookie alone finds nothing")
        var otherCookie = found
        otherCookie.cookie &+= 1
        XCTAssertNil(try diagnostics.socket(matching: otherCookie), "the tuple with another cookie finds nothing")
        XCTAssertEqual(try diagnostics.socket(matching: found)?.cookie, socket.cookie)

        // UDP answers a wrong cookie with ESTALE rather than ENOENT: gone all the same.
        let udp = try TestSocket.make(in: ns.namespace, family: .inet, kind: .udp)
        try udp.bind("127.0.0.1", port: 0)
        var datagram = try XCTUnwrap(try diagnostics.socket(cookie: udp.cookie, transport: .udp, family: .inet))
        XCTAssertEqual(try diagnostics.socket(matching: datagram)?.cookie, udp.cookie)
        datagram.cookie &+= 1
        XCTAssertNil(try diagnostics.socket(matching: datagram))
    }

    func testConnectedPairShowsBothEndsWithEachOthersAddresses() throws {
        let server = try listener(.inet, "127.0.0.1")
        let client = try TestSocket.make(in: ns.namespace, family: .inet, kind: .tcp)
        try client.connect("127.0.0.1", port: server.localPort)
        let accepted = try server.accept(timeout: 5)

        let established = try diagnostics.sockets(.tcp, family: .inet, states: [.established])
        XCTAssertEqual(Set(established.map(\.cookie)), [client.cookie, accepted.cookie])
        let clientEnd = try XCTUnwrap(established.first { $0.cookie == client.cookie })
        let serverEnd = try XCTUnwrap(established.first { $0.cookie == accepted.cookie })
        XCTAssertEqual(clientEnd.local, client.localEndpoint)
        XCTAssertEqual(clientEnd.remote, client.peerEndpoint)
        XCTAssertEqual(serverEnd.local, IPEndpoint(address: "127.0.0.1", port: server.localPort))
        XCTAssertEqual(serverEnd.remote, clientEnd.local, "each end's remote is the other's local")
        XCTAssertEqual(clientEnd.remote, serverEnd.local)
        XCTAssertTrue(clientEnd.isConnected && serverEnd.isConnected)
        XCTAssertEqual(clientEnd.inode, client.inode)
        XCTAssertEqual(serverEnd.inode, accepted.inode)
        XCTAssertEqual(try diagnostics.socket(matching: serverEnd)?.cookie, accepted.cookie, "exact lookup, TCP")

        // Bytes the server has not read are its receive queue.
        try client.send([UInt8](repeating: 7, count: 1000))
        let queued = try eventually(.seconds(2)) {
            try diagnostics.socket(matching: serverEnd).flatMap { $0.receiveQueue == 1000 ? $0 : nil }
        }
        XCTAssertNotNil(queued, "the server's receive queue reaches the 1000 unread bytes")

        // The server reads it all (closing with unread data would reset the connection instead).
        XCTAssertEqual(try accepted.receiveExactly(1000, timeout: 2).count, 1000)
        XCTAssertEqual(try diagnostics.socket(matching: serverEnd)?.receiveQueue, 0)

        // The client closes first, then the server: the client's connection waits in TIME_WAIT, under its cookie.
        client.close()
        accepted.close()
        let timeWait = eventually(.seconds(2)) {
            (try? diagnostics.socket(cookie: clientEnd.cookie, transport: .tcp, family: .inet))
                .flatMap { $0?.state == .timeWait ? $0 : nil }
        }
        XCTAssertNotNil(timeWait, "the time-wait socket keeps the closed socket's cookie")
        XCTAssertEqual(timeWait?.inode, 0)
        XCTAssertEqual(timeWait?.isOrphan, false, "time-wait is not an orphan")
        XCTAssertEqual(timeWait?.local, clientEnd.local)
    }

    func testUDPSocketBoundThenConnected() throws {
        let socket = try TestSocket.make(in: ns.namespace, family: .inet, kind: .udp)
        try socket.bind("127.0.0.1", port: 0)
        let bound = try XCTUnwrap(try diagnostics.socket(cookie: socket.cookie, transport: .udp, family: .inet))
        XCTAssertEqual(bound.state, .close, "an unconnected UDP socket reports CLOSE")
        XCTAssertFalse(bound.isConnected)
        XCTAssertFalse(bound.isListening)
        XCTAssertEqual(bound.local, IPEndpoint(address: "127.0.0.1", port: socket.localPort))
        XCTAssertEqual(bound.remote, IPEndpoint(address: "0.0.0.0", port: 0))
        XCTAssertEqual(bound.inode, socket.inode)
        XCTAssertEqual(try diagnostics.socket(matching: bound)?.cookie, socket.cookie, "exact lookup, UDP unconnected")
        XCTAssertEqual(try diagnostics.sockets(.udp, family: .inet, states: [.established]), [])

        // A datagram waiting to be read shows in the receive queue (as the memory it takes).
        let sender = try TestSocket.make(in: ns.namespace, family: .inet, kind: .udp)
        XCTAssertNil(sender.sendTo([UInt8](repeating: 1, count: 100), "127.0.0.1", port: socket.localPort))
        let queued = try eventually(.seconds(2)) {
            try diagnostics.socket(matching: bound).flatMap { $0.receiveQueue >= 100 ? $0 : nil }
        }
        XCTAssertNotNil(queued, "a 100-byte datagram is queued")

        XCTAssertNil(socket.connectOnce("127.0.0.1", port: sender.localPort))
        let connected = try XCTUnwrap(try diagnostics.socket(cookie: socket.cookie, transport: .udp, family: .inet))
        XCTAssertEqual(connected.state, .established, "a connected UDP socket reports ESTABLISHED")
        XCTAssertTrue(connected.isConnected)
        XCTAssertEqual(connected.remote, IPEndpoint(address: "127.0.0.1", port: sender.localPort))
        XCTAssertEqual(try diagnostics.socket(matching: connected)?.cookie, socket.cookie, "exact lookup, connected")
        XCTAssertEqual(
            try diagnostics.sockets(.udp, family: .inet, states: [.established]).map(\.cookie), [socket.cookie])
    }

    func testIPv6Sockets() throws {
        let server = try listener(.inet6, "::1")
        let client = try TestSocket.make(in: ns.namespace, family: .inet6, kind: .tcp)
        try client.connect("::1", port: server.localPort)
        let accepted = try server.accept(timeout: 5)
        let udp = try TestSocket.make(in: ns.namespace, family: .inet6, kind: .udp)
        try udp.bind("::1", port: 0)

        let tcp = try diagnostics.sockets(.tcp, family: .inet6)
        XCTAssertEqual(Set(tcp.map(\.cookie)), [server.cookie, client.cookie, accepted.cookie])
        XCTAssertEqual(Set(tcp.map(\.family)), [.inet6])
        let listening = try XCTUnwrap(tcp.first { $0.cookie == server.cookie })
        XCTAssertEqual(listening.local, IPEndpoint(address: "::1", port: server.localPort))
        XCTAssertEqual(listening.state, .listen)
        let clientEnd = try XCTUnwrap(tcp.first { $0.cookie == client.cookie })
        XCTAssertEqual(clientEnd.state, .established)
        XCTAssertEqual(clientEnd.local, client.localEndpoint)
        XCTAssertEqual(clientEnd.remote, IPEndpoint(address: "::1", port: server.localPort))
        XCTAssertEqual(try diagnostics.socket(matching: clientEnd)?.cookie, client.cookie)

        let datagram = try XCTUnwrap(try diagnostics.socket(cookie: udp.cookie, transport: .udp, family: .inet6))
        XCTAssertEqual(datagram.local, IPEndpoint(address: "::1", port: udp.localPort))
        XCTAssertEqual(datagram.family, .inet6)
        XCTAssertEqual(datagram.state, .close)
        XCTAssertEqual(try diagnostics.socket(matching: datagram)?.cookie, udp.cookie)

        XCTAssertEqual(try diagnostics.sockets(.tcp, family: .inet), [], "IPv6 sockets are not in the IPv4 dump")
        XCTAssertEqual(try diagnostics.sockets(.udp, family: .inet), [])
    }

    func testSocketsOfAnotherNamespaceAreNeverReported() throws {
        let other = try TestNamespace(prefix: "sdiago")
        defer { other.remove() }
        let elsewhere = try TestSocket.make(in: other.namespace, family: .inet, kind: .tcp)
        try elsewhere.bind("127.0.0.1", port: 0)
        try elsewhere.listen()
        let elsewhereUDP = try TestSocket.make(in: other.namespace, family: .inet6, kind: .udp)
        try elsewhereUDP.bind("::1", port: 0)
        let here = try listener(.inet, "127.0.0.1")

        XCTAssertEqual(try diagnostics.sockets(.tcp, family: .inet).map(\.cookie), [here.cookie])
        XCTAssertEqual(try diagnostics.sockets(.udp, family: .inet6), [])
        XCTAssertNil(try diagnostics.socket(cookie: elsewhere.cookie, transport: .tcp, family: .inet))
        let fromThere = try SocketDiagnostics(namespace: other.namespace)
        let record = try XCTUnwrap(try fromThere.socket(cookie: elsewhere.cookie, transport: .tcp, family: .inet))
        XCTAssertNil(try diagnostics.socket(matching: record), "nor by the exact lookup with its tuple")
        XCTAssertEqual(try fromThere.sockets(.udp, family: .inet6).map(\.cookie), [elsewhereUDP.cookie])
    }

    func testOtherFamiliesAreRefused() throws {
        XCTAssertThrowsError(try diagnostics.sockets(.tcp, family: .unspecified)) {
            XCTAssertEqual(($0 as? SocketDiagnosticsError)?.code, .invalidArgument)
        }
    }
}
