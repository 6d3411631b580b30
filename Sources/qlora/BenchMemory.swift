import ArgumentParser
import Foundation
import MemoryBench
import QLoRA
import TrainBench

struct MemorySweep: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "memory",
        abstract: "Peak RSS against LoRA rank over a grid of shapes, lengths and checkpointing, beside the estimate.",
        discussion: """
            Each configuration runs --warmup + --steps real training steps (batch --batch, random \
            tokens) in a fresh child process (qlora bench train --json), so its peak RSS is its own, \
            and compares it with qlora estimate's total. Writes memory.csv, memory.json and \
            memory.svg (the chart: solid measured, dashed estimate) into --out, and a table.

            Examples:
              qlora bench memory                                          # SmolLM2, ranks 4…128
              qlora bench memory --shapes llama-7b --ranks 8,64 --lengths 512 --batch 1 --checkpointing on
            """
    )

    @Option(help: "Models: 'model' (the --model file), synthetic shapes (\(SyntheticShape.allCases.map(\.rawValue).joined(separator: ", "))) and/or paths of model files or folders (another family each), comma-separated.")
    var shapes = "model"
    @Option(help: "The model file 'model' stands for.") var model = "models/SmolLM2-135M-Instruct.Q4_1.gguf"
    @Option(help: "Blocks of the synthetic shapes to keep (default: all).") var layers: Int?
    @Option(help: "LoRA ranks, comma-separated.") var ranks = "4,8,16,32,64,128"
    @Option(help: "Sequence lengths, comma-separated.") var lengths = "256"
    @Option(help: "Gradient checkpointing: on, off or both.") var checkpointing = "both"
    @Option(help: "Sequences per step.") var batch = 4
    @Option(help: "Timed steps per configuration.") var steps = 1
    @Option(help: "Untimed steps first.") var warmup = 1
    @Option(help: "Directory for memory.csv, memory.json and memory.svg.") var out = "runs/bench-memory"
    @Option(help: "Adapter kinds, comma-separated: lora, dora (PEFT's use_dora).") var adapters = "lora"
    @Option(help: "Objectives, comma-separated: sft, reward, dpo, orpo, simpo (a preference step's --batch rows are --batch/2 pairs).")
    var objectives = "sft"
    @Option(help: "The optimizer of every step, as qlora train takes it: adamw or adamw_8bit.") var optim = AdamW.Kind.adamw

    func validate() throws {
        guard batch > 0, steps > 0, warmup >= 0 else { throw ValidationError("--batch and --steps must be positive, --warmup ≥ 0") }
    }

    func ints(_ s: String, _ flag: String) throws -> [Int] {
        try s.split(separator: ",").map {
            guard let v = Int($0.trimmingCharacters(in: .whitespaces)), v > 0 else { throw ValidationError("\(flag): '\($0)' is not a positive integer") }
            return v
        }
    }

    func run() throws {
        let rankList = try ints(ranks, "--ranks"), lengthList = try ints(lengths, "--lengths")
        let ckpt: [Bool] = switch checkpointing {
        case "on": [true]
        case "off": [false]
        case "both": [false, true]
        default: throw ValidationError("--checkpointing: on, off or both")
        }
        let names = shapes.split(separator: ",").map { String($0).trimmingCharacters(in: .whitespaces) }
        for n in names where n != "model" && SyntheticShape(rawValue: n) == nil && !FileManager.default.fileExists(atPath: n) {
            throw ValidationError("--shapes: unknown '\(n)'; use model, \(SyntheticShape.allCases.map(\.rawValue).joined(separator: ", ")) or a model's path")
        }
        let objectiveList = try objectives.split(separator: ",").map { o -> ObjectiveKind in
            let t = o.trimmingCharacters(in: .whitespaces)
            guard let k = ObjectiveKind(rawValue: t) else { throw ValidationError("--objectives: unknown '\(t)'") }
            if k.usesPairs, batch % 2 != 0 { throw ValidationError("--objectives \(t): --batch counts rows, two per pair: make it even") }
            return k
        }
        let kinds = adapters.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }
        guard !kinds.isEmpty, kinds.allSatisfy({ ["lora", "dora"].contains($0) }) else { throw ValidationError("--adapters: lora and/or dora, comma-separated") }
        let grid = objectiveList.flatMap { o in kinds.flatMap { k in names.flatMap { n in lengthList.flatMap { l in ckpt.flatMap { c in
            rankList.map { (n, l, c, $0, k == "dora", o) } } } } } }
        let me = URL(fileURLWithPath: CommandLine.arguments[0]).resolvingSymlinksInPath().path
        var records: [MemoryBench.Record] = []
        let start = Date()
        for (i, (name, length, c, rank, dora, objective)) in grid.enumerated() {
            let path = name == "model" ? model : name
            let synthetic = SyntheticShape(rawValue: name) != nil
            let eta = i > 0 ? String(format: ", ETA %.0f s", Date().timeIntervalSince(start) / Double(i) * Double(grid.count - i)) : ""
            FileHandle.standardError.write(Data("[\(i + 1)/\(grid.count)] \(name) \(objective.rawValue)\(dora ? " DoRA" : "") r\(rank) seq \(length) ckpt \(c ? "on" : "off")\(eta)\n".utf8))
            var common = ["--rank", "\(rank)", "--batch", "\(batch)", "--length", "\(length)"]
            if !synthetic { common += ["--model", path] } else { common += ["--shape", name] + (layers.map { ["--layers", "\($0)"] } ?? []) }
            common += ["--objective", objective.rawValue]
            if c { common.append("--grad-checkpoint") }
            if dora { common.append("--use-dora") }
            common += ["--optim", optim.rawValue]
            let bench = try Self.child(me, ["bench", "train"] + common + ["--steps", "\(steps)", "--warmup", "\(warmup)", "--json"])
            var est = ["estimate", "--lora-r", "\(rank)", "--batch-size", "\(objective.usesPairs ? batch / 2 : batch)", "--max-len", "\(length)",
                       "--lora-dropout", "0", "--ema", "0", "--objective", objective.rawValue, "--json"]
            est += !synthetic ? ["--model", path] : ["--shape", name] + (layers.map { ["--layers", "\($0)"] } ?? [])
            if c { est.append("--grad-checkpoint") }
            if dora { est.append("--use-dora") }
            est += ["--optim", optim.rawValue]
            let estimate = try Self.child(me, est)
            let b = try JSONDecoder().decode(TrainBench.Result.self, from: bench)
            let e = try JSONDecoder().decode(MemoryEstimate.self, from: estimate)
            let label = (!synthetic ? (path as NSString).lastPathComponent : name + (layers.map { " (\($0) layers)" } ?? ""))
                + (objective == .sft ? "" : " " + objective.rawValue) + (dora ? " DoRA" : "") + (optim == .adamw8bit ? " 8-bit" : "")
            records.append(MemoryBench.Record(model: label,
                                              rank: rank, length: length, gradientCheckpointing: c, peakRSSBytes: b.peakRSSBytes,
                                              estimateBytes: e.totalBytes, stepSeconds: b.stepSecondsMedian, tokensPerSecond: b.tokensPerSecond))
        }
        try FileManager.default.createDirectory(atPath: out, withIntermediateDirectories: true)
        try MemoryBench.csv(records).write(toFile: out + "/memory.csv", atomically: true, encoding: .utf8)
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        try encoder.encode(records).write(to: URL(fileURLWithPath: out + "/memory.json"), options: .atomic)
        let title = "qlora: peak RSS vs LoRA rank, batch \(batch) (\(try RuntimeReport.current().cpu))"
        try MemoryBench.svg(records, title: title).write(toFile: out + "/memory.svg", atomically: true, encoding: .utf8)
        print(MemoryBench.table(records))
        let png = Self.convertToPNG(out + "/memory.svg", out + "/memory.png")
        print("wrote \(out)/memory.csv, memory.json, memory.svg" + (png ? ", memory.png" : " (no SVG converter for a PNG: rsvg-convert or ImageMagick's convert)"))
    }

    /// memory.png beside the SVG with rsvg-convert or ImageMagick's convert, when one is on PATH.
    static func convertToPNG(_ svg: String, _ png: String) -> Bool {
        let path = (ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin").split(separator: ":")
        for (tool, args) in [("rsvg-convert", ["-o", png, svg]), ("convert", [svg, png])] {
            guard let dir = path.first(where: { FileManager.default.isExecutableFile(atPath: "\($0)/\(tool)") }) else { continue }
            let p = Process()
            p.executableURL = URL(fileURLWithPath: "\(dir)/\(tool)")
            p.arguments = args
            p.standardOutput = FileHandle.nullDevice
            p.standardError = FileHandle.nullDevice
            guard (try? p.run()) != nil else { continue }
            p.waitUntilExit()
            if p.terminationStatus == 0, FileManager.default.fileExists(atPath: png) { return true }
        }
        return false
    }

    /// Runs `qlora args…`, returns its stdout; its stderr goes to ours.
    static func child(_ executable: String, _ args: [String]) throws -> Data {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: executable)
        p.arguments = args
        let pipe = Pipe()
        p.standardOutput = pipe
        p.standardError = FileHandle.nullDevice
        try p.run()
        let data = pipe.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        guard p.terminationStatus == 0 else {
            throw ValidationError("qlora \(args.joined(separator: " ")) failed with status \(p.terminationStatus)")
        }
        return data
    }
}
