import ALE
import Foundation
import IPAddressing
import XFRM

/// A network namespace the harness created with `ip netns add`, deleted by ``remove()`` or on deinit.
public final class TestNamespace: @unchecked Sendable {
    public let name: String
    public var namespace: NetworkNamespace { .named(name) }
    private var removed = false
    private let lock = NSLock()

    /// Creates a fresh namespace with a unique name and brings its loopback up.
    public init(prefix: String = "wss") throws {
        name = Self.uniqueName(prefix)
        try Command.run(["ip", "netns", "add", name])
        do {
            try Command.run(["ip", "-n", name, "link", "set", "lo", "up"])
        } catch {
            remove()
            throw error
        }
    }

    /// Deletes the namespace (and with it its interfaces, XFRM states and policies). Safe to call twice.
    public func remove() {
        lock.lock()
        defer { lock.unlock() }
        guard !removed else { return }
        removed = true
        _ = try? Command.run(["ip", "netns", "del", name], check: false)
        // What processes killed in it left in its library folder (claims, snapshots) goes with it.
        AbandonedNamespaceFolders.remove()
    }

    deinit { remove() }

    /// Runs `ip -n NAME ARGS…`.
    @discardableResult
    public func ip(_ arguments: String...) throws -> String {
        try Command.run(["ip", "-n", name] + arguments).output
    }

    /// Runs a command inside the namespace (`ip netns exec NAME …`).
    @discardableResult
    public func exec(_ arguments: [String], timeout: Double = 60, check: Bool = true) throws -> CommandResult {
        try Command.run(["ip", "netns", "exec", name] + arguments, timeout: timeout, check: check)
    }

    nonisolated(unsafe) private static var counter = 0
    private static let counterLock = NSLock()

    static func uniqueName(_ prefix: String) -> String {
        counterLock.lock()
        defer { counterLock.unlock() }
        counter += 1
        return "\(prefix)\(getpid())x\(counter)"
    }
}

/// Two namespaces joined by a veth pair, with IPv4 and IPv6 addresses inside them only:
/// `a` has 10.77.0.1/24 and fd77::1/64 on `veth-a`; `b` has 10.77.0.2/24 and fd77::2/64 on `veth-b`.
public final class NamespacePair: @unchecked Sendable {
    public let a: TestNamespace
    public let b: TestNamespace
    public let interfaceA = "veth-a"
    public let interfaceB = "veth-b"
    public let addressA4: IPAddress = "10.77.0.1"
    public let addressB4: IPAddress = "10.77.0.2"
    public let addressA6: IPAddress = "fd77::1"
    public let addressB6: IPAddress = "fd77::2"

    /// Creates both namespaces and the link. If any step fails, what was made is deleted before throwing.
    public init(prefix: String = "wss") throws {
        a = try TestNamespace(prefix: prefix + "a")
        do {
            b = try TestNamespace(prefix: prefix + "b")
        } catch {
            a.remove()
            throw error
        }
        do {
            try Command.run([
                "ip", "link", "add", interfaceA, "netns", a.name, "type", "veth",
                "peer", "name", interfaceB, "netns", b.name,
            ])
            for (ns, interface, v4, v6) in [
                (a, interfaceA, addressA4, addressA6), (b, interfaceB, addressB4, addressB6),
            ] {
                try ns.ip("addr", "add", "\(v4)/24", "dev", interface)
                try ns.ip("addr", "add", "\(v6)/64", "dev", interface, "nodad")
                try ns.ip("link", "set", interface, "up")
            }
        } catch {
            remove()
            throw error
        }
    }

    /// The two addresses of a family: (a, b).
    public func addresses(_ family: IPAddressFamily) -> (a: IPAddress, b: IPAddress) {
        family == .inet6 ? (addressA6, addressB6) : (addressA4, addressB4)
    }

    /// Deletes both namespaces (the veth pair goes with them).
    public func remove() {
        a.remove()
        b.remove()
    }

    deinit { remove() }
}
