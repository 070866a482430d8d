/// What a ``SocketDestroyMonitor`` delivers to its handler.
public enum SocketDestroyEvent: Hashable, Sendable {
    /// A socket was destroyed. Its last record as the kernel fills it while freeing the socket: cookie, family,
    /// transport, addresses and ports, state ``TCPState/close``, what was still queued; `uid` and `inode` are 0.
    ///
    /// A TCP socket is destroyed when its connection is over for the kernel too (closed by every process, then
    /// the FIN handshake done or a reset): an orphan's event comes after its close, when its data is delivered or
    /// given up. A connection that enters TIME_WAIT goes on under a time-wait socket with the same cookie, which
    /// sends no event of its own.
    case destroyed(InetSocketRecord)
    /// The kernel dropped events: the receive buffer was full (`ENOBUFS`). Some sockets were destroyed unseen;
    /// re-read what is alive with ``SocketDiagnostics/sockets(_:family:states:)``. The monitor goes on.
    case eventsLost
    /// A datagram or a message in it could not be read; it is skipped and the monitor goes on.
    case unreadable(SocketDiagnosticsError)
    /// Receiving failed: the monitor has stopped, and this is its last event.
    case failed(SocketDiagnosticsError)
}
