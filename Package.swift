// swift-tools-version: 6.1
// Winsock Secure Socket Extensions on Linux IPsec (XFRM).
import PackageDescription

let package = Package(
    name: "WinsockSecureSocket",
    platforms: [.macOS(.v15)],
    products: [
        .library(name: "XFRM", targets: ["XFRM"]),
        .library(name: "SocketDiagnostics", targets: ["SocketDiagnostics"]),
        .library(name: "Keying", targets: ["Keying"]),
        .library(name: "SecureSocket", targets: ["SecureSocket"]),
        // C callers link libWinsockSecureSocket.so.
        .library(name: "WinsockSecureSocket", type: .dynamic, targets: ["WinsockSecureSocket"]),
        .executable(name: "xfrm-demo", targets: ["xfrm-demo"]),
        .executable(name: "xfrm-bench", targets: ["xfrm-bench"]),
        .executable(name: "secure-socket-bench", targets: ["secure-socket-bench"]),
        .library(name: "Impersonation", targets: ["Impersonation"]),
        .executable(name: "wss-inspect", targets: ["wss-inspect"]),
        .executable(name: "secure-echo", targets: ["secure-echo"]),
        .executable(name: "wss-demo", targets: ["wss-demo"]),
        .executable(name: "wss-keyd", targets: ["wss-keyd"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-system", from: "1.8.1"),
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-certificates", from: "1.21.1"),
        // swift-certificates' own ASN.1 layer (its types appear in X509's API).
        .package(url: "https://github.com/apple/swift-asn1", from: "1.1.0"),
        // Logging: each layer logs its decisions through a swift-log Logger the application configures.
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        // The keying daemon's services (accepting clients, the idle exit) under one ServiceGroup: signals, shutdown.
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.13.0"),
    ],
    targets: [
        // C: the kernel's XFRM/netlink UAPI, libmnl and libnl-xfrm-3. No C anywhere else.
        .systemLibrary(
            name: "CNetlink",
            path: "CModules/CNetlink",
            pkgConfig: "libnl-xfrm-3.0",
            providers: [.apt(["libnl-3-dev", "libnl-xfrm-3-dev", "libmnl-dev"])]
        ),
        // The kernel layer: NETLINK_XFRM client, per-socket policies, event monitor.
        .target(
            name: "XFRM",
            dependencies: [
                "IPAddressing",
                "CNetlink",
                "SystemSupport",
                .product(name: "SystemPackage", package: "swift-system"),
            ]
        ),
        // The kernel's socket diagnostics (NETLINK_SOCK_DIAG, inet_diag): TCP and UDP sockets by cookie, dumps,
        // destroy events. XFRM only for NetworkNamespace (how a socket is opened inside a namespace).
        .target(
            name: "SocketDiagnostics",
            dependencies: [
                "CNetlink", "IPAddressing", "XFRM", "SystemSupport",
                .product(name: "SystemPackage", package: "swift-system"),
            ]
        ),
        // Linux process facts several layers need (who owns a file left behind, and whether it still runs).
        .target(name: "SystemSupport", dependencies: [.product(name: "SystemPackage", package: "swift-system")]),
        // The line syntax and the line-numbered errors of the library's files (keying file, static keys, identity map).
        .target(name: "ConfigurationFile"),
        // X.501 distinguished names as structure (RDN sequences): how a certificate's subject travels from the keying
        // layer to the identity map, and what a `subject` rule is parsed into. No dependencies.
        .target(name: "DirectoryNames"),
        // IP addresses and socket endpoints (address + port, sockaddr conversions): the vocabulary every layer shares.
        .target(name: "IPAddressing"),
        // VICI: strongSwan's control protocol (codec, messages, packets, client, event stream, errors, conn shapes),
        // as strongSwan's own bindings split it from the daemon. Nothing here knows of sockets or backends.
        .target(
            name: "VICI",
            dependencies: [
                "XFRM",
                "SystemSupport",
                .product(name: "SystemPackage", package: "swift-system"),
            ]
        ),
        // Keying: strongSwan's charon driven over VICI, and a private charon per namespace.
        .target(
            name: "Keying",
            dependencies: [
                "ConfigurationFile",
                "DirectoryNames",
                "IPAddressing",
                "VICI",
                "XFRM",
                "SystemSupport",
                .product(name: "SystemPackage", package: "swift-system"),
                .product(name: "X509", package: "swift-certificates"),
                .product(name: "SwiftASN1", package: "swift-asn1"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        // Application layer enforcement: the endpoint table and each endpoint's state machine.
        .target(
            name: "ALE",
            dependencies: [
                "IPAddressing", "Keying", "XFRM", "SystemSupport",
                .product(name: "SystemPackage", package: "swift-system"),
            ]),
        // The idiomatic Swift API over XFRM, ALE and keying.
        .target(
            name: "SecureSocket",
            dependencies: [
                "IPAddressing",
                "XFRM", "ALE", "Keying", "Impersonation", "SocketDiagnostics",
                .product(name: "SystemPackage", package: "swift-system"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        // The control protocol between the library and the namespace's keying daemon: messages, their bounded
        // codec, and the SOCK_SEQPACKET channel that carries them with one socket each (SCM_RIGHTS).
        .target(
            name: "DaemonControl",
            dependencies: [
                "DirectoryNames", "IPAddressing", "Impersonation", "SecureSocket", "XFRM",
                .product(name: "SystemPackage", package: "swift-system"),
            ]),
        // The keying daemon of a network namespace: the engine serving applications' sockets over the control
        // protocol, so that applications need no CAP_NET_ADMIN.
        .target(
            name: "KeyingDaemon",
            dependencies: [
                "DaemonControl", "IPAddressing", "Keying", "SecureSocket", "SocketDiagnostics", "ALE", "SystemSupport",
                "XFRM",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "SystemPackage", package: "swift-system"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ]),
        // The library's side of the control protocol: the secure-socket calls carried out by the keying daemon.
        .target(
            name: "DaemonClient",
            dependencies: [
                "ALE", "DaemonControl", "IPAddressing", "Impersonation", "Keying", "SecureSocket", "SystemSupport",
                "VICI",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "SystemPackage", package: "swift-system"),
            ]),
        // The Windows structs with their layouts pinned by _Static_assert (C callers' header beside them).
        .target(
            name: "CSecureSocketABI", path: "CModules/CSecureSocketABI",
            exclude: ["winsock_secure_socket.h", "examples", "test-programs"]),
        // The Windows names and the C ABI.
        .target(
            name: "WinsockSecureSocket",
            dependencies: ["IPAddressing", "SecureSocket", "DaemonClient", "DaemonControl", "CSecureSocketABI"]
        ),
        // Test harness: namespaces, veth pairs, tier probes, the UML runner. Not a product.
        .target(
            name: "NetnsTestSupport",
            dependencies: [
                "IPAddressing", "XFRM", "ALE", "CNetlink", .product(name: "SystemPackage", package: "swift-system"),
            ]
        ),
        // The two-engine fixture the tier-3 tests and the benchmarks share.
        .target(
            name: "EngineTestSupport",
            dependencies: [
                "IPAddressing", "Impersonation", "SecureSocket", "Keying", "VICI", "XFRM", "NetnsTestSupport",
            ]),
        // XCTest glue for the tiers: loud skips locally, failures under CI=true, re-running tier 3 in UML.
        .target(
            name: "TierTesting", dependencies: ["NetnsTestSupport", .product(name: "Logging", package: "swift-log")]),
        // C: static inline wrappers for the raw per-thread credential system calls (glibc's broadcast to all threads).
        .systemLibrary(name: "CThreadCredentials", path: "CModules/CThreadCredentials"),
        // C: glibc's allocator statistics for the tools and its arena limit for the keying daemon (mallinfo2 and
        // mallopt are in <malloc.h>, outside Swift's Glibc module).
        .systemLibrary(name: "CMallocInfo", path: "CModules/CMallocInfo"),
        // Per-thread impersonation of authenticated peers: the identity map and the credential switch.
        .target(
            name: "Impersonation",
            dependencies: [
                "ConfigurationFile", "CThreadCredentials", "DirectoryNames", "SystemSupport",
                .product(name: "SystemPackage", package: "swift-system"),
            ]
        ),
        .executableTarget(
            name: "xfrm-demo",
            dependencies: [
                "IPAddressing",
                "XFRM", "NetnsTestSupport",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]
        ),
        .executableTarget(
            name: "secure-socket-bench",
            dependencies: [
                "IPAddressing",
                "SecureSocket", "WinsockSecureSocket", "Keying", "VICI", "ALE", "XFRM", "NetnsTestSupport",
                "EngineTestSupport", "DaemonClient", .product(name: "SystemPackage", package: "swift-system"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        .executableTarget(
            name: "secure-echo",
            dependencies: [
                "CMallocInfo",
                "IPAddressing",
                "WinsockSecureSocket", "CSecureSocketABI", "ALE", "XFRM",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]
        ),
        .executableTarget(
            name: "wss-demo",
            dependencies: [
                "NetnsTestSupport", "XFRM", .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]
        ),
        .executableTarget(
            name: "wss-keyd",
            dependencies: [
                "CMallocInfo", "DaemonControl", "Keying", "KeyingDaemon", "SecureSocket", "SystemSupport",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ]),
        .executableTarget(
            name: "wss-inspect",
            dependencies: [
                "SecureSocket", "ALE", "XFRM", "DaemonClient", "DaemonControl", "SystemSupport",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]
        ),
        .executableTarget(
            name: "xfrm-bench",
            dependencies: [
                "IPAddressing",
                "XFRM", "NetnsTestSupport",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]
        ),
        // Tier 1: no privileges.
        .testTarget(name: "XFRMUnitTests", dependencies: ["IPAddressing", "XFRM", "CNetlink"]),
        // Tier 2: the host kernel, a fresh network namespace per test.
        .testTarget(
            name: "XFRMKernelTests",
            dependencies: ["IPAddressing", "XFRM", "NetnsTestSupport", "TierTesting", "CNetlink"]),
        .testTarget(
            name: "SocketDiagnosticsUnitTests", dependencies: ["IPAddressing", "SocketDiagnostics", "CNetlink"]),
        .testTarget(
            name: "SocketDiagnosticsKernelTests",
            dependencies: [
                "IPAddressing", "SocketDiagnostics", "XFRM", "NetnsTestSupport", "TierTesting", "SystemSupport",
                "CThreadCredentials",
            ]),
        .testTarget(
            name: "KeyingUnitTests",
            dependencies: [
                "Keying", "VICI", "XFRM", "DirectoryNames", .product(name: "X509", package: "swift-certificates"),
                .product(name: "SwiftASN1", package: "swift-asn1"),
            ]),
        .testTarget(
            name: "WinsockUnitTests",
            dependencies: [
                "IPAddressing",
                "WinsockSecureSocket", "SecureSocket", "ALE", "Keying", "CSecureSocketABI",
                .product(name: "Logging", package: "swift-log"),
            ]),
        .testTarget(
            name: "SecureSocketKernelTests",
            dependencies: [
                "IPAddressing",
                "SecureSocket", "WinsockSecureSocket", "ALE", "Keying", "XFRM", "NetnsTestSupport", "TierTesting",
                "CSecureSocketABI", "SystemSupport",
                .product(name: "Logging", package: "swift-log"),
            ]),
        .testTarget(
            name: "SecureSocketESPTests",
            dependencies: [
                "IPAddressing",
                "SecureSocket", "WinsockSecureSocket", "Impersonation", "ALE", "Keying", "VICI", "XFRM",
                "NetnsTestSupport", "TierTesting", "EngineTestSupport", "DirectoryNames",
            ]),
        .testTarget(
            name: "ALEUnitTests",
            dependencies: [
                "IPAddressing", "ALE", "Keying", "XFRM", .product(name: "SystemPackage", package: "swift-system"),
            ]),
        .testTarget(
            name: "KeyingKernelTests",
            dependencies: ["ConfigurationFile", "Keying", "VICI", "XFRM", "NetnsTestSupport", "TierTesting"]),
        .testTarget(name: "ImpersonationUnitTests", dependencies: ["Impersonation", "DirectoryNames"]),
        .testTarget(name: "ConfigurationFileUnitTests", dependencies: ["ConfigurationFile"]),
        .testTarget(
            name: "ImpersonationKernelTests",
            dependencies: ["Impersonation", "NetnsTestSupport", "TierTesting", "SystemSupport", "CThreadCredentials"]),
        // Tier 3: real ESP under the user-mode-linux kernel.
        .testTarget(
            name: "XFRMESPTests", dependencies: ["IPAddressing", "XFRM", "NetnsTestSupport", "TierTesting", "CNetlink"]),
        // Fuzzing (README "Fuzzing", scripts/fuzz.sh): what each fuzz target does with one input, shared by the
        // libFuzzer executables below and by the tier-1 replay of the committed seeds and crash inputs.
        .target(
            name: "FuzzTargets",
            dependencies: [
                "ConfigurationFile", "DirectoryNames", "Keying", "VICI", "XFRM", "WinsockSecureSocket", "Impersonation",
                "DaemonControl", "CLibFuzzer",
            ],
            path: "Fuzzing/FuzzTargets"),
        // C: the declaration of libFuzzer's driver (libclang_rt.fuzzer, linked by -sanitize=fuzzer).
        .systemLibrary(name: "CLibFuzzer", path: "CModules/CLibFuzzer"),
        .testTarget(name: "FuzzingUnitTests", dependencies: ["FuzzTargets"]),
        .testTarget(
            name: "KeyingDaemonKernelTests",
            dependencies: [
                "ALE", "KeyingDaemon", "DaemonClient", "DaemonControl", "SecureSocket", "Keying", "NetnsTestSupport",
                "TierTesting", "XFRM", "SystemSupport", .product(name: "Logging", package: "swift-log"),
            ]),
        .testTarget(
            name: "DaemonControlUnitTests",
            dependencies: ["DaemonControl", "SecureSocket", "IPAddressing", "Impersonation", "DirectoryNames", "XFRM"]),
        .testTarget(
            name: "SystemSupportUnitTests",
            dependencies: ["SystemSupport", .product(name: "SystemPackage", package: "swift-system")]),
    ],
    swiftLanguageModes: [.v6]
)

// One executable per fuzz target, `fuzz-NAME` (Fuzzing/Targets/fuzz-NAME): libFuzzer's entry point, and a replay
// `main` when built without `-sanitize=fuzzer` (so a plain `swift build` builds them like any other executable).
let fuzzTargets = ["vici", "netlink", "windows-structs", "keying-file", "identity-map", "static-keys", "control"]
package.targets += fuzzTargets.map {
    .executableTarget(name: "fuzz-\($0)", dependencies: ["FuzzTargets"], path: "Fuzzing/Targets/fuzz-\($0)")
}
