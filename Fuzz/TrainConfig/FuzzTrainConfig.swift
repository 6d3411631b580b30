import Foundation
import FuzzSupport
import QLoRA

/// One `train --config` YAML file through the reader: it must throw (naming the file and line)
/// or give flags, never crash.
func fuzzOne(_ bytes: UnsafeRawBufferPointer) {
    _ = try? TrainConfigFile.flags(path: scratchFile("run.yaml", bytes))
}

@main
struct Main {
    static func main() throws { try fuzzMain(reader: "train-config", fuzzOne) }
}
