import Keying

/// The keying a process gets when it configures nothing.
///
/// Meant order (issue 3): a system charon whose VICI socket answers; otherwise a private charon for this
/// namespace, supervised by the library and ended with the process. Until the strongSwan backend is wired in,
/// no backend is available and securing a socket fails closed with `WSAENETUNREACH`.
public enum DefaultKeying {
    public static func make() throws(SecureSocketError) -> (any KeyingBackend)? {
        nil
    }
}
