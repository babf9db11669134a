//! A copy of the policy in force, kept in a directory of its own (`run --policy-in-force`,
//! the file `policy.json`) for a start whose policy directory does not read.
//!
//! After each generation it read from the policy directory, the daemon writes the very texts it
//! parsed there. A later start that finds the directory broken (a typo pushed before a
//! restart, a bad ConfigMap rolled out with a new build) enforces this copy instead of exiting,
//! so agents that appear meanwhile are governed, and says so (the log, a `policy.reload_failed`
//! record, `governance status`) until the directory reads again. A copy made from another
//! policy directory is never used. Agents may not write below the directory (a built-in
//! protection, as for the policy directory). A directory, not a file: each copy replaces the
//! file (a new inode), while the directory keeps the identity the kernel's identity rules were
//! compiled with, so a hard link or another name for the file stays under its protection.

use std::{
    path::{Path, PathBuf},
    time::SystemTime,
};

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

use crate::policy::{self, PolicySet, Sources};

/// The file as written.
#[derive(Serialize, Deserialize)]
struct Saved<'a> {
    /// The policy directory it was read from.
    policy_dir: PathBuf,
    /// The policy's content hash ([`policy::load_dir_hashed`]).
    content_hash: String,
    /// When it was written (RFC 3339).
    saved: String,
    /// Each policy file's path and text, as read.
    files: std::borrow::Cow<'a, [(PathBuf, String)]>,
}

/// A copy read back and parsed.
pub(super) struct Kept {
    pub set: PolicySet,
    pub content_hash: String,
    /// When it was written.
    pub saved: String,
}

/// The copy in the directory `dir`.
pub(super) fn file(dir: &Path) -> PathBuf {
    dir.join("policy.json")
}

/// Make the directory `dir` (0700) if it is not there: before the first generation is
/// compiled, so that its identity rules hold the directory from the start.
pub(super) fn prepare(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt as _;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

/// Write the copy of `sources`, read from `policy_dir`, into `dir`: whole or not at all (a
/// file beside it renamed over it, both synced), readable by root alone.
pub(super) fn save(dir: &Path, policy_dir: &Path, sources: &Sources) -> anyhow::Result<()> {
    let copy = Saved {
        policy_dir: policy_dir.to_owned(),
        content_hash: sources.hash.clone(),
        saved: crate::events::rfc3339(SystemTime::now()),
        files: std::borrow::Cow::Borrowed(&sources.files),
    };
    prepare(dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = file(dir);
    crate::durable::replace(&path, 0o600, |w| Ok(serde_json::to_writer(w, &copy)?))
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// Writes the copies off the daemon's loop (a large policy's copy and its syncs take
/// milliseconds), one at a time and in order, skipping to the latest when several wait. A
/// daemon that stops waits for the one being written.
pub(super) struct Saver {
    tx: Option<std::sync::mpsc::Sender<Sources>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Saver {
    pub fn start(path: PathBuf, policy_dir: PathBuf) -> Self {
        let (tx, rx) = std::sync::mpsc::channel::<Sources>();
        let thread = std::thread::Builder::new()
            .name("policy-in-force".into())
            .spawn(move || {
                crate::privilege::thread_started();
                // Said when saving starts to fail, not at every reload.
                let mut failing = false;
                while let Ok(mut sources) = rx.recv() {
                    while let Ok(newer) = rx.try_recv() {
                        sources = newer;
                    }
                    match save(&path, &policy_dir, &sources) {
                        Ok(()) => failing = false,
                        Err(e) if !failing => {
                            failing = true;
                            crate::say!(
                                "could not keep a copy of the policy in force ({e:#}); a start \
                                 whose policy directory does not read exits instead of \
                                 enforcing it"
                            );
                        }
                        Err(e) => tracing::debug!("keeping the policy in force: {e:#}"),
                    }
                }
            });
        match thread {
            Ok(thread) => Self {
                tx: Some(tx),
                thread: Some(thread),
            },
            Err(e) => {
                crate::say!("could not start the thread that keeps the policy in force: {e}");
                Self {
                    tx: None,
                    thread: None,
                }
            }
        }
    }

    /// Keep `sources`, read from the policy directory, as the policy in force.
    pub fn keep(&self, sources: Sources) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(sources);
        }
    }
}

impl Drop for Saver {
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The copy in `dir`, if there is one and it was made from `policy_dir`. An error: a copy that
/// does not read or parse (it was whole when written: something else changed it).
pub(super) fn load(dir: &Path, policy_dir: &Path) -> anyhow::Result<Option<Kept>> {
    let path = &file(dir);
    let text = match std::fs::read(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let copy: Saved =
        serde_json::from_slice(&text).with_context(|| format!("reading {}", path.display()))?;
    if copy.policy_dir != policy_dir {
        return Ok(None);
    }
    let set = policy::parse(&copy.files)
        .with_context(|| format!("the copy of the policy in force in {}", path.display()))?;
    Ok(Some(Kept {
        set,
        content_hash: copy.content_hash,
        saved: copy.saved,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: &str = "name: kept\nagents: { cgroup: kept }\nrules:\n  - { id: no-loopback, network: { cidr: 127.0.0.1/32 }, verdict: block, reason: test }\n";

    #[test]
    fn a_copy_reads_back_as_the_policy_it_was_made_from_and_only_for_its_directory() {
        let dir = tempfile::tempdir().unwrap();
        let policies = dir.path().join("policies");
        std::fs::create_dir(&policies).unwrap();
        std::fs::write(policies.join("p.yaml"), POLICY).unwrap();
        let (set, sources) =
            policy::load_sources(&policies, &mut policy::Parsed::default()).unwrap();
        let copy = dir.path().join("state/policy-in-force");
        save(&copy, &policies, &sources).unwrap();
        assert!(
            !copy.join("policy.json.new").exists(),
            "renamed over the copy"
        );
        use std::os::unix::fs::PermissionsExt as _;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&file(&copy)), 0o600);
        assert_eq!(mode(&copy), 0o700);

        // The directory breaks: the copy still has what was read.
        std::fs::write(policies.join("p.yaml"), "name: [").unwrap();
        let kept = load(&copy, &policies)
            .unwrap()
            .expect("a copy of this directory");
        assert_eq!(kept.content_hash, sources.hash);
        assert_eq!(kept.set.policies.len(), set.policies.len());
        assert_eq!(kept.set.policies[0].name, "kept");
        assert_eq!(kept.set.rule_count(), 1);

        // Another directory's start does not use it; no copy is none.
        assert!(load(&copy, &dir.path().join("other")).unwrap().is_none());
        assert!(load(&dir.path().join("none"), &policies).unwrap().is_none());

        // A copy changed behind the daemon's back is an error, never a policy.
        std::fs::write(file(&copy), b"{\"policy_dir\":").unwrap();
        let e = load(&copy, &policies).err().expect("a broken copy");
        assert!(
            format!("{e:#}").contains("policy-in-force/policy.json"),
            "{e:#}"
        );
    }
}
