import ArgumentParser
import Foundation
import Keying
import NetnsTestSupport
import SecureSocket
import SystemPackage
import XFRM

/// `setSecurity` + `setPeerTargetName` on a fresh socket, against two bare `setsockopt(IP_XFRM_POLICY)` calls
/// (out + in) on a fresh socket. Socket creation, release and close are outside the timed region; every
/// iteration is timed on its own and the repetition's mean per operation is kept; the median of the
/// repetitions is printed. Variants are interleaved within each repetition so drift hits them alike.
struct WarmPath: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "warm-path",
        abstract: "setSecurity + setPeerTargetName vs two raw setsockopt(IP_XFRM_POLICY) (any kernel, fresh namespace)."
    )

    @Option(help: "Timed iterations per repetition (static keying and the baselines).")
    var iterations = 2_000

    @Option(help: "Timed iterations per repetition with the strongSwan backend (each does a VICI load-conn).")
    var charonIterations = 500

    @Option(help: "Repetitions; the median of the repetitions' means is reported.")
    var repetitions = 5

    @Flag(help: "Skip the strongSwan variant.")
    var noCharon = false

    @Option(parsing: .upToNextOption, help: "Live endpoints held in an engine while one more is measured.")
    var live: [Int] = [10, 10_000]

    func validate() throws {
        guard (1...100_000).contains(iterations), (1...100_000).contains(charonIterations),
            (1...50).contains(repetitions)
        else {
            throw ValidationError("iterations 1...100000, repetitions 1...50")
        }
    }

    /// One measured variant: what is timed on a fresh socket, and what undoes it afterwards (untimed).
    struct Variant {
        var label: String
        var iterations: Int
        var operation: (CInt) throws -> Void
        var undo: (CInt) -> Void
    }

    func run() throws {
        try requireRoot()
        Cleanup.installSignalHandlers()
        defer { Cleanup.runAll() }

        let ns = try TestNamespace(prefix: "sswp")
        let nsToken = Cleanup.add { ns.remove() }
        defer { Cleanup.run(nsToken) }
        // Reqid claims are files (one per secured socket). The library's default folder is under /run, usually
        // a tmpfs; on this kind of machine /run may be a disk file system. Measure both kinds, never in /run.
        let tmpfsParent = "/dev/shm"
        let folder = try makeTemporaryFolder("sswp", in: fileSystemType(tmpfsParent) == "tmpfs" ? tmpfsParent : "/tmp")
        let diskFolder = try makeTemporaryFolder("sswp")
        let folderToken = Cleanup.add {
            try? FileManager.default.removeItem(atPath: folder)
            try? FileManager.default.removeItem(atPath: diskFolder)
        }
        defer { Cleanup.run(folderToken) }
        let folderKinds = (fileSystemType(folder), fileSystemType(diskFolder))
        let reqidFolders =
            "reqid claims in \(folder) (\(folderKinds.0)) and \(diskFolder) (\(folderKinds.1)); "
            + "/run here is \(fileSystemType("/run"))"

        let settings = SocketSecuritySettings.default
        let name = SocketPeerTargetName(name: "host/b.example")

        // Baseline: exactly the policy the engine installs, encoded once, set with two raw setsockopt calls.
        let templates = SecureSocketEngine.templates(for: settings, reqid: 0x4000_0001)
        let outBytes = SocketPolicy.encode(
            XFRMPolicy(selector: .any(.inet), direction: .outbound, templates: templates))
        let inBytes = SocketPolicy.encode(XFRMPolicy(selector: .any(.inet), direction: .inbound, templates: templates))
        func rawSet(_ fd: CInt, _ bytes: [UInt8]) throws {
            let rc = bytes.withUnsafeBytes {
                setsockopt(fd, CInt(IPPROTO_IP), IP_XFRM_POLICY, $0.baseAddress, socklen_t($0.count))
            }
            guard rc == 0 else { throw ValidationError("setsockopt(IP_XFRM_POLICY): errno \(errno)") }
        }

        let staticEngine = try SecureSocketEngine(
            .init(
                keying: try StaticKeyBackend(peers: [], namespace: ns.namespace),
                reqidDirectory: folder + "/static", namespace: ns.namespace))
        let diskEngine = try SecureSocketEngine(
            .init(
                keying: try StaticKeyBackend(peers: [], namespace: ns.namespace),
                reqidDirectory: diskFolder + "/static", namespace: ns.namespace))

        // The same engine with many live endpoints: the cost of one more must not depend on how many exist.
        raiseDescriptorLimit(to: 65_536)
        var liveEngines: [(Int, SecureSocketEngine)] = []
        var held: [CInt] = []
        defer { for fd in held { close(fd) } }
        for count in live {
            let engine = try SecureSocketEngine(
                .init(
                    keying: try StaticKeyBackend(peers: [], namespace: ns.namespace),
                    reqidDirectory: folder + "/live\(count)", namespace: ns.namespace, followEvents: false))
            try ns.namespace.perform {
                for _ in 0..<count {
                    let fd = socket(AF_INET, CInt(SOCK_STREAM.rawValue) | CInt(SOCK_CLOEXEC.rawValue), 0)
                    guard fd >= 0 else { throw ValidationError("socket(): errno \(errno) after \(held.count) held") }
                    held.append(fd)
                    try engine.setSecurity(fd, settings)
                    try engine.setPeerTargetName(fd, name)
                }
            }
            liveEngines.append((count, engine))
        }

        var variants = [
            Variant(
                label: "baseline: setsockopt(IP_XFRM_POLICY) out + in, raw", iterations: iterations,
                operation: { fd in
                    try rawSet(fd, outBytes)
                    try rawSet(fd, inBytes)
                }, undo: { _ in }),
            Variant(
                label: "XFRM SocketPolicy.require (out + in, Swift wrapper)", iterations: iterations,
                operation: { fd in try SocketPolicy.require(templates, on: FileDescriptor(rawValue: fd)) },
                undo: { _ in }),
            Variant(
                label: "engine set+name, StaticKeyBackend, reqids on \(folderKinds.0)", iterations: iterations,
                operation: { fd in
                    try staticEngine.setSecurity(fd, settings)
                    try staticEngine.setPeerTargetName(fd, name)
                },
                undo: { staticEngine.release($0) }),
            Variant(
                label: "engine set+name, StaticKeyBackend, reqids on \(folderKinds.1)", iterations: iterations,
                operation: { fd in
                    try diskEngine.setSecurity(fd, settings)
                    try diskEngine.setPeerTargetName(fd, name)
                },
                undo: { diskEngine.release($0) }),
        ]
        for (count, engine) in liveEngines {
            variants.append(
                Variant(
                    label: "engine set+name, static, \(count) live endpoints (\(folderKinds.0))",
                    iterations: iterations,
                    operation: { fd in
                        try engine.setSecurity(fd, settings)
                        try engine.setPeerTargetName(fd, name)
                    },
                    undo: { engine.release($0) }))
        }

        guard !noCharon else { return try measureAndPrint(variants, in: ns, charon: nil, reqidFolders: reqidFolders) }
        let backend = try StrongSwanBackend.systemOrPrivate(
            credentials: .init(identity: "a.example", method: .psk(randomSecret())), namespace: ns.namespace)
        let charonToken = Cleanup.add { backend.daemon?.stop() }
        defer { Cleanup.run(charonToken) }
        let charonEngine = try SecureSocketEngine(
            .init(
                keying: backend, reqidDirectory: folder + "/charon",
                namespace: ns.namespace))
        variants.append(
            Variant(
                label: "engine set+name, StrongSwanBackend, reqids on \(folderKinds.0)", iterations: charonIterations,
                operation: { fd in
                    try charonEngine.setSecurity(fd, settings)
                    try charonEngine.setPeerTargetName(fd, name)
                },
                undo: { charonEngine.release($0) }))
        try measureAndPrint(variants, in: ns, charon: backend, reqidFolders: reqidFolders)
    }

    func measureAndPrint(
        _ variants: [Variant], in ns: TestNamespace, charon: StrongSwanBackend?,
        reqidFolders: String
    ) throws {
        print("secure-socket-bench warm-path: kernel \(kernelDescription()), namespace \(ns.name)")
        print(
            "  \(repetitions) repetitions; per repetition \(iterations) iterations"
                + (charon != nil ? " (\(charonIterations) with strongSwan)" : "")
                + "; each iteration times one fresh AF_INET TCP socket (socket(), release and close untimed);")
        print("  figure = median over the repetitions of the mean µs per operation; baseline measured in the same run")
        print(
            "  operation: ours = engine.setSecurity(fd, .default) + engine.setPeerTargetName(fd, \"host/b.example\");"
                + " baseline = the same two policies (ESP transport, required) set with two raw setsockopt calls")
        print("  \(reqidFolders)")
        if let charon, let daemon = charon.daemon {
            print(
                "  strongSwan: private charon \(daemon.version.version), pid \(daemon.pid), started in "
                    + "\(format(milliseconds(daemon.startupDuration))) ms")
        }

        // Warm-up (untimed): code paths, allocator, charon's first load-conn.
        for variant in variants {
            _ = try measure(variant, iterations: min(200, variant.iterations), in: ns)
        }
        var means = [[Double]](repeating: [], count: variants.count)
        for _ in 0..<repetitions {
            for (index, variant) in variants.enumerated() {
                means[index].append(try measure(variant, iterations: variant.iterations, in: ns))
            }
        }
        let baseline = median(means[0])
        print(row("operation on a fresh socket", ["µs/op", "min rep", "max rep", "ours/base"]))
        for (index, variant) in variants.enumerated() {
            let value = median(means[index])
            print(
                row(
                    variant.label,
                    [
                        format(value, 2), format(means[index].min()!, 2), format(means[index].max()!, 2),
                        format(value / baseline, 2),
                    ]))
        }
        let liveRows = variants.indices.filter { variants[$0].label.contains("live endpoints") }
        if liveRows.count == 2 {
            let (few, many) = (median(means[liveRows[0]]), median(means[liveRows[1]]))
            summary(
                "set-security + name at \(live[0]) / \(live[1]) live endpoints (static keys)",
                ours: "\(format(few, 2)) / \(format(many, 2)) µs", baseline: "\(format(baseline, 2)) µs (2 setsockopt)",
                ratio: "\(format(few / baseline, 2)) / \(format(many / baseline, 2))",
                goal: "≤ 3 each; \(format(many / few, 2)) apart, ≤ 1.2")
        }
        if charon != nil {
            print(
                "  note: setSecurity makes no call to charon: a socket is offered to peers only once it is seen listening,"
                    + " and an initiator negotiates per flow at connect; reqids come from a block claimed once")
        }
    }

    /// Mean µs per timed operation over `iterations` fresh sockets, all made inside the namespace.
    func measure(_ variant: Variant, iterations: Int, in ns: TestNamespace) throws -> Double {
        try ns.namespace.perform {
            var total: UInt64 = 0
            for _ in 0..<iterations {
                let fd = socket(AF_INET, CInt(SOCK_STREAM.rawValue) | CInt(SOCK_CLOEXEC.rawValue), 0)
                guard fd >= 0 else { throw ValidationError("socket(): errno \(errno)") }
                defer { close(fd) }
                let start = nowNanos()
                try variant.operation(fd)
                total += nowNanos() - start
                variant.undo(fd)
            }
            return Double(total) / Double(iterations) / 1000
        }
    }
}
