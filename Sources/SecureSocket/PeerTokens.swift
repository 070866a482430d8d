import Impersonation
import Synchronization

/// A peer token: what `WSAQuerySocketSecurity` hands out as `PeerApplicationAccessTokenHandle` /
/// `PeerMachineAccessTokenHandle` when the template's access mask is not zero. On Linux a token is a handle to
/// an authenticated identity (the IKE identity of the peer machine, or the user of the second authentication
/// round); the caller closes it. Mapping it to a local account is the identity map's job.
public struct PeerToken: Hashable, Sendable {
    public enum Kind: Hashable, Sendable {
        /// The peer computer (IKE identity, from the certificate or PSK identity).
        case machine
        /// The peer user (the EAP identity of the second authentication round).
        case user
    }

    public var handle: UInt64
    public var kind: Kind
    public var identity: String
    /// The access mask the query asked for (kept, not interpreted: Linux has no token ACLs).
    public var accessMask: UInt32
    /// Everything IPsec authenticated about the peer when the token was opened (the query's ``SocketSecurityQueryInfo/peer``):
    /// what the identity map reads for this token (for a machine token, without the user).
    public var peer: PeerIdentity?
}

/// The open peer tokens of a process. Handles are never 0 and are not reused while the process lives, so a
/// stale handle is an error, never someone else's token. ``openCount`` lets tests detect leaks.
public final class PeerTokenTable: Sendable {
    private struct State {
        var tokens: [UInt64: PeerToken] = [:]
        var next: UInt64
    }

    private let state: Mutex<State>

    public init() {
        var random = SystemRandomNumberGenerator()
        state = Mutex(State(next: UInt64.random(in: 0x1000_0000...0xffff_ffff, using: &random) << 16))
    }

    /// Opens a token for `identity`.
    public func open(_ kind: PeerToken.Kind, identity: String, accessMask: UInt32, peer: PeerIdentity? = nil)
        -> PeerToken
    {
        state.withLock { s in
            s.next &+= 1
            if s.next == 0 { s.next = 1 }
            let token = PeerToken(handle: s.next, kind: kind, identity: identity, accessMask: accessMask, peer: peer)
            s.tokens[token.handle] = token
            return token
        }
    }

    /// The token behind a handle, or nil if it is not open.
    /// Opens the tokens a query asked for (a non-zero access mask) on a secured connection: the peer machine's and
    /// the peer user's, their handles written into `info`.
    public func openTokens(for info: inout SocketSecurityQueryInfo, accessMask mask: UInt32) {
        guard mask != 0, info.flags.contains(.secured) else { return }
        if let machine = info.peerMachineIdentity {
            info.peerMachineToken = open(.machine, identity: machine, accessMask: mask, peer: info.peer).handle
        }
        if let user = info.peerUserIdentity {
            info.peerApplicationToken = open(.user, identity: user, accessMask: mask, peer: info.peer).handle
        }
    }

    public func token(_ handle: UInt64) -> PeerToken? { state.withLock { $0.tokens[handle] } }

    /// A second handle to the same identity (closed separately).
    public func duplicate(_ handle: UInt64) -> PeerToken? {
        guard let original = token(handle) else { return nil }
        return open(original.kind, identity: original.identity, accessMask: original.accessMask, peer: original.peer)
    }

    /// Closes a handle; false if it was not open.
    @discardableResult
    public func close(_ handle: UInt64) -> Bool { state.withLock { $0.tokens.removeValue(forKey: handle) != nil } }

    /// How many handles are open.
    public var openCount: Int { state.withLock { $0.tokens.count } }
}
