import Foundation
import FuzzSupport
import QLoRA

/// SmolLM2's tokenizer and the ChatML template, as a real run reads rows with.
let tokenizer = try! Tokenizer(tokenizerJSON: repositoryFile("Tests/QLoRATests/Fixtures/tokenizer-smollm2/tokenizer.json"))
let chatML = ChatTemplate(family: .chatml)

/// One data file of training rows: the first byte picks the format (JSONL: messages, ShareGPT,
/// prompt/completion, Alpaca and text rows, or a .json array; CSV; plain text), the rest is the file. Loading
/// with --skip-bad must skip bad rows with a reason or refuse the file, never crash.
func fuzzOne(_ bytes: UnsafeRawBufferPointer) {
    guard let first = bytes.first else { return }
    let formats: [(String, SFTFormat)] = [("data.jsonl", .jsonl), ("data.csv", .csv), ("data.json", .jsonl), ("data.txt", .text)]
    let (name, format) = formats[Int(first) % formats.count]
    let path = scratchFile(name, UnsafeRawBufferPointer(rebasing: bytes.dropFirst()))
    _ = try? SFTDataSet.load(path: path, format: format, tokenizer: tokenizer, chatTemplate: chatML, maxLength: 64, skipBad: true)
}

@main
struct Main {
    static func main() throws { try fuzzMain(reader: "sft-rows", fuzzOne) }
}
