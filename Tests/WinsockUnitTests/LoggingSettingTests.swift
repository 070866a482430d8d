import Logging
import SecureSocket
import XCTest

/// Tier 1: what `WSS_LOG` means for the process-wide engine of the Windows functions.
final class LoggingSettingTests: XCTestCase {
    func testLevelsDestinationsAndRefusals() {
        XCTAssertEqual(SecureSocketLogging.parse("info")?.level, .info)
        XCTAssertEqual(SecureSocketLogging.parse("info")?.destination, .stderr)
        XCTAssertEqual(SecureSocketLogging.parse("Debug,syslog")?.level, .debug)
        XCTAssertEqual(SecureSocketLogging.parse("Debug,syslog")?.destination, .syslog)
        XCTAssertEqual(SecureSocketLogging.parse("notice, stderr")?.destination, .stderr)
        XCTAssertNotNil(SecureSocketLogging.parse("off"))
        XCTAssertNil(SecureSocketLogging.parse("off")!.level, "off: no level, nothing logged")
        for bad in ["", "loud", "info,file", "info,stderr,extra", ","] {
            XCTAssertNil(SecureSocketLogging.parse(bad), "`\(bad)` is not a setting")
        }
    }

    func testTheLoggerFollowsTheSetting() {
        XCTAssertEqual(SecureSocketLogging.logger(label: "t", environment: "debug").logLevel, .debug)
        XCTAssertEqual(SecureSocketLogging.logger(label: "t", environment: nil).logLevel, .notice, "default: notice")
        XCTAssertEqual(SecureSocketLogging.logger(label: "t", environment: "nonsense").logLevel, .notice)
        XCTAssertEqual(SecureSocketLogging.logger(label: "t", environment: "error,syslog").logLevel, .error)
    }
}
