import Foundation
@testable import QLoRA
import Quant
import XCTest

/// The training loop on the tiny NF4 Llama with synthetic data: the loss falls, and a run
/// stopped (or killed) and resumed repeats an uninterrupted run bit for bit.
final class TrainingRunTests: XCTestCase {
    static var model: DecoderModel { LlamaTrainerTests.tiny }

    /// 24 examples of 6–16 tokens following a simple rule (next = (3·prev + 1) mod 256), so that
    /// there is something to learn; the first two tokens of each are prompt (label −100).
    func data(count: Int, seed: UInt64) -> SFTDataSet {
        var rng = SplitMix64(seed: seed)
        let examples = (0..<count).map { i -> SFTExample in
            let n = 6 + Int(rng.next() % 11)
            var ids = [Int(rng.next() % 256)]
            for _ in 1..<n { ids.append((3 * ids.last! + 1) % 256) }
            var labels = ids
            labels[0] = -100
            labels[1] = -100
            return SFTExample(inputIds: ids, labels: labels, line: i + 1)
        }
        return SFTDataSet(examples: examples, source: "synthetic-\(seed)", padID: 0)
    }

    func config(_ steps: Int) -> TrainingConfig {
        var c = TrainingConfig(model: "tiny-llama-bnb-nf4", data: "synthetic")
        c.loraR = 4
        c.loraAlpha = 8
        c.loraDropout = 0.1
        c.trainNorms = true
        c.lr = 3e-3
        c.batchSize = 3
        c.gradAccum = 2
        c.maxSteps = steps
        c.ema = 0.9
        c.emaEvery = 2
        c.saveEvery = 3
        c.keepLast = 10
        c.plan = false
        c.schedule = .cosine
        c.warmupSteps = 2
        c.seed = 7
        c.speedAlerts = false
        return c
    }

    func temporaryDirectory() throws -> String {
        let d = FileManager.default.temporaryDirectory.appendingPathComponent("qlora-run-\(UUID().uuidString)").path
        addTeardownBlock { try? FileManager.default.removeItem(atPath: d) }
        return d
    }

    func rows(_ dir: String) throws -> [MetricsRow] {
        let text = try String(contentsOfFile: dir + "/" + RunLayout.metricsFile, encoding: .utf8)
        return try text.split(separator: "\n").map { try JSONDecoder().decode(MetricsRow.self, from: Data($0.utf8)) }
    }

    /// What must repeat exactly: every row but timings and RSS.
    func comparable(_ rows: [MetricsRow]) -> [MetricsRow] {
        rows.map { r in
            var r = r
            r.tokensPerS = nil
            r.rssMb = nil
            r.elapsedS = nil
            r.updateS = nil
            return r
        }
    }

    func start(_ dir: String, steps: Int = 10, resume: Bool = false) throws -> TrainingRun {
        try TrainingRun(config: config(steps), directory: dir, model: Self.model, train: data(count: 24, seed: 1),
                        validation: data(count: 6, seed: 2).sortedLongestFirst(), resume: resume) { _ in }
    }

    func testValidationLossFallsAndAdaptersAreWritten() throws {
        let dir = try temporaryDirectory()
        var c = config(30)
        c.ema = 0
        c.lr = 2e-2
        c.loraDropout = 0
        c.evalEvery = 10
        let run = try TrainingRun(config: c, directory: dir, model: Self.model, train: data(count: 24, seed: 1),
                                  validation: data(count: 6, seed: 2), resume: false) { _ in }
        var messages: [String] = []
        XCTAssertTrue(try run.run { if case let .message(m) = $0 { messages.append(m) } })
        XCTAssertTrue(messages.contains("LoRA grads flowing: true"), "\(messages)")
        XCTAssertTrue(messages.contains { $0.hasPrefix("trainable params: ") })
        let evals = try rows(dir).compactMap(\.valLoss)
        let trace = try rows(dir).map { "\($0.step) \($0.kind ?? "") \($0.event ?? "") \($0.loss ?? -1)" }
        XCTAssertEqual(evals.count, 4, "\(trace)")   // baseline, 10, 20, 30
        XCTAssertLessThan(evals.last!, evals.first! - 0.3, "\(evals)")
        for (x, y) in zip(evals, evals.dropFirst()) { XCTAssertLessThan(y, x, "\(evals)") }
        for name in ["lora_best", "lora_final"] {
            let (cfg, norms) = try AdapterFiles.config(in: dir + "/" + name)
            XCTAssertEqual(cfg.rank, 4)
            XCTAssertTrue(norms)
            let j = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: dir + "/" + name + "/adapter_config.json")))
            XCTAssertEqual((j as? [String: Any])?["modules_to_save"] as? [String], ["input_layernorm", "post_attention_layernorm", "model.norm"])
        }
        // lora_final holds the final weights: loaded into a fresh model they give its loss.
        let reloaded = try ModelAdapters(model: Self.model, config: try c.lora, trainNorms: true, seed: 99)
        try AdapterFiles.load(into: reloaded, from: dir + "/lora_final")
        for (a, b) in zip(reloaded.parameters, run.lora.parameters) { XCTAssertEqual(a.values, b.values, a.name) }
    }

    /// "Best" is the better of the EMA's and the live weights at each full evaluation: with a
    /// slow EMA (β = 0.999, no warm-up) the live weights win, lora_best holds them and `best`
    /// says so, after a resume too; with warm-up the EMA moves (its loss falls well below the
    /// baseline within 30 updates, where the fixed β's barely does).
    func testBestIsWhicheverWeightsEvaluateBetter() throws {
        func run(warmup: Bool, _ dir: String, steps: Int, resume: Bool = false) throws -> TrainingRun {
            var c = config(steps)
            c.ema = 0.999
            c.emaEvery = 1
            c.emaWarmup = warmup
            c.lr = 2e-2
            c.loraDropout = 0
            c.evalEvery = 10
            return try TrainingRun(config: c, directory: dir, model: Self.model, train: data(count: 24, seed: 1),
                                   validation: data(count: 6, seed: 2), resume: resume) { _ in }
        }
        let slow = try temporaryDirectory(), warm = try temporaryDirectory()
        let a = try run(warmup: false, slow, steps: 30)
        XCTAssertFalse(try a.run(shouldStop: { a.step >= 20 }) { _ in })
        let resumed = try run(warmup: false, slow, steps: 30, resume: true)
        XCTAssertTrue(try resumed.run { _ in })
        let evals = try rows(slow).filter { $0.valLoss != nil && $0.step > 0 }
        let bestRow = try XCTUnwrap(evals.min { min($0.valLoss!, $0.valLossLive!) < min($1.valLoss!, $1.valLossLive!) })
        XCTAssertLessThan(bestRow.valLossLive!, bestRow.valLoss!, "the fixed-β EMA lags")
        XCTAssertEqual(resumed.bestValLoss, bestRow.valLossLive!)
        XCTAssertEqual(resumed.best?.step, bestRow.step)
        XCTAssertEqual(resumed.best?.live, true)
        XCTAssertEqual(resumed.bestAdapter, slow + "/lora_best")

        let b = try run(warmup: true, warm, steps: 30)
        XCTAssertTrue(try b.run { _ in })
        let slowEMA = evals.map { $0.valLoss! }, warmEMA = try rows(warm).filter { $0.valLoss != nil && $0.step > 0 }.map { $0.valLoss! }
        let baseline = try XCTUnwrap(try rows(warm).first { $0.valLoss != nil && $0.step == 0 }?.valLoss)
        XCTAssertLessThan(warmEMA.last!, baseline - 0.3, "\(warmEMA) from \(baseline)")
        XCTAssertGreaterThan(slowEMA.last!, baseline - 0.15, "\(slowEMA) from \(baseline)")
        XCTAssertEqual(b.bestAdapter, warm + (b.best!.live ? "/lora_best" : "/lora_best_ema"))
    }

    /// The ETA counts the evaluations still due (two passes per full one with an EMA, a quick
    /// one its share of the batches), is there from the second update, and the baseline scores
    /// the EMA and the live weights, still equal, in one pass.
    func testETACountsTheEvaluationsLeft() throws {
        var c = config(30)
        c.evalEvery = 10
        c.quickEvery = 5
        c.quickBatches = 1
        c.evalBatchSize = 2   // 6 validation examples: 3 batches
        let dir = try temporaryDirectory()
        let run = try TrainingRun(config: c, directory: dir, model: Self.model, train: data(count: 24, seed: 1),
                                  validation: data(count: 6, seed: 2), resume: false) { _ in }
        XCTAssertEqual(run.validationPassesLeft, 3 * 2 + 3 * (1.0 / 3), accuracy: 1e-12)   // full at 10, 20, 30; quick at 5, 15, 25
        var etas: [(Int, Double?, Double)] = []
        XCTAssertTrue(try run.run { if case let .update(r, _, left) = $0 { etas.append((r.step, left, run.validationPassesLeft)) } })
        XCTAssertNil(etas[0].1)
        XCTAssertNotNil(etas[1].1)
        XCTAssertEqual(etas.last?.1, 0)
        XCTAssertEqual(etas.first { $0.0 == 12 }?.2 ?? -1, 2 * 2 + 2 * (1.0 / 3), accuracy: 1e-12)
        var noEMA = c
        noEMA.ema = 0
        let other = try TrainingRun(config: noEMA, directory: try temporaryDirectory(), model: Self.model, train: data(count: 24, seed: 1),
                                    validation: data(count: 6, seed: 2), resume: false) { _ in }
        XCTAssertEqual(other.validationPassesLeft, 3 + 1, accuracy: 1e-12)
        let baseline = try XCTUnwrap(try rows(dir).first { $0.valLoss != nil })
        XCTAssertEqual(baseline.step, 0)
        XCTAssertEqual(baseline.valLoss, baseline.valLossLive)
    }

    func testStoppedAndResumedRunRepeatsTheUninterruptedOne() throws {
        let a = try temporaryDirectory(), b = try temporaryDirectory()
        let full = try start(a)
        XCTAssertTrue(try full.run { _ in })

        let first = try start(b)
        XCTAssertFalse(try first.run(shouldStop: { first.step >= 4 }) { _ in })
        XCTAssertEqual(first.step, 4)
        XCTAssertNotNil(Checkpoint.latest(in: b))
        let second = try start(b, resume: true)
        XCTAssertEqual(second.step, 4)
        XCTAssertTrue(try second.run { _ in })

        XCTAssertEqual(comparable(try rows(a)), comparable(try rows(b)))
        for (x, y) in zip(full.lora.parameters, second.lora.parameters) { XCTAssertEqual(x.values, y.values, x.name) }
        for (x, y) in zip(full.ema!.shadows, second.ema!.shadows) { XCTAssertEqual(x.array, y.array) }
        XCTAssertEqual(try rows(a).filter { $0.loss != nil }.count, 10)
        // lora_final_ema holds the EMA shadows of the end, in both runs.
        for dir in [a, b] {
            let reloaded = try ModelAdapters(model: Self.model, config: try config(10).lora, trainNorms: true, seed: 99)
            try AdapterFiles.load(into: reloaded, from: dir + "/lora_final_ema")
            for (p, s) in zip(reloaded.parameters, full.ema!.shadows) { XCTAssertEqual(p.values, s.array, p.name) }
        }
    }

    /// RSS above the memory estimate by its margin is said once, on screen and in metrics.jsonl.
    func testRSSAboveTheEstimateIsSaidOnce() throws {
        let dir = try temporaryDirectory()
        let run = try start(dir, steps: 3)
        run.memoryBudgetBytes = RuntimeMemory.currentRSS() / 4   // far below what the process holds
        var alerts: [String] = []
        XCTAssertTrue(try run.run { if case let .alert(a) = $0 { alerts.append(a) } })
        XCTAssertEqual(alerts.filter { $0.contains("above the memory estimate") }.count, 1, "\(alerts)")
        XCTAssertEqual(try rows(dir).compactMap(\.event).filter { $0.hasPrefix("memory: RSS") }.count, 1)
        let quiet = try start(try temporaryDirectory(), steps: 2)
        quiet.memoryBudgetBytes = 4 * RuntimeMemory.currentRSS()
        var none: [String] = []
        XCTAssertTrue(try quiet.run { if case let .alert(a) = $0 { none.append(a) } })
        XCTAssertEqual(none.filter { $0.contains("memory estimate") }, [])
    }

    /// DoRA (with dropout, EMA, LoRA+ and trained norms) stopped and resumed repeats the
    /// uninterrupted run; its adapters save as DoRA, magnitudes trained, EMA shadows included.
    func testDoRARunResumesExactlyAndSavesItsMagnitudes() throws {
        func doraConfig() -> TrainingConfig {
            var c = config(8)
            c.useDora = true
            c.loraplusLrRatio = 4
            return c
        }
        func start(_ dir: String, resume: Bool) throws -> TrainingRun {
            try TrainingRun(config: doraConfig(), directory: dir, model: Self.model, train: data(count: 24, seed: 1),
                            validation: data(count: 6, seed: 2).sortedLongestFirst(), resume: resume) { _ in }
        }
        let a = try temporaryDirectory(), b = try temporaryDirectory()
        let full = try start(a, resume: false)
        XCTAssertTrue(try full.run { _ in })
        let first = try start(b, resume: false)
        XCTAssertFalse(try first.run(shouldStop: { first.step >= 3 }) { _ in })
        let second = try start(b, resume: true)
        XCTAssertEqual(second.step, 3)
        XCTAssertTrue(try second.run { _ in })
        XCTAssertEqual(comparable(try rows(a)), comparable(try rows(b)))
        let magnitudes = full.lora.parameters.filter { $0.name.hasSuffix(".lora_magnitude_vector") }
        XCTAssertEqual(magnitudes.count, full.lora.adapters.count)
        for (x, y) in zip(full.lora.parameters, second.lora.parameters) { XCTAssertEqual(x.values, y.values, x.name) }
        for (x, y) in zip(full.ema!.shadows, second.ema!.shadows) { XCTAssertEqual(x.array, y.array) }
        // The magnitudes trained: away from ‖W_j‖, where a fresh DoRA adapter starts.
        let fresh = try ModelAdapters(model: Self.model, config: try doraConfig().lora, trainNorms: true, seed: 99)
        let initial = Dictionary(uniqueKeysWithValues: fresh.parameters.map { ($0.name, $0.values) })
        XCTAssertTrue(magnitudes.contains { $0.values != initial[$0.name] }, "no magnitude moved")
        for (name, params) in [("lora_final", full.lora.parameters.map(\.values)), ("lora_final_ema", full.ema!.shadows.map(\.array))] {
            let (cfg, norms) = try AdapterFiles.config(in: a + "/" + name)
            XCTAssertTrue(cfg.useDoRA, name)
            let reloaded = try ModelAdapters(model: Self.model, config: cfg, trainNorms: norms, seed: 99)
            try AdapterFiles.load(into: reloaded, from: a + "/" + name)
            XCTAssertEqual(reloaded.parameters.map(\.values), params, name)
        }
    }

    /// `--compute-dtype auto`: bf16 where the CPU has it and a probe batch's loss holds (the
    /// choice is recorded in config.json, and a stopped run resumes in it, bit for bit); fp32
    /// where the probe's difference is above the bound, or the CPU lacks bf16.
    func testAutoComputeDtypeIsProbedRecordedAndKeptOnResume() throws {
        defer { Self.model.computeDType = .fp32 }
        let probe = TokenBatch(data(count: 4, seed: 5).batches(size: 4)[0])
        let lora = try ModelAdapters(model: Self.model, config: try config(1).lora, trainNorms: true, seed: 3)
        let (strict, why) = try ComputeDTypeChoice.auto.resolved(model: Self.model, lora: lora, probe: probe, tolerance: 0)
        XCTAssertEqual(strict, .fp32, why)
        XCTAssertEqual(Self.model.computeDType, .fp32, "the probe leaves the model's dtype as it found it")
        let (chosen, reason) = try ComputeDTypeChoice.auto.resolved(model: Self.model, lora: lora, probe: probe)
        XCTAssertEqual(chosen, ComputeRuntime.bf16Available ? .bf16 : .fp32, reason)
        if ComputeRuntime.bf16Available { XCTAssertTrue(reason.contains("probe loss"), reason) }

        func start(_ dir: String, resume: Bool) throws -> TrainingRun {
            var c = config(6)
            c.computeDtype = .auto
            return try TrainingRun(config: c, directory: dir, model: Self.model, train: data(count: 24, seed: 1),
                                   validation: data(count: 6, seed: 2).sortedLongestFirst(), resume: resume) { _ in }
        }
        let a = try temporaryDirectory(), b = try temporaryDirectory()
        let full = try start(a, resume: false)
        XCTAssertEqual(full.trainer.computeDType, chosen)
        XCTAssertEqual(try TrainingRun.loadConfig(run: a).computeDtypeInUse, chosen == .bf16 ? .bf16 : .fp32)
        XCTAssertTrue(try full.run { _ in })
        let first = try start(b, resume: false)
        XCTAssertFalse(try first.run(shouldStop: { first.step >= 3 }) { _ in })
        Self.model.computeDType = .fp32  // as a fresh process finds it
        var resumed = try TrainingRun.loadConfig(run: b)
        resumed.computeDtype = .auto
        let second = try TrainingRun(config: resumed, directory: b, model: Self.model, train: data(count: 24, seed: 1),
                                     validation: data(count: 6, seed: 2).sortedLongestFirst(), resume: true) { _ in }
        XCTAssertEqual(second.trainer.computeDType, chosen)
        XCTAssertTrue(try second.run { _ in })
        XCTAssertEqual(comparable(try rows(a)), comparable(try rows(b)))
        for (x, y) in zip(full.lora.parameters, second.lora.parameters) { XCTAssertEqual(x.values, y.values, x.name) }
    }

    /// `--adapter PATH [--ema]` (export, merge): a run's directory means its lora_final, --ema the
    /// _ema sibling; what is missing is refused with what was looked for.
    func testAdapterPathsResolveToARunsDirectories() throws {
        let a = try temporaryDirectory()
        XCTAssertTrue(try start(a).run { _ in })
        XCTAssertEqual(try AdapterFiles.resolve(a, ema: false), a + "/lora_final")
        XCTAssertEqual(try AdapterFiles.resolve(a + "/", ema: true), a + "/lora_final_ema")
        XCTAssertEqual(try AdapterFiles.resolve(a + "/lora_best", ema: false), a + "/lora_best")
        XCTAssertEqual(try AdapterFiles.resolve(a + "/lora_best", ema: true), a + "/lora_best_ema")
        XCTAssertEqual(try AdapterFiles.resolve(a + "/lora_best_ema", ema: true), a + "/lora_best_ema")
        try FileManager.default.removeItem(atPath: a + "/lora_final_ema")
        XCTAssertThrowsError(try AdapterFiles.resolve(a + "/lora_final", ema: true)) {
            XCTAssertTrue("\($0)".contains("lora_final_ema"), "\($0)")
        }
        XCTAssertThrowsError(try AdapterFiles.resolve(a, ema: true)) { XCTAssertTrue("\($0)".contains("--ema"), "\($0)") }
        XCTAssertThrowsError(try AdapterFiles.resolve(a + "/nothing-here", ema: false)) {
            XCTAssertTrue("\($0)".contains("not an adapter directory"), "\($0)")
        }
    }

    /// With a second adapter stacked frozen (`--load-lora-from A --load-lora-from B`): config.json
    /// records it, a run stopped and resumed from that config repeats the uninterrupted one, the
    /// frozen adapter changes the losses but not its own values, and lora_final holds only the
    /// trained adapter.
    func testRunWithAFrozenStackedAdapterResumesExactly() throws {
        let a = try temporaryDirectory(), b = try temporaryDirectory(), plain = try temporaryDirectory()
        var c = config(8)
        c.frozenAdapters = [AdapterSetTests.export]
        func start(_ dir: String, _ c: TrainingConfig, resume: Bool = false) throws -> TrainingRun {
            try TrainingRun(config: c, directory: dir, model: Self.model, train: data(count: 24, seed: 1),
                            validation: data(count: 6, seed: 2).sortedLongestFirst(), resume: resume) { _ in }
        }
        let full = try start(a, c)
        XCTAssertEqual(full.lora.stacked.map(\.name), [AdapterSetTests.export])
        XCTAssertTrue(try full.run { _ in })
        let first = try start(b, c)
        XCTAssertFalse(try first.run(shouldStop: { first.step >= 3 }) { _ in })
        let recorded = try TrainingRun.loadConfig(run: b)
        XCTAssertEqual(recorded.frozenAdapters, [AdapterSetTests.export])
        let second = try start(b, recorded, resume: true)
        XCTAssertTrue(try second.run { _ in })
        XCTAssertEqual(comparable(try rows(a)), comparable(try rows(b)))
        for (x, y) in zip(full.lora.parameters, second.lora.parameters) { XCTAssertEqual(x.values, y.values, x.name) }

        let without = try start(plain, config(8))
        XCTAssertTrue(try without.run { _ in })
        XCTAssertNotEqual(try rows(plain).compactMap(\.loss), try rows(a).compactMap(\.loss))
        let fresh = AdapterSet(base: Self.model)
        let name = try fresh.load(AdapterSetTests.export)
        for (x, y) in zip(try fresh.adapters(name).parameters, full.lora.stacked[0].adapters.parameters) {
            XCTAssertEqual(x.values, y.values, x.name)
        }
        let reloaded = try ModelAdapters(model: Self.model, config: try c.lora, trainNorms: true, seed: 99)
        try AdapterFiles.load(into: reloaded, from: a + "/lora_final")   // refuses any tensor it does not expect
        for (x, y) in zip(reloaded.parameters, full.lora.parameters) { XCTAssertEqual(x.values, y.values, x.name) }
    }

    /// A run killed after update 5, its newest checkpoint at 3 and metrics rows up to 5 on disk
    /// (and a half-written checkpoint beside it): the resume drops rows 4–5, redoes them, and
    /// ends with the uninterrupted run's metrics.
    func testKilledRunResumesFromItsNewestCompleteCheckpoint() throws {
        let a = try temporaryDirectory(), b = try temporaryDirectory()
        let full = try start(a)
        XCTAssertTrue(try full.run { _ in })
        let fm = FileManager.default
        try fm.createDirectory(atPath: b, withIntermediateDirectories: true)
        try fm.copyItem(atPath: a + "/" + RunLayout.configFile, toPath: b + "/" + RunLayout.configFile)
        try fm.copyItem(atPath: a + "/checkpoint-3", toPath: b + "/checkpoint-3")
        // The killed run's metrics: everything up to update 5.
        let killed = try rows(a).filter { $0.step <= 5 }
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        try killed.map { String(decoding: try encoder.encode($0), as: UTF8.self) + "\n" }.joined()
            .write(toFile: b + "/" + RunLayout.metricsFile, atomically: true, encoding: .utf8)
        // A checkpoint-6 torn mid-write (its manifest missing) and a temporary directory.
        try fm.copyItem(atPath: a + "/checkpoint-6", toPath: b + "/checkpoint-6")
        try fm.removeItem(atPath: b + "/checkpoint-6/state.json")
        try fm.createDirectory(atPath: b + "/.checkpoint-7.tmp-1234", withIntermediateDirectories: true)

        let resumed = try start(b, resume: true)
        XCTAssertEqual(resumed.step, 3)
        XCTAssertTrue(try resumed.run { _ in })
        XCTAssertEqual(comparable(try rows(a)), comparable(try rows(b)))
        for (x, y) in zip(full.lora.parameters, resumed.lora.parameters) { XCTAssertEqual(x.values, y.values, x.name) }
    }

    /// A parameter turned NaN after the checkpoint of update 3: update 4's loss is NaN, the
    /// update is skipped, the checkpoint restored, and the run goes on with finite losses.
    func testNonFiniteLossSkipsTheUpdateAndRestoresTheLastCheckpoint() throws {
        let dir = try temporaryDirectory()
        let run = try start(dir, steps: 8)
        var alerts: [String] = []
        XCTAssertTrue(try run.run { e in
            if case let .checkpoint(_, step) = e, step == 3 { run.lora.parameters[0].value.base[0] = .nan }
            if case let .alert(a) = e { alerts.append(a) }
        })
        XCTAssertEqual(alerts.count, 1, "\(alerts)")
        XCTAssertTrue(alerts[0].hasPrefix("update 4: loss nan"), alerts[0])
        let r = try rows(dir)
        XCTAssertEqual(r.filter { $0.event != nil }.map(\.step), [4])
        XCTAssertEqual(r.compactMap(\.loss).count, 7)
        XCTAssertTrue(r.compactMap(\.loss).allSatisfy(\.isFinite))
        XCTAssertTrue(run.lora.parameters.allSatisfy { $0.values.allSatisfy(\.isFinite) })
    }

    /// config.json round-trips, and one written by an older qlora with a key no field reads
    /// any more (`ema_trainable_only`) still loads for --resume.
    func testConfigOfAnOlderRunStillLoads() throws {
        let dir = try temporaryDirectory()
        _ = try start(dir, steps: 3)
        let path = dir + "/" + RunLayout.configFile
        var written = config(3)
        written.computeDtypeInUse = .fp32  // what the run chose, recorded beside what it was asked
        XCTAssertEqual(try TrainingRun.loadConfig(run: dir), written)
        var json = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: path))) as? [String: Any])
        XCTAssertNil(json["ema_trainable_only"])
        json["ema_trainable_only"] = true
        try JSONSerialization.data(withJSONObject: json).write(to: URL(fileURLWithPath: path))
        XCTAssertEqual(try TrainingRun.loadConfig(run: dir), written)
    }

    func testRefusesEmptyOrFullyMaskedDataAndAnExistingRun() throws {
        let dir = try temporaryDirectory()
        let empty = SFTDataSet(examples: [], source: "empty.jsonl", padID: 0)
        XCTAssertThrowsError(try TrainingRun(config: config(2), directory: dir, model: Self.model, train: empty,
                                             validation: data(count: 2, seed: 2), resume: false) { _ in })
        let masked = SFTDataSet(examples: [SFTExample(inputIds: [1, 2, 3], labels: [-100, -100, -100])], source: "m.jsonl", padID: 0)
        XCTAssertThrowsError(try TrainingRun(config: config(2), directory: dir, model: Self.model, train: masked,
                                             validation: data(count: 2, seed: 2), resume: false) { _ in })
        XCTAssertThrowsError(try start(dir, resume: true)) { XCTAssertTrue("\($0)".contains("not a run directory"), "\($0)") }
        XCTAssertTrue(try start(dir, steps: 3).run { _ in })
        XCTAssertThrowsError(try start(dir, steps: 3)) { XCTAssertTrue("\($0)".contains("--resume"), "\($0)") }
    }
}
