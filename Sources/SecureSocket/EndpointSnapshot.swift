import ALE
import Foundation
import XFRM

/// What one process's engine publishes about its endpoints, for inspection tools: a JSON file per process in
/// the namespace's folder (next to the reqid claims), rewritten when something changes.
public struct EndpointSnapshot: Codable, Hashable, Sendable {
    public struct Entry: Codable, Hashable, Sendable {
        public var cookie: UInt64
        public var descriptor: Int32
        public var family: String
        public var kind: String
        public var reqid: UInt32?
        public var state: String
        public var peerIdentity: String?
        public var peerUserIdentity: String?
        public var peerTargetNames: [String: String]
        public var settings: String
        public var localPort: UInt16?
    }

    public var pid: Int32
    public var executable: String
    public var keying: String
    public var updated: Date
    public var endpoints: [Entry]

    /// The folder snapshots live in for a reqid folder (`…/reqids` → `…/endpoints`).
    public static func folder(forReqidDirectory reqids: String) -> String {
        URL(fileURLWithPath: reqids).deletingLastPathComponent().appendingPathComponent("endpoints").path
    }

    /// Every snapshot in `folder` whose process is still alive.
    public static func load(from folder: String) -> [EndpointSnapshot] {
        let decoder = JSONDecoder()
        decoder.dateDecodingStrategy = .iso8601
        let files = (try? FileManager.default.contentsOfDirectory(atPath: folder)) ?? []
        return files.filter { $0.hasSuffix(".json") }.prefix(10_000).compactMap { file in
            guard let data = FileManager.default.contents(atPath: "\(folder)/\(file)"),
                let snapshot = try? decoder.decode(EndpointSnapshot.self, from: data),
                kill(snapshot.pid, 0) == 0 || errno == EPERM
            else { return nil }
            return snapshot
        }.sorted { $0.pid < $1.pid }
    }

    init(table: EndpointTable, keying: String) {
        pid = getpid()
        executable = Self.executable
        self.keying = keying
        updated = Date()
        endpoints = table.all.sorted { $0.cookie < $1.cookie }.map(Entry.init)
    }

    static let executable = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? "?"

    /// The head of a snapshot: everything but its endpoints.
    private struct Head: Encodable {
        var pid: Int32
        var executable: String
        var keying: String
        var updated: Date
    }

    /// The JSON of `table`'s snapshot, decodable as an ``EndpointSnapshot``, written one endpoint at a time (the
    /// work and memory of one publication stay one endpoint's, plus the output), and a hash of its endpoints
    /// (equal hashes: nothing to write again).
    static func encode(_ table: EndpointTable, keying: String) -> (json: [UInt8], endpointsHash: Int)? {
        let encoder = JSONEncoder()
        encoder.dateEncodingStrategy = .iso8601
        encoder.outputFormatting = [.sortedKeys]
        guard
            let head = try? encoder.encode(
                Head(pid: getpid(), executable: executable, keying: keying, updated: Date())),
            head.last == UInt8(ascii: "}")
        else { return nil }
        var json = Array(head.dropLast())
        json += Array(#","endpoints":["#.utf8)
        var hasher = Hasher()
        for (index, endpoint) in table.all.sorted(by: { $0.cookie < $1.cookie }).enumerated() {
            guard let entry = try? encoder.encode(Entry(endpoint)) else { return nil }
            if index > 0 { json += Array(",\n".utf8) }
            json += entry
            hasher.combine(entry)
        }
        json += Array("]}\n".utf8)
        return (json, hasher.finalize())
    }
}

extension EndpointSnapshot.Entry {
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
            kind: kind, reqid: endpoint.reqid, state: endpoint.state.description, peerIdentity: identity,
            peerUserIdentity: user,
            peerTargetNames: Dictionary(
                uniqueKeysWithValues: endpoint.peerTargetNames.map { ($0.key.map { "\($0)" } ?? "*", $0.value) }),
            settings: endpoint.summary, localPort: endpoint.lastLocalPort)
    }
}
