import Foundation
import IPAddressing
import XFRM

/// Three namespaces, `b` in the middle joined to `a` and to `c` by a veth pair each (IPv4 only):
/// `a` has 10.77.0.1/24 on `veth-a`, `b` has 10.77.0.2/24 on `veth-b` and 10.78.0.2/24 on `veth-bc`, `c` has
/// 10.78.0.3/24 on `veth-c`. For tests where a third host (a second holder of a key, a peer with another
/// certificate) talks to the same server as `a`, with an IKE daemon of its own.
public final class NamespaceTrio: @unchecked Sendable {
    public let a: TestNamespace
    public let b: TestNamespace
    public let c: TestNamespace
    public let addressA: IPAddress = "10.77.0.1"
    /// b's address on the link to a.
    public let addressBA: IPAddress = "10.77.0.2"
    /// b's address on the link to c.
    public let addressBC: IPAddress = "10.78.0.2"
    public let addressC: IPAddress = "10.78.0.3"

    /// Creates the three namespaces and both links. If any step fails, what was made is deleted before throwing.
    public init(prefix: String = "wss") throws {
        var made: [TestNamespace] = []
        do {
            for name in ["a", "b", "c"] { made.append(try TestNamespace(prefix: prefix + name)) }
        } catch {
            for namespace in made { namespace.remove() }
            throw error
        }
        (a, b, c) = (made[0], made[1], made[2])
        do {
            for (outer, outerInterface, outerAddress, inner, innerAddress) in [
                (a, "veth-a", addressA, "veth-b", addressBA), (c, "veth-c", addressC, "veth-bc", addressBC),
            ] {
                try Command.run([
                    "ip", "link", "add", outerInterface, "netns", outer.name, "type", "veth",
                    "peer", "name", inner, "netns", b.name,
                ])
                try outer.ip("addr", "add", "\(outerAddress)/24", "dev", outerInterface)
                try b.ip("addr", "add", "\(innerAddress)/24", "dev", inner)
                try outer.ip("link", "set", outerInterface, "up")
                try b.ip("link", "set", inner, "up")
            }
        } catch {
            remove()
            throw error
        }
    }

    /// Deletes the three namespaces (the veth pairs go with them).
    public func remove() {
        a.remove()
        b.remove()
        c.remove()
    }

    deinit { remove() }
}
