import Foundation

/// What a merge heap orders by: `before` is true when self pops first.
protocol HeapOrdered {
    func before(_ other: Self) -> Bool
}

/// The binary heap both merge tokenizers (byte-level BPE by rank, SentencePiece by score) keep
/// their candidate merges in, best first. Its storage is kept between encodes
/// (`removeAll(keepingCapacity:)`).
struct MergeHeap<Element: HeapOrdered> {
    private var items: [Element] = []

    mutating func removeAll(keepingCapacity keep: Bool) { items.removeAll(keepingCapacity: keep) }

    mutating func push(_ e: Element) {
        items.append(e)
        var i = items.count - 1
        while i > 0 {
            let parent = (i - 1) / 2
            guard items[i].before(items[parent]) else { break }
            items.swapAt(i, parent)
            i = parent
        }
    }

    mutating func pop() -> Element? {
        guard let top = items.first else { return nil }
        let last = items.removeLast()
        guard !items.isEmpty else { return top }
        items[0] = last
        var i = 0
        while true {
            let l = 2 * i + 1, r = l + 1
            var m = i
            if l < items.count, items[l].before(items[m]) { m = l }
            if r < items.count, items[r].before(items[m]) { m = r }
            guard m != i else { return top }
            items.swapAt(i, m)
            i = m
        }
    }
}
