import Foundation
import FuzzSupport
import QLoRA

/// The tiny NF4 Llama the adapters are loaded onto.
let model = try! DecoderModel(path: repositoryFile("Tests/QLoRATests/Fixtures/tiny-llama-bnb-nf4"))

/// One adapter directory: the input is adapter_config.json, a 0 byte, then
/// adapter_model.safetensors. Reading the config, building the adapters it declares and loading
/// the tensors must throw or succeed, never crash.
func fuzzOne(_ bytes: UnsafeRawBufferPointer) {
    let split = bytes.firstIndex(of: 0) ?? bytes.count
    let dir = fuzzScratch + "/adapter"
    try? FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    _ = scratchFile("adapter/adapter_config.json", UnsafeRawBufferPointer(rebasing: bytes[0..<split]))
    _ = scratchFile("adapter/adapter_model.safetensors", UnsafeRawBufferPointer(rebasing: bytes[min(split + 1, bytes.count)...]))
    guard let (config, norms) = try? AdapterFiles.config(in: dir), config.rank <= 64,
          let lora = try? ModelAdapters(model: model, config: config, trainNorms: norms,
                                        scoreHead: (try? AdapterFiles.hasScoreHead(in: dir)) ?? false, seed: 0) else { return }
    try? AdapterFiles.load(into: lora, from: dir)
}

@main
struct Main {
    static func main() throws { try fuzzMain(reader: "adapter", fuzzOne) }
}
