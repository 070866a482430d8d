import ConfigurationFile
import Foundation
import IPAddressing
import Synchronization
import VICI
import XFRM

/// Manual keying: SA pairs read from a file and installed through `XFRMClient` (XFRM), no IKE. For deterministic
/// tests and for hosts without an IKE daemon.
///
/// File format (``load(path:)`` reads it from a file that must be owned by root or the process's user and be
/// neither writable nor readable by group or others), one peer per line, `#` starts a comment (keys in hex, as
/// `ip xfrm state add` takes them):
///
/// ```
/// # peer      local      spi-out spi-in algorithm          key-out      key-in       icv-bits [identity NAME]
/// 10.77.0.2   10.77.0.1  0x1000  0x2000 rfc4106(gcm(aes))  0x0102…(40)  0x1112…(40)  128      identity b.example
/// ```
///
/// ``listen(_:localPort:localAddress:)`` installs every peer's SA pair with the listener's reqid (transport mode,
/// host-to-host), so a server socket is reachable at once; ``negotiate(_:flow:timeout:)`` installs the peer's
/// pair if needed and checks the configured identity against the required peer name. Manual keying has one
/// SA pair per peer with address-only selectors: the endpoint that installed last owns it (its reqid), so it
/// serves one connection per pair of hosts at a time (tests and hosts without IKE; the per-flow binding needs
/// charon); ``release(_:waiting:)`` deletes what it installed.
public final class StaticKeyBackend: KeyingBackend, Sendable {
    public struct Peer: Hashable, Sendable {
        public var peer: IPAddress
        public var local: IPAddress
        public var outboundSPI: UInt32
        public var inboundSPI: UInt32
        public var algorithm: String
        public var outboundKey: [UInt8]
        public var inboundKey: [UInt8]
        public var icvBits: UInt32
        /// The identity this peer is known as (what a peer target name must equal).
        public var identity: String?

        public init(
            peer: IPAddress, local: IPAddress, outboundSPI: UInt32, inboundSPI: UInt32,
            algorithm: String = "rfc4106(gcm(aes))", outboundKey: [UInt8], inboundKey: [UInt8],
            icvBits: UInt32 = 128, identity: String? = nil
        ) {
            self.peer = peer
            self.local = local
            self.outboundSPI = outboundSPI
            self.inboundSPI = inboundSPI
            self.algorithm = algorithm
            self.outboundKey = outboundKey
            self.inboundKey = inboundKey
            self.icvBits = icvBits
            self.identity = identity
        }

        func states(reqid: UInt32) -> [XFRMState] {
            let algorithm = { (key: [UInt8]) in XFRMAlgorithm(.aead(icvBits: icvBits), name: self.algorithm, key: key) }
            return [
                XFRMState(
                    source: local, destination: peer, spi: outboundSPI, reqid: reqid,
                    algorithms: [algorithm(outboundKey)], selector: .host(local, peer), replayWindow: 32),
                XFRMState(
                    source: peer, destination: local, spi: inboundSPI, reqid: reqid,
                    algorithms: [algorithm(inboundKey)], selector: .host(peer, local), replayWindow: 32),
            ]
        }
    }

    /// A refused static keys file: the first problem and its line.
    public typealias ParseError = ConfigurationError<Never>

    public let name = "static"
    public let peers: [Peer]
    private let client: XFRMClient
    private let installed = Mutex<[UInt32: [XFRMStateID]]>([:])

    public init(peers: [Peer], namespace: NetworkNamespace = .current) throws(XFRMError) {
        self.peers = peers
        self.client = try XFRMClient(namespace: namespace)
    }

    /// What the static keys file must be: whoever can write it chooses the keys and the peers' identities, and
    /// whoever can read it can decrypt and forge the traffic they protect, so it is a secret (`ProtectedFile`,
    /// ConfigurationFile module).
    public static let fileProtection = FileProtection(
        writerDecides: "chooses the keys and the identities of the peers",
        readerCan: "can decrypt and forge the traffic these keys protect")

    /// Reads the file at `path` (the format above), checked first as every file the library trusts is: a regular
    /// file owned by root or the process's effective user, not writable, and as it holds keys not readable, by
    /// group or others. A symbolic link is followed and the file it leads to is what is checked.
    ///
    /// - Throws: ``ParseError``: with its `file` set (and line 0) when the file itself was refused or could not be
    ///   read, else the first problem of its lines.
    public static func load(path: String) throws(ParseError) -> [Peer] {
        let bytes: [UInt8]
        do {
            bytes = try ProtectedFile.read(path, fileProtection)
        } catch {
            throw ParseError(file: error)
        }
        return try parse(String(decoding: bytes, as: UTF8.self))
    }

    /// Reads the file format above.
    public static func parse(_ text: String) throws(ParseError) -> [Peer] {
        var peers: [Peer] = []
        for result in ConfigurationReader.lines(text) {
            let line: ConfigurationLine
            switch result {
            case .success(let read): line = read
            case .failure(let issue): throw ParseError(issue)
            }
            let number = line.number
            let words = line.tokens.map(\.text)
            guard words.count == 8 || words.count == 10 else {
                throw ParseError(line: number, message: "expected 8 fields (+ identity NAME), found \(words.count)")
            }
            guard let peer = IPAddress(words[0]), let local = IPAddress(words[1]), peer.family == local.family
            else {
                throw ParseError(line: number, message: "peer and local must be addresses of one family")
            }
            guard let spiOut = hexOrDecimal(words[2]), let spiIn = hexOrDecimal(words[3]), spiOut >= 0x100,
                spiIn >= 0x100
            else {
                throw ParseError(line: number, message: "SPIs must be numbers of at least 0x100")
            }
            guard let keyOut = hexBytes(words[5]), let keyIn = hexBytes(words[6]), !keyOut.isEmpty,
                keyOut.count == keyIn.count
            else {
                throw ParseError(line: number, message: "keys must be 0x-prefixed hex of equal length")
            }
            guard let icv = UInt32(words[7]), [64, 96, 128].contains(icv) else {
                throw ParseError(line: number, message: "icv-bits must be 64, 96 or 128")
            }
            var identity: String?
            if words.count == 10 {
                guard words[8] == "identity" else {
                    throw ParseError(line: number, message: "expected `identity NAME`")
                }
                identity = words[9]
            }
            peers.append(
                Peer(
                    peer: peer, local: local, outboundSPI: spiOut, inboundSPI: spiIn, algorithm: words[4],
                    outboundKey: keyOut, inboundKey: keyIn, icvBits: icv, identity: identity))
        }
        return peers
    }

    private static func hexOrDecimal(_ text: String) -> UInt32? {
        text.hasPrefix("0x") ? UInt32(text.dropFirst(2), radix: 16) : UInt32(text)
    }

    private static func hexBytes(_ text: String) -> [UInt8]? {
        guard text.hasPrefix("0x"), text.count % 2 == 0 else { return nil }
        var bytes: [UInt8] = []
        var index = text.index(text.startIndex, offsetBy: 2)
        while index < text.endIndex {
            let next = text.index(index, offsetBy: 2)
            guard let byte = UInt8(text[index..<next], radix: 16) else { return nil }
            bytes.append(byte)
            index = next
        }
        return bytes
    }

    public func listen(_ request: KeyingRequest, localPort: UInt16, localAddress: IPAddress?) throws(KeyingError)
        -> KeyingRegistration
    {
        for peer in peers where peer.peer.family == request.family {
            try install(peer, reqid: request.reqid)
        }
        return KeyingRegistration(reqid: request.reqid, entry: .installed)
    }

    public func negotiate(_ request: KeyingRequest, flow: KeyedFlow, timeout: Duration) throws(KeyingError)
        -> Negotiated
    {
        guard let entry = peers.first(where: { $0.peer == flow.remote }) else {
            throw KeyingError(.unavailable, "no static keys for \(flow.remote)")
        }
        if let required = request.requiredPeerIdentity, entry.identity != required, !request.peerIdentityOptional {
            throw KeyingError(
                .authenticationFailed,
                "\(flow.remote) is configured as \(entry.identity ?? "no identity"), not \(required)")
        }
        try install(entry, reqid: request.reqid)
        return Negotiated(
            protection: protection(for: entry),
            registration: KeyingRegistration(reqid: request.reqid, entry: .installed))
    }

    public func protection(inboundSPI: UInt32, peer: IPAddress) -> KeyedProtection? {
        guard let entry = peers.first(where: { $0.peer == peer && $0.inboundSPI == inboundSPI }) else { return nil }
        return protection(for: entry)
    }

    /// Manual keying's SA pairs have address-only selectors: no flow of its own to name.
    public func protection(flow: KeyedFlow) -> KeyedProtection? { nil }

    public func release(_ registration: KeyingRegistration, waiting: Bool) {
        let ids = installed.withLock { $0.removeValue(forKey: registration.reqid) } ?? []
        for id in ids { try? client.deleteState(id) }
    }

    /// Manual keying has one SA pair per peer, released with the registration that installed it.
    public func releaseChild(inboundSPI: UInt32, peer: IPAddress) {}

    public func shutdown() {}

    /// Static keys have no rekeys and no peers making children.
    public func observe(_ handler: @escaping @Sendable (KeyingEvent) -> Void) {}

    /// Static keys know no IKE SA: the kernel's flow-exact pair decides alone.
    public func bindAccepted(_ flow: KeyedFlow, reqid: UInt32) -> AcceptedBinding { .unknown }

    public func unbindAccepted(_ flow: KeyedFlow) {}

    public func dropPeerChildren(reqid: UInt32) {}

    /// Static keys live in the kernel only: the engine deletes a dead process's SAs itself.
    public func reclaim(deadProcess pid: Int32, reqids: [ClosedRange<UInt32>]) {}

    private func protection(for entry: Peer) -> KeyedProtection {
        KeyedProtection(
            remoteIdentity: entry.identity, encryptionAlgorithm: entry.algorithm,
            inboundSPI: entry.inboundSPI, outboundSPI: entry.outboundSPI,
            authentication: PeerAuthentication(machine: .manualKeys))
    }

    private func install(_ peer: Peer, reqid: UInt32) throws(KeyingError) {
        for state in peer.states(reqid: reqid) {
            do {
                try client.addOrUpdateState(state)
            } catch {
                throw KeyingError(.unavailable, "installing \(state.id)", underlying: error)
            }
        }
        installed.withLock { table in
            for (other, ids) in table where other != reqid {
                table[other] = ids.filter { $0.destination != peer.peer && $0.destination != peer.local }
            }
            table[reqid, default: []] += peer.states(reqid: reqid).map(\.id)
        }
    }
}
