import Foundation

/// Where a first contact's CPU goes: the time on CPU of each charon and of this process (which runs ours' engines),
/// read from `/proc/PID/stat` around each timed repetition.
///
/// The samples are taken outside the timed window, so they do not lengthen it. The kernel accounts this time in clock
/// ticks (10 ms), so one repetition's figure is a multiple of the tick; the mean over the repetitions is what is
/// reported, and it is only as good as the number of repetitions.
struct ProcessCPU {
    /// The processes followed, by label.
    let processes: [(label: String, pid: pid_t)]
    private var totals: [String: Double] = [:]
    private var repetitions = 0

    init(_ processes: [(label: String, pid: pid_t)]) {
        self.processes = processes
    }

    /// Nanoseconds on CPU of `pid`, user and system, its exited threads included (`/proc/PID/stat` fields 14 and
    /// 15, in clock ticks); 0 when it is gone.
    static func nanoseconds(_ pid: pid_t) -> Double {
        guard let text = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
            let close = text.lastIndex(of: ")")
        else { return 0 }
        // Fields after the command name (which may hold spaces): state is field 3, utime 14, stime 15.
        let fields = text[text.index(after: close)...].split(separator: " ")
        guard fields.count > 12, let user = Double(fields[11]), let system = Double(fields[12]) else { return 0 }
        return (user + system) * 1e9 / Double(sysconf(Int32(_SC_CLK_TCK)))
    }

    /// The processes' counters now.
    func sample() -> [Double] { processes.map { Self.nanoseconds($0.pid) } }

    /// Adds one repetition: the counters from `start` to now.
    mutating func add(since start: [Double]) {
        for (process, (before, after)) in zip(processes, zip(start, sample())) {
            totals[process.label, default: 0] += after - before
        }
        repetitions += 1
    }

    /// `label a ms, label b ms, …` (mean per repetition), or nil before the first repetition.
    var summary: String? {
        guard repetitions > 0 else { return nil }
        return processes.map { "\($0.label) \(format(totals[$0.label, default: 0] / 1e6 / Double(repetitions)))" }
            .joined(separator: ", ")
    }
}
