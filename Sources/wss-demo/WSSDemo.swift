import ArgumentParser
import Foundation
import NetnsTestSupport
import XFRM

/// The whole product, shown: two namespaces joined by veth, a private charon in each, certificates made for the
/// run, `secure-echo` at both ends (client with a peer target name and a user, server that queries, impersonates
/// and reverts), a wrong-name client refused, `wss-inspect` during the connection, and a capture on the wire.
/// Prints each claim and whether it held; exits 1 if one did not. Needs root and an ESP kernel: run it with
/// `scripts/demo.sh`, which starts it under user-mode-linux.
@main
struct WSSDemo: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "wss-demo", abstract: "Per-socket IPsec with the Winsock secure-socket functions, end to end.")

    @Option(help: "Folder holding secure-echo and wss-inspect (default: this program's).")
    var binaries: String?

    func run() throws {
        if let reason = TierProbe.espUnavailableReason {
            throw ValidationError("this kernel cannot run the demo: \(reason). Use scripts/demo.sh (user-mode-linux).")
        }
        let bin =
            binaries
            ?? URL(fileURLWithPath: CommandLine.arguments[0]).resolvingSymlinksInPath().deletingLastPathComponent().path
        let echo = "\(bin)/secure-echo"
        let inspect = "\(bin)/wss-inspect"
        for tool in [echo, inspect] where !FileManager.default.isExecutableFile(atPath: tool) {
            throw ValidationError("\(tool) is missing: build the secure-echo and wss-inspect products")
        }
        var claims: [(String, Bool)] = []
        func claim(_ text: String, _ holds: Bool) { claims.append((text, holds)) }

        // A tmpfs folder for what the impersonated thread writes (hostfs would hide the thread's uid).
        let shared = "/dev/shm/wss-demo-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: shared, withIntermediateDirectories: true)
        chmod(shared, 0o777)
        defer { try? FileManager.default.removeItem(atPath: shared) }
        let rootOnly = "\(shared)/root-only"
        close(open(rootOnly, O_CREAT | O_WRONLY, 0o600))

        let certificates = try TestCertificates(names: ["a.example", "b.example"])
        defer { certificates.remove() }
        let c = certificates.folder
        let secret = UUID().uuidString
        let aConf = try certificates.writeKeyingFile(for: "a.example", charon: "private")
        let bConf = try certificates.writeKeyingFile(
            for: "b.example", charon: "private",
            extra: ["eap-user alice@EXAMPLE \"\(secret)\""])
        try "user alice@EXAMPLE -> nobody\nid a.example -> daemon\n".write(
            toFile: "\(c)/identity.map", atomically: true, encoding: .utf8)
        chmod("\(c)/identity.map", 0o644)

        let pair = try NamespacePair(prefix: "demo")
        defer { pair.remove() }
        let capture = try PacketCapture(namespace: pair.b, interface: pair.interfaceB, file: "\(c)/veth-b.pcap")
        defer { capture.stop() }
        print(
            "namespaces \(pair.a.name) (10.77.0.1, a.example) and \(pair.b.name) (10.77.0.2, b.example), ECDSA certificates, a private charon in each"
        )

        // The server.
        let server = try NamespaceProcess(
            in: pair.b,
            environment: [
                "WSS_KEYING_CONFIG": bConf, "WSS_IDENTITY_MAP": "\(c)/identity.map", "WSS_LOG": "info,stderr",
            ],
            [
                echo, "server", "--bind", "10.77.0.2", "--port", "27015", "--directory", shared, "--root-only",
                rootOnly,
                "--count", "1",
            ], log: "\(c)/server.log")
        server.wait(for: "listening", timeout: 20)
        let serverText = { server.output }

        // A client that names the wrong server is refused before a single payload byte.
        let wrong = try pair.a.exec(
            [
                "env", "WSS_KEYING_CONFIG=\(aConf)", "WSS_LOG=info,stderr", echo, "client", "--server", "10.77.0.2",
                "--target", "host/mallory.example", "--user", "alice", "--domain", "EXAMPLE",
                "--password", secret, "--message", "WRONG-NAME-PAYLOAD",
            ], timeout: 60, check: false)
        print("---- client asking for host/mallory.example ----\n\(wrong.output)")
        claim(
            "peer name checked: a client requiring host/mallory.example is refused (WSAEACCES)",
            wrong.status != 0 && wrong.output.contains("WSAEACCES"))
        claim(
            "the refusal is logged with its reason and the identity that was required",
            wrong.output.contains("connection refused") && wrong.output.contains("mallory.example"))

        // The real client, holding the connection open so it can be inspected.
        let marker = "SECRET-\(UUID().uuidString)"
        let client = try NamespaceProcess(
            in: pair.a, environment: ["WSS_KEYING_CONFIG": aConf, "WSS_LOG": "info,stderr"],
            [
                echo, "client", "--server", "10.77.0.2", "--target", "host/b.example", "--user", "alice", "--domain",
                "EXAMPLE",
                "--password", secret, "--message", marker, "--hold", "6",
            ], log: "\(c)/client.log")
        let clientText = { client.output }
        client.wait(for: "echo:", timeout: 20)
        // The engine publishes its endpoints within a pump tick: look until the secured one shows (bounded).
        var inspected = try pair.b.exec([inspect, "--json"], timeout: 20, check: false)
        let published = Date().addingTimeInterval(5)
        while Date() < published, !inspected.output.contains("\"state\" : \"secured") {
            usleep(100_000)
            inspected = try pair.b.exec([inspect, "--json"], timeout: 20, check: false)
        }
        let inspectedText = try pair.b.exec([inspect], timeout: 20, check: false).output
        let finish = Date().addingTimeInterval(20)
        while Date() < finish, client.isRunning || server.isRunning { usleep(20_000) }
        print("---- client asking for host/b.example as alice ----\n\(clientText())")
        print("---- server ----\n\(serverText())")
        print("---- wss-inspect (namespace b, during the connection) ----\n\(inspectedText)")

        let clientOutput = clientText()
        let serverOutput = serverText()
        claim("secured and encrypted, as the client's query reports", clientOutput.contains("flags SECURED ENCRYPTED"))
        claim("the client's query names the server it required: b.example", clientOutput.contains("machine=b.example"))
        claim("the echo came back intact", clientOutput.contains("echo: \(marker)"))
        claim(
            "the secured connection is logged with the peer's identity and its SAs",
            clientOutput.contains("connection secured") && clientOutput.contains("peer-identity=b.example")
                && clientOutput.contains("spi-in="))
        claim(
            "secured and encrypted, as the server's query reports, with the peer user",
            serverOutput.contains("flags SECURED ENCRYPTED IMPERSONATED") && serverOutput.contains("user=alice@EXAMPLE")
                && serverOutput.contains("machine=a.example"))
        claim(
            "impersonated: the file written as the peer belongs to nobody (alice's mapped account)",
            serverOutput.contains("impersonated: uid 65534 (nobody)") && serverOutput.contains("owner 65534"))
        claim(
            "impersonated: a root-only file was out of reach",
            serverOutput.contains("root-only file while impersonating: refused"))
        claim("reverted to root", serverOutput.contains("reverted: uid 0"))
        claim(
            "the server's log records the secured connection, the impersonation as nobody and the revert",
            serverOutput.contains("connection secured") && serverOutput.contains("account=nobody")
                && serverOutput.contains("impersonation reverted"))
        claim(
            "wss-inspect saw the secured endpoint and its SAs",
            inspected.status == 0 && inspected.output.contains("\"state\" : \"secured")
                && inspected.output.contains("\"spi\""))

        capture.stop()
        let analysis = try capture.analyse(markers: [Array(marker.utf8), Array("WRONG-NAME-PAYLOAD".utf8)])
        claim(
            "no cleartext on the wire: \(analysis.espPackets) ESP packets, \(analysis.plainTCPPackets) plain TCP packets, payloads absent",
            analysis.espPackets > 0 && analysis.plainTCPPackets == 0 && !analysis.markerFound)
        // The keying daemons the programs started end once their clients are gone and their SAs released (after
        // the close grace period), and their private charons with them: looked for, bounded.
        let ended = Date()
        func left() -> String {
            ["/usr/lib/ipsec/charon", "wss-keyd --exit-when-idle"].map { pattern in
                (try? Command.run(["pgrep", "-f", pattern], check: false).output) ?? ""
            }.joined().trimmingCharacters(in: .whitespacesAndNewlines)
        }
        while Date().timeIntervalSince(ended) < 20, !left().isEmpty { usleep(100_000) }
        claim(
            "the keying daemons and their private charons ended after the programs (within "
                + "\(String(format: "%.1f", Date().timeIntervalSince(ended))) s)",
            left().isEmpty)

        print("\n==== what this run proved ====")
        for (text, holds) in claims { print("[\(holds ? "ok" : "FAILED")] \(text)") }
        let all = claims.allSatisfy(\.1)
        print(all ? "RESULT: every claim held" : "RESULT: a claim did not hold")
        if !all { throw ExitCode.failure }
    }
}
