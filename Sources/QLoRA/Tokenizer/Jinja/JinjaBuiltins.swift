import Foundation

/// The functions, methods, filters and tests chat templates call, as transformers' Jinja2
/// environment defines them. Anything else is refused by name (`JinjaError.unsupported`).
extension JinjaInterpreter {
    /// Globals: Jinja2's `range`, `namespace`, `dict`; transformers' `raise_exception` and
    /// `strftime_now`.
    static let globals: Set<String> = ["raise_exception", "strftime_now", "namespace", "range", "dict"]
    static let dictMethods: Set<String> = ["get", "items", "keys", "values"]
    static let stringMethods: Set<String> = [
        "startswith", "endswith", "strip", "lstrip", "rstrip", "split", "rsplit", "replace", "upper", "lower", "title",
        "capitalize", "format", "join", "find", "count", "splitlines", "isdigit", "isspace", "isalpha",
    ]
    /// Methods a list has in Python: mutating ones are refused, as transformers' immutable sandbox refuses them.
    static let listMethods: Set<String> = ["append", "pop", "extend", "insert", "remove", "index", "count"]

    mutating func call(_ f: JinjaValue, _ args: [JinjaValue], _ kwargs: [String: JinjaValue], at: Int) throws(JinjaError) -> JinjaValue {
        switch f {
        case let .macro(m):
            let scope = JinjaScope(parent: m.scope)
            for (i, p) in m.parameters.enumerated() {
                if i < args.count {
                    scope.variables[p.name] = args[i]
                } else if let v = kwargs[p.name] {
                    scope.variables[p.name] = v
                } else if let d = p.defaultValue {
                    scope.variables[p.name] = try evaluate(d, scope)
                } else {
                    scope.variables[p.name] = .undefined("parameter '\(p.name)' was not provided")
                }
            }
            guard args.count <= m.parameters.count else { throw JinjaError(.runtime("macro '\(m.name)' takes not more than \(m.parameters.count) argument(s)"), at: at) }
            return .string(try capture(m.body, scope))
        case let .builtin(name, receiver?):
            return try method(name, of: receiver, args, kwargs, at: at)
        case let .builtin(name, nil):
            switch name {
            case "raise_exception":
                throw JinjaError(.raised(args.first?.text ?? ""), at: at)
            case "strftime_now":
                guard case let .string(format)? = args.first else { throw JinjaError(.runtime("strftime_now() takes a format string"), at: at) }
                return .string(Self.strftime(format, now))
            case "namespace", "dict":
                var d = JinjaDict()
                if case let .dict(initial)? = args.first { d = initial }
                for k in kwargs.keys.sorted() { d[k] = kwargs[k] }
                return name == "dict" ? .dict(d) : .namespace(JinjaNamespace(d))
            default:  // range
                let ints = args.compactMap { if case let .int(i) = $0 { i } else { nil } }
                guard ints.count == args.count, (1...3).contains(ints.count) else { throw JinjaError(.runtime("range() takes 1 to 3 integers"), at: at) }
                let (lo, hi, step) = ints.count == 1 ? (0, ints[0], 1) : (ints[0], ints[1], ints.count == 3 ? ints[2] : 1)
                guard step != 0 else { throw JinjaError(.runtime("range() arg 3 must not be zero"), at: at) }
                return .list(stride(from: lo, to: hi, by: step).map { .int($0) })
            }
        case let .undefined(why):
            throw JinjaError(.runtime(why), at: at)
        default:
            throw JinjaError(.runtime("'\(f.typeName)' object is not callable"), at: at)
        }
    }

    /// Python's str, dict and list methods that templates call.
    func method(_ name: String, of v: JinjaValue, _ args: [JinjaValue], _ kwargs: [String: JinjaValue], at: Int) throws(JinjaError) -> JinjaValue {
        func string(_ i: Int, _ key: String) -> String? { if case let .string(s)? = (i < args.count ? args[i] : kwargs[key]) { s } else { nil } }
        func int(_ i: Int, _ key: String) -> Int? { if case let .int(n)? = (i < args.count ? args[i] : kwargs[key]) { n } else { nil } }
        switch (v, name) {
        case let (.dict(d), "get"):
            guard case let .string(k)? = args.first else { return args.count > 1 ? args[1] : .none }
            return d[k] ?? (args.count > 1 ? args[1] : kwargs["default"] ?? .none)
        case let (.dict(d), "items"): return .list(d.map { .list([.string($0.key), $0.value]) })
        case let (.dict(d), "keys"): return .list(d.keys.map { .string($0) })
        case let (.dict(d), "values"): return .list(d.map(\.value))
        case let (.string(s), "startswith"), let (.string(s), "endswith"):
            let candidates: [String]
            switch args.first {
            case let .string(p)?: candidates = [p]
            case let .list(l)?: candidates = l.compactMap { if case let .string(p) = $0 { p } else { nil } }
            default: throw JinjaError(.runtime("\(name) first arg must be str or a tuple of str"), at: at)
            }
            return .bool(candidates.contains { name == "startswith" ? s.unicodeScalars.starts(with: $0.unicodeScalars) : s.unicodeScalars.reversed().starts(with: $0.unicodeScalars.reversed()) })
        case let (.string(s), "strip"): return .string(Self.strip(s, string(0, "chars"), leading: true, trailing: true))
        case let (.string(s), "lstrip"): return .string(Self.strip(s, string(0, "chars"), leading: true, trailing: false))
        case let (.string(s), "rstrip"): return .string(Self.strip(s, string(0, "chars"), leading: false, trailing: true))
        case let (.string(s), "split"), let (.string(s), "rsplit"):
            return .list(Self.split(s, string(0, "sep"), maxSplit: int(1, "maxsplit") ?? -1, fromRight: name == "rsplit").map { .string($0) })
        case let (.string(s), "splitlines"): return .list(s.split(separator: "\n", omittingEmptySubsequences: false).map { .string(String($0)) }.dropLast(s.hasSuffix("\n") ? 1 : 0))
        case let (.string(s), "replace"):
            guard let old = string(0, "old"), let new = string(1, "new") else { throw JinjaError(.runtime("replace() takes two strings"), at: at) }
            return .string(Self.replace(s, old, new, count: int(2, "count") ?? -1))
        case let (.string(s), "upper"): return .string(s.uppercased())
        case let (.string(s), "lower"): return .string(s.lowercased())
        case let (.string(s), "title"): return .string(Self.pythonTitle(s))
        case let (.string(s), "capitalize"): return .string(Self.capitalize(s))
        case let (.string(s), "join"):
            return .string(try JinjaInterpreter.iterate(args.first ?? .list([]), at: at).map(\.text).joined(separator: s))
        case let (.string(s), "find"):
            guard let sub = string(0, "sub") else { throw JinjaError(.runtime("find() takes a string"), at: at) }
            guard let r = s.range(of: sub) else { return .int(-1) }
            return .int(s.unicodeScalars.distance(from: s.startIndex, to: r.lowerBound))
        case let (.string(s), "count"):
            guard let sub = string(0, "x"), !sub.isEmpty else { return .int(s.unicodeScalars.count + 1) }
            return .int(s.components(separatedBy: sub).count - 1)
        case let (.string(s), "isdigit"): return .bool(!s.isEmpty && s.unicodeScalars.allSatisfy { $0.properties.numericType == .decimal })
        case let (.string(s), "isspace"): return .bool(!s.isEmpty && s.unicodeScalars.allSatisfy(\.properties.isWhitespace))
        case let (.string(s), "isalpha"): return .bool(!s.isEmpty && s.unicodeScalars.allSatisfy(\.properties.isAlphabetic))
        case let (.string(s), "format"): return .string(try Self.format(s, args, kwargs, at: at))
        case let (.list(l), "index"):
            guard let x = args.first, let i = l.firstIndex(of: x) else { throw JinjaError(.runtime("\(args.first?.repr ?? "") is not in list"), at: at) }
            return .int(i)
        case let (.list(l), "count"): return .int(l.filter { $0 == args.first }.count)
        case (.list, _): throw JinjaError(.unsupported("method '\(name)' of list (a template cannot change a list under transformers' immutable sandbox)"), at: at)
        case let (.int(i), "loop.cycle"):
            guard !args.isEmpty else { throw JinjaError(.runtime("no items for cycling given"), at: at) }
            return args[i % args.count]
        default: throw JinjaError(.unsupported("method '\(name)' of \(v.typeName)"), at: at)
        }
    }

    // MARK: filters

    mutating func applyFilter(_ name: String, _ v: JinjaValue, _ args: [JinjaValue], _ kwargs: [String: JinjaValue], at: Int) throws(JinjaError) -> JinjaValue {
        func arg(_ i: Int, _ key: String) -> JinjaValue? { i < args.count ? args[i] : kwargs[key] }
        func list() throws(JinjaError) -> [JinjaValue] { try JinjaInterpreter.iterate(v, at: at) }
        switch name {
        case "safe", "string": return name == "safe" ? v : .string(v.text)
        case "trim":
            if case let .string(chars)? = arg(0, "chars") { return .string(Self.strip(v.text, chars, leading: true, trailing: true)) }
            return .string(Self.strip(v.text, nil, leading: true, trailing: true))
        case "upper": return .string(v.text.uppercased())
        case "lower": return .string(v.text.lowercased())
        case "capitalize": return .string(Self.capitalize(v.text))
        case "title": return .string(Self.jinjaTitle(v.text))
        case "e", "escape":
            return .string(v.text.replacingOccurrences(of: "&", with: "&amp;").replacingOccurrences(of: "<", with: "&lt;").replacingOccurrences(of: ">", with: "&gt;")
                .replacingOccurrences(of: "\"", with: "&#34;").replacingOccurrences(of: "'", with: "&#39;"))
        case "replace":
            guard case let .string(old)? = arg(0, "old"), case let .string(new)? = arg(1, "new") else { throw JinjaError(.runtime("replace takes two strings"), at: at) }
            var count = -1
            if case let .int(c)? = arg(2, "count") { count = c }
            return .string(Self.replace(v.text, old, new, count: count))
        case "length", "count":
            switch v {
            case let .string(s): return .int(s.unicodeScalars.count)
            case let .list(l): return .int(l.count)
            case let .dict(d): return .int(d.count)
            case .undefined: return .int(0)
            default: throw JinjaError(.runtime("object of type '\(v.typeName)' has no len()"), at: at)
            }
        case "default", "d":
            let boolean = arg(1, "boolean")?.isTruthy ?? false
            return v.isUndefined || (boolean && !v.isTruthy) ? (arg(0, "default_value") ?? .string("")) : v
        case "first": return try list().first ?? .undefined("first of an empty sequence")
        case "last": return try list().last ?? .undefined("last of an empty sequence")
        case "list": return .list(try list())
        case "reverse":
            if case let .string(s) = v { return .string(String(String.UnicodeScalarView(s.unicodeScalars.reversed()))) }
            return .list(try list().reversed())
        case "unique":
            var seen: [JinjaValue] = []
            for x in try list() where !seen.contains(x) { seen.append(x) }
            return .list(seen)
        case "join":
            var items = try list()
            if case let .string(attribute)? = arg(1, "attribute") { items = try items.map { x throws(JinjaError) in try attributePath(x, attribute, at: at) } }
            return .string(items.map(\.text).joined(separator: arg(0, "d")?.text ?? ""))
        case "items":
            guard case let .dict(d) = v else {
                if v.isUndefined { return .list([]) }
                throw JinjaError(.runtime("items: expected a mapping, got '\(v.typeName)'"), at: at)
            }
            return .list(d.map { .list([.string($0.key), $0.value]) })
        case "dictsort":
            guard case let .dict(d) = v else { throw JinjaError(.runtime("dictsort: expected a mapping"), at: at) }
            let caseSensitive = arg(0, "case_sensitive")?.isTruthy ?? false, byValue = arg(1, "by")?.text == "value"
            let reverse = arg(2, "reverse")?.isTruthy ?? false
            var pairs = Array(d.map { (key: $0.key, value: $0.value) })
            func sortKey(_ p: (key: String, value: JinjaValue)) -> JinjaValue {
                let k = byValue ? p.value : .string(p.key)
                if !caseSensitive, case let .string(s) = k { return .string(s.lowercased()) }
                return k
            }
            pairs.sort { x, y in (try? JinjaInterpreter.binary("<", sortKey(x), sortKey(y), at: at).isTruthy) ?? false }
            if reverse { pairs.reverse() }
            return .list(pairs.map { .list([.string($0.key), $0.value]) })
        case "sort":
            let reverse = arg(0, "reverse")?.isTruthy ?? false, caseSensitive = arg(1, "case_sensitive")?.isTruthy ?? false
            let attribute = arg(2, "attribute")?.text
            var items: [(key: JinjaValue, value: JinjaValue)] = []
            for x in try list() {
                var k = try attribute.map { a throws(JinjaError) in try attributePath(x, a, at: at) } ?? x
                if !caseSensitive, case let .string(s) = k { k = .string(s.lowercased()) }
                items.append((k, x))
            }
            var failure: JinjaError?
            items.sort { a, b in
                do throws(JinjaError) { return try JinjaInterpreter.binary("<", a.key, b.key, at: at).isTruthy } catch { failure = error; return false }
            }
            if let failure { throw failure }
            return .list((reverse ? items.reversed() : items).map(\.value))
        case "int":
            switch v {
            case let .int(i): return .int(i)
            case let .bool(b): return .int(b ? 1 : 0)
            case let .double(d): return .int(Int(d))
            case let .string(s):
                if let i = Int(s.trimmingCharacters(in: .whitespaces)) { return .int(i) }
                if let d = Double(s.trimmingCharacters(in: .whitespaces)), d.isFinite { return .int(Int(d)) }
                return arg(0, "default") ?? .int(0)
            default: return arg(0, "default") ?? .int(0)
            }
        case "float":
            if let d = v.number { return .double(d) }
            if case let .string(s) = v, let d = Double(s.trimmingCharacters(in: .whitespaces)) { return .double(d) }
            return arg(0, "default") ?? .double(0)
        case "abs":
            switch v {
            case let .int(i): return .int(abs(i))
            case let .double(d): return .double(abs(d))
            default: throw JinjaError(.runtime("bad operand type for abs(): '\(v.typeName)'"), at: at)
            }
        case "round":
            guard let d = v.number else { throw JinjaError(.runtime("round: expected a number"), at: at) }
            var precision = 0
            if case let .int(p)? = arg(0, "precision") { precision = p }
            let method = arg(1, "method")?.text ?? "common", scale = pow(10, Double(precision))
            let rule: FloatingPointRoundingRule = method == "ceil" ? .up : method == "floor" ? .down : .toNearestOrAwayFromZero
            return .double((d * scale).rounded(rule) / scale)
        case "sum":
            var total: JinjaValue = arg(1, "start") ?? .int(0)
            for x in try list() {
                let item = try arg(0, "attribute").map { a throws(JinjaError) in try attributePath(x, a.text, at: at) } ?? x
                total = try JinjaInterpreter.binary("+", total, item, at: at)
            }
            return total
        case "min", "max":
            let items = try list()
            guard var best = items.first else { return .undefined("\(name) of an empty sequence") }
            for x in items.dropFirst() where try JinjaInterpreter.binary(name == "min" ? "<" : ">", x, best, at: at).isTruthy { best = x }
            return best
        case "wordcount": return .int(v.text.split(whereSeparator: { $0.isWhitespace }).count)
        case "indent":
            var width = "    "
            switch arg(0, "width") {
            case let .int(n)?: width = String(repeating: " ", count: max(0, n))
            case let .string(s)?: width = s
            default: break
            }
            let first = arg(1, "first")?.isTruthy ?? false, blank = arg(2, "blank")?.isTruthy ?? false
            let lines = v.text.components(separatedBy: "\n")
            var out = lines[0]
            for line in lines.dropFirst() { out += "\n" + (blank || !line.trimmingCharacters(in: .whitespaces).isEmpty ? width + line : line) }
            return .string(first && (blank || !lines[0].isEmpty) ? width + out : out)
        case "tojson":
            var indent: String?
            switch arg(1, "indent") {
            case let .int(n)?: indent = String(repeating: " ", count: max(0, n))
            case let .string(s)?: indent = s
            default: break
            }
            var itemSeparator: String?, keySeparator: String?
            if case let .list(seps)? = arg(2, "separators"), seps.count == 2 { itemSeparator = seps[0].text; keySeparator = seps[1].text }
            if arg(0, "ensure_ascii")?.isTruthy == true { throw JinjaError(.unsupported("tojson(ensure_ascii=True)"), at: at) }
            do {
                return .string(try v.json(indent: indent, itemSeparator: itemSeparator, keySeparator: keySeparator, sortKeys: arg(3, "sort_keys")?.isTruthy ?? false))
            } catch { throw JinjaError(error.kind, at: at) }
        case "map":
            if case let .string(attribute)? = kwargs["attribute"] {
                return .list(try list().map { x throws(JinjaError) in
                    let a = try attributePath(x, attribute, at: at)
                    return a.isUndefined ? (kwargs["default"] ?? a) : a
                })
            }
            guard case let .string(filter)? = args.first else { throw JinjaError(.runtime("map needs a filter name or attribute="), at: at) }
            guard JinjaParser.filters.contains(filter) else { throw JinjaError(.unsupported("filter '\(filter)'"), at: at) }
            var out: [JinjaValue] = []
            for x in try list() { out.append(try applyFilter(filter, x, Array(args.dropFirst()), [:], at: at)) }
            return .list(out)
        case "select", "reject", "selectattr", "rejectattr":
            let byAttribute = name.hasSuffix("attr")
            let testArgs = byAttribute ? Array(args.dropFirst()) : args
            var out: [JinjaValue] = []
            for x in try list() {
                let subject = byAttribute ? try attributePath(x, args.first?.text ?? "", at: at) : x
                let passes: Bool
                if case let .string(test)? = testArgs.first {
                    guard JinjaParser.tests.contains(test) else { throw JinjaError(.unsupported("test '\(test)'"), at: at) }
                    passes = try Self.test(test, subject, Array(testArgs.dropFirst()), at: at)
                } else {
                    passes = subject.isTruthy
                }
                if passes == name.hasPrefix("select") { out.append(x) }
            }
            return .list(out)
        default:
            throw JinjaError(.unsupported("filter '\(name)'"), at: at)
        }
    }

    /// `attribute="a.b"` of map, selectattr, sort, join, sum: dotted keys, integers as indices.
    func attributePath(_ v: JinjaValue, _ path: String, at: Int) throws(JinjaError) -> JinjaValue {
        var x = v
        for part in path.split(separator: ".") {
            if x.isUndefined { return x }
            x = try item(x, Int(part).map { .int($0) } ?? .string(String(part)), at: at)
        }
        return x
    }

    // MARK: tests

    static func test(_ name: String, _ v: JinjaValue, _ args: [JinjaValue], at: Int) throws(JinjaError) -> Bool {
        func number() throws(JinjaError) -> Int {
            guard case let .int(i) = v else { throw JinjaError(.runtime("test '\(name)' needs an integer, got '\(v.typeName)'"), at: at) }
            return i
        }
        func compare(_ op: String) throws(JinjaError) -> Bool {
            guard let other = args.first else { throw JinjaError(.runtime("test '\(name)' needs an argument"), at: at) }
            return try binary(op, v, other, at: at).isTruthy
        }
        switch name {
        case "defined": return !v.isUndefined
        case "undefined": return v.isUndefined
        case "none": if case .none = v { return true } else { return false }
        case "string": if case .string = v { return true } else { return false }
        case "mapping": if case .dict = v { return true } else { return false }
        case "boolean": if case .bool = v { return true } else { return false }
        case "true": if case .bool(true) = v { return true } else { return false }
        case "false": if case .bool(false) = v { return true } else { return false }
        case "integer": if case .int = v { return true } else { return false }
        case "float": if case .double = v { return true } else { return false }
        case "number": return v.number != nil
        case "iterable", "sequence": switch v { case .string, .list, .dict: return true; default: return false }
        case "callable": switch v { case .macro, .builtin: return true; default: return false }
        case "odd": return try number() % 2 != 0
        case "even": return try number() % 2 == 0
        case "divisibleby":
            guard case let .int(d)? = args.first, d != 0 else { throw JinjaError(.runtime("divisibleby needs a non-zero integer"), at: at) }
            return try number() % d == 0
        case "eq", "equalto", "==": return try compare("==")
        case "ne": return try compare("!=")
        case "lt": return try compare("<")
        case "le": return try compare("<=")
        case "gt": return try compare(">")
        case "ge": return try compare(">=")
        case "in": return try binary("in", v, args.first ?? .list([]), at: at).isTruthy
        case "sameas":
            switch (v, args.first) {
            case (.none, .none?), (.undefined, .undefined?): return true
            case let (.bool(a), .bool(b)?): return a == b
            case let (.namespace(a), .namespace(b)?): return a === b
            default: return false
            }
        case "lower": return v.text == v.text.lowercased()
        case "upper": return v.text == v.text.uppercased()
        case "escaped": return false
        default: throw JinjaError(.unsupported("test '\(name)'"), at: at)
        }
    }
}
