import Dispatch
import Foundation
import QLoRA

/// SIGINT (Ctrl-C) and SIGTERM during `export`, `merge` and `quantize --shape`: remove the `OUT.tmp-<pid>` being
/// written (StagedOutput), say so, and exit 130 or 143 (128 + the signal) as a shell expects.
/// The signals are taken from the default action and read on a dispatch queue, so removal
/// runs as ordinary code, not inside a signal handler.
enum InterruptCleanup {
    nonisolated(unsafe) private static var sources: [DispatchSourceSignal] = []

    static func install(removing paths: [String]) {
        for sig in [SIGINT, SIGTERM] {
            signal(sig, SIG_IGN)
            let source = DispatchSource.makeSignalSource(signal: sig, queue: .global())
            source.setEventHandler {
                var removed: [String] = []
                for path in paths where FileManager.default.fileExists(atPath: path) {
                    // The writer may add a file to a folder being removed: try again.
                    for _ in 0..<5 where (try? FileManager.default.removeItem(atPath: path)) == nil { usleep(20_000) }
                    removed.append(path)
                }
                let what = removed.isEmpty ? "nothing written yet" : "removed " + removed.joined(separator: ", ")
                FileHandle.standardError.write(Data("\ninterrupted (\(sig == SIGINT ? "SIGINT" : "SIGTERM")): \(what)\n".utf8))
                exit(128 + sig)
            }
            source.resume()
            sources.append(source)
        }
    }
}
