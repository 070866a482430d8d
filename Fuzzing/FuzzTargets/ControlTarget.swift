import DaemonControl

extension FuzzTarget {
    /// The keying daemon's control protocol (``ControlFrame``), on a datagram as either end receives it from the
    /// other (the daemon from any local client it admits, the library from the daemon).
    ///
    /// Invariant: the encoding is canonical, so a decoded frame encodes again to exactly the bytes it came from.
    public static let control = FuzzTarget(name: "control") { input in
        let bytes = Array(input)
        guard let frame = try? ControlFrame(decoding: bytes) else { return .refused }
        guard frame.encoded() == bytes else { return .violated("encode(decode(x)) != x for a control frame") }
        _ = frame.message.carriesSocket
        _ = frame.message.isFromClient
        return .accepted
    }
}
