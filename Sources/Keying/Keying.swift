// The keying layer: strongSwan's charon driven over VICI (the `VICI` module: codec, client, event stream, conn
// shapes), and the keying backends the secure-socket layer uses.
//
// - `CharonDaemon`: a private charon per network namespace (own config folder, own mount namespace with a
//   tmpfs on /run), started, checked over VICI, and always stopped and reaped.
// - `KeyingBackend` and `StaticKeyBackend`: what the secure-socket layer asks of a key manager.
