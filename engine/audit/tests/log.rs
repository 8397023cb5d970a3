//! The log on real files: group commit, checkpoints, rotation, torn-tail
//! repair, retention, and `verify` naming each kind of tampering exactly.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use meshgov_audit::segment::{CHECKPOINTS, list_segments};
use meshgov_audit::{
    AuditLog, BreakKind, Decision, Event, Kind, Options, Retention, VerifyError, verify_path,
};
use meshgov_bundle::{PublicKey, SigningKey};
use std::path::Path;
use std::time::Duration;

fn key() -> SigningKey {
    let pem = SigningKey::generate_pkcs8_pem(&ring::rand::SystemRandom::new()).unwrap();
    SigningKey::from_pkcs8_pem(&pem).unwrap()
}

fn decision(i: u64) -> Event {
    let mut e = Event::new(Kind::Decision, 1_795_000_000_000 + i as i64);
    e.request_id = Some(format!("req-{i}"));
    e.consumer = Some(if i.is_multiple_of(2) { "alice" } else { "bob" }.into());
    e.purpose = Some("campaign-analytics".into());
    e.action = Some("read".into());
    e.port = Some("profiles".into());
    e.decision = Some(if i.is_multiple_of(3) {
        Decision::Deny
    } else {
        Decision::Allow
    });
    e.status = Some(if i.is_multiple_of(3) { 403 } else { 200 });
    e.policies = vec!["marketing-reads".into()];
    e.transforms = vec![("email".into(), "mask".into())];
    e.bundle_revision = Some(7);
    e
}

fn opts(dir: &Path) -> Options {
    let mut o = Options::new(dir);
    o.checkpoint_every = 10;
    o
}

/// Writes `n` events (acknowledged one by one) and closes the log.
fn write(dir: &Path, k: &Pem, n: u64, o: Options) -> PublicKey {
    let log = AuditLog::open(o, k.key()).unwrap();
    for i in 1..=n {
        log.submit(decision(i)).wait().unwrap();
    }
    let _ = dir;
    log.public_key()
}

/// A test key kept as PEM, so the log can be reopened with the same key.
struct Pem(String);

impl Pem {
    fn key(&self) -> SigningKey {
        SigningKey::from_pkcs8_pem(&self.0).unwrap()
    }
}

fn new_key() -> Pem {
    Pem(
        SigningKey::generate_pkcs8_pem(&ring::rand::SystemRandom::new())
            .unwrap()
            .to_string(),
    )
}

fn seg_file(dir: &Path) -> std::path::PathBuf {
    list_segments(dir).unwrap()[0].path.clone()
}

fn lines(p: &Path) -> Vec<String> {
    std::fs::read_to_string(p)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

fn put_lines(p: &Path, ls: &[String]) {
    let mut s = ls.join("\n");
    s.push('\n');
    std::fs::write(p, s).unwrap();
}

fn broken(dir: &Path, pk: &PublicKey) -> meshgov_audit::Break {
    match verify_path(dir, pk) {
        Err(VerifyError::Break(b)) => b,
        other => panic!("expected a break, got {other:?}"),
    }
}

#[test]
fn a_written_log_verifies_with_checkpoints() {
    let d = tempfile::tempdir().unwrap();
    let k = new_key();
    let pk = write(d.path(), &k, 35, opts(d.path()));
    let s = verify_path(d.path(), &pk).unwrap();
    assert_eq!((s.first_seq, s.last_seq, s.events), (1, 35, 35));
    // Every 10 events, plus the final one at close.
    assert_eq!(s.checkpoints, 4);
    assert_eq!(s.last_checkpoint_seq, 35);
    // Another key does not verify the checkpoints.
    let other = key().public_key();
    let b = broken(d.path(), &other);
    assert_eq!(b.kind, BreakKind::BadSignature);
    assert_eq!(b.seq, 10);
}

#[test]
fn tampering_is_named_exactly() {
    let k = new_key();
    let setup = || {
        let d = tempfile::tempdir().unwrap();
        let pk = write(d.path(), &k, 30, opts(d.path()));
        (d, pk)
    };

    // One byte of an old event.
    let (d, pk) = setup();
    let seg = seg_file(d.path());
    let mut bytes = std::fs::read(&seg).unwrap();
    let text = String::from_utf8(bytes.clone()).unwrap();
    let at = text.find("req-7\"").unwrap() + 4;
    bytes[at] = b'8';
    std::fs::write(&seg, &bytes).unwrap();
    let b = broken(d.path(), &pk);
    assert_eq!((b.seq, b.kind), (7, BreakKind::Edited), "{b}");

    // Two events swapped.
    let (d, pk) = setup();
    let seg = seg_file(d.path());
    let mut ls = lines(&seg);
    ls.swap(11, 12);
    put_lines(&seg, &ls);
    let b = broken(d.path(), &pk);
    assert_eq!((b.seq, b.kind), (12, BreakKind::Reordered), "{b}");

    // One event deleted.
    let (d, pk) = setup();
    let seg = seg_file(d.path());
    let mut ls = lines(&seg);
    ls.remove(4);
    put_lines(&seg, &ls);
    let b = broken(d.path(), &pk);
    assert_eq!((b.seq, b.kind), (5, BreakKind::Deleted), "{b}");

    // The tail cut off after a checkpoint (at 30) vouched for it.
    let (d, pk) = setup();
    let seg = seg_file(d.path());
    let ls = lines(&seg);
    put_lines(&seg, &ls[..24]);
    let b = broken(d.path(), &pk);
    assert_eq!((b.seq, b.kind), (25, BreakKind::Truncated), "{b}");

    // A checkpoint signature replaced (by one over other content).
    let (d, pk) = setup();
    let cp = d.path().join(CHECKPOINTS);
    let mut cls = lines(&cp);
    let mut c: serde_json::Value = serde_json::from_str(&cls[1]).unwrap();
    let forged = meshgov_audit::Checkpoint::sign(&k.key(), 20, &[9u8; 32], 0);
    c["sig"] = forged.sig.into();
    cls[1] = c.to_string();
    put_lines(&cp, &cls);
    let b = broken(d.path(), &pk);
    assert_eq!((b.seq, b.kind), (20, BreakKind::BadSignature), "{b}");

    // An edit with every later hash recomputed still disagrees with the
    // signed checkpoint.
    let (d, pk) = setup();
    let seg = seg_file(d.path());
    let mut ls = lines(&seg);
    let mut rechained = Vec::new();
    let mut head = meshgov_audit::Head::EMPTY;
    for (i, l) in ls.iter().enumerate() {
        let (ev, _) = meshgov_audit::event::open_line(l.as_bytes()).unwrap();
        let mut e = decision(ev.seq);
        if i == 14 {
            e.decision = Some(Decision::Allow);
            e.status = Some(200);
            e.consumer = Some("mallory".into());
        }
        head = meshgov_audit::event::seal(&e, head, &mut rechained);
    }
    ls = String::from_utf8(rechained)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    put_lines(&seg, &ls);
    let b = broken(d.path(), &pk);
    assert_eq!((b.seq, b.kind), (20, BreakKind::Edited), "{b}");
}

#[test]
fn a_torn_tail_is_cut_and_recorded_and_the_chain_goes_on() {
    let d = tempfile::tempdir().unwrap();
    let k = new_key();
    let pk = write(d.path(), &k, 12, opts(d.path()));
    let seg = seg_file(d.path());
    // A crash mid-write: half a line, no newline.
    let mut f = std::fs::OpenOptions::new().append(true).open(&seg).unwrap();
    let torn = br#"{"action":"read","bundle_rev"#;
    std::io::Write::write_all(&mut f, torn).unwrap();
    drop(f);
    let s = verify_path(d.path(), &pk).unwrap();
    assert_eq!(s.torn_bytes, torn.len() as u64);
    let log = AuditLog::open(opts(d.path()), k.key()).unwrap();
    assert_eq!(log.durable_seq(), 13, "the recovery event follows event 12");
    log.submit(decision(14)).wait().unwrap();
    drop(log);
    let s = verify_path(d.path(), &pk).unwrap();
    assert_eq!((s.last_seq, s.torn_bytes), (14, 0));
    let shown = meshgov_audit::show::read_filtered(d.path(), &Default::default()).unwrap();
    assert_eq!(shown[12].0.kind, Kind::Recovery);
    assert_eq!(shown[12].0.torn_bytes, Some(torn.len() as u64));
}

#[test]
fn damage_that_is_not_a_torn_tail_refuses_to_open() {
    let d = tempfile::tempdir().unwrap();
    let k = new_key();
    write(d.path(), &k, 5, opts(d.path()));
    let seg = seg_file(d.path());
    let mut ls = lines(&seg);
    ls[1] = ls[1].replace("req-2", "req-9");
    put_lines(&seg, &ls);
    let err = AuditLog::open(opts(d.path()), k.key()).err().unwrap();
    assert!(err.to_string().contains("damaged"), "{err}");
}

#[test]
fn rotation_retention_and_the_removal_is_an_event() {
    let d = tempfile::tempdir().unwrap();
    let k = new_key();
    let mut o = opts(d.path());
    o.segment_bytes = 4096;
    o.retention = Retention::AfterCollection;
    let log = AuditLog::open(o, k.key()).unwrap();
    for i in 1..=60 {
        log.submit(decision(i)).wait().unwrap();
    }
    let before = list_segments(d.path()).unwrap().len();
    assert!(before >= 4, "{before} segments");
    // Not collected yet: nothing goes.
    log.submit(decision(61)).wait().unwrap();
    assert_eq!(list_segments(d.path()).unwrap()[0].first_seq, 1);
    // Collected up to 30; checkpoints at 10, 20, …: segments wholly ≤ 30 go.
    log.collected(30);
    log.submit(decision(62)).wait().unwrap();
    // The retention event was committed after 62's batch; one more round trip.
    log.submit(decision(63)).wait().unwrap();
    let after = list_segments(d.path()).unwrap();
    assert!(after.len() < before, "{} of {before}", after.len());
    assert!(after[0].first_seq <= 31);
    let pk = log.public_key();
    drop(log);
    let s = verify_path(d.path(), &pk).unwrap();
    assert_eq!(s.retired_through, s.first_seq - 1);
    assert!(s.retired_through > 0);
    let evs = meshgov_audit::show::read_filtered(d.path(), &Default::default()).unwrap();
    let r = evs.iter().find(|(e, _)| e.kind == Kind::Retention).unwrap();
    assert!(!r.0.segments.is_empty());
    // Deleting the first remaining segment without a record is caught.
    std::fs::remove_file(&after[0].path).unwrap();
    let b = broken(d.path(), &pk);
    assert_eq!(b.kind, BreakKind::Deleted, "{b}");
}

#[test]
fn group_commit_acknowledges_concurrent_submitters() {
    let d = tempfile::tempdir().unwrap();
    let k = new_key();
    let log = std::sync::Arc::new(AuditLog::open(opts(d.path()), k.key()).unwrap());
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let log = std::sync::Arc::clone(&log);
            std::thread::spawn(move || {
                for i in 0..200 {
                    log.submit(decision(t * 1000 + i)).wait().unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(log.durable_seq(), 1600);
    let pk = log.public_key();
    drop(log);
    let s = verify_path(d.path(), &pk).unwrap();
    assert_eq!(s.events, 1600);
}

#[test]
fn a_timer_checkpoint_covers_a_quiet_log() {
    let d = tempfile::tempdir().unwrap();
    let k = new_key();
    let mut o = opts(d.path());
    o.checkpoint_every = 1000;
    o.checkpoint_interval = Duration::from_millis(100);
    let log = AuditLog::open(o, k.key()).unwrap();
    log.submit(decision(1)).wait().unwrap();
    std::thread::sleep(Duration::from_millis(400));
    assert_eq!(log.head().checkpoint_seq, 1);
}

/// Found by the `audit_segment` fuzz target: a log whose first event is
/// (re-hashed as) sequence 0 made verification compute `0 - 1`, a panic
/// with overflow checks. It is a break like any other edit.
#[test]
fn a_log_starting_at_sequence_zero_is_a_break_not_a_panic() {
    let k = new_key();
    let d = tempfile::tempdir().unwrap();
    let pk = write(d.path(), &k, 3, opts(d.path()));
    let seg = seg_file(d.path());
    let mut ls = lines(&seg);
    // Sequence 1 becomes 0, and its hash is made to match again, so the
    // line is sound on its own and only the chain rules can object.
    let first = ls[0].replacen("\"seq\":1,", "\"seq\":0,", 1);
    assert_ne!(first, ls[0], "the event has a seq field");
    let cut = first.len() - (",\"hash\":\"".len() + 64 + "\"}".len());
    let body = &first[..cut];
    let hash = meshgov_audit::event::sha256(format!("{body}}}").as_bytes());
    ls[0] = format!("{body},\"hash\":\"{}\"}}", meshgov_audit::event::hex(&hash));
    assert!(meshgov_audit::event::open_line(ls[0].as_bytes()).is_ok());
    put_lines(&seg, &ls);
    let b = broken(d.path(), &pk);
    assert_eq!((b.seq, b.kind), (0, BreakKind::Edited), "{b}");
}
