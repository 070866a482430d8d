import ALE
import ArgumentParser
import DaemonClient
import DaemonControl
import Foundation
import SecureSocket
import SystemSupport
import XFRM

/// Shows what the library secures in this network namespace: asked live of the namespace's keying daemon
/// (`wss-keyd`), the endpoints, who holds them, their peers and the kernel SAs that carry them, in words or as
/// JSON; `follow` streams their changes until interrupted. Processes that secure sockets themselves (privileged,
/// without a daemon) are shown from the snapshots they publish.
@main
struct WSSInspect: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "wss-inspect",
        abstract: "Endpoints secured by the library, their SAs, peers and state.",
        subcommands: [Endpoints.self, Follow.self],
        defaultSubcommand: Endpoints.self)

    struct Options: ParsableArguments {
        @Option(help: "The keying daemon's control socket (abstract name; default: \(ControlChannel.defaultName)).")
        var daemon: String = ControlChannel.defaultName

        @Option(help: "The folder in-process engines publish snapshots in (default: this namespace's).")
        var folder: String?

        var snapshotFolder: String {
            folder ?? EndpointSnapshot.folder(forReqidDirectory: ReqidAllocator.defaultDirectory())
        }
    }

    /// Everything `endpoints` found, as its JSON says it.
    struct Report: Codable {
        struct Process: Codable {
            var snapshot: EndpointSnapshot
        }

        /// This process's network namespace (`net:[inode]`).
        var namespace: String
        /// What the daemon answered; nil when none answers (``daemonError`` says why).
        var daemon: DaemonInspector.Inspection?
        var daemonError: String?
        /// In-process engines (privileged processes without a daemon), from their snapshots.
        var processes: [EndpointSnapshot]
        var snapshotFolder: String
    }

    static var namespace: String {
        (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/ns/net")) ?? "?"
    }

    static func report(_ options: Options) -> Report {
        var report = Report(
            namespace: namespace, daemon: nil, daemonError: nil,
            processes: EndpointSnapshot.load(from: options.snapshotFolder), snapshotFolder: options.snapshotFolder)
        do {
            let inspector = try DaemonInspector(name: options.daemon)
            defer { inspector.close() }
            report.daemon = try inspector.inspect()
        } catch {
            report.daemonError = error.detail
        }
        // Snapshots carry no SAs: read them here when the kernel lets this process (CAP_NET_ADMIN).
        if !report.processes.isEmpty, let states = try? XFRMClient().states(proto: .esp) {
            for index in report.processes.indices {
                for entry in report.processes[index].endpoints.indices {
                    let reqid = report.processes[index].endpoints[entry].reqid
                    report.processes[index].endpoints[entry].sas = states.filter {
                        reqid != nil && $0.reqid == reqid && !$0.isLarval
                    }.map(SAReport.init)
                }
            }
        }
        return report
    }

    static func line(_ endpoint: EndpointReport) -> String {
        var line = "  socket cookie \(endpoint.cookie) fd \(endpoint.descriptor) \(endpoint.kind) \(endpoint.family)"
        if let port = endpoint.localPort { line += " port \(port)" }
        line += endpoint.reqid.map { " reqid \($0)" } ?? " no policy"
        line += " \(endpoint.role) state \(endpoint.state)"
        if let pinned = endpoint.pinned { line += " pinned \(pinned)" }
        if let identity = endpoint.peerIdentity { line += " peer \(identity)" }
        if let user = endpoint.peerUserIdentity { line += " user \(user)" }
        for (address, name) in endpoint.peerTargetNames.sorted(by: { $0.key < $1.key }) {
            line += " target \(address == "*" ? "" : address + "=")\(name)"
        }
        line += " settings \(endpoint.settings)"
        return line
    }

    static func printText(_ report: Report) {
        if let daemon = report.daemon {
            print(
                "keying daemon pid \(daemon.daemon.pid) uid \(daemon.daemon.uid) keying \(daemon.keying), "
                    + "\(daemon.clients) clients, \(daemon.endpoints.count) endpoints you may see")
            for endpoint in daemon.endpoints {
                let owner = endpoint.owner.map { "held by pid \($0.pid) uid \($0.uid)" } ?? "held by no client now"
                print(line(endpoint.report) + " (\(owner))")
                for sa in endpoint.report.sas { print("    \(sa.text) bytes \(sa.bytes) packets \(sa.packets)") }
            }
        }
        for snapshot in report.processes {
            print(
                "process \(snapshot.pid) \(snapshot.executable) (in-process engine) keying \(snapshot.keying) "
                    + "updated \(snapshot.updated)")
            for endpoint in snapshot.endpoints {
                print(line(endpoint))
                for sa in endpoint.sas { print("    \(sa.text) bytes \(sa.bytes) packets \(sa.packets)") }
            }
        }
        if report.daemon == nil && report.processes.isEmpty {
            print(
                "nothing to show in network namespace \(report.namespace): \(report.daemonError ?? "no keying daemon"), "
                    + "and no in-process engine publishes snapshots in \(report.snapshotFolder)")
        } else if report.daemon == nil, let why = report.daemonError {
            print("(\(why))")
        }
    }

    struct Endpoints: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List the endpoints and their SAs (default).")
        @OptionGroup var options: Options
        @Flag(help: "Print JSON instead of text.") var json = false

        func run() throws {
            let report = WSSInspect.report(options)
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
            abstract: "Print the endpoints' changes as the keying daemon sees them, until interrupted.",
            discussion: """
                First the endpoints present, then each endpoint added, changed or removed and each SA of theirs \
                added or removed. Without a keying daemon in the namespace, the kernel's XFRM events are printed \
                instead (they need CAP_NET_ADMIN).
                """)
        @OptionGroup var options: Options
        @Option(help: "Stop after this many seconds (default: until interrupted).") var seconds: Double?
        @Flag(help: "One JSON object per line.") var json = false

        /// One line of `--json` output.
        struct Line: Encodable {
            var time: Date
            var event: String
            var endpoint: InspectedEndpoint?
            var sa: SAReport?
            /// The kernel's event in `ip xfrm monitor`'s words (without a daemon only).
            var xfrm: String?
        }

        func emit(_ line: Line) {
            if json {
                let encoder = JSONEncoder()
                encoder.outputFormatting = [.sortedKeys]
                encoder.dateEncodingStrategy = .iso8601
                if let data = try? encoder.encode(line) { print(String(decoding: data, as: UTF8.self)) }
            } else if let xfrm = line.xfrm {
                print("[xfrm] \(xfrm)")
            } else if let endpoint = line.endpoint {
                var text = "[\(line.event)]" + WSSInspect.line(endpoint.report).dropFirst(1)
                if let owner = endpoint.owner { text += " (pid \(owner.pid) uid \(owner.uid))" }
                if let sa = line.sa { text = "[\(line.event)] \(sa.text) of socket cookie \(endpoint.report.cookie)" }
                print(text)
            }
            fflush(nil)
        }

        func run() throws {
            let deadline = seconds.map { Deadline(after: .milliseconds(Int64($0 * 1000))) }
            let inspector: DaemonInspector
            do {
                inspector = try DaemonInspector(name: options.daemon)
            } catch {
                FileHandle.standardError.write(
                    Data("wss-inspect: \(error.detail); following the kernel's XFRM events instead\n".utf8))
                return try followKernel(until: deadline)
            }
            defer { inspector.close() }
            do {
                let daemonEnded = try inspector.follow(until: deadline) { event in
                    emit(Line(time: Date(), event: event.kind.rawValue, endpoint: event.endpoint, sa: event.sa))
                    return true
                }
                if daemonEnded { throw ValidationError("the keying daemon closed the connection") }
            } catch let error as SecureSocketError where error.code == .timedOut {
                return // --seconds passed
            }
        }

        func followKernel(until deadline: Deadline?) throws {
            let monitor = try XFRMMonitor()
            let done = DispatchSemaphore(value: 0)
            let task = Task {
                do {
                    for try await event in monitor {
                        emit(Line(time: Date(), event: "xfrm", xfrm: Self.describe(event)))
                    }
                } catch {
                    FileHandle.standardError.write(Data("wss-inspect: \(error)\n".utf8))
                }
                done.signal()
            }
            if let deadline {
                _ = done.wait(
                    timeout: .now() + .nanoseconds(Int(deadline.remaining.components.seconds * 1_000_000_000)))
            } else {
                done.wait()
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
