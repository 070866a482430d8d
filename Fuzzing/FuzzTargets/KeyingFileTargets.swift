import ConfigurationFile
import Keying

extension FuzzTarget {
    /// The keying file (``KeyingConfiguration/parse(_:)``), on the file's bytes read as UTF-8 as the library
    /// reads `$WSS_KEYING_CONFIG` (invalid sequences repaired).
    ///
    /// Invariant: a refusal names a line of the file, or line 0 for the file as a whole.
    public static let keyingFile = FuzzTarget(name: "keying-file") { input in
        let text = String(decoding: input, as: UTF8.self)
        do throws(KeyingConfiguration.ParseError) {
            _ = try KeyingConfiguration.parse(text)
            return .accepted
        } catch {
            let lines = ConfigurationReader.lineCount(text)
            guard (0...lines).contains(error.line) else {
                return .violated("a refusal names line \(error.line) of a file of \(lines) lines")
            }
            return .refused
        }
    }

    /// The static keys file (``StaticKeyBackend/parse(_:)``), on the file's bytes read as UTF-8.
    ///
    /// Invariant: what is accepted is what the format allows (equal, non-empty keys; SPIs from 0x100; an ICV of
    /// 64, 96 or 128 bits; addresses of one family), and a refusal names a line of the file.
    public static let staticKeys = FuzzTarget(name: "static-keys") { input in
        let text = String(decoding: input, as: UTF8.self)
        let lines = ConfigurationReader.lineCount(text)
        do throws(StaticKeyBackend.ParseError) {
            let peers = try StaticKeyBackend.parse(text)
            for peer in peers {
                guard !peer.outboundKey.isEmpty, peer.outboundKey.count == peer.inboundKey.count,
                    peer.outboundSPI >= 0x100, peer.inboundSPI >= 0x100, [64, 96, 128].contains(peer.icvBits),
                    peer.peer.family == peer.local.family
                else {
                    return .violated("accepted a peer the format does not allow: \(peer)")
                }
            }
            guard peers.count <= lines else { return .violated("\(peers.count) peers from \(lines) lines") }
            return .accepted
        } catch {
            guard (1...max(lines, 1)).contains(error.line) else {
                return .violated("a refusal names line \(error.line) of a file of \(lines) lines")
            }
            return .refused
        }
    }
}
