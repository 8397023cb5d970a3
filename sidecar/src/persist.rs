//! The last good bundle on disk, so a restarted sidecar serves at once,
//! before the engine answers, and still refuses rollbacks.
//!
//! Writes are atomic: the envelope goes to a temporary file, which is
//! fsynced, renamed over `bundle.dsse.json`, and the directory fsynced. A
//! crash leaves either the old file or the new one, never half of either.

use std::io::Write;
use std::path::{Path, PathBuf};

/// The file name of the persisted bundle inside the state directory.
pub const BUNDLE_FILE: &str = "bundle.dsse.json";
const TEMP_FILE: &str = "bundle.dsse.json.tmp";

/// The persisted bundle's path in `state_dir`.
pub fn bundle_path(state_dir: &Path) -> PathBuf {
    state_dir.join(BUNDLE_FILE)
}

/// Writes `envelope` as the state directory's bundle, atomically.
pub fn write_bundle(state_dir: &Path, envelope: &[u8]) -> std::io::Result<()> {
    std::fs::create_dir_all(state_dir)?;
    let tmp = state_dir.join(TEMP_FILE);
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(envelope)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, bundle_path(state_dir))?;
    // The rename is durable only once the directory entry is.
    #[cfg(unix)]
    std::fs::File::open(state_dir)?.sync_all()?;
    Ok(())
}

/// The persisted bundle, if there is one.
pub fn read_bundle(state_dir: &Path) -> std::io::Result<Option<Vec<u8>>> {
    match std::fs::read(bundle_path(state_dir)) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn replaces_the_file_whole_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        assert_eq!(read_bundle(&state).unwrap(), None);
        write_bundle(&state, b"one").unwrap();
        write_bundle(&state, b"two").unwrap();
        assert_eq!(read_bundle(&state).unwrap().as_deref(), Some(&b"two"[..]));
        assert!(!state.join(TEMP_FILE).exists());
    }
}
