import Foundation
import IPAddressing
import SystemPackage
import XFRM

/// The tier-3 scenario, shared by the ESP tests (which assert on it) and `xfrm-demo` (which prints it):
/// two namespaces joined by veth, an AES-GCM transport SA pair installed through ``XFRMClient`` in both,
/// a TCP server and client each carrying a per-socket `required` ESP policy with the SAs' reqid, and a
/// packet capture on the server's veth.
///
/// What it measures: the connection completes, both SAs' counters rise, the capture holds ESP and not one
/// plain TCP segment nor a byte of the payload, and once the SAs are deleted a new connection is refused
/// (EAGAIN) and data written on the old one never arrives, instead of leaking in clear.
public struct ESPTransportScenario {
    public struct Report: Sendable, CustomStringConvertible {
        public var family: IPAddressFamily
        public var reqid: UInt32
        public var algorithm: String
        /// connect() calls until the handshake completed (1 when the SAs exist beforehand).
        public var connectAttempts = 0
        /// Bytes the server received and echoed back intact.
        public var echoedBytes = 0
        public var echoMatched = false
        /// Packets counted by the kernel on each SA, in the client's namespace.
        public var outboundSAPackets: UInt64 = 0
        public var inboundSAPackets: UInt64 = 0
        /// What the capture on the server's veth holds.
        public var capturedESPPackets = 0
        public var capturedPlainTCPPackets = 0
        public var payloadVisibleInCapture = true
        /// After deleting the SAs: a new connect's errno and whether late data reached the server.
        public var connectAfterDeletion: Errno?
        public var lateDataDelivered = true
        public var leftoverStates = -1
        public var leftoverPolicies = -1
        public var seconds = 0.0

        /// Every claim, with whether it held.
        public var claims: [(String, Bool)] {
            [
                (
                    "TCP connection completed through the per-socket policies (\(connectAttempts) connect call(s))",
                    connectAttempts > 0
                ),
                ("\(echoedBytes) payload bytes echoed back intact", echoMatched && echoedBytes > 0),
                (
                    "both SAs counted traffic (out \(outboundSAPackets) pkts, in \(inboundSAPackets) pkts)",
                    outboundSAPackets > 0 && inboundSAPackets > 0
                ),
                ("capture on the veth: \(capturedESPPackets) ESP packets", capturedESPPackets > 0),
                ("capture on the veth: \(capturedPlainTCPPackets) plain TCP packets", capturedPlainTCPPackets == 0),
                ("payload bytes absent from the capture", !payloadVisibleInCapture),
                (
                    "after deleting the SAs a new connect() is refused (\(connectAfterDeletion.map { "\($0)" } ?? "it succeeded"))",
                    connectAfterDeletion == .resourceTemporarilyUnavailable
                ),
                (
                    "after deleting the SAs data on the open connection does not arrive (no cleartext fallback)",
                    !lateDataDelivered
                ),
                (
                    "nothing left in the namespaces' SAD/SPD after closing (\(leftoverStates) states, \(leftoverPolicies) policies)",
                    leftoverStates == 0 && leftoverPolicies == 0
                ),
            ]
        }

        public var allHold: Bool { claims.allSatisfy(\.1) }

        public var description: String {
            var lines = [
                "ESP transport over \(family == .inet6 ? "IPv6" : "IPv4"): \(algorithm), reqid \(reqid), "
                    + String(format: "%.2f s", seconds)
            ]
            for (claim, holds) in claims { lines.append("  [\(holds ? "ok" : "FAILED")] \(claim)") }
            return lines.joined(separator: "\n")
        }
    }

    public var family: IPAddressFamily
    public var reqid: UInt32 = 42
    public var payloadSize = 4096

    public init(family: IPAddressFamily) { self.family = family }

    public func run() throws -> Report {
        let started = Date()
        var report = Report(family: family, reqid: reqid, algorithm: "aead rfc4106(gcm(aes)) 160-bit key, 128-bit ICV")
        let pair = try NamespacePair(prefix: "esp")
        defer { pair.remove() }
        let (addressA, addressB) = pair.addresses(family)
        let clientA = try XFRMClient(namespace: pair.a.namespace)
        let clientB = try XFRMClient(namespace: pair.b.namespace)

        // One SA per direction, the same pair in both namespaces, no global policy at all.
        var random = SystemRandomNumberGenerator()
        let keyAB = (0..<20).map { _ in UInt8.random(in: 0...255, using: &random) }
        let keyBA = (0..<20).map { _ in UInt8.random(in: 0...255, using: &random) }
        let aToB = XFRMState(
            source: addressA, destination: addressB, spi: 0x1000, reqid: reqid,
            algorithms: [.aesGCM(key: keyAB)], selector: .host(addressA, addressB), replayWindow: 32)
        let bToA = XFRMState(
            source: addressB, destination: addressA, spi: 0x2000, reqid: reqid,
            algorithms: [.aesGCM(key: keyBA)], selector: .host(addressB, addressA), replayWindow: 32)
        for client in [clientA, clientB] {
            try client.addState(aToB)
            try client.addState(bToA)
        }

        let folder = FileManager.default.temporaryDirectory.appendingPathComponent(
            "esp-scenario-\(getpid())-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: folder) }
        let capture = try PacketCapture(
            namespace: pair.b, interface: pair.interfaceB,
            file: folder.appendingPathComponent("veth-b.pcap").path)
        defer { capture.stop() }

        let template = XFRMTemplate(reqid: reqid)
        let listener = try TestSocket.make(in: pair.b.namespace, family: family, kind: .tcp)
        try SocketPolicy.require([template], on: listener.fd)
        try listener.bind(addressB, port: 0)
        try listener.listen()
        let port = listener.localPort

        let client = try TestSocket.make(in: pair.a.namespace, family: family, kind: .tcp)
        try SocketPolicy.require([template], on: client.fd)
        client.setTimeouts(5)
        report.connectAttempts = try client.connect(addressB, port: port, retryFor: 10)
        let server = try listener.accept(timeout: 5)
        server.setTimeouts(5)

        let marker = "SECRET-PAYLOAD-\(UUID().uuidString)-"
        var payload = Array(String(repeating: marker, count: payloadSize / marker.utf8.count + 1).utf8)
        payload = Array(payload.prefix(payloadSize))
        try client.send(payload)
        let received = try server.receiveExactly(payload.count, timeout: 10)
        try server.send(received)
        let echoed = try client.receiveExactly(payload.count, timeout: 10)
        report.echoedBytes = echoed.count
        report.echoMatched = echoed == payload

        let outbound = try clientA.getState(aToB.id)
        let inbound = try clientA.getState(bToA.id)
        report.outboundSAPackets = outbound.counters.packets
        report.inboundSAPackets = inbound.counters.packets

        // Take the SAs away: nothing may go out in clear.
        for client in [clientA, clientB] {
            try client.deleteState(aToB.id)
            try client.deleteState(bToA.id)
        }
        let late = Array("LATE-\(marker)".utf8)
        try? client.send(late)
        let lateArrived = (try? server.receive(timeout: 1.5)).map { !$0.isEmpty } ?? false
        report.lateDataDelivered = lateArrived
        let second = try TestSocket.make(in: pair.a.namespace, family: family, kind: .tcp)
        try SocketPolicy.require([template], on: second.fd)
        var refusal: Errno? = .resourceTemporarilyUnavailable
        let until = Date().addingTimeInterval(1)
        while Date() < until {
            refusal = second.connectOnce(addressB, port: port)
            if refusal != .resourceTemporarilyUnavailable { break }
            usleep(50_000)
        }
        report.connectAfterDeletion = refusal

        capture.stop()
        let analysis = try capture.analyse(markers: [Array(marker.utf8), late])
        report.capturedESPPackets = analysis.espPackets
        report.capturedPlainTCPPackets = analysis.plainTCPPackets
        report.payloadVisibleInCapture = analysis.markerFound

        // Abortive close: the open connection still holds unsent data that no SA will carry, so a normal
        // close would keep both sockets (and their policies) in FIN_WAIT for minutes.
        for socket in [second, client, server, listener] { socket.closeAbortively() }
        report.leftoverStates = try clientA.states().count + clientB.states().count
        report.leftoverPolicies = try clientA.policies().count + clientB.policies().count
        report.seconds = Date().timeIntervalSince(started)
        return report
    }
}

/// tcpdump on one interface inside a namespace, writing a pcap file; read back with tcpdump too.
public final class PacketCapture: @unchecked Sendable {
    public let file: String
    private let process: Process
    private var stopped = false

    public init(namespace: TestNamespace, interface: String, file: String) throws {
        guard let tcpdump = Command.locate("tcpdump"), let ip = Command.locate("ip") else {
            throw CommandError.notFound("tcpdump or ip")
        }
        self.file = file
        process = Process()
        process.executableURL = URL(fileURLWithPath: ip)
        // --immediate-mode: libpcap otherwise hands packets over in blocks (up to 1 s late), and packets still in a
        // block when tcpdump is interrupted never reach the file: a capture that misses packets proves nothing.
        process.arguments = [
            "netns", "exec", namespace.name, tcpdump, "--immediate-mode", "-i", interface, "-U", "-s", "0", "-n",
            "-w", file,
        ]
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle.nullDevice
        process.standardInput = FileHandle.nullDevice
        try process.run()
        // tcpdump writes the file header once it is capturing.
        let deadline = Date().addingTimeInterval(10)
        while Date() < deadline {
            if let size = try? FileManager.default.attributesOfItem(atPath: file)[.size] as? Int, size >= 24 { break }
            guard process.isRunning else {
                throw CommandError.failed(command: "tcpdump", status: process.terminationStatus, output: "")
            }
            usleep(20_000)
        }
        usleep(300_000)
    }

    public func stop() {
        guard !stopped else { return }
        stopped = true
        if process.isRunning {
            usleep(300_000)
            process.interrupt()
            let deadline = Date().addingTimeInterval(5)
            while process.isRunning && Date() < deadline { usleep(10_000) }
            if process.isRunning { process.terminate() }
        }
        process.waitUntilExit()
    }

    deinit { stop() }

    public struct Analysis: Sendable {
        public var espPackets: Int
        public var plainTCPPackets: Int
        public var markerFound: Bool
        public var summary: String
    }

    /// Counts ESP and plain TCP packets with tcpdump's own decoder and searches the raw file for markers.
    public func analyse(markers: [[UInt8]]) throws -> Analysis {
        let esp = try Command.run(["tcpdump", "-r", file, "-n", "esp"]).output
        let tcp = try Command.run(["tcpdump", "-r", file, "-n", "tcp"]).output
        let all = try Command.run(["tcpdump", "-r", file, "-n"]).output
        let raw = [UInt8]((try? Data(contentsOf: URL(fileURLWithPath: file))) ?? Data())
        let found = markers.contains { marker in raw.firstRange(of: marker) != nil }
        func packetLines(_ text: String) -> Int {
            text.split(separator: "\n").filter { !$0.hasPrefix("reading from") && !$0.isEmpty }.count
        }
        return Analysis(
            espPackets: packetLines(esp), plainTCPPackets: packetLines(tcp), markerFound: found,
            summary: all)
    }

    /// ESP packets by SPI and direction (`source > destination` as tcpdump prints them), from tcpdump's decoder.
    public func espPacketsBySPI() throws -> [UInt32: Int] {
        let output = try Command.run(["tcpdump", "-r", file, "-n", "esp"]).output
        var counts: [UInt32: Int] = [:]
        for line in output.split(separator: "\n") {
            guard let start = line.range(of: "ESP(spi=0x") else { continue }
            let digits = line[start.upperBound...].prefix { $0.isHexDigit }
            if let spi = UInt32(digits, radix: 16) { counts[spi, default: 0] += 1 }
        }
        return counts
    }
}
