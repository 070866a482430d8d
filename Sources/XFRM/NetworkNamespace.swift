import CNetlink
import Glibc
import SystemPackage
import SystemSupport

/// A network namespace to open kernel sockets in.
///
/// A socket stays in the namespace it was created in, so ``XFRMClient``, ``XFRMMonitor`` and the test
/// harness open their sockets on a short-lived dedicated thread that has entered the namespace with
/// `setns(2)`. The calling thread (and any Swift task) never changes namespace.
public struct NetworkNamespace: Hashable, Sendable, CustomStringConvertible {
    /// A path to the namespace file (`/run/netns/NAME`, `/proc/PID/ns/net`); nil for the caller's own.
    public var path: String?

    /// The namespace of the calling thread.
    public static let current = NetworkNamespace(path: nil)

    /// A namespace made with `ip netns add NAME` (the file `/run/netns/NAME`).
    public static func named(_ name: String) -> NetworkNamespace { NetworkNamespace(path: "/run/netns/\(name)") }

    public init(path: String?) { self.path = path }

    public var description: String { path ?? "current" }

    /// Runs `body` on a dedicated thread inside this namespace and returns its result. Sockets created in
    /// `body` belong to the namespace for their whole life.
    public func perform<T>(_ body: () throws -> T) throws -> T {
        guard let path else { return try body() }
        return try withoutActuallyEscaping(body) { escapable in
            nonisolated(unsafe) let work = escapable
            nonisolated(unsafe) var outcome: Result<T, any Error>?
            try runOnNewThread {
                let fd = open(path, O_RDONLY | O_CLOEXEC)
                guard fd >= 0 else {
                    outcome = .failure(XFRMError.syscall("enter netns \(path)", "open", errno: Errno(rawValue: errno)))
                    return
                }
                defer { close(fd) }
                guard cnl_setns_net(fd) == 0 else {
                    outcome = .failure(XFRMError.syscall("enter netns \(path)", "setns", errno: Errno(rawValue: errno)))
                    return
                }
                outcome = Result { try work() }
            }
            return try outcome!.get()
        }
    }
}

/// Runs `body` on a new POSIX thread and waits for it.
func runOnNewThread(_ body: @escaping () -> Void) throws(XFRMError) {
    do {
        try Threads.runAndJoin(body)
    } catch {
        throw .syscall("start namespace thread", "pthread_create", errno: error)
    }
}
