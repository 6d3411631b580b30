import Foundation

/// A Jinja template parsed once and rendered with variables, as transformers'
/// `apply_chat_template` renders a model's chat template: Jinja2's ImmutableSandboxedEnvironment
/// with trim_blocks and lstrip_blocks, loop controls (`break`, `continue`), TRL's
/// `{% generation %}`, and the globals `raise_exception`, `strftime_now`, `namespace`, `dict`
/// and `range`.
///
///   let t = try JinjaTemplate("{% for m in messages %}{{ m.role }}: {{ m.content | trim }}\n{% endfor %}")
///   let r = try t.render(["messages": .list([.dict(JinjaDict([("role", .string("user")), ("content", .string(" hi "))]))])])
///   r.text                // "user: hi\n"
///
/// Covered: `{{ }}`, `{% %}`, `{# #}` and whitespace control; if/elif/else, for (loop.*,
/// else, `if` filter, unpacking), set (plain, tuple, block, `ns.attr`), macro, filter blocks,
/// raw; Python's operators, literals, slices, methods of str, dict and list (the ones that do
/// not mutate); the filters in `JinjaParser.filters` and tests in `JinjaParser.tests`.
/// Anything else fails when parsed or rendered with `JinjaError.unsupported` naming it, and
/// every error carries the template's line and column.
public struct JinjaTemplate: Sendable {
    public let source: String
    let nodes: [JinjaNode]
    /// Scalar offset of each line's start, to place errors.
    let lineStarts: [Int]

    public init(_ source: String) throws(JinjaError) {
        self.source = source
        let lexer = JinjaLexer(source)
        var starts = [0]
        for (i, c) in lexer.scalars.enumerated() where c == "\n" { starts.append(i + 1) }
        lineStarts = starts
        do {
            var parser = JinjaParser(pieces: try lexer.pieces())
            nodes = try parser.parseTemplate()
        } catch {
            throw Self.placed(error, starts)
        }
    }

    /// What a render wrote, and the UTF-8 byte ranges of it that `{% generation %}` blocks wrote.
    public struct Rendering: Sendable, Equatable {
        public var text: String
        public var generationRanges: [Range<Int>]
    }

    /// Renders with `variables` as the top-level names; `now` is what `strftime_now` formats.
    public func render(_ variables: [String: JinjaValue], now: Date = Date()) throws(JinjaError) -> Rendering {
        let scope = JinjaScope(parent: nil)
        scope.variables = variables
        var interpreter = JinjaInterpreter(now: now)
        do {
            _ = try interpreter.execute(nodes, scope)
        } catch {
            throw Self.placed(error, lineStarts)
        }
        return Rendering(text: interpreter.out, generationRanges: interpreter.generationRanges)
    }

    /// Whether the template marks assistant text with `{% generation %}`.
    public var hasGenerationMarkers: Bool { Self.containsGeneration(nodes) }

    static func containsGeneration(_ nodes: [JinjaNode]) -> Bool {
        nodes.contains { node in
            switch node {
            case .generation: true
            case let .if(branches, otherwise): branches.contains { containsGeneration($0.body) } || containsGeneration(otherwise)
            case let .for(_, _, _, body, otherwise, _): containsGeneration(body) || containsGeneration(otherwise)
            case let .setBlock(_, body), let .macro(_, _, body), let .filterBlock(_, _, body, _): containsGeneration(body)
            default: false
            }
        }
    }

    static func placed(_ error: JinjaError, _ lineStarts: [Int]) -> JinjaError {
        var e = error
        if let offset = e.offset, e.line == nil {
            var lo = 0, hi = lineStarts.count - 1
            while lo < hi {
                let mid = (lo + hi + 1) / 2
                if lineStarts[mid] <= offset { lo = mid } else { hi = mid - 1 }
            }
            e.line = lo + 1
            e.column = offset - lineStarts[lo] + 1
        }
        return e
    }
}
