import CNetlink
import IPAddressing

/// The requests inet_diag answers: `SOCK_DIAG_BY_FAMILY` with an `inet_diag_req_v2` (both structs laid out by the
/// compiler from the UAPI headers, never by hand).
enum InetDiagRequest {
    /// Every socket of `transport` and `family` whose state is in the `states` bitmask (`NLM_F_DUMP`).
    static func dump(
        transport: InetTransport, family: IPAddressFamily, states: UInt32, sequence: UInt32
    ) -> [UInt8] {
        var request = inet_diag_req_v2()
        request.sdiag_family = UInt8(truncatingIfNeeded: family.rawValue)
        request.sdiag_protocol = transport.rawValue
        request.idiag_states = states
        request.id.idiag_cookie = (_INET_DIAG_NOCOOKIE, _INET_DIAG_NOCOOKIE)
        return message(request, flags: _NLM_F_REQUEST | _NLM_F_DUMP, sequence: sequence)
    }

    /// The kernel's exact lookup of `record`'s socket (a request without `NLM_F_DUMP`).
    ///
    /// The kernel finds the socket by its addresses and ports the way an arriving packet would (`inet_lookup`,
    /// `__udp4_lib_lookup`), then compares the cookie: the cookie alone finds nothing. TCP takes the socket's own
    /// address as source (`idiag_src`/`idiag_sport`); UDP takes it as destination (`idiag_dst`/`idiag_dport`), "src
    /// and dst are swapped for historical reasons" (`udp_dump_one`).
    static func exact(_ record: InetSocketRecord, sequence: UInt32) -> [UInt8] {
        var request = inet_diag_req_v2()
        request.sdiag_family = UInt8(truncatingIfNeeded: record.family.rawValue)
        request.sdiag_protocol = record.transport.rawValue
        request.idiag_states = UInt32.max
        let (source, destination) =
            record.transport == .udp ? (record.remote, record.local) : (record.local, record.remote)
        request.id.idiag_sport = source.port.bigEndian
        request.id.idiag_dport = destination.port.bigEndian
        withUnsafeMutableBytes(of: &request.id.idiag_src) { target in
            source.address.withUnsafeBytes { target.copyMemory(from: $0) }
        }
        withUnsafeMutableBytes(of: &request.id.idiag_dst) { target in
            destination.address.withUnsafeBytes { target.copyMemory(from: $0) }
        }
        request.id.idiag_if = record.interfaceIndex
        request.id.idiag_cookie = (
            UInt32(truncatingIfNeeded: record.cookie), UInt32(truncatingIfNeeded: record.cookie >> 32)
        )
        return message(request, flags: _NLM_F_REQUEST, sequence: sequence)
    }

    private static func message(_ request: inet_diag_req_v2, flags: UInt16, sequence: UInt32) -> [UInt8] {
        var header = nlmsghdr()
        header.nlmsg_len = UInt32(nlmsghdrSize + inetDiagRequestSize)
        header.nlmsg_type = _SOCK_DIAG_BY_FAMILY
        header.nlmsg_flags = flags
        header.nlmsg_seq = sequence
        // Both structs are multiples of 4 bytes long: no padding between or after them.
        return withUnsafeBytes(of: header) { Array($0) } + withUnsafeBytes(of: request) { Array($0) }
    }
}
