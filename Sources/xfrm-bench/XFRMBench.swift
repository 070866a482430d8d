import ArgumentParser
import Foundation
import IPAddressing
import NetnsTestSupport
import XFRM

/// Install, dump and delete N entries through `XFRMClient` and through `ip -batch`, in the same run, each in a
/// fresh namespace, and print the ratio ours / iproute2 (below 1 means we are faster). Not a test.
@main
struct XFRMBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "xfrm-bench",
        abstract: "XFRMClient vs `ip -batch`: install, dump, delete N global policies or ESP SAs.")

    enum Kind: String, ExpressibleByArgument { case policies, states }

    @Argument(help: "What to install: policies (any kernel) or states (ESP AES-GCM SAs, needs an ESP kernel).")
    var kind: Kind = .policies

    @Option(parsing: .upToNextOption, help: "Entry counts.")
    var counts: [Int] = [1_000, 10_000]

    @Option(help: "Repetitions per measurement; the median is reported.")
    var repetitions: Int = 3

    func run() throws {
        guard geteuid() == 0 else { throw ValidationError("run as root (namespaces, NETLINK_XFRM)") }
        if kind == .states, let reason = TierProbe.espUnavailableReason {
            throw ValidationError("states need an ESP kernel: \(reason); run under scripts/uml/run.sh")
        }
        let kernel =
            (try? String(contentsOfFile: "/proc/sys/kernel/osrelease", encoding: .utf8))?
            .trimmingCharacters(in: .whitespacesAndNewlines) ?? "?"
        print(
            "xfrm-bench \(kind.rawValue): kernel \(kernel)\(TierProbe.insideUML ? " (user-mode-linux)" : ""), "
                + "median of \(repetitions), baseline = iproute2 `ip -batch` in the same run")
        let startup = try startupCost()
        print(
            String(
                format: "iproute2 start-up cost (`ip -n NS -batch /dev/null`): %.1f ms, included in its figures",
                startup * 1000))
        print("N       phase    ours(ms)  iproute2(ms)  ratio ours/ip   [ours one-by-one add (ms)]")
        for n in counts {
            var ours: [String: [Double]] = [:]
            var theirs: [String: [Double]] = [:]
            var single: [Double] = []
            for _ in 0..<repetitions {
                for (phase, seconds) in try measureOurs(n) { ours[phase, default: []].append(seconds) }
                for (phase, seconds) in try measureIproute2(n) { theirs[phase, default: []].append(seconds) }
                single.append(try measureOursOneByOne(n))
            }
            for phase in ["install", "dump", "delete"] {
                let a = median(ours[phase]!)
                let b = median(theirs[phase]!)
                let extra = phase == "install" ? String(format: "   [%.1f]", median(single) * 1000) : ""
                print(
                    String(format: "%-7d ", n) + phase.padding(toLength: 8, withPad: " ", startingAt: 0)
                        + String(format: " %8.1f  %12.1f  %13.2f", a * 1000, b * 1000, a / b) + extra)
            }
        }
    }

    func startupCost() throws -> Double {
        let ns = try TestNamespace(prefix: "bench")
        defer { ns.remove() }
        return median(try (0..<5).map { _ in try timed { try ip(["-n", ns.name, "-batch", "/dev/null"]) } })
    }

    func median(_ values: [Double]) -> Double { values.sorted()[values.count / 2] }

    func address(_ i: Int) -> IPAddress {
        IPAddress(bytes: [10, UInt8((i >> 16) & 0xff), UInt8((i >> 8) & 0xff), UInt8(i & 0xff)])!
    }

    static let local: IPAddress = "192.168.77.1"
    static let key = "0x" + String(repeating: "0123456789abcdef", count: 3).prefix(40)
    static let keyBytes: [UInt8] = (0..<20).map { UInt8([0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef][$0 % 8]) }

    func policy(_ i: Int) -> XFRMPolicy {
        XFRMPolicy(
            selector: .host(Self.local, address(i)), direction: .outbound,
            templates: [XFRMTemplate(reqid: UInt32(i + 1))])
    }

    func state(_ i: Int) -> XFRMState {
        XFRMState(
            source: Self.local, destination: address(i), spi: UInt32(0x1000 + i), reqid: UInt32(i + 1),
            algorithms: [.aesGCM(key: Self.keyBytes)])
    }

    func timed(_ body: () throws -> Void) rethrows -> Double {
        let start = DispatchTime.now().uptimeNanoseconds
        try body()
        return Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9
    }

    func measureOurs(_ n: Int) throws -> [String: Double] {
        let ns = try TestNamespace(prefix: "bench")
        defer { ns.remove() }
        let client = try XFRMClient(namespace: ns.namespace)
        var result: [String: Double] = [:]
        switch kind {
        case .policies:
            let policies = (0..<n).map(policy)
            result["install"] = try timed { try client.addPolicies(policies) }
            var count = 0
            result["dump"] = try timed { count = try client.policies().count }
            precondition(count == n, "dumped \(count) of \(n)")
            result["delete"] = try timed {
                try client.deletePolicies(policies.map { .selector($0.selector, $0.direction) })
            }
            let leftPolicies = try client.policies().count
            precondition(leftPolicies == 0)
        case .states:
            let states = (0..<n).map(state)
            result["install"] = try timed { try client.addStates(states) }
            var count = 0
            result["dump"] = try timed { count = try client.states().count }
            precondition(count == n, "dumped \(count) of \(n)")
            result["delete"] = try timed { try client.deleteStates(states.map(\.id)) }
            let leftStates = try client.states().count
            precondition(leftStates == 0)
        }
        return result
    }

    func measureOursOneByOne(_ n: Int) throws -> Double {
        let ns = try TestNamespace(prefix: "bench")
        defer { ns.remove() }
        let client = try XFRMClient(namespace: ns.namespace)
        switch kind {
        case .policies:
            let policies = (0..<n).map(policy)
            return try timed { for p in policies { try client.addPolicy(p) } }
        case .states:
            let states = (0..<n).map(state)
            return try timed { for s in states { try client.addState(s) } }
        }
    }

    func measureIproute2(_ n: Int) throws -> [String: Double] {
        let ns = try TestNamespace(prefix: "bench")
        defer { ns.remove() }
        let folder = FileManager.default.temporaryDirectory.appendingPathComponent(
            "xfrm-bench-\(getpid())-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: folder) }
        let add = folder.appendingPathComponent("add").path
        let delete = folder.appendingPathComponent("delete").path
        var addLines: [String] = []
        var deleteLines: [String] = []
        for i in 0..<n {
            switch kind {
            case .policies:
                addLines.append(
                    "xfrm policy add src \(Self.local)/32 dst \(address(i))/32 dir out "
                        + "tmpl proto esp reqid \(i + 1) mode transport level required")
                deleteLines.append("xfrm policy delete src \(Self.local)/32 dst \(address(i))/32 dir out")
            case .states:
                addLines.append(
                    "xfrm state add src \(Self.local) dst \(address(i)) proto esp spi \(0x1000 + i) "
                        + "reqid \(i + 1) mode transport aead rfc4106(gcm(aes)) \(Self.key) 128")
                deleteLines.append("xfrm state delete src \(Self.local) dst \(address(i)) proto esp spi \(0x1000 + i)")
            }
        }
        try (addLines.joined(separator: "\n") + "\n").write(toFile: add, atomically: true, encoding: .utf8)
        try (deleteLines.joined(separator: "\n") + "\n").write(toFile: delete, atomically: true, encoding: .utf8)
        let object = kind == .policies ? "policy" : "state"
        var result: [String: Double] = [:]
        result["install"] = try timed { try ip(["-n", ns.name, "-batch", add]) }
        result["dump"] = try timed { try ip(["-n", ns.name, "xfrm", object, "list"]) }
        result["delete"] = try timed { try ip(["-n", ns.name, "-batch", delete]) }
        let client = try XFRMClient(namespace: ns.namespace)
        let left = kind == .policies ? try client.policies().count : try client.states().count
        precondition(left == 0, "iproute2 left \(left) entries")
        return result
    }

    /// Runs `ip` with its output discarded (the dump's text formatting is part of what iproute2 does).
    /// posix_spawn + waitpid: Foundation's `Process.waitUntilExit` polls and would add its own latency.
    func ip(_ arguments: [String]) throws {
        let path = Command.locate("ip")!
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 1, "/dev/null", O_WRONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 2, "/dev/null", O_WRONLY, 0)
        let argv = ([path] + arguments).map { strdup($0) } + [nil]
        defer { for item in argv { free(item) } }
        var pid: pid_t = 0
        let rc = posix_spawn(&pid, path, &actions, nil, argv, environ)
        guard rc == 0 else { throw CommandError.failed(command: "ip", status: rc, output: "posix_spawn failed") }
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
        guard status == 0 else {
            throw CommandError.failed(command: "ip " + arguments.joined(separator: " "), status: status, output: "")
        }
    }
}
