import Foundation

/// A run's metrics.jsonl as named scalar series: what the chart draws (RunChart) and what the
/// TensorBoard events hold (TensorBoardEvents), under TensorBoard's tags, spelled only here.
///
///     metrics.jsonl (a training row)           tag
///     loss                                     train/loss
///     lr                                       train/learning_rate
///     grad_norm                                train/grad_norm           (after clipping's measure)
///     tokens_per_s                             train/tokens_per_second
///     update_s                                 train/update_seconds
///     rss_mb                                   system/rss_mib
///     the objective's metrics (rewards/chosen) train/rewards/chosen, …
///
///     an evaluation row ("full" or "alert"; "quick" ones go to eval_quick/…)
///     val_loss_live, or val_loss without EMA   eval/loss                 the live weights
///     val_loss with EMA                        eval/loss_ema             the EMA weights
///     val_ppl, val_accuracy                    eval/perplexity, eval/accuracy   (+ _ema with EMA)
///     val_<metric> (val_rewards/chosen)        eval/rewards/chosen, …    (+ _ema with EMA)
///
/// Rows that are only events (alerts, skipped updates) hold no scalar; non-finite values are
/// left out.
public struct RunScalars: Sendable {
    /// The run's name where several are shown together (its folder's name).
    public var name: String
    /// tag → (step, value) in the order of the rows.
    public var series: [String: [(step: Int, value: Double)]] = [:]

    public init(name: String, rows: [MetricsRow]) {
        self.name = name
        rows.forEach { append($0) }
    }

    /// The scalars of a row that follows the others.
    public mutating func append(_ row: MetricsRow) {
        for (tag, value) in row.scalars { series[tag, default: []].append((row.step, value)) }
    }

    /// The scalars of the run in `directory`, named by `name` (default: the folder's name).
    public static func load(run directory: String, name: String? = nil) throws -> RunScalars {
        RunScalars(name: name ?? URL(fileURLWithPath: directory).standardizedFileURL.lastPathComponent,
                   rows: try MetricsRow.load(run: directory))
    }
}

extension MetricsRow {
    /// This row's scalars by TensorBoard tag (the table of RunScalars), in a fixed order.
    public var scalars: [(tag: String, value: Double)] {
        var out: [(tag: String, value: Double)] = []
        func add(_ tag: String, _ value: Double?) { if let value, value.isFinite { out.append((tag, value)) } }
        if loss != nil {
            add("train/loss", loss)
            add("train/learning_rate", lr)
            add("train/grad_norm", gradNorm)
            add("train/tokens_per_second", tokensPerS)
            add("train/update_seconds", updateS)
            add("system/rss_mib", rssMb)
            for key in metrics.keys.sorted() { add("train/" + key, metrics[key]) }
        } else if valLoss != nil {
            let prefix = kind == "quick" ? "eval_quick/" : "eval/"
            let suffix = ema == true ? "_ema" : ""   // val_loss and the rest score the EMA weights then
            add(prefix + "loss", ema == true ? valLossLive : valLoss)
            if ema == true { add(prefix + "loss_ema", valLoss) }
            add(prefix + "perplexity" + suffix, valPpl)
            add(prefix + "accuracy" + suffix, valAccuracy)
            for key in metrics.keys.sorted() where key.hasPrefix("val_") {
                add(prefix + key.dropFirst(4) + suffix, metrics[key])
            }
        }
        return out
    }

    /// The rows of `directory`/metrics.jsonl. A last line without its newline is a write the
    /// run did not finish (killed) and is left out; any other line that is not a row throws,
    /// naming file:line.
    public static func load(run directory: String) throws -> [MetricsRow] {
        let path = directory + "/" + RunLayout.metricsFile
        guard let data = FileManager.default.contents(atPath: path) else {
            throw FileError.cannotOpen(path: path, reason: "no such file (is \(directory) a qlora train --out folder?)")
        }
        var lines = data.split(separator: 0x0A, omittingEmptySubsequences: false)
        lines.removeLast()   // after the last newline: empty, or a torn write
        let decoder = JSONDecoder()
        return try lines.enumerated().compactMap { i, line in
            guard !line.isEmpty else { return nil }
            do { return try decoder.decode(MetricsRow.self, from: Data(line)) } catch {
                throw MetricsFileError.badRow(path: path, line: i + 1, reason: "\(error)")
            }
        }
    }
}

/// A metrics.jsonl that cannot be read back.
public enum MetricsFileError: Error, Equatable, CustomStringConvertible {
    case badRow(path: String, line: Int, reason: String)

    public var description: String {
        switch self {
        case let .badRow(path, line, reason): "\(path):\(line): not a metrics row: \(reason)"
        }
    }
}
