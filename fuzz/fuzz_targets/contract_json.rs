//! The contract's JSON parser on arbitrary bytes under arbitrary limits: no panic, and no
//! parser differential — whatever it accepts, serde_json accepts as the same value.

#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis_contract::json::{JsonLimits, parse};

fuzz_target!(|data: &[u8]| {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    let limits = JsonLimits {
        max_depth: 1 + usize::from(selector % 40),
        max_object_keys: 1 + usize::from(selector % 7),
        max_total_values: 16 + usize::from(selector),
        max_string_bytes: 8 + usize::from(selector),
        max_array_items: 1 + usize::from(selector % 11),
        max_number_magnitude: if selector % 2 == 0 { 1e6 } else { 9_007_199_254_740_991.0 },
    };
    if let Ok(ours) = parse(body, &limits) {
        let theirs: serde_json::Value =
            serde_json::from_slice(body).expect("accepted by ours, refused by serde_json");
        assert_eq!(ours, theirs, "the two parsers read the document differently");
    }
});
