/// One VICI message: an ordered tree of key/values, lists and sub-sections.
///
/// VICI's message format (strongSwan's `src/libcharon/plugins/vici/README.md`) is an element stream of sections,
/// key/values and lists. Values are raw blobs; charon uses unterminated strings only and encodes numbers as
/// decimal strings. Order is kept because it matters to charon in places (the order of `children`, of
/// authentication rounds `local-1`, `local-2`, of proposals).
///
/// Build messages with nested literals; a dictionary literal keeps the order written:
///
/// ```swift
/// let conn: VICIMessage = [
///     "ike-a": [
///         "remote_addrs": ["10.77.0.2"],
///         "local": ["auth": "psk", "id": "a.lab.test"],
///         "children": ["sock": ["mode": "transport", "reqid": 200, "policies": false]],
///     ],
/// ]
/// ```
///
/// A string literal is a value, an array literal a list, a dictionary literal a section; integers are encoded
/// in decimal and booleans as `yes` / `no`, which is how charon's settings parser reads them.
public struct VICIMessage: Hashable, Sendable, ExpressibleByDictionaryLiteral, CustomStringConvertible {
    /// One value of a key: a blob, a list of blobs, or a section.
    public enum Value: Hashable, Sendable, ExpressibleByStringLiteral, ExpressibleByArrayLiteral,
        ExpressibleByDictionaryLiteral, ExpressibleByIntegerLiteral, ExpressibleByBooleanLiteral
    {
        /// A `KEY_VALUE` element: raw bytes, a string without terminator in everything charon sends.
        case value([UInt8])
        /// A `LIST_START`, `LIST_ITEM`…, `LIST_END` run. Lists hold blobs only, never sections or lists.
        case list([[UInt8]])
        /// A `SECTION_START` … `SECTION_END` run.
        case section(VICIMessage)

        /// A string value (its UTF-8 bytes).
        public static func string(_ text: String) -> Value { .value(Array(text.utf8)) }
        /// A list of strings.
        public static func strings(_ items: [String]) -> Value { .list(items.map { Array($0.utf8) }) }
        /// A number as charon reads it: decimal text.
        public static func number<I: BinaryInteger>(_ number: I) -> Value { .string(String(number)) }
        /// A boolean as charon reads it: `yes` or `no`.
        public static func bool(_ flag: Bool) -> Value { .string(flag ? "yes" : "no") }

        public init(stringLiteral value: String) { self = .string(value) }
        public init(arrayLiteral elements: String...) { self = .strings(elements) }
        public init(dictionaryLiteral elements: (String, Value)...) {
            self = .section(VICIMessage(entries: elements.map { Entry(key: $0.0, value: $0.1) }))
        }
        public init(integerLiteral value: Int) { self = .number(value) }
        public init(booleanLiteral value: Bool) { self = .bool(value) }

        /// The blob as text when this is a value (invalid UTF-8 is repaired, never rejected).
        public var string: String? {
            if case .value(let bytes) = self { return String(decoding: bytes, as: UTF8.self) }
            return nil
        }
        /// The raw bytes when this is a value.
        public var bytes: [UInt8]? {
            if case .value(let bytes) = self { return bytes }
            return nil
        }
        /// The items as text when this is a list.
        public var strings: [String]? {
            if case .list(let items) = self { return items.map { String(decoding: $0, as: UTF8.self) } }
            return nil
        }
        /// The message when this is a section.
        public var section: VICIMessage? {
            if case .section(let message) = self { return message }
            return nil
        }
    }

    /// One key and its value, in the order they appear on the wire.
    public struct Entry: Hashable, Sendable {
        public var key: String
        public var value: Value
        public init(key: String, value: Value) {
            self.key = key
            self.value = value
        }
    }

    /// Every entry, in order. VICI asks for unique keys per section; decoding keeps duplicates as they came.
    public var entries: [Entry]

    public init(entries: [Entry] = []) { self.entries = entries }

    public init(dictionaryLiteral elements: (String, Value)...) {
        entries = elements.map { Entry(key: $0.0, value: $0.1) }
    }

    public var isEmpty: Bool { entries.isEmpty }
    public var count: Int { entries.count }
    /// The keys in order.
    public var keys: [String] { entries.map(\.key) }

    /// The first value stored under `key`. Setting replaces the first entry with that key in place (keeping
    /// its position) and removes later duplicates, or appends; setting nil removes every entry with the key.
    public subscript(key: String) -> Value? {
        get { entries.first { $0.key == key }?.value }
        set {
            guard let newValue else {
                entries.removeAll { $0.key == key }
                return
            }
            if let index = entries.firstIndex(where: { $0.key == key }) {
                var updated = Array(entries[..<index])
                updated.append(Entry(key: key, value: newValue))
                updated += entries[(index + 1)...].filter { $0.key != key }
                entries = updated
            } else {
                entries.append(Entry(key: key, value: newValue))
            }
        }
    }

    /// Appends an entry without looking for an existing one (for building messages in order).
    public mutating func append(_ key: String, _ value: Value) {
        entries.append(Entry(key: key, value: value))
    }

    /// Edits the section under `key` in place, creating an empty one (appended) when there is none or when
    /// the key holds something else. Handy for building nested configurations step by step:
    /// `conn.withSection("children") { $0.withSection("sock") { $0["reqid"] = 200 } }`.
    public mutating func withSection<R>(_ key: String, _ body: (inout VICIMessage) throws -> R) rethrows -> R {
        var section = self[key]?.section ?? VICIMessage()
        let result = try body(&section)
        self[key] = .section(section)
        return result
    }

    /// The value under `key` as text, nil if missing or not a plain value.
    public func string(_ key: String) -> String? { self[key]?.string }
    /// The value under `key` as raw bytes.
    public func bytes(_ key: String) -> [UInt8]? { self[key]?.bytes }
    /// The section under `key`.
    public func section(_ key: String) -> VICIMessage? { self[key]?.section }
    /// The list under `key` as text items.
    public func list(_ key: String) -> [String]? { self[key]?.strings }
    /// The value under `key` as a decimal integer (charon sends numbers as text).
    public func int(_ key: String) -> Int? { string(key).flatMap { Int($0) } }
    /// The value under `key` as a decimal unsigned 64-bit integer (byte and packet counters).
    public func uint64(_ key: String) -> UInt64? { string(key).flatMap { UInt64($0) } }
    /// The value under `key` as a boolean: `yes`/`true`/`1` or `no`/`false`/`0`, else nil.
    public func bool(_ key: String) -> Bool? {
        switch string(key)?.lowercased() {
        case "yes", "true", "1": true
        case "no", "false", "0": false
        default: nil
        }
    }

    /// Every section entry, in order, as (key, section): e.g. the IKE SAs of a `list-sa` event.
    public var sections: [(key: String, section: VICIMessage)] {
        entries.compactMap { entry in entry.value.section.map { (entry.key, $0) } }
    }

    /// Text in swanctl's `--raw`-like notation, for logs and failure messages. Non-printable values are hex.
    public var description: String { render() }

    private func render() -> String {
        func text(_ bytes: [UInt8]) -> String {
            if bytes.allSatisfy({ $0 >= 0x20 && $0 < 0x7f }) { return String(decoding: bytes, as: UTF8.self) }
            return "0x" + bytes.map { String($0, radix: 16).leftPadded(2) }.joined()
        }
        let parts = entries.map { entry -> String in
            switch entry.value {
            case .value(let bytes): "\(entry.key)=\(text(bytes))"
            case .list(let items): "\(entry.key)=[\(items.map(text).joined(separator: " "))]"
            case .section(let message): "\(entry.key) {\(message.render())}"
            }
        }
        return parts.joined(separator: " ")
    }
}

extension String {
    func leftPadded(_ width: Int, with pad: Character = "0") -> String {
        count >= width ? self : String(repeating: pad, count: width - count) + self
    }
}
