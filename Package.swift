// swift-tools-version:6.0
import PackageDescription

// OpenMP: the Swift toolchain's clang with Debian's libomp-dev (LLVM 14). `-fopenmp` alone
// does not find `-lomp`, so the library directory is named; omp.h is not needed because the
// kernels declare the three runtime calls they use.
let openMPLibDir = "/usr/lib/llvm-14/lib"

// The kernels are always compiled optimized (debug builds and `swift test` included) and
// without FP contraction, so that dequantization matches ggml and bitsandbytes bit for bit.
let kernelFlags: [String] = ["-O3", "-fopenmp", "-ffp-contract=off", "-fno-math-errno"]

let package = Package(
    name: "qlora",
    platforms: [.macOS(.v13)],
    products: [
        .library(name: "Quant", targets: ["Quant"]),
        .library(name: "QLoRA", targets: ["QLoRA"]),
        .executable(name: "qlora", targets: ["qlora"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/jpsim/Yams", from: "6.2.2"),
    ],
    targets: [
        .target(
            name: "QuantKernels",
            cSettings: [.unsafeFlags(kernelFlags)],
            linkerSettings: [
                .unsafeFlags(["-L\(openMPLibDir)"]),
                .linkedLibrary("omp"),
                .linkedLibrary("dl"),
            ]
        ),
        .target(name: "Quant", dependencies: ["QuantKernels"]),
        .target(name: "QLoRA", dependencies: ["Quant", "QuantKernels", .product(name: "Yams", package: "Yams")]),
        .target(name: "GEMMBench", dependencies: ["Quant"], path: "benches/GEMMBench"),
        .target(name: "ModelBench", dependencies: ["QLoRA"], path: "benches/ModelBench"),
        .target(name: "TrainBench", dependencies: ["Quant", "QLoRA", "QuantKernels"], path: "benches/TrainBench"),
        .target(name: "MemoryBench", path: "benches/MemoryBench"),
        .executableTarget(
            name: "qlora",
            dependencies: [
                "Quant", "QLoRA", "GEMMBench", "ModelBench", "TrainBench", "MemoryBench",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]
        ),
        // Tests are compiled optimized even in debug: their float64 reference loops would
        // otherwise dominate the run.
        // Fuzz targets for the file readers: plain builds replay a corpus; built with
        // -sanitize=fuzzer -DFUZZING (tools/fuzz.sh) they are libFuzzer binaries.
        .target(name: "FuzzSupport", path: "Fuzz/Support"),
        .executableTarget(name: "fuzz-gguf", dependencies: ["QLoRA", "FuzzSupport"], path: "Fuzz/GGUF"),
        .executableTarget(name: "fuzz-safetensors", dependencies: ["QLoRA", "FuzzSupport"], path: "Fuzz/Safetensors"),
        .executableTarget(name: "fuzz-tokenizer", dependencies: ["QLoRA", "FuzzSupport"], path: "Fuzz/Tokenizer"),
        .executableTarget(name: "fuzz-chat-template", dependencies: ["QLoRA", "FuzzSupport"], path: "Fuzz/ChatTemplate"),
        .executableTarget(name: "fuzz-train-config", dependencies: ["QLoRA", "FuzzSupport"], path: "Fuzz/TrainConfig"),
        .executableTarget(name: "fuzz-adapter", dependencies: ["QLoRA", "FuzzSupport"], path: "Fuzz/Adapter"),
        .executableTarget(name: "fuzz-sft-rows", dependencies: ["QLoRA", "FuzzSupport"], path: "Fuzz/SFTRows"),
        .executableTarget(name: "fuzz-checkpoint", dependencies: ["QLoRA", "FuzzSupport"], path: "Fuzz/Checkpoint"),
        .executableTarget(name: "fuzz-model-config", dependencies: ["QLoRA", "FuzzSupport"], path: "Fuzz/ModelConfig"),
        .testTarget(name: "QuantTests", dependencies: ["Quant"], resources: [.copy("Fixtures")],
                    swiftSettings: [.unsafeFlags(["-O"])]),
        .testTarget(name: "QLoRATests", dependencies: ["QLoRA"], resources: [.copy("Fixtures")], swiftSettings: [.unsafeFlags(["-O"])]),
    ]
)
