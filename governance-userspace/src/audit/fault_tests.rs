//! Outages (failed writes, retries, gap records), retention with its checkpoint, and the
//! `since` seek. Faults are injected with [`AuditOptions::fault`] (every write and fsync fails
//! with ENOSPC while it is set); time for the backoff is a manual [`Clock`]. The same on a real
//! full filesystem: `tests/tests/audit_faults.rs`.

use std::sync::atomic::AtomicBool;

use super::*;
use crate::events::{Record, RecordType};

fn rec(i: u64) -> Value {
    json!({"type": "decision", "agent": "a", "n": i})
}

/// A log with a manual clock and a fault switch; retries after 1 s, doubling up to 4 s.
fn faulty() -> (AuditOptions, Clock, Arc<AtomicBool>) {
    let clock = Clock::manual();
    let fault = Arc::new(AtomicBool::new(false));
    let opts = AuditOptions {
        max_bytes: 1 << 30,
        max_age: None,
        retry: Backoff {
            first: Duration::from_secs(1),
            max: Duration::from_secs(4),
        },
        clock: clock.clone(),
        fault: fault.clone(),
        ..Default::default()
    };
    (opts, clock, fault)
}

fn check(dir: &Path, key: Option<VerifyingKey>) -> Result<VerifyReport, AuditError> {
    verify(&[dir.to_path_buf()], key)
}

fn set(fault: &AtomicBool, on: bool) {
    fault.store(on, Ordering::Relaxed);
}

#[test]
fn a_failed_flush_becomes_a_gap_that_counts_exactly_what_was_lost() {
    let dir = tempfile::tempdir().unwrap();
    let (opts, clock, fault) = faulty();
    let mut log = AuditLog::open(dir.path(), opts).unwrap();
    let health = log.health();
    for i in 0..10 {
        log.append(&rec(i)).unwrap();
    }
    log.flush().unwrap();
    // Five buffered records, then the disk fills up.
    for i in 10..15 {
        log.append(&rec(i)).unwrap();
    }
    set(&fault, true);
    assert!(matches!(log.flush(), Err(AuditError::Io { .. })));
    assert!(!health.writable());
    assert_eq!(health.write_failures(), 1);
    // Refused while failing, and while the backoff runs even once the disk has room.
    for i in 0..3 {
        assert!(matches!(
            log.append(&rec(100 + i)),
            Err(AuditError::Unavailable { .. })
        ));
    }
    set(&fault, false);
    clock.advance(Duration::from_millis(999));
    let err = log.append(&rec(103)).unwrap_err().to_string();
    assert!(err.contains("4 records not written so far"), "{err}");
    assert_eq!(health.view().refused_now, 4);
    assert_eq!(health.write_failures(), 1, "no retry before the backoff");
    // Due: the next record brings the retry; the gap record comes first.
    clock.advance(Duration::from_millis(1));
    assert_eq!(log.append(&rec(200)).unwrap(), 11);
    assert!(health.writable());
    log.close().unwrap();

    let report = check(dir.path(), None).unwrap();
    assert_eq!(report.records, 12, "10 + the gap + 1");
    assert_eq!(report.lost_records, 9, "5 buffered + 4 refused");
    let (seq, gap) = &report.gaps[0];
    assert_eq!(*seq, 10);
    assert_eq!(gap.lost, 9);
    assert_eq!(gap.after_seq, Some(9));
    assert_eq!(gap.failures, 1);
    assert!(
        gap.cause.contains("No space left on device"),
        "{}",
        gap.cause
    );
    assert!(gap.from <= gap.failed_at && gap.failed_at <= gap.until);
    assert!(report.to_string().contains("1 gap(s), 9 records lost"));
    let v = health.view();
    assert_eq!(
        (v.state.as_str(), v.records_lost, v.gaps, v.refused_now),
        ("ok", 9, 1, 0)
    );
}

/// Red team round 35: an agent that fills the audit filesystem pushes its own refusals out of
/// the log. The gap record says whose records it lost and how many of them were refusals:
/// buffered ones and refused ones, of each agent; records of no agent count in `lost` only.
#[test]
fn a_gap_counts_each_agent_s_lost_records_and_refusals() {
    let dir = tempfile::tempdir().unwrap();
    let (opts, clock, fault) = faulty();
    let mut log = AuditLog::open(dir.path(), opts).unwrap();
    let owner = |agent: &str, cgroup_id| Owner {
        agent: agent.into(),
        cgroup_id,
        cgroup: format!("agents/{agent}"),
    };
    let (hider, other) = (owner("hider", 7), owner("other", 8));
    // Durable: not lost, not counted.
    log.append_json_by(b"{}", Some((hider.clone(), true)))
        .unwrap();
    log.flush().unwrap();
    // Buffered when the disk fills up: lost.
    log.append_json_by(b"{}", Some((hider.clone(), true)))
        .unwrap();
    log.append_json_by(b"{}", Some((other.clone(), false)))
        .unwrap();
    log.append_json(b"{}").unwrap();
    set(&fault, true);
    assert!(log.flush().is_err());
    // Refused during the outage.
    for denied in [true, true, false] {
        assert!(
            log.append_json_by(b"{}", Some((hider.clone(), denied)))
                .is_err()
        );
    }
    assert!(
        log.append_by(&rec(1), Some((other.clone(), false)))
            .is_err()
    );
    set(&fault, false);
    clock.advance(Duration::from_secs(1));
    log.append_json(b"{}").unwrap();
    log.close().unwrap();

    let report = check(dir.path(), None).unwrap();
    let (_, gap) = &report.gaps[0];
    assert_eq!(gap.lost, 7);
    let loss = |owner: &Owner, lost, denied| AgentLoss {
        owner: owner.clone(),
        lost,
        denied,
    };
    assert_eq!(gap.by_agent, [loss(&hider, 4, 3), loss(&other, 2, 0)]);
    let text = report.to_string();
    assert!(
        text.contains("agent=\"hider\" cgroup=\"agents/hider\": 4 lost, 3 of them refusals"),
        "{text}"
    );
}

/// Red team round 32: the active file removed (or replaced) outside the daemon. Its records
/// are gone with it: the next flush fails, and the gap record after it counts every record the
/// files on disk no longer hold, with the cause.
#[test]
fn a_removed_file_is_an_outage_whose_gap_counts_what_it_held() {
    for replaced in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let (opts, clock, _fault) = faulty();
        let mut log = AuditLog::open(dir.path(), opts).unwrap();
        let health = log.health();
        for i in 0..10 {
            log.append(&rec(i)).unwrap();
        }
        log.flush().unwrap();
        let file = files_in(dir.path()).pop().unwrap();
        let copy = std::fs::read(&file).unwrap();
        std::fs::remove_file(&file).unwrap();
        if replaced {
            // A file at its name that carries a chain of its own (here the ten lines it held:
            // whatever it claims, what the writer wrote to the file it had is what is lost).
            std::fs::write(&file, &copy).unwrap();
        }
        for i in 10..13 {
            log.append(&rec(i)).unwrap();
        }
        let err = log.flush().unwrap_err().to_string();
        assert!(err.contains("removed or replaced"), "{err}");
        assert!(!health.writable());
        clock.advance(Duration::from_secs(1));
        assert!(log.retry());
        log.append(&rec(13)).unwrap();
        log.close().unwrap();
        let report = check(dir.path(), None).unwrap();
        assert_eq!(
            report.lost_records, 13,
            "replaced {replaced}: 10 flushed + 3 buffered"
        );
        let (seq, gap) = &report.gaps[0];
        let at = if replaced { (10, Some(9)) } else { (0, None) };
        assert_eq!((*seq, gap.after_seq), at, "replaced {replaced}");
        assert!(gap.cause.contains("removed or replaced"), "{}", gap.cause);
    }
}

#[test]
fn retries_back_off_doubling_up_to_the_bound() {
    let dir = tempfile::tempdir().unwrap();
    let (opts, clock, fault) = faulty();
    let mut log = AuditLog::open(dir.path(), opts).unwrap();
    let health = log.health();
    assert_eq!(log.retry_in(), None);
    log.append(&rec(0)).unwrap();
    set(&fault, true);
    log.flush().unwrap_err();
    let mut waits = Vec::new();
    for _ in 0..4 {
        let wait = log.retry_in().unwrap();
        waits.push(wait.as_secs());
        // Not due: no attempt.
        assert!(!log.retry());
        clock.advance(wait);
        assert!(!log.retry(), "still full");
    }
    assert_eq!(waits, [1, 2, 4, 4]);
    assert_eq!(health.write_failures(), 5);
    set(&fault, false);
    clock.advance(log.retry_in().unwrap());
    assert!(log.retry());
    assert_eq!(log.retry_in(), None);
    log.close().unwrap();
    let report = check(dir.path(), None).unwrap();
    assert_eq!(report.gaps.len(), 1);
    assert_eq!((report.gaps[0].1.lost, report.gaps[0].1.failures), (1, 5));
}

#[test]
fn a_failed_append_is_lost_and_counted_and_a_seal_is_not_a_record() {
    let dir = tempfile::tempdir().unwrap();
    let (mut opts, clock, fault) = faulty();
    opts.signing_key = Some(SigningKey::from_bytes(&[3; 32]));
    opts.max_bytes = 600;
    let mut log = AuditLog::open(dir.path(), opts).unwrap();
    for i in 0..3 {
        log.append(&rec(i)).unwrap();
    }
    log.flush().unwrap();
    // The next append rotates: the seal and the record fail.
    let mut i = 3;
    while fs::metadata(files_in(dir.path())[0].clone()).unwrap().len() < 600 {
        log.append(&rec(i)).unwrap();
        log.flush().unwrap();
        i += 1;
    }
    set(&fault, true);
    log.append(&rec(i)).unwrap_err();
    set(&fault, false);
    clock.advance(Duration::from_secs(1));
    log.append(&rec(i + 1)).unwrap();
    log.close().unwrap();
    let report = check(
        dir.path(),
        Some(SigningKey::from_bytes(&[3; 32]).verifying_key()),
    )
    .unwrap();
    assert_eq!(report.lost_records, 1);
    assert_eq!(report.records, i + 2, "{report}");
}

#[test]
fn close_during_an_outage_retries_once() {
    let dir = tempfile::tempdir().unwrap();
    let (opts, _clock, fault) = faulty();
    let mut log = AuditLog::open(dir.path(), opts.clone()).unwrap();
    log.append(&rec(0)).unwrap();
    set(&fault, true);
    log.flush().unwrap_err();
    log.append(&rec(1)).unwrap_err();
    set(&fault, false);
    log.close().unwrap();
    let report = check(dir.path(), None).unwrap();
    assert_eq!((report.records, report.lost_records), (1, 2));

    // Still failing: close says so, and nothing on disk claims more than was written.
    let mut log = AuditLog::open(dir.path(), opts).unwrap();
    log.append(&rec(2)).unwrap();
    set(&fault, true);
    log.flush().unwrap_err();
    assert!(matches!(log.close(), Err(AuditError::Unavailable { .. })));
    assert_eq!(check(dir.path(), None).unwrap().records, 1);
}

#[test]
fn a_gap_record_is_checked_against_its_place() {
    let dir = tempfile::tempdir().unwrap();
    let (opts, clock, fault) = faulty();
    let mut log = AuditLog::open(dir.path(), opts).unwrap();
    log.append(&rec(0)).unwrap();
    log.flush().unwrap();
    set(&fault, true);
    log.append(&rec(1)).unwrap_err();
    set(&fault, false);
    clock.advance(Duration::from_secs(1));
    log.append(&rec(2)).unwrap();
    log.close().unwrap();
    // A forger who rewrites the gap's `after_seq` (and the chain) is caught by the check.
    let path = files_in(dir.path())[0].clone();
    let text = fs::read_to_string(&path).unwrap();
    let edited = text.replace("\"after_seq\":0", "\"after_seq\":5");
    assert_ne!(text, edited);
    let mut out = Vec::new();
    let mut prev = ZERO_HASH;
    for line in edited.lines() {
        let l = parse_line(line.as_bytes()).unwrap();
        let hash = chain_hash(&prev, l.seq, l.body);
        write_framed(&mut out, l.seq, &prev, &hash, l.body).unwrap();
        prev = hash;
    }
    fs::write(&path, out).unwrap();
    let err = check(dir.path(), None).unwrap_err().to_string();
    assert!(
        err.contains("the gap record says it follows seq Some(5)"),
        "{err}"
    );
}

#[test]
fn block_refuses_only_during_an_outage_and_counts() {
    let h = AuditHealth::new(OnFailure::Block);
    assert_eq!(h.refusal(), None);
    h.down.store(true, Ordering::Relaxed);
    let why = h.refusal().unwrap();
    assert!(why.contains("--audit-on-failure is block"), "{why}");
    assert_eq!(h.blocked(), 1);
    let c = AuditHealth::new(OnFailure::Continue);
    c.down.store(true, Ordering::Relaxed);
    assert_eq!(c.refusal(), None);
    assert_eq!(c.view().state, "failing");
}

fn files_in(dir: &Path) -> Vec<PathBuf> {
    list_files(dir)
        .unwrap()
        .into_iter()
        .map(|(_, p)| p)
        .collect()
}

fn key(n: u8) -> SigningKey {
    SigningKey::from_bytes(&[n; 32])
}

fn rotating(max_bytes: u64, signing_key: Option<SigningKey>) -> AuditOptions {
    AuditOptions {
        max_bytes,
        max_age: None,
        signing_key,
        ..Default::default()
    }
}

fn write(dir: &Path, n: u64, opts: AuditOptions) {
    let mut log = AuditLog::open(dir, opts).unwrap();
    for i in 0..n {
        log.append(&rec(i)).unwrap();
    }
    log.close().unwrap();
}

fn dir_bytes(dir: &Path) -> u64 {
    files_in(dir)
        .iter()
        .map(|p| fs::metadata(p).unwrap().len())
        .sum()
}

#[test]
fn retention_by_size_leaves_a_signed_checkpoint_that_verify_starts_from() {
    let dir = tempfile::tempdir().unwrap();
    let opts = AuditOptions {
        retain_bytes: Some(5000),
        ..rotating(1000, Some(key(7)))
    };
    write(dir.path(), 200, opts.clone());
    let kept = files_in(dir.path());
    assert!(
        dir_bytes(dir.path()) <= 5000 + 1500,
        "{}",
        dir_bytes(dir.path())
    );
    assert!(kept.len() >= 3);
    let pk = key(7).verifying_key();
    let report = check(dir.path(), Some(pk)).unwrap();
    assert!(report.first_seq > 0);
    assert_eq!(report.checkpoint_signed, Some(true));
    assert_eq!(
        report.last_seq,
        Some(report.first_seq + report.records + report.seals - 1)
    );
    assert!(
        report
            .to_string()
            .contains("older files removed by retention")
    );
    // Reopened, it goes on, and verifies again.
    write(dir.path(), 50, opts);
    check(dir.path(), Some(pk)).unwrap();

    // Another key is refused.
    let err = check(dir.path(), Some(key(8).verifying_key())).unwrap_err();
    assert!(
        err.to_string()
            .contains("retention checkpoint was signed with key"),
        "{err}"
    );
    // Removing the oldest file kept breaks the link to the checkpoint.
    let oldest = files_in(dir.path())[0].clone();
    let saved = fs::read(&oldest).unwrap();
    fs::remove_file(&oldest).unwrap();
    let err = check(dir.path(), Some(pk)).unwrap_err().to_string();
    assert!(
        err.contains("the retention checkpoint says the log continues at seq"),
        "{err}"
    );
    fs::write(&oldest, saved).unwrap();
    // A changed checkpoint no longer verifies.
    let cp_path = dir.path().join(CHECKPOINT);
    let cp = fs::read_to_string(&cp_path).unwrap();
    let mut v: Value = serde_json::from_str(&cp).unwrap();
    v["seq"] = json!(v["seq"].as_u64().unwrap() + 1);
    fs::write(&cp_path, serde_json::to_vec(&v).unwrap()).unwrap();
    let err = check(dir.path(), Some(pk)).unwrap_err().to_string();
    assert!(err.contains("signature does not verify"), "{err}");
    fs::write(&cp_path, cp).unwrap();
    check(dir.path(), Some(pk)).unwrap();
}

#[test]
fn an_unsigned_checkpoint_verifies_without_a_key_only() {
    let dir = tempfile::tempdir().unwrap();
    let opts = AuditOptions {
        retain_bytes: Some(3000),
        ..rotating(1000, None)
    };
    write(dir.path(), 100, opts);
    let report = check(dir.path(), None).unwrap();
    assert_eq!(report.checkpoint_signed, Some(false));
    let err = check(dir.path(), Some(key(7).verifying_key())).unwrap_err();
    assert!(err.to_string().contains("not signed"), "{err}");
    // A checkpoint whose hash the oldest file does not continue.
    let cp_path = dir.path().join(CHECKPOINT);
    let mut v: Value = serde_json::from_slice(&fs::read(&cp_path).unwrap()).unwrap();
    v["prev"] = json!("0".repeat(64));
    fs::write(&cp_path, serde_json::to_vec(&v).unwrap()).unwrap();
    let err = check(dir.path(), None).unwrap_err().to_string();
    assert!(err.contains("does not continue it"), "{err}");
}

#[test]
fn retention_by_age_removes_files_last_written_before_it() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), 60, rotating(1000, Some(key(7))));
    let all = files_in(dir.path());
    assert!(all.len() >= 4);
    let now = SystemTime::now();
    let old = now - Duration::from_secs(10 * 86400);
    // The two oldest files were last written ten days ago.
    for p in &all[..2] {
        File::options()
            .write(true)
            .open(p)
            .unwrap()
            .set_modified(old)
            .unwrap();
    }
    let removed = retain(
        dir.path(),
        None,
        Some(Duration::from_secs(86400)),
        Some(&key(7)),
        now,
    )
    .unwrap();
    assert_eq!(removed, 2);
    assert_eq!(files_in(dir.path()), all[2..]);
    let report = check(dir.path(), Some(key(7).verifying_key())).unwrap();
    assert_eq!(
        report.first_seq,
        seq_in_name(all[2].file_name().unwrap()).unwrap()
    );
    // Nothing more is old enough.
    assert_eq!(
        retain(
            dir.path(),
            None,
            Some(Duration::from_secs(86400)),
            None,
            now
        )
        .unwrap(),
        0
    );
}

#[test]
fn files_left_by_an_interrupted_retention_are_skipped() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), 60, rotating(1000, None));
    let all = files_in(dir.path());
    let first = fs::read(&all[0]).unwrap();
    retain(
        dir.path(),
        Some(dir_bytes(dir.path()) / 2),
        None,
        None,
        SystemTime::now(),
    )
    .unwrap();
    assert!(!all[0].exists());
    // The writer stopped after the checkpoint, before removing the first file.
    fs::write(&all[0], first).unwrap();
    let report = check(dir.path(), None).unwrap();
    assert!(report.first_seq > 0);
}

fn at(secs: u64) -> Record {
    let mut r = Record::daemon(RecordType::Lifecycle, "test.tick", secs.to_string());
    r.id = format!("id-{secs}");
    r.time = crate::events::rfc3339(SystemTime::UNIX_EPOCH + Duration::from_secs(secs));
    r
}

#[test]
fn since_seeks_to_the_file_that_holds_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = AuditLog::open(dir.path(), rotating(2000, None)).unwrap();
    for s in 0..300 {
        log.append(&at(1000 + s)).unwrap();
    }
    log.close().unwrap();
    let files = list_files(dir.path()).unwrap();
    assert!(files.len() > 10);
    let time = |s: u64| SystemTime::UNIX_EPOCH + Duration::from_secs(s);
    // Before everything, at the first record, far after.
    assert_eq!(seek(&files, time(0)), 0);
    assert_eq!(seek(&files, time(1000)), 0);
    assert_eq!(seek(&files, time(99_999)), files.len() - 1);
    for since in [1001, 1100, 1150, 1233, 1299] {
        let i = seek(&files, time(since));
        // The file holds `since`: it starts before, the next one at or after it.
        let first = files[i].0;
        assert!(1000 + first < since, "{since}: file {i} starts at {first}");
        if let Some((next, _)) = files.get(i + 1) {
            assert!(1000 + next >= since);
        }
        let mut got = Vec::new();
        replay(dir.path(), time(since), u64::MAX, |r| {
            got.push(r.message);
            true
        })
        .unwrap();
        let want: Vec<String> = (since..1300).map(|s| s.to_string()).collect();
        assert_eq!(got, want, "since {since}");
    }
    // A file whose first line cannot be read counts as after `since`: read, not skipped.
    let m = files.len() / 2;
    let since = 1000 + files[m].0 + 1;
    assert_eq!(seek(&files, time(since)), m);
    let text = fs::read(&files[m].1).unwrap();
    fs::write(&files[m].1, [b"garbage\n".as_slice(), &text].concat()).unwrap();
    assert_eq!(seek(&files, time(since)), m - 1);
    let mut got = 0;
    replay(dir.path(), time(since), u64::MAX, |_| {
        got += 1;
        true
    })
    .unwrap();
    assert_eq!(got, 1300 - since);
}
