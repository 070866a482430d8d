import Synchronization

/// Keys of work in progress, at most `limit` at once.
final class InFlightSet: Sendable {
    private let keys = Mutex<Set<String>>([])
    let limit: Int
    init(limit: Int) { self.limit = limit }

    /// Admits `key` unless it is already in flight or the set is full.
    func admit(_ key: String) -> Bool {
        keys.withLock { set in
            guard !set.contains(key), set.count < limit else { return false }
            set.insert(key)
            return true
        }
    }

    func remove(_ key: String) { keys.withLock { _ = $0.remove(key) } }
}
