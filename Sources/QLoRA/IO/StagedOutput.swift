#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import Foundation

/// Outputs that appear complete or not at all: written beside the final path as
/// `<path>.tmp-<pid>` (a folder, or a file whose own write goes through
/// `<path>.tmp-<pid>.partial`, see AtomicFile) and renamed when complete. `export`, `merge`
/// and `quantize --shape` stage their outputs so; adapter directories and checkpoints
/// (`hidden`: `<parent>/.<name>.tmp-<pid>`) go through `Directory`, which also fsyncs.
///
/// A run killed by SIGKILL or a power cut leaves its `.tmp-<pid>` (or the `.old-<pid>` of a
/// folder being replaced) behind; the next run for the same output removes those whose process
/// is gone. One whose pid is alive is another run's (or a recycled pid's) and is left alone.
/// SIGINT/SIGTERM are the CLI's to handle: it removes `path(for:)` and its `.partial` before
/// exiting.
public enum StagedOutput {
    /// Where this process writes `output` before renaming it: `<output>.tmp-<pid>`, or with
    /// `hidden` `<parent>/.<name>.tmp-<pid>`.
    public static func path(for output: String, hidden: Bool = false, pid: Int32 = getpid()) -> String {
        hidden ? stem(of: output, hidden: true) + ".tmp-\(pid)" : output + ".tmp-\(pid)"
    }

    /// The paths this process may have written for `output`, to remove on interruption.
    public static func paths(for output: String) -> [String] {
        let tmp = path(for: output)
        return [tmp, tmp + AtomicFile.partialSuffix]
    }

    /// Removes the `<output>.tmp-<pid>`, `.tmp-<pid>.partial` and `.old-<pid>` siblings (with
    /// `hidden`, the dot-named ones) left by processes that no longer run; returns a line for
    /// each, to tell the user.
    @discardableResult
    public static func removeStale(for output: String, hidden: Bool = false) -> [String] {
        let url = URL(fileURLWithPath: output).standardized
        let dir = url.deletingLastPathComponent().path, stem = (hidden ? "." : "") + url.lastPathComponent
        guard let names = try? FileManager.default.contentsOfDirectory(atPath: dir) else { return [] }
        var removed: [String] = []
        for name in names.sorted() {
            guard let pid = pid(of: name, stem: stem), pid > 0, pid != getpid(), !isRunning(pid) else { continue }
            let stale = (dir as NSString).appendingPathComponent(name)
            if (try? FileManager.default.removeItem(atPath: stale)) != nil {
                removed.append("removed \(stale), left by an interrupted run (process \(pid) is gone)")
            }
        }
        return removed
    }

    /// The pid in `<stem>.tmp-<pid>`, `<stem>.tmp-<pid>.partial` or `<stem>.old-<pid>`; nil for
    /// any other name.
    static func pid(of name: String, stem: String) -> Int32? {
        for marker in [".tmp-", ".old-"] where name.hasPrefix(stem + marker) {
            var digits = Substring(name.dropFirst(stem.count + marker.count))
            if marker == ".tmp-", digits.hasSuffix(AtomicFile.partialSuffix) { digits = digits.dropLast(AtomicFile.partialSuffix.count) }
            return Int32(digits)
        }
        return nil
    }

    /// `output` itself, or with `hidden` `<parent>/.<name>`.
    static func stem(of output: String, hidden: Bool) -> String {
        guard hidden else { return output }
        let parent = (output as NSString).deletingLastPathComponent, name = "." + (output as NSString).lastPathComponent
        return parent.isEmpty ? name : (parent as NSString).appendingPathComponent(name)
    }

    /// Whether a process with this id exists (signal 0 checks without sending; EPERM means it
    /// exists but belongs to another user).
    static func isRunning(_ pid: Int32) -> Bool { kill(pid, 0) == 0 || errno == EPERM }

    /// A folder written whole or not at all, replacing the one at `output`:
    ///
    ///     let staged = try StagedOutput.Directory(for: output)   // stale leftovers removed, `path` created empty
    ///     try AtomicFile.write(to: staged.path + "/a.json", bytes: …)
    ///     try staged.commit()
    ///
    /// `commit` fsyncs every file in `path` and `path` itself, moves an existing `output` aside
    /// to `.old-<pid>`, renames `path` to `output`, fsyncs the parent and removes the old
    /// folder. A kill before the renames leaves `output` as it was; a kill at any moment leaves
    /// at most a `.tmp-<pid>`/`.old-<pid>`, which the next `Directory` for `output` removes.
    public struct Directory {
        public let output: String
        /// Where the folder's files are written: `path(for: output, hidden:)`.
        public let path: String
        /// Where an existing `output` is moved while the new one is renamed in.
        let aside: String

        /// Creates `output`'s parent if needed and an empty staging folder (after removing
        /// this process's earlier one and those of dead processes).
        public init(for output: String, hidden: Bool = false) throws {
            let output = output.count > 1 && output.hasSuffix("/") ? String(output.dropLast()) : output
            self.output = output
            path = StagedOutput.path(for: output, hidden: hidden)
            aside = StagedOutput.stem(of: output, hidden: hidden) + ".old-\(getpid())"
            let fm = FileManager.default
            let parent = (output as NSString).deletingLastPathComponent
            do {
                if !parent.isEmpty { try fm.createDirectory(atPath: parent, withIntermediateDirectories: true) }
                StagedOutput.removeStale(for: output, hidden: hidden)
                try? fm.removeItem(atPath: path)
                try fm.createDirectory(atPath: path, withIntermediateDirectories: false)
            } catch {
                throw FileError.cannotWrite(path: path, reason: "\(error)")
            }
        }

        /// Makes what was written into `path` the folder at `output` (see the type).
        public func commit() throws { try StagedOutput.commit(path, to: output, aside: aside) }

        /// Runs `body` (which writes into `path`), then commits; if either throws, removes the
        /// staging folder before the error goes on, so a failed write (a full disk) leaves
        /// `output` as it was and nothing beside it.
        public func write(_ body: (String) throws -> Void) throws {
            do {
                try body(path)
                try commit()
            } catch {
                try? FileManager.default.removeItem(atPath: path)
                throw error
            }
        }
    }

    /// Makes the staged file or folder `staged` the `output`: fsyncs it (every file of a
    /// folder, then the folder), moves an existing `output` aside to `aside` (default
    /// `.old-<pid>`), renames `staged` in, fsyncs the parent and removes the old one; if the
    /// rename fails, the old one is put back. Exports, checkpoints and adapters all end here.
    public static func commit(_ staged: String, to output: String, aside: String? = nil) throws {
        let fm = FileManager.default
        let aside = aside ?? stem(of: output, hidden: false) + ".old-\(getpid())"
        var isDir: ObjCBool = false
        if fm.fileExists(atPath: staged, isDirectory: &isDir), isDir.boolValue {
            let entries = (fm.enumerator(atPath: staged)?.allObjects as? [String]) ?? []
            for e in entries.sorted() { try sync((staged as NSString).appendingPathComponent(e)) }
        }
        try sync(staged)
        var movedAside = false
        if fm.fileExists(atPath: output) {
            try? fm.removeItem(atPath: aside)
            try move(output, aside)
            movedAside = true
        }
        do {
            try move(staged, output)
        } catch {
            if movedAside { try? move(aside, output) }
            throw error
        }
        let parent = (output as NSString).deletingLastPathComponent
        try sync(parent.isEmpty ? "." : parent)
        if movedAside { try? fm.removeItem(atPath: aside) }
    }

    private static func move(_ from: String, _ to: String) throws {
        guard rename(from, to) == 0 else { throw FileError.cannotWrite(path: to, reason: "rename from \(from): \(String(cString: strerror(errno)))") }
    }

    /// fsync of a file or folder (for a folder: the names created or renamed in it).
    private static func sync(_ path: String) throws {
        let fd = open(path, O_RDONLY)
        guard fd >= 0 else { throw FileError.cannotWrite(path: path, reason: "open for fsync: \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        guard fsync(fd) == 0 else { throw FileError.cannotWrite(path: path, reason: "fsync: \(String(cString: strerror(errno)))") }
    }
}
