import Foundation
import Keying
import Logging

/// The keying a process gets when it configures nothing in code: the file `KeyingConfiguration` (Keying)
/// describes (`$WSS_KEYING_CONFIG`, else `/etc/winsock-secure-socket/keying.conf`): a system charon when its
/// VICI socket answers, otherwise a private charon for this namespace that ends with the process.
///
/// Without that file there is no backend, and securing a socket fails closed with `WSAENETUNREACH` (a
/// per-socket policy that no one can satisfy would only make every send fail).
public enum DefaultKeying {
    public static func make(logger: Logger = Logger(label: "wss.keying"))
        throws(SecureSocketError) -> (configuration: KeyingConfiguration, backend: any KeyingBackend)?
    {
        let path = KeyingConfiguration.defaultPath
        guard let data = FileManager.default.contents(atPath: path) else { return nil }
        do {
            let configuration = try KeyingConfiguration.parse(String(decoding: data, as: UTF8.self))
            return (configuration, try configuration.makeBackend(logger: logger))
        } catch let error as KeyingConfiguration.ParseError {
            throw SecureSocketError(.invalidArgument, path, underlying: error)
        } catch {
            throw SecureSocketError(.networkUnreachable, path, underlying: error)
        }
    }
}
