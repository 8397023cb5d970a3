//! What a WebAssembly plugin returns across the ABI (`wasm-plugins/ABI.md`):
//! the host's decoding of a guest's transform and validator responses
//! (`meshgov_wasm::abi::decode_values`, `decode_verdicts`). A plugin is
//! never trusted, so its output is untrusted input.
//!
//! The mode byte is how many values the host asked for (0..=15).
//! Invariants: no panic; an accepted response has exactly that many items;
//! every decoded value is valid JSON; decoded values re-encode (as the host
//! encodes requests) and decode again to the same values (round trip);
//! guest text (refusal and verdict reasons), which reaches logs and
//! operators, is cut to 200 characters and carries no control characters
//! (no forged log lines).
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshgov_fuzz::split_mode;
use meshgov_wasm::abi::{Rejection, decode_values, decode_verdicts, encode_values};

fuzz_target!(|data: &[u8]| {
    let Some((mode, response)) = split_mode(data) else {
        return;
    };
    let expected = usize::from(mode % 16);
    if let Ok(values) = decode_values(response, expected) {
        assert_eq!(values.len(), expected);
        for v in &values {
            if let Err(e) = serde_json::from_str::<serde_json::Value>(v.get()) {
                panic!("decoded invalid JSON {:?}: {e}", v.get());
            }
        }
        let refs: Vec<_> = values.iter().map(|v| &**v).collect();
        let request = encode_values(&refs).unwrap_or_else(|e| panic!("re-encoding: {e}"));
        // A request is `count` then values; a response is `status` then the same.
        let mut again = vec![0u8];
        again.extend_from_slice(&request);
        let back = decode_values(&again, expected)
            .unwrap_or_else(|e| panic!("a re-encoded response does not decode: {e:?}"));
        let texts = |vs: &[Box<serde_json::value::RawValue>]| {
            vs.iter().map(|v| v.get().to_owned()).collect::<Vec<_>>()
        };
        assert_eq!(texts(&values), texts(&back), "values change across the ABI");
    }
    match decode_verdicts(response, expected) {
        Ok(verdicts) => {
            assert_eq!(verdicts.len(), expected);
            for reason in verdicts.iter().flatten() {
                operator_text(reason);
            }
        }
        Err(Rejection::Refused(reason)) => operator_text(&reason),
        Err(Rejection::Malformed(_)) => {}
    }
    if let Err(Rejection::Refused(reason)) = decode_values(response, expected) {
        operator_text(&reason);
    }
});

fn operator_text(reason: &str) {
    assert!(
        reason.chars().count() <= 201,
        "a guest reason of {} chars",
        reason.chars().count()
    );
    assert!(
        !reason.chars().any(char::is_control),
        "a control character in a guest reason: {reason:?}"
    );
}
