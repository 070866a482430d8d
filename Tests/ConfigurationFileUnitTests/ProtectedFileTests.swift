import ConfigurationFile
import Glibc
import XCTest

/// The checks every file the library trusts gets (keying file, static keys, identity map, certificates, keys,
/// authorities): the pure rule (mode and owner to a verdict), then the checked read on files this process owns.
final class ProtectedFileTests: XCTestCase {
    let plain = FileProtection(writerDecides: "chooses who becomes whom")
    let secret = FileProtection(writerDecides: "chooses this host's key", readerCan: "can authenticate as this host")

    func rule(_ mode: UInt32, owner: UInt32 = 0, me: UInt32 = 0, _ protection: FileProtection) -> ProtectedFileError
        .Rule?
    {
        ProtectedFile.verdict(path: "f", mode: mode, owner: owner, effectiveUser: me, protection)?.rule
    }

    func testTheRule() {
        let file = UInt32(S_IFREG)
        // Regular files owned by root or by us, not writable by group or others: accepted.
        for mode: UInt32 in [0o644, 0o640, 0o600, 0o400, 0o444, 0o755, 0o4755] {
            XCTAssertNil(rule(file | mode, plain), String(mode, radix: 8))
        }
        XCTAssertNil(rule(file | 0o644, owner: 1000, me: 1000, plain), "owned by the effective user")
        XCTAssertNil(rule(file | 0o644, owner: 0, me: 1000, plain), "owned by root, read by another user")
        // Writable by group or others.
        for mode: UInt32 in [0o666, 0o664, 0o662, 0o660, 0o646, 0o602, 0o620, 0o777] {
            XCTAssertEqual(rule(file | mode, plain), .writableByGroupOrOthers(mode: mode), String(mode, radix: 8))
        }
        // Another owner.
        XCTAssertEqual(rule(file | 0o644, owner: 65534, plain), .foreignOwner(uid: 65534))
        XCTAssertEqual(rule(file | 0o600, owner: 1001, me: 1000, secret), .foreignOwner(uid: 1001))
        // A secret: not readable by group or others either.
        XCTAssertNil(rule(file | 0o600, secret))
        XCTAssertNil(rule(file | 0o400, secret))
        for mode: UInt32 in [0o640, 0o604, 0o644, 0o444] {
            XCTAssertEqual(rule(file | mode, secret), .readableByGroupOrOthers(mode: mode), String(mode, radix: 8))
        }
        // Anything but a regular file, whatever its mode.
        for type in [S_IFDIR, S_IFIFO, S_IFCHR, S_IFBLK, S_IFSOCK, S_IFLNK] {
            XCTAssertEqual(rule(UInt32(type) | 0o600, secret), .notRegularFile)
        }
        // The first rule broken is the one reported: writable before the owner, the owner before readable.
        XCTAssertEqual(rule(file | 0o666, owner: 65534, secret), .writableByGroupOrOthers(mode: 0o666))
        XCTAssertEqual(rule(file | 0o644, owner: 65534, secret), .foreignOwner(uid: 65534))
        // Checks off: only the file type counts.
        var loose = plain
        loose.checksOwnerAndMode = false
        XCTAssertNil(rule(file | 0o666, owner: 65534, loose))
        XCTAssertEqual(rule(UInt32(S_IFDIR) | 0o755, loose), .notRegularFile)
    }

    /// The error names the file and says the rule and why it matters, in words.
    func testTheWords() throws {
        let file = UInt32(S_IFREG)
        let writable = try XCTUnwrap(
            ProtectedFile.verdict(path: "keying.conf", mode: file | 0o666, owner: 0, effectiveUser: 0, plain))
        XCTAssertEqual(
            writable.description,
            "keying.conf: writable by group or others (mode 666): whoever can write it chooses who becomes whom")
        let readable = try XCTUnwrap(
            ProtectedFile.verdict(path: "/k/a.key", mode: file | 0o644, owner: 0, effectiveUser: 0, secret))
        XCTAssertTrue(
            readable.description.hasPrefix(
                "/k/a.key: readable by group or others (mode 644): whoever can read it can authenticate as this host"),
            readable.description)
        let foreign = try XCTUnwrap(
            ProtectedFile.verdict(path: "ca.crt", mode: file | 0o644, owner: 65534, effectiveUser: 0, plain))
        XCTAssertTrue(
            foreign.description.hasPrefix("ca.crt: owned by uid 65534, not by root or this process's user (uid 0)"),
            foreign.description)
        let folder = try XCTUnwrap(
            ProtectedFile.verdict(path: "/etc", mode: UInt32(S_IFDIR) | 0o755, owner: 0, effectiveUser: 0, plain))
        XCTAssertEqual(folder.description, "/etc: not a regular file (a directory)")
    }

    // MARK: The checked read (files of this process's own user: no privilege needed)

    var folder = ""

    override func setUpWithError() throws {
        var template = Array("/tmp/protected-file-test.XXXXXX".utf8CString)
        guard let made = mkdtemp(&template) else { throw POSIXError(.EIO) }
        folder = String(cString: made)
    }

    override func tearDown() {
        if let names = try? FileManager.default.contentsOfDirectory(atPath: folder) {
            for name in names { unlink("\(folder)/\(name)") }
        }
        rmdir(folder)
    }

    func write(_ name: String, _ bytes: [UInt8], mode: mode_t) throws -> String {
        let path = "\(folder)/\(name)"
        let fd = open(path, O_CREAT | O_TRUNC | O_WRONLY | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw POSIXError(.EIO) }
        defer { close(fd) }
        let written = bytes.withUnsafeBytes { Glibc.write(fd, $0.baseAddress, $0.count) }
        guard written == bytes.count, fchmod(fd, mode) == 0 else { throw POSIXError(.EIO) }
        return path
    }

    func readRule(_ path: String, _ protection: FileProtection) -> ProtectedFileError.Rule? {
        do {
            _ = try ProtectedFile.read(path, protection)
            return nil
        } catch {
            return error.rule
        }
    }

    func testReadsAnAcceptableFileAndRefusesTheOthers() throws {
        let content = Array("identity a.example\n\u{0}\u{FF}".utf8) + [0xff, 0xfe]
        let good = try write("good", content, mode: 0o644)
        XCTAssertEqual(try ProtectedFile.read(good, plain), content, "bytes as they are, not validated as text")
        XCTAssertEqual(readRule(good, secret), .readableByGroupOrOthers(mode: 0o644))
        let key = try write("key", content, mode: 0o600)
        XCTAssertEqual(try ProtectedFile.read(key, secret), content)
        let open = try write("open", content, mode: 0o666)
        XCTAssertEqual(readRule(open, plain), .writableByGroupOrOthers(mode: 0o666))
        XCTAssertEqual(readRule(try write("group", content, mode: 0o620), plain), .writableByGroupOrOthers(mode: 0o620))
        var loose = plain
        loose.checksOwnerAndMode = false
        XCTAssertEqual(try ProtectedFile.read(open, loose), content)
        XCTAssertEqual(try ProtectedFile.read(try write("empty", [], mode: 0o600), plain), [])
    }

    func testMissingFilesFoldersFIFOsAndSize() throws {
        do {
            _ = try ProtectedFile.read("\(folder)/absent", plain)
            XCTFail("read a file that does not exist")
        } catch {
            XCTAssertEqual(error.rule, .unreadable)
            XCTAssertEqual(error.errno, ENOENT)
            XCTAssertEqual(error.step, "open")
            XCTAssertTrue(error.isMissing)
            XCTAssertTrue(error.description.hasPrefix("\(folder)/absent: open: "), error.description)
        }
        XCTAssertEqual(readRule(folder, plain), .notRegularFile)
        // A FIFO is refused at once, not waited on for a writer.
        let fifo = "\(folder)/fifo"
        XCTAssertEqual(mkfifo(fifo, 0o600), 0)
        XCTAssertEqual(readRule(fifo, plain), .notRegularFile)
        // The size limit counts bytes read through the descriptor.
        var small = plain
        small.maximumBytes = 8
        let eight = try write("eight", Array(repeating: 0x41, count: 8), mode: 0o600)
        XCTAssertEqual(try ProtectedFile.read(eight, small).count, 8)
        let nine = try write("nine", Array(repeating: 0x41, count: 9), mode: 0o600)
        XCTAssertEqual(readRule(nine, small), .tooLarge(limit: 8))
    }

    /// A symbolic link is followed and the file it leads to is what is checked (and read): a link to an acceptable
    /// file is accepted, a link to a file others can write is refused, and a link to a folder too.
    func testSymbolicLinksAreFollowedAndTheirTargetChecked() throws {
        let content = Array("x\n".utf8)
        let good = try write("good", content, mode: 0o600)
        let open = try write("open", content, mode: 0o666)
        XCTAssertEqual(symlink(good, "\(folder)/to-good"), 0)
        XCTAssertEqual(symlink(open, "\(folder)/to-open"), 0)
        XCTAssertEqual(symlink(folder, "\(folder)/to-folder"), 0)
        XCTAssertEqual(symlink("\(folder)/absent", "\(folder)/dangling"), 0)
        XCTAssertEqual(try ProtectedFile.read("\(folder)/to-good", secret), content)
        XCTAssertEqual(readRule("\(folder)/to-open", plain), .writableByGroupOrOthers(mode: 0o666))
        XCTAssertEqual(readRule("\(folder)/to-folder", plain), .notRegularFile)
        XCTAssertEqual(readRule("\(folder)/dangling", plain), .unreadable)
    }

    /// A file refused as a whole becomes a configuration error at line 0 that carries the refusal.
    func testAConfigurationErrorCarriesTheRefusedFile() throws {
        let open = try write("keying.conf", [], mode: 0o666)
        do {
            _ = try ProtectedFile.read(open, plain)
            XCTFail("read a world-writable file")
        } catch {
            let refused = ConfigurationError<Never>(file: error)
            XCTAssertEqual(refused.line, 0)
            XCTAssertEqual(refused.file, error)
            XCTAssertNil(refused.reason)
            XCTAssertEqual(
                refused.description,
                "\(open): writable by group or others (mode 666): whoever can write it "
                    + "chooses who becomes whom")
        }
    }
}
