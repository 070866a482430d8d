import CNetlink
import IPAddressing
import XCTest

@testable import SocketDiagnostics

/// Tier 1: the requests against the offsets of the kernel's C structs (<linux/inet_diag.h>), byte by byte.
final class WireLayoutTests: XCTestCase {
    func testStructSizesAreTheKernels() {
        XCTAssertEqual(MemoryLayout<nlmsghdr>.size, 16)
        XCTAssertEqual(MemoryLayout<inet_diag_sockid>.size, 48)
        XCTAssertEqual(MemoryLayout<inet_diag_req_v2>.size, 56)
        XCTAssertEqual(MemoryLayout<inet_diag_msg>.size, 72)
        XCTAssertEqual(MemoryLayout<inet_diag_req_v2>.offset(of: \.idiag_states), 4)
        XCTAssertEqual(MemoryLayout<inet_diag_req_v2>.offset(of: \.id), 8)
        XCTAssertEqual(MemoryLayout<inet_diag_sockid>.offset(of: \.idiag_src), 4)
        XCTAssertEqual(MemoryLayout<inet_diag_sockid>.offset(of: \.idiag_dst), 20)
        XCTAssertEqual(MemoryLayout<inet_diag_sockid>.offset(of: \.idiag_if), 36)
        XCTAssertEqual(MemoryLayout<inet_diag_sockid>.offset(of: \.idiag_cookie), 40)
        XCTAssertEqual(MemoryLayout<inet_diag_msg>.offset(of: \.idiag_rqueue), 56)
        XCTAssertEqual(MemoryLayout<inet_diag_msg>.offset(of: \.idiag_inode), 68)
        XCTAssertEqual(NETLINK_SOCK_DIAG, 4)
        XCTAssertEqual(SOCK_DIAG_BY_FAMILY, 20)
        XCTAssertEqual(_INET_DIAG_NOCOOKIE, 0xffff_ffff)
        XCTAssertEqual(
            [
                _SKNLGRP_INET_TCP_DESTROY, _SKNLGRP_INET_UDP_DESTROY, _SKNLGRP_INET6_TCP_DESTROY,
                _SKNLGRP_INET6_UDP_DESTROY,
            ],
            [1, 2, 3, 4])
    }

    func testDumpRequestBytes() {
        let bytes = InetDiagRequest.dump(
            transport: .udp, family: .inet6, states: TCPState.mask([.listen, .established]), sequence: 0x0102_0304)
        XCTAssertEqual(bytes.count, 72)
        XCTAssertEqual(Array(bytes[0..<4]), [72, 0, 0, 0], "nlmsg_len")
        XCTAssertEqual(Array(bytes[4..<6]), [20, 0], "SOCK_DIAG_BY_FAMILY")
        XCTAssertEqual(Array(bytes[6..<8]), [0x01, 0x03], "NLM_F_REQUEST | NLM_F_DUMP")
        XCTAssertEqual(Array(bytes[8..<12]), [4, 3, 2, 1], "sequence")
        XCTAssertEqual(bytes[16], 10, "sdiag_family AF_INET6")
        XCTAssertEqual(bytes[17], 17, "sdiag_protocol IPPROTO_UDP")
        XCTAssertEqual(Array(bytes[20..<24]), [0x02, 0x04, 0, 0], "idiag_states: bits 1 and 10")
        XCTAssertEqual(Array(bytes[24..<64]), [UInt8](repeating: 0, count: 40), "no ports, addresses, interface")
        XCTAssertEqual(Array(bytes[64..<72]), [UInt8](repeating: 0xff, count: 8), "INET_DIAG_NOCOOKIE twice")
    }

    func record(_ transport: InetTransport) -> InetSocketRecord {
        InetSocketRecord(
            cookie: 0x0123_4567_89ab_cdef, family: .inet, transport: transport, state: .established,
            local: IPEndpoint(address: "10.0.0.1", port: 0x1234), remote: IPEndpoint(address: "10.0.0.2", port: 80),
            interfaceIndex: 3, uid: 0, inode: 9, receiveQueue: 0, sendQueue: 0)
    }

    func testExactTCPRequestPutsTheSocketsOwnAddressFirst() {
        let bytes = InetDiagRequest.exact(record(.tcp), sequence: 1)
        XCTAssertEqual(Array(bytes[6..<8]), [0x01, 0x00], "NLM_F_REQUEST only: the exact lookup")
        XCTAssertEqual(bytes[16], 2)
        XCTAssertEqual(bytes[17], 6)
        XCTAssertEqual(Array(bytes[24..<28]), [0x12, 0x34, 0, 80], "sport then dport, network order")
        XCTAssertEqual(Array(bytes[28..<32]), [10, 0, 0, 1], "idiag_src: local")
        XCTAssertEqual(Array(bytes[44..<48]), [10, 0, 0, 2], "idiag_dst: remote")
        XCTAssertEqual(Array(bytes[60..<64]), [3, 0, 0, 0], "idiag_if")
        XCTAssertEqual(
            Array(bytes[64..<72]), [0xef, 0xcd, 0xab, 0x89, 0x67, 0x45, 0x23, 0x01], "cookie low word first")
    }

    func testExactUDPRequestSwapsSourceAndDestination() {
        let bytes = InetDiagRequest.exact(record(.udp), sequence: 1)
        XCTAssertEqual(bytes[17], 17)
        XCTAssertEqual(Array(bytes[24..<28]), [0, 80, 0x12, 0x34], "sport is the peer's, dport the socket's")
        XCTAssertEqual(Array(bytes[28..<32]), [10, 0, 0, 2], "idiag_src: remote")
        XCTAssertEqual(Array(bytes[44..<48]), [10, 0, 0, 1], "idiag_dst: local")
    }

    func testStateMask() {
        XCTAssertEqual(TCPState.mask([.listen]), 1 << 10)
        XCTAssertEqual(TCPState.mask(TCPState.all), 0x3ffe, "states 1 through 13")
        XCTAssertEqual(TCPState.mask([TCPState(rawValue: 40)]), 0, "a state past the mask's 32 bits asks for nothing")
        XCTAssertEqual(TCPState.listen.description, "LISTEN")
        XCTAssertEqual(TCPState(rawValue: 99).description, "state 99")
    }
}
