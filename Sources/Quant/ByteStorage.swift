/// Bytes a quantized matrix reads: either owned (copied into a 64-byte aligned allocation)
/// or borrowed from a region another object keeps alive, such as a memory-mapped file.
public final class ByteStorage: @unchecked Sendable {
    public let bytes: UnsafeRawBufferPointer
    private let owner: AnyObject?
    private let owned: Bool

    /// Copies the bytes of `source`.
    public convenience init(copying source: UnsafeRawBufferPointer) {
        let p = UnsafeMutableRawPointer.allocate(byteCount: max(source.count, 1), alignment: 64)
        if let base = source.baseAddress, source.count > 0 { p.copyMemory(from: base, byteCount: source.count) }
        self.init(owning: UnsafeRawBufferPointer(start: p, count: source.count))
    }

    /// Copies the bytes of an array of plain values (bytes, floats).
    public convenience init<T: BitwiseCopyable>(copying values: [T]) {
        let n = values.count * MemoryLayout<T>.stride
        let p = UnsafeMutableRawPointer.allocate(byteCount: max(n, 1), alignment: 64)
        values.withUnsafeBytes { if let base = $0.baseAddress, n > 0 { p.copyMemory(from: base, byteCount: n) } }
        self.init(owning: UnsafeRawBufferPointer(start: p, count: n))
    }

    /// Borrows `bytes`, which must stay valid as long as `owner` lives.
    public init(borrowing bytes: UnsafeRawBufferPointer, owner: AnyObject) {
        self.bytes = bytes
        self.owner = owner
        owned = false
    }

    private init(owning bytes: UnsafeRawBufferPointer) {
        self.bytes = bytes
        owner = nil
        owned = true
    }

    deinit {
        if owned { UnsafeMutableRawPointer(mutating: bytes.baseAddress)?.deallocate() }
    }

    public var count: Int { bytes.count }

    /// The bytes read as values of type T (count / stride of them).
    public func array<T: BitwiseCopyable>(of: T.Type) -> [T] {
        Array(bytes.bindMemory(to: T.self))
    }

    func pointer<T>(to: T.Type) -> UnsafePointer<T>? {
        bytes.baseAddress?.assumingMemoryBound(to: T.self)
    }
}
