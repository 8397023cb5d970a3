//! The audit directory: append-only segment files and the checkpoint file.
//!
//! ```text
//! <dir>/seg-00000000000000000001.ndjson   events 1 …
//! <dir>/seg-00000000000000052311.ndjson   events 52311 … (rotated by size)
//! <dir>/checkpoints.ndjson                signed checkpoints
//! ```
//!
//! A segment is named by the sequence of its first event, so the files sort
//! in chain order and a reader can start at any sequence without scanning
//! older files.

use crate::checkpoint::Checkpoint;
use crate::event::{Hash, Head, StoredEvent, hex, open_line};
use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::path::{Path, PathBuf};

/// The checkpoint file's name.
pub const CHECKPOINTS: &str = "checkpoints.ndjson";
const SEG_PREFIX: &str = "seg-";
const SEG_SUFFIX: &str = ".ndjson";

/// One segment file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    /// The sequence of its first event.
    pub first_seq: u64,
    pub path: PathBuf,
}

/// The file name of the segment starting at `first_seq`.
pub fn segment_name(first_seq: u64) -> String {
    format!("{SEG_PREFIX}{first_seq:020}{SEG_SUFFIX}")
}

/// The first sequence a segment file name declares.
pub fn parse_segment_name(name: &str) -> Option<u64> {
    let digits = name.strip_prefix(SEG_PREFIX)?.strip_suffix(SEG_SUFFIX)?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The segments in `dir`, in chain order.
pub fn list_segments(dir: &Path) -> io::Result<Vec<Segment>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        if let Some(first_seq) = name.to_str().and_then(parse_segment_name) {
            out.push(Segment {
                first_seq,
                path: entry.path(),
            });
        }
    }
    out.sort_by_key(|s| s.first_seq);
    Ok(out)
}

/// Reads a whole file.
pub fn read_file(path: &Path) -> io::Result<Vec<u8>> {
    let mut v = Vec::new();
    File::open(path)?.read_to_end(&mut v)?;
    Ok(v)
}

/// Splits file content into complete lines (without newlines) with their
/// byte offsets, and the length of an unterminated tail.
pub fn lines(data: &[u8]) -> (Vec<(usize, &[u8])>, usize) {
    let mut out = Vec::new();
    let mut start = 0;
    while let Some(rel) = data
        .get(start..)
        .and_then(|d| d.iter().position(|&b| b == b'\n'))
    {
        out.push((start, data.get(start..start + rel).unwrap_or_default()));
        start += rel + 1;
    }
    (out, data.len() - start)
}

/// Makes a file creation or removal in `dir` durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// The state of an audit directory after opening (and repairing) it.
#[derive(Debug)]
pub struct Recovered {
    pub segments: Vec<Segment>,
    pub head: Head,
    /// Bytes of the last segment to keep.
    pub last_len: u64,
    /// Bytes of torn tail cut off the last segment.
    pub torn_bytes: u64,
    /// The last durable checkpoint.
    pub last_checkpoint: Option<Checkpoint>,
    pub checkpoints_len: u64,
    pub checkpoints_torn: u64,
}

/// Why an audit directory cannot be reopened for writing.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("audit directory `{}`: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "audit segment `{}` is damaged at byte {offset}: {reason}; this is not a torn tail from a crash, so it is left as is (run `meshgov audit verify` on the directory)",
        path.display()
    )]
    Damaged {
        path: PathBuf,
        offset: usize,
        reason: String,
    },
}

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> OpenError + '_ {
    move |source| OpenError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The last complete event of a segment's content, and how many bytes of
/// sound lines it starts with. Lines after the sound prefix are a torn tail
/// only if none of them is a valid event; otherwise the segment is damaged.
fn sound_prefix(
    path: &Path,
    data: &[u8],
    first_seq: u64,
    mut head: Head,
) -> Result<(Head, usize), OpenError> {
    let (ls, _) = lines(data);
    let mut keep = 0usize;
    let mut bad: Option<(usize, String)> = None;
    for (off, line) in &ls {
        if let Some((at, reason)) = &bad {
            if open_line(line).is_ok() {
                return Err(OpenError::Damaged {
                    path: path.to_path_buf(),
                    offset: *at,
                    reason: reason.clone(),
                });
            }
            continue;
        }
        match open_line(line) {
            Ok((ev, hash)) => {
                let expected = if head.seq == 0 && keep == 0 {
                    first_seq
                } else {
                    head.seq + 1
                };
                if ev.seq != expected || (head.seq > 0 && ev.prev != hex(&head.hash)) {
                    bad = Some((
                        *off,
                        format!(
                            "event {} does not follow event {} in the chain",
                            ev.seq, head.seq
                        ),
                    ));
                    continue;
                }
                head = Head { seq: ev.seq, hash };
                keep = off + line.len() + 1;
            }
            Err(e) => bad = Some((*off, e.to_string())),
        }
    }
    Ok((head, keep))
}

/// The head at the end of a segment (its last line), for segments before the
/// last, which are never written again.
fn last_event(path: &Path, data: &[u8]) -> Result<Option<(StoredEvent, Hash)>, OpenError> {
    let (ls, _) = lines(data);
    match ls.last() {
        None => Ok(None),
        Some((off, line)) => open_line(line).map(Some).map_err(|e| OpenError::Damaged {
            path: path.to_path_buf(),
            offset: *off,
            reason: e.to_string(),
        }),
    }
}

/// Opens `dir` for writing: finds the chain head, cuts a torn tail off the
/// last segment and off the checkpoint file (what a crash mid-write leaves),
/// and refuses anything that looks like damage rather than a torn tail.
/// Truncation is made durable before returning.
pub fn recover(dir: &Path) -> Result<Recovered, OpenError> {
    std::fs::create_dir_all(dir).map_err(io_at(dir))?;
    let segments = list_segments(dir).map_err(io_at(dir))?;
    let mut head = Head::EMPTY;
    let (mut last_len, mut torn_bytes) = (0u64, 0u64);
    if let Some((last, before)) = segments.split_last() {
        // Only the segment before the last matters for the link into it.
        if let Some(prev) = before.last() {
            let data = read_file(&prev.path).map_err(io_at(&prev.path))?;
            if let Some((ev, hash)) = last_event(&prev.path, &data)? {
                head = Head { seq: ev.seq, hash };
            }
        }
        let data = read_file(&last.path).map_err(io_at(&last.path))?;
        let (h, keep) = sound_prefix(&last.path, &data, last.first_seq, head)?;
        if head.seq > 0 && h == head && last.first_seq != head.seq + 1 {
            return Err(OpenError::Damaged {
                path: last.path.clone(),
                offset: 0,
                reason: format!(
                    "the segment is named for sequence {} but the chain is at {}",
                    last.first_seq, head.seq
                ),
            });
        }
        head = h;
        last_len = keep as u64;
        torn_bytes = (data.len() - keep) as u64;
        if torn_bytes > 0 {
            truncate(&last.path, last_len).map_err(io_at(&last.path))?;
        }
    }
    let cp_path = dir.join(CHECKPOINTS);
    let (mut last_checkpoint, mut checkpoints_len, mut checkpoints_torn) = (None, 0u64, 0u64);
    match read_file(&cp_path) {
        Ok(data) => {
            let (ls, _) = lines(&data);
            let mut keep = 0usize;
            for (off, line) in &ls {
                match Checkpoint::parse(line) {
                    Some(c) if keep == *off => {
                        last_checkpoint = Some(c);
                        keep = off + line.len() + 1;
                    }
                    _ => {}
                }
            }
            if ls
                .iter()
                .any(|(off, l)| *off > keep && Checkpoint::parse(l).is_some())
            {
                return Err(OpenError::Damaged {
                    path: cp_path,
                    offset: keep,
                    reason: "a line that is not a checkpoint".into(),
                });
            }
            checkpoints_len = keep as u64;
            checkpoints_torn = (data.len() - keep) as u64;
            if checkpoints_torn > 0 {
                truncate(&cp_path, checkpoints_len).map_err(io_at(&cp_path))?;
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_at(&cp_path)(e)),
    }
    Ok(Recovered {
        segments,
        head,
        last_len,
        torn_bytes,
        last_checkpoint,
        checkpoints_len,
        checkpoints_torn,
    })
}

fn truncate(path: &Path, len: u64) -> io::Result<()> {
    let f = OpenOptions::new().write(true).open(path)?;
    f.set_len(len)?;
    f.sync_all()
}

/// Opens a file for appending, creating it (and syncing its directory) if new.
pub fn open_append(dir: &Path, name: &str) -> io::Result<File> {
    let path = dir.join(name);
    let existed = path.exists();
    let f = OpenOptions::new().create(true).append(true).open(&path)?;
    if !existed {
        sync_dir(dir)?;
    }
    Ok(f)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn names_round_trip_and_sort() {
        assert_eq!(parse_segment_name(&segment_name(42)), Some(42));
        assert_eq!(parse_segment_name("seg-42.ndjson"), None);
        assert!(segment_name(9) < segment_name(10));
    }

    #[test]
    fn lines_split_and_report_the_unterminated_tail() {
        let (ls, tail) = lines(b"a\nbc\nde");
        assert_eq!(ls, vec![(0, &b"a"[..]), (2, &b"bc"[..])]);
        assert_eq!(tail, 2);
    }
}
