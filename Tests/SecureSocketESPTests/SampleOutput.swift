import NetnsTestSupport
import XCTest

/// What Microsoft's secure-socket sample client and server (`CModules/CSecureSocketABI/examples`) print when their
/// one exchange went through secured and encrypted, checked the same way wherever they run.
enum SampleOutput {
    /// The client exited 0 after its echo and a query that said secured and encrypted; the server ended after its
    /// one connection, received the client's bytes, found them secured and encrypted, and its token named the
    /// authenticated client `a.example`.
    static func assertSecuredExchange(
        client: CommandResult, server: NamespaceProcess, file: StaticString = #filePath, line: UInt = #line
    ) {
        print("client (exit \(client.status)):\n\(client.output)")
        XCTAssertEqual(client.status, 0, file: file, line: line)
        XCTAssertTrue(client.output.contains("received: 91011121314"), file: file, line: line)
        XCTAssertTrue(client.output.contains("query: size 24 flags 0x3 SECURED ENCRYPTED"), file: file, line: line)

        XCTAssertTrue(
            server.waitForExit(timeout: 20), "the server ends after its one connection", file: file, line: line)
        print("server:\n\(server.output)")
        if !server.isRunning { XCTAssertEqual(server.terminationStatus, 0, file: file, line: line) }
        XCTAssertTrue(server.output.contains("received: 12345678"), file: file, line: line)
        XCTAssertTrue(server.output.contains("flags 0x3 SECURED ENCRYPTED"), file: file, line: line)
        XCTAssertTrue(
            server.output.contains("peer machine: a.example"), "the token names the authenticated client", file: file,
            line: line)
    }
}
