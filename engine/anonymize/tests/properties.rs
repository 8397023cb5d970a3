//! Properties of the transforms and the record program over generated input.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use meshgov_anonymize::{
    Cell, Clause, CompareOp, DatePart, FieldRule, Outcome, RecordProgram, RowPredicate, Transform,
};
use proptest::prelude::*;
use serde_json::{Map, Value, json};

const SECRET: &[u8; 32] = b"property-secret-property-secret!";

/// Keys the generated records draw from, so that plan fields are often
/// present; arbitrary keys are mixed in too.
const KEYS: &[&str] = &[
    "id", "email", "name", "born", "age", "zip", "note", "gone", "nulled", "q\"k", "é", "extra",
];

fn full_plan() -> RecordProgram {
    RecordProgram::new(
        vec![
            FieldRule::new("id", Transform::hmac_sha256(SECRET, "u_").unwrap()),
            FieldRule::new(
                "email",
                Transform::Mask {
                    keep_first: 1,
                    keep_last: 4,
                    mask_char: '*',
                },
            ),
            FieldRule::new("name", Transform::Clear),
            FieldRule::new("born", Transform::GeneralizeDate(DatePart::Month)),
            FieldRule::new("age", Transform::GeneralizeBucket { width: 10 }),
            FieldRule::new("zip", Transform::GeneralizePrefix { chars: 2 }),
            FieldRule::new("gone", Transform::Redact { drop: true }),
            FieldRule::new("nulled", Transform::Redact { drop: false }),
            FieldRule::new("q\"k", Transform::Clear),
            FieldRule::new("é", Transform::Clear),
        ],
        RowPredicate::keep_all(),
    )
    .unwrap()
}

fn json_leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        any::<String>().prop_map(Value::String),
        "[0-9]{4}-[0-9]{2}-[0-9]{2}(T[0-9]{2}:[0-9]{2}:[0-9]{2}Z)?".prop_map(Value::String),
    ]
}

fn json_value() -> impl Strategy<Value = Value> {
    json_leaf().prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(any::<String>(), inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn json_key() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::sample::select(KEYS).prop_map(str::to_owned),
        1 => any::<String>(),
    ]
}

fn json_object() -> impl Strategy<Value = Map<String, Value>> {
    prop::collection::btree_map(json_key(), json_value(), 0..14)
        .prop_map(|m| m.into_iter().collect())
}

/// Valid JSON records with some bytes changed, dropped or duplicated: most
/// are malformed in ways a random byte string rarely reaches.
fn damaged_record() -> impl Strategy<Value = Vec<u8>> {
    (
        json_object(),
        prop::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..3), 1..4),
    )
        .prop_map(|(object, edits)| {
            let mut bytes = serde_json::to_vec(&object).unwrap();
            for (at, byte, kind) in edits {
                if bytes.is_empty() {
                    break;
                }
                let i = at.index(bytes.len());
                match kind {
                    0 => bytes[i] = byte,
                    1 => {
                        bytes.remove(i);
                    }
                    _ => bytes.insert(i, byte),
                }
            }
            bytes
        })
}

/// An object's keys in the order they were written.
struct OrderedKeys(Vec<String>);

impl<'de> serde::Deserialize<'de> for OrderedKeys {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Keys;
        impl<'de> serde::de::Visitor<'de> for Keys {
            type Value = OrderedKeys;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<OrderedKeys, A::Error> {
                let mut keys = Vec::new();
                while let Some((key, _)) = map.next_entry::<String, serde::de::IgnoredAny>()? {
                    keys.push(key);
                }
                Ok(OrderedKeys(keys))
            }
        }
        d.deserialize_map(Keys)
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn never_panics_on_arbitrary_bytes(line in prop::collection::vec(any::<u8>(), 0..256)) {
        let plan = full_plan();
        let mut out = Vec::new();
        let result = plan.apply_json(&line, &mut out);
        if result.is_err() {
            prop_assert!(out.is_empty());
        }
        let mut cells = Vec::new();
        prop_assert_eq!(plan.project(&line, &mut cells).is_ok(), result.is_ok());
    }

    #[test]
    fn damaged_records_are_refused_or_written_as_valid_json(line in damaged_record()) {
        let plan = full_plan();
        let mut out = Vec::new();
        match plan.apply_json(&line, &mut out) {
            Ok(_) => {
                let written: Value = serde_json::from_slice(&out).unwrap();
                prop_assert!(written.is_object());
            }
            Err(err) => {
                prop_assert!(out.is_empty());
                // The message never echoes the record (checked on anything
                // longer than a few bytes, which a message could not avoid).
                let message = err.to_string();
                for window in line.windows(12) {
                    if let Ok(text) = std::str::from_utf8(window) {
                        prop_assert!(!message.contains(text), "{} in {}", text, message);
                    }
                }
            }
        }
    }

    #[test]
    fn output_is_json_with_only_plan_keys_in_plan_order(object in json_object()) {
        let plan = full_plan();
        let line = serde_json::to_vec(&object).unwrap();
        let mut out = Vec::new();
        prop_assert_eq!(plan.apply_json(&line, &mut out), Ok(Outcome::Emitted));
        prop_assert_eq!(out.iter().filter(|&&b| b == b'\n').count(), 1);
        prop_assert_eq!(out.last(), Some(&b'\n'));

        // Exactly the columns, in order (parsed without reordering).
        let OrderedKeys(keys) = serde_json::from_slice(&out).unwrap();
        prop_assert!(keys.iter().map(String::as_str).eq(plan.columns()));

        let written: Value = serde_json::from_slice(&out).unwrap();
        // Read the input back through the same parser: serde_json's float
        // parsing is not exact, and cleared numbers keep their exact text.
        let input: Value = serde_json::from_slice(&line).unwrap();
        for cleared in ["name", "q\"k", "é"] {
            let expected = input.get(cleared).cloned().unwrap_or(Value::Null);
            prop_assert_eq!(&written[cleared], &expected);
        }
        prop_assert_eq!(&written["nulled"], &Value::Null);
        prop_assert!(written.get("gone").is_none());
    }

    #[test]
    fn project_matches_apply_json(object in json_object()) {
        let plan = full_plan();
        let line = serde_json::to_vec(&object).unwrap();
        let mut out = Vec::new();
        plan.apply_json(&line, &mut out).unwrap();
        let written: Value = serde_json::from_slice(&out).unwrap();
        let mut cells = Vec::new();
        prop_assert_eq!(plan.project(&line, &mut cells), Ok(Outcome::Emitted));
        prop_assert_eq!(cells.len(), plan.columns().len());
        for (column, cell) in plan.columns().zip(&cells) {
            let expected = &written[column];
            match cell {
                Cell::Null => prop_assert!(expected.is_null()),
                Cell::Text(text) => prop_assert_eq!(expected.as_str(), Some(&**text)),
                Cell::Json(raw) => {
                    let value: Value = serde_json::from_str(raw.get()).unwrap();
                    prop_assert_eq!(&value, expected);
                }
            }
        }
    }

    #[test]
    fn mask_reveals_at_most_the_kept_characters(
        s in any::<String>().prop_filter("mask char absent", |s| !s.contains('█')),
        keep_first in 0usize..6,
        keep_last in 0usize..6,
    ) {
        let t = Transform::Mask { keep_first, keep_last, mask_char: '█' };
        let raw = serde_json::value::to_raw_value(&s).unwrap();
        let mut out = Vec::new();
        t.write_json(Some(&raw), &mut out);
        let masked: String = serde_json::from_slice(&out).unwrap();
        let original: Vec<char> = s.chars().collect();
        let shown: Vec<char> = masked.chars().collect();
        prop_assert_eq!(shown.len(), original.len());
        let revealed = original.iter().zip(&shown).filter(|(a, b)| a == b).count();
        prop_assert!(revealed <= keep_first + keep_last);
        if original.len() <= keep_first + keep_last {
            prop_assert_eq!(revealed, 0);
        } else {
            prop_assert_eq!(&shown[..keep_first], &original[..keep_first]);
            let tail = original.len() - keep_last;
            prop_assert_eq!(&shown[tail..], &original[tail..]);
            prop_assert!(shown[keep_first..tail].iter().all(|&c| c == '█'));
        }
    }

    #[test]
    fn hmac_is_deterministic_and_key_dependent(
        value in prop_oneof![any::<String>().prop_map(Value::String), any::<i64>().prop_map(Value::from)],
        key_a in prop::array::uniform32(any::<u8>()),
        key_b in prop::array::uniform32(any::<u8>()),
    ) {
        prop_assume!(key_a != key_b);
        let raw = serde_json::value::to_raw_value(&value).unwrap();
        let pseudonym = |key: &[u8]| {
            let mut out = Vec::new();
            Transform::hmac_sha256(key, "p:").unwrap().write_json(Some(&raw), &mut out);
            serde_json::from_slice::<String>(&out).unwrap()
        };
        let first = pseudonym(&key_a);
        prop_assert_eq!(&first, &pseudonym(&key_a));
        prop_assert_ne!(&first, &pseudonym(&key_b));
        let hex = first.strip_prefix("p:").unwrap();
        prop_assert_eq!(hex.len(), 32);
        prop_assert!(hex.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
    }

    #[test]
    fn buckets_hold_their_value(v in any::<i64>(), width in 1u64..10_000) {
        let raw = serde_json::value::to_raw_value(&v).unwrap();
        let mut out = Vec::new();
        Transform::GeneralizeBucket { width }.write_json(Some(&raw), &mut out);
        let range: String = serde_json::from_slice(&out).unwrap();
        let split = range[1..].find('-').unwrap() + 1;
        let lo: i128 = range[..split].parse().unwrap();
        let hi: i128 = range[split + 1..].parse().unwrap();
        let v = i128::from(v);
        prop_assert!(lo <= v && v <= hi);
        prop_assert_eq!(hi - lo + 1, i128::from(width));
        prop_assert_eq!(lo.rem_euclid(i128::from(width)), 0);
    }

    #[test]
    fn prefixes_are_leading_characters(s in any::<String>(), chars in 1usize..8) {
        let raw = serde_json::value::to_raw_value(&s).unwrap();
        let mut out = Vec::new();
        Transform::GeneralizePrefix { chars }.write_json(Some(&raw), &mut out);
        let prefix: String = serde_json::from_slice(&out).unwrap();
        prop_assert_eq!(prefix, s.chars().take(chars).collect::<String>());
    }

    #[test]
    fn dates_generalize_or_become_null(s in any::<String>()) {
        let raw = serde_json::value::to_raw_value(&s).unwrap();
        let mut out = Vec::new();
        Transform::GeneralizeDate(DatePart::Month).write_json(Some(&raw), &mut out);
        let written: Value = serde_json::from_slice(&out).unwrap();
        // Never more of the input than `YYYY-MM`.
        prop_assert!(written.is_null() || written.as_str() == s.get(..7));
    }

    #[test]
    fn valid_dates_keep_their_year_and_month(
        date in (0i32..=9999, 1u8..=12, 1u8..=31)
            .prop_filter_map("real day", |(y, m, d)| {
                time::Date::from_calendar_date(y, time::Month::try_from(m).ok()?, d).ok()
            }),
        as_timestamp in any::<bool>(),
    ) {
        let day = format!(
            "{:04}-{:02}-{:02}",
            date.year(),
            u8::from(date.month()),
            date.day()
        );
        let text = if as_timestamp { format!("{day}T12:34:56.789+05:30") } else { day };
        let raw = serde_json::value::to_raw_value(&text).unwrap();
        for (part, expected) in [
            (DatePart::Year, format!("{:04}", date.year())),
            (DatePart::Month, format!("{:04}-{:02}", date.year(), u8::from(date.month()))),
        ] {
            let mut out = Vec::new();
            Transform::GeneralizeDate(part).write_json(Some(&raw), &mut out);
            prop_assert_eq!(serde_json::from_slice::<Value>(&out).unwrap(), json!(expected));
        }
    }

    #[test]
    fn numeric_and_string_filters_match_a_model(
        a in any::<i64>(), b in any::<i64>(),
        x in any::<f64>().prop_filter("finite", |f| f.is_finite()),
        y in any::<f64>().prop_filter("finite", |f| f.is_finite()),
        s in any::<String>(), t in any::<String>(),
    ) {
        let keeps = |op: CompareOp, operand: Value, input: &Value| {
            let plan = RecordProgram::new(
                vec![FieldRule::new("v", Transform::Clear)],
                RowPredicate::all(vec![Clause::new("v", op, operand)]),
            )
            .unwrap();
            let line = serde_json::to_vec(&json!({ "v": input })).unwrap();
            plan.apply_json(&line, &mut Vec::new()).unwrap() == Outcome::Emitted
        };
        use CompareOp::*;
        for (op, holds) in [
            (Lt, a < b), (Le, a <= b), (Gt, a > b), (Ge, a >= b), (Eq, a == b), (Ne, a != b),
        ] {
            prop_assert_eq!(keeps(op, json!(b), &json!(a)), holds, "{:?} {} {}", op, a, b);
        }
        for (op, holds) in [(Lt, x < y), (Ge, x >= y), (Eq, x == y)] {
            prop_assert_eq!(keeps(op, json!(y), &json!(x)), holds, "{:?} {} {}", op, x, y);
        }
        for (op, holds) in [(Lt, s < t), (Gt, s > t), (Eq, s == t), (Ne, s != t)] {
            prop_assert_eq!(keeps(op, json!(t), &json!(s)), holds, "{:?}", op);
        }
        prop_assert_eq!(keeps(In, json!([t.clone(), b]), &json!(s)), s == t);
        prop_assert_eq!(keeps(NotIn, json!([t, b]), &json!(a)), a != b);
        // Mismatched types never hold, whatever the operator.
        prop_assert!(!keeps(Ne, json!(s), &json!(a)));
    }
}
