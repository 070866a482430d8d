import ArgumentParser
import DaemonClient
import Foundation
import IPAddressing
import Keying
import Logging
import NetnsTestSupport
import SecureSocket
import VICI
import XFRM

/// The secure-socket calls through the namespace's keying daemon against the same calls made by an engine in the
/// bench's own process (the named baseline: what every process did before the daemon), interleaved in the same run:
/// same namespace, same charon (the daemon is a second tenant of charon A), same peer (an in-process engine on B
/// with an echoing listener), same proposals.
///
/// Timed per call, rotating between the two: set-security + peer target name on a new socket (then released,
/// untimed); a new connection over an established IKE SA (socket, set-security, name, `WSAConnect`, a 1-byte echo,
/// release, close); the query of an established connection.
struct DaemonPath: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "daemon-path",
        abstract:
            "The calls through the keying daemon vs the same calls in process, same charon and peer (needs an ESP kernel: run under scripts/uml/run.sh)."
    )

    @Option(help: "Timed calls per measure and provider.")
    var count = 100

    func validate() throws {
        guard (1...10_000).contains(count) else { throw ValidationError("count in 1...10000") }
    }

    static let port: UInt16 = 5003

    func run() throws {
        try requireRoot()
        try requireESPKernel("daemon-path")
        raiseDescriptorLimit(to: 65_536)
        Cleanup.installSignalHandlers()
        defer { Cleanup.runAll() }
        print("secure-socket-bench daemon-path: kernel \(kernelDescription())")
        let (pair, pairToken) = try makePair("ssdp")
        defer { Cleanup.run(pairToken) }
        let ends = try Ends(pair: pair, keying: .strongswan)
        defer { ends.close() }
        guard let charonA = ends.backendA?.daemon?.socketPath else { throw BenchError("no charon A") }

        // The baseline: an engine in this process, a tenant of charon A, with the namespace's own reqid claims
        // (the daemon's too, so the two never hand out one reqid twice).
        let credentials = StrongSwanBackend.Credentials(identity: "a.example", method: .psk(ends.secret))
        let inProcess = try SecureSocketEngine(
            .init(
                keying: try StrongSwanBackend(vici: try VICIClient(path: charonA), credentials: credentials),
                namespace: pair.a.namespace))
        defer { inProcess.shutdown() }

        // The daemon: wss-keyd in A, another tenant of charon A, beside this program.
        let folder = try makeTemporaryFolder("ssdp")
        defer { try? FileManager.default.removeItem(atPath: folder) }
        let keyingFile = "\(folder)/keying.conf"
        try "identity a.example\npsk \"\(ends.secret)\"\ncharon \(charonA)\n".write(
            toFile: keyingFile, atomically: true, encoding: .utf8)
        chmod(keyingFile, 0o600)
        let program = try FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")
        let keyd = URL(fileURLWithPath: program).deletingLastPathComponent().appendingPathComponent("wss-keyd").path
        let daemon = try NamespaceProcess(
            in: pair.a, environment: ["WSS_KEYING_CONFIG": keyingFile, "WSS_LOG": "notice,stderr"],
            [keyd, "--address", "wss-bench-keyd"], log: "\(folder)/keyd.log")
        defer { daemon.terminate() }
        guard daemon.wait(for: "keying daemon ready", timeout: 20) else {
            throw BenchError("wss-keyd did not start: \(daemon.output)")
        }
        let throughDaemon = try pair.a.namespace.perform {
            try KeyingDaemonClient(
                name: "wss-bench-keyd", identityMap: nil, logger: Logger(label: "bench.daemon-client"))
        }

        // B: an echoing secured listener.
        let listener = try TestSocket.make(in: pair.b.namespace, family: .inet, kind: .tcp)
        defer {
            ends.b.release(listener.fd.rawValue)
            listener.closeAbortively()
        }
        try ends.b.setSecurity(listener.fd.rawValue)
        try listener.bind(pair.addressB4, port: Self.port)
        try listener.listen(backlog: 128)
        let echo = EchoServer(listener, release: { ends.b.release($0) })
        defer { echo.stop() }
        let peer = IPEndpoint(address: pair.addressB4, port: Self.port)

        let providers: [(String, any SocketSecurityProvider)] = [("in process", inProcess), ("daemon", throughDaemon)]
        // Warm-up, untimed: each tenant's IKE SA up, one connection each kept for the queries.
        var held: [TestSocket] = []
        defer { for (socket, (_, provider)) in zip(held, providers) { release(socket, provider) } }
        for (_, provider) in providers { held.append(try connection(provider, pair, peer)) }

        var setSecurity: [[Double]] = [[], []]
        var newConnection: [[Double]] = [[], []]
        var query: [[Double]] = [[], []]
        for _ in 0..<count {
            for (index, (_, provider)) in providers.enumerated() {
                let socket = try TestSocket.make(in: pair.a.namespace, family: .inet, kind: .tcp)
                setSecurity[index].append(
                    try timed {
                        try provider.setSecurity(socket.fd.rawValue, .default)
                        try provider.setPeerTargetName(socket.fd.rawValue, SocketPeerTargetName(name: "host/b.example"))
                    })
                release(socket, provider)
                newConnection[index].append(
                    try timed {
                        let made = try connection(provider, pair, peer)
                        release(made, provider)
                    })
                query[index].append(try timed { _ = try provider.query(held[index].fd.rawValue, nil) })
            }
        }
        print(row("measure (median)", ["in process", "daemon", "daemon/in"], labelWidth: 44))
        for (label, values, unit, scale) in [
            ("set-security + peer target name", setSecurity, "µs", 1e6),
            ("new connection over an IKE SA", newConnection, "ms", 1e3),
            ("query of an established connection", query, "µs", 1e6),
        ] {
            let (inside, outside) = (median(values[0]), median(values[1]))
            print(
                row(
                    label,
                    [
                        "\(format(inside * scale)) \(unit)", "\(format(outside * scale)) \(unit)",
                        format(outside / inside, 2),
                    ],
                    labelWidth: 44))
            summary(
                "\(label), through the keying daemon", ours: "\(format(outside * scale)) \(unit)",
                baseline: "\(format(inside * scale)) \(unit) (in process)", ratio: format(outside / inside, 2),
                goal: "—")
        }
        print(
            "  \(count) calls each, interleaved; the daemon is wss-keyd in A on charon A (a second tenant), the"
                + " baseline an engine in this process on the same charon; B is an in-process engine")
    }

    /// A secured connection to `peer` made through `provider`, its echo checked.
    private func connection(
        _ provider: any SocketSecurityProvider, _ pair: NamespacePair, _ peer: IPEndpoint
    ) throws -> TestSocket {
        let socket = try TestSocket.make(in: pair.a.namespace, family: .inet, kind: .tcp)
        socket.setTimeouts(8)
        try provider.setSecurity(socket.fd.rawValue, .default)
        try provider.setPeerTargetName(socket.fd.rawValue, SocketPeerTargetName(name: "host/b.example"))
        try provider.connect(socket.fd.rawValue, to: peer, timeout: nil)
        try socket.send([0x2a])
        guard try socket.receiveExactly(1, timeout: 8) == [0x2a] else { throw BenchError("wrong echo") }
        return socket
    }

    private func release(_ socket: TestSocket, _ provider: any SocketSecurityProvider) {
        provider.release(socket.fd.rawValue)
        socket.closeAbortively()
    }
}
