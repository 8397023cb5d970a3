//! The seeded generator of fault tests: random kill moments and request
//! sizes that a printed seed replays.

/// The variable that replays a run: `MESHGOV_FAULT_SEED=N`.
pub const SEED_VAR: &str = "MESHGOV_FAULT_SEED";

/// xorshift64: small and deterministic. The seed must not be 0 (the
/// generator would stay at 0); [`seed`] never returns 0.
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// In `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64().checked_rem(n).unwrap_or(0)
    }

    /// In `lo..hi` (`lo` when the range is empty).
    pub fn between(&mut self, lo: u64, hi: u64) -> u64 {
        lo.saturating_add(self.below(hi.saturating_sub(lo)))
    }
}

/// The run's seed: [`SEED_VAR`] when set to a number, else the clock;
/// odd, so never 0. Printed with `test`'s name and the line that replays it.
pub fn seed(test: &str) -> u64 {
    let seed = std::env::var(SEED_VAR)
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64)
        })
        | 1;
    println!("{test}: seed {seed} (rerun with {SEED_VAR}={seed})");
    seed
}

/// A generator from the run's [`seed`].
pub fn seeded(test: &str) -> Rng {
    Rng(seed(test))
}
