import Foundation

/// Training checkpoints in a run directory, one directory per save:
///
///     <run>/checkpoint-<step>/
///         parameters.safetensors   F32, one tensor per Parameter, named Parameter.name, its shape
///         optimizer.safetensors    F32 `<name>.exp_avg`, `<name>.exp_avg_sq`, each the parameter's shape
///         ema.safetensors          F32 `<name>`: the EMA shadows (only when the run has an EMA)
///         data-state.json          TrainingState.dataState, byte for byte
///         state.json               Manifest: format version, step, optimizer step, scheduler step,
///                                  RNG states, hyperparameters, and {bytes, crc32} of every file above
///
/// Saving writes everything into `<run>/.checkpoint-<step>.tmp-<pid>`, fsyncs each file and
/// that directory, renames it to `checkpoint-<step>` and fsyncs the run directory
/// (StagedOutput.Directory); only then are older checkpoints beyond `keepLast` deleted. A kill
/// at any moment therefore leaves the previous checkpoints untouched and the new one either
/// absent (a dot-named directory, ignored, removed by a later save once its process is gone)
/// or complete.
///
/// A checkpoint counts only when `state.json` decodes and every file it lists has its recorded
/// size and CRC-32 (`verify`), so a directory damaged after the fact is skipped by `latest(in:)`,
/// which falls back to the newest one that still verifies. One trainer per run directory.
public enum Checkpoint {
    public static let formatVersion = 1

    static let parametersFile = "parameters.safetensors"
    static let optimizerFile = "optimizer.safetensors"
    static let emaFile = "ema.safetensors"
    static let dataStateFile = "data-state.json"
    static let manifestFile = "state.json"

    struct FileDigest: Codable, Equatable {
        var bytes: Int
        var crc32: UInt32
    }

    /// state.json, written last.
    struct Manifest: Codable {
        var formatVersion: Int
        var step: Int
        var optimizerStep: Int
        var schedulerStep: Int
        var rngStates: [String: UInt64]
        var hyperparameters: AdamW.Hyperparameters
        var emaBeta: Double?
        var emaEvery: Int?
        var files: [String: FileDigest]

        enum CodingKeys: String, CodingKey {
            case formatVersion = "format_version", step, optimizerStep = "optimizer_step", schedulerStep = "scheduler_step"
            case rngStates = "rng_states", hyperparameters = "adamw", emaBeta = "ema_beta", emaEvery = "ema_every", files
        }
    }

    // MARK: Saving

    /// Writes `checkpoint-<state.step>` into `runDirectory` (created if needed) from the
    /// optimizer's parameters and moments and the EMA's shadows, then keeps only the
    /// `keepLast` newest complete checkpoints (the new one among them). Returns its path.
    @discardableResult
    public static func save(_ state: TrainingState, optimizer: AdamW, ema: EMA?, in runDirectory: String, keepLast: Int) throws -> String {
        precondition(keepLast >= 1, "Checkpoint.save: keepLast \(keepLast)")
        precondition(state.step >= 0, "Checkpoint.save: step \(state.step)")
        precondition(ema.map { !$0.isSwappedIn } ?? true, "Checkpoint.save with the EMA weights swapped in")
        let fm = FileManager.default
        do {
            try fm.createDirectory(atPath: runDirectory, withIntermediateDirectories: true)
        } catch {
            throw CheckpointError.cannotWrite(path: runDirectory, reason: "\(error)")
        }
        removeTemporaries(in: runDirectory)

        let final = join(runDirectory, RunLayout.checkpoint(step: state.step))
        let staged = try cannotWrite { try StagedOutput.Directory(for: final, hidden: true) }
        try staged.write { tmp in try write(state, optimizer: optimizer, ema: ema, into: tmp) }
        prune(runDirectory, keeping: state.step, keepLast: keepLast)
        return final
    }

    /// The checkpoint's files and manifest, into the staging folder `tmp`.
    private static func write(_ state: TrainingState, optimizer: AdamW, ema: EMA?, into tmp: String) throws {
        var files: [String: FileDigest] = [:]
        let params = optimizer.parameters
        files[parametersFile] = try writeTensors(join(tmp, parametersFile),
                                                 params.map { ($0.name, $0.shape, $0.value) })
        files[optimizerFile] = try writeStates(join(tmp, optimizerFile), optimizer)
        if let ema {
            files[emaFile] = try writeTensors(join(tmp, emaFile), zip(ema.parameters, ema.shadows).map { ($0.name, $0.shape, $1) })
        }
        try AtomicFile.write(to: join(tmp, dataStateFile), bytes: [UInt8](state.dataState))
        files[dataStateFile] = FileDigest(bytes: state.dataState.count, crc32: state.dataState.withUnsafeBytes { CRC32.checksum($0) })

        let manifest = Manifest(formatVersion: formatVersion, step: state.step, optimizerStep: optimizer.step,
                                schedulerStep: state.schedulerStep, rngStates: state.rngStates,
                                hyperparameters: optimizer.hyperparameters, emaBeta: ema?.beta, emaEvery: ema?.every, files: files)
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .prettyPrinted]
        try AtomicFile.write(to: join(tmp, manifestFile), bytes: [UInt8](try encoder.encode(manifest)))
    }

    /// One safetensors file of F32 tensors; returns its size and CRC-32 as read back.
    private static func writeTensors(_ path: String, _ tensors: [(name: String, shape: [Int], data: FloatBuffer)]) throws -> FileDigest {
        var writer = SafetensorsWriter()
        writer.metadata["qlora"] = "checkpoint v\(formatVersion)"
        writer.tensors = tensors.map { .init(name: $0.name, dtype: .F32, shape: $0.shape) }
        try writer.write(to: path) { i in
            let b = tensors[i].data
            return [UInt8](UnsafeRawBufferPointer(start: b.base, count: b.count * MemoryLayout<Float>.size))
        }
        let file = try MappedFile(path: path)
        return FileDigest(bytes: file.count, crc32: CRC32.checksum(file.bytes))
    }

    /// The optimizer's moments: F32 `<name>.exp_avg` and `.exp_avg_sq` of the parameter's shape;
    /// for 8-bit ones (`AdamW.Kind.adamw8bit`) U8 `<name>.exp_avg.codes` [n] and F32
    /// `<name>.exp_avg.absmax` [blocks], the same for exp_avg_sq.
    private static func writeStates(_ path: String, _ optimizer: AdamW) throws -> FileDigest {
        var writer = SafetensorsWriter()
        writer.metadata["qlora"] = "checkpoint v\(formatVersion)"
        writer.metadata["optimizer"] = optimizer.kind.rawValue
        var data: [[UInt8]] = []
        func floats(_ p: UnsafePointer<Float>, _ n: Int) -> [UInt8] { [UInt8](UnsafeRawBufferPointer(start: p, count: n * MemoryLayout<Float>.size)) }
        for (i, p) in optimizer.parameters.enumerated() {
            if let b = optimizer.blockwise[i] {
                for (suffix, codes, absmax) in [(".exp_avg", b.codes1, b.absmax1), (".exp_avg_sq", b.codes2, b.absmax2)] {
                    writer.tensors.append(.init(name: p.name + suffix + ".codes", dtype: .U8, shape: [codes.count]))
                    data.append(codes)
                    writer.tensors.append(.init(name: p.name + suffix + ".absmax", dtype: .F32, shape: [absmax.count]))
                    data.append(absmax.withUnsafeBufferPointer { floats($0.baseAddress!, $0.count) })
                }
            } else {
                for (suffix, buffer) in [(".exp_avg", optimizer.expAvg[i]), (".exp_avg_sq", optimizer.expAvgSq[i])] {
                    writer.tensors.append(.init(name: p.name + suffix, dtype: .F32, shape: p.shape))
                    data.append(floats(buffer.base, buffer.count))
                }
            }
        }
        try writer.write(to: path) { data[$0] }
        let file = try MappedFile(path: path)
        return FileDigest(bytes: file.count, crc32: CRC32.checksum(file.bytes))
    }

    /// Removes what interrupted saves of processes now gone left, for any step:
    /// `.checkpoint-<n>.tmp-<pid>` and `.checkpoint-<n>.old-<pid>` (StagedOutput.removeStale).
    static func removeTemporaries(in runDirectory: String) {
        let entries = (try? FileManager.default.contentsOfDirectory(atPath: runDirectory)) ?? []
        let steps = Set(entries.compactMap { e -> Int? in
            let hidden = "." + RunLayout.checkpointPrefix
            guard e.hasPrefix(hidden) else { return nil }
            return Int(e.dropFirst(hidden.count).prefix { $0.isASCII && $0.isNumber })
        })
        for step in steps.sorted() { StagedOutput.removeStale(for: join(runDirectory, RunLayout.checkpoint(step: step)), hidden: true) }
    }

    /// Keeps the checkpoint of `step` and the `keepLast − 1` newest other complete ones;
    /// deletes every other `checkpoint-<n>`, complete or not.
    static func prune(_ runDirectory: String, keeping step: Int, keepLast: Int) {
        let others = checkpoints(in: runDirectory).filter { $0.step != step }
        let kept = Set(others.filter { (try? verify($0.path)) != nil }.prefix(keepLast - 1).map(\.step))
        for c in others where !kept.contains(c.step) {
            try? FileManager.default.removeItem(atPath: c.path)
        }
    }

    // MARK: Loading

    /// Every `checkpoint-<n>` directory in the run directory, newest first, complete or not.
    public static func checkpoints(in runDirectory: String) -> [(step: Int, path: String)] {
        let entries = (try? FileManager.default.contentsOfDirectory(atPath: runDirectory)) ?? []
        return entries.compactMap { e -> (step: Int, path: String)? in
            RunLayout.checkpointStep(e).map { ($0, join(runDirectory, e)) }
        }.sorted { $0.step > $1.step }
    }

    /// The path of the newest checkpoint that verifies, or nil when there is none.
    public static func latest(in runDirectory: String) -> String? {
        checkpoints(in: runDirectory).first { (try? verify($0.path)) != nil }?.path
    }

    /// The checkpoints newer than `path` (all of them when nil) that do not verify, newest
    /// first, each with what is wrong: what a resume from `path` skipped.
    public static func damaged(in runDirectory: String, newerThan path: String?) -> [(path: String, reason: String)] {
        let step = path.flatMap { RunLayout.checkpointStep(($0 as NSString).lastPathComponent) } ?? -1
        return checkpoints(in: runDirectory).filter { $0.step > step }.compactMap { c in
            do {
                try verify(c.path)
                return nil
            } catch {
                return (c.path, "\(error)")
            }
        }
    }

    /// Checks that the checkpoint is whole: state.json decodes, has this format version and
    /// the directory's step, and every file it lists has its recorded size and CRC-32.
    @discardableResult
    static func verify(_ path: String) throws -> Manifest {
        let manifestPath = join(path, manifestFile)
        guard let data = FileManager.default.contents(atPath: manifestPath) else {
            throw CheckpointError.incomplete(path: path, reason: "no readable \(manifestFile)")
        }
        let manifest: Manifest
        do {
            manifest = try JSONDecoder().decode(Manifest.self, from: data)
        } catch {
            throw CheckpointError.incomplete(path: path, reason: "\(manifestFile) does not decode: \(error)")
        }
        guard manifest.formatVersion == formatVersion else {
            throw CheckpointError.unsupportedFormat(path: path, version: manifest.formatVersion, supported: formatVersion)
        }
        guard (path as NSString).lastPathComponent == RunLayout.checkpoint(step: manifest.step) else {
            throw CheckpointError.incomplete(path: path, reason: "\(manifestFile) is for step \(manifest.step)")
        }
        for required in [parametersFile, optimizerFile, dataStateFile] where manifest.files[required] == nil {
            throw CheckpointError.incomplete(path: path, reason: "\(manifestFile) lists no \(required)")
        }
        for (name, digest) in manifest.files.sorted(by: { $0.key < $1.key }) {
            let file: MappedFile
            do {
                file = try MappedFile(path: join(path, name))
            } catch {
                throw CheckpointError.incomplete(path: path, reason: "\(name): \(error)")
            }
            guard file.count == digest.bytes else {
                throw CheckpointError.incomplete(path: path, reason: "\(name) has \(file.count) bytes, \(digest.bytes) were written")
            }
            let crc = CRC32.checksum(file.bytes)
            guard crc == digest.crc32 else {
                throw CheckpointError.incomplete(path: path, reason: "\(name) has CRC-32 \(hex(crc)), \(hex(digest.crc32)) was written")
            }
        }
        return manifest
    }

    /// Verifies the checkpoint at `path`, then restores bit for bit the parameters and moments
    /// of `optimizer`, its step, and the shadows of `ema`, and returns the rest of the state.
    /// Every tensor is read and checked before anything is overwritten, so on a throw the
    /// objects are as they were.
    public static func restore(from path: String, optimizer: AdamW, ema: EMA?) throws -> TrainingState {
        precondition(ema.map { !$0.isSwappedIn } ?? true, "Checkpoint.restore with the EMA weights swapped in")
        let manifest = try verify(path)
        let params = optimizer.parameters
        let values = try readTensors(join(path, parametersFile), params.map { ($0.name, $0.shape) })
        let moments = try readTensors(join(path, optimizerFile),
                                      params.indices.flatMap { i -> [(name: String, shape: [Int])] in
                                          let p = params[i]
                                          if let b = optimizer.blockwise[i] {
                                              return [".exp_avg", ".exp_avg_sq"].flatMap { [(p.name + $0 + ".codes", [b.count]), (p.name + $0 + ".absmax", [b.absmax1.count])] }
                                          }
                                          return [(p.name + ".exp_avg", p.shape), (p.name + ".exp_avg_sq", p.shape)]
                                      })
        var shadows: [[Float]]?
        if let ema {
            guard manifest.files[emaFile] != nil else { throw CheckpointError.incomplete(path: path, reason: "no \(emaFile): the run had no EMA") }
            shadows = try readTensors(join(path, emaFile), ema.parameters.map { ($0.name, $0.shape) })
        }
        let dataState = try Data(contentsOf: URL(fileURLWithPath: join(path, dataStateFile)))

        var next = 0
        for (i, p) in params.enumerated() {
            p.setValues(values[i])
            if let b = optimizer.blockwise[i] {
                b.codes1 = moments[next].map { UInt8($0) }
                b.absmax1 = moments[next + 1]
                b.codes2 = moments[next + 2].map { UInt8($0) }
                b.absmax2 = moments[next + 3]
                next += 4
            } else {
                copy(moments[next], into: optimizer.expAvg[i])
                copy(moments[next + 1], into: optimizer.expAvgSq[i])
                next += 2
            }
        }
        optimizer.step = manifest.optimizerStep
        if let ema, let shadows {
            for (s, b) in zip(shadows, ema.shadows) { copy(s, into: b) }
        }
        return TrainingState(step: manifest.step, schedulerStep: manifest.schedulerStep, rngStates: manifest.rngStates, dataState: dataState)
    }

    /// The F32 tensors named in `expected`, in that order; the file must hold exactly those.
    private static func readTensors(_ path: String, _ expected: [(name: String, shape: [Int])]) throws -> [[Float]] {
        let file = try SafetensorsFile(path: path)
        let unexpected = Set(file.tensors.map(\.name)).subtracting(expected.map(\.name))
        guard unexpected.isEmpty else { throw CheckpointError.unexpectedTensors(path: path, names: unexpected.sorted()) }
        return try expected.map { e in
            guard let t = file.tensor(e.name) else { throw CheckpointError.missingTensor(path: path, tensor: e.name) }
            // 8-bit optimizer codes are U8 (`.codes`), read as their values.
            let dtype: SafetensorsDType = e.name.hasSuffix(".codes") ? .U8 : .F32
            guard t.dtype == dtype, t.shape == e.shape else {
                throw CheckpointError.wrongTensor(path: path, tensor: e.name, detail: "\(t.dtype.rawValue) \(t.shape), expected \(dtype.rawValue) \(e.shape)")
            }
            if dtype == .U8 { return file.data(of: t).map { Float($0) } }
            return try file.floats(t)
        }
    }

    private static func copy(_ values: [Float], into buffer: FloatBuffer) {
        precondition(values.count == buffer.count)
        values.withUnsafeBufferPointer { buffer.base.update(from: $0.baseAddress!, count: values.count) }
    }

    // MARK: Files

    static func join(_ dir: String, _ name: String) -> String { (dir as NSString).appendingPathComponent(name) }

    private static func hex(_ v: UInt32) -> String { "0x" + String(v, radix: 16) }

    /// Staging, renaming and syncing failures as the checkpoint's own error.
    private static func cannotWrite<T>(_ body: () throws -> T) throws -> T {
        do {
            return try body()
        } catch let FileError.cannotWrite(path, reason) {
            throw CheckpointError.cannotWrite(path: path, reason: reason)
        }
    }
}

public enum CheckpointError: Error, Equatable, CustomStringConvertible {
    /// A file is missing, short, damaged, or state.json does not decode: the save did not finish.
    case incomplete(path: String, reason: String)
    case unsupportedFormat(path: String, version: Int, supported: Int)
    case missingTensor(path: String, tensor: String)
    /// Tensors the run does not have: the checkpoint is from a different set of parameters.
    case unexpectedTensors(path: String, names: [String])
    case wrongTensor(path: String, tensor: String, detail: String)
    case cannotWrite(path: String, reason: String)

    public var description: String {
        switch self {
        case let .incomplete(path, reason): "\(path): incomplete checkpoint: \(reason)"
        case let .unsupportedFormat(path, version, supported): "\(path): checkpoint format \(version); this qlora reads \(supported)"
        case let .missingTensor(path, tensor): "\(path): no tensor '\(tensor)' (was the checkpoint made with other LoRA targets or rank?)"
        case let .unexpectedTensors(path, names):
            "\(path): tensors this run does not have: \(names.prefix(5).joined(separator: ", "))\(names.count > 5 ? ", …" : "")"
        case let .wrongTensor(path, tensor, detail): "\(path): tensor '\(tensor)' is \(detail)"
        case let .cannotWrite(path, reason): "\(path): cannot write checkpoint: \(reason)"
        }
    }
}
