import ArgumentParser
import Foundation
import QLoRA

struct Plot: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Lay the curves of several runs over each other in one chart (SVG, or PNG with a converter).",
        discussion: """
            Reads each RUN/metrics.jsonl (qlora train --out RUN) and draws the panels of the run's \
            own chart.svg: training loss (raw, faint, and smoothed as TensorBoard does at 0.9), \
            validation loss (live weights solid, EMA weights dashed), learning rate and tokens/s. \
            Each run has its colour and is named by its folder (by the path given, where two \
            folders share a name). A run still training is drawn as far as it got.

            Examples:
              qlora plot runs/r8 runs/r16 runs/r32 -o ranks.svg
              qlora plot runs/demo -o demo.png      (needs rsvg-convert or ImageMagick's convert)
            """
    )

    @Argument(help: "Run folders (qlora train --out).") var runs: [String]
    @Option(name: .shortAndLong, help: "The chart: .svg, or .png through rsvg-convert or ImageMagick.") var output = "plot.svg"
    @Option(help: "Title (default: the runs' names).") var title: String?

    func validate() throws {
        guard !runs.isEmpty else { throw ValidationError("name at least one run folder") }
        guard output.hasSuffix(".svg") || output.hasSuffix(".png") else { throw ValidationError("-o must end in .svg or .png, got \(output)") }
    }

    func run() throws {
        let folderNames = runs.map { URL(fileURLWithPath: $0).standardizedFileURL.lastPathComponent }
        let scalars = try zip(runs, folderNames).map { run, name in
            try RunScalars.load(run: run, name: folderNames.filter { $0 == name }.count > 1 ? run : name)
        }
        let svg = RunChart.svg(scalars, title: title)
        if output.hasSuffix(".svg") {
            try RunChart.write(svg: svg, to: output, png: nil)
        } else {
            guard let converter = PNGConverter.found else {
                throw ValidationError("-o \(output): no SVG → PNG converter on PATH (rsvg-convert from librsvg2-bin, or ImageMagick's convert); write an .svg")
            }
            let svgPath = NSTemporaryDirectory() + "qlora-plot-\(ProcessInfo.processInfo.processIdentifier).svg"
            defer { try? FileManager.default.removeItem(atPath: svgPath) }
            try RunChart.write(svg: svg, to: svgPath, png: nil)
            guard converter.convert(svg: svgPath, to: output) else {
                throw ValidationError("-o \(output): \(converter.executable) could not convert the SVG (no SVG support?); write an .svg")
            }
        }
        for s in scalars {
            let updates = s.series["train/loss"]?.last?.step ?? 0, evaluations = (s.series["eval/loss"] ?? s.series["eval/loss_ema"])?.count ?? 0
            print("\(s.name): \(updates) updates, \(evaluations) evaluations")
        }
        print("wrote \(output)")
    }
}
