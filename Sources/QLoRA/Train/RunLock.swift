#if canImport(Glibc)
import Glibc
#endif
import Foundation

/// One training process per run directory: an advisory lock (flock) on `RUN/.lock`, held while
/// the process lives. The kernel drops it when the holder exits however it exits (kill -9
/// included), so a lock is never stale; the file keeps the holder's pid, host and start time
/// only to name it when another process is refused.
public final class RunLock {
    public static let fileName = ".lock"

    public let path: String
    private let fd: Int32

    private init(path: String, fd: Int32) {
        self.path = path
        self.fd = fd
    }

    deinit { close(fd) }

    /// Locks `directory` (created if needed) for this process, or throws `RunLockError.held`
    /// naming the process that holds it.
    public static func acquire(run directory: String) throws -> RunLock {
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        let path = (directory as NSString).appendingPathComponent(fileName)
        let fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw FileError.cannotOpen(path: path, reason: String(cString: strerror(errno))) }
        guard flock(fd, LOCK_EX | LOCK_NB) == 0 else {
            let code = errno
            close(fd)
            guard code == EWOULDBLOCK else { throw FileError.cannotOpen(path: path, reason: "flock: " + String(cString: strerror(code))) }
            throw RunLockError.held(directory: directory, holder: holder(path))
        }
        var host = [CChar](repeating: 0, count: 256)
        gethostname(&host, host.count)
        let line = "pid \(getpid()) on \(String(cString: host)) since \(ISO8601DateFormatter().string(from: Date()))\n"
        _ = ftruncate(fd, 0)
        _ = line.withCString { pwrite(fd, $0, strlen($0), 0) }
        return RunLock(path: path, fd: fd)
    }

    /// Whether another live process holds `directory`'s lock (throws `held` if so); takes and
    /// drops it otherwise. For checks before a directory is replaced (`--overwrite`).
    public static func check(run directory: String) throws {
        guard FileManager.default.fileExists(atPath: (directory as NSString).appendingPathComponent(fileName)) else { return }
        _ = try acquire(run: directory)
    }

    /// What the lock file says of its holder.
    static func holder(_ path: String) -> String {
        let text = (try? String(contentsOfFile: path, encoding: .utf8))?.trimmingCharacters(in: .whitespacesAndNewlines) ?? ""
        return text.isEmpty ? "another process" : text
    }
}

public enum RunLockError: Error, Equatable, CustomStringConvertible {
    case held(directory: String, holder: String)

    public var description: String {
        switch self {
        case let .held(directory, holder):
            "\(directory) is in use by a training process (\(holder)): two runs in one folder would overwrite each other's checkpoints"
                + "\n---> HINT: wait for it, stop it (touch \(directory)/\(RunLayout.stopFile) stops it after the current update with a checkpoint), "
                + "or pick another --out"
        }
    }
}
