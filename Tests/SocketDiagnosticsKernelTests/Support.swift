import Foundation
import Glibc
import IPAddressing
import NetnsTestSupport
import SocketDiagnostics
import SystemSupport
import XCTest

extension TestSocket {
    /// The kernel's cookie for this socket (`SO_COOKIE`).
    var cookie: UInt64 {
        var value: UInt64 = 0
        var length = socklen_t(MemoryLayout<UInt64>.size)
        precondition(getsockopt(fd.rawValue, SOL_SOCKET, SO_COOKIE, &value, &length) == 0)
        return value
    }

    /// What `getsockname` says.
    var localEndpoint: IPEndpoint { endpoint(getsockname) }
    /// What `getpeername` says.
    var peerEndpoint: IPEndpoint { endpoint(getpeername) }

    /// The socket's inode, as `/proc/PID/fd/N` names it (`socket:[inode]`).
    var inode: UInt32 {
        var info = stat()
        precondition(fstat(fd.rawValue, &info) == 0)
        return UInt32(truncatingIfNeeded: info.st_ino)
    }

    private func endpoint(
        _ call: (CInt, UnsafeMutablePointer<sockaddr>, UnsafeMutablePointer<socklen_t>) -> CInt
    ) -> IPEndpoint {
        var storage = sockaddr_storage()
        var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
        let ok = withUnsafeMutablePointer(to: &storage) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { call(fd.rawValue, $0, &length) == 0 }
        }
        precondition(ok)
        return withUnsafeBytes(of: storage) { IPEndpoint(sockaddr: $0.baseAddress!, length: Int(length))! }
    }
}

/// Collects a destroy monitor's events for a test and waits for the ones it expects, every wait bounded.
final class EventCollector: @unchecked Sendable {
    private let lock = NSLock()
    private var events: [SocketDestroyEvent] = []
    private let changed = ChangeSignal()

    func append(_ event: SocketDestroyEvent) {
        lock.lock()
        events.append(event)
        lock.unlock()
        changed.notify()
    }

    var all: [SocketDestroyEvent] {
        lock.lock()
        defer { lock.unlock() }
        return events
    }

    /// The first event `select` picks, waiting at most `timeout`.
    func wait<T>(_ timeout: Duration, _ select: @escaping (SocketDestroyEvent) -> T?) -> T? {
        changed.wait(until: Deadline(after: timeout)) { self.all.lazy.compactMap(select).first }
    }

    /// The record of the destroyed socket with `cookie`, waiting at most `timeout`.
    func destroyed(_ cookie: UInt64, within timeout: Duration = .seconds(1)) -> InetSocketRecord? {
        wait(timeout) { event in
            if case .destroyed(let record) = event, record.cookie == cookie { return record }
            return nil
        }
    }

    /// Whether any destroy event names `cookie` (no waiting).
    func hasDestroyed(_ cookie: UInt64) -> Bool {
        all.contains { if case .destroyed(let record) = $0 { record.cookie == cookie } else { false } }
    }
}

/// Polls `probe` until it gives a value or `timeout` passes: for kernel state that changes on its own (a FIN
/// arriving, a queue filling), every 10 ms.
func eventually<T>(_ timeout: Duration, _ probe: () throws -> T?) rethrows -> T? {
    let deadline = Deadline(after: timeout)
    while true {
        if let value = try probe() { return value }
        if deadline.hasPassed { return nil }
        usleep(10_000)
    }
}
