import Foundation
import FuzzSupport
import QLoRA

/// A checkpoint of the tiny Llama's adapters, written once; each input replaces its
/// parameters.safetensors, with state.json's size and CRC-32 for it made to match, so the input
/// reaches the tensor reader and restore's checks instead of stopping at the checksum.
let model = try! DecoderModel(path: repositoryFile("Tests/QLoRATests/Fixtures/tiny-llama-bnb-nf4"))
let lora = try! ModelAdapters(model: model, config: LoRAConfig(rank: 2, alpha: 4), seed: 1)
nonisolated(unsafe) let optimizer = AdamW(parameters: lora.parameters)
let checkpoint = try! Checkpoint.save(TrainingState(step: 1, schedulerStep: 1), optimizer: optimizer, ema: nil,
                                      in: fuzzScratch + "/run", keepLast: 1)

/// Restoring must throw or succeed (and then hold finite values of the right shapes), never crash.
func fuzzOne(_ bytes: UnsafeRawBufferPointer) {
    _ = scratchFile("run/checkpoint-1/parameters.safetensors", bytes)
    let manifestPath = checkpoint + "/state.json"
    guard let data = FileManager.default.contents(atPath: manifestPath),
          var manifest = (try? JSONSerialization.jsonObject(with: data)) as? [String: Any],
          var files = manifest["files"] as? [String: Any] else { return }
    files["parameters.safetensors"] = ["bytes": bytes.count, "crc32": CRC32.checksum(bytes)]
    manifest["files"] = files
    guard let json = try? JSONSerialization.data(withJSONObject: manifest) else { return }
    FileManager.default.createFile(atPath: manifestPath, contents: json)
    _ = try? Checkpoint.restore(from: checkpoint, optimizer: optimizer, ema: nil)
}

@main
struct Main {
    static func main() throws { try fuzzMain(reader: "checkpoint", fuzzOne) }
}
