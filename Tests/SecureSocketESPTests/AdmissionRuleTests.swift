import Foundation
import NetnsTestSupport
import TierTesting
import XCTest

/// Tier 3: what the administrator's rules let one local user do through the keying daemon. The keying file admits
/// uid 65534 with `peers=b.example insecure=no`: its applications (the C ABI, no capabilities) may reach b.example
/// by name and nothing else; a name for another identity, a connection without a name, `ALLOW_INSECURE` and a
/// listener are refused with `WSAEACCES` (the listener fails closed: a peer's connection never gets SAs), each
/// naming the rule. Root, in the same namespace, is not limited.
final class AdmissionRuleTests: XCTestCase {
    func testAUsersRuleLimitsItsPeersAndSettings() throws {
        try inESPKernel(self, timeout: 300) {
            let root = try XCTUnwrap(TierProbe.packageRoot(from: "\(#filePath)"))
            let programs = try CPrograms(["CModules/CSecureSocketABI/test-programs/rule_probe.c"], packageRoot: root)
            defer { programs.remove() }
            let secret = UUID().uuidString
            let keying = try [
                programs.writeKeyingFile(
                    "a",
                    [
                        "identity a.example", "psk \"\(secret)\"", "charon private",
                        "client-user 65534 peers=b.example insecure=no",
                    ]),
                programs.writeKeyingFile(
                    "b",
                    [
                        "identity b.example", "psk \"\(secret)\"", "charon private", "negotiation-timeout 5",
                        "client-user 65534",
                    ]),
            ]
            let pair = try NamespacePair(prefix: "rule")
            defer { pair.remove() }
            let level = ProcessInfo.processInfo.environment["WSS_TEST_LOG"] ?? "info"
            let daemons = try [pair.a, pair.b].enumerated().map { index, namespace in
                try programs.startDaemon(in: namespace, keying: keying[index], log: level)
            }
            defer { for daemon in daemons { daemon.terminate() } }
            for daemon in daemons { XCTAssertTrue(daemon.output.contains("keying daemon ready"), daemon.output) }

            let probe = programs.program("rule_probe")
            let server = try NamespaceProcess(
                in: pair.b, environment: ["WSS_LOG": "\(level),stderr"],
                CPrograms.asNobody([probe, "listen", "\(pair.addressB4)", "27018", "60"]),
                log: "\(programs.folder)/server.log")
            defer { server.terminate() }
            XCTAssertTrue(server.wait(for: "listening", timeout: 20), server.output)

            func run(_ namespace: TestNamespace, _ arguments: [String], asNobody: Bool = true) throws -> String {
                let command = [probe] + arguments
                return try namespace.exec(asNobody ? CPrograms.asNobody(command) : command, timeout: 60, check: false)
                    .output
            }
            let b = "\(pair.addressB4)"
            XCTAssertTrue(try run(pair.a, ["insecure"]).contains("insecure: 10013"), "ALLOW_INSECURE refused")
            XCTAssertTrue(try run(pair.a, ["insecure"], asNobody: false).contains("insecure: 0"), "root may")
            XCTAssertTrue(
                try run(pair.a, ["name", "host/c.example"]).contains("name: 10013"), "an identity not listed")
            XCTAssertTrue(try run(pair.a, ["name", "host/b.example"]).contains("name: 0"), "the listed identity")
            XCTAssertTrue(try run(pair.a, ["connect", b, "27018"]).contains("connect: 10013"), "no name: refused")
            let allowed = try run(pair.a, ["connect", b, "27018", "host/b.example"])
            XCTAssertTrue(allowed.contains("connect: 0"), "b.example by name is reached: \(allowed)")

            // nobody's listener in a is never offered to peers: a connection from b gets no SAs.
            let listener = try NamespaceProcess(
                in: pair.a, environment: ["WSS_LOG": "\(level),stderr"],
                CPrograms.asNobody([probe, "listen", "\(pair.addressA4)", "27019", "30"]),
                log: "\(programs.folder)/listener.log")
            defer { listener.terminate() }
            XCTAssertTrue(listener.wait(for: "listening", timeout: 20), listener.output)
            XCTAssertTrue(daemons[0].wait(for: "responder refused", timeout: 10), daemons[0].output)
            let refused = try run(pair.b, ["connect", "\(pair.addressA4)", "27019", "host/a.example"])
            XCTAssertFalse(refused.contains("connect: 0"), "a refused listener gets no connection: \(refused)")

            let log = daemons[0].output
            print("wss-keyd a:\n\(log.suffix(4000))")
            XCTAssertTrue(log.contains("client-user rule for 65534 (line 4)"), "the errors name the rule")
        }
    }
}
