import Foundation

/// A value inside a Jinja template, with the Python semantics that Jinja2 (which
/// transformers renders chat templates with) gives it:
///
///   undefined   a name or key that does not exist: prints "", is false, iterates as empty;
///               reading an attribute of it is an error ("'x' is undefined")
///   none        Python None: prints "None"
///   bool, int, double, string   Python's bool, int, float, str (True, 3, 0.5, 'a')
///   list        list, and tuple (`(a, b)`, dict.items()), which Python would print with
///               parentheses and compare unequal to a list; no chat template seen relies on either
///   dict        dict, keys kept in insertion order (tojson writes them in that order)
///   namespace   `namespace(a=1)`: a dict that `{% set ns.a = 2 %}` changes in place
///   macro       a `{% macro %}`, callable
///   builtin     a global function (`raise_exception`, `namespace`, `range`, …) or a
///               method bound to its receiver (`s.strip`)
public indirect enum JinjaValue: Sendable {
    case undefined(String)
    case none
    case bool(Bool)
    case int(Int)
    case double(Double)
    case string(String)
    case list([JinjaValue])
    case dict(JinjaDict)
    case namespace(JinjaNamespace)
    case macro(JinjaMacro)
    case builtin(name: String, receiver: JinjaValue?)

    /// Python's truth: empty strings, lists and dicts, 0, None and undefined are false.
    public var isTruthy: Bool {
        switch self {
        case .undefined, .none: false
        case let .bool(b): b
        case let .int(i): i != 0
        case let .double(d): d != 0
        case let .string(s): !s.isEmpty
        case let .list(l): !l.isEmpty
        case let .dict(d): !d.isEmpty
        case .namespace, .macro, .builtin: true
        }
    }

    public var isUndefined: Bool { if case .undefined = self { true } else { false } }

    /// The Python type name, for error messages.
    var typeName: String {
        switch self {
        case .undefined: "undefined"
        case .none: "NoneType"
        case .bool: "bool"
        case .int: "int"
        case .double: "float"
        case .string: "str"
        case .list: "list"
        case .dict: "dict"
        case .namespace: "Namespace"
        case .macro: "Macro"
        case .builtin: "function"
        }
    }

    /// Python's str(): what `{{ value }}` writes.
    public var text: String {
        switch self {
        case .undefined: ""
        case let .string(s): s
        default: repr
        }
    }

    /// Python's repr(): strings quoted, lists and dicts as Python writes them.
    var repr: String {
        switch self {
        case .undefined: ""
        case .none: "None"
        case let .bool(b): b ? "True" : "False"
        case let .int(i): String(i)
        case let .double(d): Self.pythonFloat(d)
        case let .string(s): Self.pythonRepr(s)
        case let .list(l): "[" + l.map(\.repr).joined(separator: ", ") + "]"
        case let .dict(d): "{" + d.map { "\(Self.pythonRepr($0.key)): \($0.value.repr)" }.joined(separator: ", ") + "}"
        case let .namespace(n): "<Namespace \(JinjaValue.dict(n.attributes).repr)>"
        case let .macro(m): "<Macro '\(m.name)'>"
        case let .builtin(name, _): "<built-in function \(name)>"
        }
    }

    /// Python's float repr: shortest round trip, "1.0" for integers, "1e-05" and "1e+16" outside [1e-4, 1e16).
    static func pythonFloat(_ d: Double) -> String {
        if d.isNaN { return "nan" }
        if d.isInfinite { return d < 0 ? "-inf" : "inf" }
        if d == d.rounded(), abs(d) < 1e16 { return String(format: "%.1f", d) }
        var s = "\(d)"  // Swift's shortest round-trip digits: "0.1", "1e-05", "1.5e+20"
        if let e = s.firstIndex(of: "e") {
            var mantissa = String(s[..<e]), exponent = String(s[s.index(after: e)...])
            if mantissa.hasSuffix(".0") { mantissa.removeLast(2) }
            let sign = exponent.hasPrefix("-") ? "-" : "+"
            exponent = String(exponent.drop { $0 == "-" || $0 == "+" })
            if exponent.count < 2 { exponent = "0" + exponent }
            s = mantissa + "e" + sign + exponent
        }
        return s
    }

    /// Python's repr of a str: single quotes unless the text holds ' and no ".
    static func pythonRepr(_ s: String) -> String {
        let quote: Character = s.contains("'") && !s.contains("\"") ? "\"" : "'"
        var out = String(quote)
        for c in s.unicodeScalars {
            switch c {
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            default:
                if Character(c) == quote { out += "\\" + String(c) }
                else if c.value < 0x20 || c.value == 0x7F { out += String(format: "\\x%02x", c.value) }
                else { out.unicodeScalars.append(c) }
            }
        }
        return out + String(quote)
    }
}

extension JinjaValue: Equatable {
    /// Python's ==: 1 == 1.0 == True; lists and dicts compare by content.
    public static func == (a: JinjaValue, b: JinjaValue) -> Bool {
        switch (a, b) {
        case (.undefined, .undefined), (.none, .none): true
        case let (.string(x), .string(y)): x == y
        case let (.list(x), .list(y)): x == y
        case let (.dict(x), .dict(y)): x.keys == y.keys && x.keys.allSatisfy { x[$0] == y[$0] }
        case let (.namespace(x), .namespace(y)): x === y
        case let (.macro(x), .macro(y)): x === y
        case let (.builtin(n, r), .builtin(m, s)): n == m && r == s
        default:
            if let x = a.number, let y = b.number { x == y } else { false }
        }
    }

    /// bool, int and float as a Double, for mixed comparisons and arithmetic.
    var number: Double? {
        switch self {
        case let .bool(b): b ? 1 : 0
        case let .int(i): Double(i)
        case let .double(d): d
        default: nil
        }
    }
}

/// A dict with Python's insertion order.
public struct JinjaDict: Sendable, Sequence, Equatable {
    public private(set) var keys: [String] = []
    private var storage: [String: JinjaValue] = [:]

    public init() {}
    public init(_ pairs: [(String, JinjaValue)]) { for (k, v) in pairs { self[k] = v } }

    public subscript(key: String) -> JinjaValue? {
        get { storage[key] }
        set {
            if storage[key] == nil, newValue != nil { keys.append(key) }
            if newValue == nil, storage[key] != nil { keys.removeAll { $0 == key } }
            storage[key] = newValue
        }
    }

    public var count: Int { keys.count }

    public static func == (a: JinjaDict, b: JinjaDict) -> Bool { JinjaValue.dict(a) == JinjaValue.dict(b) }
    public var isEmpty: Bool { keys.isEmpty }

    public func makeIterator() -> AnyIterator<(key: String, value: JinjaValue)> {
        var i = keys.makeIterator()
        return AnyIterator { i.next().map { ($0, storage[$0]!) } }
    }
}

/// The object `namespace(...)` makes: attributes that `{% set ns.name = … %}` assigns from
/// inside a loop, where a plain `set` would only reach the loop's own scope.
public final class JinjaNamespace: @unchecked Sendable {
    var attributes: JinjaDict
    init(_ attributes: JinjaDict) { self.attributes = attributes }
}

/// A `{% macro name(a, b=default) %}…{% endmacro %}`: called like a function, it renders
/// its body in a scope of its own over the scope it was defined in, and returns the text.
public final class JinjaMacro: @unchecked Sendable {
    let name: String
    let parameters: [(name: String, defaultValue: JinjaExpr?)]
    let body: [JinjaNode]
    let scope: JinjaScope
    init(name: String, parameters: [(name: String, defaultValue: JinjaExpr?)], body: [JinjaNode], scope: JinjaScope) {
        self.name = name
        self.parameters = parameters
        self.body = body
        self.scope = scope
    }
}
