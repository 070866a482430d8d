import Glibc
import Synchronization
import SystemPackage
import SystemSupport
import XFRM

/// Hands out XFRM request ids that no other user of the library in the same network namespace holds.
///
/// The reqid is the only link between a socket's policy template and the SAs charon installs (the kernel
/// requires equality on output), so two sockets, processes or child configs must never share one by accident.
/// Reqids are claimed from the namespace in blocks: a block is a file `<directory>/block-<first>` created with
/// `O_CREAT | O_EXCL` (atomic across processes) holding the owner's pid and start time; within a block the
/// process hands reqids out from memory, so a socket's reqid costs no system call. A block whose owner is gone
/// (the pid no longer runs, or runs another program started later) is reclaimed by the next process that needs
/// one. The range sits far above the reqids charon assigns itself (it counts up from 1).
public final class ReqidAllocator: Sendable {
    public struct Failure: Error, CustomStringConvertible {
        public var description: String
    }

    public let directory: String
    public let range: ClosedRange<UInt32>
    /// Reqids per claimed block.
    public let blockSize: UInt32

    private struct State {
        /// Blocks this allocator holds, by first reqid, with the reqids of each still free.
        var blocks: [UInt32: [UInt32]] = [:]
        var held: Set<UInt32> = []
        var nextBlock: UInt32 = 0
    }

    private let state = Mutex(State())

    /// The default folder: one per network namespace (named by its inode), under `/run`.
    public static func defaultDirectory(for namespace: NetworkNamespace = .current) -> String {
        var info = stat()
        let inode = stat(namespace.path ?? "/proc/self/ns/net", &info) == 0 ? UInt64(info.st_ino) : 0
        return "/run/winsock-secure-socket/netns-\(inode)/reqids"
    }

    /// A block whose owner process is gone, reclaimed from the namespace: what that process may have left in
    /// the keying daemon and the kernel under these reqids is for the caller to remove.
    public struct DeadClaim: Hashable, Sendable {
        public var pid: Int32
        public var reqids: ClosedRange<UInt32>
    }

    /// Removes the claims of processes that are gone (killed, crashed) and returns them. O(claim files).
    public func reclaimDeadBlocks() -> [DeadClaim] {
        var reclaimed: [DeadClaim] = []
        for name in Directory.names(in: directory) {
            guard name.hasPrefix("block-"), let first = UInt32(name.dropFirst(6)), range.contains(first) else {
                continue
            }
            let file = path(first)
            guard let owner = ProcessIdentity(file: file), owner.pid != getpid(), !owner.isRunning else { continue }
            // Only the owner identity read above is removed (a live process that reclaimed it meanwhile wrote
            // its own identity: checked again right before unlinking).
            guard ProcessIdentity(file: file) == owner, unlink(file) == 0 else { continue }
            let last = UInt32(min(UInt64(first) + UInt64(blockSize) - 1, UInt64(range.upperBound)))
            reclaimed.append(DeadClaim(pid: owner.pid, reqids: first...last))
        }
        return reclaimed
    }

    /// Gives every block back if no reqid is held (an idle process keeps no claim in the namespace).
    public func releaseIfUnused() {
        let blocks = state.withLock { s -> [UInt32] in
            guard s.held.isEmpty else { return [] }
            defer { s.blocks = [:] }
            return Array(s.blocks.keys)
        }
        for first in blocks { unlink(path(first)) }
    }

    public init(
        directory: String = ReqidAllocator.defaultDirectory(),
        range: ClosedRange<UInt32> = 0x4000_0000...0x4fff_ffff, blockSize: UInt32 = 256
    ) throws {
        precondition(blockSize > 0)
        self.directory = directory
        self.range = range
        self.blockSize = blockSize
        var path = ""
        for component in directory.split(separator: "/") {
            path += "/\(component)"
            if mkdir(path, 0o700) != 0 && errno != EEXIST {
                throw Failure(description: "cannot create \(path): \(Errno(rawValue: errno))")
            }
        }
        // Start at a random block, so processes rarely race for the same one.
        var random = SystemRandomNumberGenerator()
        let blocks = UInt64(range.count) / UInt64(blockSize) + (UInt64(range.count) % UInt64(blockSize) == 0 ? 0 : 1)
        let first = UInt32(UInt64.random(in: 0..<max(1, blocks), using: &random))
        state.withLock { $0.nextBlock = first }
    }

    private var blockCount: UInt32 {
        let count = UInt64(range.count)
        return UInt32((count + UInt64(blockSize) - 1) / UInt64(blockSize))
    }

    /// Reserves a reqid: from a held block, or from a newly claimed one. Bounded: tries every block once.
    public func allocate() throws -> UInt32 {
        if let reqid = state.withLock({ s -> UInt32? in
            // First in, first out: a reqid given back is reused last, so whatever the kernel still holds under
            // it (a larval state lives 30 s) has long gone when it names another socket.
            for (first, free) in s.blocks where !free.isEmpty {
                let reqid = s.blocks[first]!.removeFirst()
                s.held.insert(reqid)
                return reqid
            }
            return nil
        }) {
            return reqid
        }
        for _ in 0..<blockCount {
            let index = state.withLock { s -> UInt32 in
                let index = s.nextBlock
                s.nextBlock = (s.nextBlock + 1) % blockCount
                return index
            }
            let first = range.lowerBound + index * blockSize
            guard state.withLock({ $0.blocks[first] == nil }), try claim(first) else { continue }
            let last = UInt32(min(UInt64(first) + UInt64(blockSize) - 1, UInt64(range.upperBound)))
            return state.withLock { s in
                var free = Array(first...last)
                let reqid = free.removeFirst()
                s.blocks[first] = free
                s.held.insert(reqid)
                return reqid
            }
        }
        throw Failure(description: "no free reqid block in \(range) (\(blockCount) blocks of \(blockSize))")
    }

    /// Gives a reqid back (only ones this allocator holds). A block whose reqids are all free again is given
    /// back to the namespace unless it is the last one held.
    public func release(_ reqid: UInt32) {
        let emptied = state.withLock { s -> UInt32? in
            guard s.held.remove(reqid) != nil else { return nil }
            let first = range.lowerBound + (reqid - range.lowerBound) / blockSize * blockSize
            s.blocks[first, default: []].append(reqid)
            let size = min(UInt64(blockSize), UInt64(range.upperBound) - UInt64(first) + 1)
            guard s.blocks.count > 1, UInt64(s.blocks[first]!.count) == size else { return nil }
            s.blocks[first] = nil
            return first
        }
        if let emptied { unlink(path(emptied)) }
    }

    /// Every reqid this allocator holds.
    public var heldReqids: Set<UInt32> { state.withLock { $0.held } }

    /// The blocks this allocator holds (their first reqids).
    public var heldBlocks: Set<UInt32> { state.withLock { Set($0.blocks.keys) } }

    /// Releases everything this allocator holds, blocks included.
    public func releaseAll() {
        let blocks = state.withLock { s -> [UInt32] in
            defer { s = State(blocks: [:], held: [], nextBlock: s.nextBlock) }
            return Array(s.blocks.keys)
        }
        for first in blocks { unlink(path(first)) }
    }

    deinit { releaseAll() }

    private func path(_ first: UInt32) -> String { "\(directory)/block-\(first)" }

    private func claim(_ first: UInt32) throws -> Bool {
        let file = path(first)
        for _ in 0..<2 {
            let fd = open(file, O_CREAT | O_EXCL | O_WRONLY | O_CLOEXEC, 0o600)
            if fd >= 0 {
                let text = "\(ProcessIdentity.current)\n"
                _ = text.withCString { write(fd, $0, strlen($0)) }
                close(fd)
                return true
            }
            guard errno == EEXIST else {
                throw Failure(description: "cannot create \(file): \(Errno(rawValue: errno))")
            }
            // Taken. Reclaim only if its owner process is gone.
            guard let owner = ProcessIdentity(file: file), owner.pid != getpid(), !owner.isRunning else {
                return false
            }
            unlink(file)
        }
        return false
    }
}
