import Synchronization
import SystemSupport
import VICI

/// Negotiations started without a waiting `initiate`, and what charon's `log` stream says about them: the lines a
/// waiting `initiate` would have streamed as its `control-log`, and whether one of them ended the negotiation.
///
/// A negotiation's lines are those of its own IKE SA (named after its conn), those of the IKE SA a line starting its
/// child puts it on (`establishing CHILD_SA NAME{ID}`, when charon uses an IKE SA it already had), and those naming
/// its child. The backend starts negotiations this way only where charon makes a new IKE SA for the conn (no IKE SA
/// with that peer, no other negotiation of its own to it under way), so the lines of another negotiation are not
/// taken for its own.
final class NegotiationWatches: Sendable {
    /// What a watched negotiation's lines said.
    struct Outcome: Sendable {
        /// Its lines, oldest first (at most ``linesKept``).
        var lines: [ControlLog] = []
        /// Whether one of them ended it (``CharonLog/endsNegotiation(_:child:)``).
        var ended = false
        /// Whether the `log` stream went away while it was watched (charon gone): its end may not be seen.
        var streamLost = false
    }

    private struct Watch {
        var conn: String
        var ikeSAIDs: Set<Int> = []
        var outcome = Outcome()
    }

    private struct State {
        var byChild: [String: Watch] = [:]
        var byConn: [String: String] = [:]
        var byIKESA: [Int: Set<String>] = [:]
        /// The words of the charon the latest negotiation was started in.
        var words = CharonLog.fallback
    }

    /// As many lines as a waiting `initiate`'s error keeps, and more than a negotiation logs at level 1.
    static let linesKept = 1_000

    private let state = Mutex(State())
    /// Woken when a watched negotiation's lines end it or the stream is lost, and by the backend when a child is
    /// recorded.
    let changed = ChangeSignal()

    /// Starts watching CHILD config `child` of conn `conn` (before it is initiated), in a charon that speaks
    /// `words`.
    func begin(child: String, conn: String, words: CharonLog) {
        state.withLock {
            $0.byChild[child] = Watch(conn: conn)
            $0.byConn[conn] = child
            $0.words = words
        }
    }

    /// Stops watching `child`.
    func end(child: String) {
        state.withLock { state in
            guard let watch = state.byChild.removeValue(forKey: child) else { return }
            state.byConn[watch.conn] = nil
            for id in watch.ikeSAIDs {
                state.byIKESA[id]?.remove(child)
                if state.byIKESA[id]?.isEmpty == true { state.byIKESA[id] = nil }
            }
        }
    }

    /// What `child`'s lines have said so far.
    func outcome(child: String) -> Outcome? {
        state.withLock { $0.byChild[child]?.outcome }
    }

    /// One line of charon's `log` stream.
    func record(_ line: ControlLog) {
        let ended = state.withLock { state -> Bool in
            guard !state.byChild.isEmpty else { return false }
            let words = state.words
            if let id = line.ikeSAID, let child = words.startedChild(line.message), state.byChild[child] != nil {
                state.byChild[child]?.ikeSAIDs.insert(id)
                state.byIKESA[id, default: []].insert(child)
            }
            var concerned = line.ikeSAID.flatMap { state.byIKESA[$0] } ?? []
            if let name = line.ikeSAName, let child = state.byConn[name] { concerned.insert(child) }
            if words.namesAChild(line.message) {
                for child in state.byChild.keys where words.namesChild(line.message, child) { concerned.insert(child) }
            }
            var ended = false
            for child in concerned {
                guard var watch = state.byChild[child], !watch.outcome.ended else { continue }
                if watch.outcome.lines.count < Self.linesKept { watch.outcome.lines.append(line) }
                if words.endsNegotiation(line.message, child: child) {
                    watch.outcome.ended = true
                    ended = true
                }
                state.byChild[child] = watch
            }
            return ended
        }
        if ended { changed.notify() }
    }

    /// The `log` stream went away: every watched negotiation is told.
    func streamLost() {
        state.withLock { state in
            for child in state.byChild.keys { state.byChild[child]?.outcome.streamLost = true }
        }
        changed.notify()
    }
}
