import ALE
import IPAddressing
import NetnsTestSupport
import SecureSocket
import XFRM

extension SecureSocketEngine {
    /// The server half of the sample flow: a TCP socket in `namespace`, secured (before bind, as the rules
    /// require), bound to `address` on a free port and listening.
    func securedListener(
        in namespace: TestNamespace, family: IPAddressFamily, address: IPAddress,
        _ settings: SocketSecuritySettings = .default
    ) throws -> TestSocket {
        let listener = try TestSocket.make(in: namespace.namespace, family: family, kind: .tcp)
        try setSecurity(listener.fd.rawValue, settings)
        try listener.bind(address, port: 0)
        try listener.listen()
        return listener
    }
}

extension CharonFlowTests.Ends {
    /// A client on A secured and named `host/b.example`, connected with `WSAConnect` to `peer`, and the socket
    /// `listener` accepted for it (both with 5 s timeouts).
    func namedConnection(to peer: IPEndpoint, through listener: TestSocket) throws -> (
        TestSocket, TestSocket
    ) {
        let client = try TestSocket.make(in: pair.a.namespace, family: .inet, kind: .tcp)
        client.setTimeouts(5)
        try a.setSecurity(client.fd.rawValue)
        try a.setPeerTargetName(client.fd.rawValue, SocketPeerTargetName(name: "host/b.example"))
        try a.connect(client.fd.rawValue, to: peer)
        let accepted = try listener.accept(timeout: 5)
        accepted.setTimeouts(5)
        return (client, accepted)
    }
}
