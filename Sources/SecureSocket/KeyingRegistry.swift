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
        var registrations = Registrations.none
        /// An accepted connection's own CHILD_SA (inbound SPI and peer), removed when it closes.
        var ownChild: (spi: UInt32, peer: IPAddress)?
        /// A connected TCP socket's flow, to find an accepted connection's own CHILD_SA and to cover the flow's
        /// `TIME_WAIT` after the socket is gone.
        var flow: KeyedFlow?
    }

    /// A socket's registrations: none or one for almost every socket (an initiator's one negotiation, a
    /// listener's one offer), held without an array allocation.
    enum Registrations: Sendable, Sequence {
        case none
        case one(KeyingRegistration)
        case many([KeyingRegistration])

        var all: [KeyingRegistration] {
            switch self {
            case .none: []
            case .one(let only): [only]
            case .many(let list): list
            }
        }

        func makeIterator() -> IndexingIterator<[KeyingRegistration]> { all.makeIterator() }

        mutating func append(_ registration: KeyingRegistration) {
            switch self {
            case .none: self = .one(registration)
            case .one(let first): self = .many([first, registration])
            case .many(var list):
                self = .none
                list.append(registration)
                self = .many(list)
            }
        }

        /// Removes and returns the registrations `matching` selects.
        mutating func take(where matching: (KeyingRegistration) -> Bool) -> [KeyingRegistration] {
            let (taken, kept) = (all.filter(matching), all.filter { !matching($0) })
            switch kept.count {
            case 0: self = .none
            case 1: self = .one(kept[0])
            default: self = .many(kept)
            }
            return taken
        }
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

    /// Stores `registration` with the socket's entry; false when the socket has none any more (it was released
    /// meanwhile): the caller then owns the registration and releases it, or charon keeps what it holds for good.
    func add(_ registration: KeyingRegistration, cookie: UInt64) -> Bool {
        entries.withLock { table in
            guard table[cookie] != nil else { return false }
            table[cookie]?.entry.registrations.append(registration)
            return true
        }
    }

    /// Removes and returns the registrations of `cookie` that `matching` selects.
    func take(cookie: UInt64, where matching: (KeyingRegistration) -> Bool) -> [KeyingRegistration] {
        entries.withLock { table in
            table[cookie]?.entry.registrations.take(where: matching) ?? []
        }
    }

    func setFlow(cookie: UInt64, flow: KeyedFlow) { entries.withLock { $0[cookie]?.entry.flow = flow } }

    func flow(cookie: UInt64) -> KeyedFlow? { entries.withLock { $0[cookie]?.entry.flow } }

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
