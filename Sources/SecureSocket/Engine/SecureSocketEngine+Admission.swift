import ALE
import IPAddressing
import Keying

// What a keying daemon's client may do: its user's rule in the keying file (ClientUserRule), checked where the
// request that would break it is made, so the error names the rule. An engine serving its own process has none.
extension SecureSocketEngine {
    /// The rule limiting `client` (nil: no limit, or not a daemon's engine).
    func clientRule(_ client: UInt64?) -> ClientUserRule? {
        guard let client, let sockets = configuration.clientSockets else { return nil }
        return sockets.rule(for: client)
    }

    /// Refuses settings the serving client's rule forbids (`insecure=no`).
    func admitSettings(_ settings: SocketSecuritySettings) throws(SecureSocketError) {
        guard let rule = clientRule(Self.servingClient) else { return }
        if settings.flags.contains(.allowInsecure), !rule.allowsInsecure {
            throw SecureSocketError(
                .accessDenied, "SOCKET_SETTINGS_ALLOW_INSECURE is not allowed for user \(rule.user) by \(rule.source)")
        }
    }

    /// Refuses a peer target name whose identity the serving client's rule does not list (`peers=`).
    func admitPeerName(_ identity: String) throws(SecureSocketError) {
        guard let rule = clientRule(Self.servingClient), !rule.admitsPeer(identity) else { return }
        throw SecureSocketError(
            .accessDenied,
            "peer identity \(identity) is not among those \(rule.source) allows (\(rule.peers?.joined(separator: ",") ?? ""))"
        )
    }

    /// Why `endpoint` may not negotiate with `peer`, if its client's rule lists peers: it needs a peer target name
    /// for that peer, verified (not optional), that the rule allows. nil when it may.
    func connectRefusal(_ endpoint: Endpoint, peer: IPAddress) -> String? {
        guard let rule = clientRule(endpoint.client), rule.restrictsPeers else { return nil }
        guard let name = endpoint.peerTargetName(for: peer) else {
            return "\(rule.source) allows only named peers: set a peer target name for \(peer)"
        }
        if table.keyingRequest(cookie: endpoint.cookie)?.peerIdentityOptional == true {
            return
                "\(rule.source) allows only verified peer names (not SOCKET_SETTINGS_IPSEC_OPTIONAL_PEER_NAME_VERIFICATION)"
        }
        let identity = SocketPeerTargetName(name: name).identity(raw: endpoint.peerNameIsRaw)
        guard rule.admitsPeer(identity) else {
            return "peer identity \(identity) is not among those \(rule.source) allows"
        }
        return nil
    }

    /// Why `endpoint` may not answer peers (become a listener or UDP responder), if its client's rule lists peers:
    /// a responder accepts any peer the host trusts.
    func responderRefusal(_ endpoint: Endpoint) -> String? {
        guard let rule = clientRule(endpoint.client), rule.restrictsPeers else { return nil }
        return "\(rule.source) allows only connecting to its peers, not answering any trusted peer"
    }
}
