//! The engine's state: the releases, the rollout and the fleet.
//!
//! - **Builds.** A watch loop fingerprints the policy repository. On a
//!   change it checks, tests and compiles it, signs revision N+1 (every
//!   product's slice and the whole mesh) and starts a rollout. A change that
//!   fails is recorded and never rolled out. Before the released bundle
//!   reaches half its lifetime it is re-signed as a new revision (renewal).
//! - **Rollouts.** Without a canary set, the new release becomes what every
//!   sidecar should hold and is pushed to all. With one, it goes to the
//!   canaries first; once they all ACK and stay healthy for the bake time it
//!   is promoted to the rest. A NACK, a canary that does not ACK in time, or
//!   a failing health check halts the rollout: the rest keep the previous
//!   release.
//! - **The fleet.** Sidecars register, are pushed to (with retries and
//!   backoff), long-poll, and report; each one's ACKed revision, last
//!   contact and last error is kept, like xDS ACK/NACK.
//!
//! Revisions are `max(previous + 1, now in unix seconds, highest revision
//! the fleet reports + 1)`: strictly increasing, also across engine
//! restarts, so sidecars never see a rollback from a restarted engine.

use crate::build::{self, Compiled, Release, Signed};
use crate::client::{self, HttpClient};
use crate::collect::{self, Collectors};
use crate::metrics::EngineMetrics;
use meshgov_bundle::SigningKey;
use meshgov_bundle::clock::{Clock, SystemClock, rfc3339};
use meshgov_wire::{Ack, Nack, PulledAck, PushOutcome, ServingState};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::watch;
use tracing::Instrument as _;

/// Which sidecars get a release first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Canary {
    /// Everyone at once.
    Off,
    /// This percentage of the registered sidecars (at least one), by id order.
    Percent(u32),
    /// These sidecar ids or product ids.
    Named(Vec<String>),
}

impl FromStr for Canary {
    type Err = String;

    fn from_str(s: &str) -> Result<Canary, String> {
        let s = s.trim();
        if let Some(p) = s.strip_suffix('%') {
            return match p.trim().parse::<u32>() {
                Ok(n @ 1..=100) => Ok(Canary::Percent(n)),
                _ => Err(format!("`{s}`: expected a percentage from 1% to 100%")),
            };
        }
        let names: Vec<String> = s
            .split(',')
            .map(str::trim)
            .filter(|n| !n.is_empty())
            .map(str::to_string)
            .collect();
        if names.is_empty() {
            return Err("expected `N%` or a comma-separated list of sidecar or product ids".into());
        }
        Ok(Canary::Named(names))
    }
}

/// How `meshgov serve` runs.
pub struct EngineConfig {
    pub policies: PathBuf,
    pub key: SigningKey,
    pub canary: Canary,
    /// How long canaries must stay healthy after ACKing.
    pub canary_bake: Duration,
    /// How long canaries have to ACK.
    pub canary_ack_timeout: Duration,
    /// Overrides `mesh.toml`'s `[bundle] ttl_seconds`.
    pub ttl_seconds: Option<u64>,
    /// How often the repository is checked for changes.
    pub watch_interval: Duration,
    /// How long one push may take.
    pub push_timeout: Duration,
    /// Collect every sidecar's audit stream into this directory.
    pub audit_dir: Option<PathBuf>,
    /// How often audit streams are collected.
    pub audit_interval: Duration,
    /// At shutdown, how long requests in flight and an audit collection
    /// pass under way may take to finish.
    pub drain_timeout: Duration,
    /// The wall clock of every time the engine reads: revisions, bundle
    /// creation and expiry, renewal, last contact, control tokens and the
    /// fleet document. (Waits, timeouts and the bake time are measured on
    /// tokio's monotonic clock.)
    pub clock: Arc<dyn Clock>,
    /// The bearer token sidecars must send to register, long-poll and
    /// report (a control token signed with the governance key is accepted
    /// too). `None` lets any host that reaches the API register.
    pub registration_token: Option<String>,
}

impl EngineConfig {
    /// Defaults for everything but the repository and the key; the clock
    /// is the system clock.
    pub fn new(policies: PathBuf, key: SigningKey) -> EngineConfig {
        EngineConfig {
            policies,
            key,
            canary: Canary::Off,
            canary_bake: Duration::from_secs(30),
            canary_ack_timeout: Duration::from_secs(30),
            ttl_seconds: None,
            watch_interval: Duration::from_millis(250),
            push_timeout: Duration::from_secs(10),
            audit_dir: None,
            audit_interval: Duration::from_secs(5),
            drain_timeout: Duration::from_secs(10),
            clock: Arc::new(SystemClock),
            registration_token: None,
        }
    }
}

/// The fleet document and its parts (see `meshgov-wire`).
pub use meshgov_wire::{
    BuildStatus, Fleet, Phase, ReleaseView, RolloutStatus, SidecarState, SidecarView,
};
/// What sidecars send: a registration, and a report on a pulled bundle.
pub use meshgov_wire::{PullReport, Registration};

/// One registered sidecar.
#[derive(Debug, Clone)]
struct Sidecar {
    product: String,
    control_url: String,
    acked: Option<(u64, String)>,
    acked_created_at: Option<i64>,
    last_contact: i64,
    last_error: Option<String>,
    /// The digest it last refused: not offered again by the long poll.
    nacked: Option<String>,
    /// The last audit sequence collected, or why collection failed.
    audit: Option<Result<u64, String>>,
    /// A push of this digest is under way.
    pushing: Option<String>,
}

struct State {
    released: Option<Arc<Release>>,
    candidate: Option<Arc<Release>>,
    canaries: BTreeSet<String>,
    compiled: Option<Arc<Compiled>>,
    fingerprint: Option<String>,
    last_revision: u64,
    fleet_max_revision: u64,
    rollout: RolloutStatus,
    rollout_gen: u64,
    last_build: Option<BuildStatus>,
    sidecars: BTreeMap<String, Sidecar>,
}

/// The authoring service. Cheap to share: hold it in an `Arc`.
pub struct Engine {
    pub(crate) cfg: EngineConfig,
    state: Mutex<State>,
    /// Bumped whenever what some sidecar should hold changes; wakes long polls.
    changed: watch::Sender<u64>,
    client: HttpClient,
    /// Counters for `GET /metrics`.
    pub metrics: EngineMetrics,
}

/// What a long poll ends with.
pub enum PollAnswer {
    Bundle(Signed, u64),
    NotModified,
    UnknownSidecar,
}

/// Characters a sidecar id may hold (it travels in URLs unescaped).
pub fn valid_id(id: &str) -> bool {
    meshgov_wire::valid_sidecar_id(id)
}

impl Engine {
    pub fn new(cfg: EngineConfig) -> Arc<Engine> {
        let (changed, _) = watch::channel(0);
        Arc::new(Engine {
            cfg,
            state: Mutex::new(State {
                released: None,
                candidate: None,
                canaries: BTreeSet::new(),
                compiled: None,
                fingerprint: None,
                last_revision: 0,
                fleet_max_revision: 0,
                rollout: RolloutStatus {
                    revision: None,
                    phase: Phase::Idle,
                    canaries: vec![],
                    reason: None,
                    started_at: None,
                },
                rollout_gen: 0,
                last_build: None,
                sidecars: BTreeMap::new(),
            }),
            changed,
            client: HttpClient::default(),
            metrics: EngineMetrics::default(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // INVARIANT: no code panics while holding the lock.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Now, in Unix seconds, on the configured clock.
    fn now(&self) -> i64 {
        self.cfg.clock.now_unix()
    }

    fn notify(&self) {
        self.changed.send_modify(|g| *g = g.wrapping_add(1));
    }

    /// The public key sidecars must trust.
    pub fn public_key(&self) -> meshgov_bundle::PublicKey {
        self.cfg.key.public_key()
    }

    fn target<'a>(s: &'a State, id: &str) -> Option<&'a Arc<Release>> {
        match &s.candidate {
            Some(c) if s.canaries.contains(id) => Some(c),
            _ => s.released.as_ref(),
        }
    }

    /// Records that `id` holds `digest` if it is a bundle of a known release.
    fn note_held(s: &mut State, id: &str, digest: &str) {
        let known = [s.released.clone(), s.candidate.clone()]
            .into_iter()
            .flatten()
            .find(|r| r.holds(digest));
        if let (Some(r), Some(sc)) = (known, s.sidecars.get_mut(id)) {
            sc.acked = Some((r.revision, digest.to_string()));
            sc.acked_created_at = Some(r.created_at_unix);
            if sc.nacked.as_deref() == Some(digest) {
                sc.nacked = None;
            }
        }
    }

    // ---- builds ----

    /// Runs the watch loop until `shutdown`: build on change, renew before
    /// expiry, and re-push to sidecars that are behind.
    ///
    /// At shutdown an audit collection pass under way finishes (at most
    /// `drain_timeout`), so the store ends on a synced pass.
    pub async fn run(self: Arc<Self>, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        let (stop_collection, stopped) = watch::channel(false);
        let collection = self.cfg.audit_dir.clone().map(|dir| {
            let me = Arc::clone(&self);
            let mut stopped = stopped.clone();
            tokio::spawn(async move {
                let collectors = Collectors::default();
                let mut tick = tokio::time::interval(me.cfg.audit_interval);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tokio::select! {
                        _ = tick.tick() => {}
                        _ = stopped.wait_for(|s| *s) => return,
                    }
                    me.collect_audit(&dir, &collectors).await;
                }
            })
        });
        let mut collection = AbortOnDrop(collection);
        let mut tick = tokio::time::interval(self.cfg.watch_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut reconcile_at = std::time::Instant::now();
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = &mut shutdown => break,
            }
            Arc::clone(&self).build_tick().await;
            if reconcile_at.elapsed() >= Duration::from_secs(2) {
                reconcile_at = std::time::Instant::now();
                self.reconcile();
            }
        }
        let _ = stop_collection.send(true);
        if let Some(t) = collection.0.as_mut()
            && tokio::time::timeout(self.cfg.drain_timeout, t)
                .await
                .is_err()
        {
            tracing::warn!("an audit collection pass did not finish in time; stopped");
        }
    }

    /// One look at the repository: build if it changed, renew if due.
    pub async fn build_tick(self: Arc<Self>) {
        let dir = self.cfg.policies.clone();
        let fp = tokio::task::spawn_blocking(move || build::fingerprint(&dir)).await;
        let fp = match fp {
            Ok(Ok(fp)) => fp,
            Ok(Err(e)) => {
                self.record_build_failure(
                    "unreadable",
                    format!("cannot read the repository: {e}"),
                    false,
                );
                return;
            }
            Err(_) => return,
        };
        let now = self.now();
        let (changed, renew) = {
            let s = self.lock();
            let changed = s.fingerprint.as_deref() != Some(fp.as_str());
            let renew = s.candidate.is_none()
                && s.released.as_ref().is_some_and(|r| {
                    let half = (r.expires_at_unix - r.created_at_unix) / 2;
                    now >= r.created_at_unix + half
                });
            (changed, renew)
        };
        if changed {
            self.lock().fingerprint = Some(fp.clone());
            let engine = Arc::clone(&self);
            let built = tokio::task::spawn_blocking(move || {
                let cfg = &engine.cfg;
                build::build(
                    &cfg.policies,
                    &cfg.key,
                    &build::Options::default(),
                    &mut (),
                    |c| engine.stamp(c),
                )
            })
            .await;
            match built {
                Ok(Ok(b)) => {
                    let c = Arc::new(b.compiled);
                    self.lock().compiled = Some(Arc::clone(&c));
                    self.release(&c, &fp, false, Some(b.release));
                }
                Ok(Err(e)) => self.record_build_failure(&fp, e.to_string(), false),
                Err(_) => self.record_build_failure(&fp, "the build task failed".into(), false),
            }
        } else if renew {
            let c = self.lock().compiled.clone();
            if let Some(c) = c {
                self.release(&c, &fp, true, None);
            }
        }
    }

    fn record_build_failure(&self, fp: &str, error: String, renewal: bool) {
        self.metrics.builds_failed.inc();
        tracing::error!(fingerprint = fp, "not rolled out: {error}");
        self.lock().last_build = Some(BuildStatus {
            at: rfc3339(self.now()),
            fingerprint: fp.to_string(),
            ok: false,
            revision: None,
            renewal,
            error: Some(error),
        });
    }

    /// The next revision, signed now: above every revision this engine
    /// signed and every one a sidecar holds, and at least the time.
    fn stamp(&self, c: &Compiled) -> build::Stamp {
        let now = self.now();
        let revision = {
            let s = self.lock();
            let now_rev = u64::try_from(now).unwrap_or(0);
            (s.last_revision + 1)
                .max(now_rev)
                .max(s.fleet_max_revision + 1)
        };
        build::Stamp {
            revision,
            created_at_unix: now,
            ttl_seconds: self.cfg.ttl_seconds.unwrap_or(c.ttl_seconds).max(1),
        }
    }

    /// Starts the rollout of `c` signed as the next revision: `signed`, when
    /// the build has just signed it, else signed here.
    fn release(
        self: &Arc<Self>,
        c: &Compiled,
        fp: &str,
        renewal: bool,
        mut signed: Option<Result<Release, build::BuildError>>,
    ) {
        // A sidecar may register with a higher revision (an engine before a
        // restart signed it) while this one is being signed; the release is
        // then refused, and the policies are signed again above it.
        loop {
            let attempt = signed.take().unwrap_or_else(|| {
                let s = self.stamp(c);
                build::sign_release(
                    c,
                    &self.cfg.key,
                    s.revision,
                    s.created_at_unix,
                    s.ttl_seconds,
                )
            });
            let r = match attempt {
                Ok(r) => Arc::new(r),
                Err(e) => return self.record_build_failure(fp, e.to_string(), renewal),
            };
            let now = r.created_at_unix;
            if self.record_release(r, fp, now, renewal) {
                return;
            }
        }
    }

    /// Records a signed release and starts its rollout; false if a sidecar
    /// has meanwhile registered with its revision or a higher one.
    fn record_release(
        self: &Arc<Self>,
        r: Arc<Release>,
        fp: &str,
        now: i64,
        renewal: bool,
    ) -> bool {
        let revision = r.revision;
        {
            let mut s = self.lock();
            if s.fleet_max_revision >= revision {
                return false;
            }
            s.last_revision = revision;
            s.last_build = Some(BuildStatus {
                at: rfc3339(now),
                fingerprint: fp.to_string(),
                ok: true,
                revision: Some(revision),
                renewal,
                error: None,
            });
        }
        self.metrics.builds_ok.inc();
        if renewal {
            self.metrics.renewals.inc();
        }
        tracing::info!(
            revision,
            renewal,
            products = r.slices.len(),
            source_commit = r.source_commit.as_deref(),
            "built and signed"
        );
        self.start_rollout(r)
    }

    // ---- rollouts ----

    fn choose_canaries(&self, s: &State) -> BTreeSet<String> {
        match &self.cfg.canary {
            Canary::Off => BTreeSet::new(),
            Canary::Percent(p) => {
                let n = s.sidecars.len();
                let k = (n * *p as usize).div_ceil(100).max(1).min(n);
                s.sidecars.keys().take(k).cloned().collect()
            }
            Canary::Named(names) => s
                .sidecars
                .iter()
                .filter(|(id, sc)| names.iter().any(|n| n == *id || *n == sc.product))
                .map(|(id, _)| id.clone())
                .collect(),
        }
    }

    /// False, changing nothing, if a sidecar has registered with
    /// `r.revision` or a higher one: every sidecar would refuse it.
    fn start_rollout(self: &Arc<Self>, r: Arc<Release>) -> bool {
        let (generation, canaries) = {
            let mut s = self.lock();
            if s.fleet_max_revision >= r.revision {
                return false;
            }
            s.rollout_gen += 1;
            let canaries = self.choose_canaries(&s);
            // A halted or superseded candidate's canaries keep what they
            // hold until this release reaches them.
            s.rollout = RolloutStatus {
                revision: Some(r.revision),
                phase: if canaries.is_empty() {
                    Phase::Released
                } else {
                    Phase::Canary
                },
                canaries: canaries.iter().cloned().collect(),
                reason: None,
                started_at: Some(rfc3339(self.now())),
            };
            if canaries.is_empty() {
                s.released = Some(Arc::clone(&r));
                s.candidate = None;
                s.canaries.clear();
            } else {
                s.candidate = Some(Arc::clone(&r));
                s.canaries = canaries.clone();
            }
            (s.rollout_gen, canaries)
        };
        self.notify();
        if canaries.is_empty() {
            self.reconcile();
            return true;
        }
        tracing::info!(revision = r.revision, canaries = ?canaries, "canary rollout started");
        for id in &canaries {
            self.push(id.clone());
        }
        let me = Arc::clone(self);
        tokio::spawn(async move { me.canary(generation, r, canaries).await });
        true
    }

    fn halt(&self, generation: u64, reason: String) {
        let mut s = self.lock();
        if s.rollout_gen != generation {
            return;
        }
        self.metrics.rollout_halts.inc();
        tracing::error!(revision = s.rollout.revision, "rollout halted: {reason}");
        s.rollout.phase = Phase::Halted;
        s.rollout.reason = Some(reason);
    }

    async fn canary(self: Arc<Self>, generation: u64, r: Arc<Release>, canaries: BTreeSet<String>) {
        // 1. Every canary ACKs, or the rollout halts.
        let deadline = tokio::time::Instant::now() + self.cfg.canary_ack_timeout;
        loop {
            let verdict = {
                let s = self.lock();
                if s.rollout_gen != generation {
                    return;
                }
                let mut all = true;
                let mut nack = None;
                for id in &canaries {
                    let Some(sc) = s.sidecars.get(id) else {
                        continue;
                    };
                    let want = &r.for_product(&sc.product).digest;
                    if sc.nacked.as_ref() == Some(want) {
                        nack = Some(format!(
                            "canary `{id}` refused revision {}: {}",
                            r.revision,
                            sc.last_error.clone().unwrap_or_default()
                        ));
                    }
                    all &= sc.acked.as_ref().is_some_and(|(_, d)| d == want);
                }
                (all, nack)
            };
            match verdict {
                (_, Some(nack)) => return self.halt(generation, nack),
                (true, None) => break,
                (false, None) if tokio::time::Instant::now() >= deadline => {
                    return self.halt(
                        generation,
                        format!(
                            "canaries did not ACK revision {} within {} s",
                            r.revision,
                            self.cfg.canary_ack_timeout.as_secs()
                        ),
                    );
                }
                _ => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
        // 2. They stay healthy for the bake time.
        {
            let mut s = self.lock();
            if s.rollout_gen != generation {
                return;
            }
            s.rollout.phase = Phase::Baking;
        }
        tracing::info!(revision = r.revision, "canaries ACKed; baking");
        let bake_end = tokio::time::Instant::now() + self.cfg.canary_bake;
        let every =
            (self.cfg.canary_bake / 5).clamp(Duration::from_millis(100), Duration::from_secs(5));
        loop {
            for id in &canaries {
                let url = self
                    .lock()
                    .sidecars
                    .get(id)
                    .map(|sc| sc.control_url.clone());
                let Some(url) = url else { continue };
                let token = self.control_token();
                let healthy =
                    match client::sidecar_status(&self.client, &url, &token, self.cfg.push_timeout)
                        .await
                    {
                        Ok(st) => {
                            let rev = st.bundle.as_ref().map(|b| b.revision);
                            if st.state == ServingState::Serving && rev == Some(r.revision) {
                                Ok(())
                            } else {
                                Err(format!("state `{}` at revision {rev:?}", st.state.as_str()))
                            }
                        }
                        Err(e) => Err(e),
                    };
                if let Err(e) = healthy {
                    return self.halt(
                        generation,
                        format!("canary `{id}` is unhealthy on revision {}: {e}", r.revision),
                    );
                }
            }
            if tokio::time::Instant::now() >= bake_end {
                break;
            }
            tokio::time::sleep(every).await;
            if self.lock().rollout_gen != generation {
                return;
            }
        }
        // 3. Promote.
        {
            let mut s = self.lock();
            if s.rollout_gen != generation {
                return;
            }
            s.released = Some(Arc::clone(&r));
            s.candidate = None;
            s.canaries.clear();
            s.rollout.phase = Phase::Released;
        }
        tracing::info!(
            revision = r.revision,
            "canaries healthy; releasing to the fleet"
        );
        self.notify();
        self.reconcile();
    }

    // ---- the fleet ----

    /// Pushes to every sidecar whose ACKed bundle is not its target, unless
    /// it refused that target or a push is under way.
    pub fn reconcile(self: &Arc<Self>) {
        let ids: Vec<String> = {
            let s = self.lock();
            s.sidecars
                .iter()
                .filter(|(id, sc)| {
                    Self::target(&s, id).is_some_and(|t| {
                        let want = &t.for_product(&sc.product).digest;
                        sc.acked.as_ref().is_none_or(|(_, d)| d != want)
                            && sc.nacked.as_ref() != Some(want)
                            && sc.pushing.as_ref() != Some(want)
                    })
                })
                .map(|(id, _)| id.clone())
                .collect()
        };
        for id in ids {
            self.push(id);
        }
    }

    /// Pushes `id`'s target to it, retrying transport failures with backoff
    /// (100 ms doubling, 5 tries; after that the reconcile loop and the
    /// sidecar's long poll take over).
    pub fn push(self: &Arc<Self>, id: String) {
        let me = Arc::clone(self);
        let span = tracing::info_span!("push", sidecar = %id, revision = tracing::field::Empty);
        let task = async move {
            let mut backoff = Duration::from_millis(100);
            for attempt in 0..5 {
                let job = {
                    let mut s = me.lock();
                    let target = Self::target(&s, &id).cloned();
                    let Some(sc) = s.sidecars.get_mut(&id) else {
                        return;
                    };
                    let Some(t) = target else { return };
                    let b = t.for_product(&sc.product).clone();
                    let done = sc.acked.as_ref().is_some_and(|(_, d)| *d == b.digest)
                        || sc.nacked.as_ref() == Some(&b.digest)
                        || (attempt == 0 && sc.pushing.as_ref() == Some(&b.digest));
                    if done {
                        return;
                    }
                    sc.pushing = Some(b.digest.clone());
                    (sc.control_url.clone(), b, t.revision, t.created_at_unix)
                };
                let (url, b, revision, created) = job;
                tracing::Span::current().record("revision", revision);
                let r = client::push_bundle(&me.client, &url, b.bytes.clone(), me.cfg.push_timeout)
                    .await;
                let retry = {
                    let mut s = me.lock();
                    let Some(sc) = s.sidecars.get_mut(&id) else {
                        return;
                    };
                    sc.pushing = None;
                    match r {
                        Ok(PushOutcome::Ack(Ack {
                            revision: rev,
                            digest,
                            ..
                        })) => {
                            me.metrics.pushes_ack.inc();
                            tracing::debug!(acked = rev, "ACK");
                            sc.last_contact = me.now();
                            sc.last_error = None;
                            if digest == b.digest {
                                sc.acked = Some((rev, digest));
                                sc.acked_created_at = Some(created);
                            }
                            false
                        }
                        Ok(PushOutcome::Nack(Nack { code, reason, .. })) => {
                            me.metrics.pushes_nack.inc();
                            sc.last_contact = me.now();
                            tracing::warn!(code = code.as_str(), "NACK: {reason}");
                            sc.last_error =
                                Some(format!("NACK {code} for revision {revision}: {reason}"));
                            sc.nacked = Some(b.digest.clone());
                            false
                        }
                        Err(e) => {
                            me.metrics.pushes_error.inc();
                            tracing::debug!("push failed: {e}");
                            sc.last_error =
                                Some(format!("push of revision {revision} failed: {e}"));
                            true
                        }
                    }
                };
                if !retry {
                    return;
                }
                tokio::time::sleep(backoff).await;
                backoff *= 2;
            }
        };
        tokio::spawn(task.instrument(span));
    }

    /// `(id, control URL)` of every registered sidecar.
    pub fn control_urls(&self) -> Vec<(String, String)> {
        self.lock()
            .sidecars
            .iter()
            .map(|(id, sc)| (id.clone(), sc.control_url.clone()))
            .collect()
    }

    /// Whether `authorization` (an `Authorization` header value) may
    /// register a sidecar, long-poll or report: the registration token, or
    /// a control token signed with this engine's governance key. Anything
    /// goes when no registration token is configured.
    pub fn sidecar_authorized(&self, authorization: Option<&[u8]>) -> Result<(), &'static str> {
        let Some(want) = &self.cfg.registration_token else {
            return Ok(());
        };
        let token = authorization
            .and_then(|v| std::str::from_utf8(v).ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .ok_or("send `Authorization: Bearer <registration token>` (the sidecar's `engine.registration_token_file`)")?;
        // Compared as digests, so the time taken says nothing of the token.
        let digest = |s: &str| <sha2::Sha256 as sha2::Digest>::digest(s.as_bytes());
        if digest(token) == digest(want) {
            return Ok(());
        }
        let trust = meshgov_bundle::TrustStore::from_keys([self.cfg.key.public_key()])
            .map_err(|_| "the engine's key cannot verify control tokens")?;
        meshgov_bundle::verify_control_token(token, &trust, self.now())
            .map(|_| ())
            .map_err(|_| "the token is neither the registration token nor a valid control token")
    }

    /// A fresh control token for calling sidecars' control ports.
    pub fn control_token(&self) -> String {
        meshgov_bundle::mint_control_token(&self.cfg.key, "meshgov-engine", self.now(), 60)
    }

    /// One audit collection pass over the fleet into `root` (see
    /// [`crate::collect`]); errors are recorded per sidecar.
    pub async fn collect_audit(self: &Arc<Self>, root: &Path, collectors: &Collectors) {
        let token = || self.control_token();
        let pass = collect::Pass {
            root,
            client: &self.client,
            status_timeout: self.cfg.push_timeout,
            token: &token,
        };
        collectors
            .pass(&pass, self.control_urls(), |id, result| {
                match &result {
                    Ok(c) => self.metrics.audit_events_collected.add(c.events),
                    Err(e) => {
                        self.metrics.audit_collection_errors.inc();
                        tracing::warn!(sidecar = %id, "audit collection: {e}");
                    }
                }
                if let Some(sc) = self.lock().sidecars.get_mut(id) {
                    sc.audit = Some(result.map(|c| c.head_seq));
                }
            })
            .await;
    }

    /// The Prometheus exposition text for `GET /metrics`: the counters and
    /// the fleet as it is now.
    pub fn render_metrics(&self) -> String {
        crate::metrics::render(&self.metrics, &self.fleet())
    }

    /// Registers (or re-registers) a sidecar and pushes it its bundle.
    pub fn register(self: &Arc<Self>, r: Registration) -> Result<(), String> {
        if !valid_id(&r.id) {
            return Err(format!(
                "sidecar id `{}` may hold only ASCII letters, digits and `-_.@:` (at most 128)",
                r.id.chars().take(140).collect::<String>()
            ));
        }
        if !r.control_url.starts_with("http://") {
            return Err(format!(
                "control_url `{}` must be an `http://` URL",
                r.control_url
            ));
        }
        let now = self.now();
        let resign = {
            let mut s = self.lock();
            if let (Some(m), Some(c)) = (&r.mesh, &s.compiled)
                && *m != c.mesh
            {
                return Err(format!("this engine governs mesh `{}`, not `{m}`", c.mesh));
            }
            if let Some(c) = &s.compiled
                && !c.slices.contains_key(&r.product)
            {
                tracing::warn!(sidecar = %r.id, product = %r.product, "product not described in the policy repository; it gets the whole-mesh bundle");
            }
            let rev = r.revision.unwrap_or(0);
            s.fleet_max_revision = s.fleet_max_revision.max(rev);
            let entry = s.sidecars.entry(r.id.clone()).or_insert_with(|| Sidecar {
                product: r.product.clone(),
                control_url: r.control_url.clone(),
                acked: None,
                acked_created_at: None,
                last_contact: now,
                last_error: None,
                nacked: None,
                audit: None,
                pushing: None,
            });
            entry.product = r.product.clone();
            entry.control_url = r.control_url.trim_end_matches('/').to_string();
            entry.last_contact = now;
            if let Some(d) = &r.digest {
                Self::note_held(&mut s, &r.id, d);
            }
            // A revision this engine did not sign, as high as its newest
            // release: an engine before a restart signed it (in the same
            // second, or with a clock ahead). The sidecar refuses the
            // release as a conflict or a rollback, so the same policies
            // are signed again above it.
            let newest = s.candidate.as_ref().or(s.released.as_ref());
            let superseded = newest.is_some_and(|n| {
                rev >= n.revision && !r.digest.as_deref().is_some_and(|d| n.holds(d))
            });
            match (&s.compiled, &s.fingerprint) {
                (Some(c), Some(fp)) if superseded => Some((Arc::clone(c), fp.clone())),
                _ => None,
            }
        };
        tracing::info!(sidecar = %r.id, product = %r.product, control = %r.control_url, "sidecar registered");
        if let Some((c, fp)) = resign {
            tracing::warn!(sidecar = %r.id, revision = r.revision, "the sidecar holds a revision this engine did not sign; signing the policies again above it");
            self.release(&c, &fp, true, None);
        }
        self.push(r.id);
        Ok(())
    }

    /// Records a sidecar's report on a bundle it pulled. `false` if the
    /// sidecar is unknown.
    pub fn report(&self, id: &str, r: PullReport) -> bool {
        let mut s = self.lock();
        let target = Self::target(&s, id).cloned();
        let Some(sc) = s.sidecars.get_mut(id) else {
            return false;
        };
        sc.last_contact = self.now();
        match r {
            PullReport::Ack(PulledAck { digest, .. }) => {
                self.metrics.pull_acks.inc();
                sc.last_error = None;
                Self::note_held(&mut s, id, &digest);
            }
            PullReport::Nack(Nack { code, reason, .. }) => {
                self.metrics.pull_nacks.inc();
                tracing::warn!(sidecar = %id, code = code.as_str(), "NACK on pull: {reason}");
                sc.last_error = Some(format!("NACK {code}: {reason}"));
                sc.nacked = target.map(|t| t.for_product(&sc.product).digest.clone());
            }
        }
        true
    }

    /// Answers a long poll: the sidecar's bundle as soon as it differs from
    /// `held` (and was not refused), else `NotModified` after `wait`.
    pub async fn poll(&self, id: &str, held: Option<&str>, wait: Duration) -> PollAnswer {
        let deadline = tokio::time::Instant::now() + wait;
        let mut rx = self.changed.subscribe();
        loop {
            {
                let mut s = self.lock();
                if !s.sidecars.contains_key(id) {
                    return PollAnswer::UnknownSidecar;
                }
                if let Some(h) = held {
                    Self::note_held(&mut s, id, h);
                }
                let target = Self::target(&s, id).cloned();
                let Some(sc) = s.sidecars.get_mut(id) else {
                    return PollAnswer::UnknownSidecar;
                };
                sc.last_contact = self.now();
                if let Some(t) = target {
                    let b = t.for_product(&sc.product);
                    if held != Some(b.digest.as_str()) && sc.nacked.as_ref() != Some(&b.digest) {
                        return PollAnswer::Bundle(b.clone(), t.revision);
                    }
                }
            }
            tokio::select! {
                r = rx.changed() => if r.is_err() { return PollAnswer::NotModified },
                () = tokio::time::sleep_until(deadline) => return PollAnswer::NotModified,
            }
        }
    }

    /// The fleet as `GET /v1/fleet` shows it.
    pub fn fleet(&self) -> Fleet {
        let now = self.now();
        let s = self.lock();
        let sidecars = s
            .sidecars
            .iter()
            .map(|(id, sc)| {
                let target = Self::target(&s, id);
                let want = target.map(|t| (t.revision, t.for_product(&sc.product).digest.clone()));
                let in_sync = match (&want, &sc.acked) {
                    (Some((_, w)), Some((_, d))) => w == d,
                    (None, _) => true,
                    _ => false,
                };
                let state = if sc.nacked.is_some() && !in_sync {
                    SidecarState::Nacked
                } else if in_sync {
                    SidecarState::InSync
                } else if sc.last_error.is_some() {
                    SidecarState::Unreachable
                } else {
                    SidecarState::Pending
                };
                SidecarView {
                    id: id.clone(),
                    product: sc.product.clone(),
                    control_url: sc.control_url.clone(),
                    state,
                    canary: s.canaries.contains(id),
                    acked_revision: sc.acked.as_ref().map(|(r, _)| *r),
                    acked_digest: sc.acked.as_ref().map(|(_, d)| d.clone()),
                    target_revision: want.map(|(r, _)| r),
                    last_contact: rfc3339(sc.last_contact),
                    last_contact_seconds_ago: now - sc.last_contact,
                    last_error: sc.last_error.clone(),
                    bundle_age_seconds: sc.acked_created_at.map(|c| now - c),
                    audit_collected_seq: sc.audit.as_ref().and_then(|a| a.as_ref().ok().copied()),
                    audit_error: sc.audit.as_ref().and_then(|a| a.as_ref().err().cloned()),
                }
            })
            .collect();
        Fleet {
            mesh: s.compiled.as_ref().map(|c| c.mesh.clone()),
            key_id: self.cfg.key.keyid(),
            released: s.released.as_deref().map(release_view),
            candidate: s.candidate.as_deref().map(release_view),
            rollout: s.rollout.clone(),
            last_build: s.last_build.clone(),
            sidecars,
        }
    }
}

/// A release as the fleet shows it.
fn release_view(r: &Release) -> ReleaseView {
    ReleaseView {
        revision: r.revision,
        created_at: rfc3339(r.created_at_unix),
        expires_at: rfc3339(r.expires_at_unix),
        source_commit: r.source_commit.clone(),
        products: r.slices.keys().cloned().collect(),
    }
}

/// Stops a background task when the loop that owns it returns.
struct AbortOnDrop(Option<tokio::task::JoinHandle<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if let Some(t) = &self.0 {
            t.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn canary_specs() {
        assert_eq!("10%".parse::<Canary>().unwrap(), Canary::Percent(10));
        assert_eq!(
            "a, users/user-profiles".parse::<Canary>().unwrap(),
            Canary::Named(vec!["a".into(), "users/user-profiles".into()])
        );
        assert!("0%".parse::<Canary>().is_err());
        assert!("101%".parse::<Canary>().is_err());
        assert!(" , ".parse::<Canary>().is_err());
    }

    /// A sidecar that registers with a higher revision while a release is
    /// being signed: the release is refused rather than rolled out, since
    /// every sidecar would refuse it as a rollback.
    #[tokio::test]
    async fn a_release_overtaken_by_a_registration_is_refused() {
        let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../policies");
        let pem = SigningKey::generate_pkcs8_pem(&ring::rand::SystemRandom::new()).unwrap();
        let key = SigningKey::from_pkcs8_pem(&pem).unwrap();
        let engine = Engine::new(EngineConfig::new(
            repo.clone(),
            SigningKey::from_pkcs8_pem(&pem).unwrap(),
        ));
        let c = build::compile(&repo, &build::Options::default(), &mut ()).unwrap();
        let now = engine.now();
        let signing =
            build::sign_release(&c, &key, u64::try_from(now).unwrap(), now, 3600).unwrap();
        // Meanwhile: a sidecar holding what a previous engine signed later.
        engine
            .register(Registration {
                id: "profiles-0".into(),
                product: "users/user-profiles".into(),
                mesh: None,
                control_url: "http://127.0.0.1:9".into(),
                revision: Some(signing.revision + 5),
                digest: Some("sha256:other".into()),
            })
            .unwrap();
        assert!(!engine.record_release(Arc::new(signing), "fp", now, false));
        let s = engine.lock();
        assert!(s.released.is_none() && s.candidate.is_none());
        assert!(s.last_build.is_none());
    }

    #[test]
    fn ids() {
        assert!(valid_id("users.user-profiles@127.0.0.1:8081"));
        assert!(!valid_id("a/b"));
        assert!(!valid_id(""));
    }
}
