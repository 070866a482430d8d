import ArgumentParser
import CMallocInfo
import CSecureSocketABI
import Foundation
import Glibc
import WinsockSecureSocket

/// The sample under load, through the same Windows-named functions: a client process that opens many secured
/// connections and holds them, and a server that echoes every connection on a thread of its own.
extension SecureEcho {
    struct Hold: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Open N secured connections one after another, hold them all, then echo once on every one.")
        @Option(help: "Server address.") var server: String
        @Option(help: "Port.") var port: UInt16 = 27015
        @Option(help: "The identity the server must prove (an SPN like host/b.example).") var target: String
        @Option(help: "Connections to open and hold.") var connections: Int = 10
        @Option(help: "Seconds to wait after the echo round before closing (others may still be opening).") var linger:
            Double = 0

        func validate() throws {
            guard (1...10_000).contains(connections) else { throw ValidationError("connections in 1...10000") }
        }

        func run() throws {
            let peer = try SecureEcho.address(server, port)
            var sockets: [Int32] = []
            defer { for s in sockets { close(s) } }
            // The library's per-connection memory: resident size after the first connection (which pays what is
            // made once: the engine, its charon session and threads, the IKE SA) and after the last.
            var residentBefore = 0
            var residentHalfway = 0
            // The heap in use (every malloc arena, mmapped chunks included): what the library keeps, without the
            // allocator's free space and fragmentation that the resident size also counts.
            var heapBefore = 0
            var heapHalfway = 0
            let started = Date()
            for index in 0..<connections {
                let s = socket(server.contains(":") ? AF_INET6 : AF_INET, Int32(SOCK_STREAM.rawValue), 0)
                guard s >= 0 else { throw ValidationError("socket: errno \(errno)") }
                var settings = SecureEcho.ipsecSettings(user: nil, domain: nil, password: nil)
                var name = SecureEcho.peerTargetName(target)
                guard WSASetSocketSecurity(s, &settings, UInt32(settings.count), nil, nil) == 0,
                    WSASetSocketPeerTargetName(s, &name, UInt32(name.count), nil, nil) == 0,
                    peer.withSockaddr({ WSAConnect(s, $0, Int32($1), nil, nil, nil, nil) }) == 0
                else {
                    close(s)
                    throw SecureEcho.fail("connection \(index)")
                }
                var timeout = timeval(tv_sec: 10, tv_usec: 0)
                setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
                sockets.append(s)
                if index == connections / 2 {
                    residentHalfway = Self.residentKiB("RssAnon")
                    heapHalfway = Self.heapInUse()
                }
                if index == 0 {
                    residentBefore = Self.residentKiB("RssAnon")
                    heapBefore = Self.heapInUse()
                    print("after the first connection: " + Self.status(["RssAnon", "RssFile", "Threads"]))
                }
            }
            let opened = Date().timeIntervalSince(started)
            let residentAfter = Self.residentKiB("RssAnon")
            print(
                String(
                    format: "opened %d secured connections in %.1f s (%.1f ms each)", connections, opened,
                    opened * 1000 / Double(connections)))
            // Anonymous memory only: the library's code pages (RssFile) a later connection touches first are paid
            // once, not per connection.
            print(
                "resident: \(residentBefore) KiB anonymous after the first connection, \(residentAfter) KiB after the"
                    + " last: \((residentAfter - residentBefore) * 1024 / max(1, connections - 1)) bytes per held connection"
            )
            // The second half alone: what one more connection costs once the tables and allocator have grown.
            let secondHalf = connections - 1 - connections / 2
            print(
                "marginal: \((residentAfter - residentHalfway) * 1024 / max(1, secondHalf)) bytes per held connection"
                    + " over the second half (\(secondHalf) connections)")
            let heapAfter = Self.heapInUse()
            print(
                "heap in use: \((heapAfter - heapBefore) / max(1, connections - 1)) bytes per held connection,"
                    + " \((heapAfter - heapHalfway) / max(1, secondHalf)) over the second half")
            print("status: " + Self.status(["RssAnon", "RssFile", "Threads", "VmStk"]))
            fflush(nil)
            var echoed = 0
            for (index, s) in sockets.enumerated() {
                let message = Array("hold-\(getpid())-\(index)".utf8)
                _ = message.withUnsafeBytes { send(s, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
                var buffer = [UInt8](repeating: 0, count: 256)
                var got: [UInt8] = []
                var ended = "ok"
                while got.count < message.count {
                    let n = recv(s, &buffer, buffer.count, 0)
                    guard n > 0 else {
                        ended = n == 0 ? "end of stream" : String(cString: strerror(errno))
                        break
                    }
                    got += buffer.prefix(n)
                }
                if got == message {
                    echoed += 1
                } else {
                    // Which connection, and how it ended, so that a lost echo can be found in the server's log.
                    var address = sockaddr_storage()
                    var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
                    let port =
                        withUnsafeMutablePointer(to: &address) {
                            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(s, $0, &length) }
                        } == 0
                        ? withUnsafeBytes(of: &address) {
                            UInt16(bigEndian: $0.load(fromByteOffset: 2, as: UInt16.self))
                        } : 0
                    print("connection \(index) (local port \(port)): no echo (\(got.count) bytes, \(ended))")
                }
            }
            print("echoed \(echoed)/\(connections)")
            fflush(nil)
            if linger > 0 { usleep(UInt32(linger * 1_000_000)) }
            guard echoed == connections else { throw ExitCode(4) }
        }

        /// Fields of `/proc/self/status`, as `name value` pairs.
        static func status(_ names: [String]) -> String {
            guard let text = try? String(contentsOfFile: "/proc/self/status", encoding: .utf8) else { return "?" }
            return text.split(separator: "\n").filter { line in names.contains { line.hasPrefix("\($0):") } }
                .map { $0.split(whereSeparator: { $0 == " " || $0 == "\t" }).joined(separator: " ") }.joined(
                    separator: ", ")
        }

        /// Bytes malloc has handed out and not had back (`mallinfo2`: every arena, plus mmapped chunks).
        static func heapInUse() -> Int {
            Int(cmi_heap_in_use())
        }

        static func residentKiB(_ field: String = "VmRSS") -> Int {
            guard let text = try? String(contentsOfFile: "/proc/self/status", encoding: .utf8),
                let line = text.split(separator: "\n").first(where: { $0.hasPrefix("\(field):") })
            else { return 0 }
            return Int(line.split(whereSeparator: { $0 == " " || $0 == "\t" }).dropFirst().first ?? "") ?? 0
        }
    }

    struct ServeMany: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "serve-many",
            abstract: "A secured listener that echoes every connection on a thread of its own until it closes.")
        @Option(help: "Address to bind.") var bind: String
        @Option(help: "Port.") var port: UInt16 = 27015
        @Option(help: "Seconds to serve before exiting.") var seconds: Double = 60

        func run() throws {
            let listener = socket(bind.contains(":") ? AF_INET6 : AF_INET, Int32(SOCK_STREAM.rawValue), 0)
            var settings = SOCKET_SECURITY_SETTINGS(
                SecurityProtocol: SOCKET_SECURITY_PROTOCOL_DEFAULT,
                SecurityFlags: SOCKET_SETTINGS_GUARANTEE_ENCRYPTION)
            guard WSASetSocketSecurity(listener, &settings, 8, nil, nil) == 0 else {
                throw SecureEcho.fail("WSASetSocketSecurity")
            }
            let local = try SecureEcho.address(bind, port)
            guard local.withSockaddr({ Glibc.bind(listener, $0, $1) }) == 0, listen(listener, 512) == 0 else {
                throw ValidationError("bind/listen failed: errno \(errno)")
            }
            print("listening on \(local)")
            fflush(nil)
            let deadline = Date().addingTimeInterval(seconds)
            var accepted = 0
            while Date() < deadline {
                var pfd = pollfd(fd: listener, events: Int16(POLLIN), revents: 0)
                guard poll(&pfd, 1, 200) > 0 else { continue }
                let client = accept(listener, nil, nil)
                guard client >= 0 else { continue }
                accepted += 1
                Thread.detachNewThread {
                    defer { close(client) }
                    var buffer = [UInt8](repeating: 0, count: 4096)
                    while true {
                        var pfd = pollfd(fd: client, events: Int16(POLLIN), revents: 0)
                        guard poll(&pfd, 1, Int32(max(0, deadline.timeIntervalSinceNow) * 1000)) > 0 else { return }
                        let n = recv(client, &buffer, buffer.count, 0)
                        guard n > 0 else { return }
                        _ = buffer.withUnsafeBytes { send(client, $0.baseAddress, n, Int32(MSG_NOSIGNAL)) }
                    }
                }
            }
            print("served \(accepted) connections")
            close(listener)
        }
    }
}
