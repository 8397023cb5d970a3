//! The ledgers under concurrency and SIGKILL, embedded and PostgreSQL.
//!
//! PostgreSQL tests read `MESHGOV_TEST_POSTGRES` (a connection URL; `.ci/run`
//! starts a server on 127.0.0.1 and sets it). Without it they say so and
//! pass, except under `CI`, where a missing server is a failure.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use meshgov_privacy::ledger::{Account, FileLedger, Ledger, Reservation, Reserved, Units};
use meshgov_privacy::pg::PgLedger;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

fn postgres_url() -> Option<String> {
    match std::env::var("MESHGOV_TEST_POSTGRES") {
        Ok(u) if !u.is_empty() => Some(u),
        _ => {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI is set but MESHGOV_TEST_POSTGRES is not: PostgreSQL tests must run in CI"
            );
            eprintln!("skipping: set MESHGOV_TEST_POSTGRES to a PostgreSQL URL to run this test");
            None
        }
    }
}

/// A key no other test run uses, so runs never share budget rows.
fn fresh(tag: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{tag}-{}-{nanos}", std::process::id())
}

fn reservation(query: String, account: &str, limit: f64, cost: f64) -> Reservation {
    Reservation {
        query,
        window_start: 0,
        window_end: i64::MAX,
        cost: Units::cost(cost, 0.0).unwrap(),
        accounts: vec![
            Account {
                key: account.to_string(),
                limit: Units::budget(limit, 0.0).unwrap(),
            },
            Account {
                key: format!("{account}/product"),
                limit: Units::budget(limit * 10.0, 0.0).unwrap(),
            },
        ],
    }
}

/// `clients` threads, each with its own ledger handle (a replica), spend
/// 0.1 at a time against a budget of 2.0.
fn race(ledgers: Vec<Arc<dyn Ledger>>, account: &str) -> u64 {
    let granted = AtomicU64::new(0);
    std::thread::scope(|s| {
        for (t, l) in ledgers.iter().enumerate() {
            let granted = &granted;
            s.spawn(move || {
                for i in 0..15 {
                    let r = reservation(format!("{account}-{t}-{i}"), account, 2.0, 0.1);
                    match l.reserve(&r).unwrap() {
                        Reserved::Granted { .. } => {
                            granted.fetch_add(1, Ordering::SeqCst);
                        }
                        Reserved::Exhausted { account: 0, .. } => {}
                        other => panic!("unexpected {other:?}"),
                    }
                }
            });
        }
    });
    granted.into_inner()
}

#[test]
fn postgres_concurrent_replicas_never_overspend() {
    let Some(url) = postgres_url() else { return };
    let account = fresh("race");
    let ledgers: Vec<Arc<dyn Ledger>> = (0..6)
        .map(|_| Arc::new(PgLedger::connect(&url).unwrap()) as Arc<dyn Ledger>)
        .collect();
    // 90 attempts of 0.1 against 2.0: exactly 20 fit.
    assert_eq!(race(ledgers, &account), 20);
    let l = PgLedger::connect(&url).unwrap();
    let left = l
        .remaining(&reservation(String::new(), &account, 2.0, 0.1).accounts, 0)
        .unwrap();
    assert_eq!(left[0].epsilon, 0);
    assert_eq!(left[1].epsilon, Units::budget(18.0, 0.0).unwrap().epsilon);
}

#[test]
fn postgres_last_budget_has_exactly_one_winner() {
    let Some(url) = postgres_url() else { return };
    for round in 0..5 {
        let account = fresh(&format!("last-{round}"));
        let ledgers: Vec<PgLedger> = (0..2).map(|_| PgLedger::connect(&url).unwrap()).collect();
        let barrier = std::sync::Barrier::new(2);
        let wins = AtomicU64::new(0);
        std::thread::scope(|s| {
            for (i, l) in ledgers.iter().enumerate() {
                let (barrier, wins, account) = (&barrier, &wins, &account);
                s.spawn(move || {
                    let r = reservation(format!("{account}-{i}"), account, 1.0, 0.6);
                    barrier.wait();
                    if let Reserved::Granted { .. } = l.reserve(&r).unwrap() {
                        wins.fetch_add(1, Ordering::SeqCst);
                    }
                });
            }
        });
        assert_eq!(wins.into_inner(), 1, "round {round}");
    }
}

#[test]
fn postgres_repeats_are_cached_and_free() {
    let Some(url) = postgres_url() else { return };
    let account = fresh("cache");
    let l = PgLedger::connect(&url).unwrap();
    let r = reservation(format!("{account}-q"), &account, 1.0, 0.5);
    assert!(matches!(l.reserve(&r).unwrap(), Reserved::Granted { .. }));
    assert!(matches!(l.reserve(&r).unwrap(), Reserved::Pending { .. }));
    l.release(&r.query, 0, "answer").unwrap();
    // Another replica sees the answer, and nothing more is charged.
    let other = PgLedger::connect(&url).unwrap();
    match other.reserve(&r).unwrap() {
        Reserved::Cached { answer, remaining } => {
            assert_eq!(answer, "answer");
            assert_eq!(
                remaining[0].epsilon,
                Units::budget(0.5, 0.0).unwrap().epsilon
            );
        }
        x => panic!("{x:?}"),
    }
}

#[test]
fn postgres_refuses_all_or_nothing() {
    let Some(url) = postgres_url() else { return };
    let account = fresh("atomic");
    let l = PgLedger::connect(&url).unwrap();
    let mut r = reservation(format!("{account}-1"), &account, 1.0, 0.4);
    // The second account is the tight one: the first must not be charged.
    r.accounts[1].limit = Units::budget(0.3, 0.0).unwrap();
    match l.reserve(&r).unwrap() {
        Reserved::Exhausted { account: 1, .. } => {}
        x => panic!("{x:?}"),
    }
    let left = l.remaining(&r.accounts, 0).unwrap();
    assert_eq!(left[0].epsilon, Units::budget(1.0, 0.0).unwrap().epsilon);
}

#[test]
fn embedded_concurrent_clients_never_overspend() {
    let dir = tempfile::tempdir().unwrap();
    let l: Arc<dyn Ledger> = Arc::new(FileLedger::open(dir.path(), 0).unwrap());
    assert_eq!(race((0..6).map(|_| Arc::clone(&l)).collect(), "race"), 20);
}

/// The child side of the SIGKILL tests: spends 0.01 at a time against 1.0,
/// printing `granted` after each durable grant, until killed or refused.
#[test]
fn sigkill_child() {
    let Ok(mode) = std::env::var("MESHGOV_LEDGER_CHILD") else {
        return;
    };
    let account = std::env::var("MESHGOV_LEDGER_ACCOUNT").unwrap();
    let ledger: Box<dyn Ledger> = if mode == "postgres" {
        Box::new(PgLedger::connect(&std::env::var("MESHGOV_TEST_POSTGRES").unwrap()).unwrap())
    } else {
        Box::new(FileLedger::open(std::path::Path::new(&mode), 0).unwrap())
    };
    let start = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    for i in 0.. {
        let r = reservation(format!("{account}-{start}-{i}"), &account, 1.0, 0.01);
        match ledger.reserve(&r).unwrap() {
            Reserved::Granted { .. } => println!("granted"),
            _ => {
                println!("exhausted");
                return;
            }
        }
    }
}

/// Runs children that are SIGKILLed mid-spend, then one that spends to
/// the end. Every acknowledged grant must be kept, and all grants together
/// never exceed the budget.
fn sigkill_run(mode: &str, account: &str, check: impl Fn() -> u64) {
    let exe = std::env::current_exe().unwrap();
    let mut acknowledged = 0u64;
    for kill_after in [7u64, 13, 21, u64::MAX] {
        let mut child = Command::new(&exe)
            .args([
                "--exact",
                "sigkill_child",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("MESHGOV_LEDGER_CHILD", mode)
            .env("MESHGOV_LEDGER_ACCOUNT", account)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let out = BufReader::new(child.stdout.take().unwrap());
        let mut seen = 0;
        for line in out.lines() {
            match line.unwrap().as_str() {
                "granted" => {
                    seen += 1;
                    acknowledged += 1;
                    if seen == kill_after {
                        child.kill().unwrap(); // SIGKILL
                        break;
                    }
                }
                "exhausted" => break,
                _ => {}
            }
        }
        child.wait().unwrap();
        // Every acknowledged spend survived the kill.
        assert!(check() >= acknowledged, "lost an acknowledged spend");
    }
    // 100 spends of 0.01 fit in 1.0; a kill can lose one spend (reserved,
    // not acknowledged), never grant one twice.
    let spent = check();
    assert!(
        spent <= 100,
        "overspent: {spent} spends of 0.01 against 1.0"
    );
    assert!(acknowledged <= spent);
    assert!(spent >= 100 - 4, "spent only {spent}");
}

fn spent_spends(l: &dyn Ledger, account: &str) -> u64 {
    let r = reservation(String::new(), account, 1.0, 0.01);
    let left = l.remaining(&r.accounts, 0).unwrap()[0].epsilon;
    (r.accounts[0].limit.epsilon - left) / r.cost.epsilon
}

#[test]
fn embedded_sigkill_never_overspends() {
    if std::env::var_os("MESHGOV_LEDGER_CHILD").is_some() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_str().unwrap().to_string();
    sigkill_run(&path, "kill", || {
        let l = FileLedger::open(dir.path(), 0).unwrap();
        spent_spends(&l, "kill")
    });
}

#[test]
fn postgres_sigkill_never_overspends() {
    if std::env::var_os("MESHGOV_LEDGER_CHILD").is_some() {
        return;
    }
    let Some(url) = postgres_url() else { return };
    let account = fresh("kill");
    sigkill_run("postgres", &account, || {
        let l = PgLedger::connect(&url).unwrap();
        spent_spends(&l, &account)
    });
}
