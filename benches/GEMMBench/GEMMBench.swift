import Foundation
import Quant

/// `qlora bench gemm`: the quantized GEMMs (fp32 or bf16) against dense 2-thread OpenBLAS
/// sgemm on the same fp32 weights, measured side by side in one run (the machines are shared and noisy, so only
/// ratios taken together mean anything), medians of several runs; and dequantization
/// throughput per format and SIMD level.
public enum GEMMBench {
    public struct Config: Sendable {
        public var shapes: [(out: Int, in: Int)] = [(576, 576), (1536, 576), (576, 1536), (4096, 4096), (11008, 4096)]
        public var tokens: [Int] = [1, 64, 256, 512, 1024]
        public var formats: [QuantFormat] = QuantFormat.allCases
        public var runs = 5
        public var threads = 2
        /// Per-thread tile buffer in bytes; 0 = the library's default for T.
        public var tileBytes = 0
        /// Which implementation of the quantized products to time.
        public var path = GEMMOptions.Path.auto
        /// The arithmetic of the quantized products (dense stays fp32 sgemm).
        public var dtype = ComputeDType.fp32
        /// bf16 only: the micro-kernels to time side by side (empty: the one this process chose);
        /// when given, each format's column is named format@kernel.
        public var bf16Kernels: [ComputeRuntime.BF16Kernel] = []
        /// Minimum time of one sample; fast cases repeat until they reach it.
        public var minSampleSeconds = 0.02

        public init() {}
    }

    public struct Record: Codable, Sendable {
        public var T: Int
        public var out: Int
        public var `in`: Int
        public var format: String        // "dense" for the sgemm baseline
        public var direction: String     // "forward", "backward" or "dequantize"
        public var simd: String?         // dequantize records only
        public var gflops: Double?       // GEMM records
        public var gbPerSecond: Double?  // dequantize records: fp32 bytes written per second, one thread
        public var ratioToDense: Double? // ours / dense, both medians of the same run
        public var medianMs: Double

        enum CodingKeys: String, CodingKey {
            case T, out, `in`, format, direction, simd, gflops
            case gbPerSecond = "gb_per_s", ratioToDense = "ratio_to_dense", medianMs = "median_ms"
        }
    }

    public enum Progress {
        case measuring(String, done: Int, total: Int, elapsed: Double)
    }

    public static func run(_ config: Config, progress: (Progress) -> Void) throws -> [Record] {
        _ = try ComputeRuntime.prepare()
        var records: [Record] = []
        var rng = SystemRandomNumberGenerator()
        let total = config.shapes.count * config.tokens.count + config.shapes.count
        var done = 0
        let start = Date()
        for shape in config.shapes {
            let w = (0..<(shape.out * shape.in)).map { _ in Float.random(in: -0.05...0.05, using: &rng) }
            let quantized = try config.formats.map { f in
                f.canQuantize ? try QuantizedMatrix(quantizing: w, rows: shape.out, cols: shape.in, format: f, doubleQuant: !f.isGGML)
                    : try randomBlocks(f, rows: shape.out, cols: shape.in, using: &rng)
            }
            progress(.measuring("dequantize \(shape.out)x\(shape.in)", done: done, total: total, elapsed: Date().timeIntervalSince(start)))
            records += dequantizeRecords(quantized, shape: shape, config: config)
            done += 1
            for T in config.tokens {
                progress(.measuring("T=\(T) \(shape.out)x\(shape.in)", done: done, total: total, elapsed: Date().timeIntervalSince(start)))
                records += try gemmRecords(w: w, quantized: quantized, shape: shape, T: T, config: config)
                done += 1
            }
        }
        return records
    }

    /// A matrix of random blocks of a format qlora only reads (Q5_0, Q5_1, K-quants): random
    /// code bytes, fp16 scales of ±[1e-4, 1e-3]. The speed of the products does not depend on
    /// the values, and dense runs on `w`'s.
    static func randomBlocks(_ f: QuantFormat, rows: Int, cols: Int, using rng: inout SystemRandomNumberGenerator) throws -> QuantizedMatrix {
        let blockBytes = f.ggmlBlockBytes!, blocks = rows * cols / f.defaultBlockSize
        var bytes = (0..<(blocks * blockBytes)).map { _ in UInt8.random(in: 0...255, using: &rng) }
        for b in 0..<blocks {
            for (_, offset) in f.ggmlScaleFields {
                let h = FP16.bits(from: Float.random(in: 1e-4...1e-3, using: &rng) * (Bool.random(using: &rng) ? 1 : -1))
                bytes[b * blockBytes + offset] = UInt8(h & 0xFF)
                bytes[b * blockBytes + offset + 1] = UInt8(h >> 8)
            }
        }
        return try QuantizedMatrix(rows: rows, cols: cols, format: f, data: ByteStorage(copying: bytes), scales: .inBlocks)
    }

    /// Forward and backward, dense and every format, interleaved run by run.
    static func gemmRecords(w: [Float], quantized: [QuantizedMatrix], shape: (out: Int, in: Int), T: Int,
                            config: Config) throws -> [Record] {
        // 64-byte aligned, as qlora's own activations are (Swift arrays are 16-byte aligned,
        // which splits every vector store of the micro-kernel across two cache lines).
        let x = AlignedFloats(T * shape.in, random: true), dy = AlignedFloats(T * shape.out, random: true)
        let y = AlignedFloats(T * shape.out), dx = AlignedFloats(T * shape.in)
        let flops = 2.0 * Double(T) * Double(shape.out) * Double(shape.in)
        let options = GEMMOptions(threads: config.threads, tileBytes: config.tileBytes, path: config.path)
        var samples: [String: [Double]] = [:]  // "format/direction" -> seconds per call
        // nil: the process's own kernel (and the only one for fp32, where none applies)
        let kernels: [ComputeRuntime.BF16Kernel?] = config.dtype == .bf16 && !config.bf16Kernels.isEmpty ? config.bf16Kernels : [nil]
        let label = { (f: QuantFormat, k: ComputeRuntime.BF16Kernel?) in k.map { "\(f.rawValue)@\($0)" } ?? f.rawValue }

        for _ in 0..<config.runs {
            settle()
            ComputeRuntime.setBLASThreads(config.threads)
            samples["dense/forward", default: []].append(try time(config.minSampleSeconds) {
                try ComputeRuntime.sgemm(m: T, n: shape.out, k: shape.in, a: x.base, lda: shape.in, b: w, ldb: shape.in,
                                         transposeB: true, beta: 0, c: y.base, ldc: shape.out)
            })
            samples["dense/backward", default: []].append(try time(config.minSampleSeconds) {
                try ComputeRuntime.sgemm(m: T, n: shape.in, k: shape.out, a: dy.base, lda: shape.out, b: w, ldb: shape.in,
                                         transposeB: false, beta: 0, c: dx.base, ldc: shape.in)
            })
            ComputeRuntime.setBLASThreads(1)
            settle()
            for kernel in kernels {
                let timeAll = {
                    for q in quantized {
                        let name = label(q.format, kernel)
                        samples["\(name)/forward", default: []].append(try time(config.minSampleSeconds) {
                            try q.forward(x.read, into: y.write, tokens: T, options: options, dtype: config.dtype)
                        })
                        samples["\(name)/backward", default: []].append(try time(config.minSampleSeconds) {
                            try q.backward(dy.read, into: dx.write, tokens: T, options: options, dtype: config.dtype)
                        })
                    }
                }
                if let kernel { try ComputeRuntime.withBF16Kernel(kernel, timeAll) } else { try timeAll() }
            }
        }
        var records: [Record] = []
        for direction in ["forward", "backward"] {
            let dense = median(samples["dense/\(direction)"]!)
            records.append(Record(T: T, out: shape.out, in: shape.in, format: "dense", direction: direction,
                                  gflops: flops / dense / 1e9, ratioToDense: 1, medianMs: dense * 1e3))
            for kernel in kernels {
                for q in quantized {
                    let ours = median(samples["\(label(q.format, kernel))/\(direction)"]!)
                    records.append(Record(T: T, out: shape.out, in: shape.in, format: label(q.format, kernel), direction: direction,
                                          gflops: flops / ours / 1e9, ratioToDense: dense / ours, medianMs: ours * 1e3))
                }
            }
        }
        return records
    }

    /// One thread dequantizing tiles of 64 rows into a buffer that stays in cache, as the GEMMs do.
    static func dequantizeRecords(_ quantized: [QuantizedMatrix], shape: (out: Int, in: Int), config: Config) -> [Record] {
        var records: [Record] = []
        let rows = min(64, shape.out)
        for q in quantized {
            for simd in SIMDLevel.available {
                var buffer = [Float](repeating: 0, count: rows * shape.in)
                let seconds = (0..<config.runs).map { _ in
                    (try? time(config.minSampleSeconds / 4) { q.dequantize(rows: 0..<rows, simd: simd, into: &buffer) }) ?? .nan
                }
                let t = median(seconds)
                records.append(Record(T: 0, out: shape.out, in: shape.in, format: q.format.rawValue, direction: "dequantize",
                                      simd: simd.description, gbPerSecond: Double(buffer.count * 4) / t / 1e9, medianMs: t * 1e3))
            }
        }
        return records
    }

    /// Waits until the other threading runtime's workers have stopped spinning (libomp spins
    /// 200 ms after a parallel region by default, OpenBLAS's pthreads a similar while), so that
    /// neither side is measured while the other's idle threads steal its cores.
    static func settle() {
        usleep(300_000)
    }

    /// Seconds per call: repeats `body` until `minSeconds` have passed, after one warm-up call.
    static func time(_ minSeconds: Double, _ body: () throws -> Void) throws -> Double {
        try body()
        var calls = 0
        let start = DispatchTime.now().uptimeNanoseconds
        var elapsed = 0.0
        repeat {
            try body()
            calls += 1
            elapsed = Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9
        } while elapsed < minSeconds
        return elapsed / Double(calls)
    }

    /// A float buffer aligned to 64 bytes.
    final class AlignedFloats {
        let write: UnsafeMutableBufferPointer<Float>
        var base: UnsafeMutablePointer<Float> { write.baseAddress! }
        var read: UnsafeBufferPointer<Float> { UnsafeBufferPointer(write) }

        init(_ count: Int, random: Bool = false) {
            let raw = UnsafeMutableRawPointer.allocate(byteCount: max(count, 1) * 4, alignment: 64)
            write = UnsafeMutableBufferPointer(start: raw.bindMemory(to: Float.self, capacity: max(count, 1)), count: count)
            for i in 0..<count { write[i] = random ? Float.random(in: -1...1) : 0 }
        }

        deinit { UnsafeMutableRawPointer(write.baseAddress!).deallocate() }
    }

    static func median(_ values: [Double]) -> Double {
        let s = values.sorted()
        return s.count % 2 == 1 ? s[s.count / 2] : (s[s.count / 2 - 1] + s[s.count / 2]) / 2
    }

    /// The table for people: one row per (shape, T, direction), formats as columns of
    /// GFLOP/s with the ratio to dense.
    public static func table(_ records: [Record]) -> String {
        let gemm = records.filter { $0.direction != "dequantize" }
        var formats: [String] = []
        for r in gemm where r.format != "dense" && !formats.contains(r.format) { formats.append(r.format) }
        let width = { (f: String) in max(14, f.count + 1) }  // format@kernel names run longer
        var lines = ["out x in      T  dir  " + (["dense"] + formats).map { $0.padding(toLength: width($0), withPad: " ", startingAt: 0) }.joined()]
        var keys: [String] = []
        var rows: [String: [String: Record]] = [:]
        for r in gemm {
            let key = "\("\(r.out)x\(r.in)".padding(toLength: 11, withPad: " ", startingAt: 0)) \(String(format: "%5d", r.T))  \(r.direction == "forward" ? "fwd" : "bwd")"
            if rows[key] == nil { keys.append(key) }
            rows[key, default: [:]][r.format] = r
        }
        for key in keys {
            let row = rows[key]!
            var cells = [String(format: "%6.1f", row["dense"]?.gflops ?? .nan).padding(toLength: 14, withPad: " ", startingAt: 0)]
            for f in formats {
                let r = row[f]
                cells.append(String(format: "%6.1f %5.2fx ", r?.gflops ?? .nan, r?.ratioToDense ?? .nan).padding(toLength: width(f), withPad: " ", startingAt: 0))
            }
            lines.append(key + "  " + cells.joined())
        }
        lines.append("")
        lines.append("dequantize (1 thread, GB/s of fp32 written):")
        for r in records where r.direction == "dequantize" {
            lines.append("  \("\(r.out)x\(r.in)".padding(toLength: 11, withPad: " ", startingAt: 0)) \(r.format.padding(toLength: 5, withPad: " ", startingAt: 0)) \(r.simd!.padding(toLength: 7, withPad: " ", startingAt: 0)) \(String(format: "%6.1f", r.gbPerSecond!))")
        }
        return lines.joined(separator: "\n")
    }
}
