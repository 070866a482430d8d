import Foundation
import IPAddressing
import NetnsTestSupport

/// Where a first contact's time goes, read from a capture on the initiator's veth: each repetition's window (wall
/// clock, as the capture's timestamps are) is cut at the first IKE_SA_INIT request and answer, the first IKE_AUTH
/// request and answer, and the first ESP packet the initiator sends.
///
/// | phase | what runs |
/// |---|---|
/// | call → IKE_SA_INIT | the caller's path into charon (VICI `load-conn` and `initiate`, or the kernel's ACQUIRE) and charon's start of the IKE SA |
/// | IKE_SA_INIT round trip | the responder's charon (its key exchange) and the wire |
/// | IKE_SA_INIT answer → IKE_AUTH | the initiator's charon (its key exchange, keys, AUTH payload) |
/// | IKE_AUTH round trip | the responder's charon (authentication, its CHILD_SA installed) |
/// | IKE_AUTH answer → first ESP | the initiator's charon installing the SAs, then the caller (VICI answer, pinning, `connect()`), or the kernel's queued SYN |
/// | first ESP → echo | the TCP handshake and the echo, under ESP |
struct ExchangeTimeline {
    /// One timed repetition, in wall-clock seconds.
    struct Window {
        var variant: String
        var start: Double
        var end: Double
    }

    static let phaseNames = [
        "call → IKE_SA_INIT", "IKE_SA_INIT round trip", "IKE_SA_INIT answer → IKE_AUTH", "IKE_AUTH round trip",
        "IKE_AUTH answer → first ESP", "first ESP → echo",
    ]

    /// Wall-clock seconds (the capture's timestamps are `CLOCK_REALTIME`).
    static func now() -> Double {
        var now = timespec()
        clock_gettime(CLOCK_REALTIME, &now)
        return Double(now.tv_sec) + Double(now.tv_nsec) / 1e9
    }

    struct Packet {
        enum Kind { case ikeInit, ikeAuth, esp, other }
        var time: Double
        var kind: Kind
        var fromInitiator: Bool
    }

    /// The packets of `file` as tcpdump decodes them (`-tt`: seconds since the epoch).
    static func packets(_ file: String, initiator: IPAddress) throws -> [Packet] {
        let output = try Command.run(["tcpdump", "-r", file, "-n", "-tt"]).output
        let initiator = "\(initiator)"
        return output.split(separator: "\n").compactMap { line in
            guard let space = line.firstIndex(of: " "), let time = Double(line[..<space]),
                let ip = line.range(of: " IP "), let arrow = line.range(of: " > ", range: ip.upperBound..<line.endIndex)
            else { return nil }
            // `10.77.0.1.500` for UDP, `10.77.0.1` for ESP.
            let source = line[ip.upperBound..<arrow.lowerBound]
            let kind: Packet.Kind =
                line.contains("ikev2_init")
                ? .ikeInit
                : line.contains("ikev2_auth") ? .ikeAuth : line.contains("ESP(spi=") ? .esp : .other
            return Packet(
                time: time, kind: kind, fromInitiator: source == initiator || source.hasPrefix(initiator + "."))
        }
    }

    /// Each window's six phases in milliseconds, by variant; a window whose capture lacks a step is skipped.
    static func phases(_ packets: [Packet], windows: [Window]) -> [String: [[Double]]] {
        var result: [String: [[Double]]] = [:]
        for window in windows {
            let inside = packets.filter { $0.time >= window.start && $0.time <= window.end }
            func first(_ kind: Packet.Kind, fromInitiator: Bool, after: Double) -> Double? {
                inside.first { $0.kind == kind && $0.fromInitiator == fromInitiator && $0.time >= after }?.time
            }
            guard let initRequest = first(.ikeInit, fromInitiator: true, after: window.start),
                let initAnswer = first(.ikeInit, fromInitiator: false, after: initRequest),
                let authRequest = first(.ikeAuth, fromInitiator: true, after: initAnswer),
                let authAnswer = first(.ikeAuth, fromInitiator: false, after: authRequest),
                let esp = first(.esp, fromInitiator: true, after: authAnswer)
            else { continue }
            let marks = [window.start, initRequest, initAnswer, authRequest, authAnswer, esp, window.end]
            result[window.variant, default: []].append(zip(marks, marks.dropFirst()).map { ($1 - $0) * 1000 })
        }
        return result
    }

    /// One line per variant: the median of each phase, and how many windows it had.
    static func report(_ phases: [String: [[Double]]], order: [String]) -> [String] {
        order.compactMap { variant in
            guard let rows = phases[variant], !rows.isEmpty else { return nil }
            let medians = phaseNames.indices.map { index in median(rows.map { $0[index] }) }
            return "  \(variant) (\(rows.count) repetitions): "
                + zip(phaseNames, medians).map { "\($0) \(format($1))" }.joined(separator: " | ")
        }
    }
}
