import Glibc
import Synchronization
import SystemPackage

/// Hands out XFRM request ids that no other user of the library in the same network namespace holds.
///
/// The reqid is the only link between a socket's policy template and the SAs charon installs (the kernel
/// requires equality on output), so two sockets, processes or child configs must never share one by accident.
/// Each allocation is a file `<directory>/<reqid>` created with `O_CREAT | O_EXCL` (atomic across processes)
/// holding the owner's pid; a file whose owner is gone is reclaimed. The range sits far above the reqids charon
/// assigns itself (it counts up from 1).
public final class ReqidAllocator: Sendable {
    public struct Failure: Error, CustomStringConvertible {
        public var description: String
    }

    public let directory: String
    public let range: ClosedRange<UInt32>
    private let held = Mutex<Set<UInt32>>([])
    private let next = Mutex<UInt32>(0)

    /// The default folder: one per network namespace (named by its inode), under `/run`.
    public static func defaultDirectory() -> String {
        var info = stat()
        let inode = stat("/proc/self/ns/net", &info) == 0 ? UInt64(info.st_ino) : 0
        return "/run/winsock-secure-socket/netns-\(inode)/reqids"
    }

    public init(directory: String = ReqidAllocator.defaultDirectory(),
                range: ClosedRange<UInt32> = 0x4000_0000...0x4fff_ffff) throws {
        self.directory = directory
        self.range = range
        var path = ""
        for component in directory.split(separator: "/") {
            path += "/\(component)"
            if mkdir(path, 0o700) != 0 && errno != EEXIST {
                throw Failure(description: "cannot create \(path): \(Errno(rawValue: errno))")
            }
        }
        var random = SystemRandomNumberGenerator()
        let start = UInt32.random(in: range, using: &random)
        next.withLock { $0 = start }
    }

    /// Reserves a reqid. Bounded: gives up after 4096 taken candidates.
    public func allocate() throws -> UInt32 {
        for _ in 0..<4096 {
            let candidate = next.withLock { value -> UInt32 in
                let current = value
                value = value >= range.upperBound ? range.lowerBound : value + 1
                return current
            }
            if try claim(candidate) {
                held.withLock { _ = $0.insert(candidate) }
                return candidate
            }
        }
        throw Failure(description: "no free reqid in \(range) after 4096 attempts")
    }

    /// Gives a reqid back (only ones this allocator holds).
    public func release(_ reqid: UInt32) {
        guard held.withLock({ $0.remove(reqid) }) != nil else { return }
        unlink(path(reqid))
    }

    /// Every reqid this allocator holds.
    public var heldReqids: Set<UInt32> { held.withLock { $0 } }

    /// Releases everything this allocator holds.
    public func releaseAll() {
        for reqid in heldReqids { release(reqid) }
    }

    deinit { releaseAll() }

    private func path(_ reqid: UInt32) -> String { "\(directory)/\(reqid)" }

    private func claim(_ reqid: UInt32) throws -> Bool {
        let file = path(reqid)
        for _ in 0..<2 {
            let fd = open(file, O_CREAT | O_EXCL | O_WRONLY | O_CLOEXEC, 0o600)
            if fd >= 0 {
                let text = "\(getpid())\n"
                _ = text.withCString { write(fd, $0, strlen($0)) }
                close(fd)
                return true
            }
            guard errno == EEXIST else {
                throw Failure(description: "cannot create \(file): \(Errno(rawValue: errno))")
            }
            // Taken. Reclaim only if its owner process is gone.
            guard let owner = Self.owner(of: file), owner != getpid(), kill(owner, 0) != 0, errno == ESRCH else {
                return false
            }
            unlink(file)
        }
        return false
    }

    private static func owner(of file: String) -> pid_t? {
        let fd = open(file, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var buffer = [UInt8](repeating: 0, count: 32)
        let n = read(fd, &buffer, buffer.count)
        guard n > 0 else { return nil }
        return pid_t(String(decoding: buffer.prefix(n), as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines))
    }
}

private extension String {
    func trimmingCharacters(in set: Set<Character>) -> String {
        String(self.drop { set.contains($0) }.reversed().drop { set.contains($0) }.reversed())
    }
}

private extension Set<Character> {
    static let whitespacesAndNewlines: Set<Character> = [" ", "\n", "\t", "\r"]
}
