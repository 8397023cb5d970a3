//! Offline verification of a whole audit directory (or one segment file):
//! every event's hash, every link, the sequence, the signed checkpoints, and
//! the retention records that explain a log starting after sequence 1.

use crate::checkpoint::Checkpoint;
use crate::event::{Hash, Kind, hex, open_line};
use crate::segment::{CHECKPOINTS, Segment, lines, list_segments, parse_segment_name, read_file};
use meshgov_bundle::PublicKey;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};

/// The kind of a break in the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakKind {
    /// An event's content no longer matches its hash, or its link.
    Edited,
    /// Events are out of order (or repeated).
    Reordered,
    /// An event is missing from the middle of the chain.
    Deleted,
    /// Events a signed checkpoint vouches for are missing from the end.
    Truncated,
    /// A checkpoint's signature does not verify with the trusted key.
    BadSignature,
}

impl BreakKind {
    pub fn as_str(self) -> &'static str {
        match self {
            BreakKind::Edited => "edited",
            BreakKind::Reordered => "reordered",
            BreakKind::Deleted => "deleted",
            BreakKind::Truncated => "truncated",
            BreakKind::BadSignature => "bad signature",
        }
    }
}

/// The first break found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Break {
    /// The first bad sequence.
    pub seq: u64,
    pub kind: BreakKind,
    /// `file:line` where it shows.
    pub at: String,
    pub detail: String,
}

impl fmt::Display for Break {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "sequence {}: {} ({}): {}",
            self.seq,
            self.kind.as_str(),
            self.at,
            self.detail
        )
    }
}

/// What a sound log holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    pub segments: usize,
    pub events: u64,
    pub first_seq: u64,
    pub last_seq: u64,
    pub head_hash: String,
    pub checkpoints: usize,
    /// The newest checkpoint checked against the chain.
    pub last_checkpoint_seq: u64,
    /// Events after the last checkpoint: sound links, but no signature yet.
    pub unsigned_tail: u64,
    /// Bytes of an unterminated last line (a crash's torn tail, not yet
    /// repaired by a restart); never an acknowledged event.
    pub torn_bytes: u64,
    /// Sequences removed by recorded retention (1..=n).
    pub retired_through: u64,
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "ok: {} events (sequence {}..={}) in {} segment(s); head {}; {} checkpoint(s), the last at sequence {}",
            self.events,
            self.first_seq,
            self.last_seq,
            self.segments,
            self.head_hash,
            self.checkpoints,
            self.last_checkpoint_seq
        )?;
        if self.unsigned_tail > 0 {
            write!(
                f,
                "; {} event(s) after it not yet under a checkpoint",
                self.unsigned_tail
            )?;
        }
        if self.retired_through > 0 {
            write!(
                f,
                "; events 1..={} removed under recorded retention",
                self.retired_through
            )?;
        }
        if self.torn_bytes > 0 {
            write!(
                f,
                "; {} byte(s) of torn tail (an unacknowledged write cut by a crash)",
                self.torn_bytes
            )?;
        }
        Ok(())
    }
}

/// Why verification could not run or failed.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("{0}")]
    Break(Break),
    #[error("`{}`: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("`{}` holds no audit segments (files named `seg-<20 digits>.ndjson`)", .0.display())]
    Empty(PathBuf),
}

/// Tracks breaks; the one with the lowest sequence wins, the first found on
/// a tie.
#[derive(Default)]
struct Breaks(Option<Break>);

impl Breaks {
    fn add(&mut self, seq: u64, kind: BreakKind, at: String, detail: String) {
        if self.0.as_ref().is_none_or(|b| seq < b.seq) {
            self.0 = Some(Break {
                seq,
                kind,
                at,
                detail,
            });
        }
    }
}

/// Verifies a directory (all segments, its `checkpoints.ndjson`, retention
/// records) or a single segment file (with the checkpoints beside it that
/// fall inside its range). `key` checks checkpoint signatures.
pub fn verify_path(path: &Path, key: &PublicKey) -> Result<Summary, VerifyError> {
    let io = |p: &Path| {
        let p = p.to_path_buf();
        move |source| VerifyError::Io { path: p, source }
    };
    let meta = std::fs::metadata(path).map_err(io(path))?;
    let (segments, dir, whole) = if meta.is_dir() {
        (
            list_segments(path).map_err(io(path))?,
            path.to_path_buf(),
            true,
        )
    } else {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let seg = Segment {
            first_seq: parse_segment_name(name).unwrap_or(0),
            path: path.to_path_buf(),
        };
        let dir = path.parent().unwrap_or(Path::new(".")).to_path_buf();
        (vec![seg], dir, false)
    };
    if segments.is_empty() {
        return Err(VerifyError::Empty(path.to_path_buf()));
    }
    let checkpoints = match read_file(&dir.join(CHECKPOINTS)) {
        Ok(d) => {
            let (ls, _) = lines(&d);
            ls.iter()
                .enumerate()
                .map(|(i, (_, l))| (i + 1, Checkpoint::parse(l)))
                .collect::<Vec<_>>()
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(io(&dir.join(CHECKPOINTS))(e)),
    };
    verify_segments(&segments, &checkpoints, key, whole)
}

/// The core check over segment files in order and parsed checkpoint lines
/// (`(line number, checkpoint or None if the line does not parse)`).
fn verify_segments(
    segments: &[Segment],
    checkpoints: &[(usize, Option<Checkpoint>)],
    key: &PublicKey,
    whole: bool,
) -> Result<Summary, VerifyError> {
    let mut breaks = Breaks::default();
    let mut by_seq: BTreeMap<u64, (usize, Checkpoint)> = BTreeMap::new();
    for (line, c) in checkpoints {
        let at = format!("{CHECKPOINTS}:{line}");
        match c {
            Some(c) => {
                if !c.verifies(key) {
                    breaks.add(
                        c.seq,
                        BreakKind::BadSignature,
                        at,
                        format!(
                            "the checkpoint at sequence {} is not signed by {key}",
                            c.seq
                        ),
                    );
                } else {
                    by_seq.insert(c.seq, (*line, c.clone()));
                }
            }
            None => breaks.add(0, BreakKind::Edited, at, "not a checkpoint line".into()),
        }
    }

    let mut expected: Option<u64> = None;
    let mut prev_hash: Hash = [0u8; 32];
    let mut missing: BTreeSet<u64> = BTreeSet::new();
    let mut first: Option<(u64, String, String)> = None; // seq, prev, at
    let mut retired: Vec<(u64, String)> = Vec::new();
    let (mut events, mut torn_bytes, mut last_seq) = (0u64, 0u64, 0u64);
    let mut matched_checkpoints = 0usize;
    let mut last_checkpoint_seq = 0u64;
    let n_segments = segments.len();
    for (si, seg) in segments.iter().enumerate() {
        let data = read_file(&seg.path).map_err(|source| VerifyError::Io {
            path: seg.path.clone(),
            source,
        })?;
        let name = seg
            .path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("?")
            .to_string();
        let (ls, tail) = lines(&data);
        if tail > 0 {
            if si + 1 == n_segments {
                torn_bytes = tail as u64;
            } else {
                breaks.add(
                    expected.unwrap_or(seg.first_seq),
                    BreakKind::Edited,
                    format!("{name}:{}", ls.len() + 1),
                    "an unterminated line inside the chain".into(),
                );
            }
        }
        for (i, (_, line)) in ls.iter().enumerate() {
            let at = format!("{name}:{}", i + 1);
            let want = expected.unwrap_or(seg.first_seq.max(1));
            let (ev, hash) = match open_line(line) {
                Ok(x) => x,
                Err(e) => {
                    breaks.add(want, BreakKind::Edited, at, e.to_string());
                    // Skip it; later links will not match either.
                    expected = Some(want + 1);
                    continue;
                }
            };
            events += 1;
            let s = ev.seq;
            if ev.kind == Kind::Retention
                && let (Some(t), Some(h)) = (ev.through_seq, ev.through_hash.clone())
            {
                retired.push((t, h));
            }
            match expected {
                None => {
                    first = Some((s, ev.prev.clone(), at.clone()));
                    expected = Some(s + 1);
                    prev_hash = hash;
                }
                Some(e) if s == e => {
                    if ev.prev != hex(&prev_hash) {
                        breaks.add(
                            s,
                            BreakKind::Edited,
                            at.clone(),
                            format!(
                                "event {s} does not link to event {}: an event before it was rewritten",
                                s - 1
                            ),
                        );
                    }
                    expected = Some(s + 1);
                    prev_hash = hash;
                }
                Some(e) if s > e => {
                    // Remember the gap (bounded: a huge gap is one entry).
                    if s - e <= 4096 {
                        missing.extend(e..s);
                    } else {
                        missing.insert(e);
                    }
                    expected = Some(s + 1);
                    prev_hash = hash;
                }
                Some(_) => {
                    let detail = if missing.remove(&s) {
                        format!("event {s} appears after later events")
                    } else {
                        format!("event {s} appears twice")
                    };
                    breaks.add(s, BreakKind::Reordered, at.clone(), detail);
                }
            }
            last_seq = last_seq.max(s);
            if let Some((cl, c)) = by_seq.get(&s) {
                if c.head_hash() == Some(hash) {
                    matched_checkpoints += 1;
                    last_checkpoint_seq = last_checkpoint_seq.max(s);
                } else {
                    breaks.add(
                        s,
                        BreakKind::Edited,
                        at,
                        format!(
                            "event {s} differs from what the checkpoint at {CHECKPOINTS}:{cl} signed"
                        ),
                    );
                }
            }
        }
    }
    let Some((first_seq, first_prev, first_at)) = first else {
        // Only checkpoints vouch for events: all of them are gone.
        if let Some((s, (cl, _))) = by_seq.iter().next() {
            breaks.add(
                *s,
                BreakKind::Truncated,
                format!("{CHECKPOINTS}:{cl}"),
                "a checkpoint vouches for events, but the log holds none".into(),
            );
        }
        return match breaks.0 {
            Some(b) => Err(VerifyError::Break(b)),
            None => Ok(Summary {
                segments: segments.len(),
                events: 0,
                first_seq: 0,
                last_seq: 0,
                head_hash: hex(&[0u8; 32]),
                checkpoints: 0,
                last_checkpoint_seq: 0,
                unsigned_tail: 0,
                torn_bytes,
                retired_through: 0,
            }),
        };
    };
    if let Some(m) = missing.iter().next() {
        breaks.add(
            *m,
            BreakKind::Deleted,
            format!("before the event after {}", m.saturating_sub(1)),
            format!("event {m} is missing from the chain"),
        );
    }
    // The start: sequence 1 links to the genesis hash; a later start must be
    // explained by a recorded retention that ends just before it.
    let mut retired_through = 0;
    if first_seq == 0 {
        breaks.add(
            0,
            BreakKind::Edited,
            first_at,
            "the first event has sequence 0; sequences start at 1".into(),
        );
    } else if first_seq == 1 {
        if first_prev != hex(&[0u8; 32]) {
            breaks.add(
                1,
                BreakKind::Edited,
                first_at,
                "the first event does not link to the genesis hash".into(),
            );
        }
    } else if whole {
        match retired.iter().find(|(t, _)| *t + 1 == first_seq) {
            Some((t, h)) if *h == first_prev => retired_through = *t,
            Some(_) => breaks.add(
                first_seq,
                BreakKind::Edited,
                first_at,
                "the first event does not link to the last retired event".into(),
            ),
            None => breaks.add(
                1,
                BreakKind::Deleted,
                first_at,
                format!(
                    "the log starts at sequence {first_seq}, and no retention event records the removal of 1..={}",
                    first_seq - 1
                ),
            ),
        }
    }
    // Checkpoints beyond the end: events were cut off.
    if whole && let Some((s, (cl, _))) = by_seq.range(last_seq + 1..).next() {
        {
            breaks.add(
                last_seq + 1,
                BreakKind::Truncated,
                format!("{CHECKPOINTS}:{cl}"),
                format!(
                    "the checkpoint at sequence {s} vouches for events up to {s}, but the log ends at {last_seq}"
                ),
            );
        }
    }
    match breaks.0 {
        Some(b) => Err(VerifyError::Break(b)),
        None => Ok(Summary {
            segments: segments.len(),
            events,
            first_seq,
            last_seq,
            head_hash: hex(&prev_hash),
            checkpoints: matched_checkpoints,
            last_checkpoint_seq,
            unsigned_tail: last_seq - last_checkpoint_seq.max(first_seq - 1),
            torn_bytes,
            retired_through,
        }),
    }
}
