//! `meshgov init`: scaffolds a policy repository from the example media
//! mesh, which the project's own CI checks and tests, so a new repository
//! always starts green.

use crate::Failure;
use std::path::Path;

macro_rules! example {
    ($($path:literal),* $(,)?) => {
        &[$(($path, include_str!(concat!("../../../policies/", $path)))),*]
    };
}

/// Every file of the example repository, by relative path.
const FILES: &[(&str, &str)] = example!(
    "mesh.toml",
    "access/schema.cedarschema",
    "access/mesh.cedar",
    "access/users.cedar",
    "access/playback.cedar",
    "access/artists.cedar",
    "anonymization/personal-data.toml",
    "privacy/playback.toml",
    "standards/schema.toml",
    "plugins/README.md",
    "tests/access.toml",
    "tests/anonymization.toml",
    "products/user-profiles.yaml",
    "products/play-events.yaml",
    "products/artist-payments.yaml",
);

pub fn run(dir: &Path) -> Result<(), Failure> {
    write(dir)?;
    outln!(
        "created a policy repository in `{}` ({} files)\nnext: meshgov check {0} && meshgov test {0}",
        dir.display(),
        FILES.len()
    );
    Ok(())
}

/// Writes the example repository into `dir`, which must be new or empty.
pub fn write(dir: &Path) -> Result<(), Failure> {
    let io = |p: &Path, e: std::io::Error| Failure::io(p, &e);
    if dir.exists() {
        let mut entries = std::fs::read_dir(dir).map_err(|e| io(dir, e))?;
        if entries.next().is_some() {
            return Err(Failure::usage(format!(
                "`{}` already exists and is not empty; choose a new directory",
                dir.display()
            )));
        }
    }
    for (rel, text) in FILES {
        let path = dir.join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| io(parent, e))?;
        }
        std::fs::write(&path, text).map_err(|e| io(&path, e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    fn walk(root: &std::path::Path, dir: &std::path::Path, out: &mut Vec<String>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(root, &path, out);
            } else {
                let rel = path.strip_prefix(root).unwrap();
                out.push(rel.to_string_lossy().replace('\\', "/"));
            }
        }
    }

    /// `init` writes exactly the example repository: a file added to
    /// `policies/` without being listed here would be missing from new repos.
    #[test]
    fn the_scaffold_is_the_whole_example_repository() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../policies");
        let mut on_disk = Vec::new();
        walk(&root, &root, &mut on_disk);
        on_disk.sort();
        let mut listed: Vec<String> = super::FILES.iter().map(|(p, _)| p.to_string()).collect();
        listed.sort();
        assert_eq!(listed, on_disk);
    }
}
