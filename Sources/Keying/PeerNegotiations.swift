import IPAddressing
import Synchronization
import VICI

/// What a backend knows of each peer that decides how a negotiation to it starts: the IKE SAs charon has with it
/// (charon's `ike-updown` events), the backend's negotiations to it under way, and when one last failed.
///
/// A negotiation may start without a waiting `initiate` (``mayStartWithoutWaiting(_:)``) only where charon will make
/// an IKE SA for its conn: no IKE SA with the peer, no other negotiation to it, and no failure with it for
/// ``unsettledSpan`` (the failed IKE SA may still be retransmitting, no `ike-updown` tells of it, and charon would
/// reuse it for an equal conn). Then the lines of that IKE SA are the negotiation's own.
final class PeerNegotiations: Sendable {
    private struct State {
        /// charon's IKE SAs by unique id, with their peer's address as charon writes it.
        var ikeSAs: [Int: String] = [:]
        var underWay: [IPAddress: Int] = [:]
        var unsettledUntil: [IPAddress: ContinuousClock.Instant] = [:]
    }

    private let state = Mutex(State())

    /// How long a peer a negotiation failed with keeps its negotiations on the waiting `initiate`: charon's default
    /// retransmission span (5 tries, 165 s), rounded up.
    static let unsettledSpan: Duration = .seconds(180)

    /// An `ike-updown` event.
    func record(ikeUpdown event: VICIEvent) {
        let up = event.isUp ?? false
        state.withLock { state in
            for ike in event.ikeSAs {
                guard let id = ike.uniqueID else { continue }
                state.ikeSAs[id] = up ? ike.remoteHost : nil
            }
        }
    }

    /// charon's IKE SAs as listed (in any state), added to what the events told.
    func add(listed sas: [IKESAInfo]) {
        state.withLock { state in
            for ike in sas {
                if let id = ike.uniqueID, let host = ike.remoteHost { state.ikeSAs[id] = host }
            }
        }
    }

    /// charon was restarted: it has none of the IKE SAs the events told of (their down events never came).
    func forgetIKESAs() {
        state.withLock { $0.ikeSAs.removeAll() }
    }

    /// Whether the negotiation to `peer` under way (counted by ``negotiating(with:_:)``) is the only one, charon has
    /// no IKE SA with it, and none failed with it lately.
    func mayStartWithoutWaiting(_ peer: IPAddress) -> Bool {
        let text = "\(peer)"
        return state.withLock { state in
            guard state.underWay[peer] == 1 else { return false }
            if let until = state.unsettledUntil[peer], ContinuousClock.now < until { return false }
            return !state.ikeSAs.values.contains(text)
        }
    }

    /// Counts a negotiation to `peer` while `body` runs; a failure leaves the peer unsettled for ``unsettledSpan``.
    func negotiating<T>(with peer: IPAddress, _ body: () throws(KeyingError) -> T) throws(KeyingError) -> T {
        state.withLock { $0.underWay[peer, default: 0] += 1 }
        defer {
            state.withLock { state in
                state.underWay[peer, default: 1] -= 1
                if state.underWay[peer] == 0 { state.underWay[peer] = nil }
            }
        }
        do {
            return try body()
        } catch {
            let now = ContinuousClock.now
            state.withLock { state in
                state.unsettledUntil = state.unsettledUntil.filter { $0.value > now }
                state.unsettledUntil[peer] = now + Self.unsettledSpan
            }
            throw error
        }
    }
}
