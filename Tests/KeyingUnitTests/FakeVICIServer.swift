import Foundation
import Glibc

@testable import Keying
@testable import VICI

/// A scripted VICI peer on a unix socket in a private temporary folder, for testing ``VICIClient`` and
/// ``VICIEventStream`` without charon and without privileges.
///
/// One thread accepts connections and serves them one after another; for every packet received it asks
/// `respond` what to do. Every wait is a poll of at most 20 ms, the thread ends on ``stop()`` or after 60 s.
final class FakeVICIServer: @unchecked Sendable {
    enum Action {
        case send(VICIPacket)
        case raw([UInt8])
        case close
        /// Do nothing (the client times out).
        case silence
    }

    let folder: String
    let path: String
    private let listener: CInt
    private let lock = NSLock()
    private var stopped = false
    private var _connections = 0
    private var _received: [VICIPacket] = []
    private var pushQueue: [VICIPacket] = []
    private let finished = DispatchSemaphore(value: 0)
    let respond: @Sendable (VICIPacket) -> [Action]

    var connections: Int { lock.withLock { _connections } }
    var received: [VICIPacket] { lock.withLock { _received } }

    /// Whether connections are served at the same time, each on a thread of its own (a client and an event
    /// stream side by side, as a keying backend opens them), rather than one after another.
    let concurrent: Bool

    init(concurrent: Bool = false, respond: @escaping @Sendable (VICIPacket) -> [Action]) throws {
        self.respond = respond
        self.concurrent = concurrent
        var template = Array("/tmp/vici-fake-XXXXXX".utf8CString)
        guard let made = template.withUnsafeMutableBufferPointer({ mkdtemp($0.baseAddress!) }) else {
            throw POSIXError(.EIO)
        }
        folder = String(cString: made)
        path = folder + "/fake.vici"
        listener = socket(AF_UNIX, CInt(SOCK_STREAM.rawValue) | CInt(SOCK_CLOEXEC.rawValue), 0)
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            for (i, byte) in path.utf8.enumerated() { raw[i] = byte }
        }
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                bind(listener, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
            }
        }
        guard bound == 0, listen(listener, 8) == 0 else { throw POSIXError(.EADDRINUSE) }
        Thread.detachNewThread { [self] in serve() }
    }

    /// Queues an event to push on the current connection at the next poll.
    func push(_ packet: VICIPacket) { lock.withLock { pushQueue.append(packet) } }

    func stop() {
        lock.withLock { stopped = true }
        _ = finished.wait(timeout: .now() + 5)
        close(listener)
        try? FileManager.default.removeItem(atPath: folder)
    }

    private var isStopped: Bool { lock.withLock { stopped } }

    private func serve() {
        defer { finished.signal() }
        let end = Date().addingTimeInterval(60)
        while !isStopped && Date() < end {
            var entry = pollfd(fd: listener, events: CShort(POLLIN), revents: 0)
            guard poll(&entry, 1, 20) > 0 else { continue }
            let fd = accept(listener, nil, nil)
            guard fd >= 0 else { continue }
            lock.withLock { _connections += 1 }
            guard concurrent else {
                serve(fd, until: end)
                close(fd)
                continue
            }
            Thread.detachNewThread { [self] in
                serve(fd, until: end)
                close(fd)
            }
        }
    }

    private func serve(_ fd: CInt, until end: Date) {
        var frames = VICIFrameReader()
        var buffer = [UInt8](repeating: 0, count: 65_536)
        while !isStopped && Date() < end {
            for packet in lock.withLock({ () -> [VICIPacket] in
                defer { pushQueue = [] }
                return pushQueue
            }) {
                guard write(fd, packet) else { return }
            }
            var entry = pollfd(fd: fd, events: CShort(POLLIN), revents: 0)
            guard poll(&entry, 1, 20) > 0 else { continue }
            let n = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            guard n > 0 else { return }
            frames.append(buffer[0..<n])
            while let packet = try? frames.next() {
                lock.withLock { _received.append(packet) }
                for action in respond(packet) {
                    switch action {
                    case .send(let reply): guard write(fd, reply) else { return }
                    case .raw(let bytes): guard writeAll(fd, bytes) else { return }
                    case .close: return
                    case .silence: break
                    }
                }
            }
        }
    }

    private func write(_ fd: CInt, _ packet: VICIPacket) -> Bool {
        guard let bytes = try? packet.encode() else { return false }
        return writeAll(fd, bytes)
    }

    private func writeAll(_ fd: CInt, _ bytes: [UInt8]) -> Bool {
        var sent = 0
        for _ in 0..<10_000 where sent < bytes.count {
            let n = bytes.withUnsafeBytes {
                Glibc.send(fd, $0.baseAddress! + sent, $0.count - sent, CInt(MSG_NOSIGNAL))
            }
            guard n > 0 else { return false }
            sent += n
        }
        return sent == bytes.count
    }
}
