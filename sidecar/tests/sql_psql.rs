//! The PostgreSQL port with psql, the client analysts type into: the
//! catalog a consumer sees (`\dt`, `\d`), masked values, filters on
//! treated values, refused writes, wrong tokens, and TLS.

use crate::common::*;
use std::net::SocketAddr;
use std::process::{Command, Output};

const PROFILES: &str = concat!(
    r#"{"user_id":"u-1","email":"alice@example.com","name":"Alice","birth_date":"1990-04-12","country":"NL","postcode":"1012AB","signed_up_at":"2026-03-01T10:00:00Z"}"#,
    "\n",
    r#"{"user_id":"u-2","email":"bob@example.org","name":"Bob","birth_date":"1985-11-30","country":"DE","postcode":"10115","signed_up_at":"2026-03-01T11:00:00Z"}"#,
    "\n",
    r#"{"user_id":"u-3","email":"anna@example.net","name":"Anna","birth_date":"2001-01-01","country":"NL","postcode":"75001","signed_up_at":"2026-03-01T12:00:00Z"}"#,
    "\n",
);

fn psql_found() -> bool {
    let found = Command::new("psql")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        found || std::env::var_os("CI").is_none(),
        "psql is missing; `.ci/setup` installs it"
    );
    if !found {
        eprintln!("skipped: psql not found (run .ci/setup)");
    }
    found
}

/// Runs psql against `addr` as `user` with `password`, one `-c` per
/// command, unaligned and tuples only unless `-c` is a meta-command.
async fn psql(
    addr: SocketAddr,
    user: &str,
    password: &str,
    sslmode: &str,
    cmds: &[&str],
) -> Output {
    let mut c = Command::new("psql");
    c.arg(format!(
        "host={} port={} user={user} dbname=user-profiles sslmode={sslmode} connect_timeout=10",
        addr.ip(),
        addr.port()
    ))
    .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1"])
    .env("PGPASSWORD", password)
    .env_remove("PGSERVICE");
    for cmd in cmds {
        c.args(["-c", cmd]);
    }
    tokio::task::spawn_blocking(move || c.output().unwrap())
        .await
        .unwrap()
}

fn stdout(o: &Output) -> String {
    assert!(
        o.status.success(),
        "psql failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout.clone()).unwrap()
}

fn stderr(o: &Output) -> String {
    assert!(!o.status.success(), "psql should have failed");
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A sidecar with its SQL ports in plaintext on loopback, `extra` config
/// (a `[limits]` table) and the profiles above.
async fn sidecar(keys: &Keys, extra: &str) -> Sidecar {
    let s = start(
        keys,
        Options {
            sql: Some("allow_plaintext = true".into()),
            extra_config: extra.into(),
            ..Options::default()
        },
    )
    .await;
    write_upstream(s.dir.path(), "profiles", "2026-03-01.ndjson", PROFILES);
    s
}

#[tokio::test]
async fn psql_sees_the_consumers_view_and_nothing_else() {
    if !psql_found() {
        return;
    }
    let keys = Keys::generate();
    let s = sidecar(&keys, "").await;
    let addr = s.sql.unwrap();
    let mia = token(&keys, "mia", &["marketing"], "campaign-analytics");

    // The catalog: one table, the port; `name` (redacted) is no column.
    let out = stdout(&psql(addr, "mia", &mia, "disable", &["\\dt"]).await);
    assert!(out.contains("public|profiles|"), "{out}");
    let out = stdout(&psql(addr, "mia", &mia, "disable", &["\\d profiles"]).await);
    assert!(out.contains("email"), "{out}");
    assert!(
        !out.contains("name|"),
        "a redacted field is no column: {out}"
    );

    // Masked values; a filter sees the masked email, not the raw one.
    let out = stdout(
        &psql(
            addr,
            "mia",
            &mia,
            "disable",
            &["SELECT email, country FROM profiles ORDER BY email"],
        )
        .await,
    );
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        [
            "a************.com|NL",
            "a***********.net|NL",
            "b**********.org|DE"
        ]
    );
    let out = stdout(
        &psql(
            addr,
            "mia",
            &mia,
            "disable",
            &["SELECT count(*) FROM profiles WHERE email LIKE 'alice%'"],
        )
        .await,
    );
    assert_eq!(out.trim(), "0", "the raw email is never matched");
    let out = stdout(
        &psql(
            addr,
            "mia",
            &mia,
            "disable",
            &["SELECT country, count(*) FROM profiles GROUP BY country ORDER BY country"],
        )
        .await,
    );
    assert_eq!(out.lines().collect::<Vec<_>>(), ["DE|1", "NL|2"]);
    // A join scans the port twice, each through the view.
    let out = stdout(
        &psql(
            addr,
            "mia",
            &mia,
            "disable",
            &["SELECT count(*), min(a.email) FROM profiles a JOIN profiles b ON a.country = b.country"],
        )
        .await,
    );
    assert_eq!(out.trim(), "5|a************.com");

    // A withheld column does not exist; writes are refused.
    let err = stderr(&psql(addr, "mia", &mia, "disable", &["SELECT name FROM profiles"]).await);
    assert!(err.contains("name"), "{err}");
    let err = stderr(&psql(addr, "mia", &mia, "disable", &["DELETE FROM profiles"]).await);
    assert!(err.contains("read only"), "{err}");
    let err = stderr(
        &psql(
            addr,
            "mia",
            &mia,
            "disable",
            &["SET datafusion.execution.batch_size = 1"],
        )
        .await,
    );
    assert!(err.contains("cannot be changed"), "{err}");

    // A consumer with no read grant sees no table.
    let eve = token(&keys, "eve", &["outsiders"], "campaign-analytics");
    let out = stdout(&psql(addr, "eve", &eve, "disable", &["\\dt"]).await);
    assert!(!out.contains("profiles"), "{out}");
    let err = stderr(&psql(addr, "eve", &eve, "disable", &["SELECT * FROM profiles"]).await);
    assert!(err.contains("profiles"), "{err}");

    // Wrong token, wrong user.
    let err = stderr(&psql(addr, "mia", "not-a-token", "disable", &["SELECT 1"]).await);
    assert!(err.contains("JWT"), "{err}");
    let err = stderr(&psql(addr, "someone", &mia, "disable", &["SELECT 1"]).await);
    assert!(err.contains("subject"), "{err}");
    s.stop().await;
}

fn events(s: &Sidecar) -> Vec<meshgov_audit::event::StoredEvent> {
    meshgov_audit::show::read_filtered(
        &s.dir.path().join("state/audit"),
        &meshgov_audit::show::Filter::default(),
    )
    .unwrap()
    .into_iter()
    .map(|(e, _)| e)
    .collect()
}

#[tokio::test]
async fn every_query_is_audited_with_its_shape_columns_and_outcome() {
    if !psql_found() {
        return;
    }
    let keys = Keys::generate();
    let s = sidecar(&keys, "").await;
    let addr = s.sql.unwrap();
    let mia = token(&keys, "mia", &["marketing"], "campaign-analytics");
    stdout(
        &psql(
            addr,
            "mia",
            &mia,
            "disable",
            &["SELECT email FROM profiles WHERE country = 'NL' AND email LIKE 'a%'"],
        )
        .await,
    );
    stderr(
        &psql(
            addr,
            "mia",
            &mia,
            "disable",
            &["DELETE FROM profiles WHERE country = 'NL'"],
        )
        .await,
    );
    stderr(&psql(addr, "mia", "bad-token", "disable", &["SELECT 1"]).await);
    stderr(&psql(addr, "someone-else", &mia, "disable", &["SELECT 1"]).await);

    // The completion event is written when the query's stream is dropped.
    let mut evs = events(&s);
    for _ in 0..100 {
        if evs
            .iter()
            .any(|e| e.kind == meshgov_audit::Kind::Completion)
        {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        evs = events(&s);
    }
    let read = evs
        .iter()
        .find(|e| {
            e.query
                .as_deref()
                .is_some_and(|q| q.starts_with("SELECT email"))
        })
        .expect("the query's decision event");
    assert_eq!(read.decision, Some(meshgov_audit::Decision::Allow));
    assert_eq!(read.protocol.as_deref(), Some("postgres"));
    assert_eq!(read.consumer.as_deref(), Some("mia"));
    assert_eq!(read.purpose.as_deref(), Some("campaign-analytics"));
    assert_eq!(read.port.as_deref(), Some("profiles"));
    // No literal enters the log.
    assert_eq!(
        read.query.as_deref(),
        Some("SELECT email FROM profiles WHERE country = ? AND email LIKE ?")
    );
    // The columns the scan read, each with its treatment.
    assert_eq!(
        read.transforms.get("profiles.email").map(String::as_str),
        Some("mask")
    );
    assert_eq!(
        read.transforms.get("profiles.country").map(String::as_str),
        Some("clear")
    );
    assert!(!read.transforms.contains_key("profiles.name"));
    assert!(
        read.policies.contains(&"users.marketing-read".to_string()),
        "{:?}",
        read.policies
    );
    let done = evs
        .iter()
        .find(|e| e.kind == meshgov_audit::Kind::Completion && e.request_id == read.request_id)
        .expect("the query's completion event");
    assert_eq!(done.records, Some(2));
    assert_eq!(done.outcome.as_deref(), Some("complete"));
    assert!(done.bytes.unwrap() > 0);

    let refused = evs
        .iter()
        .find(|e| e.query.as_deref().is_some_and(|q| q.starts_with("DELETE")))
        .expect("the refused statement's event");
    assert_eq!(refused.error.as_deref(), Some("read_only"));
    assert_eq!(
        refused.query.as_deref(),
        Some("DELETE FROM profiles WHERE country = ?")
    );
    assert!(
        evs.iter().any(|e| e.action.as_deref() == Some("connect")
            && e.error.as_deref() == Some("unauthorized")),
        "a refused connect is audited"
    );
    assert!(
        evs.iter().any(|e| e.action.as_deref() == Some("connect")
            && e.consumer.as_deref() == Some("mia")
            && e.error.as_deref() == Some("unauthorized")),
        "a connect refused for its user name is audited, with the token's subject"
    );
    s.stop().await;
}

/// A query long enough to cancel: DataFusion counts a long series.
const LONG: &str = "SELECT count(*) FROM generate_series(1, 20000000000)";

#[tokio::test]
async fn a_cancel_request_and_the_statement_timeout_stop_a_query() {
    if !psql_found() {
        return;
    }
    let keys = Keys::generate();
    let s = sidecar(&keys, "[limits]\nquery_timeout_ms = 3000").await;
    let addr = s.sql.unwrap();
    let mia = token(&keys, "mia", &["marketing"], "campaign-analytics");

    // psql sends a cancel request on SIGINT.
    let mut c = Command::new("psql");
    c.arg(format!(
        "host={} port={} user=mia dbname=user-profiles sslmode=disable",
        addr.ip(),
        addr.port()
    ))
    .args(["-X", "-v", "VERBOSITY=verbose", "-c", LONG])
    .env("PGPASSWORD", &mia)
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::piped());
    let child = c.spawn().unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(800)).await;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let started = std::time::Instant::now();
    let out = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
        .await
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("57014") && err.contains("user request"),
        "{err}"
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(2));

    // The sidecar's own limit, and a client's lower one.
    let err = stderr(
        &psql(
            addr,
            "mia",
            &mia,
            "disable",
            &["\\set VERBOSITY verbose", LONG],
        )
        .await,
    );
    assert!(err.contains("57014") && err.contains("3000 ms"), "{err}");
    let err = stderr(
        &psql(
            addr,
            "mia",
            &mia,
            "disable",
            &[
                "\\set VERBOSITY verbose",
                "SET statement_timeout = 500",
                LONG,
            ],
        )
        .await,
    );
    assert!(err.contains("57014") && err.contains("500 ms"), "{err}");

    let mut outcomes = Vec::new();
    for _ in 0..100 {
        outcomes = events(&s)
            .into_iter()
            .filter(|e| e.kind == meshgov_audit::Kind::Completion)
            .filter_map(|e| e.outcome)
            .collect();
        if outcomes.len() >= 3 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    outcomes.sort();
    assert_eq!(outcomes, ["cancelled", "timed_out", "timed_out"]);
    s.stop().await;
}

#[tokio::test]
async fn an_aggregate_only_consumer_gets_differentially_private_answers() {
    if !psql_found() {
        return;
    }
    let keys = Keys::generate();
    let s = start(
        &keys,
        Options {
            product: "play-events",
            sql: Some("allow_plaintext = true".into()),
            ..Options::default()
        },
    )
    .await;
    write_upstream(s.dir.path(), "plays", "today.ndjson", &plays_today());
    let addr = s.sql.unwrap();
    // Marketing may aggregate plays for campaign analytics, not read them.
    let ann = token(&keys, "ann", &["marketing"], "campaign-analytics");
    let psql_db = |cmds: Vec<String>| {
        let ann = ann.clone();
        async move {
            let mut c = Command::new("psql");
            c.arg(format!(
                "host={} port={} user=ann dbname=play-events sslmode=disable",
                addr.ip(),
                addr.port()
            ))
            .args([
                "-X",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-v",
                "VERBOSITY=verbose",
            ])
            .env("PGPASSWORD", &ann);
            for cmd in cmds {
                c.args(["-c", &cmd]);
            }
            tokio::task::spawn_blocking(move || c.output().unwrap())
                .await
                .unwrap()
        }
    };
    let by_country = "SELECT country, COUNT(*) AS plays, AVG(duration_ms) FROM plays GROUP BY country ORDER BY country";
    // ORDER BY is not part of the shape: refused, with what is allowed.
    let err = stderr(&psql_db(vec![by_country.into()]).await);
    assert!(
        err.contains("0A000") && err.contains("SELECT <group fields>"),
        "{err}"
    );
    let by_country =
        "SELECT country, COUNT(*) AS plays, AVG(duration_ms) FROM plays GROUP BY country";
    let out = psql_db(vec!["SET dp_epsilon = 1.0".into(), by_country.into()]).await;
    let rows = stdout(&out);
    let notice = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(
        notice.contains("NOTICE") && notice.contains("epsilon 1.0 spent"),
        "{notice}"
    );
    assert!(notice.contains("95% of answers within"), "{notice}");
    let de = rows
        .lines()
        .find(|l| l.starts_with("DE|"))
        .unwrap_or_else(|| panic!("{rows}"));
    let count: f64 = de.split('|').nth(1).unwrap().parse().unwrap();
    assert!((count - 600.0).abs() < 150.0, "{de}");

    // Raw rows, MIN/MAX and a restricted group are refused.
    for (sql, says) in [
        ("SELECT * FROM plays", "raw row"),
        ("SELECT MAX(duration_ms) FROM plays", "MIN/MAX"),
        (
            "SELECT user_id, COUNT(*) FROM plays GROUP BY user_id",
            "restricted field",
        ),
    ] {
        let err = stderr(&psql_db(vec![sql.into()]).await);
        assert!(err.contains(says), "{sql}: {err}");
    }

    // The same query again costs nothing; another spends the rest; then
    // the budget (2.0 for this purpose) is spent and nothing is charged.
    let out = psql_db(vec!["SET dp_epsilon = 1.0".into(), by_country.into()]).await;
    assert!(String::from_utf8_lossy(&out.stderr).contains("epsilon 0.0 spent (a repeat"));
    stdout(
        &psql_db(vec![
            "SET dp_epsilon = 1.0".into(),
            "SELECT COUNT(*) FROM plays".into(),
        ])
        .await,
    );
    let err = stderr(
        &psql_db(vec![
            "SET dp_epsilon = 0.5".into(),
            "SELECT SUM(duration_ms) FROM plays".into(),
        ])
        .await,
    );
    assert!(err.contains("53400") && err.contains("budget"), "{err}");

    let spends: Vec<_> = events(&s)
        .into_iter()
        .filter(|e| e.action.as_deref() == Some("aggregate"))
        .map(|e| (e.protocol, e.privacy_cost, e.error))
        .collect();
    assert_eq!(spends.len(), 4, "{spends:?}");
    assert_eq!(spends[0], (Some("postgres".into()), Some(1.0), None));
    assert_eq!(spends[1].1, Some(0.0));
    assert_eq!(spends[3].2.as_deref(), Some("budget_exhausted"));
    s.stop().await;
}

#[tokio::test]
async fn discovery_names_the_sql_ports_and_refusals_carry_their_sqlstates() {
    if !psql_found() {
        return;
    }
    let keys = Keys::generate();
    let s = sidecar(&keys, "[limits]\nmax_sql_connections = 1").await;
    let addr = s.sql.unwrap();
    let doc = get(s.addr, "/", &[]).await.json();
    assert_eq!(doc["sql"]["postgres"]["address"], addr.to_string());
    assert_eq!(doc["sql"]["postgres"]["database"], "user-profiles");
    assert_eq!(
        doc["sql"]["flight_sql"]["uri"],
        format!("grpc://{}", s.flight.unwrap())
    );

    let mia = token(&keys, "mia", &["marketing"], "campaign-analytics");
    // One connection is the limit: a second is refused with 53300.
    let mut c = Command::new("psql");
    c.arg(format!(
        "host={} port={} user=mia dbname=user-profiles sslmode=disable",
        addr.ip(),
        addr.port()
    ))
    .args([
        "-X",
        "-c",
        "SELECT count(*) FROM generate_series(1, 20000000000)",
    ])
    .env("PGPASSWORD", &mia)
    .stdout(std::process::Stdio::null())
    .stderr(std::process::Stdio::null());
    let mut first = c.spawn().unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let err = stderr(&psql(addr, "mia", &mia, "disable", &["SELECT 1"]).await);
    assert!(err.contains("too many clients"), "{err}");
    // Cancelled, its connection closes and frees the slot.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(first.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let _ = tokio::task::spawn_blocking(move || first.wait()).await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;

    // An expired token is refused at connect.
    let mut claims = claims("mia", &["marketing"], "campaign-analytics");
    claims["exp"] = serde_json::json!(now() - 60);
    let expired = sign(&keys, jsonwebtoken::Algorithm::EdDSA, &claims);
    let err = stderr(&psql(addr, "mia", &expired, "disable", &["SELECT 1"]).await);
    assert!(err.contains("expired"), "{err}");
    // A database other than the product.
    let mut c = Command::new("psql");
    c.arg(format!(
        "host={} port={} user=mia dbname=other sslmode=disable",
        addr.ip(),
        addr.port()
    ))
    .args(["-X", "-c", "SELECT 1"])
    .env("PGPASSWORD", &mia);
    let out = tokio::task::spawn_blocking(move || c.output().unwrap())
        .await
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("serves `user-profiles`"));

    // The metrics count statements by protocol, port and decision.
    stdout(
        &psql(
            addr,
            "mia",
            &mia,
            "disable",
            &["SELECT count(*) FROM profiles"],
        )
        .await,
    );
    let text = s
        .app
        .metrics
        .render(&s.app.bundle, &s.app.audit, &s.app.auth, now());
    assert!(
        text.contains(r#"meshgov_sidecar_sql_queries_total{protocol="postgres",port="profiles",decision="allow"} 1"#),
        "{text}"
    );
    s.stop().await;
}

#[tokio::test]
async fn without_a_valid_bundle_every_query_is_refused() {
    if !psql_found() {
        return;
    }
    let keys = Keys::generate();
    let s = start(
        &keys,
        Options {
            sql: Some("allow_plaintext = true".into()),
            install_bundle: false,
            ..Options::default()
        },
    )
    .await;
    let addr = s.sql.unwrap();
    let mia = token(&keys, "mia", &["marketing"], "campaign-analytics");
    let err = stderr(
        &psql(
            addr,
            "mia",
            &mia,
            "disable",
            &["\\set VERBOSITY verbose", "SELECT * FROM profiles"],
        )
        .await,
    );
    assert!(err.contains("57P03") && err.contains("bundle"), "{err}");
    s.stop().await;
}

#[tokio::test]
async fn an_idle_connection_is_closed_and_a_busy_one_is_not() {
    if !psql_found() {
        return;
    }
    let keys = Keys::generate();
    let s = sidecar(&keys, "[limits]\nsql_idle_timeout_ms = 400").await;
    let addr = s.sql.unwrap();
    let mia = token(&keys, "mia", &["marketing"], "campaign-analytics");
    // A query that runs longer than the idle limit is not cut.
    let out = stdout(
        &psql(
            addr,
            "mia",
            &mia,
            "disable",
            &["SELECT count(*) FROM generate_series(1, 30000000)"],
        )
        .await,
    );
    assert_eq!(out.trim(), "30000000");
    // Idle past the limit between two statements: the server is gone.
    let err = stderr(
        &psql(
            addr,
            "mia",
            &mia,
            "disable",
            &["SELECT 1", "\\! sleep 1.5", "SELECT 2"],
        )
        .await,
    );
    assert!(err.contains("closed the connection"), "{err}");
    s.stop().await;
}
