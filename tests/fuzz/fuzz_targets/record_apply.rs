//! Upstream records on the per-record path (`meshgov_anonymize::RecordProgram`
//! `apply_json` and `project`), from NDJSON lines (mode byte even) or CSV
//! files (odd: a header row, then rows turned into records the way a CSV
//! upstream does, `meshgov_sidecar::upstream::CsvRows`, fed in pieces). Every built-in
//! transform is in the plan; bit 1 of the mode byte adds a row filter.
//!
//! Invariants: no panic; `apply_json` and `project` agree; an emitted record
//! is one JSON object line with exactly the plan's columns, the
//! redacted field `null` and the dropped field absent; a line that is not
//! JSON (grammar) is never emitted, and what is emitted reads back with
//! serde_json; CSV rows always become valid JSON.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshgov_anonymize::{
    Clause, CompareOp, DatePart, FieldRule, Outcome, RecordProgram, RowPredicate, Transform,
};
use meshgov_core::descriptor::FieldInfo;
use meshgov_core::mesh::Level;
use meshgov_sidecar::upstream::{CsvRows, CsvSchema, CsvStep};
use std::sync::LazyLock;

fn fields() -> Vec<FieldRule> {
    let hmac = Transform::hmac_sha256(b"fuzz-only-pseudonym-key-0123456789abcdef", "u_")
        .unwrap_or_else(|e| panic!("{e}"));
    vec![
        FieldRule::new("id", Transform::Clear),
        FieldRule::new(
            "email",
            Transform::Mask {
                keep_first: 1,
                keep_last: 4,
                mask_char: '*',
            },
        ),
        FieldRule::new("user", hmac),
        FieldRule::new("birth", Transform::GeneralizeDate(DatePart::Year)),
        FieldRule::new("ts", Transform::GeneralizeDate(DatePart::Month)),
        FieldRule::new("age", Transform::GeneralizeBucket { width: 10 }),
        FieldRule::new("zip", Transform::GeneralizePrefix { chars: 3 }),
        FieldRule::new("ssn", Transform::Redact { drop: false }),
        FieldRule::new("secret", Transform::Redact { drop: true }),
    ]
}

static PLANS: LazyLock<[RecordProgram; 2]> = LazyLock::new(|| {
    let filter = RowPredicate::all(vec![
        Clause::new("country", CompareOp::In, serde_json::json!(["DE", "SE"])),
        Clause::new("age", CompareOp::Ge, serde_json::json!(18)),
    ]);
    [
        RecordProgram::new(fields(), RowPredicate::keep_all()),
        RecordProgram::new(fields(), filter),
    ]
    .map(|p| p.unwrap_or_else(|e| panic!("plan: {e}")))
});

static CSV: LazyLock<CsvSchema> = LazyLock::new(|| {
    let types = [
        ("id", "string"),
        ("email", "string"),
        ("user", "string"),
        ("birth", "date"),
        ("ts", "date"),
        ("age", "integer"),
        ("zip", "string"),
        ("ssn", "string"),
        ("secret", "string"),
        ("country", "string"),
        ("active", "boolean"),
        ("score", "number"),
    ];
    let fields: Vec<FieldInfo> = types
        .iter()
        .map(|(name, t)| FieldInfo {
            name: (*name).into(),
            logical_type: Some((*t).into()),
            classification: None,
            level: Level::Public,
            direct_identifier: false,
        })
        .collect();
    CsvSchema::new(&fields)
});

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let plan = &PLANS[usize::from(mode & 2 != 0)];
    if mode % 2 == 0 {
        for line in rest.split(|b| *b == b'\n') {
            check(plan, line);
        }
        return;
    }
    // The CSV reader meets chunk edges anywhere: pieces of 1 to 16 bytes.
    let piece = usize::from(mode >> 4) + 1;
    let mut rows = CsvRows::new(CSV.clone(), 4096);
    let mut pieces: Vec<&[u8]> = rest.chunks(piece).collect();
    pieces.push(b"");
    for p in pieces {
        let mut at = 0;
        loop {
            let (step, used) = rows.step(&p[at..]);
            at += used;
            match step {
                CsvStep::Record => {
                    let record = rows.record();
                    if let Err(e) = serde_json::from_slice::<serde_json::Value>(record) {
                        panic!(
                            "a CSV row became invalid JSON {:?}: {e}",
                            String::from_utf8_lossy(record)
                        );
                    }
                    check(plan, record);
                }
                CsvStep::Malformed => {}
                CsvStep::NeedInput | CsvStep::FileEnd => break,
            }
            // Empty input ends the file: only the last, empty piece may.
            if at == p.len() && !p.is_empty() {
                break;
            }
        }
    }
});

fn check(plan: &RecordProgram, line: &[u8]) {
    let mut out = Vec::new();
    let applied = plan.apply_json(line, &mut out);
    let mut cells = Vec::new();
    let projected = plan.project(line, &mut cells);
    assert_eq!(
        applied.as_ref().ok(),
        projected.as_ref().ok(),
        "apply_json and project disagree on {:?}",
        String::from_utf8_lossy(line)
    );
    let columns: Vec<&str> = plan.columns().collect();
    match applied {
        Ok(Outcome::Emitted) => {
            assert_eq!(cells.len(), columns.len());
            assert_eq!(out.last(), Some(&b'\n'));
            let body = out.get(..out.len() - 1).unwrap_or_default();
            assert!(!body.contains(&b'\n'), "an emitted record spans lines");
            let obj: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(body)
                .unwrap_or_else(|e| {
                    panic!(
                        "emitted invalid JSON {:?} from {:?}: {e}",
                        String::from_utf8_lossy(body),
                        String::from_utf8_lossy(line)
                    )
                });
            let mut keys: Vec<&str> = obj.keys().map(String::as_str).collect();
            keys.sort_unstable();
            let mut sorted = columns.clone();
            sorted.sort_unstable();
            assert_eq!(keys, sorted, "emitted keys are not the plan's columns");
            assert_eq!(obj.get("ssn"), Some(&serde_json::Value::Null));
            assert!(!obj.contains_key("secret"));
            // JSON grammar (RFC 8259), read without converting numbers: a
            // number beyond f64's range in a field the plan ignores is
            // valid, and the record is served without it.
            match serde_json::from_slice::<&serde_json::value::RawValue>(line) {
                Ok(_) => {}
                Err(e) if e.to_string().contains("recursion limit") => {}
                Err(e) => panic!(
                    "emitted a record from a line that is not JSON ({e}): {:?}",
                    String::from_utf8_lossy(line)
                ),
            }
        }
        Ok(_) | Err(_) => assert!(out.is_empty(), "a record not emitted left output"),
    }
}
