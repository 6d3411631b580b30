import Foundation

/// What trains in one decoder layer: LoRA adapters on some of its linears, its RMSNorm weights
/// with `--train-norms` (by the norm's path below the block, `input_layernorm`); and adapters
/// stacked on them frozen (other adapters applied at once: their deltas add in the forward and
/// pass the input gradient in the backward, without dropout or gradients of their own). An
/// empty value changes nothing there.
public struct LayerAdapters {
    public var adapters: [LinearSpec: LoRAAdapter] = [:]
    public var norms: [String: Parameter] = [:]
    /// y += Σ s_i·B_i·A_i·x over these, after `adapters`' own delta.
    public var frozen: [LinearSpec: [LoRAAdapter]] = [:]

    public init(adapters: [LinearSpec: LoRAAdapter] = [:], norms: [String: Parameter] = [:],
                frozen: [LinearSpec: [LoRAAdapter]] = [:]) {
        self.adapters = adapters
        self.norms = norms
        self.frozen = frozen
    }
}
