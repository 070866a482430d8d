import Foundation
import Glibc
import IPAddressing
import NetnsTestSupport
import TierTesting
import XCTest
import XFRM

/// Tier 3: the kernel facts per-connection SA binding rests on, verified by experiment with real ESP.
///
/// Setting: namespaces A (client) and B (server) joined by veth, AES-GCM transport SAs installed with
/// ``XFRMClient``, per-socket `required` ESP policies. B's listener carries reqid L (accepted sockets inherit
/// it); each client socket on A carries a reqid of its own. Every SA exists in both namespaces with the same
/// SPI, key and selector; only the reqid differs (the client socket's on A, L on B).
///
/// 1. Flow-exact SA selectors (proto tcp, /32 addresses, both ports with mask 0xffff) keep two connections
///    to one listener apart: each SA counts only its own flow, no `XfrmIn*` error rises.
///    Contrast: host-only selectors (no ports) on B with the one reqid L send the older connection's replies
///    through the newest SA, and A drops them (`XfrmInTmplMismatch`).
/// 2. A packet of flow X that arrives under the SA of flow Y (right SPI and key, wrong flow) is decrypted
///    and then dropped by the inbound policy check (`XfrmInStateMismatch`).
/// 3. A packet under an SA whose reqid differs from the socket's IN template reqid is dropped
///    (`XfrmInTmplMismatch`), and delivered again once the SA carries the template's reqid.
final class FlowBindingTests: XCTestCase {
    static let listenerReqid: UInt32 = 500
    /// How long a packet that must not arrive is waited for.
    static let silence = 1.5

    // MARK: 1. Flow-exact selectors

    func testFlowExactSelectorsKeepTwoConnectionsToOneListenerApart() throws {
        try inESPKernel(self) {
            let lab = try FlowLab(listenerReqid: Self.listenerReqid)
            defer { lab.tearDown() }
            let x = try lab.openFlow("X", reqid: 601, selectors: .flowExact)
            let y = try lab.openFlow("Y", reqid: 602, selectors: .flowExact)
            for flow in [x, y] { print("FlowBinding 1: \(flow)") }
            let statsBefore = try lab.statistics()

            // X alone, then Y alone: only the flow's own four SAs (out/in on each side) count packets.
            for (active, idle) in [(x, y), (y, x)] {
                let before = try lab.counters([active, idle])
                try lab.echo(active, Array("only \(active.name)".utf8))
                usleep(300_000) // a delayed ACK still counts for `active`
                let rise = try lab.counters([active, idle]).increase(since: before)
                print("FlowBinding 1: echo on \(active.name) only, SA packet increase: \(rise)")
                for sa in FlowLab.SAName.allCases {
                    XCTAssertGreaterThan(rise[active.name, sa], 0, "\(active.name)'s \(sa) SA counts its own flow")
                    XCTAssertEqual(
                        rise[idle.name, sa], 0, "\(idle.name)'s \(sa) SA does not count \(active.name)'s flow")
                }
            }

            // Both at the same time, in both directions: each side sends on both connections before reading.
            let before = try lab.counters([x, y])
            let messages = [x, y].map { flow in
                (flow, Array("client→server on \(flow.name)".utf8), Array("server→client on \(flow.name)".utf8))
            }
            for (flow, up, down) in messages {
                try flow.client.send(up)
                try flow.server.send(down)
            }
            for (flow, up, down) in messages {
                XCTAssertEqual(try flow.server.receiveExactly(up.count, timeout: 5), up, "\(flow.name) upstream")
                XCTAssertEqual(try flow.client.receiveExactly(down.count, timeout: 5), down, "\(flow.name) downstream")
            }
            // And interleaved: X, Y, Y, X, X, Y, …
            for round in 0..<6 {
                for flow in round % 2 == 0 ? [x, y] : [y, x] {
                    try lab.echo(flow, Array("round \(round) on \(flow.name)".utf8))
                }
            }
            usleep(300_000)
            let rise = try lab.counters([x, y]).increase(since: before)
            print("FlowBinding 1: simultaneous + interleaved, SA packet increase: \(rise)")
            for flow in [x, y] {
                for sa in FlowLab.SAName.allCases { XCTAssertGreaterThan(rise[flow.name, sa], 0) }
            }

            let statsAfter = try lab.statistics()
            let increaseA = statsAfter.a.increase(since: statsBefore.a)
            let increaseB = statsAfter.b.increase(since: statsBefore.b)
            print(
                "FlowBinding 1: xfrm_stat increase A: \(increaseA.counterIncreaseDescription); "
                    + "B: \(increaseB.counterIncreaseDescription)")
            for (side, increase) in [("A", increaseA), ("B", increaseB)] {
                XCTAssertNil(increase["XfrmInTmplMismatch"], "no XfrmInTmplMismatch in \(side)")
                XCTAssertNil(increase["XfrmInStateMismatch"], "no XfrmInStateMismatch in \(side)")
                XCTAssertEqual(increase, [:], "no XFRM error counter rose in \(side)")
            }
        }
    }

    /// The bug flow-exact selectors fix, documented: with host-only SA selectors and the listener's one reqid,
    /// B's outbound lookup for the older connection picks the newest SA to A.
    func testHostOnlySelectorsSendTheOlderConnectionsRepliesThroughTheNewestSA() throws {
        try inESPKernel(self) {
            let lab = try FlowLab(listenerReqid: Self.listenerReqid)
            defer { lab.tearDown() }
            let x = try lab.openFlow("X", reqid: 601, selectors: .hostOnly)
            try lab.echo(x, Array("X before Y exists".utf8))
            // The outbound lookup prefers the SA added last, by `curlft.add_time` in whole seconds.
            usleep(1_100_000)
            let y = try lab.openFlow("Y", reqid: 602, selectors: .hostOnly)
            for flow in [x, y] { print("FlowBinding 1 contrast: \(flow)") }
            try lab.echo(y, Array("Y works".utf8))
            usleep(300_000)

            let statsBefore = try lab.statistics()
            let before = try lab.counters([x, y])
            let request = Array("X after Y exists".utf8)
            try x.client.send(request)
            XCTAssertEqual(
                try x.server.receiveExactly(request.count, timeout: 5), request,
                "A→B on X still arrives (B's inbound check accepts any SA with reqid L)")
            try x.server.send(request)
            let answer = FlowLab.arrival(on: x.client, within: Self.silence)
            let rise = try lab.counters([x, y]).increase(since: before)
            let statsAfter = try lab.statistics()
            let increaseA = statsAfter.a.increase(since: statsBefore.a)
            let increaseB = statsAfter.b.increase(since: statsBefore.b)
            print(
                "FlowBinding 1 contrast: X's echo \(answer.map { "arrived (\($0.count) bytes)" } ?? "did not arrive within \(Self.silence) s"); "
                    + "SA packet increase: \(rise); xfrm_stat increase A: \(increaseA.counterIncreaseDescription); "
                    + "B: \(increaseB.counterIncreaseDescription)")
            XCTAssertNil(answer, "the older connection's echo does not reach A's socket")
            XCTAssertEqual(rise["X", .outB], 0, "B sends nothing through X's own SA")
            XCTAssertGreaterThan(rise["Y", .outB], 0, "B sends X's reply through Y's (newest) SA")
            XCTAssertGreaterThan(rise["Y", .inA], 0, "A decrypts X's reply with Y's SA")
            XCTAssertGreaterThan(
                increaseA["XfrmInTmplMismatch"] ?? 0, 0,
                "A drops it: Y's SA has reqid \(y.reqidA), X's socket requires \(x.reqidA)")
        }
    }

    // MARK: 2. Cross-flow packets

    /// On A, X's outbound SA is replaced by one with X's reqid and selector but the SPI and key of Y's A→B SA:
    /// B decrypts X's segments with Y's SA and must drop them.
    func testAPacketOfOneFlowUnderAnotherFlowsSAIsRejected() throws {
        try inESPKernel(self) {
            let lab = try FlowLab(listenerReqid: Self.listenerReqid)
            defer { lab.tearDown() }
            let x = try lab.openFlow("X", reqid: 601, selectors: .flowExact)
            let y = try lab.openFlow("Y", reqid: 602, selectors: .flowExact)
            for flow in [x, y] {
                print("FlowBinding 2: \(flow)")
                try lab.echo(flow, Array("\(flow.name) works".utf8))
            }

            // A: the forged SA takes Y's A→B id (dst B, Y's SPI), so both real A→B SAs leave A.
            var forged = y.aToB
            forged.reqid = x.reqidA
            forged.selector = x.aToB.selector
            try lab.xfrmA.deleteState(x.aToB.id)
            try lab.xfrmA.deleteState(y.aToB.id)
            try lab.xfrmA.addState(forged)
            // B: Y's inbound SA reinstalled unchanged (SPI, key, selector, reqid L) so that its replay window
            // starts again; the forged SA's sequence numbers start at 1 and would otherwise be dropped as
            // replays before the policy check is reached.
            try lab.xfrmB.deleteState(y.aToB.id)
            try lab.xfrmB.addState(lab.onB(y.aToB))
            print("FlowBinding 2: forged on A: \(forged)")
            usleep(300_000)

            let statsBefore = try lab.statistics()
            let yInBBefore = try lab.xfrmB.getState(y.aToB.id)
            let xInBBefore = try lab.xfrmB.getState(x.aToB.id).counters.packets
            let payload = Array("X's data under Y's SA".utf8)
            try x.client.send(payload)
            let atX = FlowLab.arrival(on: x.server, within: Self.silence)
            let atY = FlowLab.arrival(on: y.server, within: 0.1)
            let forgedPackets = try lab.xfrmA.getState(forged.id).counters.packets
            let yInB = try lab.xfrmB.getState(y.aToB.id)
            let xInB = try lab.xfrmB.getState(x.aToB.id).counters.packets
            let statsAfter = try lab.statistics()
            let increaseB = statsAfter.b.increase(since: statsBefore.b)
            let increaseA = statsAfter.a.increase(since: statsBefore.a)
            print(
                "FlowBinding 2: forged SA sent \(forgedPackets) packets; B decrypted "
                    + "\(yInB.counters.packets - yInBBefore.counters.packets) with Y's SA (integrity failures "
                    + "\(yInB.statistics.integrityFailed), replay drops \(yInB.statistics.replay + yInB.statistics.replayWindow)), "
                    + "\(xInB - xInBBefore) with X's; X's server socket got \(atX?.count ?? 0) bytes, Y's \(atY?.count ?? 0); "
                    + "xfrm_stat increase B: \(increaseB.counterIncreaseDescription); A: \(increaseA.counterIncreaseDescription)"
            )
            XCTAssertGreaterThan(forgedPackets, 0, "X's segments left A under Y's SPI and key")
            XCTAssertGreaterThan(yInB.counters.packets, yInBBefore.counters.packets, "B decrypted them with Y's SA")
            XCTAssertEqual(yInB.statistics.integrityFailed, 0, "the key was right: no integrity failure")
            XCTAssertEqual(xInB, xInBBefore, "X's own inbound SA on B saw nothing")
            XCTAssertNil(atX, "no byte reached X's socket on B")
            XCTAssertNil(atY, "nor Y's")
            XCTAssertGreaterThan(
                increaseB["XfrmInStateMismatch"] ?? 0, 0,
                "B drops a packet whose SA selector does not cover its flow: XfrmInStateMismatch")
            XCTAssertNil(increaseB["XfrmInTmplMismatch"], "the reqid (L) was right, so no template mismatch")
        }
    }

    // MARK: 3. Inbound reqid check

    /// B's inbound SA for Z is reinstalled with the same SPI, key and flow-exact selector but another reqid:
    /// Z's accepted socket (IN template reqid L, inherited) must drop what it decrypts; restoring reqid L
    /// lets the retransmission through.
    func testAnInboundSAWithAnotherReqidIsRejectedBySocketPolicy() throws {
        try inESPKernel(self) {
            let lab = try FlowLab(listenerReqid: Self.listenerReqid)
            defer { lab.tearDown() }
            let z = try lab.openFlow("Z", reqid: 603, selectors: .flowExact)
            print("FlowBinding 3: \(z)")
            try lab.echo(z, Array("Z works".utf8))

            var otherReqid = lab.onB(z.aToB)
            otherReqid.reqid = Self.listenerReqid + 1000
            try lab.xfrmB.deleteState(z.aToB.id)
            try lab.xfrmB.addState(otherReqid)
            usleep(300_000)

            let statsBefore = try lab.statistics()
            let payload = Array("Z's data under an SA of another reqid".utf8)
            try z.client.send(payload)
            let early = FlowLab.arrival(on: z.server, within: Self.silence)
            let decrypted = try lab.xfrmB.getState(z.aToB.id).counters.packets
            let statsAfter = try lab.statistics()
            let increaseB = statsAfter.b.increase(since: statsBefore.b)
            print(
                "FlowBinding 3: SA reqid \(otherReqid.reqid) vs socket IN template reqid \(Self.listenerReqid): "
                    + "B decrypted \(decrypted) packets, socket got \(early?.count ?? 0) bytes; "
                    + "xfrm_stat increase B: \(increaseB.counterIncreaseDescription)")
            XCTAssertGreaterThan(decrypted, 0, "B decrypted Z's segments")
            XCTAssertNil(early, "no byte reached Z's socket on B")
            XCTAssertGreaterThan(increaseB["XfrmInTmplMismatch"] ?? 0, 0, "counted as XfrmInTmplMismatch")
            XCTAssertNil(increaseB["XfrmInStateMismatch"], "the selector was right")

            // Control: the same SA with reqid L again; TCP's retransmission now gets through.
            try lab.xfrmB.deleteState(z.aToB.id)
            try lab.xfrmB.addState(lab.onB(z.aToB))
            let late = try z.server.receiveExactly(payload.count, timeout: 8)
            XCTAssertEqual(late, payload, "with the reqid restored the retransmitted data arrives")
            print("FlowBinding 3: reqid \(Self.listenerReqid) restored: retransmission delivered \(late.count) bytes")
        }
    }

    // MARK: 4. SPI-pinned socket policies

    /// What the server half's binding rests on. Host-only selectors and the listener's one reqid on B (the
    /// operator's charon, or a wide SA of an attacker at the client's address): unpinned, X's replies leave
    /// through Y's newer SA (test 1's contrast). Once X's accepted socket is re-set with templates carrying
    /// X's own SPIs, its output uses X's SA although Y's is newer and covers the flow, and its input accepts
    /// only X's inbound SA: pinned to another SPI, X's segments are decrypted and dropped
    /// (`XfrmInTmplMismatch`); pinned back, TCP's retransmission is delivered.
    func testASocketPinnedToItsSPIsUsesOnlyThatSAPair() throws {
        try inESPKernel(self) {
            let lab = try FlowLab(listenerReqid: Self.listenerReqid)
            defer { lab.tearDown() }
            let x = try lab.openFlow("X", reqid: 611, selectors: .hostOnly)
            usleep(1_100_000) // the newest SA by `curlft.add_time` (whole seconds) wins an unpinned lookup
            let y = try lab.openFlow("Y", reqid: 612, selectors: .hostOnly)
            try lab.echo(y, Array("Y works".utf8))
            let template = XFRMTemplate(reqid: Self.listenerReqid)
            try SocketPolicy.pin(
                template, inboundSPI: x.aToB.id.spi, outboundSPI: x.bToA.id.spi, on: x.server.fd, family: .inet)

            let before = try lab.counters([x, y])
            try lab.echo(x, Array("X pinned to its own SAs".utf8))
            usleep(300_000)
            let rise = try lab.counters([x, y]).increase(since: before)
            print("FlowBinding 4: echo on pinned X, SA packet increase: \(rise)")
            XCTAssertGreaterThan(rise["X", .outB], 0, "B sends X's reply through X's own SA")
            XCTAssertEqual(rise["Y", .outB], 0, "not through Y's newer SA that covers the flow")

            // Input: pinned to Y's inbound SPI, X's segments (under X's SA) are refused after decryption.
            try SocketPolicy.pin(template, spi: y.aToB.id.spi, direction: .inbound, on: x.server.fd, family: .inet)
            let statsBefore = try lab.statistics()
            let payload = Array("X under its own SA, socket pinned elsewhere".utf8)
            try x.client.send(payload)
            let early = FlowLab.arrival(on: x.server, within: Self.silence)
            let increaseB = try lab.statistics().b.increase(since: statsBefore.b)
            print(
                "FlowBinding 4: inbound pinned to Y's SPI: X's socket got \(early?.count ?? 0) bytes; "
                    + "xfrm_stat increase B: \(increaseB.counterIncreaseDescription)")
            XCTAssertNil(early, "nothing reaches a socket pinned to another SA")
            XCTAssertGreaterThan(increaseB["XfrmInTmplMismatch"] ?? 0, 0, "dropped as XfrmInTmplMismatch")

            try SocketPolicy.pin(template, spi: x.aToB.id.spi, direction: .inbound, on: x.server.fd, family: .inet)
            let late = try x.server.receiveExactly(payload.count, timeout: 8)
            XCTAssertEqual(late, payload, "pinned back to its own SA, the retransmission arrives")
        }
    }

    // MARK: 5. A listener's policy in the SPD, per flow

    /// Before its accepted socket exists, a connection's handshake is answered through the listener's policy, which
    /// names the reqid only: with address-only SAs (one reqid, one peer host) the kernel picks the newest SA, or
    /// after the SAD's hash table grew any of those added in the same second, so the SYN-ACK may leave under another
    /// connection's SA and the client drops it. Here the listener's per-socket policies have a selector that
    /// matches no flow (protocol 255), so the kernel falls through to the SPD: a flow-exact policy per connection
    /// whose templates name that connection's SPIs (priority 0), and a catch-all for the listener's port with the
    /// reqid (priority 100), so nothing of the port ever leaves without ESP. Z's SAs are added before W's (newer,
    /// same reqid, host-only): Z's handshake and data go under Z's own SAs, and the accepted socket (which
    /// inherits the listener's policies) uses the SPD too. A flow without its own policy still leaves under ESP,
    /// through the catch-all.
    func testAListenersPolicyInTheSPDAnswersEachHandshakeUnderItsOwnSAs() throws {
        try inESPKernel(self) {
            let lab = try FlowLab(listenerReqid: Self.listenerReqid)
            defer { lab.tearDown() }
            let template = XFRMTemplate(reqid: Self.listenerReqid)
            let nothing = XFRMSelector(
                family: .inet, source: .any(.inet), sourcePrefixLength: 0, destination: .any(.inet),
                destinationPrefixLength: 0, upperProtocol: XFRMUpperProtocol(rawValue: 255))
            for direction in [XFRMDirection.outbound, .inbound] {
                try SocketPolicy.set(
                    XFRMPolicy(selector: nothing, direction: direction, templates: [template]), on: lab.listener.fd)
            }
            let portOut = XFRMSelector(
                family: .inet, source: lab.addressB, sourcePrefixLength: 32, destination: .any(.inet),
                destinationPrefixLength: 0, sourcePort: lab.port, sourcePortMask: 0xffff, upperProtocol: .tcp)
            let portIn = XFRMSelector(
                family: .inet, source: .any(.inet), sourcePrefixLength: 0, destination: lab.addressB,
                destinationPrefixLength: 32, destinationPort: lab.port, destinationPortMask: 0xffff, upperProtocol: .tcp
            )
            try lab.xfrmB.addPolicy(
                XFRMPolicy(selector: portOut, direction: .outbound, priority: 100, templates: [template]))
            try lab.xfrmB.addPolicy(
                XFRMPolicy(selector: portIn, direction: .inbound, priority: 100, templates: [template]))

            let z = try lab.prepareFlow("Z", reqid: 621, selectors: .hostOnly)
            usleep(1_100_000) // W's SAs strictly newer
            let w = try lab.prepareFlow("W", reqid: 622, selectors: .hostOnly)
            for (outbound, spi) in [(true, z.bToA.id.spi), (false, z.aToB.id.spi)] {
                var pinned = template
                pinned.spi = spi
                let flow =
                    outbound
                    ? XFRMSelector.host(
                        lab.addressB, lab.addressA, protocol: .tcp, sourcePort: lab.port,
                        destinationPort: z.client.localPort)
                    : XFRMSelector.host(
                        lab.addressA, lab.addressB, protocol: .tcp, sourcePort: z.client.localPort,
                        destinationPort: lab.port)
                try lab.xfrmB.addPolicy(
                    XFRMPolicy(selector: flow, direction: outbound ? .outbound : .inbound, templates: [pinned]))
            }
            let before = try lab.xfrmB.getState(w.bToA.id).counters.packets
            let flowZ = try lab.connect(z)
            try lab.echo(flowZ, Array("Z through its own SAs".utf8))
            usleep(300_000)
            let zOut = try lab.xfrmB.getState(z.bToA.id).counters.packets
            let wOut = try lab.xfrmB.getState(w.bToA.id).counters.packets - before
            print(
                "FlowBinding 5: Z's handshake and echo: B sent \(zOut) packets under Z's SA, \(wOut) under W's newer one"
            )
            XCTAssertGreaterThan(zOut, 1, "the SYN-ACK and the echo left under Z's SA")
            XCTAssertEqual(wOut, 0, "nothing of Z left under W's newer SA")

            // W has no flow policy: its handshake goes through the catch-all, under ESP (W's SA is the newest).
            let flowW = try lab.connect(w)
            try lab.echo(flowW, Array("W through the catch-all".utf8))
            XCTAssertGreaterThan(try lab.xfrmB.getState(w.bToA.id).counters.packets, before, "W under ESP")
        }
    }
}

struct LabError: Error, CustomStringConvertible {
    var description: String
}

/// Two namespaces, a listener on B with a per-socket policy of reqid L, and helpers to open flows.
final class FlowLab {
    enum Selectors { case flowExact, hostOnly }

    /// The four SAs of a flow: (A→B, B→A) × (in A, in B).
    enum SAName: String, CaseIterable, CustomStringConvertible {
        case outA = "A out"
        case inA = "A in"
        case inB = "B in"
        case outB = "B out"
        var description: String { rawValue }
    }

    /// One TCP connection from A to the listener and its SA pair as installed in A (reqid of the client
    /// socket); B holds the same SAs with reqid L.
    final class Flow: CustomStringConvertible {
        let name: String
        let client: TestSocket
        let server: TestSocket
        let clientPort: UInt16
        let reqidA: UInt32
        let reqidB: UInt32
        let aToB: XFRMState
        let bToA: XFRMState

        init(
            name: String, client: TestSocket, server: TestSocket, clientPort: UInt16, reqidA: UInt32,
            reqidB: UInt32, aToB: XFRMState, bToA: XFRMState
        ) {
            self.name = name
            self.client = client
            self.server = server
            self.clientPort = clientPort
            self.reqidA = reqidA
            self.reqidB = reqidB
            self.aToB = aToB
            self.bToA = bToA
        }

        var description: String {
            "\(name): client port \(clientPort), reqid A \(reqidA) / B \(reqidB), "
                + "A→B spi 0x\(String(aToB.id.spi, radix: 16)) sel \(aToB.selector), "
                + "B→A spi 0x\(String(bToA.id.spi, radix: 16)) sel \(bToA.selector)"
        }
    }

    /// SA packet counters keyed by flow name and SA.
    struct Counters: CustomStringConvertible {
        var packets: [String: [SAName: UInt64]] = [:]

        subscript(_ flow: String, _ sa: SAName) -> UInt64 { packets[flow]?[sa] ?? 0 }

        func increase(since earlier: Counters) -> Counters {
            var result = Counters()
            for (flow, values) in packets {
                for (sa, value) in values { result.packets[flow, default: [:]][sa] = value - earlier[flow, sa] }
            }
            return result
        }

        var description: String {
            packets.keys.sorted().map { flow in
                "\(flow) {" + SAName.allCases.map { "\($0) \(self[flow, $0])" }.joined(separator: ", ") + "}"
            }.joined(separator: " ")
        }
    }

    let pair: NamespacePair
    let xfrmA: XFRMClient
    let xfrmB: XFRMClient
    let addressA: IPAddress
    let addressB: IPAddress
    let listenerReqid: UInt32
    let listener: TestSocket
    let port: UInt16
    private var sockets: [TestSocket] = []
    private var nextSPI: UInt32 = 0x1000
    private var random = SystemRandomNumberGenerator()

    init(listenerReqid: UInt32) throws {
        pair = try NamespacePair(prefix: "flow")
        do {
            (addressA, addressB) = pair.addresses(.inet)
            xfrmA = try XFRMClient(namespace: pair.a.namespace)
            xfrmB = try XFRMClient(namespace: pair.b.namespace)
            self.listenerReqid = listenerReqid
            listener = try TestSocket.make(in: pair.b.namespace, family: .inet, kind: .tcp)
            try SocketPolicy.require([XFRMTemplate(reqid: listenerReqid)], on: listener.fd)
            try listener.bind(addressB, port: 0)
            try listener.listen()
            port = listener.localPort
            sockets.append(listener)
        } catch {
            pair.remove()
            throw error
        }
    }

    /// Closes every socket abortively (no FIN_WAIT holding policies) and deletes both namespaces.
    func tearDown() {
        for socket in sockets.reversed() { socket.closeAbortively() }
        sockets.removeAll()
        pair.remove()
    }

    /// B's copy of an SA: the listener's reqid.
    func onB(_ state: XFRMState) -> XFRMState {
        var copy = state
        copy.reqid = listenerReqid
        return copy
    }

    /// A client socket on A with its own reqid in both templates, bound first so its port is known; the SA
    /// pair in both namespaces; connect; accept (checked against the client port).
    func openFlow(_ name: String, reqid: UInt32, selectors: Selectors) throws -> Flow {
        try connect(try prepareFlow(name, reqid: reqid, selectors: selectors))
    }

    /// A flow's client socket (bound, its port known) and its SA pair in both namespaces, not connected yet.
    struct Prepared {
        var name: String
        var client: TestSocket
        var reqid: UInt32
        var aToB: XFRMState
        var bToA: XFRMState
    }

    func prepareFlow(_ name: String, reqid: UInt32, selectors: Selectors) throws -> Prepared {
        let client = try TestSocket.make(in: pair.a.namespace, family: .inet, kind: .tcp)
        sockets.append(client)
        try SocketPolicy.require([XFRMTemplate(reqid: reqid)], on: client.fd)
        try client.bind(addressA, port: 0)
        let clientPort = client.localPort
        client.setTimeouts(5)

        let (up, down): (XFRMSelector, XFRMSelector) =
            switch selectors {
            case .flowExact:
                (
                    .host(addressA, addressB, protocol: .tcp, sourcePort: clientPort, destinationPort: port),
                    .host(addressB, addressA, protocol: .tcp, sourcePort: port, destinationPort: clientPort)
                )
            case .hostOnly:
                (.host(addressA, addressB), .host(addressB, addressA))
            }
        let aToB = XFRMState(
            source: addressA, destination: addressB, spi: nextSPI, reqid: reqid,
            algorithms: [.aesGCM(key: key())], selector: up, replayWindow: 32)
        let bToA = XFRMState(
            source: addressB, destination: addressA, spi: nextSPI + 1, reqid: reqid,
            algorithms: [.aesGCM(key: key())], selector: down, replayWindow: 32)
        nextSPI += 0x10
        try xfrmA.addState(aToB)
        try xfrmA.addState(bToA)
        try xfrmB.addState(onB(aToB))
        try xfrmB.addState(onB(bToA))
        return Prepared(name: name, client: client, reqid: reqid, aToB: aToB, bToA: bToA)
    }

    /// Connects a prepared flow (retrying while the kernel answers EAGAIN) and accepts it.
    func connect(_ prepared: Prepared, within seconds: Double = 5) throws -> Flow {
        let client = prepared.client
        try client.connect(addressB, port: port, retryFor: seconds)
        let server = try listener.accept(timeout: seconds)
        sockets.append(server)
        server.setTimeouts(5)
        let peer = Self.peerPort(server)
        guard peer == client.localPort else {
            throw LabError(description: "accepted the connection from port \(peer), expected \(client.localPort)")
        }
        return Flow(
            name: prepared.name, client: client, server: server, clientPort: client.localPort,
            reqidA: prepared.reqid, reqidB: listenerReqid, aToB: prepared.aToB, bToA: prepared.bToA)
    }

    /// Client sends, server echoes, client checks; every wait bounded.
    func echo(_ flow: Flow, _ payload: [UInt8]) throws {
        try flow.client.send(payload)
        let received = try flow.server.receiveExactly(payload.count, timeout: 5)
        XCTAssertEqual(received, payload, "\(flow.name): server got the payload")
        try flow.server.send(received)
        let echoed = try flow.client.receiveExactly(payload.count, timeout: 5)
        XCTAssertEqual(echoed, payload, "\(flow.name): client got the echo")
    }

    /// Packet counters of each flow's four SAs.
    func counters(_ flows: [Flow]) throws -> Counters {
        var result = Counters()
        for flow in flows {
            result.packets[flow.name] = [
                .outA: try xfrmA.getState(flow.aToB.id).counters.packets,
                .inA: try xfrmA.getState(flow.bToA.id).counters.packets,
                .inB: try xfrmB.getState(flow.aToB.id).counters.packets,
                .outB: try xfrmB.getState(flow.bToA.id).counters.packets,
            ]
        }
        return result
    }

    /// `/proc/net/xfrm_stat` of A and of B.
    func statistics() throws -> (a: XFRMStatistics, b: XFRMStatistics) {
        (try XFRMStatistics.read(in: pair.a.namespace), try XFRMStatistics.read(in: pair.b.namespace))
    }

    /// What arrives on `socket` within `seconds`, or nil if nothing does.
    static func arrival(on socket: TestSocket, within seconds: Double) -> [UInt8]? {
        guard let bytes = try? socket.receive(timeout: seconds), !bytes.isEmpty else { return nil }
        return bytes
    }

    static func peerPort(_ socket: TestSocket) -> UInt16 {
        var storage = sockaddr_storage()
        var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
        withUnsafeMutablePointer(to: &storage) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { _ = getpeername(socket.fd.rawValue, $0, &length) }
        }
        return withUnsafeBytes(of: storage) { UInt16(bigEndian: $0.loadUnaligned(fromByteOffset: 2, as: UInt16.self)) }
    }

    /// 16-byte AES key + 4-byte salt.
    private func key() -> [UInt8] { (0..<20).map { _ in UInt8.random(in: 0...255, using: &random) } }
}
