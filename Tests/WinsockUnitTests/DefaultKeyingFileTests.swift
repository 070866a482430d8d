import Foundation
import SecureSocket
import XCTest

/// Tier 1: the keying file the Windows functions' engine reads (`$WSS_KEYING_CONFIG`) is refused, with the file and
/// the rule in the error, when group or others can write it; an absent one means "no keying configured".
final class DefaultKeyingFileTests: XCTestCase {
    func testAWorldWritableKeyingFileFailsEngineCreationWithTheReason() throws {
        var template = Array("/tmp/default-keying-test.XXXXXX".utf8CString)
        guard let made = mkdtemp(&template) else { throw POSIXError(.EIO) }
        let folder = String(cString: made)
        defer { try? FileManager.default.removeItem(atPath: folder) }
        let path = "\(folder)/keying.conf"
        try "identity a.example\npsk \"group-key-0123456789\"\ncharon /nonexistent/charon.vici\n".write(
            toFile: path, atomically: false, encoding: .utf8)
        XCTAssertEqual(chmod(path, 0o666), 0)
        let saved = getenv("WSS_KEYING_CONFIG").map { String(cString: $0) }
        defer {
            if let saved { setenv("WSS_KEYING_CONFIG", saved, 1) } else { unsetenv("WSS_KEYING_CONFIG") }
        }
        setenv("WSS_KEYING_CONFIG", path, 1)
        do {
            _ = try DefaultKeying.make()
            XCTFail("a world-writable keying file was used")
        } catch {
            XCTAssertEqual(error.code, .invalidArgument)
            XCTAssertTrue(
                error.description.contains("\(path): writable by group or others (mode 666): whoever can write it"),
                error.description)
        }
        // Not writable by others: read, and its (unreachable) charon is what fails now.
        XCTAssertEqual(chmod(path, 0o600), 0)
        XCTAssertThrowsError(try DefaultKeying.make()) {
            XCTAssertEqual(($0 as? SecureSocketError)?.code, .networkUnreachable, "\($0)")
        }
        // Absent: no keying configured (securing a socket then fails closed).
        setenv("WSS_KEYING_CONFIG", "\(folder)/absent.conf", 1)
        XCTAssertNil(try DefaultKeying.make())
    }
}
