import Foundation
import Keying
import NetnsTestSupport
import XCTest

extension CharonDaemonTests {
    /// A process `kill -9`ed while it runs a private charon takes that charon with it (parent-death signal) and
    /// leaves the charon's folder; the next daemon started in the same temporary directory removes it, kills an
    /// orphaned charon that still runs from such a folder, and leaves alone the folders of live owners and of
    /// other boots (another user-mode-linux kernel on the same disk).
    func testAKilledOwnersCharonDiesWithItAndTheNextDaemonRemovesItsFolder() throws {
        let binaries = URL(fileURLWithPath: try FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe"))
            .deletingLastPathComponent().path
        let echo = "\(binaries)/secure-echo"
        try XCTSkipUnless(FileManager.default.isExecutableFile(atPath: echo), "needs \(echo) (swift build)")
        let parent = NSTemporaryDirectory() + "abandoned-\(getpid())-\(Int.random(in: 0..<1_000_000))"
        try FileManager.default.createDirectory(atPath: parent, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: parent) }
        let certificates = try TestCertificates(names: ["b.example"])
        defer { certificates.remove() }
        let namespace = try TestNamespace(prefix: "kda")
        namespaces.append(namespace)
        let configuration = try certificates.writeKeyingFile(for: "b.example", charon: "private")

        // A service with a private charon of its own (no keying daemon), killed without a chance to stop it.
        let server = try NamespaceProcess(
            in: namespace, environment: ["WSS_KEYING_CONFIG": configuration, "TMPDIR": parent, "WSS_KEYD": "none"],
            [echo, "serve-many", "--bind", "127.0.0.1", "--port", "27016", "--seconds", "60"],
            log: "\(certificates.folder)/server.log")
        XCTAssertTrue(server.wait(for: "listening", timeout: 20), server.output)
        let folders = try Self.charonFolders(in: parent)
        XCTAssertEqual(folders.count, 1, "the service's private charon folder: \(folders)")
        let folder = try XCTUnwrap(folders.first)
        let record = try String(contentsOfFile: "\(folder)/owner", encoding: .utf8)
        XCTAssertTrue(record.hasPrefix("owner \(server.pid) "), "the record names the service: \(record)")
        let charonPID = try XCTUnwrap(Self.recordedCharon(in: record), record)
        XCTAssertTrue(Self.isAlive(charonPID))
        kill(server.pid, SIGKILL)
        XCTAssertTrue(server.waitForExit(timeout: 5))
        let deadline = Date().addingTimeInterval(3)
        while Self.isRunningProgram(charonPID, named: "charon"), Date() < deadline { usleep(20_000) }
        XCTAssertFalse(
            Self.isRunningProgram(charonPID, named: "charon"), "charon died with its owner (parent-death signal)")
        XCTAssertTrue(FileManager.default.fileExists(atPath: folder), "the dead owner could not remove its folder")

        // An orphaned "charon" (a sleeper under that name) in a folder of a dead owner; a live owner's folder; a
        // dead owner's folder of another boot.
        let fakeCharon = "\(parent)/bin/charon"
        try FileManager.default.createDirectory(atPath: "\(parent)/bin", withIntermediateDirectories: true)
        try FileManager.default.copyItem(atPath: "/bin/sleep", toPath: fakeCharon)
        let orphan = Process()
        orphan.executableURL = URL(fileURLWithPath: fakeCharon)
        orphan.arguments = ["60"]
        try orphan.run()
        defer { if orphan.isRunning { orphan.terminate() } }
        let scope = try String(contentsOfFile: "/proc/sys/kernel/random/boot_id", encoding: .utf8)
            .trimmingCharacters(in: .whitespacesAndNewlines)
        var pidNamespace = stat()
        XCTAssertEqual(stat("/proc/self/ns/pid", &pidNamespace), 0)
        let deadOwner = record.split(separator: "\n")[0]
        let own = "scope \(scope) \(pidNamespace.st_ino)"
        func makeFolder(_ name: String, _ lines: [String]) throws -> String {
            let path = "\(parent)/charon-\(name)"
            try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: false)
            try (lines.joined(separator: "\n") + "\n").write(toFile: "\(path)/owner", atomically: true, encoding: .utf8)
            return path
        }
        let orphanFolder = try makeFolder(
            "orphan",
            [
                String(deadOwner), own,
                "charon \(orphan.processIdentifier) \(try Self.startTime(orphan.processIdentifier))",
            ])
        let liveFolder = try makeFolder(
            "living", ["owner \(orphan.processIdentifier) \(try Self.startTime(orphan.processIdentifier))", own])
        let otherBoot = try makeFolder(
            "otherb", [String(deadOwner), "scope 00000000-0000-0000-0000-000000000000 \(pidNamespace.st_ino)"])

        let next = try start(in: namespace) { $0.temporaryDirectory = parent }
        XCTAssertEqual(Set(next.reclaimedFolders), [folder, orphanFolder], "the dead owners' folders of this boot")
        XCTAssertFalse(FileManager.default.fileExists(atPath: folder))
        XCTAssertFalse(FileManager.default.fileExists(atPath: orphanFolder))
        let killedBy = Date().addingTimeInterval(3)
        while orphan.isRunning, Date() < killedBy { usleep(20_000) }
        XCTAssertFalse(orphan.isRunning, "the orphaned charon was killed")
        if !orphan.isRunning { XCTAssertEqual(orphan.terminationReason, .uncaughtSignal) }
        XCTAssertTrue(FileManager.default.fileExists(atPath: liveFolder), "a live owner's folder stays")
        XCTAssertTrue(FileManager.default.fileExists(atPath: otherBoot), "another boot's folder stays")
        XCTAssertEqual(Set(try Self.charonFolders(in: parent)), [next.folder, liveFolder, otherBoot])
        next.stop()
        XCTAssertFalse(FileManager.default.fileExists(atPath: next.folder), "stop() removes its own folder")
    }

    static func charonFolders(in parent: String) throws -> [String] {
        try FileManager.default.contentsOfDirectory(atPath: parent).filter { $0.hasPrefix("charon-") }.map {
            "\(parent)/\($0)"
        }
    }

    static func recordedCharon(in record: String) -> pid_t? {
        record.split(separator: "\n").first { $0.hasPrefix("charon ") }
            .flatMap { $0.split(separator: " ").dropFirst().first }.flatMap { pid_t($0) }
    }

    static func isRunningProgram(_ pid: pid_t, named name: String) -> Bool {
        guard let comm = try? String(contentsOfFile: "/proc/\(pid)/comm", encoding: .utf8),
            let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
            let close = stat.lastIndex(of: ")")
        else { return false }
        let state = stat[stat.index(after: close)...].split(separator: " ").first
        return comm.trimmingCharacters(in: .newlines) == name && state != "Z"
    }

    static func startTime(_ pid: pid_t) throws -> String {
        let stat = try String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8)
        let close = try XCTUnwrap(stat.lastIndex(of: ")"))
        return String(stat[stat.index(after: close)...].split(separator: " ")[19])
    }
}
