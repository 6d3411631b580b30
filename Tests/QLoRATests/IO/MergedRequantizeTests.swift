import Foundation
@testable import QLoRA
import Quant
import XCTest

/// `qlora merge --requantize` on the tiny NF4 model with its PEFT adapter: the new base holds
/// our quantizer's Q of W' computed independently here in float64, and the rounding it
/// reports is what that recomputation gives.
final class MergedRequantizeTests: XCTestCase {
    static let model = MergedExportTests.model
    static let adapter = MergedExportTests.adapter

    /// W' = dequant(W) + s·B·A in float64 from the adapter's own file and config, by Hugging
    /// Face name; linears the adapter misses are dequant(W).
    static func mergedFloat64() throws -> (merged: [String: [Double]], delta: [String: [Double]]) {
        let base = try QuantizedModel(path: model)
        let config = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: adapter + "/adapter_config.json"))) as! [String: Any]
        let r = config["r"] as! Int, scale = (config["lora_alpha"] as! NSNumber).doubleValue / Double(r)
        let file = try SafetensorsFile(path: adapter + "/adapter_model.safetensors")
        var merged: [String: [Double]] = [:], delta: [String: [Double]] = [:]
        for (name, w) in base.linears {
            var d = [Double](repeating: 0, count: w.rows * w.cols)
            let module = "base_model.model." + name.dropLast(".weight".count)
            if let ta = file.tensor(module + ".lora_A.weight"), let tb = file.tensor(module + ".lora_B.weight") {
                let a = try file.floats(ta), b = try file.floats(tb)
                for i in 0..<w.rows {
                    for j in 0..<w.cols {
                        var s = 0.0
                        for k in 0..<r { s += Double(b[i * r + k]) * Double(a[k * w.cols + j]) }
                        d[i * w.cols + j] = scale * s
                    }
                }
            }
            merged[name] = zip(w.dequantize(), d).map { Double($0) + $1 }
            delta[name] = d
        }
        return (merged, delta)
    }

    func merge(_ dir: TempDir, target: MergedRequantize.Target) throws -> (path: String, report: MergedRequantize.Report, lines: Int) {
        let out = dir.path + "/merged-\(target.rawValue)"
        var lines = 0
        let report = try MergedRequantize.run(model: Self.model, output: out, options: .init(adapter: Self.adapter, target: target)) {
            if case let .tensor(_, _, _, _, _, _, rounding?, _) = $0, rounding.weightSquares > 0 { lines += 1 }
        }
        return (out, report, lines)
    }

    /// Reloads the new base and checks each linear against Q(W'₆₄ rounded to fp32), and the
    /// reported rounding against ‖Q(W') − W'₆₄‖/‖W'₆₄‖ and ‖s·BA‖₆₄/‖W'₆₄‖.
    func check(_ target: MergedRequantize.Target, format: QuantFormat, doubleQuant: Bool) throws {
        let dir = TempDir()
        let (path, report, lines) = try merge(dir, target: target)
        let (merged, delta) = try Self.mergedFloat64()
        let reloaded = try QuantizedModel(path: path)
        XCTAssertEqual(Set(reloaded.linears.keys), Set(merged.keys))
        XCTAssertEqual(report.perTensor.count, merged.count)
        XCTAssertEqual(lines, merged.count, "a progress line with rounding per linear")
        var total = (err: 0.0, w: 0.0, d: 0.0)
        for (name, w64) in merged {
            let got = try XCTUnwrap(reloaded.linears[name], name)
            XCTAssertEqual(got.format, format, name)
            let want = try QuantizedMatrix(quantizing: w64.map { Float($0) }, rows: got.rows, cols: got.cols, format: format,
                                           doubleQuant: doubleQuant).dequantize()
            let q = got.dequantize()
            // fp32 sgemm and the float64 sum may round W' one ulp apart. That can move a weight
            // lying on a code boundary to the next code (allow a handful), and with double
            // quantization it moves the mean of the absmax, which shifts every block's scale by
            // an ulp or so (so not bit for bit).
            let flipped = zip(q, want).filter { abs($0 - $1) > 1e-5 * abs($1) + 1e-7 }.count
            XCTAssertLessThanOrEqual(flipped, max(2, q.count / 2000), "\(name): \(flipped) of \(q.count) weights on another code")
            if !doubleQuant { XCTAssertLessThanOrEqual(zip(q, want).filter { $0 != $1 }.count, max(2, q.count / 2000), name) }
            var e = 0.0, ww = 0.0, dd = 0.0
            for i in q.indices {
                e += (Double(q[i]) - w64[i]) * (Double(q[i]) - w64[i])
                ww += w64[i] * w64[i]
                dd += delta[name]![i] * delta[name]![i]
            }
            let r = try XCTUnwrap(report.perTensor[name])
            XCTAssertEqual(r.relativeError, (e / ww).squareRoot(), accuracy: 1e-5 * (e / ww).squareRoot(), name)
            XCTAssertEqual(r.relativeDelta, (dd / ww).squareRoot(), accuracy: 1e-5 * (dd / ww).squareRoot() + 1e-12, name)
            total = (total.err + e, total.w + ww, total.d + dd)
        }
        XCTAssertEqual(report.rounding.relativeError, (total.err / total.w).squareRoot(), accuracy: 1e-6)
        XCTAssertEqual(report.rounding.relativeDelta, (total.d / total.w).squareRoot(), accuracy: 1e-6)
        XCTAssertGreaterThan(report.rounding.relativeError, 0.01, "4-bit rounding is visible")
        let base = try QuantizedModel(path: Self.model)
        for (name, values) in base.dense { XCTAssertEqual(reloaded.dense[name], values, name) }
        print("merge --requantize \(target.rawValue): rounding \(report.rounding.relativeError), adapter \(report.rounding.relativeDelta)")
    }

    func testNF4HoldsOurQuantizerOfTheFloat64Merge() throws {
        try check(.nf4, format: .nf4, doubleQuant: true)
    }

    func testQ4_0HoldsOurQuantizerOfTheFloat64Merge() throws {
        try check(.q4_0, format: .q4_0, doubleQuant: false)
    }

    /// The nf4 folder is what `qlora quantize --format nf4` writes (config and entries), and
    /// trains: a LoRA loads on it and runs a forward pass.
    func testNF4FolderLoadsForTraining() throws {
        let dir = TempDir()
        let (path, _, _) = try merge(dir, target: .nf4)
        XCTAssertEqual(Set(try FileManager.default.contentsOfDirectory(atPath: path)), ["config.json", "generation_config.json", "model.safetensors"])
        let config = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: path + "/config.json"))) as! [String: Any]
        let q = try XCTUnwrap(config["quantization_config"] as? [String: Any])
        XCTAssertEqual(q["bnb_4bit_quant_type"] as? String, "nf4")
        XCTAssertEqual(q["bnb_4bit_use_double_quant"] as? Bool, true)
        let model = try DecoderModel(path: path)
        let lora = try ModelAdapters(model: model, config: LoRAConfig(rank: 2, alpha: 4, targets: .names(["q_proj", "v_proj"])), trainNorms: false, seed: 1)
        let logits = try DecoderModel(model, adapters: lora).forward(tokens: [1, 2, 3], logits: .all)
        XCTAssertTrue(logits.allSatisfy(\.isFinite))
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: dir.path), ["merged-nf4"], "no tmp left")
    }
}

/// Staged outputs (`OUT.tmp-<pid>`): leftovers of dead processes go, live ones stay.
final class StagedOutputTests: XCTestCase {
    func testStaleTmpOfADeadProcessIsRemovedALiveOneIsLeft() throws {
        let dir = TempDir()
        let out = dir.path + "/smol.gguf"
        // A pid above the kernel's pid_max (at most 2²²) names no process.
        let dead: Int32 = 1 << 23
        dir.write("smol.gguf.tmp-\(dead)", "half a file")
        dir.write("smol.gguf.tmp-\(dead + 1).partial", "half a file")
        try FileManager.default.createDirectory(atPath: dir.path + "/smol.gguf.tmp-\(dead + 2)", withIntermediateDirectories: true)
        dir.write("smol.gguf.tmp-1", "pid 1 is alive")
        dir.write("smol.gguf.tmp-\(getpid())", "ours")
        dir.write("other.gguf.tmp-\(dead)", "another output's")
        dir.write("smol.gguf.tmp-x", "not a pid")
        let notes = StagedOutput.removeStale(for: out)
        XCTAssertEqual(notes.count, 3, "\(notes)")
        XCTAssertTrue(notes.allSatisfy { $0.contains("is gone") })
        XCTAssertEqual(Set(try FileManager.default.contentsOfDirectory(atPath: dir.path)),
                       ["smol.gguf.tmp-1", "smol.gguf.tmp-\(getpid())", "other.gguf.tmp-\(dead)", "smol.gguf.tmp-x"])
    }

    /// An export removes the stale tmp of its output before it starts, and says so.
    func testExportRemovesStaleTmpAndSaysSo() throws {
        let dir = TempDir()
        let out = dir.path + "/m.gguf"
        dir.write("m.gguf.tmp-\(1 << 23)", "left by a killed export")
        var notes: [String] = []
        _ = try GGUFExport.run(model: MergedExportTests.model, output: out, type: .f32) { if case let .note(t) = $0 { notes.append(t) } }
        XCTAssertTrue(notes.contains { $0.contains("m.gguf.tmp-\(1 << 23)") }, "\(notes)")
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: dir.path), ["m.gguf"])
    }
}
