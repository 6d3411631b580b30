import Foundation
import FuzzSupport
import QLoRA

/// A Hugging Face folder whose config.json is the input, beside the tiny NF4 Llama's weights
/// (linked): loading must throw (naming the key) or give a model that runs a 3-token forward.
let weights = URL(fileURLWithPath: repositoryFile("Tests/QLoRATests/Fixtures/tiny-llama-bnb-nf4/model.safetensors")).standardized.path
let folder: String = {
    let dir = fuzzScratch + "/model"
    try? FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    try? FileManager.default.createSymbolicLink(atPath: dir + "/model.safetensors", withDestinationPath: weights)
    return dir
}()

func fuzzOne(_ bytes: UnsafeRawBufferPointer) {
    _ = scratchFile("model/config.json", bytes)
    guard let model = try? DecoderModel(path: folder) else { return }
    _ = try? model.forward(tokens: [1, 2, 3], logits: .last)
}

@main
struct Main {
    static func main() throws { try fuzzMain(reader: "model-config", fuzzOne) }
}
