import Glibc

/// A folder's entries, read with `readdir` (no Foundation, no sorting).
public enum Directory {
    /// The names in `path` without `.` and `..`; empty when it cannot be opened. Bounded by the folder's size.
    public static func names(in path: String) -> [String] {
        guard let folder = opendir(path) else { return [] }
        defer { closedir(folder) }
        var names: [String] = []
        while let entry = readdir(folder) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) {
                String(decoding: $0.prefix(while: { $0 != 0 }), as: UTF8.self)
            }
            if name != "." && name != ".." { names.append(name) }
        }
        return names
    }
}
