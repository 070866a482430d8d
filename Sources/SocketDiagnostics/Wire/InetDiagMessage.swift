import CNetlink
import Glibc
import IPAddressing

extension InetSocketRecord {
    /// Reads the payload of one `SOCK_DIAG_BY_FAMILY` message: `struct inet_diag_msg`, then attributes.
    ///
    /// `transport` is the request's: dump and lookup replies do not carry it. Destroy events do, as
    /// `INET_DIAG_PROTOCOL`, which must then name TCP or UDP (and agree with `transport` when both are there).
    /// Every length is checked; a short or inconsistent message throws
    /// ``SocketDiagnosticsError/Code/malformedMessage``.
    init(
        inetDiagPayload payload: ArraySlice<UInt8>, transport requested: InetTransport?, operation: String
    ) throws(SocketDiagnosticsError) {
        let message = try payload.loadKernelHeader(inet_diag_msg.self, operation: operation)
        let family: IPAddressFamily
        switch CInt(message.idiag_family) {
        case AF_INET: family = .inet
        case AF_INET6: family = .inet6
        default: throw .malformed(operation, "address family \(message.idiag_family) is neither AF_INET nor AF_INET6")
        }
        var transport = requested
        let attributes = try DiagAttribute.parse(payload.afterKernelHeader(inet_diag_msg.self), operation: operation)
        for attribute in attributes where attribute.type == _INET_DIAG_PROTOCOL {
            guard let number = attribute.payload.first else {
                throw .malformed(operation, "INET_DIAG_PROTOCOL attribute without its byte")
            }
            guard let named = InetTransport(rawValue: number) else {
                throw .malformed(operation, "protocol \(number) is neither TCP nor UDP")
            }
            if let requested, requested != named {
                throw .malformed(operation, "a \(named) socket in the reply to a \(requested) request")
            }
            transport = named
        }
        guard let transport else {
            throw .malformed(operation, "no INET_DIAG_PROTOCOL attribute: the transport is unknown")
        }
        let id = message.id
        let local = withUnsafeBytes(of: id.idiag_src) { IPAddress(family: family, raw: $0) }
        let remote = withUnsafeBytes(of: id.idiag_dst) { IPAddress(family: family, raw: $0) }
        self.init(
            cookie: UInt64(id.idiag_cookie.0) | UInt64(id.idiag_cookie.1) << 32, family: family,
            transport: transport, state: TCPState(rawValue: message.idiag_state),
            local: IPEndpoint(address: local, port: UInt16(bigEndian: id.idiag_sport)),
            remote: IPEndpoint(address: remote, port: UInt16(bigEndian: id.idiag_dport)),
            interfaceIndex: id.idiag_if, uid: message.idiag_uid, inode: message.idiag_inode,
            receiveQueue: message.idiag_rqueue, sendQueue: message.idiag_wqueue)
    }
}

extension SocketDestroyEvent {
    /// What one datagram from the destroy groups holds, message by message. Never throws: a datagram that does
    /// not split is one ``unreadable(_:)`` event, a message that does not read is one too, and the others still
    /// count.
    static func events(inDatagram datagram: ArraySlice<UInt8>) -> [SocketDestroyEvent] {
        let operation = "destroy monitor"
        let messages: [DiagNetlinkMessage]
        do throws(SocketDiagnosticsError) {
            messages = try DiagNetlinkMessage.split(datagram, operation: operation)
        } catch {
            return [.unreadable(error)]
        }
        var events: [SocketDestroyEvent] = []
        for message in messages {
            switch message.type {
            case _NLMSG_NOOP, _NLMSG_DONE:
                continue
            case _NLMSG_OVERRUN:
                events.append(.eventsLost)
            case _SOCK_DIAG_BY_FAMILY:
                do throws(SocketDiagnosticsError) {
                    var record = try InetSocketRecord(
                        inetDiagPayload: message.payload, transport: nil, operation: operation)
                    // A UDP socket is reported after its send memory was released: the kernel's
                    // `sk_wmem_alloc_get` is then 0 - 1, which arrives as UInt32.max. Nothing is queued.
                    if record.transport == .udp && record.sendQueue == UInt32.max { record.sendQueue = 0 }
                    events.append(.destroyed(record))
                } catch {
                    events.append(.unreadable(error))
                }
            default:
                events.append(.unreadable(.malformed(operation, "unexpected message type \(message.type)")))
            }
        }
        return events
    }
}
