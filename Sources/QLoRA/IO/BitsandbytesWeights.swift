import Foundation
import Quant

/// bitsandbytes' serialized 4-bit linear weights, as `Linear4bit` saves them into a
/// safetensors state dict (bitsandbytes/functional.py `QuantState.as_dict(packed=True)`,
/// nn/modules.py `Linear4bit._save_to_state_dict`). For a weight `W` = `<name>`:
/// ```
/// <name>                                   U8  [ceil(out·in / 2), 1]  packed codes, first element in the high nibble
/// <name>.absmax                            F32 [blocks]               or U8 [blocks] when double-quantized
/// <name>.quant_map                         F32 [16]                   the codebook
/// <name>.nested_absmax                     F32 [ceil(blocks / 256)]   double quantization only
/// <name>.nested_quant_map                  F32 [256]                  double quantization only
/// <name>.quant_state.bitsandbytes__<nf4|fp4>  U8 [n]   UTF-8 JSON: {"quant_type", "blocksize", "dtype",
///                                                      "shape": [out, in], "nested_blocksize", "nested_dtype", "nested_offset"}
/// ```
/// config.json carries `quantization_config` with `quant_method: "bitsandbytes"`.
public enum BitsandbytesWeights {
    public struct QuantState: Codable, Equatable, Sendable {
        public var quantType: String
        public var blocksize: Int
        public var dtype: String
        public var shape: [Int]
        public var nestedBlocksize: Int?
        public var nestedDtype: String?
        public var nestedOffset: Double?

        enum CodingKeys: String, CodingKey {
            case quantType = "quant_type", blocksize, dtype, shape
            case nestedBlocksize = "nested_blocksize", nestedDtype = "nested_dtype", nestedOffset = "nested_offset"
        }
    }

    static func stateKey(_ name: String, _ format: QuantFormat) -> String { "\(name).quant_state.bitsandbytes__\(format.rawValue)" }

    /// The 4-bit weight `name` of a folder, borrowing the packed codes from the mapped file
    /// (the small statistics are copied, aligned). nil when `name` is not stored 4-bit.
    public static func read(_ folder: HuggingFaceFolder, name: String) throws -> QuantizedMatrix? {
        guard let (file, packed) = folder.tensor(name), packed.dtype == .U8 else { return nil }
        let format: QuantFormat
        let stateEntry: (file: SafetensorsFile, tensor: SafetensorsTensor)
        if let s = folder.tensor(stateKey(name, .nf4)) { (format, stateEntry) = (.nf4, s) }
        else if let s = folder.tensor(stateKey(name, .fp4)) { (format, stateEntry) = (.fp4, s) }
        else { return nil }
        let state: QuantState
        do {
            state = try JSONDecoder().decode(QuantState.self, from: Data(stateEntry.file.data(of: stateEntry.tensor)))
        } catch {
            throw BitsandbytesError.badQuantState(tensor: stateEntry.tensor.name, detail: "\(error)")
        }
        guard state.shape.count == 2, state.quantType == format.rawValue else {
            throw BitsandbytesError.badQuantState(tensor: stateEntry.tensor.name, detail: "shape \(state.shape), quant_type \(state.quantType)")
        }
        func tensor(_ suffix: String) throws -> (SafetensorsFile, SafetensorsTensor) {
            guard let t = folder.tensor(name + suffix) else { throw BitsandbytesError.missingTensor(name + suffix) }
            return t
        }
        func floats(_ suffix: String) throws -> ByteStorage {
            let (f, t) = try tensor(suffix)
            guard t.dtype == .F32 else { throw BitsandbytesError.wrongDType(tensor: t.name, dtype: t.dtype.rawValue, expected: "F32") }
            return ByteStorage(copying: f.data(of: t))
        }
        let scales: QuantizedMatrix.Scales
        let (absmaxFile, absmax) = try tensor(".absmax")
        if absmax.dtype == .U8 {
            guard state.nestedBlocksize == QuantizedMatrix.DoubleQuantized.nestedBlockSize, let offset = state.nestedOffset else {
                throw BitsandbytesError.badQuantState(tensor: stateEntry.tensor.name, detail: "double-quantized absmax without nested_blocksize 256 and nested_offset")
            }
            scales = .doubleQuantized(.init(codes: ByteStorage(copying: absmaxFile.data(of: absmax)), offset: Float(offset),
                                            nestedAbsmax: try floats(".nested_absmax"), nestedCode: try floats(".nested_quant_map")))
        } else {
            scales = .absmax(try floats(".absmax"))
        }
        do {
            return try QuantizedMatrix(rows: state.shape[0], cols: state.shape[1], format: format, blockSize: state.blocksize,
                                       data: ByteStorage(borrowing: file.data(of: packed), owner: file), scales: scales,
                                       code: try floats(".quant_map"))
        } catch let e as QuantError {
            throw BitsandbytesError.inconsistent(tensor: name, detail: e.description)
        }
    }

    /// The state-dict entries of a 4-bit matrix, in bitsandbytes' order, with their bytes.
    /// `dtype` is the torch dtype name of the original weight ("float32", "bfloat16", ...).
    public static func entries(name: String, matrix m: QuantizedMatrix, dtype: String) -> [(SafetensorsWriter.TensorSpec, [UInt8])] {
        var out: [(SafetensorsWriter.TensorSpec, [UInt8])] = [
            (.init(name: name, dtype: .U8, shape: [m.data.count, 1]), Array(m.data.bytes)),
        ]
        var state = QuantState(quantType: m.format.rawValue, blocksize: m.blockSize, dtype: dtype, shape: [m.rows, m.cols])
        switch m.scales {
        case let .absmax(a):
            out.append((.init(name: name + ".absmax", dtype: .F32, shape: [m.blockCount]), Array(a.bytes)))
            out.append((.init(name: name + ".quant_map", dtype: .F32, shape: [16]), Array(m.code!.bytes)))
        case let .doubleQuantized(dq):
            out.append((.init(name: name + ".absmax", dtype: .U8, shape: [m.blockCount]), Array(dq.codes.bytes)))
            out.append((.init(name: name + ".quant_map", dtype: .F32, shape: [16]), Array(m.code!.bytes)))
            out.append((.init(name: name + ".nested_absmax", dtype: .F32, shape: [dq.nestedAbsmax.count / 4]), Array(dq.nestedAbsmax.bytes)))
            out.append((.init(name: name + ".nested_quant_map", dtype: .F32, shape: [256]), Array(dq.nestedCode.bytes)))
            state.nestedBlocksize = QuantizedMatrix.DoubleQuantized.nestedBlockSize
            state.nestedDtype = "float32"
            state.nestedOffset = Double(dq.offset)
        case .inBlocks:
            preconditionFailure("ggml formats are not stored the bitsandbytes way")
        }
        let json = stateJSON(state)
        out.append((.init(name: stateKey(name, m.format), dtype: .U8, shape: [json.count]), json))
        return out
    }

    /// The quant state as Python's json.dumps writes it (keys in bitsandbytes' order), padded
    /// with trailing spaces to a length that does not depend on the offset's digits (JSON
    /// allows them), so a file's header can be laid out before its weights are quantized.
    static func stateJSON(_ s: QuantState) -> [UInt8] {
        var bytes = Array(unpaddedJSON(s, offset: s.nestedOffset.map { "\($0)" }).utf8)
        let width = unpaddedJSON(s, offset: s.nestedOffset.map { _ in String(repeating: "0", count: 26) }).utf8.count
        while bytes.count < width { bytes.append(0x20) }
        return bytes
    }

    private static func unpaddedJSON(_ s: QuantState, offset: String?) -> String {
        var parts = ["\"quant_type\": \"\(s.quantType)\"", "\"blocksize\": \(s.blocksize)", "\"dtype\": \"\(s.dtype)\"",
                     "\"shape\": [\(s.shape.map(String.init).joined(separator: ", "))]"]
        if let nb = s.nestedBlocksize, let nd = s.nestedDtype, let offset {
            parts += ["\"nested_blocksize\": \(nb)", "\"nested_dtype\": \"\(nd)\"", "\"nested_offset\": \(offset)"]
        }
        return "{\(parts.joined(separator: ", "))}"
    }

    /// The tensor specs `entries` will produce for a matrix of this shape and format, known
    /// before quantizing.
    public static func specs(name: String, rows: Int, cols: Int, format: QuantFormat, blockSize: Int, doubleQuant: Bool,
                             dtype: String) -> [SafetensorsWriter.TensorSpec] {
        let blocks = (rows * cols + blockSize - 1) / blockSize
        var specs: [SafetensorsWriter.TensorSpec] = [
            .init(name: name, dtype: .U8, shape: [(rows * cols + 1) / 2, 1]),
            .init(name: name + ".absmax", dtype: doubleQuant ? .U8 : .F32, shape: [blocks]),
            .init(name: name + ".quant_map", dtype: .F32, shape: [16]),
        ]
        var state = QuantState(quantType: format.rawValue, blocksize: blockSize, dtype: dtype, shape: [rows, cols])
        if doubleQuant {
            let nested = (blocks + QuantizedMatrix.DoubleQuantized.nestedBlockSize - 1) / QuantizedMatrix.DoubleQuantized.nestedBlockSize
            specs.append(.init(name: name + ".nested_absmax", dtype: .F32, shape: [nested]))
            specs.append(.init(name: name + ".nested_quant_map", dtype: .F32, shape: [256]))
            state.nestedBlocksize = QuantizedMatrix.DoubleQuantized.nestedBlockSize
            state.nestedDtype = "float32"
            state.nestedOffset = 0
        }
        specs.append(.init(name: stateKey(name, format), dtype: .U8, shape: [stateJSON(state).count]))
        return specs
    }
}

public enum BitsandbytesError: Error, Equatable, CustomStringConvertible {
    case missingTensor(String)
    case wrongDType(tensor: String, dtype: String, expected: String)
    case badQuantState(tensor: String, detail: String)
    case inconsistent(tensor: String, detail: String)

    public var description: String {
        switch self {
        case let .missingTensor(name): "bitsandbytes weights: tensor '\(name)' is missing"
        case let .wrongDType(tensor, dtype, expected): "bitsandbytes weights: '\(tensor)' is \(dtype), expected \(expected)"
        case let .badQuantState(tensor, detail): "bitsandbytes weights: '\(tensor)': \(detail)"
        case let .inconsistent(tensor, detail): "bitsandbytes weights: '\(tensor)': \(detail)"
        }
    }
}
