import ConfigurationFile
import Foundation
import Keying
import TierTesting
import XCTest

/// Tier 2 (root, for `chown`): the keying file, the static keys file and the certificate, key and authority files
/// the keying file names are read only if each is a regular file owned by root or the effective user and not
/// writable by group or others (a key or the static keys: not readable by them either); the error names the file
/// and the rule it breaks.
final class TrustedFileTests: XCTestCase {
    var folder = ""

    override func setUpWithError() throws {
        try requireTier(.hostKernel)
        var template = Array("/tmp/trusted-file-test.XXXXXX".utf8CString)
        guard let made = mkdtemp(&template) else { throw POSIXError(.EIO) }
        folder = String(cString: made)
    }

    override func tearDown() {
        if !folder.isEmpty { try? FileManager.default.removeItem(atPath: folder) }
    }

    static let staticKeysLine =
        "10.77.0.2 10.77.0.1 0x1000 0x2000 rfc4106(gcm(aes)) 0x" + String(repeating: "01", count: 20) + " 0x"
        + String(repeating: "11", count: 20) + " 128 identity b.example\n"

    /// Writes `text` to `name` in the test folder with `mode` (set on the descriptor, whatever the umask).
    @discardableResult
    func write(_ name: String, _ text: String, mode: mode_t) throws -> String {
        let path = "\(folder)/\(name)"
        unlink(path)
        let fd = open(path, O_CREAT | O_EXCL | O_WRONLY | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw POSIXError(POSIXErrorCode(rawValue: errno) ?? .EIO) }
        defer { close(fd) }
        let bytes = Array(text.utf8)
        let written = bytes.withUnsafeBytes { Glibc.write(fd, $0.baseAddress, $0.count) }
        guard written == bytes.count, fchmod(fd, mode) == 0 else { throw POSIXError(.EIO) }
        return path
    }

    /// An acceptable set: keying file 644, certificate 644, key 600, two authorities 644 and 444, static keys 600.
    /// The "certificates" are not parsed here, only read.
    func writeAcceptableSet() throws -> (keying: String, staticKeys: String) {
        try write("a.crt", "CERTIFICATE a\n", mode: 0o644)
        try write("a.key", "KEY a\n", mode: 0o600)
        try write("ca1.crt", "CA 1\n", mode: 0o644)
        try write("ca2.crt", "CA 2\n", mode: 0o444)
        let keying = try write(
            "keying.conf",
            """
            identity a.example
            certificate \(folder)/a.crt
            private-key \(folder)/a.key
            authority \(folder)/ca1.crt
            authority \(folder)/ca2.crt
            charon private

            """, mode: 0o644)
        let staticKeys = try write("static-keys", Self.staticKeysLine, mode: 0o600)
        return (keying, staticKeys)
    }

    /// The file refusal `body` throws, as a configuration error or inside a keying error.
    func refusal(_ body: () throws -> Void) -> ProtectedFileError? {
        do {
            try body()
            return nil
        } catch let error as KeyingConfiguration.ParseError {
            XCTAssertEqual(error.line, 0, "a refused file is a problem of the whole file")
            XCTAssertEqual(error.description, error.file?.description)
            return error.file
        } catch let error as StaticKeyBackend.ParseError {
            XCTAssertEqual(error.line, 0, "a refused file is a problem of the whole file")
            return error.file
        } catch let error as KeyingError {
            XCTAssertEqual(error.code, .unavailable)
            let file = error.underlying as? ProtectedFileError
            if let file { XCTAssertTrue(error.explanation.hasSuffix(file.description), error.explanation) }
            return file
        } catch {
            XCTFail("unexpected \(error)")
            return nil
        }
    }

    func testAnAcceptableSetOfFilesIsRead() throws {
        let (keying, staticKeys) = try writeAcceptableSet()
        let configuration = try KeyingConfiguration.load(path: keying)
        XCTAssertEqual(configuration.identity, "a.example")
        guard case .certificate(let certificate, let key, let authorities) = try configuration.credentials().method
        else { return XCTFail("certificate credentials expected") }
        XCTAssertEqual(certificate, Array("CERTIFICATE a\n".utf8))
        XCTAssertEqual(key, Array("KEY a\n".utf8))
        XCTAssertEqual(authorities, [Array("CA 1\n".utf8), Array("CA 2\n".utf8)])
        let peers = try StaticKeyBackend.load(path: staticKeys)
        XCTAssertEqual(peers.map(\.identity), ["b.example"])
        // A read-only key (400) is as good as 600.
        chmod("\(folder)/a.key", 0o400)
        XCTAssertNoThrow(try configuration.credentials())
    }

    func testAWorldWritableKeyingFileIsRefused() throws {
        let (keying, _) = try writeAcceptableSet()
        chmod(keying, 0o666)
        let refused = try XCTUnwrap(refusal { _ = try KeyingConfiguration.load(path: keying) })
        XCTAssertEqual(refused.rule, .writableByGroupOrOthers(mode: 0o666))
        XCTAssertEqual(refused.path, keying)
        XCTAssertTrue(
            refused.description.hasPrefix("\(keying): writable by group or others (mode 666): whoever can write it "),
            refused.description)
        chmod(keying, 0o664)
        XCTAssertEqual(
            refusal { _ = try KeyingConfiguration.load(path: keying) }?.rule, .writableByGroupOrOthers(mode: 0o664))
        chmod(keying, 0o600)
        XCTAssertNoThrow(try KeyingConfiguration.load(path: keying))
        // Absent: told apart, so the library can treat it as "not configured".
        XCTAssertEqual(refusal { _ = try KeyingConfiguration.load(path: "\(folder)/absent") }?.isMissing, true)
        // A folder is not a keying file.
        XCTAssertEqual(refusal { _ = try KeyingConfiguration.load(path: folder) }?.rule, .notRegularFile)
    }

    /// A keying file is a secret once it holds one (psk, peer-psk, eap-user): readable by group or others, it is
    /// refused; the same file without secrets (certificates) may be world-readable.
    func testAKeyingFileHoldingSecretsMustNotBeReadableByOthers() throws {
        for secret in [
            "psk \"group key\"", "peer-psk b.example \"a-b key\"",
            "certificate \(folder)/a.crt\nprivate-key \(folder)/a.key\neap-user alice \"alice's secret\"",
        ] {
            let keying = try write(
                "secret.conf", "identity a.example\n\(secret)\ncharon private\n", mode: 0o644)
            let refused = try XCTUnwrap(refusal { _ = try KeyingConfiguration.load(path: keying) }, secret)
            XCTAssertEqual(refused.rule, .readableByGroupOrOthers(mode: 0o644), secret)
            XCTAssertTrue(refused.description.contains("chmod 600"), refused.description)
            chmod(keying, 0o640)
            XCTAssertEqual(
                refusal { _ = try KeyingConfiguration.load(path: keying) }?.rule,
                .readableByGroupOrOthers(mode: 0o640), secret)
            chmod(keying, 0o600)
            XCTAssertNoThrow(try KeyingConfiguration.load(path: keying), secret)
        }
        let (certificates, _) = try writeAcceptableSet()
        XCTAssertNoThrow(try KeyingConfiguration.load(path: certificates), "no secret in it: 644 is fine")
    }

    func testAGroupWritableStaticKeysFileIsRefused() throws {
        let (_, staticKeys) = try writeAcceptableSet()
        chmod(staticKeys, 0o660)
        let refused = try XCTUnwrap(refusal { _ = try StaticKeyBackend.load(path: staticKeys) })
        XCTAssertEqual(refused.rule, .writableByGroupOrOthers(mode: 0o660))
        XCTAssertTrue(refused.description.contains("static-keys: writable by group or others (mode 660)"))
        // It holds keys: readable by group or others is refused too.
        chmod(staticKeys, 0o644)
        XCTAssertEqual(
            refusal { _ = try StaticKeyBackend.load(path: staticKeys) }?.rule, .readableByGroupOrOthers(mode: 0o644))
        chmod(staticKeys, 0o600)
        XCTAssertEqual(try StaticKeyBackend.load(path: staticKeys).count, 1)
    }

    func testAKeyReadableByOthersIsRefused() throws {
        let (keying, _) = try writeAcceptableSet()
        let configuration = try KeyingConfiguration.load(path: keying)
        for mode: mode_t in [0o644, 0o640, 0o604] {
            chmod("\(folder)/a.key", mode)
            let refused = try XCTUnwrap(refusal { _ = try configuration.credentials() }, String(mode, radix: 8))
            XCTAssertEqual(refused.rule, .readableByGroupOrOthers(mode: UInt32(mode)))
            XCTAssertEqual(refused.path, "\(folder)/a.key")
            XCTAssertTrue(
                refused.description.contains(
                    "a.key: readable by group or others (mode \(String(mode, radix: 8))): whoever can read it "
                        + "can authenticate as this host"),
                refused.description)
        }
        // The KeyingError says which setting named it.
        do {
            _ = try configuration.credentials()
            XCTFail("a key readable by others was read")
        } catch {
            XCTAssertTrue(error.explanation.hasPrefix("keying file's private-key: \(folder)/a.key: "), "\(error)")
        }
        // A certificate may be read by anyone, but not written.
        chmod("\(folder)/a.key", 0o600)
        chmod("\(folder)/a.crt", 0o646)
        XCTAssertEqual(refusal { _ = try configuration.credentials() }?.rule, .writableByGroupOrOthers(mode: 0o646))
    }

    func testAForeignOwnedAuthorityFileIsRefused() throws {
        let (keying, staticKeys) = try writeAcceptableSet()
        let configuration = try KeyingConfiguration.load(path: keying)
        XCTAssertEqual(chown("\(folder)/ca2.crt", 65534, 65534), 0)
        let refused = try XCTUnwrap(refusal { _ = try configuration.credentials() })
        XCTAssertEqual(refused.rule, .foreignOwner(uid: 65534))
        XCTAssertEqual(refused.path, "\(folder)/ca2.crt")
        XCTAssertTrue(
            refused.description.contains("ca2.crt: owned by uid 65534, not by root or this process's user (uid 0)"),
            refused.description)
        // A group other than root's does not matter; the owner does, for every file.
        XCTAssertEqual(chown("\(folder)/ca2.crt", 0, 65534), 0)
        XCTAssertNoThrow(try configuration.credentials())
        XCTAssertEqual(chown(keying, 65534, 0), 0)
        XCTAssertEqual(refusal { _ = try KeyingConfiguration.load(path: keying) }?.rule, .foreignOwner(uid: 65534))
        XCTAssertEqual(chown(staticKeys, 65534, 0), 0)
        XCTAssertEqual(refusal { _ = try StaticKeyBackend.load(path: staticKeys) }?.rule, .foreignOwner(uid: 65534))
    }

    /// A symbolic link is followed, as the identity map does: the file it leads to is what is checked and read,
    /// whoever owns the link (whoever can replace a link in a folder can replace a file there too: the folders
    /// are the administrator's to keep writable by root only).
    func testSymbolicLinksAreFollowedAndTheFileTheyLeadToIsChecked() throws {
        let (keying, _) = try writeAcceptableSet()
        let linked = "\(folder)/linked.conf"
        XCTAssertEqual(symlink(keying, linked), 0)
        XCTAssertEqual(try KeyingConfiguration.load(path: linked).identity, "a.example")
        XCTAssertEqual(lchown(linked, 65534, 65534), 0, "a link owned by nobody")
        XCTAssertEqual(try KeyingConfiguration.load(path: linked).identity, "a.example")
        // A link to a file that breaks a rule is refused for that file's rule, named by the path given.
        chmod(keying, 0o666)
        let refused = try XCTUnwrap(refusal { _ = try KeyingConfiguration.load(path: linked) })
        XCTAssertEqual(refused.rule, .writableByGroupOrOthers(mode: 0o666))
        XCTAssertEqual(refused.path, linked)
        chmod(keying, 0o644)
        // A key behind a link: the key's own mode counts, not the link's (always 777).
        let key = "\(folder)/a.key"
        rename(key, "\(folder)/real.key")
        XCTAssertEqual(symlink("\(folder)/real.key", key), 0)
        let configuration = try KeyingConfiguration.load(path: keying)
        XCTAssertNoThrow(try configuration.credentials())
        chmod("\(folder)/real.key", 0o644)
        XCTAssertEqual(refusal { _ = try configuration.credentials() }?.rule, .readableByGroupOrOthers(mode: 0o644))
    }
}
