import Foundation
@testable import QLoRA
import XCTest

/// Writes that hit a full disk or a failing device: on a real size-limited tmpfs (mounted by the
/// test; skipped where mounting is not allowed) and through AtomicFile's fault injection.
final class FullDiskTests: XCTestCase {
    /// A tmpfs of `kilobytes` mounted on a fresh folder, unmounted at the end of the test.
    func smallFileSystem(kilobytes: Int) throws -> String {
        guard getuid() == 0 else { throw XCTSkip("mounting a small tmpfs needs root") }
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("qlora-full-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        let mount = Process()
        mount.executableURL = URL(fileURLWithPath: "/bin/mount")
        mount.arguments = ["-t", "tmpfs", "-o", "size=\(kilobytes)k", "tmpfs", dir]
        mount.standardError = FileHandle.nullDevice
        try mount.run()
        mount.waitUntilExit()
        guard mount.terminationStatus == 0 else { throw XCTSkip("cannot mount a tmpfs here (mount exited \(mount.terminationStatus))") }
        addTeardownBlock {
            let umount = Process()
            umount.executableURL = URL(fileURLWithPath: "/bin/umount")
            umount.arguments = [dir]
            try? umount.run()
            umount.waitUntilExit()
            try? FileManager.default.removeItem(atPath: dir)
        }
        return dir
    }

    /// Fills the file system holding `dir` but for about `leave` bytes.
    func fill(_ dir: String, leaving leave: Int) throws -> String {
        let filler = dir + "/filler"
        let free = try XCTUnwrap(AtomicFile.freeBytes(near: filler))
        FileManager.default.createFile(atPath: filler, contents: Data(count: max(free - leave, 0)))
        return filler
    }

    func adapters() throws -> (ModelAdapters, AdamW) {
        let lora = try ModelAdapters(model: LlamaTrainerTests.tiny, config: LoRAConfig(rank: 8, alpha: 16), seed: 1)
        return (lora, AdamW(parameters: lora.parameters))
    }

    /// A checkpoint that does not fit: the error names the file and the bytes, the earlier
    /// checkpoint stays the newest and whole, nothing is left beside it, and once space is back
    /// the next one is written.
    func testCheckpointOnAFullDiskFailsCleanlyAndTheEarlierOneStays() throws {
        let dir = try smallFileSystem(kilobytes: 2048)
        let (lora, optimizer) = try adapters()
        let run = dir + "/run"
        try Checkpoint.save(TrainingState(step: 1, schedulerStep: 1), optimizer: optimizer, ema: nil, in: run, keepLast: 3)
        let size = try FileManager.default.contentsOfDirectory(atPath: run + "/checkpoint-1").reduce(0) {
            $0 + ((try FileManager.default.attributesOfItem(atPath: run + "/checkpoint-1/" + $1)[.size] as? Int) ?? 0)
        }
        let filler = try fill(dir, leaving: size / 3)
        lora.parameters[0].value.base[0] += 1
        XCTAssertThrowsError(try Checkpoint.save(TrainingState(step: 2, schedulerStep: 2), optimizer: optimizer, ema: nil, in: run, keepLast: 3)) { e in
            guard case let .noSpace(path, written, needed, available)? = e as? FileError else { return XCTFail("\(e)") }
            XCTAssertTrue(path.hasPrefix(run + "/.checkpoint-2.tmp-"), path)
            XCTAssertGreaterThan(needed ?? 0, written)
            XCTAssertNotNil(available)
            XCTAssertTrue("\(e)".contains("no space left on device") && "\(e)".contains(path), "\(e)")
        }
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: run).sorted(), ["checkpoint-1"], "nothing half-written is left")
        XCTAssertEqual(Checkpoint.latest(in: run), run + "/checkpoint-1")
        let (_, fresh) = try adapters()
        XCTAssertEqual(try Checkpoint.restore(from: run + "/checkpoint-1", optimizer: fresh, ema: nil).step, 1)
        try FileManager.default.removeItem(atPath: filler)
        try Checkpoint.save(TrainingState(step: 2, schedulerStep: 2), optimizer: optimizer, ema: nil, in: run, keepLast: 3)
        XCTAssertEqual(Checkpoint.latest(in: run), run + "/checkpoint-2")
    }

    /// An adapter save that does not fit leaves the adapter folder it would replace as it was.
    func testAdapterSaveOnAFullDiskLeavesTheOldAdapter() throws {
        let dir = try smallFileSystem(kilobytes: 1024)
        let (lora, _) = try adapters()
        try AdapterFiles.save(lora, to: dir + "/lora_best", baseModel: "tiny")
        let before = try Data(contentsOf: URL(fileURLWithPath: dir + "/lora_best/" + AdapterFiles.weightsFile))
        _ = try fill(dir, leaving: before.count / 2)
        lora.parameters[0].value.base[0] += 1
        XCTAssertThrowsError(try AdapterFiles.save(lora, to: dir + "/lora_best", baseModel: "tiny")) { e in
            guard case .noSpace? = e as? FileError else { return XCTFail("\(e)") }
        }
        XCTAssertEqual(try Data(contentsOf: URL(fileURLWithPath: dir + "/lora_best/" + AdapterFiles.weightsFile)), before)
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: dir).sorted(), ["filler", "lora_best"])
    }

    /// An fp32 export larger than the disk: the error names the file being written, and no
    /// staging folder or partial file is left.
    func testExportOnAFullDiskLeavesNothing() throws {
        let dir = try smallFileSystem(kilobytes: 384)
        let model = LlamaTrainerTests.fixtures.appendingPathComponent("tiny-llama-bnb-nf4").path
        XCTAssertThrowsError(try MergedExport.run(model: model, output: dir + "/merged") { _ in }) { e in
            guard case let .noSpace(path, _, needed, _)? = e as? FileError else { return XCTFail("\(e)") }
            XCTAssertTrue(path.hasPrefix(dir + "/merged.tmp-"), path)
            XCTAssertNotNil(needed)
        }
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: dir), [])
        // The same as one GGUF file.
        XCTAssertThrowsError(try GGUFExport.run(model: model, output: dir + "/merged.gguf", type: .f32) { _ in }) { e in
            guard case .noSpace? = e as? FileError else { return XCTFail("\(e)") }
        }
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: dir), [])
    }

    /// `qlora quantize` into a folder on a disk too small: nothing is left that could pass for a
    /// quantized model, and an earlier output of the same name stays as it was.
    func testQuantizeOnAFullDiskLeavesNoHalfFolder() throws {
        let dir = try smallFileSystem(kilobytes: 160)
        let source = LlamaTrainerTests.fixtures.appendingPathComponent("tiny-llama").path
        XCTAssertThrowsError(try Quantizer.run(source: source, output: dir + "/nf4", options: .init(format: .nf4)) { _ in }) { e in
            guard case .noSpace? = e as? FileError else { return XCTFail("\(e)") }
        }
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: dir), [])
    }

    /// EIO (a failing device) at fsync, which no mount here can produce: the same clean failure.
    func testDeviceErrorAtSyncNamesThePathAndLeavesNothing() throws {
        let dir = TempDir()
        let (_, optimizer) = try adapters()
        AtomicFile.faultInjection = { $0.hasSuffix("optimizer.safetensors") ? EIO : nil }
        defer { AtomicFile.faultInjection = nil }
        XCTAssertThrowsError(try Checkpoint.save(TrainingState(step: 1, schedulerStep: 1), optimizer: optimizer, ema: nil, in: dir.path, keepLast: 2)) { e in
            guard case let .cannotWrite(path, reason)? = e as? FileError else { return XCTFail("\(e)") }
            XCTAssertTrue(path.hasSuffix("optimizer.safetensors") && reason.contains("EIO"), "\(e)")
        }
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: dir.path), [])
        AtomicFile.faultInjection = nil
        try Checkpoint.save(TrainingState(step: 1, schedulerStep: 1), optimizer: optimizer, ema: nil, in: dir.path, keepLast: 2)
        XCTAssertNotNil(Checkpoint.latest(in: dir.path))
    }
}
