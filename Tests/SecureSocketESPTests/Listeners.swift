import NetnsTestSupport
import SecureSocket
import XFRM

extension SecureSocketEngine {
    /// The server half of the sample flow: a TCP socket in `namespace`, secured (before bind, as the rules
    /// require), bound to `address` on a free port and listening.
    func securedListener(in namespace: TestNamespace, family: XFRMAddressFamily, address: XFRMAddress,
                         _ settings: SocketSecuritySettings = .default) throws -> TestSocket {
        let listener = try TestSocket.make(in: namespace.namespace, family: family, kind: .tcp)
        try setSecurity(listener.fd.rawValue, settings)
        try listener.bind(address, port: 0)
        try listener.listen()
        return listener
    }
}
