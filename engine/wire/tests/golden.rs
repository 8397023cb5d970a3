//! Golden files pin every message's JSON, byte for byte as it travels
//! (compact, one line, plus a newline in the file): each test serializes a
//! representative value and compares it with `tests/golden/<name>`, then
//! parses the file back and compares it with the value. A renamed,
//! reordered, added or removed field fails here before it fails a rollout.
//! Rerun with `MESHGOV_BLESS=1` to rewrite the files after a deliberate
//! change, and commit them.
#![allow(clippy::unwrap_used, clippy::panic)]

use meshgov_wire::*;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::fmt::Debug;
use std::path::PathBuf;

fn golden(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name)
}

fn blessing() -> bool {
    std::env::var_os("MESHGOV_BLESS").is_some_and(|v| v == "1")
}

/// `value` serializes to the golden file's line, and the line parses back
/// to `value`.
fn assert_golden<T>(name: &str, value: &T)
where
    T: Serialize + DeserializeOwned + PartialEq + Debug,
{
    let path = golden(name);
    let actual = format!("{}\n", serde_json::to_string(value).unwrap());
    if blessing() {
        std::fs::write(&path, &actual).unwrap();
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; run with MESHGOV_BLESS=1 to create it",
            path.display()
        )
    });
    assert_eq!(
        expected,
        actual,
        "{} differs from what the type now sends; if the change is deliberate \
         (and both sides can read it), rerun with MESHGOV_BLESS=1 and commit the file",
        path.display()
    );
    let parsed: T = serde_json::from_str(expected.trim_end()).unwrap_or_else(|e| {
        panic!("{} does not parse back: {e}", path.display());
    });
    assert_eq!(&parsed, value, "{} parses to another value", path.display());
}

const DIGEST: &str = "sha256:5f0c2f8d1c0a2f7e9b3d6a4c8e1f0b2d4c6a8e0f1b3d5c7a9e2f4b6d8c0a1e3f";

#[test]
fn registration() {
    assert_golden(
        "registration.json",
        &Registration {
            id: "users.user-profiles@127.0.0.1:8081".into(),
            product: "users/user-profiles".into(),
            mesh: Some("media".into()),
            control_url: "http://127.0.0.1:8081".into(),
            revision: Some(1_764_876_000),
            digest: Some(DIGEST.into()),
        },
    );
    assert_golden(
        "registration_empty.json",
        &Registration {
            id: "plays-0".into(),
            product: "listening/plays".into(),
            mesh: Some("media".into()),
            control_url: "http://127.0.0.1:8091".into(),
            revision: None,
            digest: None,
        },
    );
    assert_golden(
        "registration_answer.json",
        &RegistrationAnswer::new("plays-0"),
    );
}

#[test]
fn a_registration_with_an_unknown_field_is_refused() {
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(golden("registration.json")).unwrap())
            .unwrap();
    v["role"] = "admin".into();
    assert!(serde_json::from_value::<Registration>(v).is_err());
}

#[test]
fn push_outcomes() {
    assert_golden(
        "push_ack.json",
        &PushOutcome::Ack(Ack {
            revision: 1_764_876_000,
            digest: DIGEST.into(),
            noop: false,
        }),
    );
    assert_golden(
        "push_ack_noop.json",
        &PushOutcome::Ack(Ack {
            revision: 8,
            digest: DIGEST.into(),
            noop: true,
        }),
    );
    assert_golden(
        "push_nack.json",
        &PushOutcome::Nack(Nack {
            code: NackCode::Rollback,
            reason:
                "revision 6 is older than revision 7 in force; rollbacks are refused (rollback)"
                    .into(),
            active_revision: Some(7),
        }),
    );
    assert_golden(
        "push_nack_first.json",
        &PushOutcome::Nack(Nack {
            code: NackCode::UntrustedKey,
            reason: "bundle rejected: bundle is not signed by a trusted key (signed by `k-1`); add the signer's public key to the trust store, or sign with a trusted key (untrusted_key)".into(),
            active_revision: None,
        }),
    );
}

#[test]
fn pull_reports() {
    assert_golden(
        "pull_report_ack.json",
        &PullReport::Ack(PulledAck {
            revision: 1_764_876_000,
            digest: DIGEST.into(),
        }),
    );
    assert_golden(
        "pull_report_nack.json",
        &PullReport::Nack(Nack {
            code: NackCode::PluginInvalid,
            reason:
                "bundle rejected: plugin `mask-iban` does not export `transform` (plugin_invalid)"
                    .into(),
            active_revision: Some(1_764_875_000),
        }),
    );
    assert_golden("report_answer.json", &ReportAnswer { recorded: true });
}

#[test]
fn nack_codes_keep_their_strings() {
    let known = NackCode::KNOWN.to_vec();
    assert_golden("nack_codes.json", &known);
    for c in &known {
        assert_eq!(
            serde_json::to_value(c).unwrap(),
            serde_json::Value::String(c.as_str().into()),
            "{c:?}: as_str and serde disagree"
        );
        assert_eq!(&NackCode::from_code(c.as_str()), c);
    }
    // A code from a newer sidecar is kept verbatim, both ways.
    let other: NackCode = serde_json::from_str("\"quota_exceeded\"").unwrap();
    assert_eq!(other, NackCode::Other("quota_exceeded".into()));
    assert_eq!(NackCode::from_code("quota_exceeded"), other);
    assert_eq!(serde_json::to_string(&other).unwrap(), "\"quota_exceeded\"");
    let nack: PushOutcome = serde_json::from_str(
        r#"{"result":"nack","code":"quota_exceeded","reason":"r","active_revision":null}"#,
    )
    .unwrap();
    assert!(
        matches!(nack, PushOutcome::Nack(Nack { code: NackCode::Other(c), .. }) if c == "quota_exceeded")
    );
}

fn status() -> ControlStatus {
    ControlStatus {
        instance_id: Some("users.user-profiles@127.0.0.1:8081".into()),
        mesh: "media".into(),
        product: "users/user-profiles".into(),
        state: ServingState::Serving,
        reason: None,
        bundle: Some(BundleStatus {
            revision: 1_764_876_000,
            digest: DIGEST.into(),
            created_at: "2025-12-04T19:20:00Z".into(),
            expires_at: "2025-12-05T19:20:00Z".into(),
            loaded_at: "2025-12-04T19:20:01Z".into(),
            age_seconds: 42,
            expires_in_seconds: 86_358,
        }),
        last_refusal: Some(Refusal {
            code: NackCode::RevisionConflict,
            reason: "revision 8 is already in force with another digest (`sha256:00`); a revision is never reused (revision_conflict)".into(),
            at: "2025-12-04T19:19:00Z".into(),
        }),
        engine: Some(LinkStatus {
            engine_url: "http://127.0.0.1:7600".into(),
            registered: true,
            last_contact: Some("2025-12-04T19:20:30Z".into()),
            last_error: None,
        }),
        trusted_keys: vec!["guild-2025".into()],
        audit: AuditStatus {
            head_seq: 17,
            head_hash: "9c1185a5c5e9fc54612808977ee8f548b2258d31a0f1a7b4c8e1d3f2a6b5c4d3".into(),
            checkpoint_seq: 16,
            public_key: "ed25519:Gb9ECWmEzf6FQbrBZ9w7lshQhqowtrbLDFw4rXAxZuE=".into(),
            collected_seq: 12,
            failed: None,
        },
    }
}

#[test]
fn control_status() {
    assert_golden("control_status.json", &status());
    assert_golden(
        "control_status_no_bundle.json",
        &ControlStatus {
            instance_id: None,
            state: ServingState::NoBundle,
            reason: Some(
                "no valid policy bundle is loaded; the sidecar serves nothing until one is".into(),
            ),
            bundle: None,
            last_refusal: None,
            engine: None,
            trusted_keys: vec![],
            audit: AuditStatus {
                head_seq: 0,
                head_hash: "0000000000000000000000000000000000000000000000000000000000000000"
                    .into(),
                checkpoint_seq: 0,
                public_key: "ed25519:Gb9ECWmEzf6FQbrBZ9w7lshQhqowtrbLDFw4rXAxZuE=".into(),
                collected_seq: 0,
                failed: Some("the disk is full".into()),
            },
            ..status()
        },
    );
    for (state, wire) in [
        (ServingState::Serving, "serving"),
        (ServingState::Expired, "expired"),
        (ServingState::NoBundle, "no_bundle"),
    ] {
        assert_eq!(serde_json::to_value(state).unwrap(), wire);
    }
}

#[test]
fn error_bodies() {
    assert_golden(
        "error_engine.json",
        &ErrorBody::new(
            "unknown_sidecar",
            "this sidecar is not registered; POST /v1/sidecars first",
        ),
    );
    assert_golden(
        "error_sidecar.json",
        &ErrorBody::new("unauthorized", "bad control token").with_request_id("r-17"),
    );
}

#[test]
fn fleet() {
    let release = ReleaseView {
        revision: 1_764_876_000,
        created_at: "2025-12-04T19:20:00Z".into(),
        expires_at: "2025-12-05T19:20:00Z".into(),
        source_commit: Some("0b5d2c1e".into()),
        products: vec!["listening/plays".into(), "users/user-profiles".into()],
    };
    assert_golden(
        "fleet.json",
        &Fleet {
            mesh: Some("media".into()),
            key_id: "guild-2025".into(),
            released: Some(release.clone()),
            candidate: Some(ReleaseView {
                revision: 1_764_876_100,
                source_commit: None,
                ..release
            }),
            rollout: RolloutStatus {
                revision: Some(1_764_876_100),
                phase: Phase::Halted,
                canaries: vec!["plays-0".into()],
                reason: Some("canary `plays-0` refused revision 1764876100: NACK plugin_invalid: bundle rejected".into()),
                started_at: Some("2025-12-04T19:21:40Z".into()),
            },
            last_build: Some(BuildStatus {
                at: "2025-12-04T19:21:40Z".into(),
                fingerprint: "git:0b5d2c1e".into(),
                ok: true,
                revision: Some(1_764_876_100),
                renewal: false,
                error: None,
            }),
            sidecars: vec![
                SidecarView {
                    id: "plays-0".into(),
                    product: "listening/plays".into(),
                    control_url: "http://127.0.0.1:8091".into(),
                    state: SidecarState::Nacked,
                    canary: true,
                    acked_revision: Some(1_764_876_000),
                    acked_digest: Some(DIGEST.into()),
                    target_revision: Some(1_764_876_100),
                    last_contact: "2025-12-04T19:21:41Z".into(),
                    last_contact_seconds_ago: 3,
                    last_error: Some("NACK plugin_invalid for revision 1764876100: bundle rejected".into()),
                    bundle_age_seconds: Some(104),
                    audit_collected_seq: Some(40),
                    audit_error: None,
                },
                SidecarView {
                    id: "profiles-0".into(),
                    product: "users/user-profiles".into(),
                    control_url: "http://127.0.0.1:8081".into(),
                    state: SidecarState::Unreachable,
                    canary: false,
                    acked_revision: None,
                    acked_digest: None,
                    target_revision: Some(1_764_876_000),
                    last_contact: "2025-12-04T19:19:00Z".into(),
                    last_contact_seconds_ago: 164,
                    last_error: Some("push of revision 1764876000 failed: no answer within 10 s".into()),
                    bundle_age_seconds: None,
                    audit_collected_seq: None,
                    audit_error: Some("cannot fetch `http://127.0.0.1:8081/control/v1/audit?after=0`: status 503".into()),
                },
            ],
        },
    );
    let phases: Vec<&str> = Phase::ALL.iter().map(|p| p.as_str()).collect();
    assert_eq!(phases, ["idle", "canary", "baking", "released", "halted"]);
    for p in Phase::ALL {
        assert_eq!(serde_json::to_value(p).unwrap(), p.as_str());
    }
    for s in SidecarState::ALL {
        assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
    }
}

#[test]
fn queries_and_paths() {
    let q = PollQuery {
        sidecar: "plays-0".into(),
        wait_secs: Some(30),
    };
    assert_eq!(q.to_query(), "sidecar=plays-0&wait=30");
    assert_eq!(PollQuery::parse(Some(&q.to_query())), Ok(q));
    assert_eq!(
        PollQuery::parse(Some("wait=5&sidecar=a&sidecar=b")),
        Ok(PollQuery {
            sidecar: "a".into(),
            wait_secs: Some(5)
        })
    );
    assert_eq!(
        PollQuery::parse(Some("wait=5")),
        Err(PollQueryError::MissingSidecar)
    );
    assert_eq!(PollQuery::parse(None), Err(PollQueryError::MissingSidecar));
    assert_eq!(
        PollQuery::parse(Some("sidecar=a&wait=soon")),
        Err(PollQueryError::BadWait)
    );
    assert_eq!(etag(DIGEST), format!("\"{DIGEST}\""));
    assert_eq!(etag_digest(&etag(DIGEST)), DIGEST);
    assert_eq!(etag_digest(&format!(" W/{}", etag(DIGEST))), DIGEST);

    let a = AuditFeedQuery { after: 40 };
    assert_eq!(a.to_query(), "after=40");
    assert_eq!(AuditFeedQuery::parse(Some(&a.to_query())), Ok(a));
    assert_eq!(AuditFeedQuery::parse(None), Ok(AuditFeedQuery { after: 0 }));
    assert_eq!(
        AuditFeedQuery::parse(Some("after=-1"))
            .unwrap_err()
            .to_string(),
        "`after` must be a sequence number, got `-1`"
    );
    assert_eq!(
        AuditFeedQuery::parse(Some("after=1&limit=5"))
            .unwrap_err()
            .to_string(),
        "unknown parameter `limit`; the only one is `after`"
    );
    assert_eq!(
        AuditFeedQuery::parse(Some("after=1&after=2")),
        Err(AuditQueryError::Repeated)
    );
    let long = "9".repeat(5000);
    let reason = AuditFeedQuery::parse(Some(&format!("after={long}")))
        .unwrap_err()
        .to_string();
    assert!(reason.len() < 100, "{reason}");
    assert!(
        reason.contains(&format!("`{}…`", "9".repeat(32))),
        "{reason}"
    );

    assert_eq!(path::report("plays-0"), "/v1/sidecars/plays-0/report");
    assert_eq!(
        path::report_id("/v1/sidecars/plays-0/report"),
        Some("plays-0")
    );
    assert_eq!(path::report_id("/v1/sidecars"), None);
    assert_eq!(path::report_id("/v1/sidecarsX/report"), None);
}

/// The audit feed is framed, not re-encoded: a committed feed (two events,
/// then the checkpoint covering the second) splits into lines of the right
/// kinds, each exactly as stored.
#[test]
fn audit_feed_framing() {
    let feed = std::fs::read(golden("audit_feed.ndjson")).unwrap();
    assert_eq!(feed.last(), Some(&b'\n'), "every line ends with a newline");
    let lines: Vec<&[u8]> = feed
        .strip_suffix(b"\n")
        .unwrap()
        .split(|b| *b == b'\n')
        .collect();
    let kinds: Vec<&str> = lines
        .iter()
        .map(|l| match FeedLine::of(l) {
            FeedLine::Event(e) => {
                assert_eq!(e, *l);
                "event"
            }
            FeedLine::Checkpoint(c) => {
                assert_eq!(c, *l);
                "checkpoint"
            }
        })
        .collect();
    assert_eq!(kinds, ["event", "event", "checkpoint"]);
    for l in &lines {
        let v: serde_json::Value = serde_json::from_slice(l).unwrap();
        assert_eq!(
            v["kind"] == "checkpoint",
            matches!(FeedLine::of(l), FeedLine::Checkpoint(_))
        );
        assert!(l.len() <= MAX_FEED_LINE_BYTES);
    }
    assert_eq!(AUDIT_HEAD_HEADER, "x-meshgov-audit-head");
    assert_eq!(NDJSON_CONTENT_TYPE, "application/x-ndjson");
}
