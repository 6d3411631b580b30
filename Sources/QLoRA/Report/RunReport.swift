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
final class RunReport {
    let directory: String
    private let events: TensorBoardEventWriter?
    /// Dropped after its first failure, so that a broken converter is not run at every evaluation.
    private var converter = PNGConverter.found

    /// `resumedAt`: the update a resumed run restarts from (nil: a new run, whose chart and
    /// event files of an earlier attempt in the same folder are removed).
    init(directory: String, target: ReportTarget, resumedAt: Int?) throws {
        self.directory = directory
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
        try events?.write(step: row.step, scalars: row.scalars)
    }

    /// At an evaluation and at the end: the chart redrawn from metrics.jsonl, the events synced.
    func redraw() throws {
        try events?.sync()
        let scalars = try RunScalars.load(run: directory)
        let wrotePNG = try RunChart.write(svg: RunChart.svg([scalars]), to: directory + "/" + RunLayout.chartFile,
                                          png: directory + "/" + RunLayout.chartPNG, converter: converter)
        if !wrotePNG { converter = nil }
    }
}
