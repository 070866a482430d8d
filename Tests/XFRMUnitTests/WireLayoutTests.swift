import CNetlink
import IPAddressing
import XCTest

@testable import XFRM

/// Tier 1: every encoding checked byte for byte against the kernel's C struct layout.
///
/// Expected bytes are written field by field at the offsets gcc reports for <linux/xfrm.h> on x86-64
/// (`offsetof`, listed next to each field), independently of how the encoder builds its structs.
final class WireLayoutTests: XCTestCase {
    /// A zeroed buffer with little-endian / big-endian field writers, the way a C programmer fills a struct.
    struct Bytes: Equatable, CustomStringConvertible {
        var raw: [UInt8]
        init(_ count: Int) { raw = [UInt8](repeating: 0, count: count) }
        init(raw: [UInt8]) { self.raw = raw }
        mutating func u8(_ offset: Int, _ value: UInt8) { raw[offset] = value }
        mutating func u16(_ offset: Int, _ value: UInt16) { put(offset, value.littleEndian) }
        mutating func be16(_ offset: Int, _ value: UInt16) { put(offset, value.bigEndian) }
        mutating func u32(_ offset: Int, _ value: UInt32) { put(offset, value.littleEndian) }
        mutating func be32(_ offset: Int, _ value: UInt32) { put(offset, value.bigEndian) }
        mutating func u64(_ offset: Int, _ value: UInt64) { put(offset, value.littleEndian) }
        mutating func bytes(_ offset: Int, _ value: [UInt8]) {
            raw.replaceSubrange(offset..<offset + value.count, with: value)
        }
        private mutating func put<T: FixedWidthInteger>(_ offset: Int, _ value: T) {
            withUnsafeBytes(of: value) { raw.replaceSubrange(offset..<offset + $0.count, with: $0) }
        }
        var description: String { raw.map { String(format: "%02x", $0) }.joined() }
    }

    func testKernelStructSizesMatchGCC() {
        // sizeof() from gcc 12 on <linux/xfrm.h> and <linux/netlink.h>, x86-64.
        XCTAssertEqual(MemoryLayout<nlmsghdr>.size, 16)
        XCTAssertEqual(MemoryLayout<nlattr>.size, 4)
        XCTAssertEqual(MemoryLayout<nlmsgerr>.size, 20)
        XCTAssertEqual(MemoryLayout<xfrm_selector>.size, 56)
        XCTAssertEqual(MemoryLayout<xfrm_id>.size, 24)
        XCTAssertEqual(MemoryLayout<xfrm_usersa_info>.size, 224)
        XCTAssertEqual(MemoryLayout<xfrm_userpolicy_info>.size, 168)
        XCTAssertEqual(MemoryLayout<xfrm_user_tmpl>.size, 64)
        XCTAssertEqual(MemoryLayout<xfrm_user_acquire>.size, 280)
        XCTAssertEqual(MemoryLayout<xfrm_usersa_id>.size, 24)
        XCTAssertEqual(MemoryLayout<xfrm_userpolicy_id>.size, 64)
        XCTAssertEqual(MemoryLayout<xfrm_userspi_info>.size, 232)
        XCTAssertEqual(MemoryLayout<xfrm_user_expire>.size, 232)
        XCTAssertEqual(MemoryLayout<xfrm_user_polexpire>.size, 176)
        XCTAssertEqual(MemoryLayout<xfrm_algo>.size, 68)
        XCTAssertEqual(MemoryLayout<xfrm_algo_auth>.size, 72)
        XCTAssertEqual(MemoryLayout<xfrm_algo_aead>.size, 72)
        XCTAssertEqual(MemoryLayout<xfrm_address_filter>.size, 36)
        XCTAssertEqual(MemoryLayout<xfrm_encap_tmpl>.size, 24)
        XCTAssertEqual(MemoryLayout<xfrm_mark>.size, 8)
    }

    /// xfrm_selector: daddr@0 saddr@16 dport@32 dport_mask@34 sport@36 sport_mask@38 family@40
    /// prefixlen_d@42 prefixlen_s@43 proto@44 ifindex@48 user@52.
    func expectedSelector(_ s: XFRMSelector) -> Bytes {
        var b = Bytes(56)
        b.bytes(0, s.destination.bytes)
        b.bytes(16, s.source.bytes)
        b.be16(32, s.destinationPort)
        b.be16(34, s.destinationPortMask)
        b.be16(36, s.sourcePort)
        b.be16(38, s.sourcePortMask)
        b.u16(40, s.family.rawValue)
        b.u8(42, s.destinationPrefixLength)
        b.u8(43, s.sourcePrefixLength)
        b.u8(44, s.upperProtocol.rawValue)
        b.u32(48, UInt32(bitPattern: s.interfaceIndex))
        b.u32(52, s.user)
        return b
    }

    func bytes<T>(of value: T) -> [UInt8] { withUnsafeBytes(of: value) { Array($0) } }

    func testSelectorBytes() {
        let v4 = XFRMSelector.host("10.77.0.1", "10.77.0.2", protocol: .tcp, sourcePort: 40000, destinationPort: 5001)
        XCTAssertEqual(bytes(of: v4.kernelValue), expectedSelector(v4).raw)
        XCTAssertEqual(Array(bytes(of: v4.kernelValue)[32..<34]), [0x13, 0x89], "dport 5001 is big-endian")
        var v6 = XFRMSelector.host("fd77::1", "fd77::2", protocol: .udp, destinationPort: 53)
        v6.interfaceIndex = 7
        v6.user = 1000
        XCTAssertEqual(bytes(of: v6.kernelValue), expectedSelector(v6).raw)
        XCTAssertEqual(bytes(of: XFRMSelector.any(.inet).kernelValue), expectedSelector(.any(.inet)).raw)
    }

    /// xfrm_user_tmpl (64 bytes): id.daddr@0 id.spi@16 id.proto@20 family@24 saddr@28 reqid@44 mode@48
    /// share@49 optional@50 aalgos@52 ealgos@56 calgos@60.
    func testTemplateBytes() {
        let t = XFRMTemplate(
            proto: .esp, mode: .transport, reqid: 42, level: .use, family: .inet,
            source: "10.0.0.1", destination: "10.0.0.2", spi: 0x1234_5678,
            authenticationAlgorithms: 0xffff_ffff, encryptionAlgorithms: 0x10, compressionAlgorithms: 0)
        var b = Bytes(64)
        b.bytes(0, [10, 0, 0, 2])
        b.be32(16, 0x1234_5678)
        b.u8(20, 50)
        b.u16(24, 2)
        b.bytes(28, [10, 0, 0, 1])
        b.u32(44, 42)
        b.u8(48, 0)
        b.u8(50, 1)
        b.u32(52, 0xffff_ffff)
        b.u32(56, 0x10)
        b.u32(60, 0)
        XCTAssertEqual(Bytes(raw: bytes(of: t.kernelValue(policyFamily: .inet))), b)
    }

    /// The exact `setsockopt(IP_XFRM_POLICY)` buffer: xfrm_userpolicy_info (168 bytes: sel@0 lft@56
    /// curlft@120 priority@152 index@156 dir@160 action@161 flags@162 share@163), then 64-byte templates.
    func testSocketPolicyBufferBytes() {
        let template = XFRMTemplate(reqid: 100)
        let policy = XFRMPolicy(selector: .any(.inet), direction: .outbound, priority: 7, templates: [template])
        let encoded = SocketPolicy.encode(policy)
        XCTAssertEqual(encoded.count, 168 + 64)
        var b = Bytes(168 + 64)
        b.bytes(0, expectedSelector(.any(.inet)).raw)
        // lft: soft_byte, hard_byte, soft_packet, hard_packet = XFRM_INF; the four time limits 0.
        for offset in [56, 64, 72, 80] { b.u64(offset, .max) }
        b.u32(152, 7)
        b.u8(160, 1) // XFRM_POLICY_OUT
        b.u8(161, 0) // XFRM_POLICY_ALLOW
        // template: proto esp, family 0 (= the policy's), reqid 100, transport, required, all algorithms.
        b.u8(168 + 20, 50)
        b.u32(168 + 44, 100)
        b.u32(168 + 52, .max)
        b.u32(168 + 56, .max)
        b.u32(168 + 60, .max)
        XCTAssertEqual(Bytes(raw: encoded), b)
    }

    /// A whole `ip xfrm state add` message: nlmsghdr, xfrm_usersa_info (id@56 saddr@80 lft@96 seq@204
    /// reqid@208 family@212 mode@214 replay_window@215 flags@216) and an XFRMA_ALG_AEAD attribute
    /// (xfrm_algo_aead: name[64], key_len bits, icv_len bits, key).
    func testNewStateMessageBytes() {
        let key = (0..<20).map { UInt8($0) }
        var state = XFRMState(
            source: "10.77.0.1", destination: "10.77.0.2", spi: 0x1000, reqid: 42,
            algorithms: [.aesGCM(key: key)],
            selector: .host("10.77.0.1", "10.77.0.2"), replayWindow: 32, flags: 1, sequence: 9)
        state.mark = XFRMMark(value: 5, mask: 0xff)
        var builder = XFRMClient.stateMessage(state, type: UInt16(XFRM_MSG_NEWSA), create: true)
        builder.setSequence(77)
        let message = builder.finished()

        let aeadLength = 4 + 72 + 20
        let total = 16 + 224 + ((aeadLength + 3) & ~3) + (4 + 8)
        var b = Bytes(total)
        b.u32(0, UInt32(total))
        b.u16(4, 0x10) // XFRM_MSG_NEWSA
        b.u16(6, 0x1 | 0x4 | 0x400 | 0x200) // REQUEST | ACK | CREATE | EXCL
        b.u32(8, 77)
        let info = 16
        b.bytes(info, expectedSelector(.host("10.77.0.1", "10.77.0.2")).raw)
        b.bytes(info + 56, [10, 77, 0, 2])
        b.be32(info + 56 + 16, 0x1000)
        b.u8(info + 56 + 20, 50)
        b.bytes(info + 80, [10, 77, 0, 1])
        for offset in [96, 104, 112, 120] { b.u64(info + offset, .max) }
        b.u32(info + 204, 9)
        b.u32(info + 208, 42)
        b.u16(info + 212, 2)
        b.u8(info + 214, 0)
        b.u8(info + 215, 32)
        b.u8(info + 216, 1)
        var attr = info + 224
        b.u16(attr, UInt16(aeadLength))
        b.u16(attr + 2, 18) // XFRMA_ALG_AEAD
        b.bytes(attr + 4, Array("rfc4106(gcm(aes))".utf8))
        b.u32(attr + 4 + 64, 160)
        b.u32(attr + 4 + 68, 128)
        b.bytes(attr + 4 + 72, key)
        attr += (aeadLength + 3) & ~3
        b.u16(attr, 12)
        b.u16(attr + 2, 21) // XFRMA_MARK
        b.u32(attr + 4, 5)
        b.u32(attr + 8, 0xff)
        XCTAssertEqual(Bytes(raw: message), b)
    }

    /// `ip xfrm policy add … tmpl …`: nlmsghdr, xfrm_userpolicy_info, XFRMA_TMPL (type 5) with the templates.
    func testNewPolicyMessageBytes() {
        let policy = XFRMPolicy(
            selector: .host("fd77::1", "fd77::2"), direction: .inbound, action: .allow,
            priority: 100, templates: [XFRMTemplate(reqid: 1), XFRMTemplate(reqid: 2, level: .use)])
        var builder = XFRMClient.policyMessage(policy, type: UInt16(XFRM_MSG_NEWPOLICY), create: true)
        builder.setSequence(3)
        let message = builder.finished()
        XCTAssertEqual(message.count, 16 + 168 + 4 + 128)
        XCTAssertEqual(Array(message[0..<4]), bytes(of: UInt32(16 + 168 + 4 + 128).littleEndian))
        XCTAssertEqual(Array(message[4..<6]), bytes(of: UInt16(0x13).littleEndian), "XFRM_MSG_NEWPOLICY")
        XCTAssertEqual(Array(message[16..<16 + 56]), expectedSelector(.host("fd77::1", "fd77::2")).raw)
        XCTAssertEqual(message[16 + 160], 0, "dir in")
        XCTAssertEqual(Array(message[16 + 168..<16 + 172]), [132, 0, 5, 0], "nla_len 132, XFRMA_TMPL")
        XCTAssertEqual(Array(message[16 + 172 + 44..<16 + 172 + 48]), [1, 0, 0, 0], "first reqid")
        XCTAssertEqual(message[16 + 172 + 64 + 50], 1, "second template level use")
        XCTAssertEqual(
            Array(SocketPolicy.encode(policy)[0..<168]), Array(message[16..<16 + 168]),
            "socket policy and netlink policy share the xfrm_userpolicy_info encoding")
    }

    /// `ip xfrm state delete`: nlmsghdr + xfrm_usersa_id (daddr@0 spi@16 family@20 proto@22) + XFRMA_SRCADDR.
    func testDeleteStateMessageBytes() {
        let id = XFRMStateID(destination: "fd77::2", spi: 0xdead_beef)
        var builder = XFRMClient.stateIDMessage(id, type: UInt16(XFRM_MSG_DELSA), source: "fd77::1", mark: nil)
        builder.setSequence(1)
        let message = builder.finished()
        var b = Bytes(16 + 24 + 20)
        b.u32(0, 60)
        b.u16(4, 0x11) // XFRM_MSG_DELSA
        b.u16(6, 0x5)
        b.u32(8, 1)
        b.bytes(16, ("fd77::2" as IPAddress).bytes)
        b.be32(16 + 16, 0xdead_beef)
        b.u16(16 + 20, 10)
        b.u8(16 + 22, 50)
        b.u16(40, 20)
        b.u16(42, 13) // XFRMA_SRCADDR
        b.bytes(44, ("fd77::1" as IPAddress).bytes)
        XCTAssertEqual(Bytes(raw: message), b)
    }

    func testStateRoundTrip() throws {
        var state = XFRMState(
            source: "fd77::1", destination: "fd77::2", spi: 0x2000, mode: .tunnel, reqid: 7,
            algorithms: [
                XFRMAlgorithm(.encryption, name: "cbc(aes)", key: [UInt8](repeating: 1, count: 16)),
                XFRMAlgorithm(
                    .authenticationTruncated(truncationBits: 128), name: "hmac(sha256)",
                    key: [UInt8](repeating: 2, count: 32)),
            ],
            selector: .host("fd77::1", "fd77::2", protocol: .tcp, destinationPort: 443),
            replayWindow: 64)
        state.encapsulation = .espInUDP(sourcePort: 4500, destinationPort: 4500, originalAddress: "fd77::9")
        state.mark = XFRMMark(value: 1)
        var builder = XFRMClient.stateMessage(state, type: UInt16(XFRM_MSG_NEWSA), create: true)
        builder.setSequence(1)
        let messages = try NetlinkMessage.split(builder.finished()[...], operation: "test")
        XCTAssertEqual(messages.count, 1)
        XCTAssertEqual(try XFRMClient.decodeState(messages[0].payload, operation: "test"), state)
    }

    func testPolicyRoundTrip() throws {
        let policy = XFRMPolicy(
            selector: .host("10.0.0.1", "10.0.0.2", protocol: .udp, sourcePort: 500),
            direction: .forward, action: .block, priority: 9, index: 0,
            templates: (1...6).map { XFRMTemplate(reqid: UInt32($0)) }, mark: XFRMMark(value: 3))
        var builder = XFRMClient.policyMessage(policy, type: UInt16(XFRM_MSG_NEWPOLICY), create: true)
        builder.setSequence(1)
        let messages = try NetlinkMessage.split(builder.finished()[...], operation: "test")
        var decoded = try XFRMClient.decodePolicy(messages[0].payload, operation: "test")
        XCTAssertEqual(decoded.templates.map(\.reqid), [1, 2, 3, 4, 5, 6])
        XCTAssertEqual(decoded.templates.first?.destination, .any(.inet))
        // Templates with family 0 decode with the policy's family for their addresses.
        decoded.templates = policy.templates
        XCTAssertEqual(decoded, policy)
    }

    func testEncodingRejectsWhatTheKernelWould() {
        let tooMany = XFRMPolicy(
            selector: .any(.inet), direction: .outbound,
            templates: Array(repeating: XFRMTemplate(), count: 7))
        XCTAssertThrowsError(try tooMany.validate(operation: "t")) { error in
            XCTAssertEqual((error as? XFRMError)?.code, .invalidArgument)
        }
        let badPrefix = XFRMPolicy(
            selector: XFRMSelector(
                family: .inet, source: "10.0.0.1", sourcePrefixLength: 33,
                destination: "10.0.0.2", destinationPrefixLength: 32),
            direction: .outbound)
        XCTAssertThrowsError(try badPrefix.validate(operation: "t"))
        let longName = XFRMState(
            source: "10.0.0.1", destination: "10.0.0.2", spi: 1,
            algorithms: [XFRMAlgorithm(.encryption, name: String(repeating: "x", count: 64), key: [1])])
        XCTAssertThrowsError(try longName.validate(operation: "t"))
        let mixed = XFRMState(source: "10.0.0.1", destination: "fd00::1", spi: 1)
        XCTAssertThrowsError(try mixed.validate(operation: "t"))
    }

    func testDescriptionsUseIproute2Words() {
        let template = XFRMTemplate(reqid: 42)
        XCTAssertEqual(
            template.description,
            "tmpl src 0.0.0.0 dst 0.0.0.0 proto esp reqid 42 mode transport level required")
        XCTAssertEqual(
            XFRMSelector.host("10.0.0.1", "10.0.0.2", protocol: .tcp, destinationPort: 80).description,
            "src 10.0.0.1/32 dst 10.0.0.2/32 proto tcp dport 80")
        XCTAssertEqual(XFRMDirection.socketOutbound.description, "socket out")
        XCTAssertEqual(
            XFRMStateID(destination: "10.0.0.2", spi: 0x1000).description,
            "dst 10.0.0.2 proto esp spi 0x00001000")
    }
}

final class AlgorithmDecodingTests: XCTestCase {
    /// The kernel reports auth-trunc as both XFRMA_ALG_AUTH and XFRMA_ALG_AUTH_TRUNC; the model keeps one.
    func testLegacyAuthDuplicateIsDropped() {
        let key = [UInt8](repeating: 1, count: 32)
        let list = [
            XFRMAlgorithm(.authentication, name: "hmac(sha256)", key: key),
            XFRMAlgorithm(.authenticationTruncated(truncationBits: 128), name: "hmac(sha256)", key: key),
            XFRMAlgorithm(.encryption, name: "cbc(aes)", key: [UInt8](repeating: 2, count: 16)),
        ]
        XCTAssertEqual(XFRMAlgorithm.canonical(list).map(\.name), ["cbc(aes)", "hmac(sha256)"])
        XCTAssertEqual(XFRMAlgorithm.canonical(list).last?.kind, .authenticationTruncated(truncationBits: 128))
    }
}
