import Foundation
import QLoRA
import XCTest

final class CheckpointTests: XCTestCase {
    struct DataCursor: Codable, Equatable {
        var epoch: Int
        var offset: Int
        var order: [Int]
    }

    /// A small run: two parameters, AdamW with a few updates done, an EMA.
    final class Run {
        let params: [Parameter]
        let optimizer: AdamW
        let ema: EMA
        var rng: SplitMix64

        init(seed: UInt64) {
            rng = SplitMix64(seed: seed)
            params = [Parameter(name: "model.layers.0.self_attn.q_proj.lora_A.weight", shape: [4, 16]),
                      Parameter(name: "model.layers.0.self_attn.q_proj.lora_B.weight", shape: [16, 4])]
            for p in params { for i in 0..<p.count { p.value.base[i] = Float(rng.nextUnitDouble() - 0.5) } }
            optimizer = AdamW(parameters: params, .init(beta1: 0.9, beta2: 0.95, weightDecay: 0.1))
            ema = EMA(parameters: params, beta: 0.99, every: 2)
        }

        func train(_ updates: Int) {
            for _ in 0..<updates {
                for p in params { for i in 0..<p.count { p.grad.base[i] = Float(rng.nextUnitDouble() - 0.5) } }
                optimizer.update(lr: 1e-3)
                if ema.isDue(afterUpdate: optimizer.step) { ema.update() }
            }
        }

        func state() throws -> TrainingState {
            try TrainingState(step: optimizer.step, schedulerStep: optimizer.step, rngStates: ["data": rng.state, "max": .max],
                              dataState: DataCursor(epoch: 1, offset: optimizer.step * 8, order: [3, 1, 2]))
        }

        /// Every float of parameters, moments and shadows, as bits.
        var bits: [[UInt32]] {
            params.map { $0.values.map(\.bitPattern) } + optimizer.expAvg.map { $0.array.map(\.bitPattern) }
                + optimizer.expAvgSq.map { $0.array.map(\.bitPattern) } + ema.shadows.map { $0.array.map(\.bitPattern) }
        }
    }

    func testCRC32() {
        XCTAssertEqual(CRC32.checksum(Array("123456789".utf8)), 0xCBF4_3926)
        XCTAssertEqual(CRC32.checksum([]), 0)
    }

    /// Save, restore into a fresh run: everything bit for bit, and training continues identically.
    func testRoundTripIsExact() throws {
        let dir = TempDir()
        let a = Run(seed: 1)
        a.train(5)
        let path = try Checkpoint.save(try a.state(), optimizer: a.optimizer, ema: a.ema, in: dir.path, keepLast: 3)
        XCTAssertEqual((path as NSString).lastPathComponent, "checkpoint-5")
        XCTAssertEqual(Set(try FileManager.default.contentsOfDirectory(atPath: path)),
                       ["parameters.safetensors", "optimizer.safetensors", "ema.safetensors", "data-state.json", "state.json"])

        let b = Run(seed: 2)
        XCTAssertEqual(Checkpoint.latest(in: dir.path), path)
        let state = try Checkpoint.restore(from: path, optimizer: b.optimizer, ema: b.ema)
        XCTAssertEqual(b.bits, a.bits)
        XCTAssertEqual(b.optimizer.step, 5)
        XCTAssertEqual(state, try a.state())
        XCTAssertEqual(state.rngStates["max"], .max)
        XCTAssertEqual(try state.decodeDataState(DataCursor.self), DataCursor(epoch: 1, offset: 40, order: [3, 1, 2]))

        b.rng = SplitMix64(seed: state.rngStates["data"]!)
        a.train(3)
        b.train(3)
        XCTAssertEqual(b.bits, a.bits)
    }

    /// Checkpoints beyond keepLast are deleted, oldest first; saving the same step twice replaces it.
    func testKeepLastPrunes() throws {
        let dir = TempDir()
        let run = Run(seed: 3)
        for _ in 0..<4 {
            run.train(2)
            try Checkpoint.save(try run.state(), optimizer: run.optimizer, ema: run.ema, in: dir.path, keepLast: 2)
        }
        XCTAssertEqual(Checkpoint.checkpoints(in: dir.path).map(\.step), [8, 6])
        try Checkpoint.save(try run.state(), optimizer: run.optimizer, ema: nil, in: dir.path, keepLast: 2)
        XCTAssertEqual(Checkpoint.checkpoints(in: dir.path).map(\.step), [8, 6])
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: dir.path).sorted(), ["checkpoint-6", "checkpoint-8"])
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir.path + "/checkpoint-8/ema.safetensors"))
    }

    /// What a kill leaves behind: a temporary directory, a truncated or altered file, a missing
    /// state.json. Each falls back to the previous checkpoint, which restores exactly.
    func testTornWritesFallBackToPreviousCheckpoint() throws {
        let dir = TempDir()
        let run = Run(seed: 4)
        run.train(3)
        let good = try Checkpoint.save(try run.state(), optimizer: run.optimizer, ema: run.ema, in: dir.path, keepLast: 5)
        let goodBits = run.bits
        run.train(3)
        let newer = try Checkpoint.save(try run.state(), optimizer: run.optimizer, ema: run.ema, in: dir.path, keepLast: 5)
        let fm = FileManager.default

        // A save killed before its rename: a dot-named temporary directory, ignored. (A pid above
        // the kernel's pid_max, at most 2²², names no process.)
        let killed = dir.path + "/.checkpoint-9.tmp-\(1 << 23)"
        try fm.createDirectory(atPath: killed, withIntermediateDirectories: false)
        _ = fm.createFile(atPath: killed + "/parameters.safetensors", contents: Data([1, 2, 3]))
        XCTAssertEqual(Checkpoint.latest(in: dir.path), newer)

        // A truncated tensor file inside the newest checkpoint.
        let params = newer + "/parameters.safetensors"
        let original = try Data(contentsOf: URL(fileURLWithPath: params))
        try original.prefix(original.count - 7).write(to: URL(fileURLWithPath: params))
        XCTAssertEqual(Checkpoint.latest(in: dir.path), good)
        XCTAssertThrowsError(try Checkpoint.restore(from: newer, optimizer: Run(seed: 9).optimizer, ema: nil)) { error in
            guard case CheckpointError.incomplete = error else { return XCTFail("\(error)") }
        }

        // Same size, one bit flipped: only the CRC-32 sees it.
        var flipped = original
        flipped[flipped.count - 3] ^= 0x10
        try flipped.write(to: URL(fileURLWithPath: params))
        XCTAssertEqual(Checkpoint.latest(in: dir.path), good)
        // What a resume from it says it skipped: the newer checkpoint, the file and its CRC-32.
        let skipped = Checkpoint.damaged(in: dir.path, newerThan: good)
        XCTAssertEqual(skipped.map(\.path), [newer])
        XCTAssertTrue(skipped.first.map { $0.reason.contains("parameters.safetensors has CRC-32") } ?? false, "\(skipped)")
        XCTAssertEqual(Checkpoint.damaged(in: dir.path, newerThan: newer).count, 0)

        // Intact files but no state.json: the manifest is the last thing a save writes.
        try original.write(to: URL(fileURLWithPath: params))
        XCTAssertEqual(Checkpoint.latest(in: dir.path), newer)
        try fm.removeItem(atPath: newer + "/state.json")
        XCTAssertEqual(Checkpoint.latest(in: dir.path), good)

        let fresh = Run(seed: 5)
        _ = try Checkpoint.restore(from: try XCTUnwrap(Checkpoint.latest(in: dir.path)), optimizer: fresh.optimizer, ema: fresh.ema)
        XCTAssertEqual(fresh.bits, goodBits)
        XCTAssertEqual(fresh.optimizer.step, 3)

        // The next save clears the leftovers of gone processes and the broken checkpoint (not
        // among the newest complete); a live process's (pid 1) is another trainer's, left alone.
        let live = dir.path + "/.checkpoint-9.old-1"
        try fm.createDirectory(atPath: live, withIntermediateDirectories: false)
        try fm.createDirectory(atPath: dir.path + "/.checkpoint-12.old-\(1 << 23)", withIntermediateDirectories: false)
        run.train(1)
        try Checkpoint.save(try run.state(), optimizer: run.optimizer, ema: run.ema, in: dir.path, keepLast: 2)
        XCTAssertEqual(try fm.contentsOfDirectory(atPath: dir.path).sorted(), [".checkpoint-9.old-1", "checkpoint-3", "checkpoint-7"])
    }

    /// A checkpoint of other parameters is refused before anything is overwritten.
    func testRestoreRefusesOtherParameters() throws {
        let dir = TempDir()
        let run = Run(seed: 6)
        run.train(1)
        let path = try Checkpoint.save(try run.state(), optimizer: run.optimizer, ema: nil, in: dir.path, keepLast: 1)
        let other = Parameter(name: "model.layers.0.self_attn.q_proj.lora_A.weight", shape: [8, 16])
        let before = other.values
        let opt = AdamW(parameters: [other])
        XCTAssertThrowsError(try Checkpoint.restore(from: path, optimizer: opt, ema: nil)) { error in
            XCTAssertTrue(error is CheckpointError, "\(error)")
        }
        XCTAssertEqual(other.values, before)
        XCTAssertEqual(opt.step, 0)
        let withEMA = Run(seed: 7)
        XCTAssertThrowsError(try Checkpoint.restore(from: path, optimizer: withEMA.optimizer, ema: withEMA.ema))
    }
}
