import Foundation

/// What went wrong in a template, and where (1-based line and column of the tag or
/// expression, once the template has placed it).
///
///   syntax        the text is not Jinja ("expected 'endfor'")
///   unsupported   Jinja that this interpreter does not implement: the construct is named
///                 ("filter 'wordwrap'", "tag 'include'", "method 'append' of list")
///   raised        the template called raise_exception(message)
///   runtime       an error Jinja2 would raise too ("'foo' is undefined", "unsupported
///                 operand types for +: 'int' and 'str'")
public struct JinjaError: Error, Equatable, CustomStringConvertible {
    public enum Kind: Equatable, Sendable {
        case syntax(String)
        case unsupported(String)
        case raised(String)
        case runtime(String)
    }
    public var kind: Kind
    public var line: Int?
    public var column: Int?
    /// Unicode scalar offset into the template, before `line` and `column` are known.
    var offset: Int?

    init(_ kind: Kind, at offset: Int? = nil) {
        self.kind = kind
        self.offset = offset
    }

    public init(kind: Kind, line: Int?, column: Int?) {
        self.kind = kind
        self.line = line
        self.column = column
    }

    public static func == (a: JinjaError, b: JinjaError) -> Bool { a.kind == b.kind && a.line == b.line && a.column == b.column }

    public var description: String {
        let place = line.map { "line \($0)" + (column.map { ", column \($0)" } ?? "") + ": " } ?? ""
        switch kind {
        case let .syntax(m): return "chat template \(place)syntax error: \(m)"
        case let .unsupported(m): return "chat template \(place)unsupported Jinja: \(m)"
        case let .raised(m): return "chat template \(place)raised: \(m)"
        case let .runtime(m): return "chat template \(place)\(m)"
        }
    }
}
