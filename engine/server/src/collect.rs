//! Audit collection: `meshgov serve --collect-audit DIR` pulls every
//! registered sidecar's audit stream (`GET /control/v1/audit?after=SEQ`)
//! into `DIR/<sidecar id>/`, resuming from the last sequence it holds and
//! verifying each chain and checkpoint as it arrives (see
//! [`meshgov_audit::collect`]). The checkpoint key is read once from the
//! sidecar's control status and then pinned: a sidecar whose key changes
//! shows as a collection error instead of silently starting a new chain.

use crate::engine::Engine;
use meshgov_audit::collect::Collector;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// The collectors, one per sidecar, kept between passes.
#[derive(Default)]
pub struct Collectors {
    by_id: tokio::sync::Mutex<HashMap<String, Collector>>,
}

/// A sidecar id is a store directory name: never `.` or `..`.
fn store_dir(root: &Path, id: &str) -> Option<PathBuf> {
    (!id.chars().all(|c| c == '.')).then(|| root.join(id))
}

impl Engine {
    /// One collection pass over the fleet; errors are recorded per sidecar.
    pub async fn collect_audit(self: &Arc<Self>, root: &Path, collectors: &Collectors) {
        let mut by_id = collectors.by_id.lock().await;
        for (id, url) in self.control_urls() {
            let result = self.collect_one(root, &id, &url, &mut by_id).await;
            match &result {
                Ok((_, events)) => self.metrics.audit_events_collected.add(*events),
                Err(e) => {
                    self.metrics.audit_collection_errors.inc();
                    tracing::warn!(sidecar = %id, "audit collection: {e}");
                }
            }
            self.record_audit(&id, result.map(|(head, _)| head));
        }
    }

    async fn collect_one(
        &self,
        root: &Path,
        id: &str,
        url: &str,
        by_id: &mut HashMap<String, Collector>,
    ) -> Result<(u64, u64), String> {
        // (the store's head sequence, events collected in this pass)
        let token = self.control_token();
        let collector = match by_id.remove(id) {
            Some(c) => c,
            None => {
                let dir = store_dir(root, id)
                    .ok_or_else(|| format!("sidecar id `{id}` cannot name a store"))?;
                let status =
                    crate::client::sidecar_status(&self.client, url, &token, self.cfg.push_timeout)
                        .await?;
                let key = status
                    .pointer("/audit/public_key")
                    .and_then(|k| k.as_str())
                    .ok_or("the sidecar's status publishes no audit key")?
                    .parse::<meshgov_bundle::PublicKey>()
                    .map_err(|e| format!("the sidecar's audit key: {e}"))?;
                Collector::open(&dir, key).map_err(|e| e.to_string())?
            }
        };
        let mut collector = collector.with_bearer(token);
        let pulled = tokio::time::timeout(Duration::from_secs(60), collector.pull(url)).await;
        let head = collector.head_seq();
        by_id.insert(id.to_string(), collector);
        match pulled {
            Err(_) => Err("the audit feed did not finish within 60 s".into()),
            Ok(Err(e)) => Err(e.to_string()),
            Ok(Ok(p)) => {
                tracing::debug!(sidecar = %id, events = p.events, head = p.head_seq, "audit collected");
                Ok((head, p.events))
            }
        }
    }
}
