import ArgumentParser
import Foundation
import IPAddressing
import NetnsTestSupport
import SecureSocket
import XFRM

/// `engine.query(fd)` on a secured, connected TCP socket while the client namespace holds N ESP SAs (the
/// connection's pair plus unrelated ones), against `XFRMClient.getState(id)` of the socket's outbound SA (a
/// hash lookup) at the same N. The query reads the SAs with two address-filtered dumps, which the kernel
/// answers by walking the whole SAD, so it grows with N; the lookup does not.
struct QueryBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "query",
        abstract:
            "engine.query at N installed SAs vs XFRMClient.getState (needs an ESP kernel: run under scripts/uml/run.sh)."
    )

    @Option(parsing: .upToNextOption, help: "Total ESP SAs in the client namespace at each measurement point.")
    var counts: [Int] = [100, 10_000]

    @Option(help: "Timed calls per N, over all rounds (each call timed alone); the median is reported.")
    var calls = 300

    @Option(help: "Rounds: each visits every N in turn (SAs added or deleted to reach it).")
    var rounds = 3

    @Option(
        parsing: .upToNextOption,
        help:
            "Keying of the secured connection: static (deterministic) and/or strongswan (the query also asks charon over VICI list-sas)."
    )
    var keying: [Ends.Keying] = [.static, .strongswan]

    func validate() throws {
        guard !keying.isEmpty, !counts.isEmpty, counts.allSatisfy({ (2...200_000).contains($0) }),
            (5...100_000).contains(calls),
            (1...20).contains(rounds)
        else {
            throw ValidationError("counts 2...200000, calls 5...100000, rounds 1...20")
        }
    }

    struct Point {
        var count: Int
        var query: Double
        var get: Double
        var queryP25: Double
        var queryP75: Double
    }

    func run() throws {
        try requireRoot()
        try requireESPKernel("query")
        Cleanup.installSignalHandlers()
        defer { Cleanup.runAll() }
        let counts = Array(Set(self.counts)).sorted()
        print("secure-socket-bench query: kernel \(kernelDescription())")
        print(
            "  one secured TCP connection 10.77.0.1 → 10.77.0.2 over ESP; unrelated AES-GCM ESP SAs added to the client"
                + " namespace (XFRMClient.addStates, batched) up to N in total;")
        print(
            "  \(rounds) rounds, each visiting every N in turn (SAD grown or shrunk to exactly N, settled, 10 untimed calls);"
                + " \(calls) timed calls of each per N in all"
                + " (per round a block of queries, then a block of getState), each timed alone; figure = median µs per call"
        )
        print("  baseline = XFRMClient.getState(outbound SA id), an O(1) hash lookup, same namespace, same N")

        var results: [(Ends.Keying, [Point])] = []
        for keying in self.keying { results.append((keying, try measure(keying, counts))) }

        print(row("keying   N SAs", ["query µs", "p25", "p75", "getState µs", "query/get"], labelWidth: 20))
        for (keying, points) in results {
            for point in points {
                print(
                    row(
                        "\(keying.rawValue.padding(toLength: 10, withPad: " ", startingAt: 0)) \(point.count)",
                        [
                            format(point.query), format(point.queryP25), format(point.queryP75), format(point.get),
                            format(point.query / point.get, 1),
                        ], labelWidth: 20))
            }
        }
        for (keying, points) in results {
            for point in points {
                summary(
                    "query with \(point.count) SAs in the kernel (\(keying.rawValue))",
                    ours: "\(format(point.query)) µs",
                    baseline: "\(format(point.get)) µs (getState)", ratio: format(point.query / point.get, 1),
                    goal: "≤ 1000 µs")
            }
        }
        for (keying, points) in results where points.count >= 2 {
            let first = points.first!
            let last = points.last!
            print(
                "  \(keying.rawValue): query at \(last.count) / at \(first.count) SAs = \(format(last.query / first.query, 2)); "
                    + "getState at \(last.count) / at \(first.count) = \(format(last.get / first.get, 2))")
        }
    }

    func measure(_ keying: Ends.Keying, _ counts: [Int]) throws -> [Point] {
        let (pair, pairToken) = try makePair("ssq")
        defer { Cleanup.run(pairToken) }
        let ends = try Ends(pair: pair, keying: keying)
        defer { ends.close() }
        let sockets = try ends.secureConnection()
        defer { ends.closeConnection(sockets) }
        let fd = sockets.client.fd.rawValue
        let info = try ends.a.query(fd)
        guard info.flags.contains(.secured), let outbound = info.outboundSA else {
            throw BenchError("\(keying): the connection is not secured: \(info)")
        }
        if keying == .strongswan && info.ikeSAID == 0 {
            throw BenchError("strongswan: the query found no IKE SA through VICI: \(info)")
        }
        let xfrm = try XFRMClient(namespace: pair.a.namespace)
        let base = try xfrm.states().count // the connection's own SAs
        guard counts.allSatisfy({ $0 >= base }) else {
            throw BenchError("every count must be at least the \(base) SAs the connection itself has")
        }
        var extras = 0 // unrelated SAs installed now: indices 0..<extras
        var queries = [Int: [Double]]()
        var gets = [Int: [Double]]()
        // Rounds visit every N in turn (the SAD grown or shrunk to exactly N each time), so drift and other load
        // on the machine spread over all points instead of landing on one.
        for round in 0..<rounds {
            for n in counts {
                let wanted = n - base
                let seconds: Double
                if wanted > extras {
                    let extra = (extras..<wanted).map(Self.unrelatedState)
                    seconds = try timed { try xfrm.addStates(extra) }
                    if round == 0 {
                        print("  [\(keying.rawValue)] added \(extra.count) SAs in \(format(seconds * 1000)) ms")
                    }
                } else if wanted < extras {
                    let ids = (wanted..<extras).map { Self.unrelatedState($0).id }
                    seconds = try timed { try xfrm.deleteStates(ids) }
                } else {
                    seconds = 0
                }
                extras = wanted
                let total = try xfrm.states().count
                guard total == n else { throw BenchError("expected \(n) SAs in the client namespace, found \(total)") }
                // The engines' event pumps see one XFRM event per SA added or deleted, charon may be busy: settle.
                usleep(useconds_t((0.3 + min(2.0, seconds)) * 1e6))
                for _ in 0..<10 {
                    _ = try ends.a.query(fd)
                    _ = try xfrm.getState(outbound)
                }
                // Two blocks, not alternating calls: with charon, work it does after answering list-sas would
                // otherwise land in the next getState's time.
                let perRound = (calls + rounds - 1) / rounds
                for call in 0..<perRound {
                    var result: SocketSecurityQueryInfo?
                    queries[n, default: []].append(try timed { result = try ends.a.query(fd) } * 1e6)
                    if call == 0 {
                        guard let result, result.flags == info.flags, result.outboundSA == outbound else {
                            throw BenchError("query changed its answer at \(total) SAs: \(String(describing: result))")
                        }
                    }
                }
                usleep(100_000)
                for _ in 0..<perRound {
                    gets[n, default: []].append(try timed { _ = try xfrm.getState(outbound) } * 1e6)
                }
            }
        }
        return counts.map { n in
            let sorted = queries[n]!.sorted()
            return Point(
                count: n, query: median(sorted), get: median(gets[n]!),
                queryP25: sorted[sorted.count / 4], queryP75: sorted[sorted.count * 3 / 4])
        }
    }

    /// The i-th unrelated SA: 192.168.77.1 → 10.x.y.z (never 10.77.0.0/24), distinct SPI and reqid.
    static func unrelatedState(_ i: Int) -> XFRMState {
        let destination = IPAddress(bytes: [
            10, UInt8(100 + (i >> 16) & 0x7f), UInt8((i >> 8) & 0xff), UInt8(i & 0xff),
        ])!
        return XFRMState(
            source: "192.168.77.1", destination: destination, spi: UInt32(0x10_0000 + i),
            reqid: UInt32(0x10_0000 + i), algorithms: [.aesGCM(key: keyBytes)])
    }

    static let keyBytes: [UInt8] = (0..<20).map { UInt8(truncatingIfNeeded: $0 &* 37 &+ 11) }
}
