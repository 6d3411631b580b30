import Foundation

/// Variables visible at one level: the template's top level, a for loop's body, a macro call.
/// A plain `set` writes into the innermost level, so that inside a loop it does not outlive
/// the iteration (Jinja2's scoping; templates use `namespace()` to carry values out).
final class JinjaScope: @unchecked Sendable {
    var variables: [String: JinjaValue] = [:]
    let parent: JinjaScope?
    init(parent: JinjaScope?) { self.parent = parent }

    func lookup(_ name: String) -> JinjaValue? { variables[name] ?? parent?.lookup(name) }
}

/// Renders parsed nodes into text, Jinja2's way (see `JinjaTemplate`).
struct JinjaInterpreter {
    /// What the template has written so far.
    var out = ""
    /// UTF-8 byte ranges of `out` that `{% generation %}` blocks wrote.
    var generationRanges: [Range<Int>] = []
    /// What `strftime_now` reads as the current time.
    let now: Date

    enum Flow { case normal, breakLoop, continueLoop }

    init(now: Date) { self.now = now }

    mutating func execute(_ nodes: [JinjaNode], _ scope: JinjaScope) throws(JinjaError) -> Flow {
        for node in nodes {
            switch node {
            case let .text(s):
                out += s
            case let .output(e):
                out += try evaluate(e, scope).text
            case let .if(branches, otherwise):
                var taken: [JinjaNode]? = nil
                for b in branches where try evaluate(b.condition, scope).isTruthy {
                    taken = b.body
                    break
                }
                let flow = try execute(taken ?? otherwise, scope)
                if flow != .normal { return flow }
            case let .for(targets, iterable, filter, body, otherwise, at):
                try loop(targets: targets, iterable: iterable, filter: filter, body: body, otherwise: otherwise, at: at, scope)
            case let .set(target, attribute, e):
                let value = try evaluate(e, scope)
                if let attribute {
                    guard case let .namespace(ns)? = scope.lookup(target) else {
                        throw JinjaError(.runtime("cannot assign attribute on non-namespace object '\(target)'"), at: e.at)
                    }
                    ns.attributes[attribute] = value
                } else {
                    scope.variables[target] = value
                }
            case let .setTuple(targets, e):
                let items = try Self.unpack(try evaluate(e, scope), count: targets.count, at: e.at)
                for (t, v) in zip(targets, items) { scope.variables[t] = v }
            case let .setBlock(name, body):
                scope.variables[name] = .string(try capture(body, scope))
            case let .macro(name, parameters, body):
                scope.variables[name] = .macro(JinjaMacro(name: name, parameters: parameters, body: body, scope: scope))
            case let .filterBlock(name, args, body, at):
                let text = try capture(body, scope)
                out += try applyFilter(name, .string(text), try args.map { e throws(JinjaError) in try evaluate(e, scope) }, [:], at: at).text
            case let .generation(body):
                let start = out.utf8.count
                let flow = try execute(body, scope)
                generationRanges.append(start..<out.utf8.count)
                if flow != .normal { return flow }
            case .break:
                return .breakLoop
            case .continue:
                return .continueLoop
            }
        }
        return .normal
    }

    /// Renders `body` on its own and returns the text (block set, filter block, macro call).
    mutating func capture(_ body: [JinjaNode], _ scope: JinjaScope) throws(JinjaError) -> String {
        let saved = out
        out = ""
        defer { out = saved }
        _ = try execute(body, scope)
        return out
    }

    /// `{% for a[, b] in iterable [if filter] %}`, with the `loop` variable:
    /// index (from 1), index0, revindex (to 1), revindex0, first, last, length, previtem,
    /// nextitem and cycle(a, b, …), all over the items that pass the filter.
    mutating func loop(targets: [String], iterable: JinjaExpr, filter: JinjaExpr?, body: [JinjaNode], otherwise: [JinjaNode],
                       at: Int, _ scope: JinjaScope) throws(JinjaError) {
        var items = try Self.iterate(try evaluate(iterable, scope), at: iterable.at)
        let inner = JinjaScope(parent: scope)
        if let filter {
            var kept: [JinjaValue] = []
            for item in items {
                try bind(targets, item, inner, at: at)
                if try evaluate(filter, inner).isTruthy { kept.append(item) }
            }
            items = kept
        }
        guard !items.isEmpty else {
            _ = try execute(otherwise, scope)
            return
        }
        for (i, item) in items.enumerated() {
            let iteration = JinjaScope(parent: scope)
            try bind(targets, item, iteration, at: at)
            let n = items.count
            var l = JinjaDict([("index", .int(i + 1)), ("index0", .int(i)), ("revindex", .int(n - i)), ("revindex0", .int(n - i - 1)),
                               ("first", .bool(i == 0)), ("last", .bool(i == n - 1)), ("length", .int(n)),
                               ("previtem", i > 0 ? items[i - 1] : .undefined("'loop.previtem' is undefined")),
                               ("nextitem", i + 1 < n ? items[i + 1] : .undefined("'loop.nextitem' is undefined"))])
            l["cycle"] = .builtin(name: "loop.cycle", receiver: .int(i))
            iteration.variables["loop"] = .dict(l)
            if try execute(body, iteration) == .breakLoop { break }
        }
    }

    func bind(_ targets: [String], _ item: JinjaValue, _ scope: JinjaScope, at: Int) throws(JinjaError) {
        if targets.count == 1 {
            scope.variables[targets[0]] = item
        } else {
            for (t, v) in zip(targets, try Self.unpack(item, count: targets.count, at: at)) { scope.variables[t] = v }
        }
    }

    static func unpack(_ v: JinjaValue, count: Int, at: Int) throws(JinjaError) -> [JinjaValue] {
        let items = try iterate(v, at: at)
        guard items.count == count else {
            throw JinjaError(.runtime(items.count < count ? "not enough values to unpack (expected \(count), got \(items.count))" : "too many values to unpack (expected \(count))"), at: at)
        }
        return items
    }

    /// What `for` walks: a list's items, a dict's keys, a string's characters; undefined
    /// and none as empty (undefined as Jinja2 does; none is an error there).
    static func iterate(_ v: JinjaValue, at: Int) throws(JinjaError) -> [JinjaValue] {
        switch v {
        case .undefined: return []
        case let .list(l): return l
        case let .dict(d): return d.keys.map { .string($0) }
        case let .string(s): return s.unicodeScalars.map { .string(String($0)) }
        default: throw JinjaError(.runtime("'\(v.typeName)' object is not iterable"), at: at)
        }
    }

    // MARK: expressions

    mutating func evaluate(_ e: JinjaExpr, _ scope: JinjaScope) throws(JinjaError) -> JinjaValue {
        switch e.kind {
        case let .literal(v):
            return v
        case let .name(n):
            if let v = scope.lookup(n) { return v }
            if Self.globals.contains(n) { return .builtin(name: n, receiver: nil) }
            return .undefined("'\(n)' is undefined")
        case let .list(items):
            return .list(try items.map { x throws(JinjaError) in try evaluate(x, scope) })
        case let .dict(pairs):
            var d = JinjaDict()
            for (k, v) in pairs {
                guard case let .string(key) = try evaluate(k, scope) else { throw JinjaError(.unsupported("dict keys that are not strings"), at: k.at) }
                d[key] = try evaluate(v, scope)
            }
            return .dict(d)
        case let .attribute(base, name):
            return try attribute(try evaluate(base, scope), name, at: e.at)
        case let .item(base, index):
            return try item(try evaluate(base, scope), try evaluate(index, scope), at: e.at)
        case let .slice(base, start, stop, step):
            func bound(_ x: JinjaExpr?) throws(JinjaError) -> Int? {
                guard let x else { return nil }
                switch try evaluate(x, scope) {
                case let .int(i): return i
                case .none: return nil
                default: throw JinjaError(.runtime("slice indices must be integers or None"), at: x.at)
                }
            }
            return try Self.slice(try evaluate(base, scope), try bound(start), try bound(stop), try bound(step), at: e.at)
        case let .call(callee, args, kwargs):
            let f = try evaluate(callee, scope)
            let a = try args.map { x throws(JinjaError) in try evaluate(x, scope) }
            var k: [String: JinjaValue] = [:]
            for (name, x) in kwargs { k[name] = try evaluate(x, scope) }
            return try call(f, a, k, at: e.at)
        case let .filter(base, name, args, kwargs):
            let v = try evaluate(base, scope)
            let a = try args.map { x throws(JinjaError) in try evaluate(x, scope) }
            var k: [String: JinjaValue] = [:]
            for (n, x) in kwargs { k[n] = try evaluate(x, scope) }
            return try applyFilter(name, v, a, k, at: e.at)
        case let .test(base, name, args, negated):
            let v = try evaluate(base, scope)
            let a = try args.map { x throws(JinjaError) in try evaluate(x, scope) }
            return .bool(try Self.test(name, v, a, at: e.at) != negated)
        case let .unary(op, x):
            let v = try evaluate(x, scope)
            switch op {
            case "not": return .bool(!v.isTruthy)
            case "-":
                switch v {
                case let .int(i): return .int(-i)
                case let .double(d): return .double(-d)
                case let .bool(b): return .int(b ? -1 : 0)
                default: throw JinjaError(.runtime("bad operand type for unary -: '\(v.typeName)'"), at: e.at)
                }
            default:
                guard v.number != nil else { throw JinjaError(.runtime("bad operand type for unary +: '\(v.typeName)'"), at: e.at) }
                return v
            }
        case let .binary(op, l, r):
            return try Self.binary(op, try evaluate(l, scope), try evaluate(r, scope), at: e.at)
        case let .and(l, r):
            let v = try evaluate(l, scope)
            return v.isTruthy ? try evaluate(r, scope) : v
        case let .or(l, r):
            let v = try evaluate(l, scope)
            return v.isTruthy ? v : try evaluate(r, scope)
        case let .conditional(value, condition, otherwise):
            if try evaluate(condition, scope).isTruthy { return try evaluate(value, scope) }
            return try otherwise.map { x throws(JinjaError) in try evaluate(x, scope) } ?? .undefined("the else of an inline if")
        }
    }

    /// `a.name`: a dict's method first, then its key (Jinja2's getattr, then getitem); a
    /// namespace's attribute; a string's method. Missing: undefined. Undefined: an error.
    func attribute(_ v: JinjaValue, _ name: String, at: Int) throws(JinjaError) -> JinjaValue {
        switch v {
        case let .undefined(why): throw JinjaError(.runtime(why), at: at)
        case let .dict(d):
            if Self.dictMethods.contains(name) { return .builtin(name: name, receiver: v) }
            return d[name] ?? .undefined("'dict object' has no attribute '\(name)'")
        case let .namespace(ns):
            return ns.attributes[name] ?? .undefined("'Namespace object' has no attribute '\(name)'")
        case .string:
            return Self.stringMethods.contains(name) ? .builtin(name: name, receiver: v) : .undefined("'str object' has no attribute '\(name)'")
        case .list:
            return Self.listMethods.contains(name) ? .builtin(name: name, receiver: v) : .undefined("'list object' has no attribute '\(name)'")
        default:
            return .undefined("'\(v.typeName) object' has no attribute '\(name)'")
        }
    }

    /// `a[i]`: a dict's key first, then its attribute (Jinja2's getitem, then getattr); a
    /// list's or string's index, negative from the end. Missing: undefined.
    func item(_ v: JinjaValue, _ index: JinjaValue, at: Int) throws(JinjaError) -> JinjaValue {
        switch (v, index) {
        case let (.undefined(why), _): throw JinjaError(.runtime(why), at: at)
        case let (.dict(d), .string(k)):
            if let x = d[k] { return x }
            return try attribute(v, k, at: at)
        case let (.namespace(ns), .string(k)): return ns.attributes[k] ?? .undefined("'Namespace object' has no attribute '\(k)'")
        case let (.list(l), .int(i)):
            let j = i < 0 ? l.count + i : i
            return l.indices.contains(j) ? l[j] : .undefined("list index out of range")
        case let (.string(s), .int(i)):
            let u = Array(s.unicodeScalars)
            let j = i < 0 ? u.count + i : i
            return u.indices.contains(j) ? .string(String(u[j])) : .undefined("string index out of range")
        case let (_, .string(k)): return try attribute(v, k, at: at)
        default: return .undefined("'\(v.typeName) object' has no element \(index.repr)")
        }
    }

    /// Python's slice of a list or a string (by code point), any step but 0.
    static func slice(_ v: JinjaValue, _ start: Int?, _ stop: Int?, _ step: Int?, at: Int) throws(JinjaError) -> JinjaValue {
        let step = step ?? 1
        guard step != 0 else { throw JinjaError(.runtime("slice step cannot be zero"), at: at) }
        func indices(_ n: Int) -> [Int] {
            func clamp(_ x: Int?, _ defaultValue: Int, _ low: Int, _ high: Int) -> Int {
                guard var x else { return defaultValue }
                if x < 0 { x += n }
                return min(max(x, low), high)
            }
            if step > 0 {
                return Array(stride(from: clamp(start, 0, 0, n), to: clamp(stop, n, 0, n), by: step))
            }
            return Array(stride(from: clamp(start, n - 1, -1, n - 1), to: clamp(stop, -1, -1, n - 1), by: step))
        }
        switch v {
        case let .list(l): return .list(indices(l.count).map { l[$0] })
        case let .string(s):
            let u = Array(s.unicodeScalars)
            return .string(String(String.UnicodeScalarView(indices(u.count).map { u[$0] })))
        case let .undefined(why): throw JinjaError(.runtime(why), at: at)
        default: throw JinjaError(.runtime("'\(v.typeName)' object is not subscriptable"), at: at)
        }
    }

    /// Arithmetic, concatenation, comparison and membership with Python's rules.
    static func binary(_ op: String, _ a: JinjaValue, _ b: JinjaValue, at: Int) throws(JinjaError) -> JinjaValue {
        func typeError() -> JinjaError {
            if case let .undefined(why) = a { return JinjaError(.runtime(why), at: at) }
            if case let .undefined(why) = b { return JinjaError(.runtime(why), at: at) }
            return JinjaError(.runtime("unsupported operand type(s) for \(op): '\(a.typeName)' and '\(b.typeName)'"), at: at)
        }
        switch op {
        case "~": return .string(a.text + b.text)
        case "==": return .bool(a == b)
        case "!=": return .bool(a != b)
        case "in", "not in":
            let found: Bool
            switch (a, b) {
            case let (.string(x), .string(y)): found = y.contains(x) || x.isEmpty
            case let (_, .list(l)): found = l.contains(a)
            case let (.string(k), .dict(d)): found = d[k] != nil
            case (_, .dict): found = false
            case let (.string(k), .namespace(ns)): found = ns.attributes[k] != nil
            case (_, .undefined): found = false
            default: throw JinjaError(.runtime("argument of type '\(b.typeName)' is not iterable"), at: at)
            }
            return .bool(found == (op == "in"))
        case "<", ">", "<=", ">=":
            let order: Int
            switch (a, b) {
            case let (.string(x), .string(y)): order = x.unicodeScalars.lexicographicallyPrecedes(y.unicodeScalars) ? -1 : x == y ? 0 : 1
            default:
                guard let x = a.number, let y = b.number else {
                    throw JinjaError(.runtime("'\(op)' not supported between instances of '\(a.typeName)' and '\(b.typeName)'"), at: at)
                }
                order = x < y ? -1 : x == y ? 0 : 1
            }
            switch op {
            case "<": return .bool(order < 0)
            case ">": return .bool(order > 0)
            case "<=": return .bool(order <= 0)
            default: return .bool(order >= 0)
            }
        case "+":
            switch (a, b) {
            case let (.string(x), .string(y)): return .string(x + y)
            case let (.list(x), .list(y)): return .list(x + y)
            default: break
            }
        case "*":
            switch (a, b) {
            case let (.string(s), .int(n)), let (.int(n), .string(s)): return .string(String(repeating: s, count: max(0, n)))
            case let (.list(l), .int(n)), let (.int(n), .list(l)): return .list(Array([[JinjaValue]](repeating: l, count: max(0, n)).joined()))
            default: break
            }
        default: break
        }
        // Numbers: int op int stays int (but / and negative **); anything with a float is float.
        guard a.number != nil, b.number != nil else { throw typeError() }
        if case .double = a {} else if case .double = b {} else if op != "/" {
            let x = Int(a.number!), y = Int(b.number!)
            switch op {
            case "+": return .int(x &+ y)
            case "-": return .int(x &- y)
            case "*": return .int(x &* y)
            case "//", "%":
                guard y != 0 else { throw JinjaError(.runtime("integer division or modulo by zero"), at: at) }
                let q = Int((Double(x) / Double(y)).rounded(.down)), r = x - q * y
                return .int(op == "//" ? q : r)
            case "**" where y >= 0:
                var p = 1
                for _ in 0..<y { p = p &* x }
                return .int(p)
            default: break
            }
        }
        let x = a.number!, y = b.number!
        switch op {
        case "+": return .double(x + y)
        case "-": return .double(x - y)
        case "*": return .double(x * y)
        case "/", "//", "%":
            guard y != 0 else { throw JinjaError(.runtime("float division by zero"), at: at) }
            if op == "/" { return .double(x / y) }
            let q = (x / y).rounded(.down)
            return .double(op == "//" ? q : x - q * y)
        case "**": return .double(pow(x, y))
        default: throw typeError()
        }
    }
}
