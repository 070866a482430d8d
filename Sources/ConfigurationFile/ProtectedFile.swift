import Glibc

/// What a file the library trusts must be, and why (the words of the error when it is not).
///
/// Whoever can write the keying file, the static keys file, the identity map or a certificate, key or authority
/// file the keying file names decides what the library believes: which keys are used, whose certificates are
/// believed, who may claim which identity, who becomes whom. So each is read only if it is:
///
/// - a regular file (a symbolic link is followed: what it leads to is opened, and that file is what is checked);
/// - owned by root or by the process's effective user;
/// - not writable by its group or by others;
/// - for a secret (a private key, the static keys): not readable by its group or by others either;
/// - at most ``maximumBytes`` long.
///
/// The checks run on the opened descriptor (`fstat`), and the bytes are read through that same descriptor, so the
/// file checked is the file read, whatever is renamed or linked in the meantime. The folders on the way are not
/// checked: keep them writable by root only.
public struct FileProtection: Hashable, Sendable {
    /// What whoever can write the file decides, for the error: "whoever can write it `writerDecides`".
    public var writerDecides: String
    /// For a secret: what whoever can read it can do ("whoever can read it `readerCan`"); nil for a file anyone
    /// may read (a certificate, the keying file).
    public var readerCan: String?
    /// The largest file accepted, in bytes.
    public var maximumBytes: Int
    /// Off: only "a regular file" and the size are checked, not the owner and the mode (the identity map's
    /// `strictPermissions: false`, for tests).
    public var checksOwnerAndMode: Bool

    public init(
        writerDecides: String, readerCan: String? = nil, maximumBytes: Int = 1 << 20, checksOwnerAndMode: Bool = true
    ) {
        self.writerDecides = writerDecides
        self.readerCan = readerCan
        self.maximumBytes = maximumBytes
        self.checksOwnerAndMode = checksOwnerAndMode
    }

    /// Whether this protection is for a secret (``readerCan`` is set).
    public var isSecret: Bool { readerCan != nil }
}

/// A file the library refused to read: which file, the rule it breaks, in words.
public struct ProtectedFileError: Error, Hashable, Sendable, CustomStringConvertible {
    /// The rule the file breaks.
    public enum Rule: Hashable, Sendable {
        /// `open`, `fstat` or `read` failed (``ProtectedFileError/errno`` says why; the file may not exist).
        case unreadable
        /// Not a regular file (a directory, a FIFO, a device, a socket).
        case notRegularFile
        /// Owned by a user other than root and the process's effective user.
        case foreignOwner(uid: UInt32)
        /// Writable by its group or by others.
        case writableByGroupOrOthers(mode: UInt32)
        /// A secret readable by its group or by others.
        case readableByGroupOrOthers(mode: UInt32)
        /// Longer than the protection allows.
        case tooLarge(limit: Int)
    }

    /// The file, as it was named.
    public var path: String
    public var rule: Rule
    /// For ``Rule/unreadable``: the errno of the failed call.
    public var errno: Int32?
    /// For ``Rule/unreadable``: the call that failed (`open`, `fstat`, `read`).
    public var step: String?
    /// The rule in words, without the path: `writable by group or others (mode 666): whoever can write it …`.
    public var detail: String

    public init(path: String, rule: Rule, errno: Int32? = nil, step: String? = nil, detail: String) {
        self.path = path
        self.rule = rule
        self.errno = errno
        self.step = step
        self.detail = detail
    }

    /// Whether the file does not exist (`open` failed with `ENOENT`).
    public var isMissing: Bool { rule == .unreadable && errno == ENOENT }

    public var description: String { "\(path): \(detail)" }
}

/// The one checked read of the library's trusted files (see ``FileProtection``).
public enum ProtectedFile {
    /// The verdict on a file of `mode` (with its type bits, as `st_mode`) owned by `owner`, read by a process
    /// whose effective user is `effectiveUser`: nil if it may be read, else the rule it breaks. The rules in
    /// order: regular file, not writable by group or others, owner, not readable by group or others (secrets).
    public static func verdict(
        path: String, mode: UInt32, owner: UInt32, effectiveUser: UInt32, _ protection: FileProtection
    ) -> ProtectedFileError? {
        let type = mode & UInt32(S_IFMT)
        guard type == UInt32(S_IFREG) else {
            return ProtectedFileError(
                path: path, rule: .notRegularFile, detail: "not a regular file (\(typeName(type)))")
        }
        guard protection.checksOwnerAndMode else { return nil }
        let permissions = mode & 0o7777
        let octal = String(permissions, radix: 8)
        if permissions & UInt32(S_IWGRP | S_IWOTH) != 0 {
            return ProtectedFileError(
                path: path, rule: .writableByGroupOrOthers(mode: permissions),
                detail: "writable by group or others (mode \(octal)): whoever can write it \(protection.writerDecides)")
        }
        if owner != 0 && owner != effectiveUser {
            return ProtectedFileError(
                path: path, rule: .foreignOwner(uid: owner),
                detail: "owned by uid \(owner), not by root or this process's user (uid \(effectiveUser)): "
                    + "its owner can rewrite it, and whoever can write it \(protection.writerDecides)")
        }
        if let readerCan = protection.readerCan, permissions & UInt32(S_IRGRP | S_IROTH) != 0 {
            return ProtectedFileError(
                path: path, rule: .readableByGroupOrOthers(mode: permissions),
                detail: "readable by group or others (mode \(octal)): whoever can read it \(readerCan) "
                    + "(chmod 600)")
        }
        return nil
    }

    /// The bytes of the file at `path`, if it passes the checks of `protection`. The file is opened once
    /// (following a symbolic link, without blocking on a FIFO), checked through the opened descriptor and read
    /// through it.
    ///
    /// - Throws: ``ProtectedFileError``, naming the file and the rule it breaks.
    public static func read(_ path: String, _ protection: FileProtection) throws(ProtectedFileError) -> [UInt8] {
        try read(path, protection, secretIf: { _ in nil })
    }

    /// ``read(_:_:)`` for a file that is a secret only when what it holds says so (a keying file with a
    /// pre-shared key): `secret` looks at the bytes and gives what a reader of them can do, or nil; then the file
    /// must not be readable by group or others either (checked on the descriptor the bytes came through).
    public static func read(
        _ path: String, _ protection: FileProtection, secretIf secret: ([UInt8]) -> String?
    ) throws(ProtectedFileError) -> [UInt8] {
        func failure(_ step: String, _ code: Int32) -> ProtectedFileError {
            ProtectedFileError(
                path: path, rule: .unreadable, errno: code, step: step,
                detail: "\(step): \(String(cString: strerror(code))) (errno \(code))")
        }
        // O_NONBLOCK: opening a FIFO must not wait for a writer (it is then refused as not a regular file);
        // it changes nothing for a regular file.
        let fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK)
        guard fd >= 0 else { throw failure("open", errno) }
        defer { close(fd) }
        var info = stat()
        guard fstat(fd, &info) == 0 else { throw failure("fstat", errno) }
        if let refused = verdict(
            path: path, mode: UInt32(info.st_mode), owner: UInt32(info.st_uid), effectiveUser: UInt32(geteuid()),
            protection)
        {
            throw refused
        }
        let limit = protection.maximumBytes
        var bytes = [UInt8](repeating: 0, count: limit + 1)
        var total = 0
        // Bounded: each successful read adds at least one byte up to limit + 1; EINTR retries are capped.
        var interrupted = 0
        while total <= limit {
            let count = bytes.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress! + total, limit + 1 - total) }
            if count < 0 {
                let code = errno
                if code == EINTR && interrupted < 100 {
                    interrupted += 1
                    continue
                }
                throw failure("read", code)
            }
            if count == 0 { break }
            total += count
        }
        guard total <= limit else {
            throw ProtectedFileError(path: path, rule: .tooLarge(limit: limit), detail: "larger than \(limit) bytes")
        }
        let content = Array(bytes[..<total])
        if protection.readerCan == nil, let readerCan = secret(content) {
            var asSecret = protection
            asSecret.readerCan = readerCan
            if let refused = verdict(
                path: path, mode: UInt32(info.st_mode), owner: UInt32(info.st_uid), effectiveUser: UInt32(geteuid()),
                asSecret)
            {
                throw refused
            }
        }
        return content
    }

    private static func typeName(_ type: UInt32) -> String {
        switch type {
        case UInt32(S_IFDIR): "a directory"
        case UInt32(S_IFIFO): "a FIFO"
        case UInt32(S_IFCHR): "a character device"
        case UInt32(S_IFBLK): "a block device"
        case UInt32(S_IFSOCK): "a socket"
        case UInt32(S_IFLNK): "a symbolic link"
        default: "file type \(String(type, radix: 8))"
        }
    }
}
