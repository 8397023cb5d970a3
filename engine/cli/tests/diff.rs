//! `meshgov diff` on real repositories: directories and git revisions.

use std::path::Path;
use std::process::{Command, Output};

fn meshgov(args: &[&str], cwd: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_meshgov"))
        .args(args)
        .current_dir(cwd)
        .output()
        .unwrap()
}

fn out(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn copy_example(to: &Path) {
    let from = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../policies");
    let status = Command::new("cp")
        .arg("-r")
        .arg(&from)
        .arg(to)
        .status()
        .unwrap();
    assert!(status.success());
}

fn append(path: &Path, text: &str) {
    let mut s = std::fs::read_to_string(path).unwrap();
    s.push_str(text);
    std::fs::write(path, s).unwrap();
}

const REVEAL_POSTCODE: &str = "\n@id(\"users.marketing-postcode\")\npermit (principal in Group::\"marketing\", action == Action::\"reveal\", resource)\nwhen { resource.classification == \"pii.postcode\" };\n";

#[test]
fn directories_widening_and_not() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    copy_example(&d.join("old"));
    copy_example(&d.join("new"));
    let same = meshgov(&["diff", "old", "new"], d);
    assert_eq!(same.status.code(), Some(0), "{}", out(&same));
    assert!(out(&same).contains("0 change(s), 0 widening access"));

    // Lowering a budget is a change, not a widening.
    let privacy = d.join("new/privacy/playback.toml");
    let text = std::fs::read_to_string(&privacy).unwrap();
    std::fs::write(
        &privacy,
        text.replacen("epsilon_budget = 4.0", "epsilon_budget = 3.0", 1),
    )
    .unwrap();
    let o = meshgov(&["diff", "old", "new"], d);
    assert_eq!(o.status.code(), Some(0), "{}", out(&o));
    assert!(
        out(&o).contains("privacy  dp.play-events epsilon_budget: 4 -> 3"),
        "{}",
        out(&o)
    );

    // Revealing postcodes to marketing widens access, per purpose.
    append(&d.join("new/access/users.cedar"), REVEAL_POSTCODE);
    let o = meshgov(&["diff", "old", "new", "--json"], d);
    assert_eq!(o.status.code(), Some(1), "{}", out(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let widening: Vec<&serde_json::Value> = v["changes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["widening"] == true)
        .collect();
    assert!(!widening.is_empty());
    assert!(widening.iter().all(|c| {
        c["kind"] == "field"
            && c["after"] == "revealed"
            && c["subject"]
                .as_str()
                .unwrap()
                .starts_with("users/user-profiles/profiles/postcode for group marketing")
    }));
}

#[test]
fn git_revisions() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().join("repo");
    copy_example(&repo);
    let git = |args: &[&str]| {
        let s = Command::new("git")
            .args(["-c", "user.name=t", "-c", "user.email=t@example", "-C"])
            .arg(&repo)
            .args(args)
            .output()
            .unwrap();
        assert!(s.status.success(), "{}", String::from_utf8_lossy(&s.stderr));
    };
    git(&["init", "-q"]);
    git(&["add", "."]);
    git(&["commit", "-qm", "one"]);
    append(&repo.join("access/users.cedar"), REVEAL_POSTCODE);
    git(&["commit", "-qam", "two"]);
    let o = meshgov(&["diff", "--repo", "repo", "HEAD~1", "HEAD"], tmp.path());
    assert_eq!(o.status.code(), Some(1), "{}", out(&o));
    assert!(
        out(&o)
            .contains("WIDENS field    users/user-profiles/profiles/postcode for group marketing"),
        "{}",
        out(&o)
    );
    let o = meshgov(&["diff", "--repo", "repo", "HEAD~1", "nope"], tmp.path());
    assert_eq!(o.status.code(), Some(2), "{}", out(&o));
}
