import ALE
import ArgumentParser
import Foundation
import SecureSocket
import XFRM

/// Shows what the library tracks in this network namespace: each process's secured endpoints (from the
/// snapshots engines publish), the kernel SAs that carry their reqids, in `ip xfrm`'s words or as JSON, and
/// follows XFRM events live.
@main
struct WSSInspect: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "wss-inspect",
        abstract: "Endpoints secured by the library, their SAs, peers and state.",
        subcommands: [Endpoints.self, Follow.self],
        defaultSubcommand: Endpoints.self)

    struct Options: ParsableArguments {
        @Option(help: "The folder engines publish snapshots in (default: this namespace's).")
        var folder: String?

        var snapshotFolder: String {
            folder ?? EndpointSnapshot.folder(forReqidDirectory: ReqidAllocator.defaultDirectory())
        }
    }

    struct Report: Codable {
        struct SA: Codable {
            var text: String
            var source: String
            var destination: String
            var spi: String
            var reqid: UInt32
            var algorithms: [String]
            var bytes: UInt64
            var packets: UInt64
        }

        struct Process: Codable {
            var snapshot: EndpointSnapshot
            var sas: [String: [SA]]
        }

        var namespaceFolder: String
        var processes: [Process]
    }

    static func report(folder: String) throws -> Report {
        let snapshots = EndpointSnapshot.load(from: folder)
        let states = (try? XFRMClient().states(proto: .esp)) ?? []
        return Report(
            namespaceFolder: folder,
            processes: snapshots.map { snapshot in
                var sas: [String: [Report.SA]] = [:]
                for reqid in Set(snapshot.endpoints.compactMap(\.reqid)) {
                    sas["\(reqid)"] = states.filter { $0.reqid == reqid && !$0.isLarval }.map { state in
                        Report.SA(
                            text: state.description, source: "\(state.source)", destination: "\(state.id.destination)",
                            spi: "0x" + String(state.id.spi, radix: 16), reqid: state.reqid,
                            algorithms: state.algorithms.map(\.name), bytes: state.counters.bytes,
                            packets: state.counters.packets)
                    }
                }
                return Report.Process(snapshot: snapshot, sas: sas)
            })
    }

    static func printText(_ report: Report) {
        if report.processes.isEmpty { print("no process publishes secured endpoints in \(report.namespaceFolder)") }
        for process in report.processes {
            let snapshot = process.snapshot
            print(
                "process \(snapshot.pid) \(snapshot.executable) keying \(snapshot.keying) updated \(snapshot.updated)")
            for endpoint in snapshot.endpoints {
                var line =
                    "  socket cookie \(endpoint.cookie) fd \(endpoint.descriptor) \(endpoint.kind) \(endpoint.family)"
                if let port = endpoint.localPort { line += " port \(port)" }
                line += endpoint.reqid.map { " reqid \($0)" } ?? " no policy"
                line += " state \(endpoint.state)"
                if let pinned = endpoint.pinned { line += " pinned \(pinned)" }
                if let identity = endpoint.peerIdentity { line += " peer \(identity)" }
                if let user = endpoint.peerUserIdentity { line += " user \(user)" }
                for (address, name) in endpoint.peerTargetNames.sorted(by: { $0.key < $1.key }) {
                    line += " target \(address == "*" ? "" : address + "=")\(name)"
                }
                line += " settings \(endpoint.settings)"
                print(line)
                for sa in process.sas[endpoint.reqid.map { "\($0)" } ?? ""] ?? [] {
                    print("    \(sa.text) bytes \(sa.bytes) packets \(sa.packets)")
                }
            }
        }
    }

    struct Endpoints: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List the endpoints and their SAs (default).")
        @OptionGroup var options: Options
        @Flag(help: "Print JSON instead of text.") var json = false

        func run() throws {
            let report = try WSSInspect.report(folder: options.snapshotFolder)
            if json {
                let encoder = JSONEncoder()
                encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
                encoder.dateEncodingStrategy = .iso8601
                print(String(decoding: try encoder.encode(report), as: UTF8.self))
            } else {
                WSSInspect.printText(report)
            }
        }
    }

    struct Follow: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Print XFRM events and endpoint changes as they happen.")
        @OptionGroup var options: Options
        @Option(help: "Stop after this many seconds.") var seconds: Double = 60
        @Flag(help: "One JSON object per line.") var json = false

        func run() throws {
            let monitor = try XFRMMonitor()
            let deadline = Date().addingTimeInterval(seconds)
            let lock = NSLock()
            let json = self.json
            let emit: @Sendable (String, String) -> Void = { (kind: String, text: String) in
                lock.lock()
                defer { lock.unlock() }
                if json {
                    let object = ["time": ISO8601DateFormatter().string(from: Date()), "kind": kind, "event": text]
                    if let data = try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys]) {
                        print(String(decoding: data, as: UTF8.self))
                    }
                } else {
                    print("[\(kind)] \(text)")
                }
                fflush(nil)
            }
            let task = Task {
                do {
                    for try await event in monitor { emit("xfrm", Self.describe(event)) }
                } catch {
                    emit("error", "\(error)")
                }
            }
            var last: [Int32: [EndpointSnapshot.Entry]] = [:]
            while Date() < deadline {
                for snapshot in EndpointSnapshot.load(from: options.snapshotFolder)
                where last[snapshot.pid] != snapshot.endpoints {
                    for endpoint in snapshot.endpoints where !(last[snapshot.pid] ?? []).contains(endpoint) {
                        emit(
                            "endpoint",
                            "process \(snapshot.pid) cookie \(endpoint.cookie) \(endpoint.kind) "
                                + "reqid \(endpoint.reqid.map { "\($0)" } ?? "-") state \(endpoint.state)")
                    }
                    last[snapshot.pid] = snapshot.endpoints
                }
                usleep(200_000)
            }
            monitor.stop()
            task.cancel()
        }

        static func describe(_ event: XFRMEvent) -> String {
            switch event {
            case .acquire(let a): "acquire \(a.selector) reqid \(a.templates.first?.reqid ?? 0)"
            case .expire(let s, let hard): "expire \(hard ? "hard" : "soft") \(s.description)"
            case .policyExpire(let p, let hard): "policy expire \(hard ? "hard" : "soft") \(p.description)"
            case .stateAdded(let s): "new \(s.description)"
            case .stateUpdated(let s): "updated \(s.description)"
            case .stateDeleted(let s): "deleted \(s.description)"
            case .statesFlushed(let p): "flush states proto \(p)"
            case .policyAdded(let p): "new policy \(p.description)"
            case .policyUpdated(let p): "updated policy \(p.description)"
            case .policyDeleted(let p): "deleted policy \(p.description)"
            case .policiesFlushed: "flush policies"
            case .other(let type): "message type \(type)"
            }
        }
    }
}
