import Foundation
import FuzzSupport
import QLoRA

/// One input through the safetensors reader: it must throw or succeed, never crash, hang or read
/// out of bounds. Floating-point tensors are converted too.
func fuzzOne(_ bytes: UnsafeRawBufferPointer) {
    guard let s = try? SafetensorsFile(file: MappedFile(copying: bytes, name: "fuzz.safetensors")) else { return }
    for t in s.tensors.prefix(16) { _ = try? s.floats(t) }
}

@main
struct Main {
    static func main() throws { try fuzzMain(reader: "safetensors", fuzzOne) }
}
