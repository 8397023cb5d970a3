//! `meshgov audit verify` and `meshgov audit show`.

use crate::Failure;
use meshgov_audit::show::{Filter, read_filtered, row};
use meshgov_audit::{Decision, VerifyError, verify_path};
use std::path::Path;

/// Checks the chain and the checkpoints; exit 0 with a summary, 1 naming the
/// first bad sequence and the kind of break, 2 if it cannot be read.
pub fn verify(path: &Path, key: &Path, json: bool) -> Result<(), Failure> {
    let key = meshgov_bundle::read_public_key_file(key).map_err(Failure::key)?;
    match verify_path(path, &key) {
        Ok(s) => {
            if json {
                outln!(
                    "{}",
                    serde_json::json!({
                        "ok": true, "events": s.events, "first_seq": s.first_seq,
                        "last_seq": s.last_seq, "head_hash": s.head_hash, "segments": s.segments,
                        "checkpoints": s.checkpoints, "last_checkpoint_seq": s.last_checkpoint_seq,
                        "unsigned_tail": s.unsigned_tail, "torn_bytes": s.torn_bytes,
                        "retired_through": s.retired_through,
                    })
                );
            } else {
                outln!("{s}");
            }
            Ok(())
        }
        Err(VerifyError::Break(b)) => {
            if json {
                outln!(
                    "{}",
                    serde_json::json!({"ok": false, "seq": b.seq, "kind": b.kind.as_str(),
                        "at": b.at, "detail": b.detail})
                );
                Err(Failure::violations(""))
            } else {
                Err(Failure::violations(format!("audit log broken at {b}")))
            }
        }
        Err(VerifyError::Io { path, source }) => Err(Failure::io(&path, &source)),
        Err(e) => Err(Failure::usage(e.to_string())),
    }
}

/// The options of `meshgov audit show`.
pub struct ShowArgs<'a> {
    pub path: &'a Path,
    pub consumer: Option<String>,
    pub port: Option<String>,
    pub decision: Option<String>,
    pub request_id: Option<String>,
    pub client_request_id: Option<String>,
    pub since: Option<String>,
    pub until: Option<String>,
    pub json: bool,
}

fn time_arg(flag: &str, v: Option<String>) -> Result<Option<i64>, Failure> {
    v.map(|s| {
        meshgov_audit::event::parse_rfc3339_ms(&s).ok_or_else(|| {
            Failure::usage(format!(
                "`{flag}`: expected an RFC 3339 time such as 2026-11-21T09:00:00Z, got `{s}`"
            ))
        })
    })
    .transpose()
}

/// Prints the events that pass the filters, as rows or as the stored JSON.
pub fn show(a: ShowArgs<'_>) -> Result<(), Failure> {
    let decision = match a.decision.as_deref() {
        None => None,
        Some("allow") => Some(Decision::Allow),
        Some("deny") => Some(Decision::Deny),
        Some("error") => Some(Decision::Error),
        Some(other) => {
            return Err(Failure::usage(format!(
                "`--decision`: expected `allow`, `deny` or `error`, got `{other}`"
            )));
        }
    };
    let filter = Filter {
        consumer: a.consumer,
        port: a.port,
        decision,
        request_id: a.request_id,
        client_request_id: a.client_request_id,
        since_ms: time_arg("--since", a.since)?,
        until_ms: time_arg("--until", a.until)?,
    };
    // A log that is not there is an error, not an empty log.
    std::fs::metadata(a.path).map_err(|e| Failure::io(a.path, &e))?;
    let events = read_filtered(a.path, &filter).map_err(|e| Failure::io(a.path, &e))?;
    let mut out = std::io::stdout().lock();
    for (e, line) in &events {
        let res = if a.json {
            std::io::Write::write_all(&mut out, line)
                .and_then(|()| std::io::Write::write_all(&mut out, b"\n"))
        } else {
            std::io::Write::write_all(&mut out, format!("{}\n", row(e)).as_bytes())
        };
        // A closed pipe (`| head`) ends the listing quietly.
        if res.is_err() {
            break;
        }
    }
    Ok(())
}
