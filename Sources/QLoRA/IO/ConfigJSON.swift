import Foundation

/// config.json text as transformers reads it: JSONSerialization writes a float with an
/// integral value (30.0) as an integer (30), which transformers' strict config classes refuse
/// for float fields (final_logit_softcapping, llm_int8_threshold, rope_theta of some configs).
/// This writes such values with ".0", by key, wherever they are in the object.
public enum ConfigJSON {
    public static func data(_ object: Any) throws -> Data {
        var floatKeys: [String: Set<String>] = [:]   // key → the integral float values it holds
        collect(object, into: &floatKeys)
        var text = String(decoding: try JSONSerialization.data(withJSONObject: object,
                                                              options: [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]),
                          as: UTF8.self)
        for (key, values) in floatKeys {
            for v in values {
                for end in [",", "\n"] {
                    text = text.replacingOccurrences(of: "\"\(key)\" : \(v)" + end, with: "\"\(key)\" : \(v).0" + end)
                }
            }
        }
        return Data(text.utf8)
    }

    private static func collect(_ object: Any, into keys: inout [String: Set<String>]) {
        if let d = object as? [String: Any] {
            for (k, v) in d {
                if let i = integralFloat(v) { keys[k, default: []].insert(i) }
                collect(v, into: &keys)
            }
        } else if let a = object as? [Any] {
            for v in a { collect(v, into: &keys) }
        }
    }

    /// "30" for a float 30.0 (a Swift Double or Float, or an NSNumber of a double); nil otherwise.
    private static func integralFloat(_ v: Any) -> String? {
        let value: Double
        if let n = v as? NSNumber, type(of: v) != Bool.self, ["d", "f"].contains(String(cString: n.objCType)) {
            value = n.doubleValue
        } else if let d = v as? Double, !(v is Int) {
            value = d
        } else {
            return nil
        }
        guard value.isFinite, value == value.rounded(), abs(value) < 1e15 else { return nil }
        return String(Int64(value))
    }
}
