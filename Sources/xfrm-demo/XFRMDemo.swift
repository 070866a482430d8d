import ArgumentParser
import Foundation
import IPAddressing
import NetnsTestSupport
import XFRM

/// Runs the tier-3 scenario and prints what it proves. Needs root and a kernel with ESP: run it through
/// `scripts/demo.sh`, which starts it inside the user-mode-linux kernel.
@main
struct XFRMDemo: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "xfrm-demo",
        abstract: "Proves per-socket IPsec on a real ESP kernel: TCP over ESP, nothing in clear.")

    enum Family: String, ExpressibleByArgument, CaseIterable {
        case ipv4, ipv6, both
    }

    @Option(help: "Address family to run over.")
    var family: Family = .both

    @Option(help: "Payload bytes sent and echoed.")
    var payload: Int = 4096

    func run() throws {
        if let reason = TierProbe.espUnavailableReason {
            throw ValidationError(
                "this kernel cannot run the demo: \(reason). Use scripts/demo.sh, which runs it under user-mode-linux.")
        }
        let kernel =
            (try? String(contentsOfFile: "/proc/sys/kernel/osrelease", encoding: .utf8))?
            .trimmingCharacters(in: .whitespacesAndNewlines) ?? "?"
        print("kernel \(kernel)\(TierProbe.insideUML ? " (user-mode-linux)" : "")")
        let families: [IPAddressFamily] =
            switch family {
            case .ipv4: [.inet]
            case .ipv6: [.inet6]
            case .both: [.inet, .inet6]
            }
        var allHold = true
        for family in families {
            var scenario = ESPTransportScenario(family: family)
            scenario.payloadSize = payload
            let report = try scenario.run()
            print(report)
            allHold = allHold && report.allHold
        }
        print(allHold ? "RESULT: every claim held" : "RESULT: a claim did not hold")
        if !allHold { throw ExitCode.failure }
    }
}
