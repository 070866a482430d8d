import SecureSocket

/// One endpoint as the keying daemon shows it to an inspector: what the engine reports, and which client holds
/// the socket.
public struct InspectedEndpoint: Codable, Hashable, Sendable {
    /// The client process that registered the socket, as the kernel named it; nil when that client has gone
    /// (its orphaned socket is still finishing) or the daemon does not know it.
    public var owner: PeerCredentials?
    public var report: EndpointReport

    public init(owner: PeerCredentials?, report: EndpointReport) {
        self.owner = owner
        self.report = report
    }
}

/// One answer datagram to ``ControlMessage/inspect``: the daemon's summary and some of the endpoints (a table
/// too large for one datagram comes in several pages, the last marked).
public struct InspectionPage: Hashable, Sendable {
    public var daemonPID: Int32
    /// The keying the daemon runs (`strongswan`, `static`, `none`).
    public var keying: String
    /// Clients connected now.
    public var clients: UInt32
    public var endpoints: [InspectedEndpoint]
    /// The last page of the answer.
    public var isLast: Bool

    public init(daemonPID: Int32, keying: String, clients: UInt32, endpoints: [InspectedEndpoint], isLast: Bool) {
        self.daemonPID = daemonPID
        self.keying = keying
        self.clients = clients
        self.endpoints = endpoints
        self.isLast = isLast
    }

    /// Splits `endpoints` into pages that each fit in one datagram. An endpoint too large on its own (many names
    /// or SAs) is sent without its SAs and names beyond the first few.
    public static func pages(
        daemonPID: Int32, keying: String, clients: UInt32, endpoints: [InspectedEndpoint]
    ) -> [InspectionPage] {
        let budget = ControlMessage.maximumFrameBytes - 4_096
        var pages: [InspectionPage] = []
        var current: [InspectedEndpoint] = []
        var size = 0
        for var endpoint in endpoints {
            var bytes = ControlWriter.size { $0.inspectedEndpoint(endpoint) }
            if bytes > budget / 2 {
                endpoint.report.sas = Array(endpoint.report.sas.prefix(4))
                endpoint.report.peerTargetNames = endpoint.report.peerTargetNames.filter { $0.value.utf8.count < 256 }
                bytes = ControlWriter.size { $0.inspectedEndpoint(endpoint) }
            }
            if size + bytes > budget || current.count == ControlReader.maximumCount {
                pages.append(
                    .init(daemonPID: daemonPID, keying: keying, clients: clients, endpoints: current, isLast: false))
                current = []
                size = 0
            }
            current.append(endpoint)
            size += bytes
        }
        pages.append(.init(daemonPID: daemonPID, keying: keying, clients: clients, endpoints: current, isLast: true))
        return pages
    }
}

/// What ``ControlMessage/follow`` streams: an endpoint appeared (or was there when following began), changed,
/// or went; an SA of its reqid appeared or went.
public struct InspectionEvent: Codable, Hashable, Sendable {
    public enum Kind: String, Codable, Hashable, Sendable, CaseIterable {
        /// There when following began.
        case present
        case added
        /// Its state, pins, peer or names changed.
        case changed
        case removed
        case saAdded = "sa-added"
        case saRemoved = "sa-removed"
    }

    public var kind: Kind
    public var endpoint: InspectedEndpoint
    /// The SA for ``Kind/saAdded`` and ``Kind/saRemoved``.
    public var sa: SAReport?

    public init(kind: Kind, endpoint: InspectedEndpoint, sa: SAReport? = nil) {
        self.kind = kind
        self.endpoint = endpoint
        self.sa = sa
    }

    /// The events that lead from `before` to `after` (both by cookie): endpoints added, changed (ignoring SA
    /// counters) and removed, and SAs added and removed, by SPI.
    public static func changes(
        from before: [UInt64: InspectedEndpoint], to after: [UInt64: InspectedEndpoint]
    ) -> [InspectionEvent] {
        var events: [InspectionEvent] = []
        for cookie in after.keys.sorted() {
            let now = after[cookie]!
            guard let old = before[cookie] else {
                events.append(.init(kind: .added, endpoint: now))
                events += now.report.sas.map { .init(kind: .saAdded, endpoint: now, sa: $0) }
                continue
            }
            var withoutSAs = (old, now)
            withoutSAs.0.report.sas = []
            withoutSAs.1.report.sas = []
            if withoutSAs.0 != withoutSAs.1 { events.append(.init(kind: .changed, endpoint: now)) }
            let oldSPIs = Set(old.report.sas.map(\.spi))
            let newSPIs = Set(now.report.sas.map(\.spi))
            events += now.report.sas.filter { !oldSPIs.contains($0.spi) }.map {
                .init(kind: .saAdded, endpoint: now, sa: $0)
            }
            events += old.report.sas.filter { !newSPIs.contains($0.spi) }.map {
                .init(kind: .saRemoved, endpoint: now, sa: $0)
            }
        }
        for cookie in before.keys.sorted() where after[cookie] == nil {
            events.append(.init(kind: .removed, endpoint: before[cookie]!))
        }
        return events
    }
}

extension ControlWriter {
    /// The bytes `write` would add.
    static func size(_ write: (inout ControlWriter) -> Void) -> Int {
        var writer = ControlWriter()
        write(&writer)
        return writer.bytes.count
    }

    mutating func credentials(_ value: PeerCredentials) {
        i32(value.pid)
        u32(value.uid)
        u32(value.gid)
    }

    mutating func saReport(_ value: SAReport) {
        string(value.text)
        string(value.source)
        string(value.destination)
        u32(value.spi)
        u32(value.reqid)
        array(value.algorithms) { $0.string($1) }
        u64(value.bytes)
        u64(value.packets)
    }

    mutating func endpointReport(_ value: EndpointReport) {
        u64(value.cookie)
        i32(value.descriptor)
        string(value.family)
        string(value.kind)
        optional(value.reqid) { $0.u32($1) }
        string(value.role)
        string(value.state)
        optional(value.peerIdentity) { $0.string($1) }
        optional(value.peerUserIdentity) { $0.string($1) }
        array(value.peerTargetNames.sorted { $0.key < $1.key }) { writer, pair in
            writer.string(pair.key)
            writer.string(pair.value)
        }
        string(value.settings)
        optional(value.localPort) { $0.u16($1) }
        optional(value.pinned) { $0.string($1) }
        array(value.sas) { $0.saReport($1) }
    }

    mutating func inspectedEndpoint(_ value: InspectedEndpoint) {
        optional(value.owner) { $0.credentials($1) }
        endpointReport(value.report)
    }

    mutating func inspectionPage(_ value: InspectionPage) {
        i32(value.daemonPID)
        string(value.keying)
        u32(value.clients)
        array(value.endpoints) { $0.inspectedEndpoint($1) }
        bool(value.isLast)
    }

    mutating func inspectionEvent(_ value: InspectionEvent) {
        string(value.kind.rawValue)
        inspectedEndpoint(value.endpoint)
        optional(value.sa) { $0.saReport($1) }
    }
}

extension ControlReader {
    mutating func credentials() throws(ControlProtocolError) -> PeerCredentials {
        PeerCredentials(pid: try i32(), uid: try u32(), gid: try u32())
    }

    mutating func saReport() throws(ControlProtocolError) -> SAReport {
        SAReport(
            text: try string(), source: try string(), destination: try string(), spi: try u32(), reqid: try u32(),
            algorithms: try array { r throws(ControlProtocolError) in try r.string() }, bytes: try u64(),
            packets: try u64())
    }

    mutating func endpointReport() throws(ControlProtocolError) -> EndpointReport {
        let cookie = try u64()
        let descriptor = try i32()
        let family = try string()
        let kind = try string()
        let reqid = try optional { r throws(ControlProtocolError) in try r.u32() }
        let role = try string()
        let state = try string()
        let peerIdentity = try optional { r throws(ControlProtocolError) in try r.string() }
        let peerUserIdentity = try optional { r throws(ControlProtocolError) in try r.string() }
        let pairs = try array { r throws(ControlProtocolError) in (try r.string(), try r.string()) }
        // In the writer's order (ascending, each address once), so that the encoding stays canonical.
        var names: [String: String] = [:]
        for (index, (address, name)) in pairs.enumerated() {
            guard index == 0 || pairs[index - 1].0 < address else {
                throw .invalid("peer target names out of order at \(address)")
            }
            names[address] = name
        }
        return EndpointReport(
            cookie: cookie, descriptor: descriptor, family: family, kind: kind, reqid: reqid, role: role, state: state,
            peerIdentity: peerIdentity, peerUserIdentity: peerUserIdentity, peerTargetNames: names,
            settings: try string(), localPort: try optional { r throws(ControlProtocolError) in try r.u16() },
            pinned: try optional { r throws(ControlProtocolError) in try r.string() },
            sas: try array { r throws(ControlProtocolError) in try r.saReport() })
    }

    mutating func inspectedEndpoint() throws(ControlProtocolError) -> InspectedEndpoint {
        InspectedEndpoint(
            owner: try optional { r throws(ControlProtocolError) in try r.credentials() },
            report: try endpointReport())
    }

    mutating func inspectionPage() throws(ControlProtocolError) -> InspectionPage {
        InspectionPage(
            daemonPID: try i32(), keying: try string(), clients: try u32(),
            endpoints: try array { r throws(ControlProtocolError) in try r.inspectedEndpoint() }, isLast: try bool())
    }

    mutating func inspectionEvent() throws(ControlProtocolError) -> InspectionEvent {
        let raw = try string()
        guard let kind = InspectionEvent.Kind(rawValue: raw) else { throw .invalid("inspection event \(raw)") }
        return InspectionEvent(
            kind: kind, endpoint: try inspectedEndpoint(),
            sa: try optional { r throws(ControlProtocolError) in try r.saReport() })
    }
}
