import Foundation

/// JSON in and out of template values.
///
///   in   JinjaValue(json:) parses JSON text keeping the key order of objects (tools and
///        tool-call arguments are written back by tojson in the order they came) and the
///        int/float distinction (1 stays 1, 1.0 stays 1.0), as Python's json.loads does
///   out  tojson writes what transformers' tojson filter writes: Python's
///        json.dumps(x, ensure_ascii=False, indent=indent, separators=separators, sort_keys=…),
///        separators ", " and ": " without indent, "," and ": " with it
extension JinjaValue {
    public init(json text: String) throws(JinjaError) {
        var p = JSONTextReader(scalars: Array(text.unicodeScalars))
        p.skipSpace()
        self = try p.value()
        p.skipSpace()
        guard p.at == p.scalars.count else { throw p.error("extra text after the JSON value") }
    }

    /// Python's json.dumps with transformers' defaults (ensure_ascii=False).
    func json(indent: String?, itemSeparator: String?, keySeparator: String?, sortKeys: Bool, depth: Int = 0) throws(JinjaError) -> String {
        let item = itemSeparator ?? (indent == nil ? ", " : ","), key = keySeparator ?? ": "
        func newline(_ d: Int) -> String { indent.map { "\n" + String(repeating: $0, count: d) } ?? "" }
        switch self {
        case .none, .undefined: return "null"
        case let .bool(b): return b ? "true" : "false"
        case let .int(i): return String(i)
        case let .double(d):
            if d.isNaN { return "NaN" }
            if d.isInfinite { return d < 0 ? "-Infinity" : "Infinity" }
            return Self.pythonFloat(d)
        case let .string(s): return Self.jsonString(s)
        case let .list(l):
            guard !l.isEmpty else { return "[]" }
            var parts: [String] = []
            for v in l { parts.append(try v.json(indent: indent, itemSeparator: itemSeparator, keySeparator: keySeparator, sortKeys: sortKeys, depth: depth + 1)) }
            return "[" + newline(depth + 1) + parts.joined(separator: item + newline(depth + 1)) + newline(depth) + "]"
        case .dict, .namespace:
            let d: JinjaDict
            if case let .namespace(n) = self { d = n.attributes } else if case let .dict(x) = self { d = x } else { d = JinjaDict() }
            guard !d.isEmpty else { return "{}" }
            var parts: [String] = []
            for k in sortKeys ? d.keys.sorted() : d.keys {
                parts.append(Self.jsonString(k) + key + (try d[k]!.json(indent: indent, itemSeparator: itemSeparator, keySeparator: keySeparator, sortKeys: sortKeys, depth: depth + 1)))
            }
            return "{" + newline(depth + 1) + parts.joined(separator: item + newline(depth + 1)) + newline(depth) + "}"
        case .macro, .builtin:
            throw JinjaError(.runtime("Object of type \(typeName) is not JSON serializable"))
        }
    }

    /// A JSON string as json.dumps(ensure_ascii=False) writes it: ", \ and control characters escaped.
    static func jsonString(_ s: String) -> String {
        var out = "\""
        for c in s.unicodeScalars {
            switch c {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            case "\u{08}": out += "\\b"
            case "\u{0C}": out += "\\f"
            default:
                if c.value < 0x20 { out += String(format: "\\u%04x", c.value) } else { out.unicodeScalars.append(c) }
            }
        }
        return out + "\""
    }
}

/// A small JSON reader into `JinjaValue`, strict as RFC 8259.
private struct JSONTextReader {
    let scalars: [Unicode.Scalar]
    var at = 0

    func error(_ what: String) -> JinjaError { JinjaError(.runtime("invalid JSON at character \(at): \(what)")) }

    mutating func skipSpace() { while at < scalars.count, [" ", "\n", "\r", "\t"].contains(scalars[at]) { at += 1 } }

    mutating func literal(_ word: String, _ v: JinjaValue) throws(JinjaError) -> JinjaValue {
        let w = Array(word.unicodeScalars)
        guard at + w.count <= scalars.count, Array(scalars[at..<at + w.count]) == w else { throw error("expected \(word)") }
        at += w.count
        return v
    }

    mutating func value() throws(JinjaError) -> JinjaValue {
        guard at < scalars.count else { throw error("unexpected end") }
        switch scalars[at] {
        case "{":
            at += 1
            var d = JinjaDict()
            skipSpace()
            if at < scalars.count, scalars[at] == "}" { at += 1; return .dict(d) }
            while true {
                skipSpace()
                guard at < scalars.count, scalars[at] == "\"" else { throw error("expected a key") }
                let k = try string()
                skipSpace()
                guard at < scalars.count, scalars[at] == ":" else { throw error("expected ':'") }
                at += 1
                skipSpace()
                d[k] = try value()
                skipSpace()
                guard at < scalars.count else { throw error("unexpected end") }
                if scalars[at] == "," { at += 1; continue }
                guard scalars[at] == "}" else { throw error("expected ',' or '}'") }
                at += 1
                return .dict(d)
            }
        case "[":
            at += 1
            var l: [JinjaValue] = []
            skipSpace()
            if at < scalars.count, scalars[at] == "]" { at += 1; return .list(l) }
            while true {
                skipSpace()
                l.append(try value())
                skipSpace()
                guard at < scalars.count else { throw error("unexpected end") }
                if scalars[at] == "," { at += 1; continue }
                guard scalars[at] == "]" else { throw error("expected ',' or ']'") }
                at += 1
                return .list(l)
            }
        case "\"": return .string(try string())
        case "t": return try literal("true", .bool(true))
        case "f": return try literal("false", .bool(false))
        case "n": return try literal("null", .none)
        default: return try number()
        }
    }

    mutating func number() throws(JinjaError) -> JinjaValue {
        let start = at
        var isFloat = false
        while at < scalars.count, "+-0123456789.eE".unicodeScalars.contains(scalars[at]) {
            if ".eE".unicodeScalars.contains(scalars[at]) { isFloat = true }
            at += 1
        }
        let text = String(String.UnicodeScalarView(scalars[start..<at]))
        if !isFloat, let i = Int(text) { return .int(i) }
        guard !text.isEmpty, let d = Double(text) else { throw error("expected a value") }
        return .double(d)
    }

    mutating func string() throws(JinjaError) -> String {
        at += 1
        var out = String.UnicodeScalarView()
        while at < scalars.count {
            let c = scalars[at]
            at += 1
            if c == "\"" { return String(out) }
            guard c == "\\" else { out.append(c); continue }
            guard at < scalars.count else { break }
            let e = scalars[at]
            at += 1
            switch e {
            case "n": out.append("\n")
            case "t": out.append("\t")
            case "r": out.append("\r")
            case "b": out.append("\u{08}")
            case "f": out.append("\u{0C}")
            case "u":
                var code = try hex4()
                if (0xD800..<0xDC00).contains(code), at + 1 < scalars.count, scalars[at] == "\\", scalars[at + 1] == "u" {
                    at += 2
                    let low = try hex4()
                    code = 0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00)
                }
                guard let u = Unicode.Scalar(code) else { throw error("bad \\u escape") }
                out.append(u)
            default: out.append(e)
            }
        }
        throw error("unterminated string")
    }

    mutating func hex4() throws(JinjaError) -> UInt32 {
        guard at + 4 <= scalars.count, let v = UInt32(String(String.UnicodeScalarView(scalars[at..<at + 4])), radix: 16) else { throw error("bad \\u escape") }
        at += 4
        return v
    }
}
