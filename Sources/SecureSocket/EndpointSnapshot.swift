import ALE
import Foundation
import XFRM

/// What one process's engine publishes about its endpoints, for inspection tools: a JSON file per process in
/// the namespace's folder (next to the reqid claims), rewritten when something changes.
public struct EndpointSnapshot: Codable, Hashable, Sendable {
    public typealias Entry = EndpointReport

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
    /// Writes the snapshot of `table` to `path` unless its endpoints are the same as those whose hash is
    /// `unchanged`; returns the endpoints' hash, or nil when nothing could be written.
    ///
    /// One endpoint at a time, through a temporary file beside `path` that is renamed over it (readers never see
    /// half a snapshot): the memory it takes does not grow with the number of endpoints (a snapshot built whole
    /// would cost a few hundred bytes per endpoint at every publication, several copies at the peak).
    static func write(_ table: EndpointTable, keying: String, to path: String, unlessHash unchanged: Int?) -> Int? {
        let encoder = JSONEncoder()
        encoder.dateEncodingStrategy = .iso8601
        encoder.outputFormatting = [.sortedKeys]
        guard
            let head = try? encoder.encode(
                Head(pid: getpid(), executable: executable, keying: keying, updated: Date())),
            head.last == UInt8(ascii: "}")
        else { return nil }
        let temporary = "\(path).\(getpid()).tmp"
        let fd = open(temporary, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        guard fd >= 0 else { return nil }
        var buffer: [UInt8] = []
        buffer.reserveCapacity(Self.writeChunk)
        var failed = false
        func emit<C: Collection>(_ bytes: C) where C.Element == UInt8 {
            buffer.append(contentsOf: bytes)
            if buffer.count >= Self.writeChunk { flush() }
        }
        func flush() {
            var offset = 0
            // Bounded: each round writes at least one byte or ends the loop.
            while offset < buffer.count, !failed {
                let written = buffer.withUnsafeBytes { Glibc.write(fd, $0.baseAddress! + offset, $0.count - offset) }
                if written > 0 {
                    offset += written
                } else if written < 0 && errno == EINTR {
                    continue
                } else {
                    failed = true
                }
            }
            buffer.removeAll(keepingCapacity: true)
        }
        emit(head.dropLast())
        emit(#","endpoints":["#.utf8)
        var hasher = Hasher()
        // Cookies only, then each endpoint as it is now: no copy of the whole table.
        for (index, cookie) in table.cookies.sorted().enumerated() {
            guard let endpoint = table.endpoint(cookie: cookie) else { continue }
            guard let entry = try? encoder.encode(Entry(endpoint)) else {
                failed = true
                break
            }
            if index > 0 { emit(",\n".utf8) }
            emit(entry)
            hasher.combine(entry)
        }
        emit("]}\n".utf8)
        flush()
        close(fd)
        let hash = hasher.finalize()
        guard !failed, hash != unchanged, rename(temporary, path) == 0 else {
            unlink(temporary)
            return failed ? nil : hash
        }
        return hash
    }

    /// Bytes gathered before each `write(2)`.
    static let writeChunk = 16 * 1024
}
