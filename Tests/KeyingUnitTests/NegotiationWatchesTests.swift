import XCTest

@testable import Keying
@testable import VICI

/// Tier 1: which lines of charon's `log` stream belong to a negotiation started without a waiting `initiate`, and
/// which of them end it. Lines are charon 5.9.8's, from runs of the first-contact bench and as its source formats
/// them (PSK and certificates; refusals, retries charon makes itself, identities that look like failures).
final class NegotiationWatchesTests: XCTestCase {
    let words = CharonLog(version: "5.9.8")

    func line(_ message: String, ike: String? = nil, id: Int? = nil) -> ControlLog {
        var m: VICIMessage = ["group": .string("IKE"), "level": .string("1"), "msg": .string(message)]
        if let ike { m["ikesa-name"] = .string(ike) }
        if let id { m["ikesa-uniqueid"] = .string(String(id)) }
        return ControlLog(m)
    }

    /// A first contact that succeeds, with PSK and with certificates: no line of it is read as failing.
    func testASuccessfulNegotiationIsNeverTakenForAFailingOne() {
        let success = [
            "initiating IKE_SA wss746x0-c1150402816-2[3] to 10.77.0.2",
            "generating IKE_SA_INIT request 0 [ SA KE No N(NATD_S_IP) N(NATD_D_IP) N(FRAG_SUP) N(HASH_ALG) N(REDIR_SUP) ]",
            "sending packet: from 10.77.0.1[500] to 10.77.0.2[500] (892 bytes)",
            "received packet: from 10.77.0.2[500] to 10.77.0.1[500] (248 bytes)",
            "parsed IKE_SA_INIT response 0 [ SA KE No N(NATD_S_IP) N(NATD_D_IP) N(FRAG_SUP) N(HASH_ALG) N(MULT_AUTH) ]",
            "selected proposal: IKE:AES_CBC_128/HMAC_SHA2_256_128/PRF_HMAC_SHA2_256/CURVE_25519",
            "authentication of 'a.example' (myself) with pre-shared key",
            "sending cert request for \"CN=Test CA\"",
            "sending end entity cert \"CN=a.example\"",
            "establishing CHILD_SA c1150402816-2{3}",
            "generating IKE_AUTH request 1 [ IDi N(INIT_CONTACT) CERTREQ IDr AUTH N(USE_TRANSP) SA TSi TSr N(MOBIKE_SUP) ]",
            "parsed IKE_AUTH response 1 [ IDr CERT AUTH N(USE_TRANSP) SA TSi TSr N(AUTH_LFT) N(MOBIKE_SUP) N(NO_ADD_ADDR) ]",
            "received end entity cert \"CN=b.example\"",
            "using certificate \"CN=b.example\"",
            "using trusted ca certificate \"CN=Test CA\"",
            "checking certificate status of \"CN=b.example\"",
            "certificate status is not available",
            "reached self-signed root ca with a path length of 0",
            "authentication of 'b.example' with RSA_EMSA_PKCS1_SHA2_256 successful",
            "authentication of 'b.example' with pre-shared key successful",
            "peer supports MOBIKE",
            "IKE_SA wss746x0-c1150402816-2[3] established between 10.77.0.1[a.example]...10.77.0.2[b.example]",
            "scheduling rekeying in 15846s",
            "maximum IKE_SA lifetime 17593s",
            "received AUTH_LIFETIME notify, reauthentication in 9969s",
            "selected proposal: ESP:AES_GCM_16_256/NO_EXT_SEQ",
            "CHILD_SA c1150402816-2{3} established with SPIs c5e1f3a3_i c8a7e2b1_o and TS 10.77.0.1/32[tcp/43451] === 10.77.0.2/32[tcp/5001]",
            "generating CREATE_CHILD_SA request 2 [ SA No TSi TSr N(USE_TRANSP) ]",
            "parsed CREATE_CHILD_SA response 2 [ SA No TSi TSr N(USE_TRANSP) ]",
            // What charon carries on after, or retries by itself.
            "fetching crl from 'http://ca.example/ca.crl' ...",
            "crl fetching failed",
            "ocsp request to http://ocsp.example failed",
            "creating CHILD_SA failed, trying again in 3 seconds",
            "received TEMPORARY_FAILURE notify, will retry later",
            // Identities and subjects that say "failed" are quoted, and not read.
            "authentication of 'failed.example' with pre-shared key successful",
            "received end entity cert \"CN=unable to install, O=no trusted\"",
            "authentication of 'O'Brien failed' (myself) with pre-shared key successful",
        ]
        for message in success {
            XCTAssertFalse(words.endsNegotiation(message, child: "c1150402816-2"), message)
        }
        let watches = NegotiationWatches()
        watches.begin(child: "c1150402816-2", conn: "wss746x0-c1150402816-2", words: words)
        for message in success { watches.record(line(message, ike: "wss746x0-c1150402816-2", id: 3)) }
        let outcome = watches.outcome(child: "c1150402816-2")
        XCTAssertEqual(outcome?.ended, false)
        XCTAssertEqual(outcome?.lines.count, success.count, "every line of its IKE SA is kept, as control-log would")
    }

    /// charon's refusals and silences, either side's: each ends the negotiation.
    func testRefusalsAndSilencesEndTheNegotiation() {
        for message in [
            "received AUTHENTICATION_FAILED notify error",
            "received NO_PROPOSAL_CHOSEN notify error",
            "received TS_UNACCEPTABLE notify, no CHILD_SA built",
            "failed to establish CHILD_SA, keeping IKE_SA",
            "giving up after 5 retransmits",
            "constraint check failed: identity 'c.example' required",
            "no trusted RSA public key found for 'b.example'",
            "received IDr b.example, but require c.example",
            "not establishing CHILD_SA c1125964544-2{9} due to existing duplicate {5} with SPIs cc11ece8_i c35638db_o",
            "tried 1 shared key for 'a.example' - 'b.example', but MAC mismatched",
            "selected peer config 'wss1x0-c1-2' unacceptable: constraint checking failed",
            "no alternative config found",
            "traffic selectors 10.77.0.1/32[tcp/43451] === 10.77.0.2/32[tcp/5001] unacceptable",
            "unable to install inbound and outbound IPsec SA (SAD) in kernel",
            "received EAP_FAILURE, EAP authentication failed",
            "generating INFORMATIONAL request 2 [ N(AUTH_FAILED) ]",
            "authentication of 'a.example' (myself) failed",
            "tried 1 shared key for 'a.example' - 'O'Brien', but MAC mismatched",
            "no private key found for 'a.example'",
        ] {
            XCTAssertTrue(words.endsNegotiation(message, child: "c1125964544-2"), message)
        }
        XCTAssertFalse(
            words.endsNegotiation(
                "not establishing CHILD_SA c7-1{9} due to existing duplicate {5} with SPIs cc11ece8_i c35638db_o",
                child: "c1125964544-2"),
            "another child's duplicate")
    }

    /// The child's own IKE SA is known by its conn's name; a CHILD_SA started on an IKE SA charon already had
    /// (another conn's) is known by the line that starts it there, and its end is read from that IKE SA's lines; a
    /// line that names the child counts wherever it comes from.
    func testALineCountsOnlyForTheNegotiationItIsAbout() {
        let watches = NegotiationWatches()
        watches.begin(child: "c7-1", conn: "wss1x0-c7-1", words: words)
        watches.begin(child: "c8-2", conn: "wss1x0-c8-2", words: words)

        watches.record(line("received AUTHENTICATION_FAILED notify error", ike: "wss1x0-c99-0", id: 11))
        XCTAssertEqual(watches.outcome(child: "c7-1")?.lines.count, 0, "another IKE SA's refusal")
        XCTAssertEqual(watches.outcome(child: "c8-2")?.ended, false)

        // c8-2 rides on IKE SA 4, which was made for another conn.
        watches.record(line("establishing CHILD_SA c8-2{12}", ike: "wss1x0-c5-0", id: 4))
        watches.record(line("received TS_UNACCEPTABLE notify, no CHILD_SA built", ike: "wss1x0-c5-0", id: 4))
        XCTAssertEqual(watches.outcome(child: "c8-2")?.ended, true)
        XCTAssertEqual(
            watches.outcome(child: "c8-2")?.lines.map(\.message).last,
            "received TS_UNACCEPTABLE notify, no CHILD_SA built")
        XCTAssertEqual(watches.outcome(child: "c7-1")?.ended, false)

        watches.record(line("received AUTHENTICATION_FAILED notify error", ike: "wss1x0-c7-1", id: 5))
        XCTAssertEqual(watches.outcome(child: "c7-1")?.ended, true)

        // Ended watches are forgotten: a later line names nobody.
        watches.end(child: "c7-1")
        watches.end(child: "c8-2")
        XCTAssertNil(watches.outcome(child: "c7-1"))
        watches.begin(child: "c9-3", conn: "wss1x0-c9-3", words: words)
        watches.record(line("received TS_UNACCEPTABLE notify, no CHILD_SA built", ike: "wss1x0-c5-0", id: 4))
        XCTAssertEqual(watches.outcome(child: "c9-3")?.ended, false, "IKE SA 4 carried c8-2, whose watch ended")

        // charon refuses a duplicate before it logs the child's start: the line names the child.
        watches.record(
            line(
                "not establishing CHILD_SA c9-3{14} due to existing duplicate {5} with SPIs cc11ece8_i c35638db_o",
                ike: "wss1x0-c5-0", id: 4))
        XCTAssertEqual(watches.outcome(child: "c9-3")?.ended, true)
    }

    /// charon's log stream going away is told to every watched negotiation (its end may never come).
    func testALostStreamIsToldToEveryWatch() {
        let watches = NegotiationWatches()
        watches.begin(child: "c7-1", conn: "wss1x0-c7-1", words: words)
        XCTAssertEqual(watches.outcome(child: "c7-1")?.streamLost, false)
        watches.streamLost()
        XCTAssertEqual(watches.outcome(child: "c7-1")?.streamLost, true)
    }

    func testTheStartedChildIsReadFromItsLine() {
        XCTAssertEqual(words.startedChild("establishing CHILD_SA c1150402816-2{3}"), "c1150402816-2")
        XCTAssertEqual(words.startedChild("establishing CHILD_SA c1-2{3} reqid 7"), "c1-2")
        XCTAssertNil(words.startedChild("not establishing CHILD_SA c1-2{9} due to existing duplicate {5}"))
        XCTAssertNil(words.startedChild("CHILD_SA c1-2{3} established with SPIs c5e1f3a3_i c8a7e2b1_o"))
    }

    /// A first contact's lines, read as the `control-log` of the error the started attempt fails with, are classified
    /// as a waiting `initiate`'s failure was: the same code, and a peer not ready yet is retried.
    func testTheStartedAttemptsFailureIsClassifiedAsAWaitingInitiatesWas() {
        let start = [
            "initiating IKE_SA wss1x0-c7-1[1] to 10.77.0.2",
            "parsed IKE_SA_INIT response 0 [ SA KE No N(NATD_S_IP) N(NATD_D_IP) N(FRAG_SUP) N(HASH_ALG) N(MULT_AUTH) ]",
            "authentication of 'a.example' (myself) with pre-shared key",
            "establishing CHILD_SA c7-1{1}",
            "generating IKE_AUTH request 1 [ IDi N(INIT_CONTACT) IDr AUTH N(USE_TRANSP) SA TSi TSr N(MOBIKE_SUP) ]",
        ]
        func failure(_ ending: [String]) -> VICIError {
            let watches = NegotiationWatches()
            watches.begin(child: "c7-1", conn: "wss1x0-c7-1", words: words)
            for message in start + ending { watches.record(line(message, ike: "wss1x0-c7-1", id: 1)) }
            let outcome = watches.outcome(child: "c7-1")
            XCTAssertEqual(outcome?.ended, true, "\(ending)")
            return StrongSwanBackend.startedFailure(child: "c7-1", lines: outcome?.lines ?? [])
        }
        let refused = failure([
            "parsed IKE_AUTH response 1 [ N(AUTH_FAILED) ]", "received AUTHENTICATION_FAILED notify error",
        ])
        XCTAssertEqual(words.classify(refused).code, .authenticationFailed)
        let eap = failure([
            "parsed IKE_AUTH response 2 [ EAP/FAIL ]", "received EAP_FAILURE, EAP authentication failed",
        ])
        XCTAssertEqual(words.classify(eap).code, .authenticationFailed)
        let notReady = failure([
            "parsed IKE_AUTH response 1 [ IDr AUTH N(TS_UNACCEPT) ]",
            "IKE_SA wss1x0-c7-1[1] established between 10.77.0.1[a.example]...10.77.0.2[b.example]",
            "received TS_UNACCEPTABLE notify, no CHILD_SA built",
        ])
        XCTAssertTrue(words.peerNotReady(words.classify(notReady).detail), "retried as a listener not ready yet")
        XCTAssertEqual(refused.errmsg, "establishing CHILD_SA 'c7-1' failed", "what vici_control.c answers")
    }
}
