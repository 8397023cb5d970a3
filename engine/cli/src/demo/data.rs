//! The example mesh's sample data: seeded, so the same seed and row count
//! give the same files byte for byte.
//!
//! - `user-profiles/profiles/profiles.ndjson`: one account per row;
//! - `play-events/plays/YYYY-MM-DD.parquet`: plays of those accounts over
//!   the last week, one Parquet file per UTC day (the sidecar opens only the
//!   days a read's window covers, and serves them through its columnar
//!   plane);
//! - `artist-payments/payments/payments.ndjson`: royalty payments.

use meshgov_sidecar::clock::rfc3339;
use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::Path;

/// SplitMix64: small, fast and plenty for sample data (not for secrets).
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    pub fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        let i = usize::try_from(self.below(items.len() as u64)).unwrap_or(0);
        items.get(i).copied().unwrap_or("")
    }
}

const FIRST: &[&str] = &[
    "Ana", "Ben", "Chloé", "Dmitri", "Elin", "Farah", "Gustav", "Hana", "Ines", "Jonas", "Kaisa",
    "Liam", "Maja", "Noor", "Oskar", "Priya", "Rasmus", "Sofia", "Tomás", "Ulla",
];
const LAST: &[&str] = &[
    "Andersen", "Berg", "Costa", "Dahl", "Eriksson", "Fischer", "García", "Holm", "Ivanova",
    "Jensen", "Kowalski", "Lund", "Meyer", "Nieminen", "Olsen", "Petrov", "Quist", "Rossi",
];
const COUNTRIES: &[&str] = &["DE", "DK", "FI", "GB", "NO", "SE", "US"];
const DEVICES: &[&str] = &[
    "iPhone 15",
    "iPhone 13",
    "Pixel 8",
    "Galaxy S24",
    "iPad Air",
    "Web Chrome",
    "Web Firefox",
    "Sonos One",
];

fn day_of(unix: i64) -> String {
    rfc3339(unix).get(..10).unwrap_or("1970-01-01").to_string()
}

/// One day of plays, column by column.
#[derive(Default)]
struct Plays {
    event_id: Vec<String>,
    user_id: Vec<String>,
    song_id: Vec<String>,
    artist_id: Vec<String>,
    played_at: Vec<String>,
    duration_ms: Vec<i64>,
    country: Vec<String>,
    device: Vec<String>,
}

impl Plays {
    /// Writes the day as one Parquet file, typed as the descriptor
    /// declares the fields.
    fn write(self, path: &Path) -> std::io::Result<()> {
        use meshgov_columnar::datafusion::arrow::array::{
            ArrayRef, Int64Array, RecordBatch, StringArray,
        };
        use meshgov_columnar::datafusion::parquet::arrow::ArrowWriter;
        use std::sync::Arc;
        let text = |v: Vec<String>| Arc::new(StringArray::from(v)) as ArrayRef;
        let batch = RecordBatch::try_from_iter([
            ("event_id", text(self.event_id)),
            ("user_id", text(self.user_id)),
            ("song_id", text(self.song_id)),
            ("artist_id", text(self.artist_id)),
            ("played_at", text(self.played_at)),
            (
                "duration_ms",
                Arc::new(Int64Array::from(self.duration_ms)) as ArrayRef,
            ),
            ("country", text(self.country)),
            ("device", text(self.device)),
        ])
        .map_err(std::io::Error::other)?;
        let file = std::fs::File::create(path)?;
        let mut w =
            ArrowWriter::try_new(file, batch.schema(), None).map_err(std::io::Error::other)?;
        w.write(&batch).map_err(std::io::Error::other)?;
        w.close().map_err(std::io::Error::other)?;
        Ok(())
    }
}

/// How much data was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Generated {
    pub users: usize,
    pub plays: usize,
    pub payments: usize,
}

/// Writes `rows` accounts, `rows` plays and `rows / 10` payments (at least
/// one of each) under `dir`, as of `now_unix`.
pub fn generate(dir: &Path, rows: usize, seed: u64, now_unix: i64) -> std::io::Result<Generated> {
    let rows = rows.max(1);
    let mut rng = Rng::new(seed);
    let open = |rel: &str| -> std::io::Result<std::io::BufWriter<std::fs::File>> {
        let p = dir.join(rel);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent)?;
        }
        Ok(std::io::BufWriter::new(std::fs::File::create(p)?))
    };
    let line = |w: &mut dyn std::io::Write, v: serde_json::Value| writeln!(w, "{v}");

    let mut users = Vec::with_capacity(rows);
    let mut f = open("user-profiles/profiles/profiles.ndjson")?;
    for i in 0..rows {
        let (first, last) = (rng.pick(FIRST), rng.pick(LAST));
        let country = rng.pick(COUNTRIES);
        let user_id = format!("u-{:06}", i + 1);
        let born = 1950 + rng.below(55);
        let signed_up = now_unix - i64::try_from(rng.below(3 * 365 * 86_400)).unwrap_or(0);
        line(
            &mut f,
            serde_json::json!({
                "user_id": user_id,
                "email": format!("{}.{}{}@example.com", first.to_lowercase(), last.to_lowercase(), i + 1),
                "name": format!("{first} {last}"),
                "birth_date": format!("{born}-{:02}-{:02}", 1 + rng.below(12), 1 + rng.below(28)),
                "country": country,
                "postcode": format!("{:05}", rng.below(100_000)),
                "signed_up_at": rfc3339(signed_up),
            }),
        )?;
        users.push((user_id, country));
    }
    f.flush()?;

    // Plays over the last seven days, written per day in time order.
    let week = 7 * 86_400;
    let mut plays: Vec<i64> = (0..rows)
        .map(|_| now_unix - week + i64::try_from(rng.below(week as u64)).unwrap_or(0))
        .collect();
    plays.sort_unstable();
    let mut days: BTreeMap<String, Plays> = BTreeMap::new();
    for (i, at) in plays.iter().enumerate() {
        let u = usize::try_from(rng.below(users.len() as u64)).unwrap_or(0);
        let (user_id, country) = users.get(u).cloned().unwrap_or_default();
        let song = rng.below(500);
        let day = days.entry(day_of(*at)).or_default();
        day.event_id.push(format!("e-{:08}", i + 1));
        day.user_id.push(user_id);
        day.song_id.push(format!("s-{song:04}"));
        day.artist_id
            .push(format!("urn:mesh:artist:a{}", song % 60));
        day.played_at.push(rfc3339(*at));
        day.duration_ms
            .push(i64::try_from(5_000 + rng.below(295_000)).unwrap_or(0));
        day.country.push(country.to_string());
        day.device.push(rng.pick(DEVICES).to_string());
    }
    for (day, plays) in days {
        let path = dir.join(format!("play-events/plays/{day}.parquet"));
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        plays.write(&path)?;
    }

    let payments = (rows / 10).max(1);
    let mut f = open("artist-payments/payments/payments.ndjson")?;
    for i in 0..payments {
        let paid = now_unix - i64::try_from(rng.below(90 * 86_400)).unwrap_or(0);
        line(
            &mut f,
            serde_json::json!({
                "payment_id": format!("p-{:06}", i + 1),
                "artist_id": format!("urn:mesh:artist:a{}", rng.below(60)),
                "period": rfc3339(paid).get(..7).unwrap_or(""),
                "amount_cents": 100 + rng.below(500_000),
                "currency": "EUR",
                "iban": format!("DE{:02}{:018}", rng.below(100), rng.below(1_000_000_000_000_000_000)),
                "paid_at": rfc3339(paid),
            }),
        )?;
    }
    f.flush()?;
    Ok(Generated {
        users: rows,
        plays: rows,
        payments,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn read_all(dir: &Path) -> BTreeMap<String, Vec<u8>> {
        let mut out = BTreeMap::new();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    stack.push(p);
                } else {
                    let rel = p.strip_prefix(dir).unwrap().display().to_string();
                    out.insert(rel, std::fs::read(&p).unwrap());
                }
            }
        }
        out
    }

    #[test]
    fn the_same_seed_gives_the_same_files() {
        let (a, b, c) = (
            tempfile::tempdir().unwrap(),
            tempfile::tempdir().unwrap(),
            tempfile::tempdir().unwrap(),
        );
        let now = 1_795_000_000;
        let g = generate(a.path(), 200, 7, now).unwrap();
        generate(b.path(), 200, 7, now).unwrap();
        generate(c.path(), 200, 8, now).unwrap();
        assert_eq!(
            g,
            Generated {
                users: 200,
                plays: 200,
                payments: 20
            }
        );
        assert_eq!(read_all(a.path()), read_all(b.path()));
        assert_ne!(read_all(a.path()), read_all(c.path()));
        let files = read_all(a.path());
        let mut plays = 0;
        // Every play falls on the day its file is named for.
        for (k, v) in files
            .iter()
            .filter(|(k, _)| k.starts_with("play-events/plays/"))
        {
            use meshgov_columnar::datafusion::arrow::array::AsArray;
            use meshgov_columnar::datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
            assert!(k.ends_with(".parquet"), "{k}");
            let day = &k["play-events/plays/".len()..][..10];
            let reader = ParquetRecordBatchReaderBuilder::try_new(bytes::Bytes::from(v.clone()))
                .unwrap()
                .build()
                .unwrap();
            for batch in reader {
                let batch = batch.unwrap();
                plays += batch.num_rows();
                let at = batch
                    .column_by_name("played_at")
                    .unwrap()
                    .as_string::<i32>();
                for t in at.iter() {
                    assert!(t.unwrap().starts_with(day), "{t:?} in {k}");
                }
            }
        }
        assert_eq!(plays, 200);
    }
}
