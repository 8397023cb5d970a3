//! Audit collection: `meshgov serve --collect-audit DIR` pulls every
//! registered sidecar's audit stream (`GET /control/v1/audit?after=SEQ`)
//! into `DIR/<sidecar id>/`, resuming from the last sequence it holds and
//! verifying each chain and checkpoint as it arrives (see
//! [`meshgov_audit::collect`]). The checkpoint key is read once from the
//! sidecar's control status and then pinned: a sidecar whose key changes
//! shows as a collection error instead of silently starting a new chain.

use crate::client::{self, HttpClient};
use meshgov_audit::collect::Collector;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The collectors, one per sidecar, kept between passes.
#[derive(Default)]
pub struct Collectors {
    by_id: tokio::sync::Mutex<HashMap<String, Collector>>,
}

/// What a pass needs from the engine that runs it.
pub struct Pass<'a> {
    /// The store: one directory per sidecar under it.
    pub root: &'a Path,
    pub client: &'a HttpClient,
    /// How long reading a sidecar's control status may take.
    pub status_timeout: Duration,
    /// A fresh control token for one sidecar's control port.
    pub token: &'a (dyn Fn() -> String + Sync),
}

/// One sidecar's collection in a pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Collected {
    /// The store's head sequence.
    pub head_seq: u64,
    /// Events collected in this pass.
    pub events: u64,
}

/// A sidecar id is a store directory name: never `.` or `..`.
fn store_dir(root: &Path, id: &str) -> Option<PathBuf> {
    (!id.chars().all(|c| c == '.')).then(|| root.join(id))
}

impl Collectors {
    /// One collection pass over `sidecars` (`(id, control URL)`); `done`
    /// hears each sidecar's result as soon as it has one. One pass at a
    /// time: a second waits for the first.
    pub async fn pass(
        &self,
        pass: &Pass<'_>,
        sidecars: Vec<(String, String)>,
        mut done: impl FnMut(&str, Result<Collected, String>),
    ) {
        let mut by_id = self.by_id.lock().await;
        for (id, url) in sidecars {
            let result = collect_one(pass, &id, &url, &mut by_id).await;
            done(&id, result);
        }
    }
}

async fn collect_one(
    pass: &Pass<'_>,
    id: &str,
    url: &str,
    by_id: &mut HashMap<String, Collector>,
) -> Result<Collected, String> {
    let token = (pass.token)();
    let collector = match by_id.remove(id) {
        Some(c) => c,
        None => {
            let dir = store_dir(pass.root, id)
                .ok_or_else(|| format!("sidecar id `{id}` cannot name a store"))?;
            let status =
                client::sidecar_status(pass.client, url, &token, pass.status_timeout).await?;
            let key = status
                .audit
                .public_key
                .parse::<meshgov_bundle::PublicKey>()
                .map_err(|e| format!("the sidecar's audit key: {e}"))?;
            Collector::open(&dir, key).map_err(|e| e.to_string())?
        }
    };
    let mut collector = collector.with_bearer(token);
    let pulled = tokio::time::timeout(Duration::from_secs(60), collector.pull(url)).await;
    let head_seq = collector.head_seq();
    by_id.insert(id.to_string(), collector);
    match pulled {
        Err(_) => Err("the audit feed did not finish within 60 s".into()),
        Ok(Err(e)) => Err(e.to_string()),
        Ok(Ok(p)) => {
            tracing::debug!(sidecar = %id, events = p.events, head = p.head_seq, "audit collected");
            Ok(Collected {
                head_seq,
                events: p.events,
            })
        }
    }
}
