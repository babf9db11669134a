//! The audit log on a filesystem that really fills up: a small tmpfs mounted in a temporary
//! directory (root), written until ENOSPC, then given room again. Nothing is lost silently: the
//! gap records count exactly the records that are not in the log, and the chain (with seals)
//! verifies across every gap and recovery. `cargo xtask test` runs this as the place "audit
//! log faults (tmpfs filled)".

use std::{
    collections::BTreeSet,
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use governance::audit::{self, AuditError, AuditLog, AuditOptions, Backoff, Clock};
use governance_tests::require_root;
use serde_json::{Value, json};

/// A tmpfs of `size` mounted on a fresh directory; unmounted and removed when dropped.
struct Tmpfs {
    dir: PathBuf,
}

impl Tmpfs {
    fn mount(name: &str, size: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "governance-audit-faults-{}-{name}",
            std::process::id()
        ));
        fs::create_dir_all(&dir).unwrap();
        let ok = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(&dir)
            .status()
            .unwrap()
            .success();
        assert!(ok, "mounting a tmpfs on {}", dir.display());
        Tmpfs { dir }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.dir).status();
        let _ = fs::remove_dir(&self.dir);
    }
}

/// The signing key (a fixed seed, in a file outside the small filesystem).
fn key_file() -> PathBuf {
    let p = std::env::temp_dir().join(format!(
        "governance-audit-faults-{}.key",
        std::process::id()
    ));
    fs::write(&p, format!("{}\n", "09".repeat(32))).unwrap();
    p
}

fn rec(n: u64) -> Value {
    json!({"type": "decision", "agent": "a", "n": n, "object": format!("path=/work/{n:08}")})
}

/// The `n` of every data record in the log, in order.
fn numbers(dir: &Path) -> Vec<u64> {
    let mut out = Vec::new();
    let mut files: Vec<_> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "jsonl"))
        .collect();
    files.sort();
    for f in files {
        for line in fs::read_to_string(f).unwrap().lines() {
            let v: Value = serde_json::from_str(line).unwrap();
            if let Some(n) = v["record"]["n"].as_u64() {
                out.push(n);
            }
        }
    }
    out
}

/// Ballast files that take room on the filesystem, freed one at a time to end an outage.
fn ballast(root: &Path, i: usize) -> PathBuf {
    let p = root.join(format!("ballast-{i}"));
    fs::write(&p, vec![0u8; 48 * 1024]).unwrap();
    p
}

#[test]
fn a_full_disk_loses_only_what_the_gap_records_count() {
    require_root();
    let fs_ = Tmpfs::mount("fill", "320k");
    let ballast: Vec<PathBuf> = (0..2).map(|i| ballast(&fs_.dir, i)).collect();
    let dir = fs_.dir.join("audit");
    let key_path = key_file();
    let key = audit::load_or_create_key(&key_path).unwrap();
    fs::remove_file(&key_path).unwrap();
    let public = key.verifying_key();
    let clock = Clock::manual();
    let opts = AuditOptions {
        max_bytes: 24 * 1024,
        max_age: None,
        signing_key: Some(key),
        retry: Backoff {
            first: Duration::from_secs(1),
            max: Duration::from_secs(8),
        },
        clock: clock.clone(),
        ..Default::default()
    };
    let mut log = AuditLog::open(&dir, opts).unwrap();
    let health = log.health();
    let mut n = 0u64;
    for (outage, room) in ballast.iter().enumerate() {
        // Write until the disk is full: an append or a flush fails with ENOSPC.
        let mut enospc = false;
        for _ in 0..100_000 {
            let r = log.append(&rec(n)).and_then(|_| {
                if n.is_multiple_of(10) {
                    log.flush()
                } else {
                    Ok(())
                }
            });
            n += 1;
            if let Err(e) = r {
                let text = e.to_string();
                assert!(text.contains("No space left on device"), "{text}");
                assert!(matches!(e, AuditError::Io { .. }), "{e:?}");
                enospc = true;
                break;
            }
        }
        assert!(enospc, "the disk never filled");
        assert!(!health.writable());
        // Records keep coming while it is full: refused, counted.
        for _ in 0..25 {
            assert!(matches!(
                log.append(&rec(n)),
                Err(AuditError::Unavailable { .. })
            ));
            n += 1;
        }
        // A retry while still full (it may get through if cutting the torn tail freed a page).
        clock.advance(log.retry_in().unwrap());
        let _ = log.retry();
        // Room again: the next record after the backoff brings the log back.
        fs::remove_file(room).unwrap();
        clock.advance(Duration::from_secs(8));
        log.append(&rec(n)).unwrap();
        n += 1;
        assert!(health.writable());
        for _ in 0..20 {
            log.append(&rec(n)).unwrap();
            n += 1;
        }
        log.flush().unwrap();
        let report = audit::verify(std::slice::from_ref(&dir), Some(public))
            .unwrap_or_else(|e| panic!("after outage {outage}: {e}"));
        assert_eq!(report.gaps.len(), outage + 1);
        println!("after outage {outage}: {report}");
    }
    log.close().unwrap();

    let report = audit::verify(std::slice::from_ref(&dir), Some(public)).unwrap();
    let kept = numbers(&dir);
    // No silent loss: every record is in the log or counted by a gap, exactly.
    assert_eq!(kept.len() as u64 + report.lost_records, n, "{report}");
    assert_eq!(report.lost_records, health.records_lost());
    assert_eq!(report.gaps.len() as u64, health.gaps());
    // What is in the log is in order, without repeats; what is missing is what the gaps say.
    assert!(kept.windows(2).all(|w| w[0] < w[1]));
    let kept_set: BTreeSet<u64> = kept.iter().copied().collect();
    let missing = (0..n).filter(|i| !kept_set.contains(i)).count() as u64;
    assert_eq!(missing, report.lost_records);
    for (_, gap) in &report.gaps {
        assert!(gap.lost >= 26, "{gap:?}");
        assert!(gap.cause.contains("No space left on device"), "{gap:?}");
        assert!((1..=2).contains(&gap.failures), "{gap:?}");
    }
    println!("{report}");
}

/// The daemon stops while the disk is full (no close): on the next start the torn tail is cut
/// and the chain goes on. The records refused before it stopped are not in the log, and no gap
/// record can say so (the counts died with the process; they were logged and in the metrics).
#[test]
fn a_writer_that_stops_during_an_outage_leaves_a_log_that_verifies() {
    require_root();
    let fs_ = Tmpfs::mount("stop", "160k");
    let room = ballast(&fs_.dir, 0);
    let dir = fs_.dir.join("audit");
    let opts = AuditOptions {
        max_age: None,
        ..Default::default()
    };
    let mut log = AuditLog::open(&dir, opts.clone()).unwrap();
    let mut n = 0;
    while log
        .append(&rec(n))
        .and_then(|_| {
            if n.is_multiple_of(10) {
                log.flush()
            } else {
                Ok(())
            }
        })
        .is_ok()
    {
        n += 1;
    }
    drop(log);
    fs::remove_file(room).unwrap();
    let mut log = AuditLog::open(&dir, opts).unwrap();
    log.append(&rec(1_000_000)).unwrap();
    log.close().unwrap();
    let report = audit::verify(std::slice::from_ref(&dir), None).unwrap();
    assert!(report.records >= 2);
    assert_eq!(numbers(&dir).last(), Some(&1_000_000));
    println!("{report}");
}
