/// The names inside a training run's directory (`qlora train --out RUN`), spelled once:
///
///     RUN/config.json        TrainingConfig, read back by --resume
///     RUN/metrics.jsonl      one MetricsRow per line
///     RUN/checkpoint-N/      Checkpoint after update N (the newest --keep-last of them)
///     RUN/lora_best/         adapters at the best validation loss; lora_best_ema/ the EMA weights then
///     RUN/lora_final/        adapters at the end; lora_final_ema/ the EMA weights then
///     RUN/chart.svg          RunChart of metrics.jsonl (chart.png beside it where a converter is)
///     RUN/tensorboard/       TensorBoard event files, with --report-to tensorboard
public enum RunLayout {
    public static let configFile = "config.json"
    public static let metricsFile = "metrics.jsonl"
    public static let chartFile = "chart.svg"
    public static let chartPNG = "chart.png"
    public static let tensorBoardDirectory = "tensorboard"
    /// A file named so in the run directory stops the run after the update going on, with a
    /// checkpoint (`touch RUN/STOP`): a graceful stop that needs no signal, so it reaches every
    /// rank of a data-parallel run whatever the launcher does with signals. Removed as the run stops.
    public static let stopFile = "STOP"

    /// The adapter directories a run saves (PEFT layout, AdapterFiles).
    public enum Adapter: String, CaseIterable, Sendable {
        case best = "lora_best", final = "lora_final"
    }

    /// `lora_best`/`lora_final`, or with `ema` the sibling holding the EMA weights.
    public static func adapter(_ which: Adapter, ema: Bool = false) -> String { which.rawValue + (ema ? emaSuffix : "") }

    /// What turns an adapter directory's name into its EMA sibling's: lora_best → lora_best_ema.
    public static let emaSuffix = "_ema"

    static let checkpointPrefix = "checkpoint-"

    /// `checkpoint-N`.
    public static func checkpoint(step: Int) -> String { checkpointPrefix + String(step) }

    /// N of a `checkpoint-N` name, spelled as `checkpoint(step:)` spells it; nil for any other name.
    public static func checkpointStep(_ name: String) -> Int? {
        guard name.hasPrefix(checkpointPrefix), let n = Int(name.dropFirst(checkpointPrefix.count)), n >= 0,
              name == checkpoint(step: n) else { return nil }
        return n
    }
}
