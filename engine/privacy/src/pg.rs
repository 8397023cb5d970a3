//! The PostgreSQL ledger, shared by every sidecar replica of one product.
//!
//! A reservation is one `SERIALIZABLE` transaction: it claims the query's
//! row, then adds the cost to each account's row with an upsert. The table's
//! `CHECK (spent <= limit)` constraint makes overspend impossible whatever
//! the isolation level: an upsert that would overspend fails, and the whole
//! transaction rolls back. Serialization failures are retried.

use crate::ledger::{Account, Ledger, LedgerError, Reservation, Reserved, Units};
use postgres::error::SqlState;
use postgres::{Client, IsolationLevel, NoTls};
use std::sync::Mutex;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meshgov_privacy_budget (
    account       text   NOT NULL,
    window_start  bigint NOT NULL,
    window_end    bigint NOT NULL,
    limit_epsilon bigint NOT NULL,
    limit_delta   bigint NOT NULL,
    spent_epsilon bigint NOT NULL,
    spent_delta   bigint NOT NULL,
    PRIMARY KEY (account, window_start),
    CONSTRAINT meshgov_privacy_budget_not_overspent CHECK (
        spent_epsilon >= 0 AND spent_delta >= 0
        AND spent_epsilon <= limit_epsilon AND spent_delta <= limit_delta)
);
CREATE TABLE IF NOT EXISTS meshgov_privacy_query (
    query        text        NOT NULL,
    window_start bigint      NOT NULL,
    window_end   bigint      NOT NULL,
    epsilon      bigint      NOT NULL,
    delta        bigint      NOT NULL,
    reserved_at  timestamptz NOT NULL DEFAULT now(),
    answer       text,
    PRIMARY KEY (query, window_start)
);";

/// Attempts per reservation when PostgreSQL reports a serialization
/// failure or deadlock (another replica touched the same rows).
const ATTEMPTS: usize = 50;

/// A ledger in PostgreSQL. One connection per ledger, reconnected on loss.
pub struct PgLedger {
    url: String,
    client: Mutex<Option<Client>>,
}

fn unavailable(e: impl std::fmt::Display) -> LedgerError {
    LedgerError::Unavailable(format!("PostgreSQL: {e}"))
}

fn to_i64(u: u64) -> Result<i64, LedgerError> {
    i64::try_from(u).map_err(|_| LedgerError::Unavailable("amount out of range".into()))
}

fn to_units(e: i64, d: i64) -> Units {
    Units {
        epsilon: u64::try_from(e).unwrap_or(0),
        delta: u64::try_from(d).unwrap_or(0),
    }
}

impl PgLedger {
    /// Connects to `url` (`postgresql://user@host:port/db`) and creates the
    /// ledger's tables if they are missing.
    pub fn connect(url: &str) -> Result<PgLedger, LedgerError> {
        let l = PgLedger {
            url: url.to_string(),
            client: Mutex::new(None),
        };
        l.with_client(|c| {
            let mut tx = c.transaction()?;
            // Replicas starting together would race on CREATE TABLE.
            tx.batch_execute("SELECT pg_advisory_xact_lock(7248531902)")?;
            tx.batch_execute(SCHEMA)?;
            tx.commit()
        })
        .map_err(unavailable)?;
        Ok(l)
    }

    /// Runs `f` on the connection, connecting first if needed. A broken
    /// connection is dropped so that the next call reconnects.
    fn with_client<T>(
        &self,
        f: impl FnOnce(&mut Client) -> Result<T, postgres::Error>,
    ) -> Result<T, postgres::Error> {
        let mut slot = match self.client.lock() {
            Ok(s) => s,
            Err(p) => p.into_inner(),
        };
        let mut c = match slot.take() {
            Some(c) if !c.is_closed() => c,
            _ => Client::connect(&self.url, NoTls)?,
        };
        let r = f(&mut c);
        if !c.is_closed() {
            *slot = Some(c);
        }
        r
    }

    fn remaining_in(
        c: &mut impl postgres::GenericClient,
        accounts: &[Account],
        window_start: i64,
    ) -> Result<Vec<Units>, postgres::Error> {
        let mut out = Vec::with_capacity(accounts.len());
        for a in accounts {
            let row = c.query_opt(
                "SELECT spent_epsilon, spent_delta FROM meshgov_privacy_budget
                 WHERE account = $1 AND window_start = $2",
                &[&a.key, &window_start],
            )?;
            let spent = row
                .map(|r| to_units(r.get(0), r.get(1)))
                .unwrap_or_default();
            out.push(Units {
                epsilon: a.limit.epsilon.saturating_sub(spent.epsilon),
                delta: a.limit.delta.saturating_sub(spent.delta),
            });
        }
        Ok(out)
    }

    fn attempt(c: &mut Client, r: &Reservation) -> Result<Reserved, postgres::Error> {
        let (eps, delta) = (
            i64::try_from(r.cost.epsilon).unwrap_or(i64::MAX),
            i64::try_from(r.cost.delta).unwrap_or(i64::MAX),
        );
        let mut tx = c
            .build_transaction()
            .isolation_level(IsolationLevel::Serializable)
            .start()?;
        let claimed = tx.execute(
            "INSERT INTO meshgov_privacy_query (query, window_start, window_end, epsilon, delta)
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
            &[&r.query, &r.window_start, &r.window_end, &eps, &delta],
        )?;
        if claimed == 0 {
            let answer: Option<String> = tx
                .query_one(
                    "SELECT answer FROM meshgov_privacy_query WHERE query = $1 AND window_start = $2",
                    &[&r.query, &r.window_start],
                )?
                .get(0);
            let remaining = Self::remaining_in(&mut tx, &r.accounts, r.window_start)?;
            tx.commit()?;
            return Ok(match answer {
                Some(answer) => Reserved::Cached { answer, remaining },
                None => Reserved::Pending { remaining },
            });
        }
        for (i, a) in r.accounts.iter().enumerate() {
            let (le, ld) = (
                i64::try_from(a.limit.epsilon).unwrap_or(i64::MAX),
                i64::try_from(a.limit.delta).unwrap_or(i64::MAX),
            );
            let charged = tx.execute(
                "INSERT INTO meshgov_privacy_budget AS b
                   (account, window_start, window_end, limit_epsilon, limit_delta, spent_epsilon, spent_delta)
                 VALUES ($1, $2, $3, $4, $5, $6, $7)
                 ON CONFLICT (account, window_start) DO UPDATE SET
                   limit_epsilon = EXCLUDED.limit_epsilon,
                   limit_delta = EXCLUDED.limit_delta,
                   spent_epsilon = b.spent_epsilon + EXCLUDED.spent_epsilon,
                   spent_delta = b.spent_delta + EXCLUDED.spent_delta",
                &[&a.key, &r.window_start, &r.window_end, &le, &ld, &eps, &delta],
            );
            match charged {
                Ok(_) => {}
                Err(e) if e.code() == Some(&SqlState::CHECK_VIOLATION) => {
                    tx.rollback()?;
                    let remaining = Self::remaining_in(c, &r.accounts, r.window_start)?;
                    return Ok(Reserved::Exhausted {
                        account: i,
                        remaining,
                    });
                }
                Err(e) => return Err(e),
            }
        }
        let remaining = Self::remaining_in(&mut tx, &r.accounts, r.window_start)?;
        tx.commit()?;
        Ok(Reserved::Granted { remaining })
    }
}

impl Drop for PgLedger {
    /// The synchronous client closes its connection with a blocking call,
    /// which must not happen on an async runtime thread: close it on a
    /// thread of its own.
    fn drop(&mut self) {
        let slot = match self.client.get_mut() {
            Ok(s) => s.take(),
            Err(p) => p.into_inner().take(),
        };
        if let Some(c) = slot {
            let _ = std::thread::spawn(move || drop(c)).join();
        }
    }
}

fn retryable(e: &postgres::Error) -> bool {
    matches!(
        e.code(),
        Some(c) if *c == SqlState::T_R_SERIALIZATION_FAILURE || *c == SqlState::T_R_DEADLOCK_DETECTED
    )
}

impl Ledger for PgLedger {
    fn reserve(&self, r: &Reservation) -> Result<Reserved, LedgerError> {
        to_i64(r.cost.epsilon)?;
        to_i64(r.cost.delta)?;
        for _ in 0..ATTEMPTS {
            match self.with_client(|c| Self::attempt(c, r)) {
                Ok(x) => return Ok(x),
                Err(e) if retryable(&e) => {}
                Err(e) => return Err(unavailable(e)),
            }
        }
        Err(LedgerError::Unavailable(
            "PostgreSQL: too much contention on the budget; retry".into(),
        ))
    }

    fn release(&self, query: &str, window_start: i64, answer: &str) -> Result<(), LedgerError> {
        self.with_client(|c| {
            c.execute(
                "UPDATE meshgov_privacy_query SET answer = $3 WHERE query = $1 AND window_start = $2",
                &[&query, &window_start, &answer],
            )
        })
        .map_err(unavailable)?;
        Ok(())
    }

    fn remaining(
        &self,
        accounts: &[Account],
        window_start: i64,
    ) -> Result<Vec<Units>, LedgerError> {
        self.with_client(|c| Self::remaining_in(c, accounts, window_start))
            .map_err(unavailable)
    }
}
