import ALE
import IPAddressing
import Keying
import Synchronization
import XFRM

/// What each secured socket holds in the keying backend, by socket cookie: the request it keys with, the
/// registrations to release when it is done (a responder's listen, an initiator's negotiated flows) and, for
/// an accepted connection, the inbound SPI of its own CHILD_SA. Owned by the engine, shared with the event pump.
final class KeyingRegistry: Sendable {
    struct Entry: Sendable {
        var request: KeyingRequest
        var registrations: [KeyingRegistration] = []
        /// An accepted connection's own CHILD_SA (inbound SPI and peer), removed when it closes.
        var ownChild: (spi: UInt32, peer: IPAddress)?
        /// A connected TCP socket's flow, to find an accepted connection's own CHILD_SA and to cover the flow's
        /// `TIME_WAIT` after the socket is gone.
        var flow: KeyedFlow?
    }

    /// An entry by reference: changed in place under the lock, and the dictionary's free buckets cost a pointer
    /// each instead of a whole entry.
    private final class Slot {
        var entry: Entry
        init(_ entry: Entry) { self.entry = entry }
    }

    private let entries = Mutex<[UInt64: Slot]>([:])

    func register(cookie: UInt64, request: KeyingRequest) {
        entries.withLock { $0[cookie] = Slot(Entry(request: request)) }
    }

    func request(cookie: UInt64) -> KeyingRequest? { entries.withLock { $0[cookie]?.entry.request } }

    func add(_ registration: KeyingRegistration, cookie: UInt64) {
        entries.withLock { $0[cookie]?.entry.registrations.append(registration) }
    }

    /// Removes and returns the registrations of `cookie` that `matching` selects.
    func take(cookie: UInt64, where matching: (KeyingRegistration) -> Bool) -> [KeyingRegistration] {
        entries.withLock { table in
            guard let slot = table[cookie] else { return [] }
            let taken = slot.entry.registrations.filter(matching)
            slot.entry.registrations.removeAll(where: matching)
            return taken
        }
    }

    func setFlow(cookie: UInt64, flow: KeyedFlow) { entries.withLock { $0[cookie]?.entry.flow = flow } }

    func setOwnChild(cookie: UInt64, spi: UInt32, peer: IPAddress) {
        entries.withLock { $0[cookie]?.entry.ownChild = (spi, peer) }
    }

    func remove(cookie: UInt64) -> Entry? { entries.withLock { $0.removeValue(forKey: cookie)?.entry } }

    var cookies: [UInt64] { entries.withLock { Array($0.keys) } }
}

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
