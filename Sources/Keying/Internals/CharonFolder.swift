import Foundation
import Glibc
import SystemSupport
import VICI

/// The private folder of one ``CharonDaemon`` (`<parent>/charon-XXXXXX`: configuration, VICI socket, log) and
/// the record in it of who owns it, so that a folder whose owner died without ``CharonDaemon/stop()`` (`kill -9`,
/// a crash, a kernel powered off under it) is recognised and removed by the next daemon started beside it.
///
/// The record (`owner`, rewritten by rename) holds three lines:
/// ```
/// owner <pid> <start time>      the process that made the folder
/// scope <boot id> <pid ns>      where those numbers mean something
/// charon <pid> <start time>     the charon it runs now (absent until started)
/// ```
/// A folder is abandoned when its record has our scope, its owner no longer runs, and it is ours (a directory,
/// not a link, owned by our user). Its charon normally died with its owner (parent-death signal); if it still
/// runs (started without `setpriv`), it is killed first. A folder of another scope (another boot, another
/// user-mode-linux kernel on the same disk, another pid namespace) is never touched: its processes cannot be
/// judged from here.
struct CharonFolder {
    static let recordName = "owner"
    static let prefix = "charon-"

    let path: String

    /// What the record says.
    struct Record: Equatable {
        var owner: ProcessIdentity
        var scope: ProcessScope
        var charon: ProcessIdentity?

        var text: String {
            "owner \(owner)\nscope \(scope)\n" + (charon.map { "charon \($0)\n" } ?? "")
        }

        init(owner: ProcessIdentity, scope: ProcessScope, charon: ProcessIdentity? = nil) {
            self.owner = owner
            self.scope = scope
            self.charon = charon
        }

        init?(text: String) {
            var owner: ProcessIdentity?
            var scope: ProcessScope?
            var charon: ProcessIdentity?
            for line in text.split(separator: "\n") {
                guard let space = line.firstIndex(of: " ") else { return nil }
                let value = line[line.index(after: space)...]
                switch line[..<space] {
                case "owner": owner = ProcessIdentity(value)
                case "scope": scope = ProcessScope(value)
                case "charon": charon = ProcessIdentity(value)
                default: continue
                }
            }
            guard let owner, let scope else { return nil }
            self.init(owner: owner, scope: scope, charon: charon)
        }
    }

    /// A folder removed by ``reclaimAbandoned(in:)``.
    struct Reclaimed: Equatable {
        var path: String
        var owner: ProcessIdentity
        /// The orphaned charon killed, if one still ran.
        var killedCharon: ProcessIdentity?
    }

    /// Creates `<parent>/charon-XXXXXX` (mode 0700) with a record naming the calling process.
    static func make(in parent: String, command: String) throws(VICIError) -> CharonFolder {
        guard parent.hasPrefix("/"), !parent.hasPrefix("/run"), !parent.hasPrefix("/var/run"),
            parent.allSatisfy({ $0.isLetter || $0.isNumber || "/._-".contains($0) })
        else {
            throw .invalid(command, "temporary directory \(parent) must be absolute, outside /run, and plain")
        }
        var template = Array("\(parent)/\(prefix)XXXXXX".utf8CString)
        let made = template.withUnsafeMutableBufferPointer { buffer -> Bool in
            guard let base = buffer.baseAddress else { return false }
            return mkdtemp(base) != nil
        }
        guard made else { throw .syscall(command, "mkdtemp in \(parent)", errno: .init(rawValue: errno)) }
        let folder = CharonFolder(
            path: String(decoding: template.dropLast().map { UInt8(bitPattern: $0) }, as: UTF8.self))
        if let scope = ProcessScope.current {
            try folder.write(Record(owner: .current, scope: scope), command: command)
        }
        return folder
    }

    var record: Record? {
        guard let data = FileManager.default.contents(atPath: "\(path)/\(Self.recordName)") else { return nil }
        return Record(text: String(decoding: data, as: UTF8.self))
    }

    /// Notes the charon now running from this folder (after each start).
    func noteCharon(pid: pid_t, command: String) throws(VICIError) {
        guard var record, let charon = ProcessIdentity(running: pid) else { return }
        record.charon = charon
        try write(record, command: command)
    }

    private func write(_ record: Record, command: String) throws(VICIError) {
        let file = "\(path)/\(Self.recordName)"
        do {
            try record.text.write(toFile: file, atomically: true, encoding: .utf8)
        } catch {
            throw VICIError(.io, command: command, detail: "write \(file): \(error)")
        }
    }

    func remove() { try? FileManager.default.removeItem(atPath: path) }

    /// Removes every abandoned folder in `parent` (see the type's description) and returns what it removed.
    /// Bounded by the number of entries in `parent`; an orphaned charon gets 1 s to die after `SIGKILL`.
    static func reclaimAbandoned(in parent: String) -> [Reclaimed] {
        guard let scope = ProcessScope.current, let names = try? FileManager.default.contentsOfDirectory(atPath: parent)
        else { return [] }
        var reclaimed: [Reclaimed] = []
        for name in names where name.hasPrefix(prefix) && name.utf8.count == prefix.utf8.count + 6 {
            let folder = CharonFolder(path: "\(parent)/\(name)")
            var info = stat()
            guard lstat(folder.path, &info) == 0, info.st_mode & S_IFMT == S_IFDIR, info.st_uid == geteuid(),
                let record = folder.record, record.scope == scope, record.owner != .current,
                !record.owner.isRunning
            else { continue }
            var killed: ProcessIdentity?
            if let charon = record.charon, charon.command == "charon" {
                kill(charon.pid, SIGKILL)
                killed = charon
                for _ in 0..<100 where charon.isRunning { usleep(10_000) }
            }
            folder.remove()
            reclaimed.append(Reclaimed(path: folder.path, owner: record.owner, killedCharon: killed))
        }
        return reclaimed
    }
}
