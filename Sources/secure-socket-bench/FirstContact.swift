import ALE
import ArgumentParser
import Foundation
import IPAddressing
import Keying
import NetnsTestSupport
import SecureSocket
import VICI
import XFRM

/// From the connect call to the first echoed byte, starting each time from no IKE SA.
///
/// Ours: per-socket policies and `StrongSwanBackend` (a private charon per namespace, PSK): `engine.connect`
/// negotiates (VICI initiate, waits for the CHILD SA), then connects. Baseline: strongSwan host-to-host
/// transport mode with a global trap policy (`start_action = trap`, `policies = yes`), same PSK, same ESP
/// proposals (`StrongSwanBackend.espProposals`), charon's default IKE proposals as ours, on the same namespaces
/// and kernel: a plain `connect()` triggers the ACQUIRE. Measured with `net.core.xfrm_larval_drop = 1` (the
/// default: the SYN that triggered the ACQUIRE is dropped and TCP retransmits it) and `= 0` (the kernel queues
/// it until the SA exists), plus a reference that negotiates the baseline's conn with VICI `initiate` before
/// `connect()` (ours' order, with global policies); the three rotate round by round.
struct FirstContact: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "first-contact",
        abstract:
            "WSAConnect → first echoed byte vs strongSwan with a global trap policy (needs an ESP kernel: run under scripts/uml/run.sh)."
    )

    @Option(help: "Timed repetitions per variant (after one untimed warm-up each); the median is reported.")
    var repetitions = 10

    @Option(help: "Idle milliseconds before each repetition, after the clean-state check.")
    var settle = 300

    func validate() throws {
        guard (1...100).contains(repetitions), (0...5_000).contains(settle) else {
            throw ValidationError("repetitions 1...100, settle 0...5000 ms")
        }
    }

    static let port: UInt16 = 5001
    /// The baseline's listener: ours' released listener leaves its port covered for `TIME_WAIT` (120 s), so a
    /// plain listener on that port would be refused its SAs.
    static let baselinePort: UInt16 = 5002

    /// One measurement: connect returned, first byte echoed (seconds from the start of the connect call).
    struct Sample {
        var connected: Double
        var echoed: Double
    }

    func run() throws {
        try requireRoot()
        try requireESPKernel("first-contact")
        Cleanup.installSignalHandlers()
        defer { Cleanup.runAll() }
        print("secure-socket-bench first-contact: kernel \(kernelDescription())")
        print(
            "  two namespaces joined by veth (10.77.0.1 → 10.77.0.2), one private charon per namespace, PSK, IKEv2,"
                + " charon's default IKE proposals, ESP \(StrongSwanBackend.espProposals.joined(separator: ","))")
        print(
            "  \(repetitions) timed repetitions per variant after 1 untimed warm-up; each starts with no IKE SA"
                + " (terminated and checked on both sides, kernel SAD empty, then \(settle) ms idle); figure = median ms"
        )

        let (pair, pairToken) = try makePair("ssfc")
        defer { Cleanup.run(pairToken) }
        let secret = randomSecret()

        // Where the time goes: a capture on A's veth, cut by each repetition's wall-clock window.
        let folder = try makeTemporaryFolder("ssfc-capture")
        defer { try? FileManager.default.removeItem(atPath: folder) }
        let capture = try PacketCapture(namespace: pair.a, interface: pair.interfaceA, file: "\(folder)/a.pcap")
        var windows: [ExchangeTimeline.Window] = []
        var cpu: [String: ProcessCPU] = [:]
        let ours = try measureOurs(pair, secret: secret, windows: &windows, cpu: &cpu)
        let baseline = try measureBaseline(pair, secret: secret, windows: &windows, cpu: &cpu)
        capture.stop()
        let packets = try ExchangeTimeline.packets(capture.file, initiator: pair.addressA4)
        let timeline = ExchangeTimeline.phases(packets, windows: windows)

        let oursEcho = median(ours.map(\.echoed))
        print(row("variant", ["connect ms", "echo ms", "min echo", "max echo", "ours/base"], labelWidth: 64))
        func line(_ label: String, _ samples: [Sample]) {
            let echo = median(samples.map(\.echoed))
            print(
                row(
                    label,
                    [
                        format(median(samples.map(\.connected)) * 1000), format(echo * 1000),
                        format(samples.map(\.echoed).min()! * 1000), format(samples.map(\.echoed).max()! * 1000),
                        format(oursEcho / echo, 3),
                    ], labelWidth: 64))
        }
        line("ours: per-socket policy + StrongSwanBackend (engine.connect)", ours)
        line("baseline: global trap policy, xfrm_larval_drop=1 (default)", baseline[.trapDrop]!)
        line("baseline: global trap policy, xfrm_larval_drop=0 (queued)", baseline[.trapQueue]!)
        line("reference: global policies, VICI initiate, then connect()", baseline[.initiate]!)
        let trap = median(baseline[.trapQueue]!.map(\.echoed))
        let initiate = median(baseline[.initiate]!.map(\.echoed))
        summary(
            "first contact: WSAConnect → first echoed byte", ours: "\(format(oursEcho * 1000)) ms",
            baseline: "\(format(trap * 1000)) ms (trap, larval_drop=0)", ratio: format(oursEcho / trap, 2),
            goal: "≤ 1.1")
        summary(
            "first contact, against VICI initiate + connect()", ours: "\(format(oursEcho * 1000)) ms",
            baseline: "\(format(initiate * 1000)) ms (initiate)", ratio: format(oursEcho / initiate, 2), goal: "≤ 1.1")
        print(
            "  where the time goes (capture on A's veth; median ms of each phase, phases in ExchangeTimeline; the"
                + " medians of the phases need not add up to the median total):")
        for line in ExchangeTimeline.report(
            timeline, order: ["ours"] + BaselineVariant.allCases.map(\.rawValue))
        {
            print(line)
        }
        print("  CPU per repetition (mean ms on CPU from the connect call to the echo; /proc/PID/stat, 10-ms ticks):")
        // Not the trap with larval_drop=1: its window is mostly TCP's one-second retransmission wait.
        for variant in ["ours", BaselineVariant.trapQueue.rawValue, BaselineVariant.initiate.rawValue] {
            if let line = cpu[variant]?.summary { print("    \(variant): \(line)") }
        }
        print(
            "  ours/base is ours' median echo time over the baseline's (below 1: ours reaches the first byte sooner);"
                + " the \"ours\" row's own ratio is 1 by definition")
        print(
            "  reference row: the baseline's conn and charons, negotiated the way ours is (VICI initiate, wait,"
                + " then connect), to separate the cost of the VICI path from that of per-socket policies")
        print(
            "  larval_drop=1: the SYN that raised the ACQUIRE is dropped (blackhole route), so connect() waits for"
                + " TCP's first SYN retransmission (initial RTO 1 s)")
        print(
            "  larval_drop=0: the SYN waits in the policy's hold queue; when charon replaces the trap policy with the"
                + " CHILD SA's (same selector), the kernel moves the queue and flushes it at once (xfrm_policy_requeue),"
                + " so the SYN leaves as soon as the SAs exist (the 100 ms hold timer is not what releases it)")
    }

    // MARK: - Ours

    func measureOurs(
        _ pair: NamespacePair, secret: String, windows: inout [ExchangeTimeline.Window],
        cpu: inout [String: ProcessCPU]
    ) throws -> [Sample] {
        let ends = try Ends(pair: pair, keying: .strongswan, secret: secret)
        defer { ends.close() }
        guard let backendA = ends.backendA, let backendB = ends.backendB else { throw BenchError("no charon") }
        let vicis = [backendA.vici, backendB.vici]
        var processes = ProcessCPU([
            ("charon A", backendA.daemon?.pid ?? 0), ("charon B", backendB.daemon?.pid ?? 0),
            ("this process (both engines)", getpid()),
        ])
        defer { cpu["ours"] = processes }

        let listener = try TestSocket.make(in: pair.b.namespace, family: .inet, kind: .tcp)
        defer {
            ends.b.release(listener.fd.rawValue)
            listener.closeAbortively()
        }
        try ends.b.setSecurity(listener.fd.rawValue)
        try listener.bind(pair.addressB4, port: Self.port)
        try listener.listen()

        var samples: [Sample] = []
        var viciListSAs = 0.0
        var viciLoadConn = 0.0
        var forced = 0
        for repetition in 0...repetitions {
            if try waitForClean(pair, vicis: vicis).forced { forced += 1 }
            usleep(useconds_t(settle * 1000)) // let both charons and the event pumps go idle
            let client = try TestSocket.make(in: pair.a.namespace, family: .inet, kind: .tcp)
            client.setTimeouts(8)
            try ends.a.setSecurity(client.fd.rawValue)
            try ends.a.setPeerTargetName(client.fd.rawValue, SocketPeerTargetName(name: "host/b.example"))
            let echo = EchoOnce(listener)
            let cpuStart = processes.sample()
            let wallStart = ExchangeTimeline.now()
            let start = nowNanos()
            let sample: Sample
            do {
                try ends.a.connect(
                    client.fd.rawValue, to: IPEndpoint(address: pair.addressB4, port: Self.port))
                let connected = nowNanos()
                try client.send([0x2a])
                guard try client.receiveExactly(1, timeout: 8) == [0x2a] else { throw BenchError("wrong echo") }
                sample = Sample(connected: Double(connected - start) / 1e9, echoed: Double(nowNanos() - start) / 1e9)
                if repetition > 0 {
                    windows.append(.init(variant: "ours", start: wallStart, end: ExchangeTimeline.now()))
                    processes.add(since: cpuStart)
                }
            } catch {
                client.closeAbortively()
                echo.finish()
                throw BenchError("ours, repetition \(repetition): \(error)")
            }
            if repetition == 0 {
                // Untimed: what ours' VICI round trips cost here, with this IKE SA up (list-sas is what
                // negotiate() runs after initiate; load-conn what it runs before).
                viciListSAs = median(try (0..<15).map { _ in try timed { _ = try backendA.vici.listSAs() } })
                let probe = IKEConnConfig.initiator(
                    name: "bench-probe", local: "%any", remote: "\(pair.addressB4)", localAuth: .psk(id: "a.example"),
                    remoteAuth: .psk(id: "b.example"),
                    children: [ChildConfig(name: "probe", espProposals: StrongSwanBackend.espProposals)])
                viciLoadConn = median(try (0..<15).map { _ in try timed { try backendA.vici.loadConn(probe) } })
                try backendA.vici.unloadConn(name: "bench-probe")
            }
            if repetition == 1 {
                let secured = try ends.a.query(client.fd.rawValue)
                guard secured.flags.contains(.secured), secured.ikeSAID != 0 else {
                    throw BenchError("ours: the connection is not secured by charon's SAs: \(secured)")
                }
                try requireESPTraffic(pair, label: "ours")
            }
            // Tear down without a packet that would need an SA after the IKE SA is gone (it would raise an
            // ACQUIRE and leave a larval state): B resets the connection over ESP first, then A releases.
            echo.finish()
            waitForReset(client)
            ends.a.release(client.fd.rawValue) // terminates the IKE SA (force) and unloads the conn
            client.closeAbortively()
            if repetition > 0 { samples.append(sample) }
        }
        try waitForClean(pair, vicis: vicis)
        print(
            "  ours' VICI round trips to charon A here (median of 15, untimed warm-up run): load-conn "
                + "\(format(viciLoadConn * 1000, 2)) ms, list-sas \(format(viciListSAs * 1000, 2)) ms (engine.connect runs one of each"
                + " around initiate)")
        if forced > 0 {
            print(
                "  note (ours): \(forced) of \(repetitions + 1) repetitions found an IKE SA left over and terminated it first"
            )
        }
        return samples
    }

    // MARK: - Baseline

    /// The baseline's variants: the trap with either larval setting, and (for reference, not a baseline)
    /// the same global-policy conn negotiated through VICI `initiate` before `connect()`, as ours does.
    enum BaselineVariant: String, CaseIterable, CustomStringConvertible {
        case trapDrop, trapQueue, initiate
        var larvalDrop: Int { self == .trapQueue ? 0 : 1 }
        var description: String { "\(rawValue) (xfrm_larval_drop=\(larvalDrop))" }
    }

    func measureBaseline(
        _ pair: NamespacePair, secret: String, windows: inout [ExchangeTimeline.Window],
        cpu: inout [String: ProcessCPU]
    ) throws -> [BaselineVariant: [Sample]] {
        // Fresh charons in the same namespaces (ours' have been stopped), each with one host-to-host
        // transport conn whose child is trapped with global policies.
        var daemons: [CharonDaemon] = []
        var tokens: [Int] = []
        defer { for token in tokens.reversed() { Cleanup.run(token) } }
        for ns in [pair.a, pair.b] {
            let daemon = try CharonDaemon(namespace: ns.namespace)
            tokens.append(Cleanup.add { daemon.stop() })
            daemons.append(daemon)
        }
        let ends: [(local: IPAddress, remote: IPAddress, id: String, peer: String)] = [
            (pair.addressA4, pair.addressB4, "a.example", "b.example"),
            (pair.addressB4, pair.addressA4, "b.example", "a.example"),
        ]
        for (daemon, end) in zip(daemons, ends) {
            try daemon.vici.loadShared(.ike, secret: secret, owners: [], id: "bench-psk")
            let child = ChildConfig(
                name: "host", mode: .transport, policies: true, reqid: nil, startAction: .trap,
                espProposals: StrongSwanBackend.espProposals, localTS: [.dynamic], remoteTS: [.dynamic])
            try daemon.vici.loadConn(
                .initiator(
                    name: "bench", local: "\(end.local)", remote: "\(end.remote)",
                    localAuth: .psk(id: end.id), remoteAuth: .psk(id: end.peer),
                    children: [child]))
        }
        // The traps are global policies now: check they are there.
        for ns in [pair.a, pair.b] {
            let policies = try XFRMClient(namespace: ns.namespace).policies()
            guard policies.contains(where: { !$0.templates.isEmpty }) else {
                throw BenchError("baseline: no trap policy installed in \(ns.name) (\(policies.count) policies)")
            }
        }
        let vicis = daemons.map(\.vici)
        var processes: [BaselineVariant: ProcessCPU] = [:]
        for variant in BaselineVariant.allCases {
            processes[variant] = ProcessCPU([
                ("charon A", daemons[0].pid), ("charon B", daemons[1].pid), ("this process", getpid()),
            ])
        }
        defer { for (variant, measured) in processes { cpu[variant.rawValue] = measured } }
        let listener = try TestSocket.make(in: pair.b.namespace, family: .inet, kind: .tcp)
        defer { listener.closeAbortively() }
        try listener.bind(pair.addressB4, port: Self.baselinePort)
        try listener.listen()

        // Rotate the variants round by round: one untimed warm-up of each first, then `repetitions` of each.
        var samples: [BaselineVariant: [Sample]] = [:]
        var forced = 0
        let variants = BaselineVariant.allCases
        for round in 0..<(variants.count * (repetitions + 1)) {
            let variant = variants[round % variants.count]
            for ns in [pair.a, pair.b] { try setLarvalDrop(variant.larvalDrop, in: ns) }
            if try waitForClean(pair, vicis: vicis).forced { forced += 1 }
            usleep(useconds_t(settle * 1000)) // let both charons and the event pumps go idle
            let client = try TestSocket.make(in: pair.a.namespace, family: .inet, kind: .tcp)
            client.setTimeouts(8) // bounds the blocking connect() too
            let echo = EchoOnce(listener)
            let cpuStart = processes[variant]!.sample()
            let wallStart = ExchangeTimeline.now()
            let start = nowNanos()
            let sample: Sample
            do {
                if variant == .initiate {
                    try daemons[0].vici.initiate(child: "host", ike: "bench", timeout: .seconds(8))
                }
                if let error = client.connectOnce(pair.addressB4, port: Self.baselinePort) {
                    throw BenchError("connect: \(error)")
                }
                let connected = nowNanos()
                try client.send([0x2a])
                guard try client.receiveExactly(1, timeout: 8) == [0x2a] else { throw BenchError("wrong echo") }
                sample = Sample(connected: Double(connected - start) / 1e9, echoed: Double(nowNanos() - start) / 1e9)
                if round >= variants.count {
                    windows.append(.init(variant: variant.rawValue, start: wallStart, end: ExchangeTimeline.now()))
                    processes[variant]!.add(since: cpuStart)
                }
            } catch {
                client.closeAbortively()
                echo.finish()
                throw BenchError("baseline \(variant), round \(round): \(error)")
            }
            if round / variants.count == 1 { try requireESPTraffic(pair, label: "baseline \(variant)") }
            echo.finish() // RST over ESP while the SAs exist
            waitForReset(client)
            client.closeAbortively()
            _ = try? daemons[0].vici.terminate(ike: "bench", force: true, timeout: .seconds(3))
            if round >= variants.count { samples[variant, default: []].append(sample) }
        }
        for ns in [pair.a, pair.b] { try setLarvalDrop(1, in: ns) }
        try waitForClean(pair, vicis: vicis)
        if forced > 0 {
            print(
                "  note (baseline): \(forced) of \(variants.count * (repetitions + 1)) rounds found an IKE SA left over and terminated it first"
            )
        }
        return samples
    }

    // MARK: - Helpers

    /// How a wait for the clean state went: how long, and whether leftover IKE SAs had to be terminated.
    struct Teardown {
        var seconds: Double
        var forced: Bool
    }

    /// Bounded (5 s): no IKE SA in either charon (terminating leftovers by id) and no SA in either kernel SAD.
    @discardableResult
    func waitForClean(_ pair: NamespacePair, vicis: [VICIClient]) throws -> Teardown {
        let clients = try [pair.a, pair.b].map { try XFRMClient(namespace: $0.namespace) }
        let start = nowNanos()
        let deadline = start + 5_000_000_000
        var attempts = 0
        var forced = false
        while true {
            attempts += 1
            var busy: [String] = []
            for (index, vici) in vicis.enumerated() {
                let sas = try vici.listSAs()
                for ike in sas {
                    busy.append("charon \(index): IKE SA \(ike.uniqueID ?? -1) \(ike.state ?? "?")")
                    if attempts % 20 == 5, let id = ike.uniqueID {
                        forced = true
                        _ = try? vici.terminate(ikeID: id, force: true, timeout: .seconds(2))
                    }
                }
            }
            for (index, client) in clients.enumerated() {
                let states = try client.states()
                if !states.isEmpty {
                    busy.append(
                        "namespace \(index): \(states.count) SAs (\(states.prefix(4).map(\.description).joined(separator: ", ")))"
                    )
                }
            }
            if busy.isEmpty { return Teardown(seconds: Double(nowNanos() - start) / 1e9, forced: forced) }
            guard nowNanos() < deadline, attempts < 1_000 else {
                throw BenchError("not clean after 5 s: \(busy.joined(separator: "; "))")
            }
            usleep(10_000)
        }
    }

    /// Sets `net.core.xfrm_larval_drop` (per network namespace) inside `ns` and reads it back.
    func setLarvalDrop(_ value: Int, in ns: TestNamespace) throws {
        let path = "/proc/sys/net/core/xfrm_larval_drop"
        let output = try ns.exec(["sh", "-c", "echo \(value) > \(path) && cat \(path)"], timeout: 10).output
        guard output.trimmingCharacters(in: .whitespacesAndNewlines) == "\(value)" else {
            throw BenchError("xfrm_larval_drop in \(ns.name) reads \(output), expected \(value)")
        }
    }

    /// Waits (at most 2 s) until the peer's reset has reached `socket`.
    func waitForReset(_ socket: TestSocket) {
        let deadline = nowNanos() + 2_000_000_000
        while nowNanos() < deadline {
            var pfd = pollfd(fd: socket.fd.rawValue, events: Int16(POLLIN), revents: 0)
            guard poll(&pfd, 1, 100) > 0 else { continue }
            var byte: UInt8 = 0
            let n = recv(socket.fd.rawValue, &byte, 1, CInt(MSG_DONTWAIT))
            if n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR) { return }
        }
    }

    /// The byte went over ESP: an outbound ESP SA in A has carried packets.
    func requireESPTraffic(_ pair: NamespacePair, label: String) throws {
        let states = try XFRMClient(namespace: pair.a.namespace).states()
        guard states.contains(where: { $0.id.proto == .esp && $0.source == pair.addressA4 && $0.counters.packets > 0 })
        else {
            throw BenchError("\(label): no ESP SA in A carried packets: \(states)")
        }
    }
}

/// Accepts one connection on a background thread, echoes what it reads once, and keeps the accepted socket
/// until ``finish()`` (bounded: 10 s accept, 10 s read).
final class EchoOnce: @unchecked Sendable {
    private let done = DispatchSemaphore(value: 0)
    private let lock = NSLock()
    private var accepted: TestSocket?

    init(_ listener: TestSocket) {
        let thread = Thread { [self] in
            defer { done.signal() }
            guard let socket = try? listener.accept(timeout: 10) else { return }
            lock.withLock { accepted = socket }
            socket.setTimeouts(10)
            if let bytes = try? socket.receive(upTo: 64, timeout: 10), !bytes.isEmpty {
                try? socket.send(bytes)
            }
        }
        thread.start()
    }

    /// Waits for the thread (at most 25 s) and closes the accepted socket.
    func finish() {
        _ = done.wait(timeout: .now() + 25)
        lock.withLock {
            accepted?.closeAbortively()
            accepted = nil
        }
    }
}
