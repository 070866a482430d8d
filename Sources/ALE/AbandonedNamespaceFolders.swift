import Glibc
import SystemSupport

/// The folders of network namespaces that are gone (`/run/winsock-secure-socket/netns-INODE`, with the reqid
/// claims and endpoint snapshots of the processes that ran there).
///
/// A dead process's claims are reclaimed by the next process that starts in its namespace. When the namespace
/// itself is deleted after its processes were killed (a crashed container, a test that `kill -9`s a server), that
/// next process never comes, and the folder would stay forever. A folder is removed only when:
/// - no claim's owner (pid + start time) and no snapshot's process still runs, and
/// - its namespace no longer exists: no process is in it and no descriptor or mount holds it, so no process can
///   ever enter it again (and nothing it left in that kernel namespace can be met under a reused reqid).
public enum AbandonedNamespaceFolders {
    /// Where the per-namespace folders live.
    public static let parent = "/run/winsock-secure-socket"

    /// Removes the abandoned folders under `parent`, never `keeping`; returns the paths removed. Reads the folders'
    /// owners (O(files)); reads every process's namespace, descriptors and the mount table only when a folder
    /// with no live owner was found.
    @discardableResult
    public static func remove(under parent: String = parent, keeping own: String? = nil) -> [String] {
        var candidates: [(path: String, inode: UInt64)] = []
        for name in Directory.names(in: parent) where name.hasPrefix("netns-") {
            let path = "\(parent)/\(name)"
            guard path != own, let inode = UInt64(name.dropFirst(6)), !hasLiveOwner(path) else { continue }
            candidates.append((path, inode))
        }
        guard !candidates.isEmpty else { return [] }
        let live = liveNamespaceInodes()
        var removed: [String] = []
        for candidate in candidates where !live.contains(candidate.inode) {
            for sub in ["reqids", "endpoints"] {
                for file in Directory.names(in: "\(candidate.path)/\(sub)") {
                    unlink("\(candidate.path)/\(sub)/\(file)")
                }
                rmdir("\(candidate.path)/\(sub)")
            }
            if rmdir(candidate.path) == 0 { removed.append(candidate.path) }
        }
        return removed
    }

    /// Whether a claim's owner or a snapshot's process in `folder` still runs.
    static func hasLiveOwner(_ folder: String) -> Bool {
        for file in Directory.names(in: "\(folder)/reqids") {
            // A claim without a readable owner is being written: live.
            guard let owner = ProcessIdentity(file: "\(folder)/reqids/\(file)") else { return true }
            if owner.isRunning { return true }
        }
        for file in Directory.names(in: "\(folder)/endpoints") {
            // `PID-TAG.json`; its process may hold claims in a moment.
            guard let pid = pid_t(file.prefix(while: { $0 != "-" && $0 != "." })) else { continue }
            if kill(pid, 0) == 0 || errno == EPERM { return true }
        }
        return false
    }

    /// The inodes of every network namespace something still holds: a process in it, a descriptor of it, a mount
    /// of it (`ip netns add` bind-mounts one under `/run/netns`).
    static func liveNamespaceInodes() -> Set<UInt64> {
        var live: Set<UInt64> = []
        for entry in Directory.names(in: "/proc") {
            guard pid_t(entry) != nil else { continue }
            var info = stat()
            if stat("/proc/\(entry)/ns/net", &info) == 0 { live.insert(UInt64(info.st_ino)) }
            for fd in Directory.names(in: "/proc/\(entry)/fd") {
                if let inode = namespaceInode(link("/proc/\(entry)/fd/\(fd)")) { live.insert(inode) }
            }
        }
        // mountinfo's fourth field is the mount's root: `net:[INODE]` for a bind-mounted namespace.
        for line in readText("/proc/self/mountinfo").split(separator: "\n") {
            let fields = line.split(separator: " ", maxSplits: 4)
            if fields.count > 3, let inode = namespaceInode(String(fields[3])) { live.insert(inode) }
        }
        return live
    }

    /// `net:[INODE]` → INODE.
    static func namespaceInode(_ text: String?) -> UInt64? {
        guard let text, text.hasPrefix("net:["), text.hasSuffix("]") else { return nil }
        return UInt64(text.dropFirst(5).dropLast())
    }

    static func link(_ path: String) -> String? {
        var buffer = [CChar](repeating: 0, count: 128)
        let n = readlink(path, &buffer, buffer.count - 1)
        guard n > 0 else { return nil }
        return String(decoding: buffer.prefix(n).map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    static func readText(_ path: String) -> String {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return "" }
        defer { close(fd) }
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 16 * 1024)
        // Bounded: mountinfo is finite; stop at 16 MiB whatever happens.
        while bytes.count < 16 << 20 {
            let n = read(fd, &chunk, chunk.count)
            guard n > 0 else { break }
            bytes += chunk.prefix(n)
        }
        return String(decoding: bytes, as: UTF8.self)
    }
}
