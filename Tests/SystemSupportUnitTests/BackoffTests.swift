import SystemSupport
import XCTest

/// Tier 1: the one back-off the library's retry loops share.
final class BackoffTests: XCTestCase {
    func testPausesDoubleUpToTheMaximumAndResetToTheFirst() {
        var backoff = Backoff(initial: .milliseconds(50), maximum: .seconds(1))
        XCTAssertEqual(
            (0..<7).map { _ in backoff.next() },
            [50, 100, 200, 400, 800, 1000, 1000].map { Duration.milliseconds($0) })
        backoff.reset()
        XCTAssertEqual(backoff.next(), .milliseconds(50))
    }
}
