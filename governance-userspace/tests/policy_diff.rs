//! `governance policy diff` on two policy directories, through the built binary: the shipped
//! examples against a copy changed in one rule, one default and one relaxation.

use std::{path::Path, process::Command};

fn diff(old: &Path, new: &Path) -> (Option<i32>, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_governance"))
        .args(["policy", "diff"])
        .args([old, new])
        .output()
        .expect("running governance");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

#[test]
fn policy_diff_of_two_directories() {
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies/examples");
    let dir = tempfile::tempdir().unwrap();
    for e in std::fs::read_dir(&examples).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dir.path().join(e.file_name())).unwrap();
    }
    // The same policies: no change, exit 0.
    let (code, out, err) = diff(&examples, dir.path());
    assert_eq!(code, Some(0), "{out}{err}");
    assert_eq!(
        out,
        "no capability changes (agents described by selector)\n"
    );

    let file = dir.path().join("coding-agent.yaml");
    let text = std::fs::read_to_string(&file).unwrap();
    let changed = text
        .replace(
            "{ id: git, exec: { path: /usr/bin/git }, verdict: allow",
            "{ id: git, exec: { path: /usr/bin/git }, verdict: block",
        )
        .replace("  unix: block ", "  unix: allow ")
        .replace("agents:\n", "kernel: { allow_mounts: true }\nagents:\n");
    assert_ne!(changed, text);
    std::fs::write(&file, changed).unwrap();
    let (code, out, err) = diff(&examples, dir.path());
    assert_eq!(code, Some(1), "{out}{err}");
    assert_eq!(
        out,
        "capability changes (agents described by selector):\n\
         agent selector cgroup=agents/coder\n  \
         ~ unix default: block -> allow\n  \
         ~ exec /usr/bin/git: allow (coding-agent/git) -> block (coding-agent/git)\n  \
         ~ built-in allow_mounts: refused -> relaxed\n"
    );

    // An invalid policy: exit 2, with where.
    std::fs::write(dir.path().join("bad.yaml"), "name: bad\nrules: 3\n").unwrap();
    let (code, out, err) = diff(&examples, dir.path());
    assert_eq!(code, Some(2), "{out}{err}");
    assert!(err.contains("bad.yaml:2:"), "{err}");
}
