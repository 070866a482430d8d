import Keying
import VICI

extension FuzzTarget {
    /// The VICI decoder, on bytes as charon's socket delivers them. Each input is read three ways: as a
    /// message's element stream (``VICIMessage/decode(_:)``), as one packet's data (``VICIPacket/decode(_:)``)
    /// and as a byte stream split into packets (``VICIFrameReader``, fed in two reads cut where the first byte
    /// says). Decoded messages go through the `list-sa` reader (``IKESAInfo/parse(event:)``) and their text form.
    ///
    /// Invariant: the encoding is canonical, so whatever decodes encodes again to exactly the bytes it came from.
    public static let vici = FuzzTarget(name: "vici") { input in
        let bytes = Array(input)
        var accepted = false

        if let message = try? VICIMessage.decode(bytes) {
            accepted = true
            guard let again = try? message.encode() else { return .violated("a decoded message does not encode") }
            guard again == bytes else { return .violated("encode(decode(x)) != x for a message") }
            read(message)
        }

        if let packet = try? VICIPacket.decode(bytes) {
            accepted = true
            guard let again = try? packet.encode() else { return .violated("a decoded packet does not encode") }
            guard again.count == bytes.count + 4, again.dropFirst(4).elementsEqual(bytes) else {
                return .violated("encode(decode(x)) != length + x for a packet")
            }
            switch packet {
            case .commandRequest(_, let message), .commandResponse(let message), .event(_, let message): read(message)
            default: break
            }
        }

        var reader = VICIFrameReader()
        let cut = bytes.isEmpty ? 0 : Int(bytes[0]) % (bytes.count + 1)
        for chunk in [bytes[..<cut], bytes[cut...]] {
            reader.append(chunk)
            // Bounded: every packet returned consumed at least its 4-byte length.
            while true {
                let packet: VICIPacket?
                do { packet = try reader.next() } catch { return accepted ? .accepted : .refused }
                guard let packet else { break }
                accepted = true
                guard (try? packet.encode()) != nil else { return .violated("a framed packet does not encode") }
            }
        }
        return accepted ? .accepted : .refused
    }

    /// What the keying layer reads out of charon's messages.
    private static func read(_ message: VICIMessage) {
        for sa in IKESAInfo.parse(event: message) {
            _ = sa.isEstablished
            for child in sa.children { _ = child.name }
        }
        _ = message.description
    }
}
