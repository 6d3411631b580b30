import Foundation

/// The main of a fuzz target: libFuzzer's driver when built with -DFUZZING, else a replay of
/// the inputs named on the command line.
public func fuzzMain(reader: String, _ body: @escaping (UnsafeRawBufferPointer) -> Void) throws {
    #if FUZZING
    runFuzzer(body)
    #else
    try replayInputs(Array(CommandLine.arguments.dropFirst()), reader: reader, body)
    #endif
}

/// Runs every file named on the command line (or in the folders named) through `body`: the
/// plain build of a fuzz target replays its seed corpus and any crash file this way.
public func replayInputs(_ arguments: [String], reader: String, _ body: (UnsafeRawBufferPointer) -> Void) throws {
    var n = 0
    for input in arguments {
        let paths = (try? FileManager.default.contentsOfDirectory(atPath: input).sorted().map { input + "/" + $0 }) ?? [input]
        for p in paths {
            try Data(contentsOf: URL(fileURLWithPath: p)).withUnsafeBytes { body($0) }
            n += 1
        }
    }
    print("replayed \(n) inputs through the \(reader) reader")
}

#if FUZZING
@_silgen_name("LLVMFuzzerRunDriver")
private func LLVMFuzzerRunDriver(
    _ argc: UnsafeMutablePointer<CInt>,
    _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>>,
    _ callback: @convention(c) (UnsafePointer<UInt8>?, Int) -> CInt
) -> CInt

nonisolated(unsafe) private var fuzzBody: ((UnsafeRawBufferPointer) -> Void)?

/// libFuzzer's entry for one input (its library refers to this symbol).
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzerTestOneInput(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    fuzzBody?(UnsafeRawBufferPointer(start: data, count: size))
    return 0
}

/// Hands control to libFuzzer (built with -sanitize=fuzzer -DFUZZING): SwiftPM renames an
/// executable's entry point, so the fuzz targets keep their own main and call the driver.
public func runFuzzer(_ body: @escaping (UnsafeRawBufferPointer) -> Void) -> Never {
    fuzzBody = body
    var argc = CommandLine.argc
    var argv = CommandLine.unsafeArgv
    exit(LLVMFuzzerRunDriver(&argc, &argv, fuzzerTestOneInput))
}
#endif

/// A scratch folder for readers that take paths: in /dev/shm where there is one (memory, so
/// each input costs no disk write), one per process.
public let fuzzScratch: String = {
    let base = FileManager.default.fileExists(atPath: "/dev/shm") ? "/dev/shm" : NSTemporaryDirectory()
    let dir = base + "/qlora-fuzz-\(getpid())"
    try? FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    return dir
}()

/// Writes `bytes` to `name` in the scratch folder and returns its path.
public func scratchFile(_ name: String, _ bytes: UnsafeRawBufferPointer) -> String {
    let path = fuzzScratch + "/" + name
    FileManager.default.createFile(atPath: path, contents: Data(bytes))
    return path
}

/// The repository's file at `relative`, from the repository root or from .build-fuzz (where
/// tools/fuzz.sh runs the fuzzers).
public func repositoryFile(_ relative: String) -> String {
    for prefix in ["", "../", "../../"] where FileManager.default.fileExists(atPath: prefix + relative) { return prefix + relative }
    return relative
}
