import Foundation
@testable import QLoRA
import XCTest

/// `qlora train --config FILE`: the file's keys become the flags they name, before the command
/// line's, and a flag given on the command line leaves the file's value out.
final class TrainConfigFileTests: XCTestCase {
    func file(_ text: String) throws -> String {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("qlora-config-\(UUID().uuidString).yaml").path
        try text.write(toFile: path, atomically: true, encoding: .utf8)
        addTeardownBlock { try? FileManager.default.removeItem(atPath: path) }
        return path
    }

    func testKeysBecomeFlagsAndTheCommandLineOverrides() throws {
        let path = try file("""
            # settings of a run
            model: models/x.gguf
            data: [a.jsonl, "b c.jsonl"]
            lora_r: 32
            lr: 1e-4
            plan: false
            packing: true
            skip_bad: false
            ema_warmup: false
            eval_every:
            frozen_adapters: [runs/f1]
            load_lora_from: runs/a
            out: runs/y
            """)
        let commandLine = ["--config", path, "--lr", "3e-4", "--plan"]
        let expanded = try TrainConfigFile.expand(["train"] + commandLine)
        XCTAssertEqual(expanded.first, "train")
        XCTAssertEqual(Array(expanded.suffix(commandLine.count)), commandLine)
        let fileFlags = Array(expanded.dropFirst().dropLast(commandLine.count))
        // each key as its flag, in the file's order (frozen adapters last); lr and plan are the command line's
        XCTAssertEqual(fileFlags, ["--model", "models/x.gguf", "--data", "a.jsonl", "--data", "b c.jsonl", "--lora-r", "32", "--packing",
                                   "--no-ema-warmup", "--load-lora-from", "runs/a", "--out", "runs/y", "--load-lora-from", "runs/f1"])
        XCTAssertFalse(fileFlags.contains("--no-plan"))
        XCTAssertFalse(fileFlags.contains("--eval-every"), "a null value leaves the default")
        // other commands and train without --config pass through
        XCTAssertEqual(try TrainConfigFile.expand(["generate", "--config", path]), ["generate", "--config", path])
        XCTAssertEqual(try TrainConfigFile.expand(["train", "--lr", "1"]), ["train", "--lr", "1"])
        // --config=FILE, and --no-plan on the command line also overrides plan
        let other = try TrainConfigFile.expand(["train", "--config=\(path)", "--no-plan"])
        XCTAssertFalse(other.contains("--plan"))
        XCTAssertEqual(other.filter { $0 == "--no-plan" }.count, 1)
    }

    func testBadFilesAreErrorsNamingTheLine() throws {
        func problem(_ text: String) throws -> String {
            let path = try file(text)
            do {
                _ = try TrainConfigFile.flags(path: path)
                return "no error"
            } catch let e as TrainConfigFile.Problem {
                return e.description.replacingOccurrences(of: path, with: "FILE")
            }
        }
        XCTAssertTrue(try problem("lr: 1e-4\nlora_rnk: 8\n").hasPrefix("FILE:2: unknown key 'lora_rnk'"))
        XCTAssertTrue(try problem("lr: 1e-4\ncompute_dtype_in_use: bf16\n").hasPrefix("FILE:2: 'compute_dtype_in_use' is what a run records"))
        XCTAssertTrue(try problem("packing: maybe\n").hasPrefix("FILE:1: 'packing' must be true or false"))
        XCTAssertTrue(try problem("lora_targets: {q: 1}\n").hasPrefix("FILE:1: 'lora_targets' must be a value or a list of values, not a mapping"))
        XCTAssertTrue(try problem("- a\n- b\n").hasPrefix("FILE:1: the file must be a mapping"))
        XCTAssertTrue(try problem("lr: [1\n").hasPrefix("FILE: not valid YAML"))
        XCTAssertEqual(try problem(""), "no error")
        XCTAssertThrowsError(try TrainConfigFile.flags(path: "/nonexistent/run.yaml"))
    }

    /// What --print-config writes, read back as a --config file, gives the same flags for every key.
    func testPrintedConfigReadsBack() throws {
        var c = TrainingConfig(model: "m.gguf", data: DataSources(["a.jsonl", "b.jsonl"]))
        c.loraR = 8
        c.plan = false
        c.emaWarmup = true
        c.evalEvery = 7
        c.computeDtypeInUse = .bf16
        let text = try TrainConfigFile.yaml(c, out: "runs/z")
        XCTAssertFalse(text.contains("compute_dtype_in_use"))
        let flags = try TrainConfigFile.flags(path: try file(text))
        func value(_ flag: String) -> [String] { flags.indices.filter { flags[$0] == flag }.map { flags[$0 + 1] } }
        XCTAssertEqual(value("--data"), ["a.jsonl", "b.jsonl"])
        XCTAssertEqual(value("--lora-r"), ["8"])
        XCTAssertEqual(value("--eval-every"), ["7"])
        XCTAssertEqual(value("--out"), ["runs/z"])
        XCTAssertTrue(flags.contains("--no-plan"))
        XCTAssertTrue(flags.contains("--ema-warmup"))
        // every config.json key but the recorded one is a key a file may hold
        let encoder = JSONEncoder()
        encoder.keyEncodingStrategy = .convertToSnakeCase
        let keys = try XCTUnwrap(try JSONSerialization.jsonObject(with: try encoder.encode(c)) as? [String: Any]).keys
        XCTAssertEqual(Set(keys).subtracting(TrainConfigFile.fields.keys), [])
    }
}
