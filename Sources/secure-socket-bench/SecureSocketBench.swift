import ArgumentParser
import Logging

/// Benchmarks of the secure-socket layer (not tests). Each prints its figures and the ratio against a named
/// baseline measured in the same run, with medians over repetitions:
///
/// - `warm-path` (any kernel): `setSecurity` + `setPeerTargetName` on a fresh socket vs two bare
///   `setsockopt(IP_XFRM_POLICY)` calls, with static keying and with a private charon.
/// - `query` (ESP kernel): `query` on a secured, connected TCP socket at 100 and 10,000 SAs vs `getState`.
/// - `first-contact` (ESP kernel): WSAConnect to the first echoed byte vs strongSwan with a global trap policy
///   (`xfrm_larval_drop` 1 and 0).
@main
struct SecureSocketBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "secure-socket-bench",
        abstract:
            "Benchmarks of the secure-socket layer (not tests): figures and ratios against a baseline measured in the same run.",
        subcommands: [
            WarmPath.self, QueryBench.self, FirstContact.self, NewConnection.self, DaemonPath.self, PresenceBench.self,
        ])

    static func main() {
        // The engines log a line per connection at info: warnings and worse only, or the writes cost the figures.
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = .warning
            return handler
        }
        main(nil)
    }
}
