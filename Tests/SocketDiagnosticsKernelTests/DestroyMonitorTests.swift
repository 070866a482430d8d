import CThreadCredentials
import Foundation
import Glibc
import IPAddressing
import NetnsTestSupport
import SocketDiagnostics
import SystemSupport
import TierTesting
import XCTest
import XFRM

/// Tier 2: the destroy groups on the host kernel, each test in a fresh namespace: sockets the test closes are
/// reported with their cookies within a second, orphans are seen before and after, and the monitor stops cleanly.
final class DestroyMonitorTests: XCTestCase {
    var ns: TestNamespace!
    var diagnostics: SocketDiagnostics!

    override func setUpWithError() throws {
        try requireTier(.hostKernel)
        ns = try TestNamespace(prefix: "sdmon")
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

    func monitor(_ collector: EventCollector, in namespace: NetworkNamespace? = nil) throws -> SocketDestroyMonitor {
        try SocketDestroyMonitor(namespace: namespace ?? ns.namespace) { collector.append($0) }
    }

    func testClosedTCPAndUDPSocketsAreReportedWithinOneSecond() throws {
        let events = EventCollector()
        let monitor = try monitor(events)
        defer { monitor.stop() }
        for (family, address) in [(IPAddressFamily.inet, "127.0.0.1" as IPAddress), (.inet6, "::1")] {
            let tcp = try TestSocket.make(in: ns.namespace, family: family, kind: .tcp)
            try tcp.bind(address, port: 0)
            try tcp.listen()
            let udp = try TestSocket.make(in: ns.namespace, family: family, kind: .udp)
            try udp.bind(address, port: 0)
            let (tcpCookie, tcpPort, udpCookie, udpPort) = (tcp.cookie, tcp.localPort, udp.cookie, udp.localPort)
            XCTAssertFalse(events.hasDestroyed(tcpCookie) || events.hasDestroyed(udpCookie), "nothing before close")

            tcp.close()
            let tcpRecord = try XCTUnwrap(events.destroyed(tcpCookie), "\(family) TCP listener's destroy event")
            XCTAssertEqual(tcpRecord.transport, .tcp)
            XCTAssertEqual(tcpRecord.family, family)
            XCTAssertEqual(tcpRecord.local, IPEndpoint(address: address, port: tcpPort))
            XCTAssertEqual(tcpRecord.state, .close)
            XCTAssertEqual(tcpRecord.inode, 0)

            udp.close()
            let udpRecord = try XCTUnwrap(events.destroyed(udpCookie), "\(family) UDP socket's destroy event")
            XCTAssertEqual(udpRecord.transport, .udp)
            XCTAssertEqual(udpRecord.family, family)
            XCTAssertEqual(udpRecord.local, IPEndpoint(address: address, port: udpPort))
            XCTAssertEqual(udpRecord.state, .close)
            XCTAssertEqual(udpRecord.sendQueue, 0, "the kernel's 0 - 1 is read as nothing queued")
        }
        XCTAssertTrue(events.all.allSatisfy { if case .destroyed = $0 { true } else { false } }, "\(events.all)")
    }

    /// A TCP client writes more than the peer will take (the peer has a small receive buffer and never reads), then
    /// closes: the kernel keeps the connection as an orphan (inode 0) with its send queue, and destroys it when the
    /// peer closes with unread data (a reset).
    func testOrphanedTCPSocketIsSeenAndItsEndReported() throws {
        let events = EventCollector()
        let monitor = try monitor(events)
        defer { monitor.stop() }
        let server = try TestSocket.make(in: ns.namespace, family: .inet, kind: .tcp)
        var small: CInt = 4096
        setsockopt(server.fd.rawValue, SOL_SOCKET, SO_RCVBUF, &small, socklen_t(MemoryLayout<CInt>.size))
        try server.bind("127.0.0.1", port: 0)
        try server.listen()
        let client = try TestSocket.make(in: ns.namespace, family: .inet, kind: .tcp)
        try client.connect("127.0.0.1", port: server.localPort)
        let accepted = try server.accept(timeout: 5)
        let clientCookie = client.cookie

        // Write without blocking until the kernel takes no more (bounded: at most 64 MiB, 2 s).
        _ = fcntl(client.fd.rawValue, F_SETFL, fcntl(client.fd.rawValue, F_GETFL) | O_NONBLOCK)
        let chunk = [UInt8](repeating: 0x5a, count: 65536)
        var written = 0
        let deadline = Deadline(after: .seconds(2))
        while written < 64 << 20 && !deadline.hasPassed {
            let n = chunk.withUnsafeBytes { send(client.fd.rawValue, $0.baseAddress, $0.count, CInt(MSG_NOSIGNAL)) }
            if n > 0 {
                written += n
                continue
            }
            guard errno == EAGAIN else { return XCTFail("send: errno \(errno)") }
            break
        }
        XCTAssertGreaterThan(written, 0)

        client.close()
        let orphan = try XCTUnwrap(
            eventually(.seconds(1)) {
                (try? diagnostics.socket(cookie: clientCookie, transport: .tcp, family: .inet)).flatMap {
                    $0?.inode == 0 ? $0 : nil
                }
            }, "the closed client is still in the kernel, held by no process")
        XCTAssertTrue(orphan.isOrphan)
        XCTAssertEqual(orphan.state, .finWait1, "its FIN waits behind the unsent data")
        XCTAssertGreaterThan(orphan.sendQueue, 0, "what the peer has not acknowledged")
        XCTAssertLessThanOrEqual(Int(orphan.sendQueue), written)
        XCTAssertFalse(events.hasDestroyed(clientCookie), "an orphan is not destroyed")
        XCTAssertEqual(
            try diagnostics.sockets(.tcp, family: .inet, states: [.finWait1]).map(\.cookie), [clientCookie])

        // The peer closes without reading: it resets the connection, and the orphan is destroyed.
        let acceptedCookie = accepted.cookie
        accepted.close()
        let destroyed = try XCTUnwrap(events.destroyed(clientCookie), "the orphan's destroy event within 1 s")
        XCTAssertEqual(destroyed.state, .close)
        XCTAssertEqual(destroyed.local, orphan.local)
        XCTAssertEqual(destroyed.remote, orphan.remote)
        XCTAssertNotNil(events.destroyed(acceptedCookie), "and the peer's")
        XCTAssertNil(try diagnostics.socket(cookie: clientCookie, transport: .tcp, family: .inet), "gone from dumps")
    }

    /// A connection closed by both ends: both sockets are destroyed (events), while the connection goes on in
    /// TIME_WAIT under the first closer's cookie, with no further event.
    func testConnectionIntoTimeWait() throws {
        let events = EventCollector()
        let monitor = try monitor(events)
        defer { monitor.stop() }
        let server = try TestSocket.make(in: ns.namespace, family: .inet6, kind: .tcp)
        try server.bind("::1", port: 0)
        try server.listen()
        let client = try TestSocket.make(in: ns.namespace, family: .inet6, kind: .tcp)
        try client.connect("::1", port: server.localPort)
        let accepted = try server.accept(timeout: 5)
        let (clientCookie, acceptedCookie) = (client.cookie, accepted.cookie)
        client.close()
        accepted.close()
        XCTAssertNotNil(events.destroyed(clientCookie), "the first closer's socket is destroyed")
        XCTAssertNotNil(events.destroyed(acceptedCookie), "and the second's")
        XCTAssertEqual(
            try diagnostics.socket(cookie: clientCookie, transport: .tcp, family: .inet6)?.state, .timeWait,
            "its connection waits in TIME_WAIT under the same cookie")
    }

    func testAMonitorSeesOnlyItsOwnNamespace() throws {
        let other = try TestNamespace(prefix: "sdmono")
        defer { other.remove() }
        let here = EventCollector()
        let there = EventCollector()
        let hereMonitor = try monitor(here)
        defer { hereMonitor.stop() }
        let thereMonitor = try monitor(there, in: other.namespace)
        defer { thereMonitor.stop() }

        let tcp = try TestSocket.make(in: other.namespace, family: .inet, kind: .tcp)
        try tcp.bind("127.0.0.1", port: 0)
        try tcp.listen()
        let udp = try TestSocket.make(in: other.namespace, family: .inet6, kind: .udp)
        try udp.bind("::1", port: 0)
        let (tcpCookie, udpCookie) = (tcp.cookie, udp.cookie)
        tcp.close()
        udp.close()
        XCTAssertNotNil(there.destroyed(tcpCookie), "the other namespace's monitor sees its TCP socket go")
        XCTAssertNotNil(there.destroyed(udpCookie), "and its UDP socket")
        // Both events were sent by now (the other monitor has them); nothing reached this namespace's monitor.
        usleep(200_000)
        XCTAssertEqual(here.all, [], "a socket in another namespace is never reported")
    }

    /// A handler that takes its time and a receive buffer that holds a few events: the kernel drops the rest and the
    /// monitor says so, then goes on.
    func testOverrunIsReportedAsEventsLostAndTheMonitorGoesOn() throws {
        let events = EventCollector()
        let monitor = try SocketDestroyMonitor(namespace: ns.namespace, receiveBufferBytes: 1) { event in
            events.append(event)
            if events.all.count == 1 { usleep(500_000) } // the first event holds the thread
        }
        defer { monitor.stop() }
        let count = 300
        let descriptors: [CInt] = try ns.namespace.perform {
            (0..<count).map { _ in socket(AF_INET, CInt(SOCK_DGRAM.rawValue) | CInt(SOCK_CLOEXEC.rawValue), 0) }
        }
        XCTAssertTrue(descriptors.allSatisfy { $0 >= 0 })
        let trigger = try TestSocket.make(in: ns.namespace, family: .inet, kind: .udp)
        let triggerCookie = trigger.cookie
        trigger.close()
        XCTAssertNotNil(events.destroyed(triggerCookie), "the first event arrives and holds the handler")
        for fd in descriptors { close(fd) }
        let lost = events.wait(.seconds(3)) { if case .eventsLost = $0 { true } else { nil } }
        XCTAssertNotNil(lost, "the overrun is an event of its own")
        let delivered = events.all.filter { if case .destroyed = $0 { true } else { false } }.count
        XCTAssertLessThan(delivered, count + 1, "some events were lost")

        // Goes on: a socket closed later is reported. (The backlog of the burst may still fill the tiny buffer on a
        // busy host and drop the next event too, so a few are tried, each given a second.)
        var seen = false
        for _ in 0..<10 where !seen {
            let after = try TestSocket.make(in: ns.namespace, family: .inet, kind: .tcp)
            let afterCookie = after.cookie
            after.close()
            seen = events.destroyed(afterCookie, within: .seconds(1)) != nil
        }
        XCTAssertTrue(seen, "the monitor goes on after an overrun")
    }

    func testStopIsQuickAndLeavesNoThreadOrDescriptor() throws {
        let descriptorsBefore = try openDescriptors()
        let threadsBefore = try threads()
        let events = EventCollector()
        var monitor: SocketDestroyMonitor? = try monitor(events)
        let started = try threads().subtracting(threadsBefore)
        XCTAssertEqual(started.count, 1, "one dedicated thread")
        XCTAssertEqual(try openDescriptors().count, descriptorsBefore.count + 3, "the netlink socket and a pipe")

        let clock = ContinuousClock()
        let elapsed = clock.measure { XCTAssertEqual(monitor?.stop(), true, "the thread ended") }
        XCTAssertLessThan(elapsed, .milliseconds(500), "the wake-up pipe ends the wait at once")
        XCTAssertEqual(monitor?.stop(), true, "stopping twice is harmless")
        monitor = nil
        XCTAssertEqual(try openDescriptors(), descriptorsBefore, "no descriptor left open")
        let gone = eventually(.seconds(1)) { (try? threads()).flatMap { $0.isDisjoint(with: started) ? true : nil } }
        XCTAssertNotNil(gone, "the thread has exited")

        let socket = try TestSocket.make(in: ns.namespace, family: .inet, kind: .udp)
        let cookie = socket.cookie
        socket.close()
        usleep(200_000)
        XCTAssertFalse(events.hasDestroyed(cookie), "no event after stop")
    }

    func testStopFromTheHandler() throws {
        final class Box: @unchecked Sendable { var monitor: SocketDestroyMonitor? }
        let box = Box()
        let events = EventCollector()
        let stopResult = EventCollector()
        box.monitor = try SocketDestroyMonitor(namespace: ns.namespace) { event in
            events.append(event)
            // On the monitor's own thread stop cannot wait for itself: it returns at once.
            stopResult.append(box.monitor?.stop() == false ? .eventsLost : .unreadable(.init(.timedOut, operation: "")))
        }
        let first = try TestSocket.make(in: ns.namespace, family: .inet, kind: .udp)
        let firstCookie = first.cookie
        first.close()
        XCTAssertNotNil(events.destroyed(firstCookie))
        XCTAssertEqual(stopResult.wait(.seconds(1)) { $0 }, .eventsLost, "stop() from the handler did not wait")
        let clock = ContinuousClock()
        let elapsed = clock.measure { XCTAssertEqual(box.monitor?.stop(), true) }
        XCTAssertLessThan(elapsed, .seconds(1))
        let second = try TestSocket.make(in: ns.namespace, family: .inet, kind: .udp)
        let secondCookie = second.cookie
        second.close()
        usleep(200_000)
        XCTAssertFalse(events.hasDestroyed(secondCookie), "nothing after the handler stopped the monitor")
        box.monitor = nil
    }

    /// The kernel lets any process join the destroy groups: a thread with uid 65534 and no capabilities joins and
    /// hears root's sockets go.
    func testJoiningNeedsNoPrivilege() throws {
        // A raw NETLINK_SOCK_DIAG socket joined to the four destroy groups by a thread that dropped to uid 65534
        // with no capabilities (the monitor itself is not made there: a thread started by a thread whose
        // credentials differ from the process's is refused by the impersonation start guard other tests install).
        let joined: Int32 = try ns.namespace.perform {
            guard ctc_setresuid(65534, 65534, 65534) == 0 else { fatalError("setresuid") }
            var effective: UInt64 = 1
            var permitted: UInt64 = 1
            var inheritable: UInt64 = 0
            guard ctc_capget(&effective, &permitted, &inheritable) == 0, effective == 0 else {
                fatalError("capabilities still effective: \(effective)")
            }
            let fd = Glibc.socket(AF_NETLINK, Int32(SOCK_RAW.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 4)
            guard fd >= 0 else { return -1 }
            // struct sockaddr_nl: family, pad, pid 0 (the kernel assigns one), groups: the four destroy groups
            // (SKNLGRP_INET_TCP_DESTROY ... SKNLGRP_INET6_UDP_DESTROY: bits 0-3).
            var address = [UInt8](repeating: 0, count: 12)
            address[0] = UInt8(AF_NETLINK)
            address[8] = 0x0F
            let bound = address.withUnsafeBytes {
                Glibc.bind(fd, $0.baseAddress!.assumingMemoryBound(to: sockaddr.self), 12)
            }
            guard bound == 0 else {
                Glibc.close(fd)
                return -2
            }
            return fd
        }
        XCTAssertGreaterThanOrEqual(joined, 0, "an unprivileged thread joins the destroy groups")
        guard joined >= 0 else { return }
        defer { Glibc.close(joined) }
        let socket = try TestSocket.make(in: ns.namespace, family: .inet, kind: .tcp)
        try socket.bind("127.0.0.1", port: 0)
        socket.close()
        var pfd = pollfd(fd: joined, events: Int16(POLLIN), revents: 0)
        XCTAssertEqual(poll(&pfd, 1, 1000), 1, "an unprivileged member hears a root socket's destruction")
    }

    func openDescriptors() throws -> Set<String> {
        Set(try FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd"))
    }

    func threads() throws -> Set<String> {
        Set(try FileManager.default.contentsOfDirectory(atPath: "/proc/self/task"))
    }
}
