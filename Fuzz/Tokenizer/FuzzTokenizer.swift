import Foundation
import FuzzSupport
import QLoRA

/// One tokenizer.json through the loader: it must throw or load; a tokenizer that loads must
/// encode and decode a fixed text (specials, digits, bytes) without crashing.
func fuzzOne(_ bytes: UnsafeRawBufferPointer) {
    guard let t = try? Tokenizer(tokenizerJSON: scratchFile("tokenizer.json", bytes)) else { return }
    let ids = t.encode("Hello, wörld! 12345 <|im_start|>user\n\t  🤖 x")
    _ = t.decode(ids)
}

@main
struct Main {
    static func main() throws { try fuzzMain(reader: "tokenizer", fuzzOne) }
}
