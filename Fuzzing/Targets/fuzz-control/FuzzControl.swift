import FuzzTargets

/// `fuzz-control`: `FuzzTarget.control` under libFuzzer (built by `scripts/fuzz.sh` with
/// `-sanitize=fuzzer,address -DFUZZING`), or, built without them, a replay of the input files and directories
/// named on the command line.
@main
enum FuzzControl {
    static func main() {
        FuzzTarget.control.main { fuzzOneInput($0, $1) }
    }
}

/// libFuzzer's callback (its own `main`, linked in but unused, refers to it by this name).
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzOneInput(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    FuzzTarget.control.fuzzOne(data, size)
}
