//! `meshgov diff`: the impact of a policy change, between two directories
//! or two git revisions of one repository.

use crate::Failure;
use meshgov_core::diff::{Change, diff};
use meshgov_core::{Checked, Policies, SourceSet};
use std::path::{Path, PathBuf};
use std::process::Command;

/// A policy repository at one side of the diff, extracted from git when
/// needed and removed again when dropped.
struct Tree {
    dir: PathBuf,
    temporary: bool,
}

impl Drop for Tree {
    fn drop(&mut self) {
        if self.temporary {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

fn run_git(repo: &Path, args: &[&str]) -> Result<Vec<u8>, Failure> {
    let out = Command::new("git")
        .arg("-C")
        .arg(repo)
        .args(args)
        .output()
        .map_err(|e| Failure::usage(format!("cannot run git: {e}")))?;
    if !out.status.success() {
        return Err(Failure::usage(format!(
            "git {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(out.stdout)
}

/// `side` is a directory, or else a git revision of the repository at `repo`.
fn tree(side: &str, repo: &Path, n: usize) -> Result<Tree, Failure> {
    let path = Path::new(side);
    if path.is_dir() {
        return Ok(Tree {
            dir: path.to_path_buf(),
            temporary: false,
        });
    }
    let prefix = String::from_utf8_lossy(&run_git(repo, &["rev-parse", "--show-prefix"])?)
        .trim()
        .to_string();
    let treeish = format!("{side}:{prefix}");
    let tar = run_git(repo, &["archive", "--format=tar", &treeish])?;
    let dir = std::env::temp_dir().join(format!("meshgov-diff-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| Failure::io(&dir, &e))?;
    let t = Tree {
        dir,
        temporary: true,
    };
    let mut child = Command::new("tar")
        .arg("-x")
        .arg("-C")
        .arg(&t.dir)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| Failure::usage(format!("cannot run tar: {e}")))?;
    if let Some(mut stdin) = child.stdin.take() {
        use std::io::Write as _;
        stdin
            .write_all(&tar)
            .map_err(|e| Failure::usage(format!("tar: {e}")))?;
    }
    let status = child
        .wait()
        .map_err(|e| Failure::usage(format!("tar: {e}")))?;
    if !status.success() {
        return Err(Failure::usage(format!("could not extract `{side}`")));
    }
    Ok(t)
}

fn load(t: &Tree, side: &str) -> Result<(Policies, Checked), Failure> {
    let src = SourceSet::read_dir(&t.dir).map_err(|e| Failure::usage(format!("{side}: {e}")))?;
    let mut checked = meshgov_core::check(&src);
    let policies = checked.policies.take().ok_or_else(|| {
        let errors: Vec<String> = checked.diagnostics.iter().map(|d| d.to_string()).collect();
        Failure::usage(format!("{side} does not check:\n{}", errors.join("\n")))
    })?;
    Ok((policies, checked))
}

pub fn run(old: &str, new: &str, repo: &Path, json: bool) -> Result<(), Failure> {
    let (old_tree, new_tree) = (tree(old, repo, 0)?, tree(new, repo, 1)?);
    let (before, _) = load(&old_tree, old)?;
    let (after, checked) = load(&new_tree, new)?;
    let changes = diff(&before, &after, &checked.products, &checked.tests);
    let widening = changes.iter().filter(|c| c.widening).count();
    if json {
        let doc = serde_json::json!({ "changes": changes, "widening": widening });
        outln!("{}", serde_json::to_string_pretty(&doc).unwrap_or_default());
    } else {
        for c in &changes {
            outln!("{}", line(c));
        }
        outln!("{} change(s), {widening} widening access", changes.len());
    }
    if widening > 0 {
        return Err(Failure::violations(format!(
            "{widening} change(s) widen access; they need review"
        )));
    }
    Ok(())
}

fn line(c: &Change) -> String {
    format!(
        "{}{:<8} {}: {} -> {}",
        if c.widening { "WIDENS " } else { "       " },
        c.kind,
        c.subject,
        c.before,
        c.after
    )
}
