//! Plugins through the whole path: a policy repository declaring the
//! example plugins (built from source) → check → signed bundle → sidecar →
//! a read over real sockets. Hostile plugins fail their read closed, and
//! the sidecar keeps serving.

use crate::common::*;

const LISTENER_RECORDS: &str = concat!(
    r#"{"listener_id":"l-1","phone":"+44 20 7946 0958","age":37,"artist_id":"urn:mesh:artist:a-1"}"#,
    "\n",
    r#"{"listener_id":"l-2","phone":"(555) 010-4477","age":19,"artist_id":"spotify:artist:42"}"#,
    "\n",
    r#"{"listener_id":"l-3","phone":"12","age":"71"}"#,
    "\n",
);

async fn plugin_sidecar(keys: &Keys, fixture: &str) -> Option<(Sidecar, tempfile::TempDir)> {
    let built = meshgov_wasm::examples::build().unwrap()?;
    let policies = tempfile::tempdir().unwrap();
    let hostile = wat::parse_file(
        meshgov_wasm::examples::source_dir().join(format!("fixtures/{fixture}.wat")),
    )
    .unwrap();
    built.policy_repo(policies.path(), &hostile).unwrap();
    let src = meshgov_core::SourceSet::read_dir(policies.path()).unwrap();
    let checked = meshgov_core::check_with(&src, Some(&meshgov_wasm::Inspector));
    assert!(checked.policies.is_some(), "{:?}", checked.diagnostics);
    let s = start(
        keys,
        Options {
            product: "listeners",
            repo: Some(policies.path().to_path_buf()),
            ..Options::default()
        },
    )
    .await;
    assert!(s.app.bundle.current().is_some(), "the plugin bundle loaded");
    write_upstream(s.dir.path(), "listeners", "a.ndjson", LISTENER_RECORDS);
    write_upstream(
        s.dir.path(),
        "hostile",
        "a.ndjson",
        "{\"id\":\"h-1\",\"x\":\"secret\"}\n",
    );
    Some((s, policies))
}

#[tokio::test]
async fn example_plugins_shape_the_read() {
    let keys = Keys::generate();
    let Some((s, _repo)) = plugin_sidecar(&keys, "trap").await else {
        return;
    };
    let t = token(&keys, "ana", &["analysts"], "product-analytics");
    for format in ["application/x-ndjson", "text/csv"] {
        let r = get_with(s.addr, "/v1/ports/listeners/records", &t, format).await;
        assert_eq!(r.status, 200, "{}", r.text());
        if format == "text/csv" {
            assert_eq!(
                r.text(),
                "listener_id,phone,age,artist_id\r\nl-1,'+44 XX XXXX XX58,35-44,urn:mesh:artist:a-1\r\nl-3,,65+,\r\n"
            );
            continue;
        }
        let recs = r.lines();
        // l-2's artist id is not a URN: the validator withholds the record.
        assert_eq!(recs.len(), 2, "{recs:?}");
        assert_eq!(recs[0]["phone"], "+44 XX XXXX XX58");
        assert_eq!(recs[0]["age"], "35-44");
        assert_eq!(recs[0]["artist_id"], "urn:mesh:artist:a-1");
        assert_eq!(recs[1]["listener_id"], "l-3");
        assert_eq!(recs[1]["phone"], serde_json::Value::Null);
        assert_eq!(recs[1]["age"], "65+");
        assert_eq!(recs[1]["artist_id"], serde_json::Value::Null);
    }
    assert_eq!(s.app.metrics.nonconforming_withheld.get(), 2);
    s.stop().await;
}

#[tokio::test]
async fn hostile_plugins_fail_their_read_closed_and_the_sidecar_keeps_serving() {
    let keys = Keys::generate();
    for (fixture, says) in [
        ("trap", "trapped"),
        ("loop", "ran out of fuel"),
        ("grow", "exceeded its memory limit"),
        ("malformed", "returned malformed output"),
    ] {
        let Some((s, _repo)) = plugin_sidecar(&keys, fixture).await else {
            return;
        };
        let t = token(&keys, "ana", &["analysts"], "product-analytics");
        for round in 1..=2u64 {
            let r = get_as(s.addr, "/v1/ports/hostile/records", &t).await;
            assert_eq!(r.status, 500, "{fixture}: {}", r.text());
            assert_eq!(r.error_code(), "plugin_failed");
            let reason = r.json()["reason"].as_str().unwrap().to_string();
            assert!(reason.contains(says), "{fixture}: {reason}");
            assert!(
                !r.text().contains("secret") && !r.text().contains("hostile"),
                "{}",
                r.text()
            );
            assert_eq!(s.app.metrics.plugin_failures_total(), round);
            // The next request, on the same bundle, is served.
            let ok = get_as(s.addr, "/v1/ports/listeners/records", &t).await;
            assert_eq!(ok.status, 200, "{fixture}: {}", ok.text());
            assert_eq!(ok.lines()[0]["age"], "35-44");
        }
        // Each failed read is in the audit chain as an error decision.
        let failed = meshgov_audit::show::read_filtered(
            &s.dir.path().join("state/audit"),
            &meshgov_audit::show::Filter::default(),
        )
        .unwrap()
        .into_iter()
        .filter(|(e, _)| {
            e.kind == meshgov_audit::Kind::Decision && e.error.as_deref() == Some("plugin_failed")
        })
        .map(|(e, _)| e)
        .collect::<Vec<_>>();
        assert_eq!(failed.len(), 2, "{fixture}: {failed:?}");
        assert!(
            failed.iter().all(
                |e| e.decision == Some(meshgov_audit::Decision::Error) && e.status == Some(500)
            ),
            "{failed:?}"
        );
        s.stop().await;
    }
}

#[tokio::test]
async fn a_bundle_whose_module_does_not_match_its_pin_is_refused() {
    let keys = Keys::generate();
    let Some((s, repo_dir)) = plugin_sidecar(&keys, "trap").await else {
        return;
    };
    let mut policies = policies_in(repo_dir.path(), &s.app.descriptor);
    // A bundle signed with a module other than the one its manifest pins:
    // the bundle's own digests match (the signer sent these bytes), the pin
    // does not.
    policies
        .modules
        .insert("age-band".into(), b"\0asm\x01\0\0\0".to_vec());
    let envelope = sign_policies(&s.gov, &policies, 8, 3600);
    let e = s.app.load_bundle(&envelope, now()).unwrap_err();
    assert!(e.to_string().contains("plugin `age-band`"), "{e}");
    assert!(e.to_string().contains("pins"), "{e}");
    // The good bundle stays in force.
    assert_eq!(s.app.bundle.current().unwrap().meta.revision, 7);
    s.stop().await;
}
