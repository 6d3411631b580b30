import Foundation

/// RFC 4180 CSV: records end at CRLF or LF; fields are separated by commas; a field that starts
/// with '"' is quoted, may hold commas and line breaks, and writes '"' as '""'. A '"' inside an
/// unquoted field is kept as written (as Python's csv module does); after a closing quote only
/// ',' or a line end may follow. Blank lines are skipped. The first record is the header.
struct CSVReader {
    struct Record {
        /// The 1-based line the record starts on.
        var line: Int
        var fields: [String]
    }

    /// All records of `bytes`, header first. A malformed quote throws with the record's line:
    /// the rest of the file cannot be read after one.
    static func records(_ bytes: [UInt8]) throws(SFTRowProblemAtLine) -> [Record] {
        let quote = UInt8(ascii: "\""), comma = UInt8(ascii: ","), cr = UInt8(ascii: "\r"), lf = UInt8(ascii: "\n")
        let n = bytes.count
        var records: [Record] = []
        var fields: [String] = []
        var field: [UInt8] = []
        var fieldQuoted = false
        var line = 1, recordLine = 1
        var i = 0
        func endField() {
            fields.append(String(decoding: field, as: UTF8.self))
            field.removeAll(keepingCapacity: true)
            fieldQuoted = false
        }
        func endRecord() {
            let blank = fields.isEmpty && field.isEmpty && !fieldQuoted
            endField()
            if !blank { records.append(Record(line: recordLine, fields: fields)) }
            fields.removeAll()
        }
        func atLineEnd(_ j: Int) -> Bool { bytes[j] == lf || (bytes[j] == cr && j + 1 < n && bytes[j + 1] == lf) }
        while i < n {
            if field.isEmpty && !fieldQuoted && bytes[i] == quote {
                i += 1
                while true {
                    guard i < n else { throw SFTRowProblemAtLine(line: recordLine, problem: .csvUnterminatedQuote) }
                    if bytes[i] == quote {
                        if i + 1 < n && bytes[i + 1] == quote {
                            field.append(quote)
                            i += 2
                            continue
                        }
                        i += 1
                        break
                    }
                    if bytes[i] == lf { line += 1 }
                    field.append(bytes[i])
                    i += 1
                }
                fieldQuoted = true
                guard i == n || bytes[i] == comma || atLineEnd(i) else {
                    let after = String(decoding: bytes[i..<min(n, i + 4)], as: UTF8.self)
                    throw SFTRowProblemAtLine(line: line, problem: .csvCharacterAfterQuote(character: String(after.first!)))
                }
            } else if bytes[i] == comma {
                endField()
                i += 1
            } else if atLineEnd(i) {
                i += bytes[i] == cr ? 2 : 1
                endRecord()
                line += 1
                recordLine = line
            } else {
                field.append(bytes[i])
                i += 1
            }
        }
        if !fields.isEmpty || !field.isEmpty || fieldQuoted { endRecord() }
        return records
    }
}

/// A row problem with the line it is on, before the file's path is known to the thrower.
struct SFTRowProblemAtLine: Error {
    var line: Int
    var problem: SFTRowProblem
}
