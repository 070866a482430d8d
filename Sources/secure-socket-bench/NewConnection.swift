import ALE
import ArgumentParser
import Foundation
import IPAddressing
import Keying
import NetnsTestSupport
import SecureSocket
import VICI
import XFRM

/// A new secured connection to a peer whose IKE SA is up, N times in a row, against strongSwan's own cost for
/// one new CHILD_SA on that IKE SA plus a plain connection over it, measured in the same run, rotating.
///
/// Ours, timed per connection: `socket()` + `setSecurity` + `setPeerTargetName` + `connect` (negotiates the
/// connection's own CHILD_SA) + 1-byte echo + `release` (terminates that child, unloads its conn) + `close()`.
/// Baseline, timed per connection: VICI `initiate` of a loaded child (host-to-host transport, global policies
/// narrowed to the baseline port, the CREATE_CHILD_SA `swanctl --initiate --child` runs) + `socket()` +
/// `connect()` + 1-byte echo + `close()` + VICI `terminate` of that child. Both use the same two charons, the
/// same IKE proposals and ESP proposals, and an IKE SA that is already up.
struct NewConnection: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "new-connection",
        abstract:
            "A new secured connection over an established IKE SA, N in a row, vs one CREATE_CHILD_SA + connect (needs an ESP kernel: run under scripts/uml/run.sh)."
    )

    @Option(parsing: .upToNextOption, help: "Runs of N connections in a row, each for ours and for the baseline.")
    var counts: [Int] = [10, 100, 1000]

    @Option(help: "Connections then opened and held at once (0: skip): time to open, memory, query cost, all echo.")
    var held = 1000

    @Option(
        parsing: .upToNextOption,
        help:
            "Client processes (secure-echo hold, through the C ABI and the namespace's keying daemon) that then open `held` connections between them; one run per count given (0: skip)."
    )
    var processes: [Int] = [4]

    @Flag(help: "Skip the in-process hold (the held connections from client processes still run).")
    var noInProcessHold = false

    @Option(
        help: "A command the client processes run under, words split at spaces (for example `heaptrack -o /tmp/h`).")
    var clientWrapper: String?

    @Option(help: "setSecurity + close cycles without connecting, then 5 s: what is left (0: skip).")
    var churn = 10_000

    func validate() throws {
        guard !counts.isEmpty, counts.allSatisfy({ (1...10_000).contains($0) }), (0...10_000).contains(held),
            processes.allSatisfy({ (0...16).contains($0) }), (0...100_000).contains(churn)
        else {
            throw ValidationError("counts and held in 1...10000, processes 0...16, churn 0...100000")
        }
    }

    static let oursPort: UInt16 = 5001
    static let basePort: UInt16 = 5002

    func run() throws {
        try requireRoot()
        try requireESPKernel("new-connection")
        // 1,000 connections in a row leave sockets closing (both ends live in this process) beside 1,000 held.
        raiseDescriptorLimit(to: 65_536)
        Cleanup.installSignalHandlers()
        defer { Cleanup.runAll() }
        print("secure-socket-bench new-connection: kernel \(kernelDescription())")
        print(
            "  two namespaces joined by veth, one private charon per namespace (set_proto_port_transport_sa = yes),"
                + " PSK, IKEv2, ESP \(StrongSwanBackend.espProposals.joined(separator: ","))")
        let (pair, pairToken) = try makePair("ssnc")
        defer { Cleanup.run(pairToken) }
        let ends = try Ends(pair: pair, keying: .strongswan)
        defer { ends.close() }
        guard let backendA = ends.backendA, let backendB = ends.backendB else { throw BenchError("no charon") }

        // Ours: a secured listener on B, echoing every connection it accepts.
        let listener = try TestSocket.make(in: pair.b.namespace, family: .inet, kind: .tcp)
        defer {
            ends.b.release(listener.fd.rawValue)
            listener.closeAbortively()
        }
        try ends.b.setSecurity(listener.fd.rawValue)
        try listener.bind(pair.addressB4, port: Self.oursPort)
        try listener.listen(backlog: 128)
        let oursEcho = EchoServer(listener, release: { ends.b.release($0) })
        defer { oursEcho.stop() }

        // The baseline: a conn in the same charons, child host-to-host transport with global policies for the
        // baseline port only, reqid chosen by charon; a plain listener on B.
        // Identities of its own, so B's charon never picks this conn for ours' IKE SA (nor ours' for it).
        for (vici, local, remote, id, peer) in [
            (backendA.vici, pair.addressA4, pair.addressB4, "base-a.example", "base-b.example"),
            (backendB.vici, pair.addressB4, pair.addressA4, "base-b.example", "base-a.example"),
        ] {
            let child = ChildConfig(
                name: "base", mode: .transport, policies: true, startAction: .none,
                espProposals: StrongSwanBackend.espProposals,
                localTS: [.dynamic(protocol: "tcp", port: id == "base-a.example" ? nil : Self.basePort)],
                remoteTS: [.dynamic(protocol: "tcp", port: id == "base-a.example" ? Self.basePort : nil)])
            try vici.loadConn(
                .initiator(
                    name: "bench-base", local: "\(local)", remote: "\(remote)",
                    localAuth: .psk(id: id), remoteAuth: .psk(id: peer), children: [child]))
        }
        let plain = try TestSocket.make(in: pair.b.namespace, family: .inet, kind: .tcp)
        defer { plain.closeAbortively() }
        try plain.bind(pair.addressB4, port: Self.basePort)
        try plain.listen(backlog: 128)
        let baseEcho = EchoServer(plain, release: { _ in })
        defer { baseEcho.stop() }

        // Warm-up, untimed: both IKE SAs up (the first connection of each kind pays the full IKE exchange).
        do {
            _ = try oneOfOurs(ends, pair)
            _ = try oneBaseline(backendA.vici, pair)
        } catch {
            print("warm-up failed; charon B's log:\n\(backendB.daemon?.logTail(maxBytes: 6000) ?? "")")
            throw error
        }

        print(
            row(
                "N in a row", ["ours ms", "base ms", "ours/base", "ours grow", "base grow", "ours SAs"],
                labelWidth: 22))
        for count in counts {
            var ours: [Double] = []
            var base: [Double] = []
            for _ in 0..<count {
                ours.append(try oneOfOurs(ends, pair))
                base.append(try oneBaseline(backendA.vici, pair))
            }
            let left = try XFRMClient(namespace: pair.a.namespace).states().filter { !$0.isLarval }.count
            print(
                row(
                    "N = \(count)",
                    [
                        format(median(ours) * 1000, 2), format(median(base) * 1000, 2),
                        format(median(ours) / median(base), 2), format(growth(ours), 2),
                        format(growth(base), 2), "\(left)",
                    ], labelWidth: 22))
            if count >= 100 {
                // Where in the run the time goes: a steady climb, or bursts (charon's, the kernel's or the host's
                // own work, which hit the interleaved baseline alike).
                print(
                    "    by tenths of the run, median ms: ours \(tenths(ours).map { format($0, 0) }.joined(separator: " "))"
                        + " | base \(tenths(base).map { format($0, 0) }.joined(separator: " "))"
                        + " | ours/base \(zip(tenths(ours), tenths(base)).map { format($0 / $1, 2) }.joined(separator: " "))"
                )
            }
            summary(
                "new connection over an IKE SA, N = \(count) in a row", ours: "\(format(median(ours) * 1000, 2)) ms",
                baseline: "\(format(median(base) * 1000, 2)) ms (CREATE_CHILD_SA + connect)",
                ratio: format(median(ours) / median(base), 2),
                goal:
                    "≤ 2; growth \(format(growth(ours), 2)) (base \(format(growth(base), 2)));"
                    + " beyond the base's \(format(growth(ours) / growth(base), 2)), ≤ 1.2")
        }
        print(
            "  ms = median per connection; grow = median of the last 10 % over the first 10 % of the run;"
                + " beyond the base's = ours' growth over the baseline's, measured interleaved in the same minutes;"
                + " ours SAs = SAs left in A's kernel after the run (the baseline's IKE SA only: 0 CHILD SAs expected)")
        print(
            "  conns loaded in charon A after the runs: \(try backendA.vici.getConns().count)"
                + " (bench-base and the two responder conns, one per address family, expected)")
        if held > 0, !noInProcessHold {
            try holdMany(ends, pair, charonA: backendA.daemon?.pid, charonB: backendB.daemon?.pid)
        }
        if held > 0, let socket = backendA.daemon?.socketPath {
            for count in processes where count > 0 {
                try holdFromProcesses(count, pair, charonSocket: socket, secret: ends.secret)
            }
        }
        if churn > 0 { try churnWithoutConnecting(ends, pair) }
    }

    /// `processes` client processes (`secure-echo hold`, the C ABI) open `held` connections between them at the
    /// same time, against ours' listener; each echoes on all of its own. They secure their sockets through the
    /// namespace's keying daemon (the first one starts it, with charon A as its charon), which is sampled too: its
    /// resident size once every client has its first connection and once all are held, and its threads.
    private func holdFromProcesses(
        _ processes: Int, _ pair: NamespacePair, charonSocket: String, secret: String
    ) throws {
        let echo = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent().appendingPathComponent(
            "secure-echo"
        ).path
        guard FileManager.default.isExecutableFile(atPath: echo) else {
            print("held from processes: skipped (\(echo) is not built)")
            return
        }
        let folder = try makeTemporaryFolder("ssnc-procs")
        defer { try? FileManager.default.removeItem(atPath: folder) }
        let config = "\(folder)/a.conf"
        try "identity a.example\npsk \"\(secret)\"\ncharon \(charonSocket)\n".write(
            toFile: config, atomically: true, encoding: .utf8)
        chmod(config, 0o600) // the library refuses a keying file that group or others can write
        let each = max(1, held / processes)
        let keydPath = URL(fileURLWithPath: echo).deletingLastPathComponent().appendingPathComponent("wss-keyd").path
        // The namespace's keying daemon, started here (the clients find it and start none), so that its size is
        // known before the first client.
        let keyd = try NamespaceProcess(
            in: pair.a, environment: ["WSS_KEYING_CONFIG": config, "WSS_LOG": "notice,stderr"], [keydPath],
            log: "\(folder)/keyd.log")
        defer {
            keyd.terminate()
            _ = keyd.waitForExit(timeout: 30)
        }
        guard keyd.wait(for: "keying daemon ready", timeout: 20) else {
            throw BenchError("wss-keyd did not start: \(keyd.output)")
        }
        usleep(500_000)
        let daemonIdle = Self.status(keyd.pid, "RssAnon")
        let daemonIdleThreads = Self.status(keyd.pid, "Threads")
        let started = nowNanos()
        // Line-buffered output (stdbuf), so each client's "echoed" is read while it still holds its connections
        // (it lingers 20 s): the daemon is sampled then.
        let clients = try (0..<processes).map { index in
            try NamespaceProcess(
                in: pair.a,
                environment: ["WSS_KEYING_CONFIG": config, "WSS_LOG": "notice,stderr", "WSS_KEYD": keydPath],
                (clientWrapper?.split(separator: " ").map(String.init) ?? ["stdbuf", "-oL"]) + [
                    echo, "hold", "--server", "\(pair.addressB4)", "--port", "\(Self.oursPort)",
                    "--target", "host/b.example", "--connections", "\(each)", "--linger", "20",
                ],
                log: "\(folder)/client-\(index).log")
        }
        // And once each client has its first connection (what the daemon makes once, its threads' allocator arenas
        // included, is paid by then).
        for client in clients { client.wait(for: "after the first connection", timeout: 600) }
        let daemonFirst = Self.status(keyd.pid, "RssAnon")
        // How many connections are up at that moment (the first clients go on opening while the last makes its
        // first): A's SA pairs.
        let connectionsAtFirst = try Self.saPairs(pair)
        var opened = 0.0
        var echoed = 0
        var perConnection: [Int] = []
        var marginal: [Int] = []
        var heap: [Int] = []
        var statuses: [String] = []
        var daemonLine = ""
        var daemonBytes: Int?
        var daemonMarginal: Int?
        for client in clients {
            client.wait(for: "echoed", timeout: 1200)
            statuses += client.output.split(separator: "\n").filter {
                $0.hasPrefix("after the first") || $0.hasPrefix("status:")
            }
            .map { "  client \(client.pid): \($0)" }
            if let line = client.output.split(separator: "\n").first(where: { $0.hasPrefix("resident:") }),
                let bytes = Int(line.split(separator: ":").last?.split(separator: " ").first ?? "")
            {
                perConnection.append(bytes)
            }
            if let line = client.output.split(separator: "\n").first(where: { $0.hasPrefix("marginal:") }),
                let bytes = Int(line.dropFirst(9).split(separator: " ").first ?? "")
            {
                marginal.append(bytes)
            }
            if let line = client.output.split(separator: "\n").first(where: { $0.hasPrefix("heap in use:") }),
                let bytes = Int(line.dropFirst(13).split(separator: " ").first ?? "")
            {
                heap.append(bytes)
            }
            opened = max(opened, Double(nowNanos() - started) / 1e9)
            if let line = client.output.split(separator: "\n").first(where: { $0.hasPrefix("echoed ") }),
                let count = Int(line.dropFirst(7).split(separator: "/").first ?? "")
            {
                echoed += count
            } else {
                // A client that stopped early says why in its last lines.
                statuses += client.output.split(separator: "\n").suffix(4).map {
                    "  client \(client.pid) failed: \($0)"
                }
            }
            if client === clients.last {
                // Every client has echoed and lingers: all connections are held.
                let holding = clients.filter(\.isRunning).count
                let all = Self.status(keyd.pid, "RssAnon")
                daemonBytes = (all - daemonIdle) * 1024 / (each * processes)
                daemonMarginal = (all - daemonFirst) * 1024 / max(1, try Self.saPairs(pair) - connectionsAtFirst)
                daemonLine =
                    "keying daemon (pid \(keyd.pid)): \(daemonIdle) KiB anonymous resident and \(daemonIdleThreads)"
                    + " threads before the first client, \(daemonFirst) KiB once each client had its first connection,"
                    + " \(all) KiB and \(Self.status(keyd.pid, "Threads")) threads with all \(each * processes) held"
                    + " (\(holding)/\(processes) clients still holding): \(daemonBytes ?? 0) bytes per held connection,"
                    + " \(daemonMarginal ?? 0) past the \(connectionsAtFirst) up when each client had its first"
            }
        }
        // Each process releases its connections at exit: let it finish (a signal would leave them to be reclaimed).
        for client in clients { client.waitForExit(timeout: 300) }
        print(
            "held from \(processes) processes: \(each * processes) connections open in \(format(opened, 1)) s"
                + " (all of them held at once), \(echoed)/\(each * processes) echoed; resident bytes per held connection in"
                + " each client process (the library through the C ABI): \(perConnection.map(String.init).joined(separator: ", "))"
                + " (goal ≤ 2048)")
        for item in statuses { print(item) }
        print("  \(daemonLine)")
        if let daemonBytes {
            summary(
                "keying daemon memory per held connection (\(processes) client processes)", ours: "\(daemonBytes) B",
                baseline: "2048 B (goal)", ratio: format(Double(daemonBytes) / 2048, 2), goal: "≤ 1")
        }
        if let daemonMarginal {
            summary(
                "keying daemon memory per held connection past the first ones (\(processes) client processes)",
                ours: "\(daemonMarginal) B", baseline: "2048 B (goal)", ratio: format(Double(daemonMarginal) / 2048, 2),
                goal: "≤ 1")
        }
        summary(
            "\(each * processes) held from \(processes) processes (C ABI, one charon)",
            ours: "\(format(opened, 1)) s, \(echoed) echoed", baseline: "-", ratio: "-", goal: "all echo")
        if let worst = perConnection.max() {
            summary(
                "memory per held connection (client process, anonymous resident)",
                ours: perConnection.map { "\($0) B" }.joined(separator: ", "), baseline: "2048 B (goal)",
                ratio: format(Double(worst) / 2048, 2), goal: "≤ 1")
        }
        if let worst = heap.max() {
            summary(
                "heap in use per held connection (malloc, client processes)",
                ours: heap.map { "\($0) B" }.joined(separator: ", "), baseline: "2048 B (goal)",
                ratio: format(Double(worst) / 2048, 2), goal: "≤ 1")
        }
        if let worst = marginal.max() {
            summary(
                "memory per held connection, second half only (marginal)",
                ours: marginal.map { "\($0) B" }.joined(separator: ", "), baseline: "2048 B (goal)",
                ratio: format(Double(worst) / 2048, 2), goal: "≤ 1")
        }
    }

    /// `churn` sockets secured and closed without connecting (release untimed by the application: the sweep
    /// finds them), then 5 s: SAs, reqid claims, conns and CHILD SAs left.
    private func churnWithoutConnecting(_ ends: Ends, _ pair: NamespacePair) throws {
        func leftovers() throws -> (sas: Int, conns: Int, children: Int) {
            (
                try XFRMClient(namespace: pair.a.namespace).states().filter { !$0.isLarval }.count,
                try (ends.backendA?.vici.getConns() ?? []).filter { $0.contains("-c") }.count,
                try (ends.backendA?.vici.listSAs() ?? []).reduce(0) { $0 + $1.children.count }
            )
        }
        let before = try leftovers()
        let started = nowNanos()
        try pair.a.namespace.perform {
            for _ in 0..<churn {
                let fd = socket(AF_INET, CInt(SOCK_STREAM.rawValue) | CInt(SOCK_CLOEXEC.rawValue), 0)
                guard fd >= 0 else { throw BenchError("socket(): errno \(errno)") }
                try ends.a.setSecurity(fd)
                close(fd)
            }
        }
        let seconds = Double(nowNanos() - started) / 1e9
        usleep(5_000_000)
        let (sas, conns, children) = try leftovers()
        let claims = (try? FileManager.default.contentsOfDirectory(atPath: ends.reqidFolderA))?.count ?? -1
        print(
            "churn: \(churn) set-security + close cycles in \(format(seconds, 1)) s; 5 s later: \(sas) SAs, \(claims) reqid"
                + " claims, \(conns) per-flow conns, \(children) CHILD SAs, \(ends.a.endpointCount) endpoints left"
                + " (before the churn: \(before.sas) SAs, \(before.conns) conns, \(before.children) CHILD SAs)")
        summary(
            "churn: \(churn) set-security + close, then 5 s",
            ours:
                "\(sas - before.sas) SAs, \(claims) claims, \(conns - before.conns) conns, \(children - before.children) children,"
                + " \(ends.a.endpointCount) endpoints left",
            baseline: "-", ratio: "-", goal: "0 left")
    }

    /// `held` connections opened one after another and held at once: time to open, resident memory per
    /// connection (ours and charon's), the query at 10 and at `held` connections against a kernel `GETSA` by
    /// SPI, an echo on every one, then nothing left after release.
    private func holdMany(_ ends: Ends, _ pair: NamespacePair, charonA: pid_t?, charonB: pid_t?) throws {
        raiseDescriptorLimit(to: 65_536)
        let rssBefore = residentKiB(getpid())
        let charonBefore = charonA.map(residentKiB) ?? 0
        var clients: [TestSocket] = []
        var queryAt10 = 0.0
        let started = nowNanos()
        for index in 0..<held {
            let client = try TestSocket.make(in: pair.a.namespace, family: .inet, kind: .tcp)
            client.setTimeouts(8)
            try ends.a.setSecurity(client.fd.rawValue)
            try ends.a.setPeerTargetName(client.fd.rawValue, SocketPeerTargetName(name: "host/b.example"))
            try ends.a.connect(
                client.fd.rawValue, to: IPEndpoint(address: pair.addressB4, port: Self.oursPort))
            clients.append(client)
            if index == 9 { queryAt10 = try queryCost(ends, clients) }
        }
        let opened = Double(nowNanos() - started) / 1e9
        let rssAfter = residentKiB(getpid())
        let charonAfter = charonA.map(residentKiB) ?? 0
        let queryAtHeld = try queryCost(ends, clients)
        let getSA = try getSACost(ends, pair, clients)
        var echoed = 0
        for (index, client) in clients.enumerated() {
            let byte = UInt8(truncatingIfNeeded: index)
            try client.send([byte])
            if (try? client.receiveExactly(1, timeout: 8)) == [byte] { echoed += 1 }
        }
        summary(
            "\(held) connections held at once (1 process)", ours: "\(format(opened, 1)) s, \(echoed) echoed",
            baseline: "-", ratio: "-", goal: "all echo")
        summary(
            "query at 10 / \(held) connections",
            ours: "\(format(queryAt10 * 1e6, 1)) / \(format(queryAtHeld * 1e6, 1)) µs",
            baseline: "\(format(getSA * 1e6, 1)) µs (2 GETSA)", ratio: format(queryAtHeld / getSA, 2), goal: "≤ 1000 µs"
        )
        summary(
            "charon's memory per held connection",
            ours: "\(format(Double(charonAfter - charonBefore) * 1024 / Double(held), 0)) B",
            baseline: "-", ratio: "-", goal: "-")
        print(
            "held connections: \(held) opened in \(format(opened, 1)) s (\(format(opened * 1000 / Double(held), 1)) ms each),"
                + " \(echoed)/\(held) echoed")
        print(
            "  charon A: \(format(Double(charonAfter - charonBefore) * 1024 / Double(held), 0)) bytes resident per held"
                + " connection (this process: \(format(Double(rssAfter - rssBefore) * 1024 / Double(held), 0)) bytes, but it also"
                + " runs B's engine and an echo thread per connection; the library's own figure is the client processes' below)"
        )
        print(
            "  query: \(format(queryAt10 * 1e6, 1)) µs at 10 connections, \(format(queryAtHeld * 1e6, 1)) µs at \(held)"
                + " (goal ≤ 1000 µs; baseline: two GETSA by SPI, \(format(getSA * 1e6, 1)) µs; ratio"
                + " \(format(queryAtHeld / getSA, 2)))")
        for client in clients {
            ends.a.release(client.fd.rawValue)
            client.closeAbortively()
        }
        let releasedAt = nowNanos()
        let deadline = releasedAt + 5_000_000_000
        var left = (sas: -1, conns: -1)
        repeat {
            left = (
                try XFRMClient(namespace: pair.a.namespace).states().filter { !$0.isLarval }.count,
                try (ends.backendA?.vici.getConns() ?? []).filter { $0.contains("-c") }.count
            )
            if left == (0, 0) { break }
            usleep(100_000)
        } while nowNanos() < deadline
        print(
            "  after release: \(left.sas) CHILD SAs in A's kernel, \(left.conns) per-flow conns in charon A (within 5 s)"
        )
        summary(
            "\(held) released connections: CHILD SAs and conns gone",
            ours: "\(format(Double(nowNanos() - releasedAt) / 1e9, 2)) s, \(left.sas) SAs + \(left.conns) conns left",
            baseline: "-", ratio: "-", goal: "0 left, ≤ grace + 1 s")
    }

    /// Median seconds of `engine.query` on a connection picked at random, over 200 calls.
    private func queryCost(_ ends: Ends, _ clients: [TestSocket]) throws -> Double {
        var samples: [Double] = []
        for _ in 0..<200 {
            let fd = clients.randomElement()!.fd.rawValue
            samples.append(
                try timed {
                    let info = try ends.a.query(fd)
                    guard info.flags.contains(.secured) else { throw BenchError("not secured: \(info)") }
                })
        }
        return median(samples)
    }

    /// Median seconds of the kernel lookups the query's floor is: the connection's two SAs by SPI.
    private func getSACost(_ ends: Ends, _ pair: NamespacePair, _ clients: [TestSocket]) throws -> Double {
        let xfrm = try XFRMClient(namespace: pair.a.namespace)
        let ids = try clients.prefix(50).map { client -> (XFRMStateID, XFRMStateID) in
            let info = try ends.a.query(client.fd.rawValue)
            guard let out = info.outboundSA, let into = info.inboundSA else { throw BenchError("no SAs: \(info)") }
            return (out, into)
        }
        var samples: [Double] = []
        for _ in 0..<200 {
            let (out, into) = ids.randomElement()!
            samples.append(
                try timed {
                    _ = try xfrm.getState(out)
                    _ = try xfrm.getState(into)
                })
        }
        return median(samples)
    }

    /// The SA pairs in A's kernel: one per connection held.
    static func saPairs(_ pair: NamespacePair) throws -> Int {
        try XFRMClient(namespace: pair.a.namespace).states().filter { !$0.isLarval }.count / 2
    }

    /// A number field of `/proc/PID/status` (KiB for sizes), 0 when unreadable.
    static func status(_ pid: pid_t, _ field: String) -> Int {
        guard let text = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8),
            let line = text.split(separator: "\n").first(where: { $0.hasPrefix(field + ":") })
        else { return 0 }
        return Int(line.split(whereSeparator: { $0 == " " || $0 == "\t" }).dropFirst().first ?? "") ?? 0
    }

    private func residentKiB(_ pid: pid_t) -> Int {
        guard let text = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8),
            let line = text.split(separator: "\n").first(where: { $0.hasPrefix("VmRSS:") })
        else { return 0 }
        return Int(line.split(separator: " ").dropFirst().first ?? "") ?? 0
    }

    /// The median of each tenth of `values`, in ms, in run order.
    private func tenths(_ values: [Double]) -> [Double] {
        let size = max(1, values.count / 10)
        return stride(from: 0, to: values.count, by: size).map {
            median(Array(values[$0..<min(values.count, $0 + size)])) * 1000
        }
    }

    private func growth(_ values: [Double]) -> Double {
        let tenth = max(1, values.count / 10)
        return median(Array(values.suffix(tenth))) / median(Array(values.prefix(tenth)))
    }

    private func oneOfOurs(_ ends: Ends, _ pair: NamespacePair) throws -> Double {
        let start = nowNanos()
        let client = try TestSocket.make(in: pair.a.namespace, family: .inet, kind: .tcp)
        client.setTimeouts(8)
        defer { client.closeAbortively() }
        try ends.a.setSecurity(client.fd.rawValue)
        try ends.a.setPeerTargetName(client.fd.rawValue, SocketPeerTargetName(name: "host/b.example"))
        try ends.a.connect(client.fd.rawValue, to: IPEndpoint(address: pair.addressB4, port: Self.oursPort))
        try client.send([0x2a])
        guard try client.receiveExactly(1, timeout: 8) == [0x2a] else { throw BenchError("ours: wrong echo") }
        ends.a.release(client.fd.rawValue)
        client.closeAbortively()
        return Double(nowNanos() - start) / 1e9
    }

    private func oneBaseline(_ vici: VICIClient, _ pair: NamespacePair) throws -> Double {
        let start = nowNanos()
        try vici.initiate(child: "base", ike: "bench-base", timeout: .seconds(8))
        let client = try TestSocket.make(in: pair.a.namespace, family: .inet, kind: .tcp)
        client.setTimeouts(8)
        defer { client.closeAbortively() }
        if let error = client.connectOnce(pair.addressB4, port: Self.basePort) {
            throw BenchError("baseline connect: \(error)")
        }
        try client.send([0x2a])
        guard try client.receiveExactly(1, timeout: 8) == [0x2a] else { throw BenchError("baseline: wrong echo") }
        client.closeAbortively()
        _ = try vici.terminate(child: "base", force: true, timeout: .seconds(3))
        return Double(nowNanos() - start) / 1e9
    }
}

/// Accepts connections on a background thread and echoes each one on a thread of its own until the client
/// closes it; then the accepted socket is released (through `release`) and closed. The accept loop ends at
/// ``stop()``.
final class EchoServer: @unchecked Sendable {
    private let stopped = NSLock()
    private var isStopped = false
    private let done = DispatchSemaphore(value: 0)

    init(_ listener: TestSocket, release: @escaping @Sendable (CInt) -> Void) {
        let thread = Thread { [self] in
            defer { done.signal() }
            while !stopped.withLock({ isStopped }) {
                guard let socket = try? listener.accept(timeout: 0.2) else { continue }
                // Each connection on a thread of its own, so a slow close never holds up the next accept.
                Thread.detachNewThread {
                    // Echo until the client closes (held connections stay idle for minutes), then release.
                    socket.setTimeouts(600)
                    while let bytes = try? socket.receive(upTo: 64, timeout: 600), !bytes.isEmpty {
                        try? socket.send(bytes)
                    }
                    release(socket.fd.rawValue)
                    socket.closeAbortively()
                }
            }
        }
        thread.start()
    }

    func stop() {
        stopped.withLock { isStopped = true }
        _ = done.wait(timeout: .now() + 5)
    }
}
