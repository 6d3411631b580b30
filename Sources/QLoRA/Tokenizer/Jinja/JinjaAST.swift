import Foundation

// The parsed template: statements (`JinjaNode`) holding expressions (`JinjaExpr`).

/// An expression, with the scalar offset of its first token for error messages.
final class JinjaExpr: @unchecked Sendable {
    indirect enum Kind {
        case literal(JinjaValue)
        case name(String)
        case list([JinjaExpr])
        case dict([(JinjaExpr, JinjaExpr)])
        case attribute(JinjaExpr, String)              // a.b
        case item(JinjaExpr, JinjaExpr)                // a[b]
        case slice(JinjaExpr, JinjaExpr?, JinjaExpr?, JinjaExpr?)  // a[start:stop:step]
        case call(JinjaExpr, [JinjaExpr], [(String, JinjaExpr)])
        case filter(JinjaExpr, String, [JinjaExpr], [(String, JinjaExpr)])
        case test(JinjaExpr, String, [JinjaExpr], negated: Bool)
        case unary(String, JinjaExpr)                  // not, -, +
        case binary(String, JinjaExpr, JinjaExpr)      // + - * / // % ** ~ == != < > <= >= in, not in
        case and(JinjaExpr, JinjaExpr)
        case or(JinjaExpr, JinjaExpr)
        case conditional(JinjaExpr, condition: JinjaExpr, otherwise: JinjaExpr?)
    }
    let kind: Kind
    let at: Int
    init(_ kind: Kind, at: Int) {
        self.kind = kind
        self.at = at
    }
}

/// A statement of the template body.
indirect enum JinjaNode: Sendable {
    case text(String)
    case output(JinjaExpr)
    case `if`([(condition: JinjaExpr, body: [JinjaNode])], otherwise: [JinjaNode])
    case `for`(targets: [String], iterable: JinjaExpr, filter: JinjaExpr?, body: [JinjaNode], otherwise: [JinjaNode], at: Int)
    case set(target: String, attribute: String?, JinjaExpr)
    case setTuple([String], JinjaExpr)
    case setBlock(String, [JinjaNode])
    case macro(name: String, parameters: [(name: String, defaultValue: JinjaExpr?)], body: [JinjaNode])
    case filterBlock(name: String, args: [JinjaExpr], body: [JinjaNode], at: Int)
    /// TRL's `{% generation %}…{% endgeneration %}`: renders its body and records where.
    case generation([JinjaNode])
    case `break`(at: Int)
    case `continue`(at: Int)
}
