import ALE
import Glibc
import IPAddressing
import Impersonation
import Logging
import SystemPackage

/// `WSAImpersonateSocketPeer` / `WSARevertImpersonation`: the calling thread runs as the local account the
/// identity map gives the socket's authenticated peer (the peer user when a second authentication round named
/// one, else the peer machine), then returns to exactly what it was.
///
/// These are synchronous and per thread. Swift tasks can move between threads at every `await`, so never let
/// an `await` come between ``impersonatePeer(_:peerAddress:)`` and ``revertImpersonation()``; prefer
/// ``withPeerImpersonation(_:peerAddress:_:)``, whose body is synchronous.
/// The secure-socket calls on a process's sockets, whoever carries them out: the engine in this process (it
/// then needs `CAP_NET_ADMIN`), or the namespace's keying daemon through its client. Impersonation and peer
/// tokens are the calling process's own in both cases (built here on ``query(_:_:)``).
public protocol SocketSecurityProvider: AnyObject, Sendable {
    func setSecurity(_ fd: CInt, _ settings: SocketSecuritySettings) throws(SecureSocketError)
    func setPeerTargetName(_ fd: CInt, _ name: SocketPeerTargetName) throws(SecureSocketError)
    func deletePeerTargetName(_ fd: CInt, address: IPEndpoint) throws(SecureSocketError)
    func connect(_ fd: CInt, to peer: IPEndpoint, timeout: Duration?) throws(SecureSocketError)
    func query(_ fd: CInt, _ template: SocketSecurityQueryTemplate?) throws(SecureSocketError)
        -> SocketSecurityQueryInfo
    /// The application is done with the socket (`closesocket`).
    func release(_ fd: CInt)
    /// The peer token handles this process opened.
    var tokens: PeerTokenTable { get }
    /// The identity map impersonation uses (nil: impersonation is refused).
    var identityMap: IdentityMap? { get }
    var logger: Logger { get }
    /// Fails when this process may not use the provider (a process forked from the one that made it).
    func requireOwner() throws(SecureSocketError)
}

extension SecureSocketEngine: SocketSecurityProvider {
    public var identityMap: IdentityMap? { configuration.identityMap }
}

extension SocketSecurityProvider {
    /// Makes the calling thread run as the peer's mapped account. Blocking sockets only (as on Windows).
    /// Returns the account.
    @discardableResult
    @available(*, noasync, message: "a task may resume on another thread; use withPeerImpersonation")
    public func impersonatePeer(_ fd: CInt, peerAddress: IPEndpoint? = nil) throws(SecureSocketError)
        -> LocalAccount
    {
        try requireOwner()
        let peer: PeerIdentity
        let map: IdentityMap
        do {
            (peer, map) = try peerIdentity(fd, peerAddress: peerAddress)
        } catch {
            logger.notice("impersonation refused", metadata: ["fd": "\(fd)", "reason": "\(error)"])
            throw error
        }
        do {
            let account = try ThreadCredentials.impersonate(peer, in: map)
            logger.info(
                "impersonating the peer",
                metadata: [
                    "fd": "\(fd)", "peer-identity": "\(peer)", "account": "\(account.name)", "uid": "\(account.uid)",
                ])
            return account
        } catch {
            logger.notice(
                "impersonation refused", metadata: ["fd": "\(fd)", "peer-identity": "\(peer)", "reason": "\(error)"])
            throw SecureSocketEngine.winsockError(error)
        }
    }

    /// Ends the calling thread's impersonation; a thread that is not impersonating is left as it is (success).
    @available(*, noasync, message: "a task may resume on another thread; use withPeerImpersonation")
    public func revertImpersonation() throws(SecureSocketError) {
        try SecureSocketEngine.revertThreadImpersonation(logger: logger)
    }

    /// ``revertImpersonation()`` without an engine: no engine is needed to give a thread its own credentials back
    /// (the Windows function works before any engine exists). A revert that changed the thread's credentials is
    /// logged (info) to `logger`; a failed one (error) too: the thread's identity is then unknown.
    @available(*, noasync, message: "a task may resume on another thread; use withPeerImpersonation")
    public static func revertThreadImpersonation(logger: Logger? = nil) throws(SecureSocketError) {
        let wasImpersonating = ThreadCredentials.isImpersonating
        do {
            try ThreadCredentials.revert()
        } catch {
            logger?.error("impersonation could not be reverted", metadata: ["reason": "\(error)"])
            throw SecureSocketError(.systemCallFailure, "revert", errno: error.errno, underlying: error)
        }
        if wasImpersonating { logger?.info("impersonation reverted", metadata: ["uid": "\(geteuid())"]) }
    }

    /// Runs `body` as the peer's mapped account on this thread and always reverts.
    public func withPeerImpersonation<T>(
        _ fd: CInt, peerAddress: IPEndpoint? = nil,
        _ body: (LocalAccount) throws -> T
    ) throws -> T {
        let (peer, map) = try peerIdentity(fd, peerAddress: peerAddress)
        do {
            return try ThreadCredentials.withImpersonation(of: peer, in: map, body)
        } catch let error as ImpersonationError {
            throw SecureSocketEngine.winsockError(error)
        }
    }

    /// The local account a token's identity maps to (for inspection: uid, gid, groups), or an error.
    public func account(forToken handle: UInt64) throws(SecureSocketError) -> LocalAccount {
        guard let token = tokens.token(handle) else {
            throw SecureSocketError(.invalidArgument, "token \(handle) is not open")
        }
        guard let map = identityMap else {
            throw SecureSocketError(.accessDenied, "no identity map configured")
        }
        // The identity the query authenticated (with how, and the certificate's names); a machine token is the machine.
        let peer =
            switch (token.kind, token.peer) {
            case (.user, let known?): known
            case (.machine, let known?): known.machine
            case (.user, nil): PeerIdentity(user: token.identity)
            case (.machine, nil): PeerIdentity(ikeIdentity: token.identity)
            }
        do {
            return try map.resolve(peer)
        } catch {
            throw SecureSocketEngine.winsockError(error)
        }
    }

    private func peerIdentity(_ fd: CInt, peerAddress: IPEndpoint?) throws(SecureSocketError)
        -> (PeerIdentity, IdentityMap)
    {
        let facts = try SecureSocketEngine.inspect(fd)
        try SecureSocketEngine.requireInetStreamOrDatagram(facts)
        guard !SocketInspector.isNonBlocking(fd) else {
            throw SecureSocketError(.invalidArgument, "impersonation is for blocking sockets only")
        }
        var template = SocketSecurityQueryTemplate()
        if facts.kind == .datagram {
            guard let peerAddress else { throw SecureSocketError(.fault, "a datagram socket needs the peer address") }
            template.peerAddress = peerAddress
        }
        let info = try query(fd, template)
        guard info.flags.contains(.secured), let peer = info.peer, peer.ikeIdentity != nil || peer.user != nil else {
            throw SecureSocketError(.accessDenied, "the peer is not authenticated by IPsec: nobody to impersonate")
        }
        guard let map = identityMap else {
            throw SecureSocketError(.accessDenied, "no identity map configured (\(IdentityMapLocation.defaultPath))")
        }
        return (peer, map)
    }

}

extension SecureSocketEngine {
    static func winsockError(_ error: ImpersonationError) -> SecureSocketError {
        switch error.code {
        case .unmappedIdentity, .ambiguousIdentity, .groupKeyNotAccepted, .privilegedAccount, .unknownAccount,
            .invalidAccount:
            SecureSocketError(.accessDenied, "\(error.code)", errno: error.errno, underlying: error)
        case .notPermitted:
            SecureSocketError(.accessDenied, "\(error.code)", errno: error.errno, underlying: error)
        default:
            SecureSocketError(.systemCallFailure, "\(error.code)", errno: error.errno, underlying: error)
        }
    }
}

/// Where the default identity map is read from: `$WSS_IDENTITY_MAP`, else `/etc/winsock-secure-socket/identity.map`.
public enum IdentityMapLocation {
    public static var defaultPath: String {
        Glibc.getenv("WSS_IDENTITY_MAP").map { String(cString: $0) } ?? "/etc/winsock-secure-socket/identity.map"
    }
}
