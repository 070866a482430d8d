import ArgumentParser
import Foundation
import Keying
import NetnsTestSupport
import SecureSocket
import SystemSupport

/// What it costs an engine to know which of its secured sockets are gone, with N held open: the baseline looks at
/// every socket each sweep (an engine that follows no events: its `sweep()` is a full look, as every engine's
/// was each second); the measured engine follows the kernel's socket-destroy notifications, so its sweep only
/// ticks the grace periods under way. Then how long after `close()` each engine released a socket.
struct PresenceBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "presence",
        abstract:
            "The sweep with N secured sockets held: destroy notifications vs a look at every socket (host kernel).")

    @Option(parsing: .upToNextOption, help: "Secured TCP sockets held open by each engine at each point.")
    var counts: [Int] = [100, 1_000]

    @Option(help: "Timed sweeps per engine and point; the median is reported.")
    var sweeps = 50

    @Option(help: "Sockets closed (without release) per engine at the end, to time their release.")
    var closes = 20

    func validate() throws {
        guard !counts.isEmpty, counts.allSatisfy({ (1...20_000).contains($0) }), (5...10_000).contains(sweeps),
            (1...1_000).contains(closes), counts.allSatisfy({ $0 >= closes })
        else { throw ValidationError("counts 1...20000 (at least --closes), sweeps 5...10000, closes 1...1000") }
    }

    func run() throws {
        try requireRoot()
        Cleanup.installSignalHandlers()
        defer { Cleanup.runAll() }
        print("secure-socket-bench presence: kernel \(kernelDescription())")
        print("  baseline: an engine that looks at every secured socket each sweep (no events followed)")
        print("  measured: an engine that follows the kernel's socket-destroy notifications (sock_diag)")
        let namespace = try TestNamespace(prefix: "wsspres")
        let token = Cleanup.add { namespace.remove() }
        defer { Cleanup.run(token) }
        let folder = try makeTemporaryFolder("wss-presence")
        defer { try? FileManager.default.removeItem(atPath: folder) }

        func engine(_ name: String, follows: Bool) throws -> SecureSocketEngine {
            try SecureSocketEngine(
                .init(
                    negotiationTimeout: .seconds(1),
                    keying: try StaticKeyBackend(peers: [], namespace: namespace.namespace),
                    reqidDirectory: "\(folder)/\(name)", namespace: namespace.namespace, followEvents: follows,
                    closeGrace: .zero))
        }
        let looking = try engine("looking", follows: false)
        let notified = try engine("notified", follows: true)
        defer {
            looking.shutdown()
            notified.shutdown()
        }
        for count in counts.sorted() {
            var held: [(SecureSocketEngine, TestSocket)] = []
            for engine in [looking, notified] {
                for _ in 0..<count {
                    let socket = try TestSocket.make(in: namespace.namespace, family: .inet, kind: .tcp)
                    try engine.setSecurity(socket.fd.rawValue)
                    held.append((engine, socket))
                }
            }
            // The notified engine's first sweep looks at every socket once; wait for it (the pump sweeps each second).
            let settled = Deadline(after: .seconds(3))
            let looksAtStart = notified.ownSocketFullLooks
            while notified.ownSocketFullLooks == looksAtStart, !settled.hasPassed { usleep(10_000) }
            let looksBefore = notified.ownSocketFullLooks
            var baseline: [Double] = []
            var measured: [Double] = []
            for _ in 0..<sweeps {
                baseline.append(timed { _ = looking.sweep() })
                measured.append(timed { _ = notified.sweep() })
            }
            let extraLooks = notified.ownSocketFullLooks - looksBefore
            let (base, meas) = (median(baseline), median(measured))
            print(
                "  N=\(count) held: sweep \(format(base * 1e6, 1)) µs looking at every socket, "
                    + "\(format(meas * 1e6, 2)) µs with notifications: ratio \(format(meas / base, 4)) "
                    + "(full looks during the timed sweeps: \(extraLooks))")

            // Release after close(): the notified engine on the kernel's notification, the baseline at its next
            // sweep (the pump would run one within a second; here it runs right after the close).
            for engine in [looking, notified] {
                let closing = held.filter { $0.0 === engine }.prefix(closes)
                var delays: [Double] = []
                for (_, socket) in closing {
                    let cookie = engine.endpoint(socket.fd.rawValue)?.cookie
                    let start = nowNanos()
                    socket.close()
                    if engine === looking { _ = looking.sweep() }
                    let deadline = Deadline(after: .seconds(5))
                    while let cookie, engine.endpoint(cookie: cookie) != nil, !deadline.hasPassed { usleep(100) }
                    delays.append(Double(nowNanos() - start) / 1e6)
                }
                print(
                    "    release after close, \(engine === looking ? "looking (sweep run at once)" : "notified"): "
                        + "median \(format(median(delays), 2)) ms over \(delays.count)")
            }
            for (engine, socket) in held {
                engine.release(socket.fd.rawValue)
                socket.close()
            }
        }
    }
}
