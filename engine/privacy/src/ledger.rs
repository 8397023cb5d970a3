//! The privacy-budget ledger: what each account has spent in each window.
//!
//! A spend is **reserved and made durable before the answer is computed**.
//! A crash between reserve and release loses that budget (safe); it never
//! grants budget twice. Two implementations:
//!
//! - [`FileLedger`]: an fsynced append-only journal in the sidecar's state
//!   directory, for one replica (an exclusive file lock keeps a second
//!   process out);
//! - [`crate::pg::PgLedger`]: PostgreSQL, for several replicas of one
//!   product. A `CHECK` constraint makes overspend impossible.
//!
//! Costs are integer [`Units`]: 10⁻¹² of one epsilon (or delta). Costs are
//! rounded up and budgets down, so rounding never grants budget.

use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Ledger units per one epsilon (or one delta).
pub const UNITS_PER_ONE: f64 = 1e12;

/// An amount of epsilon and delta, in integer units of 10⁻¹².
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Units {
    pub epsilon: u64,
    pub delta: u64,
}

impl Units {
    /// A cost, each part rounded **up** to the next unit. `None` for NaN,
    /// negative or infinite parts, or more than the ledger can hold.
    pub fn cost(epsilon: f64, delta: f64) -> Option<Units> {
        Some(Units {
            epsilon: to_units(epsilon, f64::ceil)?,
            delta: to_units(delta, f64::ceil)?,
        })
    }

    /// A budget, each part rounded **down**.
    pub fn budget(epsilon: f64, delta: f64) -> Option<Units> {
        Some(Units {
            epsilon: to_units(epsilon, f64::floor)?,
            delta: to_units(delta, f64::floor)?,
        })
    }

    pub fn epsilon_f64(&self) -> f64 {
        self.epsilon as f64 / UNITS_PER_ONE
    }

    pub fn delta_f64(&self) -> f64 {
        self.delta as f64 / UNITS_PER_ONE
    }

    /// True when `self` fits in `limit` after `spent`.
    fn fits(&self, spent: Units, limit: Units) -> bool {
        spent
            .epsilon
            .checked_add(self.epsilon)
            .is_some_and(|e| e <= limit.epsilon)
            && spent
                .delta
                .checked_add(self.delta)
                .is_some_and(|d| d <= limit.delta)
    }

    fn saturating_sub(self, o: Units) -> Units {
        Units {
            epsilon: self.epsilon.saturating_sub(o.epsilon),
            delta: self.delta.saturating_sub(o.delta),
        }
    }

    fn saturating_add(self, o: Units) -> Units {
        Units {
            epsilon: self.epsilon.saturating_add(o.epsilon),
            delta: self.delta.saturating_add(o.delta),
        }
    }
}

/// The ledger keeps at most `i64::MAX` units per account (PostgreSQL `bigint`).
const MAX_UNITS: f64 = 9.0e18;

fn to_units(x: f64, round: fn(f64) -> f64) -> Option<u64> {
    if !x.is_finite() || x < 0.0 {
        return None;
    }
    let u = round(x * UNITS_PER_ONE);
    if u > MAX_UNITS {
        return None;
    }
    // INVARIANT: 0 <= u <= 9e18 < u64::MAX, so the cast is exact for integers.
    Some(u as u64)
}

/// One budget a spend draws on, e.g. a consumer and purpose on a rule, or
/// the whole product (consumers can collude).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub key: String,
    /// The budget per window, from the policy in force.
    pub limit: Units,
}

/// A spend to reserve: `cost` is charged to every account, all or none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reservation {
    /// The query's fingerprint (consumer, purpose, port and the canonical
    /// query): an identical query in the same window is answered from the
    /// ledger's copy at no cost.
    pub query: String,
    /// Window bounds in Unix seconds, `[start, end)`.
    pub window_start: i64,
    pub window_end: i64,
    pub cost: Units,
    pub accounts: Vec<Account>,
}

/// What a reservation came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reserved {
    /// Charged and durable; `remaining` is per account, in order.
    Granted { remaining: Vec<Units> },
    /// The same query was answered in this window: here is that answer.
    Cached {
        answer: String,
        remaining: Vec<Units>,
    },
    /// The same query was reserved in this window but has no answer (it is
    /// being computed, or its process died). Nothing is charged.
    Pending { remaining: Vec<Units> },
    /// An account cannot afford the cost. Nothing is charged.
    Exhausted {
        /// Index into the reservation's accounts.
        account: usize,
        remaining: Vec<Units>,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("the budget ledger cannot be used: {0}")]
    Unavailable(String),
    #[error("the budget ledger `{path}` is damaged at byte {offset}: {reason}")]
    Corrupt {
        path: String,
        offset: u64,
        reason: String,
    },
    #[error("the budget ledger `{0}` is in use by another process")]
    Locked(String),
}

/// Where spends are kept. Implementations are durable before they return.
pub trait Ledger: Send + Sync {
    /// Charges `r.cost` to all of `r.accounts` atomically, unless the query
    /// already has an entry in this window or an account cannot afford it.
    fn reserve(&self, r: &Reservation) -> Result<Reserved, LedgerError>;
    /// Stores the released answer of a granted query, for repeats.
    fn release(&self, query: &str, window_start: i64, answer: &str) -> Result<(), LedgerError>;
    /// What each account has left in the window.
    fn remaining(&self, accounts: &[Account], window_start: i64)
    -> Result<Vec<Units>, LedgerError>;
}

/// One journal line.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
enum Entry {
    Reserve {
        query: String,
        window_start: i64,
        window_end: i64,
        cost: Units,
        accounts: Vec<String>,
    },
    Release {
        query: String,
        window_start: i64,
        answer: String,
    },
}

#[derive(Default)]
struct State {
    spent: HashMap<(String, i64), Units>,
    /// Queries reserved per window, with their answer once released.
    queries: HashMap<(String, i64), Option<String>>,
    /// Window ends, to drop closed windows when the journal is reopened.
    window_end: HashMap<i64, i64>,
}

impl State {
    fn apply(&mut self, e: Entry) {
        match e {
            Entry::Reserve {
                query,
                window_start,
                window_end,
                cost,
                accounts,
            } => {
                for a in accounts {
                    let s = self.spent.entry((a, window_start)).or_default();
                    *s = s.saturating_add(cost);
                }
                self.queries.insert((query, window_start), None);
                self.window_end.insert(window_start, window_end);
            }
            Entry::Release {
                query,
                window_start,
                answer,
            } => {
                self.queries.insert((query, window_start), Some(answer));
            }
        }
    }

    fn remaining(&self, accounts: &[Account], window_start: i64) -> Vec<Units> {
        accounts
            .iter()
            .map(|a| {
                let spent = self
                    .spent
                    .get(&(a.key.clone(), window_start))
                    .copied()
                    .unwrap_or_default();
                a.limit.saturating_sub(spent)
            })
            .collect()
    }
}

struct Journal {
    file: File,
    /// Bytes of whole entries; a failed append is cut back to this.
    len: u64,
    /// Set when the file may hold a partial entry that could not be cut:
    /// every later call fails rather than trust it.
    poisoned: bool,
    state: State,
}

/// The embedded ledger: `privacy-ledger.jsonl` in the state directory.
pub struct FileLedger {
    path: PathBuf,
    inner: Mutex<Journal>,
}

/// The journal's file name in the state directory.
pub const JOURNAL_FILE: &str = "privacy-ledger.jsonl";

impl FileLedger {
    /// Opens (or creates) the journal in `dir` and replays it. Entries of
    /// windows that ended before `now_unix` are compacted away. A torn last
    /// line (a crash mid-append) is dropped: its reservation never returned,
    /// so no answer was released for it.
    pub fn open(dir: &Path, now_unix: i64) -> Result<FileLedger, LedgerError> {
        let path = dir.join(JOURNAL_FILE);
        let shown = path.display().to_string();
        let io = |what: &str, e: std::io::Error| {
            LedgerError::Unavailable(format!("cannot {what} `{shown}`: {e}"))
        };
        std::fs::create_dir_all(dir).map_err(|e| io("create the directory of", e))?;
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&path)
            .map_err(|e| io("open", e))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => return Err(LedgerError::Locked(shown)),
            Err(std::fs::TryLockError::Error(e)) => return Err(io("lock", e)),
        }
        let (entries, good, size) = read_entries(&mut file, &shown)?;
        let total = entries.len();
        let entries = live_entries(entries, now_unix);
        if entries.len() < total || good < size {
            let tmp = write_compacted(dir, &entries).map_err(|e| io("compact", e))?;
            file = install_compacted(dir, &tmp, &path).map_err(|e| io("compact", e))?;
        }
        let len = file.metadata().map_err(|e| io("stat", e))?.len();
        let mut state = State::default();
        for e in entries {
            state.apply(e);
        }
        Ok(FileLedger {
            path,
            inner: Mutex::new(Journal {
                file,
                len,
                poisoned: false,
                state,
            }),
        })
    }

    /// Drops the windows that ended by `now_unix` from the journal and from
    /// memory, so a long-running sidecar keeps only open windows. If the
    /// compacted copy cannot be written, nothing changes (the next new
    /// window tries again); if it cannot be put in place, the journal is
    /// poisoned: appends must not go to a file that is no longer the
    /// journal.
    fn compact(&self, j: &mut Journal, now_unix: i64) -> Result<(), LedgerError> {
        let shown = self.path.display().to_string();
        let (entries, _, _) = read_entries(&mut j.file, &shown)?;
        let total = entries.len();
        let entries = live_entries(entries, now_unix);
        if entries.len() == total {
            return Ok(());
        }
        let Some(dir) = self.path.parent() else {
            return Ok(());
        };
        let Ok(tmp) = write_compacted(dir, &entries) else {
            return Ok(());
        };
        let file = install_compacted(dir, &tmp, &self.path)
            .and_then(|f| f.metadata().map(|m| (f, m.len())));
        let (file, len) = match file {
            Ok(f) => f,
            Err(e) => {
                j.poisoned = true;
                return Err(LedgerError::Unavailable(format!(
                    "cannot put the compacted `{shown}` in place: {e}"
                )));
            }
        };
        let mut state = State::default();
        for e in entries {
            state.apply(e);
        }
        *j = Journal {
            file,
            len,
            poisoned: false,
            state,
        };
        Ok(())
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, Journal>, LedgerError> {
        let j = self
            .inner
            .lock()
            .map_err(|_| LedgerError::Unavailable("the ledger lock is poisoned".into()))?;
        if j.poisoned {
            return Err(LedgerError::Unavailable(format!(
                "an earlier write to `{}` failed; restart the sidecar to replay it",
                self.path.display()
            )));
        }
        Ok(j)
    }
}

/// The journal's whole entries from its start, the bytes they take, and
/// the file's size (more when the last line is torn).
fn read_entries(file: &mut File, shown: &str) -> Result<(Vec<Entry>, usize, usize), LedgerError> {
    let mut bytes = Vec::new();
    file.seek(SeekFrom::Start(0))
        .and_then(|_| file.read_to_end(&mut bytes))
        .map_err(|e| LedgerError::Unavailable(format!("cannot read `{shown}`: {e}")))?;
    let mut entries = Vec::new();
    let mut good = 0usize;
    let mut rest = bytes.as_slice();
    while let Some(nl) = rest.iter().position(|&b| b == b'\n') {
        let (line, tail) = rest.split_at(nl);
        let e: Entry = serde_json::from_slice(line).map_err(|e| LedgerError::Corrupt {
            path: shown.to_string(),
            offset: good as u64,
            reason: e.to_string(),
        })?;
        entries.push(e);
        good += nl + 1;
        rest = tail.get(1..).unwrap_or_default();
    }
    Ok((entries, good, bytes.len()))
}

/// The entries of windows still open at `now_unix`.
fn live_entries(entries: Vec<Entry>, now_unix: i64) -> Vec<Entry> {
    let mut window_end = HashMap::new();
    for e in &entries {
        if let Entry::Reserve {
            window_start,
            window_end: end,
            ..
        } = e
        {
            window_end.insert(*window_start, *end);
        }
    }
    entries
        .into_iter()
        .filter(|e| match e {
            Entry::Reserve { window_start, .. } | Entry::Release { window_start, .. } => window_end
                .get(window_start)
                .is_some_and(|end| *end > now_unix),
        })
        .collect()
}

/// Writes `entries` to a fresh journal beside the live one and fsyncs it;
/// returns its path. The live journal is untouched.
fn write_compacted(dir: &Path, entries: &[Entry]) -> std::io::Result<PathBuf> {
    let tmp = dir.join(format!("{JOURNAL_FILE}.compact"));
    let mut out = Vec::new();
    for e in entries {
        serde_json::to_writer(&mut out, e).map_err(std::io::Error::other)?;
        out.push(b'\n');
    }
    let mut f = File::create(&tmp)?;
    f.write_all(&out)?;
    f.sync_all()?;
    Ok(tmp)
}

/// Renames the compacted journal over `path`, fsyncs the directory, and
/// returns the new file, open for appends and locked.
fn install_compacted(dir: &Path, tmp: &Path, path: &Path) -> std::io::Result<File> {
    std::fs::rename(tmp, path)?;
    File::open(dir)?.sync_all()?;
    let f = OpenOptions::new().read(true).append(true).open(path)?;
    f.try_lock().map_err(std::io::Error::other)?;
    Ok(f)
}

impl Journal {
    /// Appends one entry and fsyncs it. On failure the file is cut back to
    /// its last whole entry, or the journal is poisoned.
    fn append(&mut self, e: &Entry) -> Result<(), LedgerError> {
        let mut line =
            serde_json::to_vec(e).map_err(|e| LedgerError::Unavailable(e.to_string()))?;
        line.push(b'\n');
        let written = self
            .file
            .write_all(&line)
            .and_then(|()| self.file.sync_data());
        match written {
            Ok(()) => {
                self.len += line.len() as u64;
                Ok(())
            }
            Err(err) => {
                if self
                    .file
                    .set_len(self.len)
                    .and_then(|()| self.file.sync_data())
                    .is_err()
                {
                    self.poisoned = true;
                }
                Err(LedgerError::Unavailable(format!(
                    "cannot append to the journal: {err}"
                )))
            }
        }
    }
}

impl Ledger for FileLedger {
    fn reserve(&self, r: &Reservation) -> Result<Reserved, LedgerError> {
        let mut j = self.lock()?;
        // The first spend of a new window: windows that ended before it
        // began are closed, so their entries leave memory and the journal.
        if !j.state.window_end.contains_key(&r.window_start)
            && j.state
                .window_end
                .values()
                .any(|&end| end <= r.window_start)
        {
            self.compact(&mut j, r.window_start)?;
        }
        let remaining = j.state.remaining(&r.accounts, r.window_start);
        if let Some(prior) = j.state.queries.get(&(r.query.clone(), r.window_start)) {
            return Ok(match prior {
                Some(answer) => Reserved::Cached {
                    answer: answer.clone(),
                    remaining,
                },
                None => Reserved::Pending { remaining },
            });
        }
        for (i, a) in r.accounts.iter().enumerate() {
            let spent = j
                .state
                .spent
                .get(&(a.key.clone(), r.window_start))
                .copied()
                .unwrap_or_default();
            if !r.cost.fits(spent, a.limit) {
                return Ok(Reserved::Exhausted {
                    account: i,
                    remaining,
                });
            }
        }
        let e = Entry::Reserve {
            query: r.query.clone(),
            window_start: r.window_start,
            window_end: r.window_end,
            cost: r.cost,
            accounts: r.accounts.iter().map(|a| a.key.clone()).collect(),
        };
        let appended = j.append(&e);
        // Charged in memory even when the append failed: the bytes may be on
        // disk, and over-counting is the safe side.
        j.state.apply(e);
        appended?;
        Ok(Reserved::Granted {
            remaining: j.state.remaining(&r.accounts, r.window_start),
        })
    }

    fn release(&self, query: &str, window_start: i64, answer: &str) -> Result<(), LedgerError> {
        let mut j = self.lock()?;
        let e = Entry::Release {
            query: query.to_string(),
            window_start,
            answer: answer.to_string(),
        };
        j.append(&e)?;
        j.state.apply(e);
        Ok(())
    }

    fn remaining(
        &self,
        accounts: &[Account],
        window_start: i64,
    ) -> Result<Vec<Units>, LedgerError> {
        Ok(self.lock()?.state.remaining(accounts, window_start))
    }
}

/// The fixed window holding `now_unix`: `[start, start + seconds)`, aligned
/// to the Unix epoch so that every replica agrees on it.
pub fn window_of(now_unix: i64, seconds: u64) -> (i64, i64) {
    let s = i64::try_from(seconds.max(1)).unwrap_or(i64::MAX);
    let start = now_unix - now_unix.rem_euclid(s);
    (start, start.saturating_add(s))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acct(key: &str, eps: f64) -> Account {
        Account {
            key: key.into(),
            limit: Units::budget(eps, 1e-6).unwrap(),
        }
    }

    fn res(q: &str, eps: f64, accounts: Vec<Account>) -> Reservation {
        Reservation {
            query: q.into(),
            window_start: 0,
            window_end: 4_000_000_000,
            cost: Units::cost(eps, 0.0).unwrap(),
            accounts,
        }
    }

    #[test]
    fn costs_round_up_and_budgets_down() {
        let c = Units::cost(0.1, 1e-13).unwrap();
        assert!(c.epsilon >= 100_000_000_000);
        assert_eq!(c.delta, 1);
        let b = Units::budget(0.1, 1e-13).unwrap();
        assert!(b.epsilon <= 100_000_000_000);
        assert_eq!(b.delta, 0);
        // Ten costs of 0.1 never fit a budget of 0.9999999.
        assert!(Units::cost(f64::NAN, 0.0).is_none());
        assert!(Units::cost(-1.0, 0.0).is_none());
        assert!(Units::cost(f64::INFINITY, 0.0).is_none());
        assert!(Units::cost(1e10, 0.0).is_none());
    }

    #[test]
    fn spends_until_exhausted_then_refuses_all_or_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let l = FileLedger::open(dir.path(), 0).unwrap();
        let both = || vec![acct("c", 1.0), acct("p", 1.5)];
        for i in 0..4 {
            let r = l.reserve(&res(&format!("q{i}"), 0.25, both())).unwrap();
            assert!(matches!(r, Reserved::Granted { .. }), "{r:?}");
        }
        match l.reserve(&res("q5", 0.25, both())).unwrap() {
            Reserved::Exhausted { account, remaining } => {
                assert_eq!(account, 0);
                assert_eq!(remaining[0].epsilon, 0);
                assert_eq!(
                    remaining[1].epsilon,
                    Units::budget(0.5, 0.0).unwrap().epsilon
                );
            }
            other => panic!("{other:?}"),
        }
        // The refused spend charged neither account.
        let left = l.remaining(&[acct("p", 1.5)], 0).unwrap();
        assert_eq!(left[0].epsilon, 500_000_000_000);
    }

    #[test]
    fn repeats_are_pending_then_cached_and_free() {
        let dir = tempfile::tempdir().unwrap();
        let l = FileLedger::open(dir.path(), 0).unwrap();
        let r = res("q", 0.5, vec![acct("c", 1.0)]);
        assert!(matches!(l.reserve(&r).unwrap(), Reserved::Granted { .. }));
        assert!(matches!(l.reserve(&r).unwrap(), Reserved::Pending { .. }));
        l.release("q", 0, "{\"v\":1}").unwrap();
        match l.reserve(&r).unwrap() {
            Reserved::Cached { answer, remaining } => {
                assert_eq!(answer, "{\"v\":1}");
                assert_eq!(remaining[0].epsilon, 500_000_000_000);
            }
            other => panic!("{other:?}"),
        }
        // Another window is a fresh query.
        let mut next = r.clone();
        next.window_start = 4_000_000_000;
        assert!(matches!(
            l.reserve(&next).unwrap(),
            Reserved::Granted { .. }
        ));
    }

    #[test]
    fn replay_restores_spends_answers_and_drops_a_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        {
            let l = FileLedger::open(dir.path(), 0).unwrap();
            l.reserve(&res("a", 0.5, vec![acct("c", 1.0)])).unwrap();
            l.release("a", 0, "A").unwrap();
            l.reserve(&res("b", 0.25, vec![acct("c", 1.0)])).unwrap();
        }
        let path = dir.path().join(JOURNAL_FILE);
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"{\"op\":\"reserve\",\"query\":\"c").unwrap();
        drop(f);
        let l = FileLedger::open(dir.path(), 0).unwrap();
        let left = l.remaining(&[acct("c", 1.0)], 0).unwrap();
        assert_eq!(left[0].epsilon, 250_000_000_000);
        assert!(matches!(
            l.reserve(&res("a", 0.5, vec![acct("c", 1.0)])).unwrap(),
            Reserved::Cached { .. }
        ));
        assert!(matches!(
            l.reserve(&res("b", 0.25, vec![acct("c", 1.0)])).unwrap(),
            Reserved::Pending { .. }
        ));
        // The torn line is gone, and the file appends cleanly after it.
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.ends_with('\n') && text.lines().count() == 3, "{text}");
    }

    #[test]
    fn a_damaged_middle_line_fails_closed() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(JOURNAL_FILE), "garbage\n{}\n").unwrap();
        assert!(matches!(
            FileLedger::open(dir.path(), 0),
            Err(LedgerError::Corrupt { offset: 0, .. })
        ));
    }

    #[test]
    fn closed_windows_are_compacted_away() {
        let dir = tempfile::tempdir().unwrap();
        {
            let l = FileLedger::open(dir.path(), 0).unwrap();
            let mut r = res("old", 0.5, vec![acct("c", 1.0)]);
            r.window_start = -1000;
            r.window_end = 100;
            l.reserve(&r).unwrap();
            l.reserve(&res("new", 0.25, vec![acct("c", 1.0)])).unwrap();
        }
        let l = FileLedger::open(dir.path(), 200).unwrap();
        let text = std::fs::read_to_string(dir.path().join(JOURNAL_FILE)).unwrap();
        assert!(!text.contains("old") && text.contains("new"), "{text}");
        let left = l.remaining(&[acct("c", 1.0)], 0).unwrap();
        assert_eq!(left[0].epsilon, 750_000_000_000);
    }

    /// A sidecar that runs for weeks sheds closed windows as it goes, not
    /// only at the next start: memory and the journal hold open windows.
    #[test]
    fn the_first_spend_of_a_new_window_compacts_the_closed_ones() {
        let dir = tempfile::tempdir().unwrap();
        let journal = || std::fs::read_to_string(dir.path().join(JOURNAL_FILE)).unwrap();
        let in_window = |q: &str, cost, start| {
            let mut r = res(q, cost, vec![acct("c", 1.0)]);
            (r.window_start, r.window_end) = (start, start + 100);
            r
        };
        let l = FileLedger::open(dir.path(), 0).unwrap();
        l.reserve(&in_window("day-one", 0.5, 0)).unwrap();
        l.release("day-one", 0, "answer-one").unwrap();
        assert!(journal().contains("answer-one"));
        // Day two: the first spend drops day one.
        let granted = l.reserve(&in_window("day-two", 0.25, 100)).unwrap();
        assert!(matches!(granted, Reserved::Granted { .. }), "{granted:?}");
        let text = journal();
        assert!(
            !text.contains("day-one") && text.contains("day-two"),
            "{text}"
        );
        assert_eq!(
            l.remaining(&[acct("c", 1.0)], 0).unwrap()[0].epsilon,
            1_000_000_000_000
        );
        assert!(
            !l.inner
                .lock()
                .unwrap()
                .state
                .queries
                .keys()
                .any(|(q, _)| q == "day-one")
        );
        // Later appends reach the compacted file: a reopened ledger sees them.
        l.reserve(&in_window("day-two-again", 0.25, 100)).unwrap();
        drop(l);
        let l = FileLedger::open(dir.path(), 150).unwrap();
        assert_eq!(
            l.remaining(&[acct("c", 1.0)], 100).unwrap()[0].epsilon,
            500_000_000_000
        );
    }

    #[test]
    fn a_second_process_cannot_open_the_same_journal() {
        let dir = tempfile::tempdir().unwrap();
        let _l = FileLedger::open(dir.path(), 0).unwrap();
        assert!(matches!(
            FileLedger::open(dir.path(), 0),
            Err(LedgerError::Locked(_))
        ));
    }

    #[test]
    fn concurrent_spenders_never_exceed_the_budget() {
        let dir = tempfile::tempdir().unwrap();
        let l = std::sync::Arc::new(FileLedger::open(dir.path(), 0).unwrap());
        let granted = std::sync::atomic::AtomicU64::new(0);
        std::thread::scope(|s| {
            for t in 0..8 {
                let (l, granted) = (&l, &granted);
                s.spawn(move || {
                    for i in 0..20 {
                        let r = res(&format!("{t}-{i}"), 0.1, vec![acct("c", 3.0)]);
                        if let Reserved::Granted { .. } = l.reserve(&r).unwrap() {
                            granted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        }
                    }
                });
            }
        });
        // Exactly as many spends as fit were granted, no more.
        let g = granted.into_inner();
        let cost = Units::cost(0.1, 0.0).unwrap().epsilon;
        assert_eq!(g, Units::budget(3.0, 0.0).unwrap().epsilon / cost);
        let left = l.remaining(&[acct("c", 3.0)], 0).unwrap()[0].epsilon;
        assert!(left < cost);
    }

    #[test]
    fn windows_align_to_the_epoch() {
        assert_eq!(window_of(86_400 * 3 + 5, 86_400), (259_200, 345_600));
        assert_eq!(window_of(-1, 10), (-10, 0));
    }
}
