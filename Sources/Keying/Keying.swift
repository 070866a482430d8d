// The keying layer: strongSwan's charon driven over VICI, and the keying backends the secure-socket layer uses.
//
// - `VICIMessage`, `VICIPacket`, `VICIFrameReader`: the VICI wire format (strongSwan's
//   `src/libcharon/plugins/vici/README.md`), encoded and decoded with bounded, total readers.
// - `VICIClient`: one connection, one command at a time, every wait bounded; typed commands
//   (`version`, `load-conn`, `initiate`, `list-sas`, …) in `VICIClient+Commands.swift`, typed `list-sa` results
//   in `VICISAInfo.swift`.
// - `VICIEventStream`: `ike-updown`, `child-updown`, … as an `AsyncSequence` on a connection of its own.
// - `CharonDaemon`: a private charon per network namespace (own config folder, own mount namespace with a
//   tmpfs on /run), started, checked over VICI, and always stopped and reaped.
// - `IKEConnConfig`, `ChildConfig`, `AuthConfig`, `TrafficSelector`: the per-socket conn shapes as `VICIMessage`s.
// - `KeyingBackend` and `StaticKeyBackend`: what the secure-socket layer asks of a key manager.
