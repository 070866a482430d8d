import ALE
import Foundation
import Glibc
import IPAddressing
import NetnsTestSupport
import SecureSocket
import TierTesting
import XCTest

/// Tier 2: another local user cannot share a secured UDP socket's port (two UDP sockets with `SO_REUSEADDR` may
/// bind one address and port whoever owns them, and the one bound last receives the datagrams the kernel
/// decrypted).
extension SecureSocketEngineTests {
    /// Binds a UDP socket with `SO_REUSEADDR` to `port` as uid `nobody` in namespace A; returns whether it bound.
    func nobodyBinds(port: UInt16, family: IPAddressFamily = .inet) throws -> Bool {
        let address = family == .inet6 ? "::" : "0.0.0.0"
        let af = family == .inet6 ? "AF_INET6" : "AF_INET"
        let script = """
            import socket, sys
            s = socket.socket(socket.\(af), socket.SOCK_DGRAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(('\(address)', \(port)))
            except OSError as e:
                print('refused', e.errno); sys.exit(3)
            print('bound')
            """
        let result = try Command.run(
            [
                "ip", "netns", "exec", pair.a.name, "setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                "/usr/bin/python3", "-c", script,
            ], timeout: 10, check: false)
        XCTAssertTrue(result.output.contains("bound") || result.output.contains("refused"), result.output)
        return result.status == 0
    }

    func testASecuredUDPSocketsPortIsNotSharedWithAnotherUser() throws {
        // SO_REUSEADDR set before WSASetSocketSecurity is cleared by it.
        let early = try TestSocket.make(in: pair.a.namespace, family: .inet, kind: .udp)
        var one: CInt = 1
        setsockopt(early.fd.rawValue, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<CInt>.size))
        try engine.setSecurity(early.fd.rawValue)
        XCTAssertFalse(SocketHardening.reusesAddress(early.fd.rawValue), "cleared by WSASetSocketSecurity")
        try early.bind(.any(.inet), port: 0)
        XCTAssertFalse(try nobodyBinds(port: early.localPort), "nobody cannot bind the secured socket's port")

        // Set again after WSASetSocketSecurity and before bind: the socket is refused when its role settles, the
        // option is cleared (no later bind shares the port), and the query never reports it secured.
        let late = try TestSocket.make(in: pair.a.namespace, family: .inet, kind: .udp)
        try engine.setSecurity(late.fd.rawValue)
        setsockopt(late.fd.rawValue, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<CInt>.size))
        try late.bind(.any(.inet), port: 0)
        let deadline = Date().addingTimeInterval(3)
        var state = engine.endpoint(late.fd.rawValue)?.state
        while Date() < deadline {
            state = engine.endpoint(late.fd.rawValue)?.state
            if case .refused = state { break }
            usleep(10_000)
        }
        guard case .refused = state else {
            return XCTFail("refused once SO_REUSEADDR is seen: \(String(describing: state))")
        }
        XCTAssertFalse(SocketHardening.reusesAddress(late.fd.rawValue), "cleared again")
        XCTAssertFalse(try nobodyBinds(port: late.localPort), "nobody cannot bind it any more")
        let view = try engine.query(
            late.fd.rawValue, SocketSecurityQueryTemplate(peerAddress: IPEndpoint(address: "10.9.9.9", port: 9)))
        XCTAssertFalse(view.flags.contains(.secured), "a refused socket is never reported secured")
        XCTAssertNotEqual(view.negotiationError, 0)

        // Setting it on a settled socket is caught by the query too.
        setsockopt(early.fd.rawValue, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<CInt>.size))
        let earlyView = try engine.query(
            early.fd.rawValue, SocketSecurityQueryTemplate(peerAddress: IPEndpoint(address: "10.9.9.9", port: 9)))
        XCTAssertNotEqual(earlyView.negotiationError, 0)
        XCTAssertFalse(SocketHardening.reusesAddress(early.fd.rawValue))

        // Set before WSAConnect: the connect is refused (WSAEACCES), the option cleared, nothing negotiated.
        let connecting = try TestSocket.make(in: pair.a.namespace, family: .inet, kind: .udp)
        try engine.setSecurity(connecting.fd.rawValue)
        setsockopt(connecting.fd.rawValue, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<CInt>.size))
        XCTAssertThrowsError(
            try engine.connect(connecting.fd.rawValue, to: IPEndpoint(address: pair.addressB4, port: 9))
        ) { error in
            XCTAssertEqual((error as? SecureSocketError)?.code, .accessDenied, "\(error)")
        }
        XCTAssertFalse(SocketHardening.reusesAddress(connecting.fd.rawValue), "cleared by the refused connect")
        guard case .refused = engine.endpoint(connecting.fd.rawValue)?.state else {
            return XCTFail("refused: \(String(describing: engine.endpoint(connecting.fd.rawValue)?.state))")
        }
        engine.release(connecting.fd.rawValue)
        connecting.close()
        for socket in [early, late] {
            engine.release(socket.fd.rawValue)
            socket.close()
        }
    }
}
