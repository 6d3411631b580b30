import Foundation

/// Keys (after RoPE) and values of every layer for the positions run so far, so that decoding
/// one more token runs one row instead of the whole sequence. Legend: L layers, Hkv KV heads,
/// D head dim; each layer holds keys and values [capacity, Hkv·D], rows 0 ..< count filled.
public final class KVCache {
    public let capacity: Int
    /// Positions held: the next token runs at position `count`.
    public private(set) var count = 0
    private let keys: [FloatBuffer]
    private let values: [FloatBuffer]

    public init(config c: ModelConfig, capacity: Int) {
        precondition(capacity > 0, "KV cache capacity \(capacity)")
        self.capacity = capacity
        let n = capacity * c.numKVHeads * c.headDim
        keys = (0..<c.numLayers).map { _ in FloatBuffer(count: n) }
        values = (0..<c.numLayers).map { _ in FloatBuffer(count: n) }
    }

    /// Layer l's store, its first `count` rows filled.
    func layer(_ l: Int) -> KeyValues {
        KeyValues(keys: keys[l].base, values: values[l].base, past: count)
    }

    /// Records that T more positions were written to every layer.
    func advance(by T: Int) {
        precondition(count + T <= capacity, "KV cache overrun: \(count) + \(T) > \(capacity)")
        count += T
    }

    /// Forgets every position (the memory is kept).
    public func reset() { count = 0 }
}
