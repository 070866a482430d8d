import Foundation

/// C programs built with gcc against `libWinsockSecureSocket.so` for one test, in a fresh folder under `/tmp` that
/// every user can read (the build's own folder may be one that another uid cannot enter, as a clean clone in a
/// `mktemp -d` folder is): the library is copied beside them and found there (`rpath`). The keying files written
/// here are root's, mode 0600. ``remove()`` deletes the folder.
public struct CPrograms: Sendable {
    /// The folder holding the programs, the library and the keying files.
    public let folder: String
    /// The build's products (`wss-keyd`, `secure-echo`, the library).
    public let binaries: String

    /// Builds `programs` (source paths relative to the package root) into a new folder.
    public init(_ programs: [String], packageRoot: URL) throws {
        binaries =
            URL(fileURLWithPath: try FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe"))
            .deletingLastPathComponent().path
        folder = "/tmp/wss-programs-\(UUID().uuidString)"
        try FileManager.default.createDirectory(
            atPath: folder, withIntermediateDirectories: false, attributes: [.posixPermissions: 0o755])
        try FileManager.default.copyItem(
            atPath: "\(binaries)/libWinsockSecureSocket.so", toPath: "\(folder)/libWinsockSecureSocket.so")
        for source in programs {
            let name = URL(fileURLWithPath: source).deletingPathExtension().lastPathComponent
            try Command.run(
                [
                    "gcc", "-Wall", "-Wextra", "-Werror", "-std=c11", "-D_DEFAULT_SOURCE", "-I",
                    packageRoot.path + "/CModules/CSecureSocketABI", "-o", "\(folder)/\(name)",
                    packageRoot.path + "/" + source, "-L", folder, "-lWinsockSecureSocket", "-Wl,-rpath,\(folder)",
                ], timeout: 120)
        }
    }

    /// The path of a program built here.
    public func program(_ name: String) -> String { "\(folder)/\(name)" }

    /// Copies the build's tool `name` (`wss-inspect`, say) here, where every user may run it; returns its path.
    public func copyTool(_ name: String) throws -> String {
        try FileManager.default.copyItem(atPath: "\(binaries)/\(name)", toPath: "\(folder)/\(name)")
        return "\(folder)/\(name)"
    }

    /// Writes a keying file (mode 0600) named `name`.conf with `lines`; returns its path.
    public func writeKeyingFile(_ name: String, _ lines: [String]) throws -> String {
        let path = "\(folder)/\(name).conf"
        try (lines.joined(separator: "\n") + "\n").write(toFile: path, atomically: true, encoding: .utf8)
        guard chmod(path, 0o600) == 0 else {
            throw CommandError.failed(command: "chmod 600 \(path)", status: 1, output: "")
        }
        return path
    }

    /// Starts the keying daemon in `namespace` as root, with `keying` as its keying file, and waits until it
    /// answers (its log says ready).
    public func startDaemon(in namespace: TestNamespace, keying: String, log level: String = "info")
        throws -> NamespaceProcess
    {
        let daemon = try NamespaceProcess(
            in: namespace, environment: ["WSS_KEYING_CONFIG": keying, "WSS_LOG": "\(level),stderr"],
            ["\(binaries)/wss-keyd"], log: "\(folder)/keyd-\(namespace.name).log")
        _ = daemon.wait(for: "keying daemon ready", timeout: 20)
        return daemon
    }

    /// `command` run as uid and gid 65534 (nobody) with no supplementary groups and so no capabilities.
    public static func asNobody(_ command: [String], uid: Int = 65534) -> [String] {
        ["setpriv", "--reuid=\(uid)", "--regid=65534", "--clear-groups"] + command
    }

    public func remove() { try? FileManager.default.removeItem(atPath: folder) }
}
