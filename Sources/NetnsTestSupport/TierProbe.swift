import Foundation
import XFRM

/// The three test tiers and what each needs.
public enum TestTier: String, Sendable, CustomStringConvertible {
    /// No privileges.
    case unit = "tier 1 (unit)"
    /// Root on the host kernel: namespaces, veth, NETLINK_XFRM, per-socket policies.
    case hostKernel = "tier 2 (host kernel)"
    /// A kernel with ESP (the user-mode-linux kernel here): real IPsec traffic.
    case espKernel = "tier 3 (ESP kernel)"

    public var description: String { rawValue }
}

/// Probes run once per process and cached: can this process reach a tier?
public enum TierProbe {
    /// Whether failures to reach a tier must fail the run (`CI=true`) instead of skipping.
    public static var mustReachEveryTier: Bool {
        let value = ProcessInfo.processInfo.environment["CI"]?.lowercased()
        return value == "true" || value == "1"
    }

    /// Whether this process runs inside the UML kernel started by `scripts/uml/run.sh`.
    public static var insideUML: Bool { ProcessInfo.processInfo.environment["UML_INSIDE"] == "1" }

    /// nil when the host-kernel tier is reachable; otherwise why not.
    public static var hostKernelUnavailableReason: String? { hostKernelProbe }

    /// nil when this kernel can install ESP states; otherwise why not.
    public static var espUnavailableReason: String? { espProbe }

    private static let hostKernelProbe: String? = {
        guard geteuid() == 0 else { return "needs root (euid is \(geteuid()))" }
        guard Command.locate("ip") != nil else { return "iproute2's `ip` is not installed" }
        do {
            let ns = try TestNamespace(prefix: "probe")
            defer { ns.remove() }
            let client = try XFRMClient(namespace: ns.namespace)
            _ = try client.states()
            return nil
        } catch {
            return "cannot create a namespace and talk NETLINK_XFRM in it: \(error)"
        }
    }()

    private static let espProbe: String? = {
        if let reason = hostKernelProbe { return reason }
        do {
            let ns = try TestNamespace(prefix: "probe")
            defer { ns.remove() }
            let client = try XFRMClient(namespace: ns.namespace)
            let state = XFRMState(
                source: "192.0.2.1", destination: "192.0.2.2", spi: 0x100, reqid: 1,
                algorithms: [.aesGCM(key: [UInt8](repeating: 7, count: 20))])
            try client.addState(state)
            return nil
        } catch {
            return "this kernel cannot install an ESP AES-GCM state: \(error)"
        }
    }()

    /// The package root, found by walking up from a source file until `Package.swift` appears.
    public static func packageRoot(from file: String) -> URL? {
        var url = URL(fileURLWithPath: file).deletingLastPathComponent()
        for _ in 0..<8 {
            if FileManager.default.fileExists(atPath: url.appendingPathComponent("Package.swift").path) { return url }
            url.deleteLastPathComponent()
        }
        return nil
    }

    /// nil when `scripts/uml/run.sh` and the UML kernel are there; otherwise why not.
    public static func umlUnavailableReason(packageRoot: URL?) -> String? {
        guard let root = packageRoot else { return "package root not found" }
        let runner = root.appendingPathComponent("scripts/uml/run.sh").path
        guard FileManager.default.isExecutableFile(atPath: runner) else { return "\(runner) is missing" }
        guard Command.locate("linux.uml") != nil || Command.locate("linux") != nil else {
            return "the user-mode-linux kernel is not installed (apt install user-mode-linux)"
        }
        if let reason = hostKernelProbe { return reason }
        return nil
    }
}
