import Foundation

/// Python's string operations as chat templates use them, on Unicode code points (Python's
/// str indexes code points, not grapheme clusters).
extension JinjaInterpreter {
    /// str.isspace(): Unicode whitespace and the separators \x1c–\x1f.
    static func isPythonSpace(_ c: Unicode.Scalar) -> Bool { c.properties.isWhitespace || (0x1C...0x1F).contains(c.value) }

    /// str.strip/lstrip/rstrip: whitespace, or any of `chars`.
    static func strip(_ s: String, _ chars: String?, leading: Bool, trailing: Bool) -> String {
        let set = chars.map { Set($0.unicodeScalars) }
        func drop(_ c: Unicode.Scalar) -> Bool { set?.contains(c) ?? isPythonSpace(c) }
        var u = Substring(s).unicodeScalars
        if leading { while let c = u.first, drop(c) { u.removeFirst() } }
        if trailing { while let c = u.last, drop(c) { u.removeLast() } }
        return String(u)
    }

    /// str.split / str.rsplit: on `sep`, or on runs of whitespace (empty pieces dropped) when
    /// nil; at most `maxSplit` cuts when not negative.
    static func split(_ s: String, _ sep: String?, maxSplit: Int, fromRight: Bool) -> [String] {
        let u = Array(s.unicodeScalars)
        func str(_ r: ArraySlice<Unicode.Scalar>) -> String { String(String.UnicodeScalarView(r)) }
        if fromRight, maxSplit >= 0 {
            let reversed = split(String(String.UnicodeScalarView(u.reversed())), sep.map { String(String.UnicodeScalarView($0.unicodeScalars.reversed())) },
                                 maxSplit: maxSplit, fromRight: false)
            return reversed.reversed().map { String(String.UnicodeScalarView($0.unicodeScalars.reversed())) }
        }
        var parts: [String] = []
        if let sep, !sep.isEmpty {
            let p = Array(sep.unicodeScalars)
            var start = 0, i = 0
            while i + p.count <= u.count {
                if maxSplit >= 0, parts.count == maxSplit { break }
                if Array(u[i..<i + p.count]) == p {
                    parts.append(str(u[start..<i]))
                    i += p.count
                    start = i
                } else {
                    i += 1
                }
            }
            parts.append(str(u[start...]))
            return parts
        }
        var i = 0
        while i < u.count {
            while i < u.count, isPythonSpace(u[i]) { i += 1 }
            guard i < u.count else { break }
            if maxSplit >= 0, parts.count == maxSplit {
                var end = u.count
                while end > i, isPythonSpace(u[end - 1]) { end -= 1 }
                parts.append(str(u[i..<end]))
                break
            }
            let start = i
            while i < u.count, !isPythonSpace(u[i]) { i += 1 }
            parts.append(str(u[start..<i]))
        }
        return parts
    }

    /// str.replace(old, new[, count]); an empty `old` inserts `new` between code points, as Python does.
    static func replace(_ s: String, _ old: String, _ new: String, count: Int) -> String {
        if old.isEmpty {
            var out = "", n = 0
            for c in s.unicodeScalars {
                if count < 0 || n < count { out += new; n += 1 }
                out.unicodeScalars.append(c)
            }
            return count < 0 || n < count ? out + new : out
        }
        let parts = split(s, old, maxSplit: count, fromRight: false)
        return parts.joined(separator: new)
    }

    /// str.title(): a cased letter after a cased letter is lowered, any other is raised.
    static func pythonTitle(_ s: String) -> String {
        var out = "", previousCased = false
        for c in s.unicodeScalars {
            let cased = c.properties.isCased
            out += cased ? (previousCased ? String(c).lowercased() : String(c).uppercased()) : String(c)
            previousCased = cased
        }
        return out
    }

    /// Jinja2's title filter: words start after "-", whitespace, "(", "{", "[" or "<"; each
    /// word's first character raised, the rest lowered.
    static func jinjaTitle(_ s: String) -> String {
        var out = "", atWordStart = true
        for c in s.unicodeScalars {
            if isPythonSpace(c) || "-({[<".unicodeScalars.contains(c) {
                out.unicodeScalars.append(c)
                atWordStart = true
            } else {
                out += atWordStart ? String(c).uppercased() : String(c).lowercased()
                atWordStart = false
            }
        }
        return out
    }

    /// str.capitalize(): the first character raised, the rest lowered.
    static func capitalize(_ s: String) -> String {
        guard let first = s.unicodeScalars.first else { return s }
        return String(first).uppercased() + String(s.unicodeScalars.dropFirst()).lowercased()
    }

    /// str.format with `{}`, `{0}`, `{name}`, `{{` and `}}`; format specs and conversions are refused.
    static func format(_ s: String, _ args: [JinjaValue], _ kwargs: [String: JinjaValue], at: Int) throws(JinjaError) -> String {
        var out = "", auto = 0
        var u = Array(s.unicodeScalars)[...]
        while let c = u.popFirst() {
            if c == "}" {
                if u.first == "}" { u.removeFirst() }
                out += "}"
                continue
            }
            guard c == "{" else { out.unicodeScalars.append(c); continue }
            if u.first == "{" { u.removeFirst(); out += "{"; continue }
            var field = ""
            while let d = u.popFirst(), d != "}" { field.unicodeScalars.append(d) }
            if field.contains(":") || field.contains("!") { throw JinjaError(.unsupported("format spec '{\(field)}' in str.format"), at: at) }
            let value: JinjaValue?
            if field.isEmpty { value = auto < args.count ? args[auto] : nil; auto += 1 }
            else if let i = Int(field) { value = i < args.count ? args[i] : nil }
            else { value = kwargs[field] }
            guard let value else { throw JinjaError(.runtime("str.format: no value for '{\(field)}'"), at: at) }
            out += value.text
        }
        return out
    }

    /// Python's datetime.strftime in the C locale, on the local time of `date`.
    static func strftime(_ format: String, _ date: Date) -> String {
        var t = time_t(date.timeIntervalSince1970.rounded(.down))
        var parts = tm()
        localtime_r(&t, &parts)
        var buffer = [Int8](repeating: 0, count: 256)
        let n = Foundation.strftime(&buffer, buffer.count, format, &parts)
        return String(decoding: buffer[..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }
}
