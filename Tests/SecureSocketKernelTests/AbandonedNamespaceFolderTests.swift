import ALE
import Foundation
import Glibc
import NetnsTestSupport
import SystemSupport
import TierTesting
import XCTest

/// Tier 2: the folder of a namespace deleted after its processes died goes; one whose namespace still exists, or
/// whose owner still runs, stays.
final class AbandonedNamespaceFolderTests: XCTestCase {
    func testTheFolderOfADeletedNamespaceWithDeadOwnersIsRemovedAndNoOtherIs() throws {
        try requireTier(.hostKernel)
        let parent = FileManager.default.temporaryDirectory.appendingPathComponent("wss-ns-\(UUID().uuidString)").path
        defer { try? FileManager.default.removeItem(atPath: parent) }
        let namespace = try TestNamespace(prefix: "ab")
        defer { namespace.remove() }
        var info = stat()
        XCTAssertEqual(stat("/run/netns/\(namespace.name)", &info), 0)
        // A process killed in the namespace left a claim and a snapshot (an owner that cannot run: no such pid).
        let dead = "\(parent)/netns-\(info.st_ino)"
        try make(dead, claim: "2147483000 1", snapshot: "2147483000-1.json")
        // A namespace that no longer exists, but whose claim's owner (this process) still runs.
        let mine = "\(parent)/netns-1"
        try make(mine, claim: "\(ProcessIdentity.current)", snapshot: nil)

        XCTAssertEqual(AbandonedNamespaceFolders.remove(under: parent), [], "the namespace exists: kept")
        XCTAssertTrue(FileManager.default.fileExists(atPath: "\(dead)/reqids/block-1"))
        namespace.remove()
        XCTAssertEqual(AbandonedNamespaceFolders.remove(under: parent), [dead], "gone namespace, dead owners")
        XCTAssertFalse(FileManager.default.fileExists(atPath: dead))
        XCTAssertTrue(FileManager.default.fileExists(atPath: "\(mine)/reqids/block-1"), "a live owner's claim stays")
    }

    private func make(_ folder: String, claim: String, snapshot: String?) throws {
        for sub in ["reqids", "endpoints"] {
            try FileManager.default.createDirectory(
                atPath: "\(folder)/\(sub)", withIntermediateDirectories: true)
        }
        try Data(claim.utf8).write(to: URL(fileURLWithPath: "\(folder)/reqids/block-1"))
        if let snapshot { try Data("{}".utf8).write(to: URL(fileURLWithPath: "\(folder)/endpoints/\(snapshot)")) }
    }
}
