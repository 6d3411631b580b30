import Foundation
import FuzzSupport
import QLoRA

/// One input through the GGUF reader: it must throw or succeed, never crash, hang or read
/// out of bounds. Tensors the file claims are dequantized too (sizes were checked at open).
func fuzzOne(_ bytes: UnsafeRawBufferPointer) {
    guard let g = try? GGUFFile(file: MappedFile(copying: bytes, name: "fuzz.gguf")) else { return }
    for t in g.tensors.prefix(16) { _ = try? g.dequantize(t) }
    _ = try? ModelConfig(gguf: g)
    _ = try? TokenizerExport.huggingFaceFiles(from: g)
}

@main
struct Main {
    static func main() throws { try fuzzMain(reader: "GGUF", fuzzOne) }
}
