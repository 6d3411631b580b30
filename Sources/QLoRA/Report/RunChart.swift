import Foundation

/// The chart of one run (RUN/chart.svg, redrawn as the run goes) or of several laid over each
/// other (`qlora plot`): four panels drawn from RunScalars' tags.
///
///     Training loss     train/loss raw (faint) and smoothed (`smoothed`, TensorBoard's slider at 0.9)
///     Validation loss   eval/loss (live weights) and eval/loss_ema (EMA weights, dashed);
///                       quick evaluations dotted
///     Learning rate     train/learning_rate
///     Tokens/s          train/tokens_per_second
///
/// One run: a colour per curve. Several: a colour per run, the curve told by its stroke, the
/// run by its name.
public enum RunChart {
    /// The weight of TensorBoard's scalar smoothing applied to the training loss.
    public static let smoothingWeight = 0.9

    static let palette = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"]

    public static func panels(_ runs: [RunScalars]) -> [ChartPanel] {
        let several = runs.count > 1
        var loss: [ChartSeries] = [], validation: [ChartSeries] = [], lr: [ChartSeries] = [], speed: [ChartSeries] = []
        for (i, run) in runs.enumerated() {
            /// The run's colour, or with one run the `role`'s.
            func color(_ role: Int) -> String { palette[(several ? i : role) % palette.count] }
            func label(_ what: String) -> String { several ? (what.isEmpty ? run.name : "\(run.name) · \(what)") : what }
            func points(_ tag: String) -> [(x: Double, y: Double)] { (run.series[tag] ?? []).map { (Double($0.step), $0.value) } }

            let raw = points("train/loss")
            let smooth = zip(raw, smoothed(raw.map(\.y), weight: smoothingWeight)).map { (x: $0.0.x, y: $0.1) }
            loss.append(ChartSeries(label: label("raw"), points: raw, color: color(0), stroke: .faint, inLegend: !several))
            loss.append(ChartSeries(label: label(several ? "" : "smoothed (\(smoothingWeight))"), points: smooth, color: color(0)))

            validation.append(ChartSeries(label: label("live weights"), points: points("eval/loss"), color: color(0), markers: true))
            validation.append(ChartSeries(label: label("EMA weights"), points: points("eval/loss_ema"), color: color(1), stroke: .dashed, markers: true))
            for (tag, what) in [("eval_quick/loss", "quick, live"), ("eval_quick/loss_ema", "quick, EMA")] where run.series[tag] != nil {
                validation.append(ChartSeries(label: label(what), points: points(tag), color: color(7), stroke: .dotted, markers: true))
            }
            lr.append(ChartSeries(label: label(""), points: points("train/learning_rate"), color: color(2), inLegend: several))
            speed.append(ChartSeries(label: label(""), points: points("train/tokens_per_second"), color: color(4), inLegend: several))
        }
        return [ChartPanel(title: "Training loss", series: loss), ChartPanel(title: "Validation loss", series: validation),
                ChartPanel(title: "Learning rate", series: lr), ChartPanel(title: "Tokens/s", series: speed)]
    }

    /// The SVG of `runs`, titled `title` (default: the runs' names).
    public static func svg(_ runs: [RunScalars], title: String? = nil) -> String {
        SVGChart.render(title: title ?? runs.map(\.name).joined(separator: ", "), panels: panels(runs))
    }

    /// TensorBoard's smoothing (its scalar dashboard's `smoothing` slider): an EMA of the
    /// values, divided by 1 − wⁿ so that the first points are not pulled towards 0:
    ///
    ///     last ← w·last + (1 − w)·y,   smoothed = last / (1 − wⁿ),   n = points so far
    public static func smoothed(_ values: [Double], weight: Double) -> [Double] {
        var last = 0.0, n = 0.0
        return values.map { y in
            last = weight * last + (1 - weight) * y
            n += 1
            return weight == 0 ? y : last / (1 - pow(weight, n))
        }
    }

    /// Writes `svg` to `path` atomically and, where a converter exists (`PNGConverter`), the
    /// PNG to `png` (atomically too). Returns whether a PNG was written.
    @discardableResult
    public static func write(svg: String, to path: String, png: String?, converter: PNGConverter? = .found) throws -> Bool {
        try AtomicFile.write(to: path, bytes: Array(svg.utf8))
        guard let png, let converter else { return false }
        return converter.convert(svg: path, to: png)
    }
}

/// An SVG → PNG converter on PATH: `rsvg-convert` (librsvg2-bin) or ImageMagick's `convert`,
/// looked for at run time; without one, charts are SVG only.
public struct PNGConverter: Sendable {
    public let executable: String

    /// The first of rsvg-convert, convert found on PATH (nil: none).
    public static let found: PNGConverter? = {
        let path = ProcessInfo.processInfo.environment["PATH"] ?? "/usr/local/bin:/usr/bin:/bin"
        for name in ["rsvg-convert", "convert"] {
            for dir in path.split(separator: ":") where FileManager.default.isExecutableFile(atPath: "\(dir)/\(name)") {
                return PNGConverter(executable: "\(dir)/\(name)")
            }
        }
        return nil
    }()

    /// Converts `svg` into `png` (written beside it as `.partial`, then renamed). False, with
    /// nothing left behind, when the converter fails (a stand-in `convert` without SVG support).
    public func convert(svg: String, to png: String) -> Bool {
        let tmp = png + ".partial"
        let p = Process()
        p.executableURL = URL(fileURLWithPath: executable)
        p.arguments = executable.hasSuffix("rsvg-convert") ? ["--format", "png", "--output", tmp, svg] : ["svg:" + svg, "png:" + tmp]
        p.standardOutput = FileHandle.nullDevice
        p.standardError = FileHandle.nullDevice
        do {
            try p.run()
            p.waitUntilExit()
        } catch {
            return false
        }
        guard p.terminationStatus == 0, FileManager.default.fileExists(atPath: tmp), rename(tmp, png) == 0 else {
            try? FileManager.default.removeItem(atPath: tmp)
            return false
        }
        return true
    }
}
