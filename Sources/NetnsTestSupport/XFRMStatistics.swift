import Foundation
import XFRM

/// The kernel's XFRM MIB counters of one namespace: `/proc/net/xfrm_stat` (`XfrmInError`,
/// `XfrmInTmplMismatch`, `XfrmInStateMismatch`, …), what `ip netns exec NS cat /proc/net/xfrm_stat` prints.
public struct XFRMStatistics: Sendable, CustomStringConvertible {
    /// Counter name → value, every line of the file.
    public var counters: [String: UInt64]

    public init(counters: [String: UInt64]) { self.counters = counters }

    /// Reads the counters of `namespace`. The file is read on a thread inside the namespace, through
    /// `/proc/thread-self/net`: `/proc/self/net` would show the process's (main thread's) namespace.
    public static func read(in namespace: NetworkNamespace) throws -> XFRMStatistics {
        let text: String = try namespace.perform {
            try String(contentsOfFile: "/proc/thread-self/net/xfrm_stat", encoding: .utf8)
        }
        return parse(text)
    }

    /// Parses `Name<whitespace>value` lines.
    public static func parse(_ text: String) -> XFRMStatistics {
        var counters: [String: UInt64] = [:]
        for line in text.split(separator: "\n") {
            let words = line.split(whereSeparator: { $0 == " " || $0 == "\t" })
            guard words.count == 2, let value = UInt64(words[1]) else { continue }
            counters[String(words[0])] = value
        }
        return XFRMStatistics(counters: counters)
    }

    public subscript(_ name: String) -> UInt64 { counters[name] ?? 0 }

    /// How much each counter rose since `earlier`; only counters that changed.
    public func increase(since earlier: XFRMStatistics) -> [String: UInt64] {
        counters.reduce(into: [:]) { result, entry in
            let before = earlier[entry.key]
            if entry.value > before { result[entry.key] = entry.value - before }
        }
    }

    /// The non-zero counters, `Name=value` sorted by name.
    public var description: String {
        let nonZero = counters.filter { $0.value != 0 }.sorted { $0.key < $1.key }
        return nonZero.isEmpty ? "all zero" : nonZero.map { "\($0.key)=\($0.value)" }.joined(separator: " ")
    }
}

extension Dictionary where Key == String, Value == UInt64 {
    /// `XfrmInTmplMismatch+3 XfrmInNoPols+1`, or `none`.
    public var counterIncreaseDescription: String {
        isEmpty ? "none" : sorted { $0.key < $1.key }.map { "\($0.key)+\($0.value)" }.joined(separator: " ")
    }
}
