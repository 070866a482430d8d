import Glibc

/// A process as other processes can recognise it later: its pid and its start time (clock ticks after boot,
/// field 22 of `/proc/<pid>/stat`), so a pid the system has since given to another process is never taken for it.
///
/// Both only mean something inside one boot and one pid namespace; records that outlive either (files on a disk
/// shared between kernels, such as user-mode-linux's hostfs) carry a ``ProcessScope`` as well.
public struct ProcessIdentity: Hashable, Sendable, CustomStringConvertible {
    public var pid: pid_t
    /// 0 means unknown: then only the pid is compared.
    public var startTime: UInt64

    public init(pid: pid_t, startTime: UInt64) {
        self.pid = pid
        self.startTime = startTime
    }

    /// The calling process.
    public static var current: ProcessIdentity {
        let pid = getpid()
        return ProcessIdentity(pid: pid, startTime: startTime(of: pid) ?? 0)
    }

    /// That process, if it runs now.
    public init?(running pid: pid_t) {
        guard let startTime = Self.startTime(of: pid) else { return nil }
        self.init(pid: pid, startTime: startTime)
    }

    /// Parses ``description``: `pid startTime` (a bare pid counts with start time 0).
    public init?(_ text: Substring) {
        let words = text.split(whereSeparator: { $0 == " " || $0 == "\n" })
        guard let first = words.first, let pid = pid_t(first), pid > 0 else { return nil }
        self.pid = pid
        self.startTime = words.count > 1 ? UInt64(words[1]) ?? 0 : 0
    }

    /// Reads ``description`` from the first 64 bytes of `file`.
    public init?(file: String) {
        let fd = open(file, O_RDONLY | O_CLOEXEC | O_NOFOLLOW)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var buffer = [UInt8](repeating: 0, count: 64)
        let n = read(fd, &buffer, buffer.count)
        guard n > 0 else { return nil }
        self.init(Substring(String(decoding: buffer.prefix(n), as: UTF8.self)))
    }

    /// `pid startTime`.
    public var description: String { "\(pid) \(startTime)" }

    /// Whether that very process still runs (a zombie counts as gone).
    public var isRunning: Bool {
        guard kill(pid, 0) == 0 || errno == EPERM else { return false }
        // `kill` found it; a /proc that hides it (hidepid) leaves the pid as the only evidence: running.
        guard let now = Self.stat(of: pid) else { return true }
        if now.state == "Z" || now.state == "X" { return false }
        return startTime == 0 || now.startTime == startTime
    }

    /// The program name the kernel keeps for that process (`/proc/<pid>/comm`), if it is that very process.
    public var command: String? {
        let fd = open("/proc/\(pid)/comm", O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var buffer = [UInt8](repeating: 0, count: 64)
        let n = read(fd, &buffer, buffer.count)
        guard n > 0, isRunning else { return nil }
        return String(decoding: buffer.prefix(n), as: UTF8.self).trimmingSuffix("\n")
    }

    /// Field 22 of `/proc/<pid>/stat`.
    public static func startTime(of pid: pid_t) -> UInt64? { stat(of: pid)?.startTime }

    /// Fields 3 (state) and 22 (start time) of `/proc/<pid>/stat`, read after the parenthesised command name,
    /// which may hold spaces and parentheses.
    static func stat(of pid: pid_t) -> (state: Character, startTime: UInt64)? {
        let fd = open("/proc/\(pid)/stat", O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var buffer = [UInt8](repeating: 0, count: 1024)
        let n = read(fd, &buffer, buffer.count)
        guard n > 0, let close = buffer.prefix(n).lastIndex(of: UInt8(ascii: ")")) else { return nil }
        let fields = String(decoding: buffer[(close + 1)..<n], as: UTF8.self).split(separator: " ")
        // fields[0] is field 3 (state); start time is field 22.
        guard fields.count > 19, let state = fields[0].first, let start = UInt64(fields[19]) else { return nil }
        return (state, start)
    }
}

/// Where a ``ProcessIdentity`` is meaningful: one boot of one kernel (`/proc/sys/kernel/random/boot_id`) and one
/// pid namespace (the inode of `/proc/self/ns/pid`). Two user-mode-linux kernels sharing the host's disk, or two
/// containers sharing a folder, have different scopes, and neither may judge the other's processes.
public struct ProcessScope: Hashable, Sendable, CustomStringConvertible {
    public var bootID: String
    public var pidNamespace: UInt64

    public init(bootID: String, pidNamespace: UInt64) {
        self.bootID = bootID
        self.pidNamespace = pidNamespace
    }

    /// The calling process's scope; nil if `/proc` does not say.
    public static var current: ProcessScope? {
        let fd = open("/proc/sys/kernel/random/boot_id", O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var buffer = [UInt8](repeating: 0, count: 64)
        let n = read(fd, &buffer, buffer.count)
        var info = stat()
        guard n > 0, stat("/proc/self/ns/pid", &info) == 0 else { return nil }
        let bootID = String(decoding: buffer.prefix(n), as: UTF8.self).trimmingSuffix("\n")
        guard !bootID.isEmpty, !bootID.contains(" ") else { return nil }
        return ProcessScope(bootID: bootID, pidNamespace: UInt64(info.st_ino))
    }

    /// `bootID pidNamespace`.
    public var description: String { "\(bootID) \(pidNamespace)" }

    /// Parses ``description``.
    public init?(_ text: Substring) {
        let words = text.split(separator: " ")
        guard words.count == 2, let inode = UInt64(words[1]) else { return nil }
        self.init(bootID: String(words[0]), pidNamespace: inode)
    }
}

extension String {
    fileprivate func trimmingSuffix(_ suffix: String) -> String {
        hasSuffix(suffix) ? String(dropLast(suffix.count)) : self
    }
}
