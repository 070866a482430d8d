import Foundation
import Keying
import NetnsTestSupport
import TierTesting
import VICI
import XCTest
import XFRM

/// Tier 2: private charons in fresh namespaces on the host kernel, which has XFRM but no ESP: charon starts,
/// answers VICI and negotiates IKE between namespaces, but installing CHILD SAs fails.
final class CharonDaemonTests: XCTestCase {
    var daemons: [CharonDaemon] = []
    var namespaces: [TestNamespace] = []
    var pairs: [NamespacePair] = []

    override func setUpWithError() throws {
        try requireTier(.hostKernel)
    }

    override func tearDown() {
        let pids = daemons.map(\.pid)
        for item in daemons { item.stop() }
        daemons = []
        for item in pairs { item.remove() }
        pairs = []
        for item in namespaces { item.remove() }
        namespaces = []
        for pid in pids { XCTAssertFalse(Self.isAlive(pid), "charon \(pid) still running after stop()") }
        XCTAssertEqual(Self.charonChildren(), [], "a charon child of this process is left")
    }

    // MARK: - Helpers

    func start(in namespace: TestNamespace, _ configure: (inout CharonDaemon.Options) -> Void = { _ in }) throws
        -> CharonDaemon
    {
        var options = CharonDaemon.Options()
        configure(&options)
        let daemon = try CharonDaemon(namespace: namespace.namespace, options: options)
        daemons.append(daemon)
        return daemon
    }

    static func isAlive(_ pid: pid_t) -> Bool { kill(pid, 0) == 0 || errno != ESRCH }

    /// `pgrep -P <our pid> -f /usr/lib/ipsec/charon`: charons whose parent is this test process.
    static func charonChildren() -> [String] {
        let result = try? Command.run(
            ["pgrep", "-a", "-P", "\(getpid())", "-f", "/usr/lib/ipsec/charon"], timeout: 10,
            check: false)
        return (result?.output ?? "").split(separator: "\n").map(String.init)
    }

    static let psk = "per-socket-test-psk-0123456789abcdef"
    static let ikeProposals = ["aes256-sha256-modp2048"]

    static func median(_ values: [Duration]) -> Duration {
        let sorted = values.sorted()
        return sorted.isEmpty ? .zero : sorted[sorted.count / 2]
    }

    static func ms(_ duration: Duration) -> String {
        let (seconds, attoseconds) = duration.components
        return String(format: "%.1f ms", Double(seconds) * 1000 + Double(attoseconds) / 1e15)
    }

    // MARK: - One daemon

    func testStartVersionStatsAndStop() throws {
        let ns = try TestNamespace(prefix: "kd")
        namespaces.append(ns)
        let daemon = try start(in: ns)
        let version = try daemon.vici.version()
        XCTAssertEqual(version.daemon, "charon")
        XCTAssertTrue(version.version.hasPrefix("5.9."), "strongSwan \(version.version)")
        XCTAssertEqual(version, daemon.version)
        let stats = try daemon.vici.stats()
        XCTAssertTrue(
            Set(stats.plugins).isSuperset(of: ["vici", "kernel-netlink", "socket-default", "kdf"]),
            "loaded: \(stats.plugins)")
        XCTAssertEqual(stats.ikeSAs, 0)
        XCTAssertTrue(daemon.configuration.contains("load_modular = no"))
        XCTAssertTrue(FileManager.default.fileExists(atPath: daemon.socketPath))
        XCTAssertTrue(daemon.isRunning)
        XCTAssertTrue(Self.isAlive(daemon.pid))
        XCTAssertTrue(daemon.logTail().contains("Starting IKE charon daemon"), daemon.logTail())
        // charon's stdout and stderr are both its log (stdout once was closed at exec, and the first descriptor
        // charon opened became its fd 1).
        for fd in [1, 2] {
            XCTAssertEqual(
                try FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\(daemon.pid)/fd/\(fd)"),
                daemon.logPath, "fd \(fd)")
        }
        // charon's own netlink sockets live in the test namespace: its IKE sockets got bypass policies there.
        let policies = try XFRMClient(namespace: ns.namespace).policies()
        XCTAssertFalse(policies.isEmpty, "charon's socket bypass policies in \(ns.name)")

        // The pid file is compiled in as /var/run/charon.pid: a second charon in the same namespace only
        // works because each has its own tmpfs on /run.
        let second = try start(in: ns) {
            $0.ikePort = 1500
            $0.natTraversalPort = 14500
        }
        XCTAssertEqual(try second.vici.version().daemon, "charon")

        print(
            "MEASURE charon start to VICI ready: \(Self.ms(daemon.startupDuration)), \(Self.ms(second.startupDuration))"
        )
        let pid = daemon.pid
        daemon.stop()
        XCTAssertFalse(daemon.isRunning)
        XCTAssertFalse(Self.isAlive(pid), "charon reaped")
        XCTAssertFalse(FileManager.default.fileExists(atPath: daemon.folder), "folder deleted")
        daemon.stop() // idempotent
        XCTAssertThrowsError(try daemon.vici.version()) {
            XCTAssertEqual(($0 as? VICIError)?.code, .daemonUnavailable, "\($0)")
        }
    }

    func testStartupTimes() throws {
        let ns = try TestNamespace(prefix: "kt")
        namespaces.append(ns)
        var times: [Duration] = []
        for _ in 0..<10 {
            let daemon = try CharonDaemon(namespace: ns.namespace)
            times.append(daemon.startupDuration)
            daemon.stop()
            XCTAssertFalse(Self.isAlive(daemon.pid))
        }
        print(
            "MEASURE charon start to VICI ready over 10 starts: median \(Self.ms(Self.median(times))), "
                + "min \(Self.ms(times.min() ?? .zero)), max \(Self.ms(times.max() ?? .zero))")
    }

    func testLoadSharedLoadConnGetConnsInstallUnload() throws {
        let ns = try TestNamespace(prefix: "kc")
        namespaces.append(ns)
        let vici = try start(in: ns).vici
        XCTAssertEqual(try vici.getConns(), [])
        try vici.loadShared(.ike, secret: Self.psk, owners: ["a.lab.test", "b.lab.test"], id: "psk-ab")
        let child = ChildConfig(
            name: "sock", reqid: 200, espProposals: ["aes256gcm16", "aes128-sha256"],
            remoteTS: [.dynamic(protocol: "tcp", port: 5001)])
        let conn = IKEConnConfig.initiator(
            name: "to-b", local: "10.77.0.1", remote: "10.77.0.2",
            localAuth: .psk(id: "a.lab.test"), remoteAuth: .psk(id: "b.lab.test"),
            children: [child], proposals: Self.ikeProposals)
        try vici.loadConn(conn)
        try vici.loadConn(
            .responder(
                name: "from-any", localAuth: .psk(id: "a.lab.test"),
                remoteAuth: .psk(id: "c.lab.test"), children: [ChildConfig(name: "srv", reqid: 100)]))
        XCTAssertEqual(try vici.getConns(), ["to-b", "from-any"])

        let listed = try vici.listConns(ike: "to-b")
        XCTAssertEqual(listed.map(\.name), ["to-b"])
        XCTAssertEqual(listed.first?.remoteAddresses, ["10.77.0.2"])
        XCTAssertEqual(listed.first?.children, ["sock"])
        let listedChild = listed.first?.raw.section("children")?.section("sock")
        XCTAssertEqual(listedChild?.string("mode"), "TRANSPORT")
        XCTAssertEqual(listedChild?.list("remote-ts"), ["dynamic[tcp/5001]"])
        XCTAssertEqual(listed.first?.raw.section("local-1")?.string("id"), "a.lab.test")

        // install/uninstall of a child with policies = no registers a trap by reqid only: no policy shows.
        try vici.install(child: "sock", ike: "to-b")
        var trapped: [VICIMessage] = []
        try vici.streamingCommand("list-policies", ["trap": true], event: "list-policy") { trapped.append($0) }
        XCTAssertEqual(trapped.flatMap(\.keys), ["to-b/sock"], "the trap is listed by name")
        try vici.uninstall(child: "sock", ike: "to-b")

        try vici.unloadShared(id: "psk-ab")
        try vici.unloadConn(name: "to-b")
        XCTAssertEqual(try vici.getConns(), ["from-any"])
        try vici.unloadConn(name: "from-any")
        XCTAssertEqual(try vici.getConns(), [])
    }

    func testRefusedCommandsCarryCharonsErrmsg() throws {
        let ns = try TestNamespace(prefix: "ke")
        namespaces.append(ns)
        let vici = try start(in: ns).vici
        func refused(_ body: () throws -> Void, errmsg: String, file: StaticString = #filePath, line: UInt = #line) {
            XCTAssertThrowsError(try body(), file: file, line: line) {
                let error = $0 as? VICIError
                XCTAssertEqual(error?.code, .commandFailed, "\($0)", file: file, line: line)
                XCTAssertEqual(error?.errmsg, errmsg, file: file, line: line)
            }
        }
        refused(
            { try vici.loadConn(name: "bad", config: ["proposals": ["nonsense-alg"]]) },
            errmsg: "invalid value for: proposals, config discarded")
        refused({ try vici.unloadConn(name: "nosuch") }, errmsg: "unload: connection 'nosuch' not found")
        refused({ try vici.command("initiate") }, errmsg: "missing configuration name")
        XCTAssertThrowsError(try vici.initiate(child: "nosuch", timeout: .seconds(2))) {
            XCTAssertEqual(($0 as? VICIError)?.code, .commandFailed, "\($0)")
            XCTAssertNotNil(($0 as? VICIError)?.errmsg)
        }
        XCTAssertThrowsError(try vici.command("no-such-command")) {
            XCTAssertEqual(($0 as? VICIError)?.code, .unknownCommand)
        }
        XCTAssertThrowsError(try vici.streamingCommand("list-sas", [:], event: "no-such-event") { _ in }) {
            XCTAssertEqual(($0 as? VICIError)?.code, .unknownEvent)
        }
        XCTAssertEqual(try vici.version().daemon, "charon", "the connection survives refusals")
    }

    func testStartupFailuresReportTheLogAndLeaveNothing() throws {
        let ns = try TestNamespace(prefix: "kf")
        namespaces.append(ns)
        let before = Set((try? FileManager.default.contentsOfDirectory(atPath: "/tmp")) ?? [])
            .filter { $0.hasPrefix("charon-") }
        // Without the vici plugin charon runs but never answers: killed after the ready timeout.
        XCTAssertThrowsError(
            try CharonDaemon(
                namespace: ns.namespace,
                options: {
                    var options = CharonDaemon.Options()
                    options.plugins = ["random", "nonce", "kernel-netlink", "socket-default"]
                    options.readyTimeout = .milliseconds(1500)
                    return options
                }())
        ) {
            let error = $0 as? VICIError
            XCTAssertEqual(error?.code, .daemonUnavailable)
            XCTAssertTrue(error?.detail?.contains("Starting IKE charon daemon") ?? false, "log tail: \($0)")
        }
        // A program that exits at once is reported with its status.
        XCTAssertThrowsError(
            try CharonDaemon(
                namespace: ns.namespace,
                options: {
                    var options = CharonDaemon.Options()
                    options.charonPath = "/bin/false"
                    return options
                }())
        ) {
            let error = $0 as? VICIError
            XCTAssertEqual(error?.code, .daemonUnavailable)
            XCTAssertTrue(error?.detail?.contains("exited with status 1") ?? false, "\($0)")
        }
        XCTAssertThrowsError(
            try CharonDaemon(
                namespace: ns.namespace,
                options: {
                    var options = CharonDaemon.Options()
                    options.temporaryDirectory = "/run"
                    return options
                }())
        ) { XCTAssertEqual(($0 as? VICIError)?.code, .invalidArgument) }
        let after = Set((try? FileManager.default.contentsOfDirectory(atPath: "/tmp")) ?? [])
            .filter { $0.hasPrefix("charon-") }
        XCTAssertEqual(after.subtracting(before), [], "private folders removed")
    }

    // MARK: - Two daemons

    /// PSK between two namespaces: the IKE SA comes up, the CHILD SA cannot be installed on this kernel.
    func testPSKBetweenNamespacesIKEUpChildFailsWithoutESP() throws {
        let pair = try NamespacePair(prefix: "kp")
        pairs.append(pair)
        let a = try start(in: pair.a)
        let b = try start(in: pair.b)
        let eventsB = VICIEventRecorder(try b.events(["ike-updown", "child-updown"]))
        defer { eventsB.stop() }

        for daemon in [a, b] {
            try daemon.vici.loadShared(.ike, secret: Self.psk, owners: ["a.lab.test", "b.lab.test"])
        }
        try a.vici.loadConn(
            .initiator(
                name: "to-b", local: "\(pair.addressA4)", remote: "\(pair.addressB4)",
                localAuth: .psk(id: "a.lab.test"), remoteAuth: .psk(id: "b.lab.test"),
                children: [ChildConfig(name: "sock", reqid: 200)], proposals: Self.ikeProposals))
        try b.vici.loadConn(
            .responder(
                name: "from-a", localAuth: .psk(id: "b.lab.test"),
                remoteAuth: .psk(id: "a.lab.test"),
                children: [ChildConfig(name: "sock", reqid: 100)], proposals: Self.ikeProposals))

        // initiate the child: IKE_SA_INIT + IKE_AUTH carrying the CHILD SA. B cannot add the SAs
        // (XFRM_MSG_NEWSA fails with ENOSYS, "Function not implemented (38)", without esp4) and answers
        // NO_PROPOSAL_CHOSEN inside IKE_AUTH; both sides keep the IKE SA ("failed to establish CHILD_SA,
        // keeping IKE_SA"), and VICI's initiate fails with "establishing CHILD_SA 'sock' failed".
        let begin = ContinuousClock.now
        XCTAssertThrowsError(try a.vici.initiate(child: "sock", ike: "to-b", timeout: .seconds(10))) {
            let error = $0 as? VICIError
            XCTAssertEqual(error?.code, .commandFailed, "\($0)")
            XCTAssertEqual(error?.errmsg, "establishing CHILD_SA 'sock' failed")
            let log = error?.controlLog.map(\.description).joined(separator: " | ") ?? ""
            XCTAssertTrue(log.contains("NO_PROPOSAL_CHOSEN"), "control-log: \($0)")
            XCTAssertTrue(log.contains("keeping IKE_SA"), "control-log: \($0)")
        }
        print("MEASURE initiate of IKE SA + CHILD SA (child refused by B): \(Self.ms(begin.duration(to: .now)))")
        XCTAssertTrue(
            b.logTail(maxBytes: 16_384).contains("unable to install inbound and outbound IPsec SA (SAD) in kernel"),
            b.logTail())

        let onA = try a.vici.listSAs()
        XCTAssertEqual(onA.count, 1)
        XCTAssertEqual(onA.first?.name, "to-b")
        XCTAssertEqual(onA.first?.state, "ESTABLISHED")
        XCTAssertEqual(onA.first?.isInitiator, true)
        XCTAssertEqual(onA.first?.localID, "a.lab.test")
        XCTAssertEqual(onA.first?.remoteID, "b.lab.test")
        XCTAssertEqual(onA.first?.remoteHost, "10.77.0.2")
        XCTAssertEqual(onA.first?.encryptionAlgorithm, "AES_CBC")
        XCTAssertEqual(onA.first?.dhGroup, "MODP_2048")
        XCTAssertEqual(onA.first?.children, [], "no CHILD SA on this kernel")
        let onB = try b.vici.listSAs(ike: "from-a")
        XCTAssertEqual(onB.map(\.state), ["ESTABLISHED"])
        XCTAssertEqual(onB.first?.remoteID, "a.lab.test")
        XCTAssertEqual(onB.first?.initiatorSPI, onA.first?.initiatorSPI, "the same IKE SA")
        XCTAssertEqual(onB.first?.responderSPI, onA.first?.responderSPI)
        XCTAssertEqual(try a.vici.listSAs(ikeID: onA.first?.uniqueID).count, 1, "ike-id filter")
        XCTAssertEqual(try a.vici.listSAs(ikeID: 9999).count, 0)
        // The SPIs charon allocated for the failed child were deleted again.
        XCTAssertEqual(try XFRMClient(namespace: pair.a.namespace).states(), [])
        XCTAssertEqual(try XFRMClient(namespace: pair.b.namespace).states(), [])

        let up = eventsB.wait(timeout: 5) { $0.name == "ike-updown" && $0.isUp == true }
        XCTAssertEqual(up?.ikeSAs.first?.name, "from-a", "events: \(eventsB.recorded)")
        XCTAssertEqual(up?.ikeSAs.first?.remoteID, "a.lab.test")
        XCTAssertEqual(up?.ikeSAs.first?.state, "ESTABLISHED")
        XCTAssertFalse(eventsB.recorded.contains { $0.name == "child-updown" }, "no CHILD SA came up")

        // terminate from A: B sees the IKE SA go down (charon sends no `up` key on a down event).
        let log = try a.vici.terminate(ike: "to-b")
        XCTAssertTrue(log.contains { $0.message.contains("IKE_SA deleted") }, "\(log)")
        let down = eventsB.wait(timeout: 5) { $0.name == "ike-updown" && $0.isUp == false }
        XCTAssertNotNil(down, "events: \(eventsB.recorded)")
        XCTAssertEqual(try a.vici.listSAs(), [])
        XCTAssertEqual(try b.vici.listSAs(), [])

        // Stopping the daemon ends the event stream with an error, not silently.
        b.stop()
        switch eventsB.waitForEnd(timeout: 5) {
        case .failure(let error as VICIError): XCTAssertEqual(error.code, .daemonUnavailable, "\(error)")
        case let other: XCTFail("the event stream should end with daemonUnavailable, not \(String(describing: other))")
        }
    }

    /// Certificates through `load-cert` / `load-key`, made with strongSwan's `pki` for the test. With the
    /// `openssl` plugin (Debian's `libstrongswan-standard-plugins`) ECDSA P-256 and X25519 + AES-GCM; without
    /// it RSA-2048 and MODP-2048 + AES-CBC, which `gmp`, `aes`, `sha2` and `hmac` cover.
    func testCertificatesThroughLoadCertAndLoadKey() throws {
        let modern = FileManager.default.fileExists(atPath: "/usr/lib/ipsec/plugins/libstrongswan-openssl.so")
        guard Command.locate("pki") != nil else {
            if TierProbe.mustReachEveryTier { XCTFail("CI=true and strongSwan's pki is not installed") }
            throw XCTSkip("strongSwan's pki (strongswan-pki) is not installed")
        }
        let keyType = modern ? "ecdsa" : "rsa"
        let proposals = modern ? ["aes256gcm16-prfsha256-x25519"] : Self.ikeProposals
        let folder = try Self.makeCertificates(keyType: keyType)
        defer { try? FileManager.default.removeItem(atPath: folder) }
        func read(_ name: String) throws -> [UInt8] {
            Array(try Data(contentsOf: URL(fileURLWithPath: "\(folder)/\(name)")))
        }

        let pair = try NamespacePair(prefix: "kk")
        pairs.append(pair)
        let a = try start(in: pair.a)
        let b = try start(in: pair.b)
        for (daemon, me) in [(a, "a"), (b, "b")] {
            try daemon.vici.loadCert(try read("ca.crt"), flag: .ca)
            try daemon.vici.loadCert(try read("\(me).crt"))
            let keyID = try daemon.vici.loadKey(try read("\(me).key"), type: modern ? .ecdsa : .rsa)
            XCTAssertNotNil(keyID, "load-key answers the key id")
        }
        XCTAssertThrowsError(try a.vici.loadKey(Array("not a key".utf8))) {
            XCTAssertEqual(($0 as? VICIError)?.code, .commandFailed, "\($0)")
            XCTAssertNotNil(($0 as? VICIError)?.errmsg)
        }
        try a.vici.loadConn(
            .initiator(
                name: "to-b", local: "10.77.0.1", remote: "10.77.0.2",
                localAuth: .pubkey(id: "a.lab.test", certificates: [try read("a.crt")]),
                remoteAuth: .pubkey(id: "b.lab.test", caCertificates: [try read("ca.crt")]),
                children: [], proposals: proposals))
        try a.vici.loadConn(
            .initiator(
                name: "to-b-wrong-id", local: "10.77.0.1", remote: "10.77.0.2",
                localAuth: .pubkey(id: "a.lab.test", certificates: [try read("a.crt")]),
                remoteAuth: .pubkey(id: "c.lab.test"), children: [], proposals: proposals))
        try b.vici.loadConn(
            .responder(
                name: "from-any", localAuth: .pubkey(id: "b.lab.test", certificates: [try read("b.crt")]),
                remoteAuth: .pubkey(id: "%any"), children: [], proposals: proposals))
        var times: [Duration] = []
        for round in 0..<10 {
            let begin = ContinuousClock.now
            try a.vici.initiate(child: nil, ike: "to-b", timeout: .seconds(10))
            times.append(begin.duration(to: .now))
            let sa = try XCTUnwrap(try a.vici.listSAs(ike: "to-b").first, "round \(round)")
            XCTAssertEqual(sa.state, "ESTABLISHED")
            XCTAssertEqual(sa.remoteID, "b.lab.test")
            if round == 0 {
                XCTAssertEqual(sa.encryptionAlgorithm, modern ? "AES_GCM_16" : "AES_CBC")
                XCTAssertEqual(sa.dhGroup, modern ? "CURVE_25519" : "MODP_2048")
                XCTAssertEqual(try b.vici.listSAs().first?.remoteID, "a.lab.test", "the certificate's identity")
            }
            try a.vici.terminate(ikeID: sa.uniqueID, timeout: .seconds(5))
        }
        print(
            "MEASURE IKE_SA establishment with \(keyType) certificates, \(proposals[0]) over 10: "
                + "median \(Self.ms(Self.median(times)))")
        // keying-notes: the identity must be in the certificate's subjectAltName.
        XCTAssertThrowsError(try a.vici.initiate(child: nil, ike: "to-b-wrong-id", timeout: .seconds(10))) {
            XCTAssertEqual(($0 as? VICIError)?.code, .commandFailed, "\($0)")
        }
    }

    /// A CA and certificates for a.lab.test and b.lab.test (subjectAltName = the name) in a temporary folder.
    static func makeCertificates(keyType: String) throws -> String {
        let certificates = try TestCertificates(names: ["a.lab.test", "b.lab.test"], keyType: keyType)
        // The tests read a.crt / b.crt / a.key / b.key: keep those names.
        for n in ["a", "b"] {
            for ext in ["crt", "key"] {
                try FileManager.default.moveItem(
                    atPath: "\(certificates.folder)/\(n).lab.test.\(ext)",
                    toPath: "\(certificates.folder)/\(n).\(ext)")
            }
        }
        return certificates.folder
    }

    /// IKE SA establishment time between namespaces (IKE-only `initiate`, which charon 5.9.8 accepts), PSK, with
    /// MODP-2048 (base plugins) and, when the `openssl` plugin is installed, X25519 + AES-GCM.
    func testIKEEstablishmentTime() throws {
        let pair = try NamespacePair(prefix: "km")
        pairs.append(pair)
        let a = try start(in: pair.a)
        let b = try start(in: pair.b)
        for daemon in [a, b] {
            try daemon.vici.loadShared(.ike, secret: Self.psk, owners: ["a.lab.test", "b.lab.test"])
        }
        var suites = [Self.ikeProposals[0]]
        if try a.vici.stats().plugins.contains("openssl") { suites.append("aes256gcm16-prfsha256-x25519") }
        for (index, proposal) in suites.enumerated() {
            // One conn pair per proposal; identities differ so B selects the right one (selection is by identity).
            let (idA, idB) = ("a\(index).lab.test", "b\(index).lab.test")
            for daemon in [a, b] { try daemon.vici.loadShared(.ike, secret: Self.psk, owners: [idA, idB]) }
            try a.vici.loadConn(
                .initiator(
                    name: "to-b-\(index)", local: "10.77.0.1", remote: "10.77.0.2",
                    localAuth: .psk(id: idA), remoteAuth: .psk(id: idB), children: [],
                    proposals: [proposal]))
            try b.vici.loadConn(
                .responder(
                    name: "from-a-\(index)", localAuth: .psk(id: idB), remoteAuth: .psk(id: idA),
                    children: [], proposals: [proposal]))
            var times: [Duration] = []
            for round in 0..<20 {
                let begin = ContinuousClock.now
                try a.vici.initiate(child: nil, ike: "to-b-\(index)", timeout: .seconds(10))
                times.append(begin.duration(to: .now))
                let sas = try a.vici.listSAs(ike: "to-b-\(index)")
                XCTAssertEqual(sas.map(\.state), ["ESTABLISHED"], "\(proposal) round \(round)")
                XCTAssertEqual(sas.first?.remoteID, idB)
                try a.vici.terminate(ikeID: sas.first?.uniqueID, timeout: .seconds(5))
            }
            print(
                "MEASURE IKE_SA establishment (PSK, \(proposal), veth between namespaces) over 20: "
                    + "median \(Self.ms(Self.median(times))), min \(Self.ms(times.min() ?? .zero)), "
                    + "max \(Self.ms(times.max() ?? .zero))")
        }
        XCTAssertEqual(try b.vici.listSAs(), [])
    }
}

extension CharonDaemonTests {
    /// `charon auto` takes a charon whose VICI socket answers only if that charon runs in the socket's network
    /// namespace (its process, by `SO_PEERCRED`): a visible socket of another namespace's charon is not used.
    func testAVisibleCharonOfAnotherNamespaceIsNotTheSystemCharon() throws {
        let mine = try TestNamespace(prefix: "kdm")
        let other = try TestNamespace(prefix: "kdo")
        namespaces += [mine, other]
        let daemon = try start(in: mine)
        let client = try VICIClient(path: daemon.socketPath)
        XCTAssertEqual(client.daemonProcessID, daemon.pid, "SO_PEERCRED names charon")
        XCTAssertEqual(
            CharonDaemon.systemVICISocket(candidates: [daemon.socketPath], namespace: mine.namespace),
            daemon.socketPath)
        XCTAssertNil(CharonDaemon.systemVICISocket(candidates: [daemon.socketPath], namespace: other.namespace))
        XCTAssertNil(CharonDaemon.systemVICISocket(candidates: [daemon.socketPath], namespace: .current))
    }
}
