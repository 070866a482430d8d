import Synchronization
import SystemSupport
import VICI

/// Negotiations started without a waiting `initiate`, and what charon's `log` stream says about them.
///
/// A negotiation's lines are those of its own IKE SA (named after its conn) and, when its CHILD_SA rides on an IKE SA
/// charon already had (another conn's), those of that IKE SA from the line that starts the child on. Charon runs
/// one exchange at a time per IKE SA as initiator, so no other child of ours is started there meanwhile; a peer's
/// exchange on it can still log a failure, which is then taken for ours (``CharonLog/failureHint(_:)``: it costs
/// time, never a wrong outcome).
final class NegotiationWatches: Sendable {
    private struct Watch {
        var conn: String
        var ikeSAIDs: Set<Int> = []
        var failure: ControlLog?
    }

    private struct State {
        var byChild: [String: Watch] = [:]
        var byConn: [String: String] = [:]
        var byIKESA: [Int: Set<String>] = [:]
        /// The words of the charon the latest negotiation was started in.
        var words = CharonLog.fallback
    }

    private let state = Mutex(State())
    /// Woken when a watched negotiation fails, and by the backend when a child is recorded.
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

    /// The line that said `child`'s negotiation is failing, if one has.
    func failure(child: String) -> ControlLog? {
        state.withLock { $0.byChild[child]?.failure }
    }

    /// One line of charon's `log` stream.
    func record(_ line: ControlLog) {
        let failed = state.withLock { state -> Bool in
            guard !state.byChild.isEmpty else { return false }
            let words = state.words
            if let id = line.ikeSAID, let child = words.startedChild(line.message), state.byChild[child] != nil {
                state.byChild[child]?.ikeSAIDs.insert(id)
                state.byIKESA[id, default: []].insert(child)
            }
            guard words.failureHint(line.message) else { return false }
            var affected = line.ikeSAID.flatMap { state.byIKESA[$0] } ?? []
            if let name = line.ikeSAName, let child = state.byConn[name] { affected.insert(child) }
            var failed = false
            for child in affected where state.byChild[child]?.failure == nil {
                state.byChild[child]?.failure = line
                failed = true
            }
            return failed
        }
        if failed { changed.notify() }
    }
}
