//! Product descriptors (ODCS v3 YAML), as `meshgov conformance check` and
//! the sidecar read them: `Descriptor::parse`, `ProductInfo::resolve`, and
//! every conformance rule against the example mesh, with the input as the
//! current descriptor (mode byte even) or as the previous one (odd, so the
//! evolution rules compare it with a real descriptor).
//!
//! Invariants: no panic; a descriptor that does not parse is reported as
//! SPEC-001 and nothing else; every finding names the file it is about.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshgov_conformance::{Input, check_product};
use meshgov_core::descriptor::{Descriptor, ProductInfo};
use meshgov_fuzz::{CREATED, example, split_mode};

const PATH: &str = "fuzz.yaml";
const REAL: &str = "products/user-profiles.yaml";

fuzz_target!(|data: &[u8]| {
    let Some((mode, rest)) = split_mode(data) else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    let ex = example();
    let parsed = Descriptor::parse(PATH, text);
    if let Ok(d) = &parsed {
        let _ = d.ports();
        let _ = d.product_id();
        if let Ok(info) = ProductInfo::resolve(d, &ex.policies.mesh) {
            let _ = ex.policies.slice(&info);
        }
    }
    let fuzzed = Input { path: PATH, text };
    let real = Input {
        path: REAL,
        text: &ex.descriptor_text,
    };
    let (current, previous) = if mode % 2 == 0 {
        (fuzzed, real)
    } else {
        (real, fuzzed)
    };
    let findings = check_product(&ex.policies, current, Some(previous), CREATED);
    for f in &findings {
        assert!(
            f.diag.path == PATH || f.diag.path == REAL,
            "finding about an unknown file: {:?}",
            f.diag
        );
    }
    if mode % 2 == 0 && parsed.is_err() {
        assert!(
            findings.iter().all(|f| f.diag.rule == "SPEC-001"),
            "an unparsable descriptor got findings beyond SPEC-001: {findings:?}"
        );
        assert!(!findings.is_empty(), "an unparsable descriptor passed");
    }
});
