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
/// (the pid no longer runs, or runs another program started later) is freed by the engine's reclaim once nothing
/// of it is in use (``deadBlocks()``, ``forget(_:)``), never taken over on the way. The range sits far above the reqids charon assigns itself (it counts up from 1).
public final class ReqidAllocator: Sendable {
    public struct Failure: Error, CustomStringConvertible {
        public var description: String
    }

    public let directory: String
    public let range: ClosedRange<UInt32>
    /// Reqids per claimed block.
    public let blockSize: UInt32

    /// One claimed block: a bitmap of its free reqids, handed out in cyclic order from after the last one handed
    /// out. Between two hand-outs of one reqid the cursor goes round the whole block, so every reqid free on the
    /// way goes first (whatever the kernel still holds under a reqid given back, a larval state lives 30 s, has
    /// long gone when it names another socket). One bit per reqid, O(1) per call.
    struct Block {
        let size: UInt32
        private(set) var freeCount: UInt32
        private var free: [UInt64]
        private var cursor: UInt32 = 0

        init(size: UInt32) {
            self.size = size
            freeCount = size
            free = (0..<Int((size + 63) / 64)).map { word in
                let bits = min(64, Int(size) - word * 64)
                return bits == 64 ? ~0 : (1 << UInt64(bits)) - 1
            }
        }

        var isFull: Bool { freeCount == 0 }
        var isUnused: Bool { freeCount == size }

        /// The first free offset at or after the cursor (cyclically), now taken.
        mutating func take() -> UInt32? {
            guard freeCount > 0 else { return nil }
            var word = Int(cursor / 64)
            var mask = ~UInt64(0) << UInt64(cursor % 64)
            for _ in 0...free.count {
                let candidates = free[word] & mask
                if candidates != 0 {
                    let offset = UInt32(word * 64 + candidates.trailingZeroBitCount)
                    free[word] &= ~(1 << UInt64(offset % 64))
                    freeCount -= 1
                    cursor = (offset + 1) % size
                    return offset
                }
                word = (word + 1) % free.count
                mask = ~0
            }
            return nil
        }

        /// Gives `offset` back; false if it was not taken.
        mutating func give(_ offset: UInt32) -> Bool {
            let (word, bit) = (Int(offset / 64), UInt64(1) << UInt64(offset % 64))
            guard offset < size, free[word] & bit == 0 else { return false }
            free[word] |= bit
            freeCount += 1
            return true
        }

        func isTaken(_ offset: UInt32) -> Bool {
            offset < size && free[Int(offset / 64)] & (1 << UInt64(offset % 64)) == 0
        }
    }

    private struct State {
        /// Blocks this allocator holds, by first reqid.
        var blocks: [UInt32: Block] = [:]
        /// The block reqids are handed out from until it is full.
        var current: UInt32?
        /// Blocks that had a reqid given back while full (checked when the current block is full; an entry may
        /// be stale: the block went back or filled up again).
        var withFree: [UInt32] = []
        var heldCount = 0
        var nextBlock: UInt32 = 0

        /// A reqid from a held block, O(1) amortized.
        mutating func take() -> UInt32? {
            if let current, let offset = blocks[current]?.take() { return current + offset }
            while let first = withFree.popLast() {
                if let offset = blocks[first]?.take() {
                    current = first
                    return first + offset
                }
            }
            return nil
        }
    }

    private let state = Mutex(State())

    /// The default folder: one per network namespace (named by its inode), under `/run`.
    public static func defaultDirectory(for namespace: NetworkNamespace = .current) -> String {
        var info = stat()
        let inode = stat(namespace.path ?? "/proc/self/ns/net", &info) == 0 ? UInt64(info.st_ino) : 0
        return "/run/winsock-secure-socket/netns-\(inode)/reqids"
    }

    /// A block whose owner process is gone: what that process may have left in the keying daemon and the kernel
    /// under these reqids is for the caller to remove (or to keep, while live sockets still use it).
    public struct DeadClaim: Hashable, Sendable {
        public var pid: Int32
        public var reqids: ClosedRange<UInt32>
        /// Who held the claim, as its file said (the claim is only removed while it still says so).
        let owner: ProcessIdentity
    }

    /// The claims of processes that are gone (killed, crashed), left in place: nobody else claims their blocks
    /// until ``forget(_:)`` removes them. O(claim files).
    public func deadBlocks() -> [DeadClaim] {
        var dead: [DeadClaim] = []
        for name in Directory.names(in: directory) {
            guard name.hasPrefix("block-"), let first = UInt32(name.dropFirst(6)), range.contains(first) else {
                continue
            }
            guard let owner = ProcessIdentity(file: path(first)), owner.pid != getpid(), !owner.isRunning else {
                continue
            }
            let last = UInt32(min(UInt64(first) + UInt64(blockSize) - 1, UInt64(range.upperBound)))
            dead.append(DeadClaim(pid: owner.pid, reqids: first...last, owner: owner))
        }
        return dead
    }

    /// Removes a dead claim, so its block can be claimed again; false when its file no longer names that dead
    /// owner (a live process that reclaimed it meanwhile wrote its own identity: checked right before unlinking).
    @discardableResult
    public func forget(_ claim: DeadClaim) -> Bool {
        let file = path(claim.reqids.lowerBound)
        return ProcessIdentity(file: file) == claim.owner && unlink(file) == 0
    }

    /// Removes the claims of processes that are gone (killed, crashed) and returns them. O(claim files).
    public func reclaimDeadBlocks() -> [DeadClaim] {
        deadBlocks().filter { forget($0) }
    }

    /// Gives every block back if no reqid is held (an idle process keeps no claim in the namespace).
    public func releaseIfUnused() {
        let blocks = state.withLock { s -> [UInt32] in
            guard s.heldCount == 0 else { return [] }
            defer { s = State(nextBlock: s.nextBlock) }
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
            guard let reqid = s.take() else { return nil }
            s.heldCount += 1
            return reqid
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
            return state.withLock { s in
                var block = Block(size: size(of: first))
                let offset = block.take()!
                s.blocks[first] = block
                // Another thread may have claimed a block meanwhile: one that still has free reqids stays in reach.
                if let previous = s.current, s.blocks[previous]?.isFull == false { s.withFree.append(previous) }
                s.current = first
                s.heldCount += 1
                return first + offset
            }
        }
        throw Failure(description: "no free reqid block in \(range) (\(blockCount) blocks of \(blockSize))")
    }

    /// Gives a reqid back (only ones this allocator holds). A block whose reqids are all free again is given
    /// back to the namespace unless it is the last one held.
    public func release(_ reqid: UInt32) {
        guard range.contains(reqid) else { return }
        let first = blockStart(reqid)
        let emptied = state.withLock { s -> UInt32? in
            guard s.blocks[first]?.give(reqid - first) == true, let block = s.blocks[first] else { return nil }
            s.heldCount -= 1
            if block.freeCount == 1 && s.current != first { s.withFree.append(first) }
            guard s.blocks.count > 1, block.isUnused else { return nil }
            s.blocks[first] = nil
            if s.current == first { s.current = nil }
            return first
        }
        if let emptied { unlink(path(emptied)) }
    }

    /// Whether this allocator holds `reqid` (handed out and not given back). O(1).
    public func holds(_ reqid: UInt32) -> Bool {
        guard range.contains(reqid) else { return false }
        let first = blockStart(reqid)
        return state.withLock { $0.blocks[first]?.isTaken(reqid - first) ?? false }
    }

    /// How many reqids this allocator holds.
    public var heldCount: Int { state.withLock { $0.heldCount } }

    /// Every reqid this allocator holds. O(held blocks × block size): for tests and diagnostics.
    public var heldReqids: Set<UInt32> {
        state.withLock { s in
            var held: Set<UInt32> = []
            for (first, block) in s.blocks {
                for offset in 0..<block.size where block.isTaken(offset) { held.insert(first + offset) }
            }
            return held
        }
    }

    /// The blocks this allocator holds (their first reqids).
    public var heldBlocks: Set<UInt32> { state.withLock { Set($0.blocks.keys) } }

    /// Releases everything this allocator holds, blocks included.
    public func releaseAll() {
        let blocks = state.withLock { s -> [UInt32] in
            defer { s = State(nextBlock: s.nextBlock) }
            return Array(s.blocks.keys)
        }
        for first in blocks { unlink(path(first)) }
    }

    deinit { releaseAll() }

    /// The first reqid of the block `reqid` falls in.
    private func blockStart(_ reqid: UInt32) -> UInt32 {
        range.lowerBound + (reqid - range.lowerBound) / blockSize * blockSize
    }

    /// Reqids in the block starting at `first` (the range's last block may be short).
    private func size(of first: UInt32) -> UInt32 {
        UInt32(min(UInt64(blockSize), UInt64(range.upperBound) - UInt64(first) + 1))
    }

    private func path(_ first: UInt32) -> String { "\(directory)/block-\(first)" }

    /// Claims the block at `first` if no file names an owner for it. A dead owner's block is not taken here: what
    /// it left may still be in use (see ``deadBlocks()``), and only ``forget(_:)`` frees it.
    private func claim(_ first: UInt32) throws -> Bool {
        let file = path(first)
        let fd = open(file, O_CREAT | O_EXCL | O_WRONLY | O_CLOEXEC, 0o600)
        guard fd >= 0 else {
            guard errno == EEXIST else {
                throw Failure(description: "cannot create \(file): \(Errno(rawValue: errno))")
            }
            return false
        }
        let text = "\(ProcessIdentity.current)\n"
        _ = text.withCString { write(fd, $0, strlen($0)) }
        close(fd)
        return true
    }
}
