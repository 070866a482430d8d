import XCTest

@testable import Keying
@testable import VICI

/// Tier 1: the message API, the typed `list-sa` parser and the conn config builder.
final class VICIModelTests: XCTestCase {
    func testDictionaryLiteralKeepsOrderAndAccessorsRead() {
        let message: VICIMessage = ["z": "1", "a": 2, "m": true, "l": ["x", "y"], "s": ["inner": "v"]]
        XCTAssertEqual(message.keys, ["z", "a", "m", "l", "s"])
        XCTAssertEqual(message.string("z"), "1")
        XCTAssertEqual(message.int("a"), 2)
        XCTAssertEqual(message.bool("m"), true)
        XCTAssertEqual(message.string("m"), "yes")
        XCTAssertEqual(message.list("l"), ["x", "y"])
        XCTAssertEqual(message.section("s")?.string("inner"), "v")
        XCTAssertNil(message.string("l"), "a list is not a value")
        XCTAssertNil(message.section("z"))
        XCTAssertNil(message.list("missing"))
        XCTAssertNil(message.int("l"))
        XCTAssertNil(message.bool("s"), "a section is not a boolean")
    }

    func testSubscriptSetReplacesInPlaceRemovesAndAppends() {
        var message: VICIMessage = ["a": "1", "b": "2", "c": "3"]
        message.append("b", "dup")
        message["b"] = "new"
        XCTAssertEqual(message.keys, ["a", "b", "c"], "replaced in place, later duplicate removed")
        XCTAssertEqual(message.string("b"), "new")
        message["d"] = "4"
        XCTAssertEqual(message.keys, ["a", "b", "c", "d"])
        message["a"] = nil
        XCTAssertEqual(message.keys, ["b", "c", "d"])
        XCTAssertEqual(message.count, 3)
    }

    func testWithSectionBuildsNestedConfigs() {
        var conn = VICIMessage()
        conn["version"] = 2
        conn.withSection("children") { children in
            children.withSection("sock") { child in
                child["mode"] = "transport"
                child["reqid"] = .number(UInt32(200))
            }
        }
        conn.withSection("children") { $0.withSection("sock") { $0["policies"] = false } }
        let expected: VICIMessage = [
            "version": "2", "children": ["sock": ["mode": "transport", "reqid": "200", "policies": "no"]],
        ]
        XCTAssertEqual(conn, expected)
    }

    func testDescriptionIsReadable() {
        let message: VICIMessage = ["a": "b", "l": ["1", "2"], "s": ["k": .value([0, 1])]]
        XCTAssertEqual(message.description, "a=b l=[1 2] s {k=0x0001}")
    }

    /// A `list-sa` event shaped like charon 5.9.8's (keys from strongSwan's vici README).
    func testListSAParser() throws {
        let event: VICIMessage = [
            "ike-a": [
                "uniqueid": "3", "version": "2", "state": "ESTABLISHED",
                "local-host": "10.77.0.1", "local-port": "4500", "local-id": "a.lab.test",
                "remote-host": "10.77.0.2", "remote-port": "4500", "remote-id": "b.lab.test",
                "remote-eap-id": "alice",
                "initiator": "yes", "initiator-spi": "6a2f0b0c1d2e3f40", "responder-spi": "0123456789abcdef",
                "encr-alg": "AES_GCM_16", "encr-keysize": "256", "prf-alg": "PRF_HMAC_SHA2_256",
                "dh-group": "CURVE_25519",
                "established": "12", "rekey-time": "13000",
                "child-sas": [
                    "sock-7": [
                        "name": "sock", "uniqueid": "7", "reqid": "200", "state": "INSTALLED", "mode": "TRANSPORT",
                        "protocol": "ESP", "spi-in": "c1a2b3c4", "spi-out": "0000beef",
                        "encr-alg": "AES_CBC", "encr-keysize": "128", "integ-alg": "HMAC_SHA2_256_128",
                        "bytes-in": "123456789012", "packets-in": "42", "bytes-out": "0", "packets-out": "0",
                        "install-time": "12", "rekey-time": "3200", "life-time": "3900",
                        "local-ts": ["10.77.0.1/32[tcp/5001]"], "remote-ts": ["10.77.0.2/32"],
                    ],
                    "bare-8": ["state": "INSTALLING", "spi-in": "not-hex"],
                ],
            ]
        ]
        let sas = IKESAInfo.parse(event: event)
        XCTAssertEqual(sas.count, 1)
        let ike = try XCTUnwrap(sas.first)
        XCTAssertEqual(ike.name, "ike-a")
        XCTAssertEqual(ike.uniqueID, 3)
        XCTAssertTrue(ike.isEstablished)
        XCTAssertEqual(ike.localHost, "10.77.0.1")
        XCTAssertEqual(ike.localPort, 4500)
        XCTAssertEqual(ike.remoteHost, "10.77.0.2")
        XCTAssertEqual(ike.localID, "a.lab.test")
        XCTAssertEqual(ike.remoteID, "b.lab.test")
        XCTAssertEqual(ike.remoteEAPID, "alice")
        XCTAssertTrue(ike.isInitiator)
        XCTAssertEqual(ike.initiatorSPI, 0x6a2f_0b0c_1d2e_3f40)
        XCTAssertEqual(ike.responderSPI, 0x0123_4567_89ab_cdef)
        XCTAssertEqual(ike.encryptionAlgorithm, "AES_GCM_16")
        XCTAssertEqual(ike.encryptionKeySize, 256)
        XCTAssertNil(ike.integrityAlgorithm, "AEAD: no integ-alg")
        XCTAssertEqual(ike.dhGroup, "CURVE_25519")
        XCTAssertEqual(ike.establishedSeconds, 12)
        XCTAssertEqual(ike.children.count, 2)

        let child = ike.children[0]
        XCTAssertEqual(child.name, "sock")
        XCTAssertEqual(child.uniqueID, 7)
        XCTAssertEqual(child.reqid, 200)
        XCTAssertTrue(child.isInstalled)
        XCTAssertEqual(child.mode, "TRANSPORT")
        XCTAssertEqual(child.ipsecProtocol, "ESP")
        XCTAssertEqual(child.spiIn, 0xc1a2_b3c4)
        XCTAssertEqual(child.spiOut, 0xbeef)
        XCTAssertEqual(child.encryptionKeySize, 128)
        XCTAssertEqual(child.integrityAlgorithm, "HMAC_SHA2_256_128")
        XCTAssertEqual(child.bytesIn, 123_456_789_012)
        XCTAssertEqual(child.packetsIn, 42)
        XCTAssertEqual(child.localTS, ["10.77.0.1/32[tcp/5001]"])
        XCTAssertEqual(child.remoteTS, ["10.77.0.2/32"])
        XCTAssertEqual(child.lifeSeconds, 3900)

        let bare = ike.children[1]
        XCTAssertEqual(bare.name, "bare-8", "no name key: the section key")
        XCTAssertNil(bare.spiIn, "unreadable SPI is nil, not an error")
        XCTAssertNil(bare.reqid)
        XCTAssertEqual(bare.localTS, [])
    }

    /// A `child-updown` event exactly as charon 5.9.8 sent it under user-mode-linux (ESP available), with a
    /// per-socket child: transport mode, reqid 100, `remote_ts = dynamic[tcp/5001]` on the initiator.
    func testListSAParserOnCharonOutput() throws {
        let event: VICIMessage = [
            "up": "yes",
            "from-a": [
                "uniqueid": "1", "version": "2", "state": "ESTABLISHED", "local-host": "10.77.0.2",
                "local-port": "4500",
                "local-id": "b.lab.test", "remote-host": "10.77.0.1", "remote-port": "4500", "remote-id": "a.lab.test",
                "initiator-spi": "179b3b766f5ef483", "responder-spi": "72a26e58715dfcc0", "encr-alg": "AES_CBC",
                "encr-keysize": "128", "integ-alg": "HMAC_SHA2_256_128", "prf-alg": "PRF_HMAC_SHA2_256",
                "dh-group": "CURVE_25519", "established": "0", "rekey-time": "14276", "tasks-passive": ["CHILD_CREATE"],
                "child-sas": [
                    "sock-1": [
                        "name": "sock", "uniqueid": "1", "reqid": "100", "state": "INSTALLED", "mode": "TRANSPORT",
                        "protocol": "ESP", "spi-in": "cbcd3d5f", "spi-out": "cc617802", "encr-alg": "AES_GCM_16",
                        "encr-keysize": "256", "bytes-in": "0", "packets-in": "0", "bytes-out": "0", "packets-out": "0",
                        "rekey-time": "3445", "life-time": "3960", "install-time": "0",
                        "local-ts": ["10.77.0.2/32[tcp/5001]"], "remote-ts": ["10.77.0.1/32"],
                    ]
                ],
            ],
        ]
        let recorded = VICIEvent(name: "child-updown", message: try VICIMessage.decode(try event.encode()))
        XCTAssertEqual(recorded.isUp, true)
        let ike = try XCTUnwrap(recorded.ikeSAs.first)
        XCTAssertEqual(recorded.ikeSAs.count, 1, "`up` is not an SA")
        XCTAssertEqual(ike.name, "from-a")
        XCTAssertFalse(ike.isInitiator, "charon omits `initiator` on the responder")
        XCTAssertEqual(ike.remoteID, "a.lab.test")
        XCTAssertEqual(ike.initiatorSPI, 0x179b_3b76_6f5e_f483)
        let child = try XCTUnwrap(ike.children.first)
        XCTAssertEqual(child.name, "sock")
        XCTAssertEqual(child.reqid, 100)
        XCTAssertEqual(child.spiIn, 0xcbcd_3d5f, "the kernel's `spi 0xcbcd3d5f`")
        XCTAssertEqual(child.spiOut, 0xcc61_7802)
        XCTAssertEqual(child.mode, "TRANSPORT")
        XCTAssertEqual(child.encryptionAlgorithm, "AES_GCM_16")
        XCTAssertNil(child.integrityAlgorithm)
        XCTAssertEqual(child.localTS, ["10.77.0.2/32[tcp/5001]"])
        XCTAssertEqual(child.remoteTS, ["10.77.0.1/32"])
    }

    func testListSAParserToleratesMissingKeysAndSkipsPlainEntries() {
        let sas = IKESAInfo.parse(event: ["up": "yes", "c": [:]])
        XCTAssertEqual(sas.map(\.name), ["c"])
        XCTAssertNil(sas.first?.state)
        XCTAssertEqual(sas.first?.children, [])
        XCTAssertEqual(sas.first?.isInitiator, false)
        XCTAssertEqual(VICIEvent(name: "ike-updown", message: ["up": "yes", "c": [:]]).isUp, true)
        XCTAssertEqual(VICIEvent(name: "ike-updown", message: ["c": [:]]).isUp, false)
        XCTAssertNil(VICIEvent(name: "log", message: [:]).isUp)
    }

    func testHexParsing() {
        XCTAssertEqual(UInt32(hex: "c1a2b3c4"), 0xc1a2_b3c4)
        XCTAssertEqual(UInt32(hex: "0xff"), 0xff)
        XCTAssertNil(UInt32(hex: "1c1a2b3c4"), "overflow")
        XCTAssertNil(UInt32(hex: ""))
        XCTAssertNil(UInt32(hex: "0x"))
        XCTAssertNil(UInt32(hex: "-1"))
    }

    func testTrafficSelectors() {
        XCTAssertEqual(TrafficSelector.dynamic.text, "dynamic")
        XCTAssertEqual(TrafficSelector.dynamic(protocol: "tcp", port: 5001).text, "dynamic[tcp/5001]")
        XCTAssertEqual(TrafficSelector.dynamic(protocol: "udp").text, "dynamic[udp]")
        XCTAssertEqual(TrafficSelector.dynamic(port: 53).text, "dynamic[%any/53]")
        XCTAssertEqual(TrafficSelector.subnet("10.0.0.0/24", protocol: "tcp").text, "10.0.0.0/24[tcp]")
    }

    /// The two per-socket shapes of keying-notes, as `load-conn` bodies.
    func testInitiatorAndResponderConfigs() {
        let child = ChildConfig(
            name: "sock", reqid: 200, startAction: .trap, espProposals: ["aes256gcm16"],
            localTS: [.dynamic(protocol: "tcp")], remoteTS: [.dynamic(protocol: "tcp", port: 5001)])
        let initiator = IKEConnConfig.initiator(
            name: "to-b", local: "10.77.0.1", remote: "10.77.0.2",
            localAuth: .psk(id: "a.lab.test"), remoteAuth: .psk(id: "b.lab.test"),
            children: [child], proposals: ["aes256-sha256-modp2048"])
        let expected: VICIMessage = [
            "version": "2",
            "local_addrs": ["10.77.0.1"],
            "remote_addrs": ["10.77.0.2"],
            "proposals": ["aes256-sha256-modp2048"],
            "local": ["auth": "psk", "id": "a.lab.test"],
            "remote": ["auth": "psk", "id": "b.lab.test"],
            "children": [
                "sock": [
                    "mode": "transport", "policies": "no", "reqid": "200", "start_action": "trap",
                    "esp_proposals": ["aes256gcm16"], "local_ts": ["dynamic[tcp]"], "remote_ts": ["dynamic[tcp/5001]"],
                ]
            ],
        ]
        XCTAssertEqual(initiator.message, expected)

        let responder = IKEConnConfig.responder(
            name: "from-any", localAuth: .pubkey(id: "b.lab.test", certificates: [[1, 2]]),
            remoteAuth: AuthConfig(method: .pubkey, id: "%any"),
            children: [ChildConfig(name: "srv", reqid: 100)])
        XCTAssertEqual(responder.message.list("remote_addrs"), ["%any"])
        XCTAssertNil(responder.message["local_addrs"])
        XCTAssertEqual(responder.message.section("local")?["certs"], .list([[1, 2]]))
        XCTAssertEqual(
            responder.message.section("children")?.section("srv"),
            [
                "mode": "transport", "policies": "no", "reqid": "100", "start_action": "none",
                "local_ts": ["dynamic"], "remote_ts": ["dynamic"],
            ])

        var twoRounds = responder
        twoRounds.remoteAuth = [AuthConfig(method: .pubkey), AuthConfig(method: .eapMD5, eapID: "%any")]
        XCTAssertEqual(
            twoRounds.message.keys, ["version", "remote_addrs", "local", "remote-1", "remote-2", "children"])
        XCTAssertEqual(twoRounds.message.section("remote-2"), ["auth": "eap-md5", "eap_id": "%any"])
    }

    func testErrorDescriptionKeepsEverything() {
        let error = VICIError(
            .commandFailed, command: "load-conn", errno: .connectionRefused, errmsg: "bad proposal",
            detail: "more")
        XCTAssertEqual(error, VICIError(.commandFailed, command: "other"), "equality is by code")
        XCTAssertTrue(error.description.contains("load-conn"))
        XCTAssertTrue(error.description.contains("charon says \"bad proposal\""))
        XCTAssertTrue(error.description.contains("errno \(ECONNREFUSED)"))
    }
}
