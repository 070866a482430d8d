import ALE
import Keying

extension KeyedFlow {
    /// The flow of a socket as the kernel reports it (TCP for a stream socket, UDP for a datagram socket); nil
    /// while it has no peer or no local address.
    init?(_ facts: SocketFacts) {
        guard let local = facts.local, let peer = facts.peer else { return nil }
        self.init(facts.kind == .stream ? .tcp : .udp, local: local, remote: peer)
    }

    /// The flow of a connected socket; nil when it is not connected.
    static func connected(fd: CInt) -> KeyedFlow? {
        (try? SocketInspector.facts(of: fd)).flatMap { KeyedFlow($0) }
    }
}
