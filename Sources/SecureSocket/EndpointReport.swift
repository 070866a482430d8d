import ALE
import Foundation
import SystemSupport
import XFRM

/// One secured endpoint as inspection tools show it (`wss-inspect`): the socket, its reqid and state, its peer
/// and the names it requires, its settings, the SA pair it is pinned to, and the kernel SAs that carry its
/// reqid. Plain values, in words, so that text and JSON readers need nothing of the engine's types.
public struct EndpointReport: Codable, Hashable, Sendable {
    public var cookie: UInt64
    /// The descriptor it was registered through, in the process that holds it.
    public var descriptor: Int32
    public var family: String
    public var kind: String
    public var reqid: UInt32?
    /// `undetermined`, `initiator`, `responder on port N` or `accepted`.
    public var role: String
    public var state: String
    public var peerIdentity: String?
    public var peerUserIdentity: String?
    /// Required peer names by peer address (`*` for any address).
    public var peerTargetNames: [String: String]
    public var settings: String
    public var localPort: UInt16?
    /// The SA pair the socket's policies are pinned to (`in 0x… out 0x…`), nil when they name the reqid only.
    public var pinned: String?
    /// The kernel's ESP SAs with the endpoint's reqid (filled by ``SecureSocketEngine/report(_:)``; empty in
    /// a snapshot).
    public var sas: [SAReport]

    public init(
        cookie: UInt64, descriptor: Int32, family: String, kind: String, reqid: UInt32?, role: String, state: String,
        peerIdentity: String?, peerUserIdentity: String?, peerTargetNames: [String: String], settings: String,
        localPort: UInt16?, pinned: String?, sas: [SAReport] = []
    ) {
        self.cookie = cookie
        self.descriptor = descriptor
        self.family = family
        self.kind = kind
        self.reqid = reqid
        self.role = role
        self.state = state
        self.peerIdentity = peerIdentity
        self.peerUserIdentity = peerUserIdentity
        self.peerTargetNames = peerTargetNames
        self.settings = settings
        self.localPort = localPort
        self.pinned = pinned
        self.sas = sas
    }

    // A snapshot written before SAs were reported has none.
    public init(from decoder: any Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        self.init(
            cookie: try container.decode(UInt64.self, forKey: .cookie),
            descriptor: try container.decode(Int32.self, forKey: .descriptor),
            family: try container.decode(String.self, forKey: .family),
            kind: try container.decode(String.self, forKey: .kind),
            reqid: try container.decodeIfPresent(UInt32.self, forKey: .reqid),
            role: try container.decodeIfPresent(String.self, forKey: .role) ?? "?",
            state: try container.decode(String.self, forKey: .state),
            peerIdentity: try container.decodeIfPresent(String.self, forKey: .peerIdentity),
            peerUserIdentity: try container.decodeIfPresent(String.self, forKey: .peerUserIdentity),
            peerTargetNames: try container.decode([String: String].self, forKey: .peerTargetNames),
            settings: try container.decode(String.self, forKey: .settings),
            localPort: try container.decodeIfPresent(UInt16.self, forKey: .localPort),
            pinned: try container.decodeIfPresent(String.self, forKey: .pinned),
            sas: try container.decodeIfPresent([SAReport].self, forKey: .sas) ?? [])
    }
}

/// One kernel ESP SA as inspection tools show it.
public struct SAReport: Codable, Hashable, Sendable {
    /// `ip xfrm state`'s words for it.
    public var text: String
    public var source: String
    public var destination: String
    public var spi: UInt32
    public var reqid: UInt32
    public var algorithms: [String]
    public var bytes: UInt64
    public var packets: UInt64

    public init(
        text: String, source: String, destination: String, spi: UInt32, reqid: UInt32, algorithms: [String],
        bytes: UInt64, packets: UInt64
    ) {
        self.text = text
        self.source = source
        self.destination = destination
        self.spi = spi
        self.reqid = reqid
        self.algorithms = algorithms
        self.bytes = bytes
        self.packets = packets
    }

    public init(_ state: XFRMState) {
        self.init(
            text: state.description, source: "\(state.source)", destination: "\(state.id.destination)",
            spi: state.id.spi, reqid: state.reqid, algorithms: state.algorithms.map(\.name),
            bytes: state.counters.bytes, packets: state.counters.packets)
    }
}

extension EndpointReport {
    /// What the engine knows of `endpoint`, without its SAs.
    init(_ endpoint: Endpoint) {
        var identity: String?
        var user: String?
        if case .secured(let info) = endpoint.state.settled {
            identity = info.peerIdentity
            user = info.peerUserIdentity
        }
        let kind: String =
            switch endpoint.kind {
            case .stream: "tcp"
            case .datagram: "udp"
            case .other(let type): "type \(type)"
            }
        self.init(
            cookie: endpoint.cookie, descriptor: endpoint.descriptor, family: endpoint.family.description,
            kind: kind, reqid: endpoint.reqid, role: endpoint.role.description, state: endpoint.state.description,
            peerIdentity: identity,
            peerUserIdentity: user,
            peerTargetNames: Dictionary(
                uniqueKeysWithValues: endpoint.peerTargetNames.map { ($0.key.map { "\($0)" } ?? "*", $0.value) }),
            settings: endpoint.summary, localPort: endpoint.lastLocalPort, pinned: endpoint.pinned?.description)
    }
}

extension SecureSocketEngine {
    /// The reports of `endpoints` as they are now, each with the kernel's ESP SAs of its reqid (one SAD dump for
    /// all of them; none when the kernel cannot be asked).
    public func report(_ endpoints: [Endpoint]) -> [EndpointReport] {
        let reqids = Set(endpoints.compactMap(\.reqid))
        var byReqid: [UInt32: [SAReport]] = [:]
        if !reqids.isEmpty {
            for state in (try? xfrm.states(proto: .esp)) ?? [] where reqids.contains(state.reqid) && !state.isLarval {
                byReqid[state.reqid, default: []].append(SAReport(state))
            }
        }
        return endpoints.map { endpoint in
            var report = EndpointReport(endpoint)
            report.sas = endpoint.reqid.flatMap { byReqid[$0] } ?? []
            return report
        }
    }

    /// Notified whenever an endpoint is added, changes state or goes (coalesced: a waiter re-reads the table).
    public var endpointChanges: ChangeSignal { changeSignal }
}
