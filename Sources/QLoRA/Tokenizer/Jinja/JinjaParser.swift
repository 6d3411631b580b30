import Foundation

/// A recursive-descent parser of the pieces from `JinjaLexer`, with Jinja2's precedence:
///
///   expression   or ['if' or ['else' expression]]
///   or / and / not
///   compare      concat… (== != < > <= >= in, not in)
///   math1        + -          concat  ~         math2  * / // %       pow  **
///   unary        - + then primary, postfix (.name, [index], [a:b:c], (args)),
///                filters (| name(args)) and tests (is [not] name [arg])
struct JinjaParser {
    let pieces: [JinjaPiece]
    var index = 0
    /// The tokens of the current tag or output, and the position in them.
    var tokens: [JinjaToken] = []
    var at = 0
    var tagOffset = 0

    init(pieces: [JinjaPiece]) { self.pieces = pieces }

    static let filters: Set<String> = [
        "abs", "capitalize", "count", "d", "default", "dictsort", "e", "escape", "first", "float",
        "indent", "int", "items", "join", "last", "length", "list", "lower", "map", "max", "min", "reject", "rejectattr",
        "replace", "reverse", "round", "safe", "select", "selectattr", "sort", "string", "sum", "title", "tojson", "trim",
        "unique", "upper", "wordcount",
    ]
    static let tests: Set<String> = [
        "boolean", "callable", "defined", "divisibleby", "eq", "equalto", "==", "escaped", "even", "false", "float", "ge", "gt",
        "in", "integer", "iterable", "le", "lower", "lt", "mapping", "ne", "none", "number", "odd", "sameas", "sequence",
        "string", "true", "undefined", "upper",
    ]

    // MARK: statements

    /// The whole template.
    mutating func parseTemplate() throws(JinjaError) -> [JinjaNode] {
        let (body, end) = try parseBody(until: [])
        if let end { throw JinjaError(.syntax("unexpected '\(end)'"), at: tagOffset) }
        return body
    }

    /// Nodes up to a tag whose keyword is in `ends` (returned, its tokens current), or the end;
    /// a missing end is reported at `opener`, the tag that needs it.
    mutating func parseBody(until ends: Set<String>, opener: Int = 0) throws(JinjaError) -> ([JinjaNode], String?) {
        var nodes: [JinjaNode] = []
        while index < pieces.count {
            let piece = pieces[index]
            index += 1
            switch piece {
            case let .text(s):
                nodes.append(.text(s))
            case let .output(t, offset):
                begin(t, offset)
                nodes.append(.output(try expression()))
                try expectEnd()
            case let .tag(t, offset):
                begin(t, offset)
                let keyword = try name()
                if ends.contains(keyword) { return (nodes, keyword) }
                nodes.append(try statement(keyword))
            }
        }
        if !ends.isEmpty {
            throw JinjaError(.syntax("unexpected end of template, expected " + ends.sorted().map { "'\($0)'" }.joined(separator: " or ")), at: opener)
        }
        return (nodes, nil)
    }

    mutating func begin(_ t: [JinjaToken], _ offset: Int) {
        tokens = t
        at = 0
        tagOffset = offset
    }

    mutating func statement(_ keyword: String) throws(JinjaError) -> JinjaNode {
        let start = tagOffset
        switch keyword {
        case "if":
            var branches: [(condition: JinjaExpr, body: [JinjaNode])] = []
            var condition = try expression()
            try expectEnd()
            while true {
                let (body, end) = try parseBody(until: ["elif", "else", "endif"], opener: start)
                branches.append((condition, body))
                switch end {
                case "elif":
                    condition = try expression()
                    try expectEnd()
                case "else":
                    try expectEnd()
                    let (otherwise, _) = try parseBody(until: ["endif"], opener: start)
                    try expectEnd()
                    return .if(branches, otherwise: otherwise)
                default:
                    try expectEnd()
                    return .if(branches, otherwise: [])
                }
            }
        case "for":
            var targets = [try name()]
            while accept(",") { targets.append(try name()) }
            try expectName("in")
            let iterable = try orExpression(conditional: false)
            var filter: JinjaExpr?
            if acceptName("if") { filter = try expression() }
            if acceptName("recursive") { throw JinjaError(.unsupported("recursive for loops"), at: start) }
            try expectEnd()
            let (body, end) = try parseBody(until: ["else", "endfor"], opener: start)
            var otherwise: [JinjaNode] = []
            try expectEnd()
            if end == "else" {
                (otherwise, _) = try parseBody(until: ["endfor"], opener: start)
                try expectEnd()
            }
            return .for(targets: targets, iterable: iterable, filter: filter, body: body, otherwise: otherwise, at: start)
        case "set":
            let target = try name()
            if accept(".") {
                let attribute = try name()
                try expect("=")
                let value = try expression()
                try expectEnd()
                return .set(target: target, attribute: attribute, value)
            }
            if peek(",") {
                var targets = [target]
                while accept(",") { targets.append(try name()) }
                try expect("=")
                let value = try tupleOrExpression()
                try expectEnd()
                return .setTuple(targets, value)
            }
            if accept("=") {
                let value = try tupleOrExpression()
                try expectEnd()
                return .set(target: target, attribute: nil, value)
            }
            if peek("|") { throw JinjaError(.unsupported("filters on a block set"), at: tokens[at].at) }
            try expectEnd()
            let (body, _) = try parseBody(until: ["endset"], opener: start)
            try expectEnd()
            return .setBlock(target, body)
        case "macro":
            let macroName = try name()
            try expect("(")
            var parameters: [(name: String, defaultValue: JinjaExpr?)] = []
            while !accept(")") {
                if !parameters.isEmpty { try expect(",") }
                if accept(")") { break }
                let p = try name()
                parameters.append((p, accept("=") ? try expression() : nil))
            }
            try expectEnd()
            let (body, _) = try parseBody(until: ["endmacro"], opener: start)
            try expectEnd()
            return .macro(name: macroName, parameters: parameters, body: body)
        case "filter":
            let filterName = try name()
            guard Self.filters.contains(filterName) else { throw JinjaError(.unsupported("filter '\(filterName)'"), at: start) }
            var args: [JinjaExpr] = []
            if accept("(") {
                while !accept(")") {
                    if !args.isEmpty { try expect(",") }
                    args.append(try expression())
                }
            }
            try expectEnd()
            let (body, _) = try parseBody(until: ["endfilter"], opener: start)
            try expectEnd()
            return .filterBlock(name: filterName, args: args, body: body, at: start)
        case "generation":
            try expectEnd()
            let (body, _) = try parseBody(until: ["endgeneration"], opener: start)
            try expectEnd()
            return .generation(body)
        case "raw":
            try expectEnd()
            let (body, _) = try parseBody(until: ["endraw"], opener: start)  // the lexer kept the body as one text
            return .text(body.map { if case let .text(s) = $0 { s } else { "" } }.joined())
        case "break":
            try expectEnd()
            return .break(at: start)
        case "continue":
            try expectEnd()
            return .continue(at: start)
        case "elif", "else", "endif", "endfor", "endset", "endmacro", "endfilter", "endgeneration", "endraw", "endcall":
            throw JinjaError(.syntax("unexpected '\(keyword)'"), at: start)
        default:
            throw JinjaError(.unsupported("tag '\(keyword)'"), at: start)
        }
    }

    // MARK: expressions

    /// `a, b` (a tuple, as a list) or one expression.
    mutating func tupleOrExpression() throws(JinjaError) -> JinjaExpr {
        let first = try expression()
        guard peek(",") else { return first }
        var items = [first]
        while accept(",") { items.append(try expression()) }
        return JinjaExpr(.list(items), at: first.at)
    }

    mutating func expression() throws(JinjaError) -> JinjaExpr { try orExpression(conditional: true) }

    mutating func orExpression(conditional: Bool) throws(JinjaError) -> JinjaExpr {
        var e = try andExpression()
        while acceptName("or") { e = JinjaExpr(.or(e, try andExpression()), at: e.at) }
        if conditional, acceptName("if") {
            let condition = try orExpression(conditional: false)
            let otherwise = acceptName("else") ? try expression() : nil
            return JinjaExpr(.conditional(e, condition: condition, otherwise: otherwise), at: e.at)
        }
        return e
    }

    mutating func andExpression() throws(JinjaError) -> JinjaExpr {
        var e = try notExpression()
        while acceptName("and") { e = JinjaExpr(.and(e, try notExpression()), at: e.at) }
        return e
    }

    mutating func notExpression() throws(JinjaError) -> JinjaExpr {
        if let t = current, t.kind == .name, t.text == "not" {
            at += 1
            return JinjaExpr(.unary("not", try notExpression()), at: t.at)
        }
        return try compare()
    }

    mutating func compare() throws(JinjaError) -> JinjaExpr {
        var e = try math1()
        while true {
            if let op = current, op.kind == .op, ["==", "!=", "<", ">", "<=", ">="].contains(op.text) {
                at += 1
                e = JinjaExpr(.binary(op.text, e, try math1()), at: e.at)
            } else if acceptName("in") {
                e = JinjaExpr(.binary("in", e, try math1()), at: e.at)
            } else if let t = current, t.kind == .name, t.text == "not", at + 1 < tokens.count, tokens[at + 1].kind == .name, tokens[at + 1].text == "in" {
                at += 2
                e = JinjaExpr(.binary("not in", e, try math1()), at: e.at)
            } else {
                return e
            }
        }
    }

    mutating func math1() throws(JinjaError) -> JinjaExpr {
        var e = try concat()
        while let op = current, op.kind == .op, op.text == "+" || op.text == "-" {
            at += 1
            e = JinjaExpr(.binary(op.text, e, try concat()), at: e.at)
        }
        return e
    }

    mutating func concat() throws(JinjaError) -> JinjaExpr {
        var e = try math2()
        while accept("~") { e = JinjaExpr(.binary("~", e, try math2()), at: e.at) }
        return e
    }

    mutating func math2() throws(JinjaError) -> JinjaExpr {
        var e = try power()
        while let op = current, op.kind == .op, ["*", "/", "//", "%"].contains(op.text) {
            at += 1
            e = JinjaExpr(.binary(op.text, e, try power()), at: e.at)
        }
        return e
    }

    mutating func power() throws(JinjaError) -> JinjaExpr {
        var e = try unary(withFilter: true)
        while accept("**") { e = JinjaExpr(.binary("**", e, try unary(withFilter: true)), at: e.at) }
        return e
    }

    mutating func unary(withFilter: Bool) throws(JinjaError) -> JinjaExpr {
        var e: JinjaExpr
        if let op = current, op.kind == .op, op.text == "-" || op.text == "+" {
            at += 1
            e = JinjaExpr(.unary(op.text, try unary(withFilter: false)), at: op.at)
        } else {
            e = try postfix(try primary())
        }
        return withFilter ? try filtersAndTests(e) : e
    }

    mutating func primary() throws(JinjaError) -> JinjaExpr {
        guard let t = current else { throw JinjaError(.syntax("expected an expression"), at: tokens.last?.at ?? tagOffset) }
        at += 1
        switch t.kind {
        case .name:
            switch t.text {
            case "true", "True": return JinjaExpr(.literal(.bool(true)), at: t.at)
            case "false", "False": return JinjaExpr(.literal(.bool(false)), at: t.at)
            case "none", "None": return JinjaExpr(.literal(.none), at: t.at)
            default: return JinjaExpr(.name(t.text), at: t.at)
            }
        case .string:
            var s = t.text
            while let next = current, next.kind == .string { s += next.text; at += 1 }  // 'a' 'b' is 'ab'
            return JinjaExpr(.literal(.string(s)), at: t.at)
        case .int:
            guard let i = Int(t.text) else { throw JinjaError(.unsupported("integer \(t.text) (beyond 64 bits)"), at: t.at) }
            return JinjaExpr(.literal(.int(i)), at: t.at)
        case .double:
            return JinjaExpr(.literal(.double(Double(t.text) ?? .nan)), at: t.at)
        case .op:
            switch t.text {
            case "(":
                if accept(")") { return JinjaExpr(.list([]), at: t.at) }
                let e = try expression()
                if peek(",") {
                    var items = [e]
                    while accept(",") { if peek(")") { break }; items.append(try expression()) }
                    try expect(")")
                    return JinjaExpr(.list(items), at: t.at)
                }
                try expect(")")
                return e
            case "[":
                var items: [JinjaExpr] = []
                while !accept("]") {
                    if !items.isEmpty { try expect(","); if accept("]") { break } }
                    items.append(try expression())
                }
                return JinjaExpr(.list(items), at: t.at)
            case "{":
                var pairs: [(JinjaExpr, JinjaExpr)] = []
                while !accept("}") {
                    if !pairs.isEmpty { try expect(","); if accept("}") { break } }
                    let k = try expression()
                    try expect(":")
                    pairs.append((k, try expression()))
                }
                return JinjaExpr(.dict(pairs), at: t.at)
            default:
                throw JinjaError(.syntax("unexpected '\(t.text)'"), at: t.at)
            }
        }
    }

    mutating func postfix(_ base: JinjaExpr) throws(JinjaError) -> JinjaExpr {
        var e = base
        while true {
            if accept(".") {
                guard let t = current, t.kind == .name || t.kind == .int else { throw JinjaError(.syntax("expected a name after '.'"), at: current?.at ?? e.at) }
                at += 1
                if t.kind == .int {
                    guard let i = Int(t.text) else { throw JinjaError(.unsupported("integer \(t.text) (beyond 64 bits)"), at: t.at) }
                    e = JinjaExpr(.item(e, JinjaExpr(.literal(.int(i)), at: t.at)), at: e.at)
                } else {
                    e = JinjaExpr(.attribute(e, t.text), at: e.at)
                }
            } else if accept("[") {
                e = try subscriptOrSlice(e)
            } else if peek("(") {
                let (args, kwargs) = try callArguments()
                e = JinjaExpr(.call(e, args, kwargs), at: e.at)
            } else {
                return e
            }
        }
    }

    mutating func subscriptOrSlice(_ e: JinjaExpr) throws(JinjaError) -> JinjaExpr {
        var parts: [JinjaExpr?] = [nil]
        var colons = 0
        while !accept("]") {
            if accept(":") {
                colons += 1
                parts.append(nil)
                guard colons <= 2 else { throw JinjaError(.syntax("too many ':' in a slice"), at: e.at) }
            } else {
                guard parts[parts.count - 1] == nil else { throw JinjaError(.unsupported("a tuple as subscript"), at: e.at) }
                parts[parts.count - 1] = try expression()
            }
        }
        if colons == 0 {
            guard let index = parts[0] else { throw JinjaError(.syntax("expected a subscript"), at: e.at) }
            return JinjaExpr(.item(e, index), at: e.at)
        }
        while parts.count < 3 { parts.append(nil) }
        return JinjaExpr(.slice(e, parts[0], parts[1], parts[2]), at: e.at)
    }

    /// `(a, b, key=value)`.
    mutating func callArguments() throws(JinjaError) -> ([JinjaExpr], [(String, JinjaExpr)]) {
        try expect("(")
        var args: [JinjaExpr] = [], kwargs: [(String, JinjaExpr)] = []
        while !accept(")") {
            if !args.isEmpty || !kwargs.isEmpty { try expect(","); if accept(")") { break } }
            if let t = current, t.kind == .name, at + 1 < tokens.count, tokens[at + 1].kind == .op, tokens[at + 1].text == "=" {
                at += 2
                kwargs.append((t.text, try expression()))
            } else {
                if let t = current, t.kind == .op, t.text == "*" || t.text == "**" { throw JinjaError(.unsupported("*args and **kwargs in calls"), at: t.at) }
                args.append(try expression())
            }
        }
        return (args, kwargs)
    }

    mutating func filtersAndTests(_ base: JinjaExpr) throws(JinjaError) -> JinjaExpr {
        var e = base
        while true {
            if accept("|") {
                let t = current
                let filterName = try name()
                guard Self.filters.contains(filterName) else { throw JinjaError(.unsupported("filter '\(filterName)'"), at: t?.at ?? e.at) }
                var args: [JinjaExpr] = [], kwargs: [(String, JinjaExpr)] = []
                if peek("(") { (args, kwargs) = try callArguments() }
                e = JinjaExpr(.filter(e, filterName, args, kwargs), at: e.at)
            } else if acceptName("is") {
                let negated = acceptName("not")
                guard let t = current else { throw JinjaError(.syntax("expected a test name after 'is'"), at: e.at) }
                at += 1
                let testName = t.text
                guard t.kind == .name || testName == "==", Self.tests.contains(testName) else { throw JinjaError(.unsupported("test '\(testName)'"), at: t.at) }
                var args: [JinjaExpr] = []
                if peek("(") {
                    (args, _) = try callArguments()
                } else if let next = current, next.kind != .op || ["(", "[", "{", "-"].contains(next.text),
                          !(next.kind == .name && ["and", "or", "else", "if", "in", "not", "is"].contains(next.text)) {
                    args = [try unary(withFilter: false)]
                }
                e = JinjaExpr(.test(e, testName, args, negated: negated), at: e.at)
            } else {
                return e
            }
        }
    }

    // MARK: tokens

    var current: JinjaToken? { at < tokens.count ? tokens[at] : nil }

    func peek(_ op: String) -> Bool { current.map { $0.kind == .op && $0.text == op } ?? false }

    mutating func accept(_ op: String) -> Bool {
        guard peek(op) else { return false }
        at += 1
        return true
    }

    mutating func acceptName(_ n: String) -> Bool {
        guard let t = current, t.kind == .name, t.text == n else { return false }
        at += 1
        return true
    }

    mutating func expect(_ op: String) throws(JinjaError) {
        guard accept(op) else { throw JinjaError(.syntax("expected '\(op)'" + (current.map { ", found '\($0.text)'" } ?? "")), at: current?.at ?? tagOffset) }
    }

    mutating func expectName(_ n: String) throws(JinjaError) {
        guard acceptName(n) else { throw JinjaError(.syntax("expected '\(n)'" + (current.map { ", found '\($0.text)'" } ?? "")), at: current?.at ?? tagOffset) }
    }

    mutating func name() throws(JinjaError) -> String {
        guard let t = current, t.kind == .name else { throw JinjaError(.syntax("expected a name" + (current.map { ", found '\($0.text)'" } ?? "")), at: current?.at ?? tagOffset) }
        at += 1
        return t.text
    }

    mutating func expectEnd() throws(JinjaError) {
        if let t = current { throw JinjaError(.syntax("unexpected '\(t.text)'"), at: t.at) }
    }
}
