import ALE
import Foundation
import Keying
import Synchronization
import XFRM

/// Feeds the ALE endpoint table from what the kernel and the keying daemon report, and answers the
/// kernel's ACQUIREs for secured sockets:
///
/// | source | event | effect |
/// |---|---|---|
/// | XFRM monitor | `ACQUIRE` with a template reqid an endpoint holds | negotiate towards the ACQUIRE's destination (deduplicated, bounded), so a plain `connect()`/`sendto()` that got `EAGAIN` succeeds when retried |
/// | XFRM monitor | SA deleted, or hard `EXPIRE`, with an endpoint's reqid | `childDown` |
/// | VICI `child-updown` (strongSwan) | up / down for a child with an endpoint's reqid | `childUp(identity, ids, algorithms)` / `childDown` |
/// | VICI `ike-updown` down | the IKE SA's children | `childDown` |
final class EndpointEventPump: Sendable {
    private let table: EndpointTable
    private let keying: any KeyingBackend
    private let requests: @Sendable (UInt32) -> KeyingRequest?
    private let monitor: XFRMMonitor
    private let vici: VICIEventStream?
    private let tasks: Mutex<[Task<Void, Never>]> = Mutex([])
    private let inFlight = Mutex<Set<String>>([])
    private let timeout: Double
    static let maximumConcurrentNegotiations = 8

    init(table: EndpointTable, keying: any KeyingBackend, namespace: NetworkNamespace, timeout: Double,
         sweepInterval: Duration = .seconds(1), sweep: @escaping @Sendable () -> Void,
         requests: @escaping @Sendable (UInt32) -> KeyingRequest?) throws(XFRMError) {
        self.table = table
        self.keying = keying
        self.requests = requests
        self.timeout = timeout
        monitor = try XFRMMonitor(namespace: namespace, groups: [.acquire, .expire, .states])
        if let strongswan = keying as? StrongSwanBackend {
            vici = try? VICIEventStream(path: strongswan.vici.path, events: ["child-updown", "child-rekey", "ike-updown"])
        } else {
            vici = nil
        }
        let monitor = self.monitor
        let xfrmTask = Task { [weak self] in
            do {
                for try await event in monitor { self?.handle(event) }
            } catch {
                // The monitor ended (stopped, or the kernel dropped events): queries still ask the kernel.
            }
        }
        // Sockets closed without release(): their endpoints, reqids and keying configs are freed within a second.
        let sweeper = Task {
            while !Task.isCancelled {
                try? await Task.sleep(for: sweepInterval)
                if Task.isCancelled { break }
                sweep()
            }
        }
        var started = [xfrmTask, sweeper]
        if let vici {
            started.append(Task { [weak self] in
                do {
                    for try await event in vici { self?.handle(event) }
                } catch {}
            })
        }
        tasks.withLock { $0 = started }
    }

    func stop() {
        monitor.stop()
        vici?.stop()
        tasks.withLock { for task in $0 { task.cancel() } }
    }

    deinit { stop() }

    // MARK: Kernel events

    private func handle(_ event: XFRMEvent) {
        switch event {
        case .acquire(let acquire):
            guard let reqid = acquire.templates.first?.reqid, reqid != 0, table.users(of: reqid) > 0 else { return }
            negotiate(reqid: reqid, peer: acquire.id.destination, port: acquire.selector.destinationPort,
                      local: acquire.source)
        case .stateDeleted(let state), .expire(let state, hard: true):
            guard state.id.spi != 0, table.users(of: state.reqid) > 0 else { return }
            // Only the endpoints talking to that host (a listener's reqid is shared by all its peers).
            for endpoint in table.endpoints(reqid: state.reqid)
            where currentPeer(endpoint) == state.id.destination || currentPeer(endpoint) == state.source {
                _ = table.handle(.childDown, cookie: endpoint.cookie)
            }
        default:
            return
        }
    }

    private func negotiate(reqid: UInt32, peer: XFRMAddress, port: UInt16, local: XFRMAddress) {
        guard var request = requests(reqid) else { return }
        let key = "\(reqid)/\(peer)"
        let admitted = inFlight.withLock { set -> Bool in
            guard !set.contains(key), set.count < Self.maximumConcurrentNegotiations else { return false }
            set.insert(key)
            return true
        }
        guard admitted else { return }   // the kernel raises a new ACQUIRE once the larval state expires
        let endpoints = table.endpoints(reqid: reqid).filter { $0.peer == nil || $0.peer == peer }
        if let endpoint = endpoints.first, let name = endpoint.peerTargetName(for: peer) {
            request.requiredPeerIdentity = SocketPeerTargetName(name: name).identity(raw: endpoint.peerNameIsRaw)
        }
        for endpoint in endpoints { _ = table.handle(.negotiationStarted, cookie: endpoint.cookie) }
        let keying = self.keying
        let table = self.table
        let timeout = self.timeout
        let inFlight = self.inFlightBox
        let finalRequest = request
        Thread.detachNewThread {
            defer { inFlight.remove(key) }
            do throws(KeyingError) {
                let protection = try keying.negotiate(finalRequest, local: local, peer: peer, peerPort: port, timeout: timeout)
                for endpoint in table.endpoints(reqid: reqid) where endpoint.peer == nil || endpoint.peer == peer {
                    _ = table.handle(.childUp(SecureSocketEngine.info(protection)), cookie: endpoint.cookie)
                }
            } catch {
                let failure = SecureSocketEngine.failure(error, expected: finalRequest.requiredPeerIdentity, timeout: timeout)
                for endpoint in table.endpoints(reqid: reqid) where endpoint.peer == nil || endpoint.peer == peer {
                    _ = table.handle(.failed(failure), cookie: endpoint.cookie)
                }
            }
        }
    }

    /// A sendable handle on the in-flight set for the negotiation threads.
    private var inFlightBox: InFlight { InFlight(pump: self) }

    struct InFlight: @unchecked Sendable {
        weak var pump: EndpointEventPump?
        func remove(_ key: String) { pump?.inFlight.withLock { _ = $0.remove(key) } }
    }

    /// The endpoint's peer: recorded, or read from its socket if it has connected since (a plain `connect()`
    /// that succeeded after an ACQUIRE), then recorded.
    private func currentPeer(_ endpoint: Endpoint) -> XFRMAddress? {
        if let peer = endpoint.peer { return peer }
        guard SocketInspector.cookie(of: endpoint.descriptor) == endpoint.cookie,
              let peer = (try? SocketInspector.facts(of: endpoint.descriptor))?.peer?.address else { return nil }
        table.update(cookie: endpoint.cookie) { $0.peer = peer }
        return peer
    }

    // MARK: Keying daemon events

    private func handle(_ event: VICIEvent) {
        let up = event.isUp ?? false
        for ike in event.ikeSAs {
            for child in ike.children {
                guard let reqid = child.reqid, table.users(of: reqid) > 0 else { continue }
                // Per peer: a listener's reqid is shared by the sockets of all its peers.
                let remote = ike.remoteHost.flatMap { XFRMAddress($0) }
                let endpoints = table.endpoints(reqid: reqid).filter { remote != nil && currentPeer($0) == remote }
                if (up && event.name == "child-updown") || event.name == "child-rekey" {
                    let info = ProtectionInfo(ikeSAID: ike.uniqueID.map(UInt64.init), childSAID: child.uniqueID.map(UInt64.init),
                                              peerIdentity: ike.remoteID, peerUserIdentity: ike.remoteEAPID,
                                              encryptionAlgorithm: child.encryptionAlgorithm,
                                              integrityAlgorithm: child.integrityAlgorithm)
                    for endpoint in endpoints { _ = table.handle(.childUp(info), cookie: endpoint.cookie) }
                } else if !up {
                    for endpoint in endpoints { _ = table.handle(.childDown, cookie: endpoint.cookie) }
                }
            }
        }
    }
}
