/// Word bytes → token ids, for words already BPE'd. Open addressing with linear probing over
/// flat arrays, so a lookup allocates nothing; emptied when it holds `capacity` words.
/// Entry e: key keys[keyStarts[e]..<keyStarts[e + 1]], ids values[valueStarts[e]..<valueStarts[e + 1]].
struct WordCache {
    let capacity: Int
    private let mask: Int
    private var slots: [Int32]
    private var hashes: [UInt64] = []
    private var keyStarts: [Int32] = [0]
    private var valueStarts: [Int32] = [0]
    private var keys: [UInt8] = []
    private var values: [Int32] = []

    init(capacity: Int) {
        self.capacity = capacity
        var size = 1
        while size < 2 * capacity { size <<= 1 }
        mask = size - 1
        slots = [Int32](repeating: -1, count: size)
    }

    /// FNV-1a.
    private static func hash(_ word: UnsafeBufferPointer<UInt8>) -> UInt64 {
        var h: UInt64 = 0xCBF2_9CE4_8422_2325
        for b in word { h = (h ^ UInt64(b)) &* 0x0000_0100_0000_01B3 }
        return h
    }

    /// Appends the ids of `word` to `out` and returns true if the word is cached. `mutating`
    /// only so that a cache held in a class is borrowed in place, not copied.
    mutating func lookup(_ word: UnsafeBufferPointer<UInt8>, into out: inout [Int32]) -> Bool {
        let h = Self.hash(word)
        var i = Int(truncatingIfNeeded: h ^ h >> 29) & mask
        while slots[i] >= 0 {
            let e = Int(slots[i])
            if hashes[e] == h, Int(keyStarts[e + 1] - keyStarts[e]) == word.count,
               keys[Int(keyStarts[e])..<Int(keyStarts[e + 1])].elementsEqual(word) {
                out += values[Int(valueStarts[e])..<Int(valueStarts[e + 1])]
                return true
            }
            i = (i + 1) & mask
        }
        return false
    }

    mutating func insert(_ word: UnsafeBufferPointer<UInt8>, _ ids: ArraySlice<Int32>) {
        if hashes.count >= capacity { removeAll() }
        let h = Self.hash(word)
        var i = Int(truncatingIfNeeded: h ^ h >> 29) & mask
        while slots[i] >= 0 { i = (i + 1) & mask }
        slots[i] = Int32(hashes.count)
        hashes.append(h)
        keys += word
        keyStarts.append(Int32(keys.count))
        values += ids
        valueStarts.append(Int32(values.count))
    }

    private mutating func removeAll() {
        for i in slots.indices { slots[i] = -1 }
        hashes.removeAll(keepingCapacity: true)
        keys.removeAll(keepingCapacity: true)
        values.removeAll(keepingCapacity: true)
        keyStarts = [0]
        valueStarts = [0]
    }
}
