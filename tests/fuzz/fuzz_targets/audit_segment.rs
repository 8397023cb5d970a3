//! Audit segments and checkpoint files, as `meshgov audit verify` reads
//! them from an auditor's copy and as a restarting sidecar reopens them
//! (`meshgov_audit::verify_path`, `segment::recover`, `event::open_line`).
//!
//! The input is a segment file, then a 0xFF byte, then `checkpoints.ndjson`;
//! both are written to a scratch directory. Bit 0 of the mode byte reseals
//! the segment first: each line's `prev` is set to the hash of the line
//! before and its `hash` recomputed, so the fuzzer reaches the event parser
//! and the chain rules behind the hash check.
//!
//! Invariants: no panic; a log that verifies holds only events whose hash
//! covers their content, and reopens for writing at the head it verified to.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshgov_audit::event::{hex, open_line, sha256};
use meshgov_audit::segment::{CHECKPOINTS, lines, recover, segment_name};
use meshgov_audit::verify_path;
use meshgov_fuzz::{split_mode, test_public_key};
use std::path::PathBuf;
use std::sync::LazyLock;

static DIR: LazyLock<PathBuf> = LazyLock::new(|| {
    let d = std::env::temp_dir().join(format!("meshgov-fuzz-audit-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap_or_else(|e| panic!("{}: {e}", d.display()));
    d
});

const HASH_TAIL: usize = ",\"hash\":\"".len() + 64 + "\"}".len();

fuzz_target!(|data: &[u8]| {
    let Some((mode, rest)) = split_mode(data) else {
        return;
    };
    let (segment, checkpoints) = match rest.iter().position(|b| *b == 0xFF) {
        Some(at) => (&rest[..at], &rest[at + 1..]),
        None => (rest, &[][..]),
    };
    let segment = if mode & 1 == 1 {
        reseal(segment)
    } else {
        segment.to_vec()
    };
    let dir = &*DIR;
    let seg_path = dir.join(segment_name(1));
    let cp_path = dir.join(CHECKPOINTS);
    let write = |p: &PathBuf, b: &[u8]| std::fs::write(p, b).unwrap_or_else(|e| panic!("{e}"));
    write(&seg_path, &segment);
    write(&cp_path, checkpoints);

    let verified = verify_path(dir, &test_public_key());
    if let Ok(summary) = &verified {
        let (complete, _) = lines(&segment);
        for (_, line) in complete {
            assert!(
                open_line(line).is_ok(),
                "a verified log holds an unsound event: {:?}",
                String::from_utf8_lossy(line)
            );
        }
        let rec = recover(dir).unwrap_or_else(|e| panic!("verified, but does not reopen: {e}"));
        if summary.events > 0 {
            assert_eq!(rec.head.seq, summary.last_seq, "reopened at another head");
            assert_eq!(hex(&rec.head.hash), summary.head_hash);
        }
    } else {
        // Recovery must refuse or repair, never panic.
        let _ = recover(dir);
    }
});

/// Relinks and rehashes every line that has the shape of an event.
fn reseal(segment: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(segment.len());
    let mut prev: Option<[u8; 32]> = None;
    for line in segment.split_inclusive(|b| *b == b'\n') {
        let (body, nl) = match line.strip_suffix(b"\n") {
            Some(b) => (b, &b"\n"[..]),
            None => (line, &b""[..]),
        };
        let Some(cut) = body.len().checked_sub(HASH_TAIL) else {
            out.extend_from_slice(line);
            continue;
        };
        let mut head = body[..cut].to_vec();
        if let (Some(p), Some(at)) = (prev, find(&head, b"\"prev\":\"")) {
            let start = at + b"\"prev\":\"".len();
            if let Some(slot) = head.get_mut(start..start + 64) {
                slot.copy_from_slice(hex(&p).as_bytes());
            }
        }
        let mut canon = head.clone();
        canon.push(b'}');
        let h = sha256(&canon);
        out.extend_from_slice(&head);
        out.extend_from_slice(format!(",\"hash\":\"{}\"}}", hex(&h)).as_bytes());
        out.extend_from_slice(nl);
        prev = Some(h);
    }
    out
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}
