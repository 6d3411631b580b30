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
