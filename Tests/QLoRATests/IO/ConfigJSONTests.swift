import Foundation
import QLoRA
import XCTest

/// config.json keeps floats with integral values as floats (transformers' strict config classes
/// refuse 30 for a float field) and integers as integers (and refuse 32.0 for an int field).
final class ConfigJSONTests: XCTestCase {
    func testIntegralFloatsKeepTheirPointAndIntegersStayIntegers() throws {
        let parsed = try JSONSerialization.jsonObject(with: Data(#"{"final_logit_softcapping": 30.0, "query_pre_attn_scalar": 24, "rope": {"rope_theta": 10000.0, "factor": 8}, "eps": 1e-06, "tie": true}"#.utf8))
        let object: [String: Any] = ["parsed": parsed, "swift_float": 6.0, "swift_int": 6, "half": 0.5]
        let text = String(decoding: try ConfigJSON.data(object), as: UTF8.self)
        for want in [#""final_logit_softcapping" : 30.0"#, #""query_pre_attn_scalar" : 24,"#, #""rope_theta" : 10000.0"#,
                     #""factor" : 8"#, #""swift_float" : 6.0"#, #""swift_int" : 6"#, #""half" : 0.5"#, #""tie" : true"#] {
            XCTAssertTrue(text.contains(want), "\(want) in \(text)")
        }
        XCTAssertFalse(text.contains(#""factor" : 8.0"#), text)
        XCTAssertFalse(text.contains(#""swift_int" : 6.0"#), text)
        let back = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any])
        XCTAssertEqual(back["half"] as? Double, 0.5)
    }
}
