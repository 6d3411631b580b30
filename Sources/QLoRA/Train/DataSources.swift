#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import Foundation

/// Where a data set comes from: what `--data` and `--val-file` name, each one of
///
///   a file     data/train.jsonl
///   a folder   data/           every .jsonl, .json, .csv and .txt in it (not in subfolders, no
///                              hidden files), sorted by name; with a format given, every file;
///                              for preference pairs, every .jsonl and .json
///   a glob     'data/*.jsonl'  `*`, `?` and `[...]` as the shell expands them, sorted by name
///                              (a path that exists is taken as it is, brackets and all)
///
/// Sources are read in the order given, each folder or glob's files in name order, so the same
/// arguments give the same rows in the same order. In config.json a source list is a string
/// when it holds one path and a list otherwise (runs from before several `--data` wrote a string).
public struct DataSources: Codable, Sendable, Equatable, ExpressibleByStringLiteral, CustomStringConvertible {
    public var paths: [String]

    public init(_ paths: [String]) {
        precondition(!paths.isEmpty, "no data sources")
        self.paths = paths
    }

    public init(stringLiteral path: String) { paths = [path] }

    public init(from decoder: Decoder) throws {
        let c = try decoder.singleValueContainer()
        if let one = try? c.decode(String.self) { paths = [one] } else { paths = try c.decode([String].self) }
        guard !paths.isEmpty else { throw DecodingError.dataCorruptedError(in: c, debugDescription: "an empty list of data sources") }
    }

    public func encode(to encoder: Encoder) throws {
        var c = encoder.singleValueContainer()
        if paths.count == 1 { try c.encode(paths[0]) } else { try c.encode(paths) }
    }

    /// The paths as given, for messages: "data/train.jsonl" or "a.jsonl, data/*.json".
    public var description: String { paths.joined(separator: ", ") }

    /// The files the sources name, in order. A folder with no data file and a glob matching no
    /// file throw; a file is not checked here (reading it says what is wrong).
    /// - Parameters:
    ///   - format: given, a folder's files need no data extension.
    ///   - formats: the formats whose files a folder gives otherwise.
    public func files(format: SFTFormat? = nil, formats: [SFTFormat] = SFTFormat.allCases) throws(SFTDataError) -> [String] {
        let fm = FileManager.default
        func isFile(_ p: String) -> Bool {
            var folder: ObjCBool = false
            return fm.fileExists(atPath: p, isDirectory: &folder) && !folder.boolValue
        }
        var files: [String] = []
        for path in paths {
            var isFolder: ObjCBool = false
            if fm.fileExists(atPath: path, isDirectory: &isFolder) {
                guard isFolder.boolValue else { files.append(path); continue }
                let names = ((try? fm.contentsOfDirectory(atPath: path)) ?? []).sorted()
                let found = names.filter { !$0.hasPrefix(".") }.map { (path as NSString).appendingPathComponent($0) }.filter { file in
                    isFile(file) && (format != nil || SFTFormat(path: file).map(formats.contains) == true)
                }
                guard !found.isEmpty else {
                    let dotted = formats.flatMap(\.extensions).map { "." + $0 }
                    throw .noDataFiles(source: path, reason: "a folder with no " + dotted.dropLast().joined(separator: ", ") + " or " + dotted.last! + " file")
                }
                files += found
            } else if path.contains(where: { "*?[".contains($0) }) {
                let found = Self.matches(path).filter(isFile)
                guard !found.isEmpty else { throw .noDataFiles(source: path, reason: "no file matches") }
                files += found
            } else {
                files.append(path)
            }
        }
        return files
    }

    /// glob(3): the paths matching `pattern`, sorted.
    static func matches(_ pattern: String) -> [String] {
        var g = glob_t()
        defer { globfree(&g) }
        guard glob(pattern, 0, nil, &g) == 0 else { return [] }
        return (0..<Int(g.gl_pathc)).compactMap { g.gl_pathv[$0].map { String(cString: $0) } }
    }

    /// A data file's bytes, less a UTF-8 byte order mark.
    static func contents(of path: String) throws(SFTDataError) -> [UInt8] {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw .unreadable(path: path, reason: FileManager.default.fileExists(atPath: path) ? "permission denied or a folder" : "no such file")
        }
        var bytes = [UInt8](data)
        if bytes.starts(with: [0xEF, 0xBB, 0xBF]) { bytes.removeFirst(3) }
        return bytes
    }

    /// The JSON rows of a file, each with the 1-based line it starts on:
    ///
    ///   JSON Lines   one row a line; blank lines skipped
    ///   JSON array   `[row, row, ...]` laid out over lines in any way — a file not named
    ///                .jsonl whose first byte other than whitespace is `[` (a .json file from
    ///                `datasets`' to_json is JSON Lines; one from json.dump is an array)
    ///
    /// An array's elements are found by a scan that follows strings and nesting only; each
    /// element is parsed as its own row later, so a bad one is named by its line. An array
    /// never closed, an empty element (`[{…},,{…}]`, a trailing comma) or text after the
    /// closing `]` throws `.badRow`.
    static func jsonRows(_ bytes: [UInt8], path: String) throws(SFTDataError) -> [(line: Int, text: ArraySlice<UInt8>)] {
        func isSpace(_ b: UInt8) -> Bool { b == 0x20 || b == 0x09 || b == 0x0A || b == 0x0D }
        guard !path.lowercased().hasSuffix(".jsonl"), let open = bytes.firstIndex(where: { !isSpace($0) }), bytes[open] == UInt8(ascii: "[") else {
            return lines(bytes).filter { !$0.1.allSatisfy(isSpace) }.map { (line: $0.0, text: $0.1) }
        }
        var rows: [(line: Int, text: ArraySlice<UInt8>)] = []
        var line = 1 + bytes[..<open].count { $0 == 0x0A }
        let openLine = line
        var start: Int?, startLine = 0, depth = 0, inString = false, escaped = false
        func element(ending end: Int) throws(SFTDataError) {
            guard let s = start else { throw .badRow(path: path, line: line, problem: .invalidJSON(detail: "an empty element in the array (a comma too many?)")) }
            var e = end
            while e > s, isSpace(bytes[e - 1]) { e -= 1 }
            rows.append((startLine, bytes[s..<e]))
            start = nil
        }
        for i in (open + 1)..<bytes.count {
            let b = bytes[i]
            if b == 0x0A { line += 1 }
            if inString {
                if escaped { escaped = false } else if b == UInt8(ascii: "\\") { escaped = true } else if b == UInt8(ascii: "\"") { inString = false }
                continue
            }
            if isSpace(b) { continue }
            if depth == 0, b == UInt8(ascii: ",") { try element(ending: i); continue }
            if depth == 0, b == UInt8(ascii: "]") {
                if start != nil || !rows.isEmpty { try element(ending: i) }
                let rest = bytes[(i + 1)...]
                if let extra = rest.firstIndex(where: { !isSpace($0) }) {
                    throw .badRow(path: path, line: line + rest[..<extra].count { $0 == 0x0A }, problem: .invalidJSON(detail: "text after the array's closing ']'"))
                }
                return rows
            }
            if start == nil { (start, startLine) = (i, line) }
            switch b {
            case UInt8(ascii: "\""): inString = true
            case UInt8(ascii: "["), UInt8(ascii: "{"): depth += 1
            case UInt8(ascii: "]"), UInt8(ascii: "}"):
                guard depth > 0 else { throw .badRow(path: path, line: line, problem: .invalidJSON(detail: "a '}' closes nothing")) }
                depth -= 1
            default: break
            }
        }
        let inRow = inString || depth > 0
        throw .badRow(path: path, line: inRow ? startLine : openLine,
                      problem: .invalidJSON(detail: inRow ? "the file ends inside this row" : "the array opened here is never closed"))
    }

    /// The lines of `bytes` with their 1-based numbers, without "\n" or "\r\n".
    static func lines(_ bytes: [UInt8]) -> [(Int, ArraySlice<UInt8>)] {
        var out: [(Int, ArraySlice<UInt8>)] = []
        var start = 0
        for (i, b) in bytes.enumerated() where b == 0x0A {
            out.append((out.count + 1, bytes[start..<(i > start && bytes[i - 1] == 0x0D ? i - 1 : i)]))
            start = i + 1
        }
        if start < bytes.count { out.append((out.count + 1, bytes[start...])) }
        return out
    }
}
