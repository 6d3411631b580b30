import Foundation

/// Outputs that appear complete or not at all: `export` and `merge` write beside the final
/// path as `<path>.tmp-<pid>` (a folder, or a file whose own write goes through
/// `<path>.tmp-<pid>.partial`, see AtomicFile) and rename it when complete.
///
/// A run killed by SIGKILL or a power cut leaves its `.tmp-<pid>` behind; the next run for the
/// same output removes those whose process is gone. One whose pid is alive is another run's
/// (or a recycled pid's) and is left alone. SIGINT/SIGTERM are the CLI's to handle: it removes
/// `path(for:)` and its `.partial` before exiting.
public enum StagedOutput {
    /// Where this process writes `output` before renaming it.
    public static func path(for output: String, pid: Int32 = getpid()) -> String { output + ".tmp-\(pid)" }

    /// The paths this process may have written for `output`, to remove on interruption.
    public static func paths(for output: String) -> [String] {
        let tmp = path(for: output)
        return [tmp, tmp + AtomicFile.partialSuffix]
    }

    /// Removes `<output>.tmp-<pid>` (and `.partial`) siblings left by processes that no longer
    /// run; returns a line for each, to tell the user.
    @discardableResult
    public static func removeStale(for output: String) -> [String] {
        let url = URL(fileURLWithPath: output).standardized
        let dir = url.deletingLastPathComponent().path, prefix = url.lastPathComponent + ".tmp-"
        guard let names = try? FileManager.default.contentsOfDirectory(atPath: dir) else { return [] }
        var removed: [String] = []
        for name in names.sorted() where name.hasPrefix(prefix) {
            var digits = Substring(name.dropFirst(prefix.count))
            if digits.hasSuffix(AtomicFile.partialSuffix) { digits = digits.dropLast(AtomicFile.partialSuffix.count) }
            guard let pid = Int32(digits), pid > 0, pid != getpid(), !isRunning(pid) else { continue }
            let stale = (dir as NSString).appendingPathComponent(name)
            if (try? FileManager.default.removeItem(atPath: stale)) != nil {
                removed.append("removed \(stale), left by an interrupted run (process \(pid) is gone)")
            }
        }
        return removed
    }

    /// Whether a process with this id exists (signal 0 checks without sending; EPERM means it
    /// exists but belongs to another user).
    static func isRunning(_ pid: Int32) -> Bool { kill(pid, 0) == 0 || errno == EPERM }
}
