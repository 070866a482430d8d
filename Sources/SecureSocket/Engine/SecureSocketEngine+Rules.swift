import ALE
import Foundation
import Glibc
import Impersonation
import Keying
import Logging
import Synchronization
import SystemPackage
import XFRM

// The Windows argument rules and the mappings from keying failures to Windows errors.
extension SecureSocketEngine {
    /// What kind of socket `fd` is: the Windows functions' rules differ by kind (which buffer errors apply,
    /// whether a query or an impersonation needs the peer's address).
    public static func socketKind(_ fd: CInt) throws(SecureSocketError) -> SocketFacts.Kind {
        do throws(Errno) {
            return try SocketInspector.facts(of: fd).kind
        } catch {
            throw SecureSocketError(.notSocket, "descriptor \(fd) is not a socket", errno: error)
        }
    }

    // MARK: - Helpers

    func inspect(_ fd: CInt, expectingUnbound: Bool = false) throws(SecureSocketError) -> SocketFacts {
        try Self.inspect(fd, expectingUnbound: expectingUnbound)
    }

    func requireInetStreamOrDatagram(_ facts: SocketFacts) throws(SecureSocketError) {
        try Self.requireInetStreamOrDatagram(facts)
    }

    /// The socket's facts, or `WSAENOTSOCK`.
    package static func inspect(_ fd: CInt, expectingUnbound: Bool = false) throws(SecureSocketError) -> SocketFacts {
        do {
            return try expectingUnbound ? SocketInspector.factsExpectingUnbound(of: fd) : SocketInspector.facts(of: fd)
        } catch {
            throw SecureSocketError(.notSocket, "descriptor \(fd) is not a socket", errno: error)
        }
    }

    /// TCP or UDP over IPv4 or IPv6, else `WSAEINVAL`.
    package static func requireInetStreamOrDatagram(_ facts: SocketFacts) throws(SecureSocketError) {
        guard facts.family == .inet || facts.family == .inet6 else {
            throw SecureSocketError(
                .invalidArgument, "only AF_INET and AF_INET6 sockets (this one is family \(facts.rawFamily))")
        }
        switch facts.kind {
        case .stream where facts.protocolNumber == Int32(IPPROTO_TCP): return
        case .datagram where facts.protocolNumber == Int32(IPPROTO_UDP): return
        case .stream, .datagram:
            // SCTP, MPTCP, UDP-Lite: the per-socket policy would not cover their other paths or is untested.
            throw SecureSocketError(
                .invalidArgument, "only TCP and UDP sockets (this one is protocol \(facts.protocolNumber))")
        case .other(let type):
            throw SecureSocketError(.invalidArgument, "only SOCK_STREAM and SOCK_DGRAM sockets (type \(type))")
        }
    }

    /// The user identity of the second authentication round: `user`, or `user@domain` with a domain.
    static func userIdentity(_ ipsec: IPsecSettings?) -> String? {
        guard let user = ipsec?.userName, !user.isEmpty else { return nil }
        guard let domain = ipsec?.domainName, !domain.isEmpty else { return user }
        return "\(user)@\(domain)"
    }

    static func summary(_ settings: SocketSecuritySettings) -> String {
        var words = [settings.securityProtocol == .default ? "default" : "ipsec"]
        if settings.flags.contains(.guaranteeEncryption) { words.append("guarantee-encryption") }
        if settings.flags.contains(.allowInsecure) { words.append("allow-insecure") }
        if let flags = settings.ipsec?.flags {
            if flags.contains(.skipFilterInstantiation) { words.append("skip-filter-instantiation") }
            if flags.contains(.optionalPeerNameVerification) { words.append("optional-peer-name") }
            if flags.contains(.peerNameIsRawFormat) { words.append("raw-peer-name") }
        }
        if settings.ipsec?.userName != nil { words.append("user-auth") }
        return words.joined(separator: " ")
    }

    static func info(_ p: KeyedProtection) -> ProtectionInfo {
        ProtectionInfo(
            ikeSAID: p.ikeSAID, childSAID: p.childSAID, peerIdentity: p.remoteIdentity,
            peerUserIdentity: p.remoteUserIdentity, encryptionAlgorithm: p.encryptionAlgorithm,
            integrityAlgorithm: p.integrityAlgorithm)
    }

    static func failure(_ error: KeyingError, expected: String?, timeout: Duration) -> EndpointFailure {
        switch error.code {
        case .timedOut: .negotiationTimedOut(after: timeout)
        case .authenticationFailed:
            .peerNameMismatch(expected: expected ?? "an authenticated peer", detail: error.explanation)
        case .unavailable: .keyingUnavailable(error.explanation)
        case .noProposalChosen: .encryptionNotNegotiated(error.explanation)
        case .rejected: .negotiationFailed(error.explanation)
        }
    }

    static func code(for error: KeyingError) -> SecureSocketError.Code {
        switch error.code {
        case .timedOut: .timedOut
        case .authenticationFailed: .accessDenied
        case .unavailable: .networkUnreachable
        case .noProposalChosen, .rejected: .connectionRefused
        }
    }

    /// Win32 errors for the IPSEC2 `NegotiationWinerr` field: ERROR_IPSEC_IKE_AUTH_FAIL (13801),
    /// ERROR_IPSEC_IKE_TIMED_OUT (13805), and 13800 (the IKE status base) for other failures.
    static func win32Error(_ failure: EndpointFailure) -> UInt32 {
        switch failure {
        case .peerNameMismatch: 13801
        case .negotiationTimedOut: 13805
        default: 13800
        }
    }
}
