//! Condition text and a JSON document → parse and evaluate. Input: the condition, a newline,
//! then the document.
#![no_main]

use governance::policy::cond::Condition;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (cond, doc) = text.split_once('\n').unwrap_or((text, "null"));
    let Ok(c) = cond.parse::<Condition>() else {
        return;
    };
    // What a condition prints parses back to the same condition.
    let again: Condition = c.to_string().parse().expect("a condition's text parses");
    assert_eq!(again, c);
    let _ = c.path();
    if let Ok(doc) = serde_json::from_str::<serde_json::Value>(doc) {
        let held = c.eval(&doc);
        if held {
            assert!(
                c.lookup(&doc).is_some(),
                "a condition that holds has a value"
            );
        }
    }
});
