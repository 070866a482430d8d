import Foundation
import Synchronization
import VICI

/// The peer certificate found for each IKE SA, by charon's unique id (never reused while charon runs), so that
/// `list-certs` runs once per IKE SA and a certificate charon's 32-slot cache evicts later is still known.
///
/// Only decisions are kept (``PeerCertificateLookup/identified(_:)`` and ``PeerCertificateLookup/ambiguous(_:)``):
/// a `list-certs` that failed, or found nothing (charon caches a verified certificate when its lock allows, so it
/// may come a moment later), is tried again at the next query. Bounded: the oldest entries go first once
/// ``capacity`` IKE SAs are known.
final class PeerCertificateCache: Sendable {
    static let capacity = 4096

    private struct State {
        var lookups: [UInt64: PeerCertificateLookup] = [:]
        var order: [UInt64] = []
    }

    private let state = Mutex(State())
    let selector: PeerCertificateSelector

    init(selector: PeerCertificateSelector) {
        self.selector = selector
    }

    /// The lookup for IKE SA `ikeSAID` whose `remote-id` is `remoteIdentity`, authenticated at `authenticatedAt`
    /// (the certificate must have been valid then); `candidates` fetches charon's certificates for that identity
    /// when the IKE SA is not known yet (its error is passed on, nothing cached).
    func lookup<Failure: Error>(
        ikeSAID: UInt64, remoteIdentity: String, authenticatedAt: Date,
        candidates: () throws(Failure) -> [[UInt8]]
    ) throws(Failure) -> PeerCertificateLookup {
        if let known = state.withLock({ $0.lookups[ikeSAID] }) { return known }
        let found = selector.select(
            try candidates(), remoteIdentity: remoteIdentity, authenticatedAt: authenticatedAt)
        if case .notFound = found { return found }
        state.withLock { state in
            guard state.lookups.updateValue(found, forKey: ikeSAID) == nil else { return }
            state.order.append(ikeSAID)
            while state.order.count > Self.capacity { state.lookups[state.order.removeFirst()] = nil }
        }
        return found
    }

    /// The lookup made for `ikeSAID`, if any.
    func known(ikeSAID: UInt64) -> PeerCertificateLookup? { state.withLock { $0.lookups[ikeSAID] } }

    var count: Int { state.withLock { $0.lookups.count } }
}
