import Foundation

/// `--report-to`: where a run's scalars go besides metrics.jsonl and its chart (HF Trainer's
/// `report_to`).
public enum ReportTarget: String, Codable, Sendable, CaseIterable {
    case none
    /// Event files under RUN/tensorboard/ (TensorBoardEventWriter).
    case tensorboard
}

/// What a run leaves to look at beside metrics.jsonl, kept up to date by TrainingRun:
///
///     RUN/chart.svg, chart.png   RunChart of metrics.jsonl, redrawn (atomically) at each
///                                evaluation and when the run stops; the PNG where a converter is
///     RUN/tensorboard/           with --report-to tensorboard: one event per metrics row as it is
///                                appended, synced to disk at each evaluation
///
/// The rows are kept as scalars here as they are appended (a resumed run starts from the
/// metrics.jsonl its checkpoint kept), so a redraw does not read the file again.
final class RunReport {
    let directory: String
    private var scalars: RunScalars
    private let events: TensorBoardEventWriter?
    /// Dropped after its first failure, so that a broken converter is not run at every evaluation.
    private var converter = PNGConverter.found

    /// `resumedAt`: the update a resumed run restarts from (nil: a new run, whose chart and
    /// event files of an earlier attempt in the same folder are removed).
    init(directory: String, target: ReportTarget, resumedAt: Int?) throws {
        self.directory = directory
        let name = URL(fileURLWithPath: directory).standardizedFileURL.lastPathComponent
        let metrics = directory + "/" + RunLayout.metricsFile
        scalars = resumedAt != nil && FileManager.default.fileExists(atPath: metrics)
            ? try RunScalars.load(run: directory, name: name) : RunScalars(name: name, rows: [])
        let tensorboard = directory + "/" + RunLayout.tensorBoardDirectory
        if resumedAt == nil {
            for name in [RunLayout.chartFile, RunLayout.chartPNG, RunLayout.tensorBoardDirectory] {
                try? FileManager.default.removeItem(atPath: directory + "/" + name)
            }
        }
        events = target == .tensorboard ? try TensorBoardEventWriter(directory: tensorboard, restartAt: resumedAt.map { $0 + 1 }) : nil
    }

    /// A row just appended to metrics.jsonl.
    func record(_ row: MetricsRow) throws {
        scalars.append(row)
        try events?.write(step: row.step, scalars: row.scalars)
    }

    /// At an evaluation and at the end: the chart redrawn, the events synced.
    func redraw() throws {
        try events?.sync()
        let wrotePNG = try RunChart.write(svg: RunChart.svg([scalars]), to: directory + "/" + RunLayout.chartFile,
                                          png: directory + "/" + RunLayout.chartPNG, converter: converter)
        if !wrotePNG { converter = nil }
    }
}
