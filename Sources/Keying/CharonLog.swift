import VICI

/// What the strongSwan backend learns only from charon's words (an `initiate`'s error message, the `control-log`
/// lines it streamed, and the `log` stream's lines while a negotiation started without waiting runs), in one table
/// chosen by charon's `version`. Everything else the backend decides
/// from VICI's structured answers and events; nothing outside this type reads charon's log text.
///
/// Each phrase is quoted from charon's source of the series it is listed for (5: Debian 12's 5.9.8; 6: strongSwan
/// 6.0) and replayed from a transcript in `CharonLogTests`. Where the series differ, each has its own entry:
///
/// | quirk | 5.9 | 6.0 |
/// |---|---|---|
/// | another CHILD_SA of the IKE SA closed | `CHILD_SA closed` (`child_delete.c`, `process_i`/`build_r`), `received DELETE for` | `CHILD_SA NAME{ID} closed` (`child_delete.c`), `received DELETE for` |
/// | charon keeps a duplicate of the CHILD_SA | `not establishing CHILD_SA … due to existing duplicate {ID}` (`child_create.c`) | the same |
/// | authentication refused | `AUTHENTICATION_FAILED`, `AUTH_FAILED`, `EAP_FAILURE`, `authentication failed`, `authentication of … failed`, `constraint check failed`, `no trusted`, `no shared key found` | the same |
/// | no proposal | `NO_PROPOSAL_CHOSEN` | the same |
/// | traffic selectors refused, or no config yet | `TS_UNACCEPTABLE`, `no IKE config` | the same |
/// | the peer does not answer | `timeout`, `giving up after`, `retransmit`, `not established after` (`vici_control.c`) | the same |
/// | a started CHILD_SA's IKE SA | `establishing CHILD_SA NAME{ID}` (`child_create.c`, `build_i`) | the same |
/// | a line about one CHILD config | `CHILD_SA NAME{ID}` (the `%s{%d}` charon prints a child with) | the same |
/// | a negotiation that failed for good (its `log` lines, quoted parts left out) | `received … notify error`, `received … notify, no CHILD_SA built`, `received IDr …, but require …`, `received proposals unacceptable`, `traffic selectors … unacceptable`, `selected peer config … unacceptable`, `tried … MAC mismatched`, `not establishing CHILD_SA NAME{`, and lines beginning `failed to establish CHILD_SA`, `giving up after`, `constraint check failed`, `no alternative config found`, `no matching peer config found`, `no trusted`, `no shared key found`, `closing IKE_SA due CHILD_SA setup failure`, `unable to install`, `no acceptable proposal found`, `no acceptable traffic selectors found` (`ike_auth.c`, `ike_init.c`, `child_create.c`, `task_manager_v2.c`, the authenticators, `auth_cfg.c`) | the same |
/// | a failed command's reason among its `control-log` lines | lines saying `failed`, a `received … notify`, a parsed `N(…)` that is no DELETE (`[ D ]`) | the same |
public struct CharonLog: Hashable, Sendable {
    /// A major version of charon whose words differ.
    public enum Series: Hashable, Sendable {
        case five
        case six
    }

    public let series: Series

    /// The table for charon `version` (as its VICI `version` answers, e.g. `5.9.8`, `6.0.1`): 6 and later read as
    /// 6, anything else as 5.
    public init(version: String) {
        let major = Int(version.prefix { $0.isNumber }) ?? 5
        series = major >= 6 ? .six : .five
    }

    public init(series: Series) { self.series = series }

    /// Debian 12's charon, until `version` has answered.
    public static let fallback = CharonLog(series: .five)

    /// Whether the log shows another CHILD_SA of the same IKE SA closing (charon 5.9's `initiate` then reports
    /// failure while ours is still being made).
    public func anotherChildClosed(_ log: String) -> Bool {
        if log.contains("received DELETE for") { return true }
        switch series {
        case .five: return log.contains("CHILD_SA closed")
        case .six: return log.contains(/CHILD_SA \S+\{\d+\} closed/)
        }
    }

    /// The unique id charon names in "not establishing CHILD_SA … due to existing duplicate {5} with SPIs …".
    public func existingDuplicate(_ log: String) -> Int? {
        guard let range = log.range(of: "due to existing duplicate {") else { return nil }
        return Int(log[range.upperBound...].prefix { $0.isNumber })
    }

    /// Whether a refusal means the peer (or this charon) is not ready for the flow yet rather than refusing it for
    /// good: traffic selectors refused, no IKE config, no proposal in `IKE_SA_INIT`.
    public func peerNotReady(_ detail: String) -> Bool {
        detail.contains("TS_UNACCEPTABLE") || detail.contains("no IKE config")
            || detail.contains("NO_PROPOSAL_CHOSEN") && detail.contains("IKE_SA_INIT")
    }

    /// The CHILD config a `log` line starts (`establishing CHILD_SA NAME{ID}`, with or without a reqid after it):
    /// the line's IKE SA is the one the child rides on.
    public func startedChild(_ line: String) -> String? {
        guard let range = line.range(of: "establishing CHILD_SA "), !line.hasPrefix("not ") else { return nil }
        let name = line[range.upperBound...].prefix { $0 != "{" && $0 != " " }
        return name.isEmpty ? nil : String(name)
    }

    /// Whether a `log` line names a CHILD config at all (most do not: one cheap look before ``namesChild(_:_:)``).
    public func namesAChild(_ line: String) -> Bool { line.contains("CHILD_SA ") }

    /// Whether a `log` line names the CHILD config `child` (charon prints a child as `CHILD_SA NAME{ID}`).
    public func namesChild(_ line: String, _ child: String) -> Bool { line.contains("CHILD_SA \(child){") }

    /// Whether a `log` line of a negotiation's IKE SA says, for good, that the negotiation failed: a refusal the
    /// peer sent, one this charon made, a peer given up on, a child not built or not installed. Matched on the
    /// line's own words, with quoted identities and subjects left out (a peer named `failed` is not a failure);
    /// what charon retries by itself (`trying again in`, `will retry later`) and what it carries on after (a CRL or
    /// OCSP fetch that failed) is not a failure here. The lines are then classified as a waiting `initiate`'s
    /// `control-log` would be.
    public func endsNegotiation(_ line: String, child: String) -> Bool {
        let words = Self.unquoted(line)
        if words.hasPrefix("not establishing CHILD_SA \(child){") { return true }
        if words.hasPrefix("received ") {
            return words.hasSuffix(" notify error") || words.contains(" notify, no CHILD_SA built")
                || words.hasPrefix("received IDr ") && words.contains(", but require ")
                || words.hasPrefix("received proposals unacceptable") || words.hasPrefix("received EAP_FAILURE")
                || words.hasPrefix("received unexpected EAP_SUCCESS")
                || words.hasPrefix("received EAP_SUCCESS, but failed")
                || words.hasPrefix("received EAP_SUCCESS but failed")
        }
        // This charon tells the peer that its authentication failed (`ike_auth.c`, `process_i`).
        if words.hasPrefix("generating INFORMATIONAL request") { return words.contains("N(AUTH_FAILED)") }
        if words.hasPrefix("authentication of ") { return words.hasSuffix(" failed") }
        if words.hasPrefix("verification of AUTH payload") { return words.hasSuffix(" failed") }
        if words.hasPrefix("traffic selectors ") { return words.hasSuffix(" unacceptable") }
        if words.hasPrefix("selected peer config ") { return words.contains(" unacceptable") }
        if words.hasPrefix("tried ") { return words.hasSuffix("MAC mismatched") }
        return Self.failurePrefixes.contains { words.hasPrefix($0) }
            || words.hasSuffix("mode requested by responder is unacceptable")
    }

    /// How charon 5.9 and 6.0 begin the lines of a failure that ends a negotiation (`ike_auth.c`, `ike_init.c`,
    /// `child_create.c`, `task_manager_v2.c`, the authenticators, `auth_cfg.c`).
    static let failurePrefixes = [
        "failed to establish CHILD_SA", "giving up after ", "constraint check failed", "no alternative config found",
        "no matching peer config found", "no trusted ", "no shared key found",
        "closing IKE_SA due CHILD_SA setup failure",
        "unable to install", "no acceptable proposal found", "no acceptable traffic selectors found",
        "peer requested EAP, config unacceptable", "authorization forbids IKE_SA", "canceling IKE_SA setup",
        "final authorization hook forbids IKE_SA", "do not allow non-mutual EAP-only authentication",
        "IDr payload missing", "no private key found", "peers proposal selection invalid",
        "peer DH group selection invalid", "key derivation failed",
    ]

    /// The line without its quoted parts (`'…'`, `"…"`). A quote opens at the start of the line or after a space,
    /// `(`, `[` or `=`, and closes before the end, a space, `,`, `)` or `]`: an apostrophe inside an identity
    /// (`'O'Brien'`) neither opens nor closes one.
    static func unquoted(_ line: String) -> String {
        let characters = Array(line)
        var result = ""
        var quote: Character?
        for (index, character) in characters.enumerated() {
            let before = index > 0 ? characters[index - 1] : " "
            let after = index + 1 < characters.count ? characters[index + 1] : " "
            if let open = quote {
                if character == open, " ,)]".contains(after) { quote = nil }
            } else if character == "'" || character == "\"", " ([=".contains(before) {
                quote = character
            } else {
                result.append(character)
            }
        }
        return result
    }

    static let authenticationFailures = [
        "AUTHENTICATION_FAILED", "AUTH_FAILED", "EAP_FAILURE", "authentication failed", "constraint check failed",
        "no trusted", "no shared key found",
    ]

    /// The lines of a failed command's `control-log` that give charon's reason: the IKE and failure lines, not
    /// lines of other SAs logged meanwhile (a DELETE the peer sent).
    public func reasons(_ lines: [ControlLog]) -> [ControlLog] {
        lines.filter { line in
            let text = line.description
            return text.contains("failed") || text.contains("received") && text.contains("notify")
                || text.contains("N(") && text.contains("parsed") && !text.contains("[ D ]")
        }
    }

    /// What charon said about a failure: its `errmsg`, the error's detail, and the reason lines of its
    /// `control-log` followed by its last lines (charon's reason is among the last lines of the exchange).
    public func explanation(_ error: VICIError) -> String {
        var text = "\(error.errmsg ?? "") \(error.detail ?? "")"
        if !error.controlLog.isEmpty {
            let shown = reasons(error.controlLog).suffix(6) + error.controlLog.suffix(4)
            text += "; control-log: " + shown.map(\.description).joined(separator: " | ")
        }
        return text
    }

    /// Maps charon's words to a keying error.
    public func classify(_ error: VICIError) -> KeyingError {
        let text = explanation(error)
        if error.code == .daemonUnavailable || error.code == .io {
            return KeyingError(.unavailable, error.command, underlying: error)
        }
        if error.code == .timedOut { return KeyingError(.timedOut, error.command, underlying: error) }
        if Self.authenticationFailures.contains(where: text.contains)
            || (text.contains("authentication of") && text.contains("failed"))
        {
            return KeyingError(.authenticationFailed, text)
        }
        if text.contains("NO_PROPOSAL_CHOSEN") { return KeyingError(.noProposalChosen, text) }
        if text.contains("TS_UNACCEPTABLE") { return KeyingError(.rejected, text) }
        if text.contains("timeout") || text.contains("giving up after") || text.contains("retransmit")
            || text.contains("not established after")
        {
            return KeyingError(.timedOut, text)
        }
        return KeyingError(.rejected, text)
    }
}
