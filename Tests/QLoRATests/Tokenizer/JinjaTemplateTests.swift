import Foundation
import QLoRA
import XCTest

/// The interpreter one construct at a time: the "units" of renderings.json (whitespace
/// control, loops, scoping, macros, expressions, filters, tests, tojson, errors) rendered by
/// transformers' own Jinja2 environment (tools/make_jinja_template_fixtures.py), then where
/// errors point (line and column) and what is refused by name.
final class JinjaTemplateTests: XCTestCase {
    func testUnitsRenderAsJinja2() throws {
        let f = try JinjaFixtureTests.fixture()
        let now = try JinjaFixtureTests.now(f)
        guard case let .list(units)? = JinjaFixtureTests.field(f, "units") else { return XCTFail("renderings.json has no units") }
        XCTAssertGreaterThan(units.count, 40)
        for u in units {
            let name = try XCTUnwrap(JinjaFixtureTests.string(JinjaFixtureTests.field(u, "name")))
            let source = try XCTUnwrap(JinjaFixtureTests.string(JinjaFixtureTests.field(u, "template")))
            guard case let .dict(variables)? = JinjaFixtureTests.field(u, "variables") else { return XCTFail(name) }
            var vars: [String: JinjaValue] = [:]
            for (k, v) in variables { vars[k] = v }
            let result = Result { () throws(JinjaError) in try JinjaTemplate(source).render(vars, now: now) }
            if let error = JinjaFixtureTests.string(JinjaFixtureTests.field(u, "error")) {
                switch result {
                case .success(let r): XCTFail("\(name): rendered \(r.text.debugDescription), jinja2 raised \(error)")
                case .failure(let e):
                    XCTAssertNotNil(e.line, name)
                    if case let .raised(m) = e.kind { XCTAssertEqual("TemplateError: " + m, error, name) }
                    if case let .runtime(m) = e.kind { XCTAssertTrue(error.hasSuffix(": " + m), "\(name): \(error) vs \(m)") }
                }
                continue
            }
            let expected = try XCTUnwrap(JinjaFixtureTests.string(JinjaFixtureTests.field(u, "text")), name)
            switch result {
            case .failure(let e): XCTFail("\(name): \(e)")
            case .success(let r):
                XCTAssertEqual(r.text, expected, name)
                if case let .list(ranges)? = JinjaFixtureTests.field(u, "generation") {
                    XCTAssertEqual(r.generationRanges.map { [JinjaValue.int($0.lowerBound), .int($0.upperBound)] }, ranges.map { v -> [JinjaValue] in
                        if case let .list(b) = v { b } else { [] }
                    }, name)
                }
            }
        }
    }

    func assertError(_ source: String, _ kind: JinjaError.Kind, line: Int, column: Int, file: StaticString = #filePath, fileLine: UInt = #line) {
        let variables: [String: JinjaValue] = ["items": .list([.int(1)]), "messages": .list([])]
        XCTAssertThrowsError(try JinjaTemplate(source).render(variables), file: file, line: fileLine) { e in
            XCTAssertEqual(e as? JinjaError, JinjaError(kind: kind, line: line, column: column), "\(e)", file: file, line: fileLine)
        }
    }

    func testErrorsNameTheConstructLineAndColumn() {
        assertError("{{ bos_token }}\n  {{ messages | wordwrap(40) }}", .unsupported("filter 'wordwrap'"), line: 2, column: 17)
        assertError("a\n\n  {% include 'tools.jinja' %}", .unsupported("tag 'include'"), line: 3, column: 3)
        assertError("{% if x is frobnicated %}{% endif %}", .unsupported("test 'frobnicated'"), line: 1, column: 12)
        assertError("{% for i in items %}\n  {{ items.append(i) }}\n{% endfor %}", .unsupported("method 'append' of list (a template cannot change a list under transformers' immutable sandbox)"), line: 2, column: 6)
        assertError("{% for i in items recursive %}{% endfor %}", .unsupported("recursive for loops"), line: 1, column: 1)
        // an index after '.' beyond 64 bits (found by fuzz-chat-template: it crashed the parser)
        assertError("{{ messages.99999999999999999999 }}", .unsupported("integer 99999999999999999999 (beyond 64 bits)"), line: 1, column: 13)
        assertError("{% for i in items %}\n{{ i }}", .syntax("unexpected end of template, expected 'else' or 'endfor'"), line: 1, column: 1)
        assertError("{% for i in items %}{% endif %}", .syntax("unexpected 'endif'"), line: 1, column: 21)
        assertError("{{ 'open }}", .syntax("unterminated string"), line: 1, column: 4)
        assertError("x\n{{ (1 + 2 }}", .syntax("unexpected '}'"), line: 2, column: 11)
        assertError("\n{% if true %}\n   {{ raise_exception('no system role') }}{% endif %}", .raised("no system role"), line: 3, column: 7)
        assertError("{{ messages[0].content.strip() }}", .runtime("list index out of range"), line: 1, column: 4)
        assertError("{{ 'a' - 1 }}", .runtime("unsupported operand type(s) for -: 'str' and 'int'"), line: 1, column: 4)
        assertError("{{ '{:>4}'.format(1) }}", .unsupported("format spec '{:>4}' in str.format"), line: 1, column: 4)
    }

    func testChatTemplateErrorsSayWhatToPass() {
        XCTAssertThrowsError(try ChatTemplate(template: "{% extends 'base.jinja' %}")) { e in
            XCTAssertEqual("\(e)", "chat template line 1, column 1: unsupported Jinja: tag 'extends'\n---> HINT: pass --chat-template chatml|llama3|llama2|gemma|phi3|phi3-legacy to use a built-in format instead")
        }
    }

    /// JSON in: key order and int/float kept, escapes and surrogate pairs read; bad JSON refused.
    func testJSONReaderKeepsKeyOrderAndNumberKinds() throws {
        let v = try JinjaValue(json: #" {"z": 1, "a": [1.0, 2, -3e2, true, null], "s": "\u00e9\ud83d\udc4b\n\"", "m": {}} "#)
        guard case let .dict(d) = v else { return XCTFail("\(v)") }
        XCTAssertEqual(d.keys, ["z", "a", "s", "m"])
        XCTAssertEqual(d["a"], .list([.double(1), .int(2), .double(-300), .bool(true), .none]))
        if case let .list(l)? = d["a"], case .double = l[0] {} else { XCTFail("1.0 must stay a float") }
        XCTAssertEqual(d["s"], .string("é👋\n\""))
        XCTAssertEqual(try JinjaTemplate("{{ v | tojson }}").render(["v": v]).text, #"{"z": 1, "a": [1.0, 2, -300.0, true, null], "s": "é👋\n\"", "m": {}}"#)
        for bad in ["{", "[1,]", "{\"a\" 1}", "\"open", "1 2", "tru"] {
            XCTAssertThrowsError(try JinjaValue(json: bad), bad)
        }
    }
}
