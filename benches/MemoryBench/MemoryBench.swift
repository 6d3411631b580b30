import Foundation

/// `qlora bench memory`: peak RSS of real training steps over a grid of model shape × LoRA rank ×
/// sequence length × gradient checkpointing, each configuration in a fresh child process (so
/// that its peak is its own), beside the memory estimate; written as a table, CSV, JSON and an
/// SVG chart of memory against rank, one line per shape, length and checkpointing.
public enum MemoryBench {
    public struct Record: Codable, Sendable {
        public var model: String
        public var rank: Int
        public var length: Int
        public var gradientCheckpointing: Bool
        public var peakRSSBytes: Int
        public var estimateBytes: Int
        public var stepSeconds: Double
        public var tokensPerSecond: Double

        public init(model: String, rank: Int, length: Int, gradientCheckpointing: Bool, peakRSSBytes: Int, estimateBytes: Int,
                    stepSeconds: Double, tokensPerSecond: Double) {
            self.model = model
            self.rank = rank
            self.length = length
            self.gradientCheckpointing = gradientCheckpointing
            self.peakRSSBytes = peakRSSBytes
            self.estimateBytes = estimateBytes
            self.stepSeconds = stepSeconds
            self.tokensPerSecond = tokensPerSecond
        }

        /// Estimate over measured, minus one.
        public var estimateError: Double { Double(estimateBytes) / Double(peakRSSBytes) - 1 }
        var series: String { "\(model), seq \(length)\(gradientCheckpointing ? ", ckpt" : "")" }
    }

    public static func table(_ records: [Record]) -> String {
        var lines = ["model                                       rank  seq  ckpt  peak RSS MiB  estimate MiB   error  step s  tokens/s"]
        for r in records {
            lines.append(r.model.padding(toLength: 42, withPad: " ", startingAt: 0) + String(format: " %5d %4d  %4@  %12.0f  %12.0f  %+5.1f%%  %6.2f  %8.1f",
                                r.rank, r.length, (r.gradientCheckpointing ? "on" : "off") as NSString,
                                Double(r.peakRSSBytes) / 1_048_576, Double(r.estimateBytes) / 1_048_576, 100 * r.estimateError,
                                r.stepSeconds, r.tokensPerSecond))
        }
        return lines.joined(separator: "\n")
    }

    public static func csv(_ records: [Record]) -> String {
        (["model,rank,length,gradient_checkpointing,peak_rss_bytes,estimate_bytes,step_seconds,tokens_per_second"]
            + records.map { r in
                "\"\(r.model)\",\(r.rank),\(r.length),\(r.gradientCheckpointing),\(r.peakRSSBytes),\(r.estimateBytes),"
                    + String(format: "%.4f,%.2f", r.stepSeconds, r.tokensPerSecond)
            }).joined(separator: "\n") + "\n"
    }

    /// Peak RSS (GiB, solid) and the estimate (dashed) against rank on a log₂ axis, one colour
    /// per series.
    public static func svg(_ records: [Record], title: String) -> String {
        let W = 760.0, H = 460.0, left = 70.0, right = 250.0, top = 40.0, bottom = 50.0
        let ranks = Set(records.map(\.rank)).sorted()
        guard let rmin = ranks.first, let rmax = ranks.last else { return "<svg xmlns=\"http://www.w3.org/2000/svg\"/>" }
        let ymax = (records.map { Double(max($0.peakRSSBytes, $0.estimateBytes)) }.max() ?? 1) / 1_073_741_824 * 1.1
        func x(_ r: Int) -> Double {
            rmax == rmin ? left + (W - left - right) / 2
                : left + (log2(Double(r)) - log2(Double(rmin))) / (log2(Double(rmax)) - log2(Double(rmin))) * (W - left - right)
        }
        func y(_ bytes: Int) -> Double { top + (1 - Double(bytes) / 1_073_741_824 / ymax) * (H - top - bottom) }
        let colours = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf"]
        var out = ["<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"\(Int(W))\" height=\"\(Int(H))\" font-family=\"sans-serif\" font-size=\"12\">",
                   "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>",
                   "<text x=\"\(Int(left))\" y=\"22\" font-size=\"15\">\(escape(title))</text>"]
        for i in 0...5 {
            let v = ymax * Double(i) / 5, yy = y(Int(v * 1_073_741_824))
            out.append(String(format: "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#ddd\"/>", left, yy, W - right, yy))
            out.append(String(format: "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"end\">%.1f</text>", left - 6, yy + 4, v))
        }
        for r in ranks {
            out.append(String(format: "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">%d</text>", x(r), H - bottom + 18, r))
        }
        out.append(String(format: "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">LoRA rank</text>", (left + W - right) / 2, H - 12))
        out.append(String(format: "<text x=\"16\" y=\"%.1f\" transform=\"rotate(-90 16 %.1f)\" text-anchor=\"middle\">peak RSS, GiB (dashed: estimate)</text>",
                          (top + H - bottom) / 2, (top + H - bottom) / 2))
        let series = Dictionary(grouping: records, by: \.series).sorted { $0.key < $1.key }
        for (i, (name, rs)) in series.enumerated() {
            let c = colours[i % colours.count], pts = rs.sorted { $0.rank < $1.rank }
            let measured = pts.map { String(format: "%.1f,%.1f", x($0.rank), y($0.peakRSSBytes)) }.joined(separator: " ")
            let estimated = pts.map { String(format: "%.1f,%.1f", x($0.rank), y($0.estimateBytes)) }.joined(separator: " ")
            out.append("<polyline fill=\"none\" stroke=\"\(c)\" stroke-width=\"2\" points=\"\(measured)\"/>")
            out.append("<polyline fill=\"none\" stroke=\"\(c)\" stroke-width=\"1.5\" stroke-dasharray=\"5,4\" points=\"\(estimated)\"/>")
            for p in pts { out.append(String(format: "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"3\" fill=\"%@\"/>", x(p.rank), y(p.peakRSSBytes), c)) }
            let ly = top + 10 + Double(i) * 18
            out.append(String(format: "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"%@\" stroke-width=\"2\"/>", W - right + 15, ly, W - right + 40, ly, c))
            out.append(String(format: "<text x=\"%.1f\" y=\"%.1f\">%@</text>", W - right + 46, ly + 4, escape(name)))
        }
        out.append("</svg>")
        return out.joined(separator: "\n") + "\n"
    }

    static func escape(_ s: String) -> String {
        s.replacingOccurrences(of: "&", with: "&amp;").replacingOccurrences(of: "<", with: "&lt;").replacingOccurrences(of: ">", with: "&gt;")
    }
}
