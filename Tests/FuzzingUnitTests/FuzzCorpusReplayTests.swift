import Foundation
import FuzzTargets
import XCTest

/// Tier 1: every committed seed (`Fuzzing/Corpus/NAME`) and every committed crash input (`Fuzzing/Crashes/NAME`)
/// through its fuzz target's own check, without the sanitizer: the parser returns or throws, and the target's
/// invariants hold (VICI and netlink round trips, refusals that name a line, identity-map rules that map their
/// own identity). A crash input that traps again fails the whole test run, loudly.
final class FuzzCorpusReplayTests: XCTestCase {
    /// `Fuzzing/` in this checkout.
    static let fuzzing = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("Fuzzing")

    /// Replays the seeds and crash inputs of `target`; returns (seeds, seeds accepted, crash inputs).
    @discardableResult
    func replay(_ target: FuzzTarget, file: StaticString = #filePath, line: UInt = #line) -> (Int, Int, Int) {
        let corpus = Self.fuzzing.appendingPathComponent("Corpus/\(target.name)").path
        let crashes = Self.fuzzing.appendingPathComponent("Crashes/\(target.name)").path
        var accepted = 0
        let seeds = FuzzTarget.inputFiles([corpus]).filter { FileManager.default.fileExists(atPath: $0) }
        let crashInputs = FuzzTarget.inputFiles([crashes]).filter { FileManager.default.fileExists(atPath: $0) }
        for path in seeds + crashInputs {
            guard let data = FileManager.default.contents(atPath: path) else {
                XCTFail("\(path): unreadable", file: file, line: line)
                continue
            }
            switch target.check([UInt8](data)) {
            case .accepted: if seeds.contains(path) { accepted += 1 }
            case .refused: break
            case .violated(let why): XCTFail("\(path): \(why)", file: file, line: line)
            }
        }
        XCTAssertFalse(seeds.isEmpty, "no seeds in \(corpus)", file: file, line: line)
        XCTAssertGreaterThan(accepted, 0, "no seed in \(corpus) is accepted by its parser", file: file, line: line)
        return (seeds.count, accepted, crashInputs.count)
    }

    func testVICISeedsAndCrashes() { replay(.vici) }
    func testNetlinkSeedsAndCrashes() { replay(.netlink) }
    func testWindowsStructsSeedsAndCrashes() { replay(.windowsStructs) }
    func testKeyingFileSeedsAndCrashes() { replay(.keyingFile) }
    func testIdentityMapSeedsAndCrashes() { replay(.identityMap) }
    func testStaticKeysSeedsAndCrashes() { replay(.staticKeys) }
    func testControlSeedsAndCrashes() { replay(.control) }

    /// The targets here are the ones the package builds executables for and `scripts/fuzz.sh` runs.
    func testEveryTargetIsReplayed() throws {
        XCTAssertEqual(
            FuzzTarget.all.map(\.name).sorted(),
            ["control", "identity-map", "keying-file", "netlink", "static-keys", "vici", "windows-structs"])
        for target in FuzzTarget.all {
            var isDirectory: ObjCBool = false
            let corpus = Self.fuzzing.appendingPathComponent("Corpus/\(target.name)").path
            XCTAssertTrue(
                FileManager.default.fileExists(atPath: corpus, isDirectory: &isDirectory) && isDirectory.boolValue,
                "\(corpus) is missing")
        }
    }
}
