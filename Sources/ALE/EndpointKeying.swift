import IPAddressing
import Keying

/// What a secured socket holds in the keying backend: the request it keys with, the registrations to release
/// when it is done (a responder's listen, an initiator's negotiated flows), a connected socket's flow and, for an
/// accepted connection, its own CHILD_SA. Part of the socket's one record (``Endpoint/keying``), changed under the
/// endpoint table's lock with the rest of it.
public struct EndpointKeying: Sendable {
    public var request: KeyingRequest
    public var registrations = Registrations.none
    /// An accepted connection's own CHILD_SA (inbound SPI and peer), removed when it closes.
    public var ownChild: (spi: UInt32, peer: IPAddress)?
    /// A connected TCP socket's flow, to find an accepted connection's own CHILD_SA and to cover the flow's
    /// `TIME_WAIT` after the socket is gone.
    public var flow: KeyedFlow?

    public init(request: KeyingRequest) { self.request = request }

    /// A socket's registrations: none or one for almost every socket (an initiator's one negotiation, a
    /// listener's one offer), held without an array allocation.
    public enum Registrations: Sendable, Sequence {
        case none
        case one(KeyingRegistration)
        case many([KeyingRegistration])

        public var all: [KeyingRegistration] {
            switch self {
            case .none: []
            case .one(let only): [only]
            case .many(let list): list
            }
        }

        public func makeIterator() -> IndexingIterator<[KeyingRegistration]> { all.makeIterator() }

        public mutating func append(_ registration: KeyingRegistration) {
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
        public mutating func take(where matching: (KeyingRegistration) -> Bool) -> [KeyingRegistration] {
            let (taken, kept) = (all.filter(matching), all.filter { !matching($0) })
            switch kept.count {
            case 0: self = .none
            case 1: self = .one(kept[0])
            default: self = .many(kept)
            }
            return taken
        }
    }
}

// The keying part of a socket's record, read and changed in place under the table's lock.
extension EndpointTable {
    /// The request the socket keys with; nil for an unknown socket or one that keys with nothing.
    public func keyingRequest(cookie: UInt64) -> KeyingRequest? { read(cookie: cookie) { $0.keying?.request } ?? nil }

    /// Stores `registration` with the socket's record; false when the socket has none any more (it was released
    /// meanwhile), keys with nothing, or no longer is what `still` asks (checked under the same lock): the caller
    /// then owns the registration and releases it, or charon keeps what it holds for good.
    public func addRegistration(
        _ registration: KeyingRegistration, cookie: UInt64, still: (borrowing Endpoint) -> Bool = { _ in true }
    ) -> Bool {
        update(cookie: cookie) { endpoint -> Bool in
            guard endpoint.keying != nil, still(endpoint) else { return false }
            endpoint.keying?.registrations.append(registration)
            return true
        } ?? false
    }

    /// Removes and returns the socket's registrations that `matching` selects.
    public func takeRegistrations(
        cookie: UInt64, where matching: (KeyingRegistration) -> Bool = { _ in true }
    ) -> [KeyingRegistration] {
        update(cookie: cookie) { $0.keying?.registrations.take(where: matching) ?? [] } ?? []
    }

    /// Notes a connected TCP socket's flow (nothing for a socket that keys with nothing).
    public func setFlow(_ flow: KeyedFlow, cookie: UInt64) { update(cookie: cookie) { $0.keying?.flow = flow } }

    /// The flow noted for the socket.
    public func flow(cookie: UInt64) -> KeyedFlow? { read(cookie: cookie) { $0.keying?.flow } ?? nil }

    /// Notes an accepted connection's own CHILD_SA.
    public func setOwnChild(spi: UInt32, peer: IPAddress, cookie: UInt64) {
        update(cookie: cookie) { $0.keying?.ownChild = (spi, peer) }
    }
}
