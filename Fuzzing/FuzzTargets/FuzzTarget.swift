import Foundation

#if FUZZING
    import CLibFuzzer
#endif

/// One fuzz target: a parser of untrusted bytes, fed one input at a time by libFuzzer (the `fuzz-NAME`
/// executables) or by the replay tests (`Tests/FuzzingUnitTests`), through the same ``check``.
///
/// Inputs are whatever the parser's callers hand it: bytes from charon's VICI socket, a datagram from a
/// NETLINK_XFRM socket, a C caller's struct buffer, a configuration file. The parser may accept or refuse an
/// input; a trap (a failed precondition, an out-of-range index, an arithmetic overflow) is a crash, and so is
/// an ``Outcome/violated(_:)`` invariant (a round trip that changes the value).
public struct FuzzTarget: Sendable {
    /// What one input did.
    public enum Outcome: Hashable, Sendable {
        /// The parser returned a value.
        case accepted
        /// The parser threw: a malformed or refused input, which is fine.
        case refused
        /// An invariant the target checks does not hold: a bug, reported as a crash under libFuzzer.
        case violated(String)
    }

    /// The target's name: its executable is `fuzz-NAME`, its seed corpus `Fuzzing/Corpus/NAME`, the crash
    /// inputs it found `Fuzzing/Crashes/NAME`.
    public let name: String
    /// Feeds one input to the parser.
    public let check: @Sendable (UnsafeRawBufferPointer) -> Outcome

    public init(name: String, check: @escaping @Sendable (UnsafeRawBufferPointer) -> Outcome) {
        self.name = name
        self.check = check
    }

    /// Every target, in the order `scripts/fuzz.sh` runs them.
    public static let all: [FuzzTarget] = [
        .vici, .netlink, .windowsStructs, .keyingFile, .identityMap, .staticKeys, .control,
    ]

    /// Checks one input held in an array (the replay's form; libFuzzer's goes through ``fuzzOne(_:_:)``).
    public func check(_ bytes: [UInt8]) -> Outcome {
        bytes.withUnsafeBytes { check($0) }
    }

    /// The `main` of a `fuzz-NAME` executable. Built with `-sanitize=fuzzer -DFUZZING` (`scripts/fuzz.sh`):
    /// libFuzzer's driver with the command line (its flags, corpus directories), calling `oneInput`, which must
    /// call ``fuzzOne(_:_:)`` on this target (a C function pointer cannot capture it). Built without:
    /// ``replayMain(arguments:)``.
    public func main(oneInput: @convention(c) (UnsafePointer<UInt8>?, Int) -> CInt) -> Never {
        #if FUZZING
            var argc = CommandLine.argc
            var argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>? = CommandLine.unsafeArgv
            exit(LLVMFuzzerRunDriver(&argc, &argv, oneInput))
        #else
            replayMain()
        #endif
    }

    /// libFuzzer's callback for one input: a violated invariant traps, so libFuzzer saves the input.
    public func fuzzOne(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
        if case .violated(let why) = check(UnsafeRawBufferPointer(start: size > 0 ? data : nil, count: size)) {
            fatalError("fuzz-\(name): \(why)")
        }
        return 0
    }

    /// The `main` of a `fuzz-NAME` executable built without libFuzzer: checks every file named on the command
    /// line (a directory: every file in it), prints what each did, and exits 1 if an invariant failed.
    public func replayMain(arguments: [String] = Array(CommandLine.arguments.dropFirst())) -> Never {
        guard !arguments.isEmpty, !arguments.contains(where: { $0.hasPrefix("-") }) else {
            print("usage: fuzz-\(name) FILE|DIRECTORY...  (built without -sanitize=fuzzer: replays inputs)")
            exit(2)
        }
        var failed = false
        for path in Self.inputFiles(arguments) {
            guard let data = FileManager.default.contents(atPath: path) else {
                print("\(path): unreadable")
                failed = true
                continue
            }
            let outcome = check([UInt8](data))
            print("\(path): \(outcome)")
            if case .violated = outcome { failed = true }
        }
        exit(failed ? 1 : 0)
    }

    /// The regular files among `paths`, a directory standing for the files in it (not recursive), sorted.
    public static func inputFiles(_ paths: [String]) -> [String] {
        paths.flatMap { path -> [String] in
            var isDirectory: ObjCBool = false
            guard FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory) else { return [path] }
            guard isDirectory.boolValue else { return [path] }
            let names = (try? FileManager.default.contentsOfDirectory(atPath: path)) ?? []
            return names.filter { !$0.hasPrefix(".") }.sorted().map { "\(path)/\($0)" }
        }
    }
}
