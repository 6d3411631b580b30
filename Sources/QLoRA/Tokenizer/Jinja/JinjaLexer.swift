import Foundation

/// One token of an expression inside `{{ }}` or `{% %}`; `at` is its scalar offset.
struct JinjaToken: Equatable {
    enum Kind: Equatable { case name, string, int, double, op }
    let kind: Kind
    let text: String
    let at: Int
}

/// The template cut into literal text, `{{ expression }}` and `{% tag %}`, with whitespace
/// control already applied, as Jinja2's lexer applies it under transformers' environment
/// (trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=False):
///
///   {%- / {{- / {#-   strip all whitespace (newlines included) before the tag
///   -%} / -}} / -#}   strip all whitespace after it
///   trim_blocks       the first newline after %} or #} is dropped
///   lstrip_blocks     spaces and tabs from the start of a line up to {% or {# are dropped
///                     ({%+ keeps them; {{ is never lstripped)
///   +%}               keeps the newline trim_blocks would drop
/// "\r\n" and "\r" read as "\n", and one newline at the end of the template is dropped.
/// Comments vanish.
enum JinjaPiece {
    case text(String)
    case output([JinjaToken], at: Int)
    case tag([JinjaToken], at: Int)
}

struct JinjaLexer {
    let scalars: [Unicode.Scalar]

    init(_ source: String) {
        var s = source.replacingOccurrences(of: "\r\n", with: "\n").replacingOccurrences(of: "\r", with: "\n")
        if s.hasSuffix("\n") { s.removeLast() }
        scalars = Array(s.unicodeScalars)
    }

    func string(_ r: Range<Int>) -> String { String(String.UnicodeScalarView(scalars[r])) }

    func starts(with s: String, at i: Int) -> Bool {
        var j = i
        for c in s.unicodeScalars {
            guard j < scalars.count, scalars[j] == c else { return false }
            j += 1
        }
        return true
    }

    static func isSpace(_ c: Unicode.Scalar) -> Bool { c.properties.isWhitespace }

    func pieces() throws(JinjaError) -> [JinjaPiece] {
        var out: [JinjaPiece] = []
        var pos = 0
        var lineStarting = true
        while pos < scalars.count {
            // The next {{, {% or {#.
            var tag = pos
            while tag + 1 < scalars.count, !(scalars[tag] == "{" && ["{", "%", "#"].contains(scalars[tag + 1])) { tag += 1 }
            guard tag + 1 < scalars.count else {
                out.append(.text(string(pos..<scalars.count)))
                break
            }
            let kind = scalars[tag + 1]
            var bodyStart = tag + 2
            let sign: Unicode.Scalar? = bodyStart < scalars.count && (scalars[bodyStart] == "-" || scalars[bodyStart] == "+") ? scalars[bodyStart] : nil
            if sign != nil { bodyStart += 1 }
            var text = Array(scalars[pos..<tag])
            if sign == "-" {
                while let last = text.last, Self.isSpace(last) { text.removeLast() }
            } else if sign != "+", kind != "{" {
                let lineStart = (text.lastIndex(of: "\n") ?? -1) + 1
                if lineStart > 0 || lineStarting, text[lineStart...].allSatisfy({ $0 == " " || $0 == "\t" }) { text.removeSubrange(lineStart...) }
            }
            if !text.isEmpty { out.append(.text(String(String.UnicodeScalarView(text)))) }

            let end: Int  // first scalar after the closing delimiter
            if kind == "#" {
                var j = bodyStart
                while j + 1 < scalars.count, !(scalars[j] == "#" && scalars[j + 1] == "}") { j += 1 }
                guard j + 1 < scalars.count else { throw JinjaError(.syntax("missing end of comment tag"), at: tag) }
                end = j + 2
                pos = afterClose(end, strip: j > bodyStart && scalars[j - 1] == "-", keep: j > bodyStart && scalars[j - 1] == "+", trims: true)
            } else {
                let (tokens, close) = try expressionTokens(from: bodyStart, closing: kind == "{" ? "}" : "%", tagAt: tag)
                end = close.end
                out.append(kind == "{" ? .output(tokens, at: tag) : .tag(tokens, at: tag))
                pos = afterClose(end, strip: close.sign == "-", keep: close.sign == "+", trims: kind == "%")
                if kind == "%", tokens.first?.text == "raw" {
                    pos = try rawBody(from: pos, into: &out, tagAt: tag)
                }
            }
            lineStarting = pos > 0 && scalars[pos - 1] == "\n"
        }
        return out
    }

    /// Where the text after a closing delimiter starts: past all whitespace after a -%},
    /// past one newline after %} or #} (trim_blocks).
    func afterClose(_ end: Int, strip: Bool, keep: Bool, trims: Bool) -> Int {
        var p = end
        if strip {
            while p < scalars.count, Self.isSpace(scalars[p]) { p += 1 }
        } else if trims, !keep, p < scalars.count, scalars[p] == "\n" {
            p += 1
        }
        return p
    }

    /// `{% raw %}…{% endraw %}`: the text kept as written.
    func rawBody(from start: Int, into out: inout [JinjaPiece], tagAt: Int) throws(JinjaError) -> Int {
        var j = start
        while j < scalars.count {
            if starts(with: "{%", at: j) {
                var k = j + 2
                let sign: Unicode.Scalar? = k < scalars.count && (scalars[k] == "-" || scalars[k] == "+") ? scalars[k] : nil
                if sign != nil { k += 1 }
                while k < scalars.count, Self.isSpace(scalars[k]) { k += 1 }
                if starts(with: "endraw", at: k) {
                    let (_, close) = try expressionTokens(from: k, closing: "%", tagAt: j)
                    var text = Array(scalars[start..<j])
                    if sign == "-" { while let last = text.last, Self.isSpace(last) { text.removeLast() } }
                    if !text.isEmpty { out.append(.text(String(String.UnicodeScalarView(text)))) }
                    out.append(.tag([JinjaToken(kind: .name, text: "endraw", at: k)], at: j))
                    return afterClose(close.end, strip: close.sign == "-", keep: close.sign == "+", trims: true)
                }
            }
            j += 1
        }
        throw JinjaError(.syntax("missing end of raw directive"), at: tagAt)
    }

    static let operators = ["//", "**", "==", "!=", "<=", ">=", "+", "-", "*", "/", "%", "~", "<", ">", "=", "(", ")", "[", "]", "{", "}", ",", ".", ":", "|", ";"]

    /// The tokens up to the closing `}}` or `%}` (with its - or + sign), which counts only
    /// outside brackets, as in Jinja2.
    func expressionTokens(from start: Int, closing: Unicode.Scalar, tagAt: Int) throws(JinjaError) -> ([JinjaToken], (end: Int, sign: Unicode.Scalar?)) {
        var tokens: [JinjaToken] = []
        var depth: [Unicode.Scalar] = []
        var i = start
        while true {
            while i < scalars.count, Self.isSpace(scalars[i]) { i += 1 }
            guard i < scalars.count else { throw JinjaError(.syntax("unexpected end of template, expected '\(closing)}'"), at: tagAt) }
            if depth.isEmpty {
                for sign in ["-", "+", ""] where starts(with: sign + String(closing) + "}", at: i) {
                    return (tokens, (i + sign.unicodeScalars.count + 2, sign.isEmpty ? nil : sign.unicodeScalars.first))
                }
            }
            let c = scalars[i]
            if c == "_" || c.properties.isAlphabetic {
                var j = i
                while j < scalars.count, scalars[j] == "_" || scalars[j].properties.isAlphabetic || ("0"..."9").contains(scalars[j]) { j += 1 }
                tokens.append(JinjaToken(kind: .name, text: string(i..<j), at: i))
                i = j
            } else if ("0"..."9").contains(c) {
                var j = i, isDouble = false
                while j < scalars.count, ("0"..."9").contains(scalars[j]) || scalars[j] == "_" { j += 1 }
                if j + 1 < scalars.count, scalars[j] == ".", ("0"..."9").contains(scalars[j + 1]) {
                    isDouble = true
                    j += 1
                    while j < scalars.count, ("0"..."9").contains(scalars[j]) { j += 1 }
                }
                if j < scalars.count, scalars[j] == "e" || scalars[j] == "E" {
                    var k = j + 1
                    if k < scalars.count, scalars[k] == "+" || scalars[k] == "-" { k += 1 }
                    if k < scalars.count, ("0"..."9").contains(scalars[k]) {
                        isDouble = true
                        j = k
                        while j < scalars.count, ("0"..."9").contains(scalars[j]) { j += 1 }
                    }
                }
                tokens.append(JinjaToken(kind: isDouble ? .double : .int, text: string(i..<j).replacingOccurrences(of: "_", with: ""), at: i))
                i = j
            } else if c == "'" || c == "\"" {
                let (s, next) = try stringLiteral(from: i)
                tokens.append(JinjaToken(kind: .string, text: s, at: i))
                i = next
            } else if let op = Self.operators.first(where: { starts(with: $0, at: i) }) {
                switch op {
                case "(", "[", "{": depth.append(c)
                case ")", "]", "}":
                    let open: Unicode.Scalar = op == ")" ? "(" : op == "]" ? "[" : "{"
                    guard depth.last == open else { throw JinjaError(.syntax("unexpected '\(op)'"), at: i) }
                    depth.removeLast()
                default: break
                }
                tokens.append(JinjaToken(kind: .op, text: op, at: i))
                i += op.unicodeScalars.count
            } else {
                throw JinjaError(.syntax("unexpected character '\(c)'"), at: i)
            }
        }
    }

    /// A quoted string with Python's escapes (\n, \t, \\, \', \", \uXXXX, \xXX); an unknown
    /// escape keeps its backslash, as Python does.
    func stringLiteral(from start: Int) throws(JinjaError) -> (String, Int) {
        let quote = scalars[start]
        var out = String.UnicodeScalarView()
        var i = start + 1
        while i < scalars.count {
            let c = scalars[i]
            if c == quote { return (String(out), i + 1) }
            if c == "\\", i + 1 < scalars.count {
                let e = scalars[i + 1]
                i += 2
                switch e {
                case "n": out.append("\n")
                case "t": out.append("\t")
                case "r": out.append("\r")
                case "0": out.append("\0")
                case "\\", "'", "\"": out.append(e)
                case "\n": break
                case "x", "u", "U":
                    let n = e == "x" ? 2 : e == "u" ? 4 : 8
                    guard i + n <= scalars.count, let v = UInt32(string(i..<i + n), radix: 16), let u = Unicode.Scalar(v) else {
                        throw JinjaError(.syntax("bad \\\(e) escape in a string"), at: i - 2)
                    }
                    out.append(u)
                    i += n
                default:
                    out.append("\\")
                    out.append(e)
                }
                continue
            }
            out.append(c)
            i += 1
        }
        throw JinjaError(.syntax("unterminated string"), at: start)
    }
}
