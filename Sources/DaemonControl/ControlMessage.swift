import IPAddressing
import Impersonation
import SecureSocket

/// One message of the control protocol between the library and the namespace's keying daemon (`wss-keyd`).
///
/// Each message is one `SOCK_SEQPACKET` datagram (``ControlChannel``): a 12-byte header (magic `WSSD`, protocol
/// version, kind, two reserved zero bytes, the request id) and the kind's fields (``ControlWriter``). A request
/// that acts on a socket carries that socket as its one `SCM_RIGHTS` descriptor: holding the descriptor is what
/// lets a client act on a socket, never a cookie or a number it names. The daemon answers each request with the
/// same id; it may also ask a client to lend a socket back (``lend(cookie:)``, with an id of the daemon's).
public enum ControlMessage: Hashable, Sendable {
    // Client to daemon.
    /// The first message: the versions the client speaks.
    case hello(minimumVersion: UInt8, maximumVersion: UInt8)
    /// `WSASetSocketSecurity` on the attached socket.
    case setSecurity(SocketSecuritySettings)
    /// `WSASetSocketPeerTargetName` on the attached socket.
    case setPeerTargetName(SocketPeerTargetName)
    /// `WSADeleteSocketPeerTargetName` on the attached socket.
    case deletePeerTargetName(IPEndpoint)
    /// `WSAConnect`'s negotiation for the attached socket and `peer`: the daemon negotiates the flow's SAs and pins
    /// the socket to them, then answers ``connectReady(handshakeMilliseconds:)``; the client connects itself.
    case prepareConnect(peer: IPEndpoint, timeoutMilliseconds: UInt32)
    /// `WSAQuerySocketSecurity` on the attached socket.
    case query(SocketSecurityQueryTemplate?)
    /// The application is done with the attached socket (`closesocket`): its keying goes at once.
    case release
    /// The answer to ``lend(cookie:)``: the socket is attached when `held`.
    case lent(cookie: UInt64, held: Bool)
    /// The endpoints the client may see (all of them for root, else those its user's processes registered) and
    /// their SAs: answered by one or more ``inspection(_:)`` pages.
    case inspect
    /// Streams ``inspectionEvent(_:)`` for the endpoints the client may see, from now until it closes the
    /// connection: answered ``done`` first.
    case follow
    /// The attached socket was secured through a daemon that has gone (killed, restarted) and now listens (TCP) or
    /// is bound (UDP): secure it again with the same settings and peer target names, so the namespace's new
    /// daemon offers it to peers again. Answered ``secured(cookie:)``.
    case resecure(SocketSecuritySettings, names: [SocketPeerTargetName])

    // Daemon to client.
    /// The answer to ``hello(minimumVersion:maximumVersion:)``: the version both speak.
    case welcome(version: UInt8, daemonPID: Int32)
    /// A request succeeded.
    case done
    /// ``setSecurity(_:)`` succeeded; the socket's kernel cookie.
    case secured(cookie: UInt64)
    /// ``prepareConnect(peer:timeoutMilliseconds:)`` succeeded (or fell back to clear text, as the settings
    /// allow): connect now, bounded by this long.
    case connectReady(handshakeMilliseconds: UInt32)
    /// What ``query(_:)`` found.
    case queryInfo(SocketSecurityQueryInfo)
    /// A request failed: the Winsock code, the Linux errno (0 if none), and why.
    case failure(code: Int32, errno: Int32, detail: String)
    /// The daemon needs a descriptor of the socket with this cookie for a moment (a rekey moves its pins): the
    /// client answers ``lent(cookie:held:)``.
    case lend(cookie: UInt64)
    /// A page of the answer to ``inspect``.
    case inspection(InspectionPage)
    /// An event ``follow`` streams.
    case inspectionEvent(InspectionEvent)

    /// The protocol versions this build speaks.
    public static let versions: ClosedRange<UInt8> = 1...1
    /// The longest datagram either end sends or accepts.
    public static let maximumFrameBytes = 65_536
    static let magic: [UInt8] = Array("WSSD".utf8)

    /// Whether the message carries a socket (`SCM_RIGHTS`).
    public var carriesSocket: Bool {
        switch self {
        case .setSecurity, .setPeerTargetName, .deletePeerTargetName, .prepareConnect, .query, .release, .resecure: true
        case .lent(_, let held): held
        default: false
        }
    }

    /// Whether a client may send it (else only the daemon may).
    public var isFromClient: Bool {
        switch self {
        case .hello, .setSecurity, .setPeerTargetName, .deletePeerTargetName, .prepareConnect, .query, .release,
            .lent, .inspect, .follow, .resecure:
            true
        case .welcome, .done, .secured, .connectReady, .queryInfo, .failure, .lend, .inspection, .inspectionEvent:
            false
        }
    }

    var kind: UInt8 {
        switch self {
        case .hello: 1
        case .setSecurity: 2
        case .setPeerTargetName: 3
        case .deletePeerTargetName: 4
        case .prepareConnect: 5
        case .query: 6
        case .release: 7
        case .lent: 8
        case .inspect: 9
        case .follow: 10
        case .resecure: 11
        case .welcome: 64
        case .done: 65
        case .secured: 66
        case .connectReady: 67
        case .queryInfo: 68
        case .failure: 69
        case .lend: 70
        case .inspection: 71
        case .inspectionEvent: 72
        }
    }
}

/// A message and its request id: what one datagram holds.
public struct ControlFrame: Hashable, Sendable {
    public var id: UInt32
    public var message: ControlMessage

    public init(id: UInt32, _ message: ControlMessage) {
        self.id = id
        self.message = message
    }

    /// The datagram's bytes.
    public func encoded(version: UInt8 = ControlMessage.versions.upperBound) -> [UInt8] {
        var writer = ControlWriter()
        for byte in ControlMessage.magic { writer.u8(byte) }
        writer.u8(version)
        writer.u8(message.kind)
        writer.u16(0)
        writer.u32(id)
        message.encodeFields(into: &writer)
        return writer.bytes
    }

    /// Reads one datagram: the whole of it must be one message of a version this build speaks.
    public init(decoding bytes: [UInt8]) throws(ControlProtocolError) {
        guard bytes.count <= ControlMessage.maximumFrameBytes else { throw .oversized(bytes.count) }
        var reader = ControlReader(bytes)
        let magic = try reader.take(4)
        guard Array(magic) == ControlMessage.magic else { throw .unsupported("not a control message (magic)") }
        let version = try reader.u8()
        guard ControlMessage.versions.contains(version) else { throw .unsupported("protocol version \(version)") }
        let kind = try reader.u8()
        guard try reader.u16() == 0 else { throw .invalid("reserved bits set") }
        id = try reader.u32()
        message = try ControlMessage.decodeFields(kind: kind, from: &reader)
        guard reader.isAtEnd else { throw .invalid("\(bytes.count - reader.offset) bytes after the message") }
    }
}

extension ControlMessage {
    func encodeFields(into writer: inout ControlWriter) {
        switch self {
        case .hello(let minimum, let maximum):
            writer.u8(minimum)
            writer.u8(maximum)
        case .setSecurity(let settings): writer.settings(settings)
        case .setPeerTargetName(let name): writer.peerTargetName(name)
        case .deletePeerTargetName(let address): writer.endpoint(address)
        case .prepareConnect(let peer, let timeout):
            writer.endpoint(peer)
            writer.u32(timeout)
        case .query(let template): writer.optional(template) { $0.queryTemplate($1) }
        case .release, .done, .inspect, .follow: break
        case .lent(let cookie, let held):
            writer.u64(cookie)
            writer.bool(held)
        case .welcome(let version, let pid):
            writer.u8(version)
            writer.i32(pid)
        case .secured(let cookie): writer.u64(cookie)
        case .connectReady(let milliseconds): writer.u32(milliseconds)
        case .queryInfo(let info): writer.queryInfo(info)
        case .failure(let code, let errno, let detail):
            writer.i32(code)
            writer.i32(errno)
            writer.string(detail)
        case .lend(let cookie): writer.u64(cookie)
        case .inspection(let page): writer.inspectionPage(page)
        case .inspectionEvent(let event): writer.inspectionEvent(event)
        case .resecure(let settings, let names):
            writer.settings(settings)
            writer.array(names) { $0.peerTargetName($1) }
        }
    }

    static func decodeFields(kind: UInt8, from reader: inout ControlReader) throws(ControlProtocolError)
        -> ControlMessage
    {
        switch kind {
        case 1:
            let minimum = try reader.u8()
            let maximum = try reader.u8()
            guard minimum <= maximum else { throw .invalid("version range \(minimum)...\(maximum)") }
            return .hello(minimumVersion: minimum, maximumVersion: maximum)
        case 2: return .setSecurity(try reader.settings())
        case 3: return .setPeerTargetName(try reader.peerTargetName())
        case 4: return .deletePeerTargetName(try reader.endpoint())
        case 5: return .prepareConnect(peer: try reader.endpoint(), timeoutMilliseconds: try reader.u32())
        case 6: return .query(try reader.optional { reader throws(ControlProtocolError) in try reader.queryTemplate() })
        case 7: return .release
        case 8: return .lent(cookie: try reader.u64(), held: try reader.bool())
        case 9: return .inspect
        case 10: return .follow
        case 11:
            let settings = try reader.settings()
            return .resecure(
                settings, names: try reader.array { reader throws(ControlProtocolError) in try reader.peerTargetName() }
            )
        case 64: return .welcome(version: try reader.u8(), daemonPID: try reader.i32())
        case 65: return .done
        case 66: return .secured(cookie: try reader.u64())
        case 67: return .connectReady(handshakeMilliseconds: try reader.u32())
        case 68: return .queryInfo(try reader.queryInfo())
        case 69: return .failure(code: try reader.i32(), errno: try reader.i32(), detail: try reader.string())
        case 70: return .lend(cookie: try reader.u64())
        case 71: return .inspection(try reader.inspectionPage())
        case 72: return .inspectionEvent(try reader.inspectionEvent())
        default: throw .unsupported("message kind \(kind)")
        }
    }
}
