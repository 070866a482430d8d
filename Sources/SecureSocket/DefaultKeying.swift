import Foundation
import Keying
import Logging

/// The keying a process gets when it configures nothing in code: the file `KeyingConfiguration` (Keying)
/// describes (`$WSS_KEYING_CONFIG`, else `/etc/winsock-secure-socket/keying.conf`): a system charon when its
/// VICI socket answers, otherwise a private charon for this namespace that ends with the process.
///
/// Without that file there is no backend, and securing a socket fails closed with `WSAENETUNREACH` (a
/// per-socket policy that no one can satisfy would only make every send fail). A file that exists but is refused
/// (its lines, or its owner or mode: see `KeyingConfiguration`) is `WSAEINVAL`, and a certificate, key or
/// authority file it names that is refused or missing is `WSAENETUNREACH`, each with the reason.
public enum DefaultKeying {
    public static func make(logger: Logger = Logger(label: "wss.keying"))
        throws(SecureSocketError) -> (configuration: KeyingConfiguration, backend: any KeyingBackend)?
    {
        let path = KeyingConfiguration.defaultPath
        let configuration: KeyingConfiguration
        do {
            configuration = try KeyingConfiguration.load(path: path)
        } catch {
            if error.file?.isMissing == true { return nil }
            // A refused file's error names it already.
            throw SecureSocketError(.invalidArgument, error.file == nil ? path : "keying file", underlying: error)
        }
        do {
            return (configuration, try configuration.makeBackend(logger: logger))
        } catch {
            throw SecureSocketError(.networkUnreachable, path, underlying: error)
        }
    }
}
