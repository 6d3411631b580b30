import Foundation
@testable import QLoRA
import XCTest

/// Folders written whole through `<out>.tmp-<pid>` (StagedOutput.Directory).
final class StagedDirectoryTests: XCTestCase {
    /// A pid above the kernel's pid_max (at most 2²²) names no process.
    let dead: Int32 = 1 << 23

    func testCommitReplacesTheFolderAndLeavesNothingBeside() throws {
        let dir = TempDir()
        let out = dir.path + "/runs/a/lora_final"
        for text in ["first", "second"] {
            let staged = try StagedOutput.Directory(for: out)
            XCTAssertEqual(staged.path, out + ".tmp-\(getpid())")
            try AtomicFile.write(to: staged.path + "/w.txt", bytes: Array(text.utf8))
            try staged.commit()
            XCTAssertEqual(try String(contentsOfFile: out + "/w.txt", encoding: .utf8), text)
            XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: dir.path + "/runs/a"), ["lora_final"])
        }
    }

    /// Leftovers of dead processes for the same output go (`.tmp-`, `.tmp-….partial`, `.old-`);
    /// a live process's, another output's and the hidden ones of a plain output stay.
    func testStagingRemovesWhatDeadProcessesLeft() throws {
        let dir = TempDir()
        let fm = FileManager.default
        for name in ["lora_best.tmp-\(dead)", "lora_best.old-\(dead + 1)", "lora_best.tmp-1", "lora_best_ema.tmp-\(dead)",
                     ".lora_best.tmp-\(dead)"] {
            try fm.createDirectory(atPath: dir.path + "/" + name, withIntermediateDirectories: false)
        }
        dir.write("lora_best.tmp-\(dead + 2).partial", "half a file")
        try StagedOutput.Directory(for: dir.path + "/lora_best").commit()
        XCTAssertEqual(Set(try fm.contentsOfDirectory(atPath: dir.path)),
                       ["lora_best", "lora_best.tmp-1", "lora_best_ema.tmp-\(dead)", ".lora_best.tmp-\(dead)"])
    }

    func testHiddenStagingIsDotNamed() throws {
        let dir = TempDir()
        try FileManager.default.createDirectory(atPath: dir.path + "/.checkpoint-3.tmp-\(dead)", withIntermediateDirectories: false)
        let staged = try StagedOutput.Directory(for: dir.path + "/checkpoint-3", hidden: true)
        XCTAssertEqual(staged.path, dir.path + "/.checkpoint-3.tmp-\(getpid())")
        XCTAssertEqual(Set(try FileManager.default.contentsOfDirectory(atPath: dir.path)), [".checkpoint-3.tmp-\(getpid())"])
        try staged.commit()
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: dir.path), ["checkpoint-3"])
    }
}
