//! The host against real modules: the example plugins built from source,
//! and tiny hostile WAT fixtures. Every failure is contained and classified,
//! and the same plugin keeps working on the next call.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use meshgov_anonymize::FailureKind;
use meshgov_core::plugins::PluginManifest;
use meshgov_wasm::{LoadError, Plugin, Runtime};
use serde_json::value::RawValue;
use sha2::Digest;

fn manifest(name: &str, kind: &str, bytes: &[u8]) -> PluginManifest {
    PluginManifest {
        name: name.into(),
        kind: serde_json::from_value(serde_json::Value::from(kind)).unwrap(),
        module: format!("{name}.wasm"),
        sha256: hex::encode(sha2::Sha256::digest(bytes)),
        description: String::new(),
        fuel: 100_000,
        max_memory_bytes: 16 << 20,
    }
}

fn fixture(name: &str) -> Vec<u8> {
    let path = meshgov_wasm::examples::source_dir()
        .join("fixtures")
        .join(format!("{name}.wat"));
    wat::parse_file(&path).unwrap()
}

fn load_fixture(name: &str) -> Result<Plugin, LoadError> {
    let bytes = fixture(name);
    Runtime::global()
        .unwrap()
        .load(&manifest(name, "transform", &bytes), &bytes)
}

fn raws(texts: &[&str]) -> Vec<Box<RawValue>> {
    texts
        .iter()
        .map(|t| RawValue::from_string((*t).into()).unwrap())
        .collect()
}

fn call(p: &Plugin, texts: &[&str]) -> Result<Vec<String>, meshgov_anonymize::PluginFailure> {
    let vals = raws(texts);
    let refs: Vec<&RawValue> = vals.iter().map(|b| &**b).collect();
    p.transform(&refs)
        .map(|out| out.iter().map(|v| v.get().to_string()).collect())
}

fn examples() -> Option<meshgov_wasm::examples::Built> {
    meshgov_wasm::examples::build().unwrap()
}

fn example(built: &meshgov_wasm::examples::Built, name: &str) -> Plugin {
    let bytes = built.bytes(name).unwrap();
    let kind = meshgov_wasm::examples::EXAMPLES
        .iter()
        .find(|e| e.0 == name)
        .unwrap()
        .2;
    Runtime::global()
        .unwrap()
        .load(&manifest(name, kind, &bytes), &bytes)
        .unwrap()
}

#[test]
fn phone_mask_preserves_the_format() {
    let Some(built) = examples() else { return };
    let p = example(&built, "phone-mask");
    assert_eq!(
        call(
            &p,
            &[
                r#""+44 20 7946 0958""#,
                r#""(555) 010-4477""#,
                "null",
                r#""12""#,
                "5550104477",
                r#""call me""#
            ]
        )
        .unwrap(),
        [
            r#""+44 XX XXXX XX58""#,
            r#""(XXX) XXX-XX77""#,
            "null",
            "null",
            r#""XXXXXXXX77""#,
            "null"
        ]
    );
    assert_eq!(call(&p, &[]).unwrap(), Vec::<String>::new());
}

#[test]
fn age_band_generalizes_ages() {
    let Some(built) = examples() else { return };
    let p = example(&built, "age-band");
    assert_eq!(
        call(
            &p,
            &[
                "7", "18", "24.9", r#""40""#, "64", "99", "-1", r#""old""#, "true"
            ]
        )
        .unwrap(),
        [
            r#""under-18""#,
            r#""18-24""#,
            r#""18-24""#,
            r#""35-44""#,
            r#""55-64""#,
            r#""65+""#,
            "null",
            "null",
            "null"
        ]
    );
}

#[test]
fn artist_urn_validates_records() {
    let Some(built) = examples() else { return };
    let p = example(&built, "artist-urn");
    let good = raws(&[r#""urn:mesh:artist:a-1""#, r#""e1""#]);
    let bad = raws(&[r#""spotify:artist:1""#, "7"]);
    let fields = ["artist_id", "event_id"];
    let r1 = [Some(&*good[0]), Some(&*good[1])];
    let r2 = [Some(&*bad[0]), None];
    let r3 = [Some(&*bad[1]), None];
    let r4 = [None, Some(&*good[1])];
    let verdicts = p.validate(&fields, &[&r1, &r2, &r3, &r4]).unwrap();
    assert_eq!(verdicts[0], None);
    assert!(
        verdicts[1]
            .as_deref()
            .unwrap()
            .contains("not a urn:mesh:artist: URN")
    );
    assert!(verdicts[2].as_deref().unwrap().contains("not a string"));
    assert_eq!(verdicts[3], None);
    // A validator is not a transform.
    assert_eq!(call(&p, &["1"]).unwrap_err().kind, FailureKind::Unavailable);
}

#[test]
fn a_batch_of_ten_thousand_values_is_one_call() {
    let Some(built) = examples() else { return };
    let p = example(&built, "phone-mask");
    let texts: Vec<String> = (0..10_000).map(|i| format!("\"+1 555 {i:07}\"")).collect();
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let out = call(&p, &refs).unwrap();
    assert_eq!(out.len(), 10_000);
    assert_eq!(out[1234], r#""+1 XXX XXXXX34""#);
}

#[test]
fn hostile_guests_fail_the_call_and_the_host_keeps_serving() {
    for (name, kind, detail) in [
        ("trap", FailureKind::Trap, "unreachable"),
        ("loop", FailureKind::OutOfFuel, "fuel"),
        ("grow", FailureKind::OutOfMemory, "16777216"),
        (
            "malformed",
            FailureKind::Malformed,
            "5 items for a batch of 2",
        ),
        (
            "out-of-bounds",
            FailureKind::Malformed,
            "outside guest memory",
        ),
    ] {
        let p = load_fixture(name).unwrap();
        for _ in 0..3 {
            let e = call(&p, &["1", r#""x""#]).unwrap_err();
            assert_eq!(e.kind, kind, "{name}: {e}");
            assert!(e.to_string().contains(detail), "{name}: {e}");
            assert!(
                e.to_string()
                    .starts_with(&format!("plugin `{name}` failed")),
                "{e}"
            );
        }
    }
    // The runtime still runs well-behaved plugins afterwards.
    let echo = load_fixture("echo").unwrap();
    assert_eq!(
        call(&echo, &["1", r#""a\"b""#]).unwrap(),
        ["1", r#""a\"b""#]
    );
}

#[test]
fn modules_that_break_the_abi_are_refused_at_load() {
    let reason = |name: &str| match load_fixture(name) {
        Err(LoadError::Invalid { reason, .. }) => reason,
        other => panic!("{name}: {other:?}"),
    };
    assert!(reason("wrong-version").contains("ABI version 2"));
    assert!(reason("imports").contains("imports `wasi_snapshot_preview1::fd_write`"));
    assert!(
        reason("big-initial").contains("memory"),
        "{}",
        reason("big-initial")
    );
    let b = wat::parse_str("(module (memory (export \"memory\") 1))").unwrap();
    let e = Runtime::global()
        .unwrap()
        .load(&manifest("m", "transform", &b), &b)
        .unwrap_err();
    assert!(e.to_string().contains("meshgov_abi_version"), "{e}");
    let e = Runtime::global()
        .unwrap()
        .load(&manifest("m", "transform", b"\0asm junk"), b"\0asm junk")
        .unwrap_err();
    assert!(
        e.to_string().contains("not a valid WebAssembly module"),
        "{e}"
    );
    // The text format is not accepted: only reviewed binary modules run.
    let text = b"(module)";
    let e = Runtime::global()
        .unwrap()
        .load(&manifest("m", "transform", text), text)
        .unwrap_err();
    assert!(
        e.to_string().contains("not a valid WebAssembly module"),
        "{e}"
    );
}

#[test]
fn a_digest_mismatch_is_refused() {
    let bytes = fixture("echo");
    let mut m = manifest("echo", "transform", &bytes);
    m.sha256 = hex::encode(sha2::Sha256::digest(b"something else"));
    match Runtime::global().unwrap().load(&m, &bytes) {
        Err(LoadError::Digest { plugin, .. }) => assert_eq!(plugin, "echo"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn fuel_scales_with_the_batch() {
    let Some(built) = examples() else { return };
    let bytes = built.bytes("phone-mask").unwrap();
    let mut m = manifest("phone-mask", "transform", &bytes);
    // Enough for a few values per call, whatever the batch size...
    m.fuel = 5_000;
    let p = Runtime::global().unwrap().load(&m, &bytes).unwrap();
    let texts: Vec<String> = (0..1000).map(|i| format!("\"+1 555 {i:07}\"")).collect();
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    assert_eq!(call(&p, &refs).unwrap().len(), 1000);
    // ...but a budget too small for one value runs out.
    m.fuel = 50;
    let p = Runtime::global().unwrap().load(&m, &bytes).unwrap();
    assert_eq!(call(&p, &refs).unwrap_err().kind, FailureKind::OutOfFuel);
}
