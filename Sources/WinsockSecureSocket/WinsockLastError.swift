import Glibc
import SecureSocket

/// `WSAGetLastError()`: the Winsock error of the calling thread's last failed call, kept per thread as Windows
/// does (a `pthread` key; Swift has no thread-local storage of its own).
enum WinsockLastError {
    private static let key: pthread_key_t = {
        var key = pthread_key_t()
        pthread_key_create(&key, nil)
        return key
    }()

    static var value: Int32 {
        get { Int32(truncatingIfNeeded: Int(bitPattern: pthread_getspecific(key))) }
        set { pthread_setspecific(key, UnsafeRawPointer(bitPattern: Int(newValue))) }
    }

    /// Runs `body`; returns 0, or -1 (`SOCKET_ERROR`) with the thread's last error set.
    static func call(_ body: () throws(SecureSocketError) -> Void) -> Int32 {
        do {
            try body()
            return 0
        } catch {
            value = error.code.rawValue
            return -1
        }
    }
}

/// Returns the calling thread's last Winsock error (`WSAEINVAL` = 10022, …).
@_cdecl("WSAGetLastError")
public func WSAGetLastError() -> Int32 { WinsockLastError.value }

/// Sets the calling thread's last Winsock error (as Windows' `WSASetLastError`).
@_cdecl("WSASetLastError")
public func WSASetLastError(_ error: Int32) { WinsockLastError.value = error }
