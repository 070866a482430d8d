import ArgumentParser

@main
struct SecureSocketBench: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "secure-socket-bench",
                                                    abstract: "Benchmarks of the secure-socket layer (not tests).")
    func run() throws {
        throw ValidationError("not written yet")
    }
}
