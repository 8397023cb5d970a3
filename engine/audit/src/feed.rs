//! Reading a log's stored lines after a sequence, for collection: the events
//! `after+1 ..= up_to` in order, then the checkpoints in that range. Lines
//! are passed on byte for byte, so the collector's copy verifies exactly as
//! the original does.

use crate::checkpoint::Checkpoint;
use crate::segment::{CHECKPOINTS, lines, list_segments, read_file};
use std::io::BufRead as _;
use std::path::Path;

/// Calls `emit` with each stored line (with its newline) of the events with
/// `after < seq <= up_to`, then of the checkpoints with `after < seq <=
/// up_to`. Stops early, returning `Ok(false)`, when `emit` returns false.
///
/// `up_to` should be the log's durable sequence when the read starts:
/// lines past it may still be in flight.
pub fn read_after(
    dir: &Path,
    after: u64,
    up_to: u64,
    mut emit: impl FnMut(&[u8]) -> bool,
) -> std::io::Result<bool> {
    let segments = list_segments(dir)?;
    for (i, seg) in segments.iter().enumerate() {
        let next_first = segments.get(i + 1).map_or(u64::MAX, |n| n.first_seq);
        if next_first <= after + 1 || seg.first_seq > up_to {
            continue;
        }
        let file = match std::fs::File::open(&seg.path) {
            Ok(f) => f,
            // Removed by retention after the listing: already collected.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        let mut r = std::io::BufReader::with_capacity(256 * 1024, file);
        let mut seq = seg.first_seq;
        let mut line = Vec::with_capacity(1024);
        while seq <= up_to {
            line.clear();
            if r.read_until(b'\n', &mut line)? == 0 || line.last() != Some(&b'\n') {
                break;
            }
            // INVARIANT: a segment holds consecutive sequences from the one
            // in its name (the writer and its recovery guarantee it).
            if seq > after && !emit(&line) {
                return Ok(false);
            }
            seq += 1;
        }
    }
    let data = match read_file(&dir.join(CHECKPOINTS)) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(true),
        Err(e) => return Err(e),
    };
    let (ls, _) = lines(&data);
    for (_, l) in ls {
        if let Some(c) = Checkpoint::parse(l)
            && c.seq > after
            && c.seq <= up_to
        {
            let mut v = l.to_vec();
            v.push(b'\n');
            if !emit(&v) {
                return Ok(false);
            }
        }
    }
    Ok(true)
}
