import Foundation
import Glibc
import XCTest

@testable import Keying
@testable import VICI

/// Tier 1: ``VICIClient`` and ``VICIEventStream`` against a scripted peer: responses, refusals, streaming,
/// timeouts, garbage, a peer that goes away, and reconnection afterwards.
final class VICIClientTests: XCTestCase {
    var server: FakeVICIServer?

    override func tearDown() {
        server?.stop()
        server = nil
    }

    /// A peer that behaves like charon for a few commands.
    func charonLike() throws -> FakeVICIServer {
        let server = try FakeVICIServer { packet in
            switch packet {
            case .commandRequest("version", _):
                return [.send(.commandResponse(["daemon": "charon", "version": "5.9.8"]))]
            case .commandRequest("load-conn", let message):
                if message.sections.first?.section.string("version") == "9" {
                    return [.send(.commandResponse(["success": "no", "errmsg": "invalid IKE version"]))]
                }
                return [.send(.commandResponse(["success": "yes"]))]
            case .commandRequest("list-sas", _):
                return [
                    .send(.event(name: "list-sa", message: ["a": ["uniqueid": "1", "state": "ESTABLISHED"]])),
                    .send(.event(name: "log", message: ["msg": "unrelated"])),
                    .send(.event(name: "list-sa", message: ["b": ["uniqueid": "2", "state": "CONNECTING"]])),
                    .send(.commandResponse([:])),
                ]
            case .commandRequest("initiate", _):
                return [
                    .send(
                        .event(
                            name: "control-log", message: ["group": "IKE", "level": "1", "msg": "initiating IKE_SA"])),
                    .send(
                        .event(
                            name: "control-log",
                            message: ["group": "KNL", "level": "1", "msg": "unable to add SAD entry"])),
                    .send(.commandResponse(["success": "no", "errmsg": "establishing CHILD_SA 'c' failed"])),
                ]
            case .commandRequest("silent", _):
                return [.silence]
            case .commandRequest("garbage", _):
                return [.raw([0, 0, 0, 2, 9, 9])]
            case .commandRequest("hangup", _):
                return [.close]
            case .commandRequest:
                return [.send(.commandUnknown)]
            case .eventRegister("nosuch"), .eventUnregister("nosuch"):
                return [.send(.eventUnknown)]
            case .eventRegister, .eventUnregister:
                return [.send(.eventConfirm)]
            default:
                return [.close]
            }
        }
        self.server = server
        return server
    }

    func testCommandResponseRefusalAndUnknown() throws {
        let server = try charonLike()
        let client = try VICIClient(path: server.path, timeout: .seconds(2))
        XCTAssertEqual(try client.version(), CharonVersion(daemon: "charon", version: "5.9.8"))
        XCTAssertNoThrow(try client.loadConn(name: "x", config: ["version": 2]))
        XCTAssertThrowsError(try client.loadConn(name: "x", config: ["version": 9])) {
            let error = $0 as? VICIError
            XCTAssertEqual(error?.code, .commandFailed)
            XCTAssertEqual(error?.errmsg, "invalid IKE version")
            XCTAssertEqual(error?.command, "load-conn")
            XCTAssertEqual(error?.response?.string("success"), "no")
        }
        XCTAssertThrowsError(try client.command("no-such-command")) {
            XCTAssertEqual(($0 as? VICIError)?.code, .unknownCommand)
        }
        XCTAssertEqual(try client.version().daemon, "charon", "still usable after refusals")
        XCTAssertEqual(server.connections, 1, "refusals keep the connection")
    }

    func testStreamingCommandRegistersCollectsAndUnregisters() throws {
        let server = try charonLike()
        let client = try VICIClient(path: server.path, timeout: .seconds(2))
        let sas = try client.listSAs()
        XCTAssertEqual(sas.map(\.name), ["a", "b"], "only list-sa events, in order")
        XCTAssertEqual(sas.map(\.uniqueID), [1, 2])
        XCTAssertEqual(
            server.received,
            [
                .eventRegister(name: "list-sa"), .commandRequest(name: "list-sas", message: [:]),
                .eventUnregister(name: "list-sa"),
            ])
        XCTAssertThrowsError(try client.streamingCommand("list-sas", [:], event: "nosuch") { _ in }) {
            XCTAssertEqual(($0 as? VICIError)?.code, .unknownEvent)
        }
    }

    func testUnencodableRequestSendsNothingAndUnregisters() throws {
        let server = try charonLike()
        let client = try VICIClient(path: server.path, timeout: .seconds(2))
        let huge: VICIMessage = ["ike": .value([UInt8](repeating: 0x61, count: 70_000))]
        XCTAssertThrowsError(try client.streamingCommand("list-sas", huge, event: "list-sa") { _ in }) {
            XCTAssertEqual(($0 as? VICIError)?.code, .invalidArgument)
        }
        XCTAssertThrowsError(try client.command("version", huge)) {
            XCTAssertEqual(($0 as? VICIError)?.code, .invalidArgument)
        }
        XCTAssertEqual(try client.version().daemon, "charon")
        XCTAssertEqual(
            server.received,
            [
                .eventRegister(name: "list-sa"), .eventUnregister(name: "list-sa"),
                .commandRequest(name: "version", message: [:]),
            ])
        XCTAssertEqual(server.connections, 1)
    }

    func testInitiateFailureCarriesErrmsgAndControlLog() throws {
        let server = try charonLike()
        let client = try VICIClient(path: server.path, timeout: .seconds(2))
        var lines: [String] = []
        XCTAssertThrowsError(
            try client.initiate(child: "c", ike: "i", timeout: .seconds(1)) { lines.append($0.message) }
        ) {
            let error = $0 as? VICIError
            XCTAssertEqual(error?.code, .commandFailed)
            XCTAssertEqual(error?.errmsg, "establishing CHILD_SA 'c' failed")
            XCTAssertEqual(
                error?.controlLog.map(\.description), ["[IKE] initiating IKE_SA", "[KNL] unable to add SAD entry"])
            XCTAssertTrue(
                error?.description.contains("[KNL] unable to add SAD entry") ?? false, "\(String(describing: error))")
        }
        XCTAssertEqual(lines, ["initiating IKE_SA", "unable to add SAD entry"])
        let request = server.received.first { if case .commandRequest("initiate", _) = $0 { true } else { false } }
        guard case .commandRequest(_, let message)? = request else { return XCTFail("no initiate seen") }
        XCTAssertEqual(message, ["child": "c", "ike": "i", "timeout": "1000"])
        XCTAssertEqual(server.received.last, .eventUnregister(name: "control-log"), "unregistered after a refusal")
    }

    func testTimeoutClosesTheConnectionAndTheNextCallReconnects() throws {
        let server = try charonLike()
        let client = try VICIClient(path: server.path, timeout: .seconds(2))
        let start = ContinuousClock.now
        XCTAssertThrowsError(try client.command("silent", timeout: .milliseconds(200))) {
            XCTAssertEqual(($0 as? VICIError)?.code, .timedOut)
        }
        let waited = start.duration(to: .now)
        XCTAssertGreaterThanOrEqual(waited, .milliseconds(190))
        XCTAssertLessThan(waited, .seconds(1), "bounded by the call's timeout, not the default")
        XCTAssertEqual(try client.version().version, "5.9.8")
        XCTAssertEqual(server.connections, 2)
    }

    func testGarbageAndHangupAreErrorsThenReconnect() throws {
        let server = try charonLike()
        let client = try VICIClient(path: server.path, timeout: .seconds(2))
        XCTAssertThrowsError(try client.command("garbage")) { XCTAssertEqual(($0 as? VICIError)?.code, .malformed) }
        XCTAssertEqual(try client.version().daemon, "charon")
        XCTAssertThrowsError(try client.command("hangup")) {
            XCTAssertEqual(($0 as? VICIError)?.code, .daemonUnavailable)
        }
        XCTAssertEqual(try client.version().daemon, "charon")
        XCTAssertEqual(server.connections, 3)
    }

    func testMissingSocketAndBadPath() {
        XCTAssertThrowsError(try VICIClient(path: "/tmp/no-such-dir-\(getpid())/charon.vici")) {
            let error = $0 as? VICIError
            XCTAssertEqual(error?.code, .daemonUnavailable)
            XCTAssertEqual(error?.errno, .noSuchFileOrDirectory)
        }
        XCTAssertThrowsError(try VICIClient(path: "/tmp/" + String(repeating: "x", count: 200))) {
            XCTAssertEqual(($0 as? VICIError)?.code, .invalidArgument)
        }
        XCTAssertNil(CharonDaemon.systemVICISocket(candidates: ["/tmp/no-such-\(getpid()).vici"]))
    }

    func testEventStreamDeliversEventsAndStops() async throws {
        let server = try charonLike()
        let stream = try VICIEventStream(
            path: server.path, events: ["ike-updown", "child-updown"], timeout: .seconds(2))
        XCTAssertEqual(server.received, [.eventRegister(name: "ike-updown"), .eventRegister(name: "child-updown")])
        server.push(.event(name: "ike-updown", message: ["up": "yes", "conn": ["state": "ESTABLISHED"]]))
        server.push(.event(name: "child-updown", message: ["conn": [:]]))
        var seen: [VICIEvent] = []
        for try await event in stream {
            seen.append(event)
            if seen.count == 2 { break }
        }
        XCTAssertEqual(seen.map(\.name), ["ike-updown", "child-updown"])
        XCTAssertEqual(seen.first?.isUp, true)
        XCTAssertEqual(seen.first?.ikeSAs.first?.state, "ESTABLISHED")
        XCTAssertEqual(seen.last?.isUp, false)
        stream.stop()
    }

    func testEventStreamUnknownEventAndPeerGoingAway() async throws {
        let server = try charonLike()
        XCTAssertThrowsError(try VICIEventStream(path: server.path, events: ["nosuch"], timeout: .seconds(2))) {
            XCTAssertEqual(($0 as? VICIError)?.code, .unknownEvent)
        }
        let stream = try VICIEventStream(path: server.path, events: ["ike-updown"], timeout: .seconds(2))
        server.push(.commandUnknown) // not allowed on an event connection
        do {
            for try await event in stream { XCTFail("unexpected \(event)") }
            XCTFail("the stream should end with an error")
        } catch {
            XCTAssertEqual((error as? VICIError)?.code, .malformed, "\(error)")
        }
    }
}
