//! The per-record contract of `RecordProgram`, one behaviour per test.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::borrow::Cow;
use std::sync::Arc;

use meshgov_anonymize::{
    Cell, Clause, CompareOp, DatePart, FieldRule, Outcome, ProgramError, RecordError,
    RecordProgram, RowPredicate, Transform,
};
use serde_json::{Value, json};

const SECRET: &[u8; 32] = b"test-secret-test-secret-test-sec";

fn plan(fields: Vec<FieldRule>) -> RecordProgram {
    RecordProgram::new(fields, RowPredicate::keep_all()).unwrap()
}

fn filtered_plan(fields: Vec<FieldRule>, clauses: Vec<Clause>) -> RecordProgram {
    RecordProgram::new(fields, RowPredicate::all(clauses)).unwrap()
}

fn clear(name: &str) -> FieldRule {
    FieldRule::new(name, Transform::Clear)
}

/// Applies the plan and returns the written line as text.
fn emit(plan: &RecordProgram, line: &str) -> String {
    let mut out = Vec::new();
    assert_eq!(
        plan.apply_json(line.as_bytes(), &mut out),
        Ok(Outcome::Emitted)
    );
    let text = String::from_utf8(out).unwrap();
    let body = text.strip_suffix('\n').expect("ends with a newline");
    assert!(!body.contains('\n'), "one line per record");
    serde_json::from_str::<Value>(body).expect("output is valid JSON");
    text
}

fn outcome(plan: &RecordProgram, line: &str) -> Outcome {
    let mut out = Vec::new();
    let outcome = plan.apply_json(line.as_bytes(), &mut out).unwrap();
    assert_eq!(outcome == Outcome::Filtered, out.is_empty());
    outcome
}

fn refusal(plan: &RecordProgram, line: &[u8]) -> RecordError {
    let mut out = b"earlier record\n".to_vec();
    let err = plan.apply_json(line, &mut out).unwrap_err();
    assert_eq!(out, b"earlier record\n", "a refused record writes nothing");
    let mut cells = vec![Cell::Null];
    assert_eq!(plan.project(line, &mut cells).unwrap_err(), err);
    assert!(cells.is_empty());
    err
}

#[test]
fn writes_only_plan_fields_in_plan_order() {
    let p = plan(vec![clear("c"), clear("a"), clear("b")]);
    let out = emit(&p, r#"{"a":1,"b":2,"secret":"x","c":3,"nested":{"a":9}}"#);
    assert_eq!(out, "{\"c\":3,\"a\":1,\"b\":2}\n");
}

#[test]
fn missing_fields_are_null_and_dropped_fields_absent() {
    let p = plan(vec![
        FieldRule::new("gone", Transform::Redact { drop: true }),
        clear("a"),
        FieldRule::new("nulled", Transform::Redact { drop: false }),
        clear("missing"),
        FieldRule::new("also_gone", Transform::Redact { drop: true }),
    ]);
    assert_eq!(
        emit(&p, r#"{"gone":1,"a":"x","nulled":"secret","also_gone":2}"#),
        "{\"a\":\"x\",\"nulled\":null,\"missing\":null}\n"
    );
    assert_eq!(
        emit(&p, "{}"),
        "{\"a\":null,\"nulled\":null,\"missing\":null}\n"
    );
    assert_eq!(p.columns().collect::<Vec<_>>(), ["a", "nulled", "missing"]);
}

#[test]
fn a_plan_of_dropped_fields_writes_empty_objects() {
    let p = plan(vec![FieldRule::new("x", Transform::Redact { drop: true })]);
    assert_eq!(emit(&p, r#"{"x":1}"#), "{}\n");
    assert_eq!(plan(vec![]).columns().len(), 0);
}

#[test]
fn clear_copies_raw_text_exactly() {
    let p = plan(vec![clear("s"), clear("n"), clear("o"), clear("b")]);
    let line = r#"{"s":"tab\there \"q\" \u00e9 \ud83c\udfb5 é","n":1.50E+2,"o":{"k":[1,null,{"z":"\\"}]},"b":false}"#;
    assert_eq!(
        emit(&p, line),
        concat!(
            r#"{"s":"tab\there \"q\" \u00e9 \ud83c\udfb5 é","n":1.50E+2,"#,
            r#""o":{"k":[1,null,{"z":"\\"}]},"b":false}"#,
            "\n"
        )
    );
}

#[test]
fn whitespace_around_values_is_not_copied() {
    let p = plan(vec![clear("a"), clear("b")]);
    assert_eq!(
        emit(&p, " \t{ \"a\" : [ 1 , 2 ] ,\n\"b\":\"x\" }  \r"),
        "{\"a\":[ 1 , 2 ],\"b\":\"x\"}\n"
    );
}

#[test]
fn escaped_input_keys_match_plan_fields() {
    let p = plan(vec![clear("user_id"), clear("naïve")]);
    assert_eq!(
        emit(&p, r#"{"user\u005fid":7,"na\u00efve":true}"#),
        "{\"user_id\":7,\"naïve\":true}\n"
    );
}

#[test]
fn plan_field_names_are_escaped_in_output() {
    let p = plan(vec![clear("a\"b"), clear("line\nbreak")]);
    let out = emit(&p, r#"{"a\"b":1,"line\nbreak":2}"#);
    let parsed: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(parsed, json!({"a\"b": 1, "line\nbreak": 2}));
}

#[test]
fn duplicate_keys_the_plan_reads_are_refused() {
    let p = plan(vec![clear("id")]);
    let err = refusal(&p, br#"{"id":"public","other":1,"id":"secret"}"#);
    assert_eq!(err, RecordError::DuplicateField { field: "id".into() });
    // Also when the field is only used by the filter, or spelled with escapes.
    let f = filtered_plan(
        vec![clear("id")],
        vec![Clause::new("tenant", CompareOp::Eq, json!("a"))],
    );
    assert!(matches!(
        refusal(&f, br#"{"tenant":"a","id":1,"tenan\u0074":"b"}"#),
        RecordError::DuplicateField { .. }
    ));
}

#[test]
fn duplicate_keys_the_plan_ignores_are_harmless() {
    let p = plan(vec![
        clear("id"),
        FieldRule::new("gone", Transform::Redact { drop: true }),
    ]);
    assert_eq!(
        emit(&p, r#"{"x":1,"x":2,"gone":1,"gone":2,"id":3}"#),
        "{\"id\":3}\n"
    );
}

#[test]
fn malformed_records_are_refused_without_quoting_them() {
    let p = plan(vec![clear("a")]);
    type Expectation = fn(&RecordError) -> bool;
    let cases: &[(&[u8], Expectation)] = &[
        (b"", |e| *e == RecordError::Empty),
        (b"  \r", |e| *e == RecordError::Empty),
        (b"\"SECRET\"", |e| *e == RecordError::NotAnObject),
        (b"[\"SECRET\"]", |e| *e == RecordError::NotAnObject),
        (b"SECRET", |e| *e == RecordError::NotAnObject),
        (b"42", |e| *e == RecordError::NotAnObject),
        (b"null", |e| *e == RecordError::NotAnObject),
        (br#"{"a":"SECRET"} trailing"#, |e| {
            matches!(e, RecordError::Syntax { .. })
        }),
        (br#"{"a":"SECRET"}{"a":1}"#, |e| {
            matches!(e, RecordError::Syntax { .. })
        }),
        (br#"{"a":"SECRET""#, |e| *e == RecordError::Truncated),
        (br#"{"a":"SECRET"#, |e| *e == RecordError::Truncated),
        (br#"{"a":SECRET}"#, |e| {
            matches!(e, RecordError::Syntax { .. })
        }),
        (br#"{"a":"SEC\qRET"}"#, |e| {
            matches!(e, RecordError::Syntax { .. })
        }),
        (b"{\"a\":\"SEC\nRET\"}", |e| {
            matches!(e, RecordError::Syntax { .. })
        }),
        (br#"{"a":1,}"#, |e| matches!(e, RecordError::Syntax { .. })),
        (br#"{"b":[1,2}"#, |e| {
            matches!(e, RecordError::Syntax { .. })
        }),
        (b"{\"a\":\"SECRET\xff\"}", |e| {
            *e == RecordError::NotUtf8 { offset: 12 }
        }),
    ];
    for (line, expected) in cases {
        let err = refusal(&p, line);
        assert!(expected(&err), "{}: {err:?}", String::from_utf8_lossy(line));
        let message = err.to_string();
        assert!(!message.contains("SECRET"), "{message}");
        assert!(!message.contains("SEC"), "{message}");
    }
}

#[test]
fn deep_nesting_is_refused_where_it_would_leave() {
    let nested = |depth: usize| format!("{}{}", "[".repeat(depth), "]".repeat(depth));
    let p = plan(vec![clear("a")]);
    let deep = format!("{{\"a\":{}}}", nested(100_000));
    assert_eq!(
        refusal(&p, deep.as_bytes()),
        RecordError::TooDeep {
            field: "a".into(),
            max: 127
        }
    );
    // 126 levels in the field plus the record: still readable downstream.
    let out = emit(&p, &format!("{{\"a\":{}}}", nested(126)));
    assert_eq!(out.matches('[').count(), 126);
    assert!(matches!(
        refusal(&p, format!("{{\"a\":{}}}", nested(127)).as_bytes()),
        RecordError::TooDeep { .. }
    ));
    // Deep values the plan never reads cost nothing and do not matter.
    assert_eq!(
        emit(&p, &format!("{{\"b\":{},\"a\":1}}", nested(100_000))),
        "{\"a\":1}\n"
    );
}

#[test]
fn unpaired_surrogates_are_refused_in_fields_the_plan_reads() {
    let p = plan(vec![clear("a")]);
    assert_eq!(
        refusal(&p, br#"{"a":"x\ud800y"}"#),
        RecordError::InvalidEscape { field: "a".into() }
    );
    assert!(matches!(
        refusal(&p, br#"{"a":["\udc00"]}"#),
        RecordError::InvalidEscape { .. }
    ));
    // A field that never leaves and is never compared does not matter.
    assert_eq!(emit(&p, r#"{"b":"\ud800","a":1}"#), "{\"a\":1}\n");
}

#[test]
fn numbers_beyond_f64_are_refused_in_fields_the_plan_reads() {
    let p = plan(vec![clear("a")]);
    for huge in ["1e400", "-1E+309", &"9".repeat(400)] {
        assert_eq!(
            refusal(&p, format!("{{\"a\":{huge}}}").as_bytes()),
            RecordError::NumberOutOfRange { field: "a".into() },
            "{huge}"
        );
    }
    assert_eq!(
        refusal(&p, br#"{"a":{"n":[1,2e999]}}"#),
        RecordError::NumberOutOfRange { field: "a".into() }
    );
    // Small, long and underflowing numbers are fine and copied as written.
    assert_eq!(emit(&p, r#"{"a":1e-400}"#), "{\"a\":1e-400}\n");
    assert_eq!(emit(&p, r#"{"a":1.7e308}"#), "{\"a\":1.7e308}\n");
    let long = "1".repeat(100);
    assert_eq!(
        emit(&p, &format!("{{\"a\":{long}}}")),
        format!("{{\"a\":{long}}}\n")
    );
    assert_eq!(emit(&p, r#"{"b":1e400,"a":2}"#), "{\"a\":2}\n");
}

#[test]
fn realistic_plan_end_to_end() {
    let p = plan(vec![
        FieldRule::new(
            "user_id",
            Transform::hmac_sha256(SECRET, "urn:mesh:user:").unwrap(),
        ),
        FieldRule::new(
            "email",
            Transform::Mask {
                keep_first: 1,
                keep_last: 4,
                mask_char: '*',
            },
        ),
        FieldRule::new("name", Transform::Redact { drop: false }),
        FieldRule::new("birth_date", Transform::GeneralizeDate(DatePart::Year)),
        FieldRule::new("signed_up_at", Transform::GeneralizeDate(DatePart::Month)),
        FieldRule::new("age", Transform::GeneralizeBucket { width: 10 }),
        FieldRule::new("postcode", Transform::GeneralizePrefix { chars: 3 }),
        clear("country"),
    ]);
    let line = r#"{"user_id":"u-1001","email":"zoë@example.org","name":"Zoë Smith","birth_date":"1990-04-30","signed_up_at":"2023-11-05T09:15:00+01:00","age":33,"postcode":"SW1A 1AA","country":"GB","ssn":"000-00-0000"}"#;
    let out: Value = serde_json::from_str(&emit(&p, line)).unwrap();
    let id = out["user_id"].as_str().unwrap();
    assert!(id.starts_with("urn:mesh:user:") && id.len() == "urn:mesh:user:".len() + 32);
    assert_eq!(out["email"], "z**********.org");
    assert_eq!(out["name"], Value::Null);
    assert_eq!(out["birth_date"], "1990");
    assert_eq!(out["signed_up_at"], "2023-11");
    assert_eq!(out["age"], "30-39");
    assert_eq!(out["postcode"], "SW1");
    assert_eq!(out["country"], "GB");
    assert_eq!(out.as_object().unwrap().len(), 8);
}

#[test]
fn the_same_key_scope_joins_across_plans() {
    let key = Arc::new(ring::hmac::Key::new(ring::hmac::HMAC_SHA256, SECRET));
    let hmac = || Transform::Hmac {
        key: Arc::clone(&key),
        prefix: String::new(),
    };
    let orders = plan(vec![FieldRule::new("customer", hmac())]);
    let users = plan(vec![FieldRule::new("id", hmac())]);
    let a: Value = serde_json::from_str(&emit(&orders, r#"{"customer":"c-9"}"#)).unwrap();
    let b: Value = serde_json::from_str(&emit(&users, r#"{"id":"c-9"}"#)).unwrap();
    assert_eq!(a["customer"], b["id"]);
    let other = plan(vec![FieldRule::new(
        "id",
        Transform::hmac_sha256(b"a different scope's 32-byte key!", "").unwrap(),
    )]);
    let c: Value = serde_json::from_str(&emit(&other, r#"{"id":"c-9"}"#)).unwrap();
    assert_ne!(a["customer"], c["id"]);
}

#[test]
fn filter_sees_raw_values_not_transformed_ones() {
    let p = filtered_plan(
        vec![FieldRule::new(
            "email",
            Transform::Mask {
                keep_first: 0,
                keep_last: 0,
                mask_char: '*',
            },
        )],
        vec![
            Clause::new("email", CompareOp::Eq, json!("a@b.c")),
            Clause::new("age", CompareOp::Ge, json!(18)),
        ],
    );
    assert_eq!(
        emit(&p, r#"{"email":"a@b.c","age":18}"#),
        "{\"email\":\"*****\"}\n"
    );
    assert_eq!(
        outcome(&p, r#"{"email":"a@b.c","age":17.9}"#),
        Outcome::Filtered
    );
    assert_eq!(
        outcome(&p, r#"{"email":"x@b.c","age":40}"#),
        Outcome::Filtered
    );
    assert_eq!(outcome(&p, r#"{"email":"a@b.c"}"#), Outcome::Filtered);
    assert_eq!(
        outcome(&p, r#"{"email":"a@b.c","age":"40"}"#),
        Outcome::Filtered
    );
}

#[test]
fn filter_on_a_dropped_field_still_reads_it() {
    let p = filtered_plan(
        vec![
            FieldRule::new("region", Transform::Redact { drop: true }),
            clear("v"),
        ],
        vec![Clause::new("region", CompareOp::In, json!(["eu", "uk"]))],
    );
    assert_eq!(emit(&p, r#"{"region":"uk","v":1}"#), "{\"v\":1}\n");
    assert_eq!(outcome(&p, r#"{"region":"us","v":1}"#), Outcome::Filtered);
}

#[test]
fn filter_null_checks_and_negations() {
    let p = filtered_plan(
        vec![clear("v")],
        vec![
            Clause::new("deleted_at", CompareOp::IsNull, Value::Null),
            Clause::new("status", CompareOp::Ne, json!("banned")),
        ],
    );
    assert_eq!(outcome(&p, r#"{"status":"ok","v":1}"#), Outcome::Emitted);
    assert_eq!(
        outcome(&p, r#"{"status":"ok","deleted_at":null}"#),
        Outcome::Emitted
    );
    assert_eq!(
        outcome(&p, r#"{"status":"ok","deleted_at":"2024-01-01"}"#),
        Outcome::Filtered
    );
    assert_eq!(outcome(&p, r#"{"status":"banned"}"#), Outcome::Filtered);
    assert_eq!(
        outcome(&p, r#"{"v":1}"#),
        Outcome::Filtered,
        "ne fails closed on missing"
    );
}

#[test]
fn filtered_records_leave_the_buffer_alone() {
    let p = filtered_plan(
        vec![clear("v")],
        vec![Clause::new("v", CompareOp::Gt, json!(0))],
    );
    let mut out = Vec::new();
    p.apply_json(br#"{"v":1}"#, &mut out).unwrap();
    p.apply_json(br#"{"v":-1}"#, &mut out).unwrap();
    p.apply_json(br#"{"v":2}"#, &mut out).unwrap();
    assert_eq!(out, b"{\"v\":1}\n{\"v\":2}\n");
}

#[test]
fn project_yields_cells_in_column_order() {
    let p = plan(vec![
        clear("name"),
        FieldRule::new("gone", Transform::Redact { drop: true }),
        clear("n"),
        FieldRule::new("postcode", Transform::GeneralizePrefix { chars: 2 }),
        FieldRule::new(
            "card",
            Transform::Mask {
                keep_first: 0,
                keep_last: 2,
                mask_char: '#',
            },
        ),
        clear("missing"),
        clear("obj"),
    ]);
    let line = br#"{"obj":{"a":1},"card":"1234","postcode":"SW1A","n":-1.5e3,"gone":1,"name":"Ann \"A\" \u00e9"}"#;
    let mut cells = Vec::new();
    assert_eq!(p.project(line, &mut cells), Ok(Outcome::Emitted));
    assert_eq!(cells.len(), p.columns().len());
    assert_eq!(cells[0], Cell::Text(Cow::Borrowed("Ann \"A\" é")));
    assert_eq!(cells[1].as_text(), Some("-1.5e3"));
    assert!(
        matches!(&cells[2], Cell::Text(Cow::Borrowed("SW"))),
        "prefix borrows"
    );
    assert_eq!(cells[3].as_text(), Some("##34"));
    assert_eq!(cells[4], Cell::Null);
    assert_eq!(cells[5].as_text(), Some(r#"{"a":1}"#));
}

#[test]
fn project_agrees_with_apply_json() {
    let p = filtered_plan(
        vec![
            FieldRule::new("id", Transform::hmac_sha256(SECRET, "p").unwrap()),
            FieldRule::new("day", Transform::GeneralizeDate(DatePart::Month)),
            FieldRule::new("age", Transform::GeneralizeBucket { width: 5 }),
        ],
        vec![Clause::new("age", CompareOp::Lt, json!(100))],
    );
    let line = br#"{"id":12,"day":"2020-02-29","age":"42"}"#;
    let mut out = Vec::new();
    // The filter compares raw values: "42" is a string, 100 a number.
    assert_eq!(p.apply_json(line, &mut out), Ok(Outcome::Filtered));
    let mut cells = Vec::new();
    assert_eq!(p.project(line, &mut cells), Ok(Outcome::Filtered));
    assert!(out.is_empty() && cells.is_empty());

    let line = br#"{"id":12,"day":"2020-02-29","age":42}"#;
    p.apply_json(line, &mut out).unwrap();
    let json: Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(p.project(line, &mut cells), Ok(Outcome::Emitted));
    for (column, cell) in p.columns().zip(&cells) {
        assert_eq!(json[column].as_str(), cell.as_text(), "{column}");
    }
}

#[test]
fn large_plans_use_the_same_semantics() {
    // More keys than the linear index and the inline slots hold.
    let names: Vec<String> = (0..40).map(|i| format!("f{i}")).collect();
    let p = filtered_plan(
        names.iter().map(|n| clear(n)).collect(),
        vec![Clause::new("f39", CompareOp::NotNull, Value::Null)],
    );
    let line = format!(
        "{{{}}}",
        names
            .iter()
            .rev()
            .enumerate()
            .map(|(i, n)| format!("\"{n}\":{i}"))
            .collect::<Vec<_>>()
            .join(",")
    );
    let out: Value = serde_json::from_str(&emit(&p, &line)).unwrap();
    assert_eq!(out["f0"], 39);
    assert_eq!(out["f39"], 0);
    let keys: Vec<&String> = out.as_object().unwrap().keys().collect();
    assert_eq!(keys.len(), 40);
    assert_eq!(outcome(&p, r#"{"f0":1}"#), Outcome::Filtered);
    assert!(matches!(
        refusal(&p, br#"{"f20":1,"f20":2}"#),
        RecordError::DuplicateField { .. }
    ));
}

#[test]
fn bad_plans_are_refused_with_the_field_named() {
    let cases: Vec<(Vec<FieldRule>, Vec<Clause>, ProgramError)> = vec![
        (
            vec![
                clear("a"),
                FieldRule::new("a", Transform::Redact { drop: true }),
            ],
            vec![],
            ProgramError::DuplicateField { field: "a".into() },
        ),
        (
            vec![FieldRule::new(
                "age",
                Transform::GeneralizeBucket { width: 0 },
            )],
            vec![],
            ProgramError::ZeroBucketWidth {
                field: "age".into(),
            },
        ),
        (
            vec![FieldRule::new(
                "zip",
                Transform::GeneralizePrefix { chars: 0 },
            )],
            vec![],
            ProgramError::ZeroPrefix {
                field: "zip".into(),
            },
        ),
        (
            vec![FieldRule::new(
                "id",
                Transform::Hmac {
                    key: Arc::new(ring::hmac::Key::new(ring::hmac::HMAC_SHA512, SECRET)),
                    prefix: String::new(),
                },
            )],
            vec![],
            ProgramError::HmacAlgorithm { field: "id".into() },
        ),
        (
            vec![],
            vec![Clause::new("x", CompareOp::In, json!("eu"))],
            ProgramError::InvalidClause {
                field: "x".into(),
                op: "in",
                expected: "an array of strings, numbers or booleans",
            },
        ),
    ];
    for (fields, clauses, expected) in cases {
        let err = RecordProgram::new(fields, RowPredicate::all(clauses)).unwrap_err();
        assert_eq!(err, expected);
        let message = err.to_string();
        assert!(message.contains('`'), "{message}");
        assert!(message.chars().next().unwrap().is_lowercase(), "{message}");
    }
}

mod plugins {
    use meshgov_anonymize::{
        Cell, FailureKind, FieldRule, Outcome, PluginFailure, PluginTransform, PluginValidator,
        RawValue, RecordError, RecordProgram, RowPredicate, Transform,
    };
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Upper-cases strings and counts its calls: a stand-in for a host.
    #[derive(Debug, Default)]
    struct Upper {
        calls: AtomicUsize,
        fail: bool,
    }

    impl PluginTransform for Upper {
        fn name(&self) -> &str {
            "upper"
        }
        fn transform(&self, values: &[&RawValue]) -> Result<Vec<Box<RawValue>>, PluginFailure> {
            self.calls.fetch_add(1, Ordering::Relaxed);
            if self.fail {
                return Err(PluginFailure::new("upper", FailureKind::Trap, "boom"));
            }
            Ok(values
                .iter()
                .map(|v| RawValue::from_string(v.get().to_uppercase()).unwrap())
                .collect())
        }
    }

    #[derive(Debug)]
    struct NoBob;

    impl PluginValidator for NoBob {
        fn name(&self) -> &str {
            "no-bob"
        }
        fn validate(
            &self,
            fields: &[&str],
            records: &[&[Option<&RawValue>]],
        ) -> Result<Vec<Option<String>>, PluginFailure> {
            assert_eq!(fields, ["name", "n"]);
            Ok(records
                .iter()
                .map(|r| (r[0].map(|v| v.get()) == Some("\"bob\"")).then(|| "bob".to_string()))
                .collect())
        }
    }

    fn plan(upper: Arc<Upper>, validate: bool) -> RecordProgram {
        let validators: Vec<Arc<dyn PluginValidator>> = if validate {
            vec![Arc::new(NoBob)]
        } else {
            vec![]
        };
        RecordProgram::with_validators(
            vec![
                FieldRule::new("name", Transform::Plugin(upper)),
                FieldRule::new("n", Transform::Redact { drop: false }),
            ],
            RowPredicate::keep_all(),
            validators,
        )
        .unwrap()
    }

    const LINES: [&[u8]; 4] = [
        br#"{"name":"ann","n":1}"#,
        b"not json",
        br#"{"n":2}"#,
        br#"{"name":"bob"}"#,
    ];

    #[test]
    fn a_batch_calls_each_plugin_once_and_keeps_record_order() {
        let upper = Arc::new(Upper::default());
        let p = plan(Arc::clone(&upper), true);
        assert!(p.uses_plugins());
        let (mut out, mut outcomes) = (Vec::new(), Vec::new());
        p.apply_json_batch(&LINES, &mut out, &mut outcomes).unwrap();
        assert_eq!(upper.calls.load(Ordering::Relaxed), 1);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "{\"name\":\"ANN\",\"n\":null}\n{\"name\":null,\"n\":null}\n"
        );
        assert_eq!(outcomes[0], Ok(Outcome::Emitted));
        assert!(matches!(outcomes[1], Err(RecordError::NotAnObject)));
        assert_eq!(outcomes[2], Ok(Outcome::Emitted));
        assert_eq!(outcomes[3], Ok(Outcome::Rejected));
        let mut rows = Vec::new();
        p.project_batch(&LINES, |o, cells| {
            rows.push((
                o,
                cells
                    .to_vec()
                    .iter()
                    .map(Cell::to_static)
                    .collect::<Vec<_>>(),
            ))
        })
        .unwrap();
        assert_eq!(rows[0].1, [Cell::Text("ANN".into()), Cell::Null]);
        assert!(rows[3].1.is_empty());
    }

    #[test]
    fn a_plugin_failure_fails_the_batch_and_writes_nothing() {
        let p = plan(
            Arc::new(Upper {
                fail: true,
                ..Upper::default()
            }),
            false,
        );
        let (mut out, mut outcomes) = (b"kept".to_vec(), Vec::new());
        let e = p
            .apply_json_batch(&LINES, &mut out, &mut outcomes)
            .unwrap_err();
        assert_eq!(e.kind, FailureKind::Trap);
        assert_eq!(out, b"kept");
        assert!(outcomes.is_empty());
        // One record at a time, the failure is the record's error.
        assert!(matches!(
            p.apply_json(LINES[0], &mut Vec::new()),
            Err(RecordError::Plugin(_))
        ));
    }

    #[test]
    fn plans_without_slots_still_see_every_line() {
        let p = RecordProgram::new(
            vec![FieldRule::new("a", Transform::Redact { drop: false })],
            RowPredicate::keep_all(),
        )
        .unwrap();
        let (mut out, mut outcomes) = (Vec::new(), Vec::new());
        p.apply_json_batch(&[b"{}", b"{}"], &mut out, &mut outcomes)
            .unwrap();
        assert_eq!(outcomes.len(), 2);
        assert_eq!(out, b"{\"a\":null}\n{\"a\":null}\n");
    }
}
