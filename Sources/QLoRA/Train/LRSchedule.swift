import Foundation

/// The learning rate of each update, as transformers' schedules compute it through torch's
/// LambdaLR: lr(s) = baseLR · factor(s), where s is the 0-based index of the update about to be
/// taken (the number of `scheduler.step()` calls so far). W = warmup steps, N = total steps.
///
///     s < W          factor = s / max(1, W)                                   (all three kinds)
///     constant       factor = 1
///     linear         factor = max(0, (N − s) / max(1, N − W))
///     cosine         factor = max(0, 0.5·(1 + cos(π · 0.5 · 2 · (s − W) / max(1, N − W))))
///
/// transformers: get_constant_schedule_with_warmup, get_linear_schedule_with_warmup,
/// get_cosine_schedule_with_warmup with num_cycles 0.5; all in Double, in Python's order.
public struct LRSchedule: Sendable, Equatable, Codable {
    public enum Kind: String, Sendable, Codable, CaseIterable {
        case constant, linear, cosine
    }

    /// Warmup as transformers' TrainingArguments.get_warmup_steps reads it.
    public enum Warmup: Sendable, Equatable {
        case steps(Int)
        /// A fraction of the total in [0, 1): ceil(N · ratio) steps.
        case ratio(Double)

        public func steps(total: Int) -> Int {
            switch self {
            case let .steps(w): w
            case let .ratio(r): Int((Double(total) * r).rounded(.up))
            }
        }
    }

    public var kind: Kind
    public var baseLR: Double
    public var warmupSteps: Int
    public var totalSteps: Int

    public init(_ kind: Kind, baseLR: Double, warmup: Warmup = .steps(0), totalSteps: Int) {
        precondition(totalSteps >= 0, "LRSchedule: \(totalSteps) total steps")
        self.kind = kind
        self.baseLR = baseLR
        warmupSteps = warmup.steps(total: totalSteps)
        precondition(warmupSteps >= 0, "LRSchedule: warmup \(warmup) gives \(warmupSteps) steps")
        self.totalSteps = totalSteps
    }

    /// LambdaLR's multiplier for update `step` (0-based).
    public func factor(at step: Int) -> Double {
        let W = warmupSteps, N = totalSteps
        if step < W {
            return Double(step) / Double(max(1, W))
        }
        switch kind {
        case .constant:
            return 1
        case .linear:
            return max(0, Double(N - step) / Double(max(1, N - W)))
        case .cosine:
            let progress = Double(step - W) / Double(max(1, N - W))
            return max(0, 0.5 * (1 + cos(Double.pi * 0.5 * 2 * progress)))
        }
    }

    /// The learning rate of update `step` (0-based): baseLR · factor.
    public func lr(at step: Int) -> Double { baseLR * factor(at: step) }
}
