import Foundation

/// An exponential moving average of parameters: one fp32 shadow per parameter, of its count,
/// starting at the parameter's values.
///
///     θ_ema ← θ_ema · β' + θ · (1 − β')      β' = β^k when `update()` runs every k updates
///
/// so the decay compounds over the k updates between two EMA steps (β' computed in Double,
/// applied in fp32), each step computed as torch's `shadow.mul_(β').add_(p, alpha=1 − β')`
/// (whose float kernel fuses the second product).
///
/// `swapIn()` exchanges the contents of shadows and live values element by element and
/// `swapOut()` exchanges them back, so the live weights return bit for bit, with no copy kept
/// and nothing recomputed.
public final class EMA {
    public let parameters: [Parameter]
    /// β per update, given by the caller.
    public let beta: Double
    /// k: `update()` is meant to run after every k-th optimizer update.
    public let every: Int
    /// θ_ema per parameter. While swapped in, these hold the live weights instead.
    public let shadows: [FloatBuffer]
    public private(set) var isSwappedIn = false

    /// Shadows start as copies of the current values.
    public init(parameters: [Parameter], beta: Double, every: Int = 1) {
        precondition((0..<1).contains(beta), "EMA: beta must be in [0, 1), got \(beta)")
        precondition(every >= 1, "EMA: every must be ≥ 1, got \(every)")
        self.parameters = parameters
        self.beta = beta
        self.every = every
        shadows = parameters.map { p in
            let s = FloatBuffer(count: p.count)
            s.base.update(from: p.value.base, count: p.count)
            return s
        }
    }

    /// β' = β^k, the decay one `update()` applies.
    public var decayPerUpdate: Double { pow(beta, Double(every)) }

    /// Whether `update()` is due after optimizer update `n` (1-based): n is a multiple of k.
    public func isDue(afterUpdate n: Int) -> Bool { n % every == 0 }

    /// θ_ema ← θ_ema·β' + θ·(1 − β').
    public func update() {
        precondition(!isSwappedIn, "EMA.update() while the shadows are swapped in")
        let d = decayPerUpdate
        let keep = Float(d), take = Float(1 - d)
        for (p, s) in zip(parameters, shadows) {
            let x = p.value.base, y = s.base
            for i in 0..<p.count { y[i] = (y[i] * keep).addingProduct(x[i], take) }
        }
    }

    /// Puts the shadows into the live parameters (and the live values into the shadows).
    public func swapIn() {
        precondition(!isSwappedIn, "EMA.swapIn() twice")
        exchange()
        isSwappedIn = true
    }

    /// Restores the live parameters exactly as they were before `swapIn()`.
    public func swapOut() {
        precondition(isSwappedIn, "EMA.swapOut() without swapIn()")
        exchange()
        isSwappedIn = false
    }

    /// Runs `body` with the averaged weights in the parameters, then restores the live ones,
    /// also when `body` throws.
    public func withAveragedWeights<T>(_ body: () throws -> T) rethrows -> T {
        swapIn()
        defer { swapOut() }
        return try body()
    }

    private func exchange() {
        for (p, s) in zip(parameters, shadows) {
            let x = p.value.base, y = s.base
            for i in 0..<p.count { swap(&x[i], &y[i]) }
        }
    }
}
