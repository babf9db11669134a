use std::process::{Command, Stdio};

use super::*;

fn rec(i: u64) -> Value {
    json!({
        "type": "decision",
        "agent": "claude",
        "verdict": "allow",
        "n": i,
        "object": format!("path=/work/file-{i}"),
    })
}

fn opts() -> AuditOptions {
    AuditOptions {
        max_bytes: 1 << 30,
        max_age: None,
        ..Default::default()
    }
}

fn signed(max_bytes: u64) -> AuditOptions {
    AuditOptions {
        max_bytes,
        max_age: None,
        signing_key: Some(key(7)),
        ..Default::default()
    }
}

fn key(n: u8) -> SigningKey {
    SigningKey::from_bytes(&[n; 32])
}

/// Append records `from..to`, flushing every 7, then close.
fn write(dir: &Path, from: u64, to: u64, opts: AuditOptions) {
    let mut log = AuditLog::open(dir, opts).unwrap();
    for i in from..to {
        assert_eq!(log.append(&rec(i)).unwrap(), log.next_seq() - 1);
        if i % 7 == 0 {
            log.flush().unwrap();
        }
    }
    log.close().unwrap();
}

fn check(dir: &Path, key: Option<VerifyingKey>) -> Result<VerifyReport, AuditError> {
    verify(&[dir.to_path_buf()], key)
}

/// The first broken line: (file, line, seq, problem).
fn broken(result: Result<VerifyReport, AuditError>) -> (PathBuf, u64, Option<u64>, String) {
    match result {
        Err(AuditError::Broken {
            path,
            line,
            seq,
            problem,
        }) => (path, line, seq, problem),
        other => panic!("expected a broken line, got {other:?}"),
    }
}

fn files(dir: &Path) -> Vec<PathBuf> {
    list_files(dir)
        .unwrap()
        .into_iter()
        .map(|(_, p)| p)
        .collect()
}

fn lines(path: &Path) -> Vec<Vec<u8>> {
    fs::read(path)
        .unwrap()
        .split_inclusive(|&b| b == b'\n')
        .map(<[u8]>::to_vec)
        .collect()
}

fn write_lines(path: &Path, lines: &[Vec<u8>]) {
    fs::write(path, lines.concat()).unwrap();
}

/// Flip one bit of line `line` (1-based), at the first occurrence of `needle` plus `offset`.
fn flip(path: &Path, line: usize, needle: &str, offset: usize) {
    let mut all = lines(path);
    let l = &mut all[line - 1];
    let at = l
        .windows(needle.len())
        .position(|w| w == needle.as_bytes())
        .unwrap()
        + offset;
    l[at] ^= 0x01;
    write_lines(path, &all);
}

/// Rewrite every line of the log, recomputing the chain as a forger would: `edit` changes
/// records; seals get the new last_hash, and a new signature when `resign` is given.
fn rechain(dir: &Path, edit: impl Fn(u64, &mut Value), resign: Option<&SigningKey>) {
    let mut prev = ZERO_HASH;
    for path in files(dir) {
        let mut out = Vec::new();
        for line in lines(&path) {
            let rec = parse_line(line.strip_suffix(b"\n").unwrap()).unwrap();
            let mut value: Value = serde_json::from_slice(rec.value).unwrap();
            let body = if rec.seal {
                value["last_hash"] = json!(to_hex(&prev));
                if let Some(k) = resign {
                    value["public_key"] = json!(to_hex(k.verifying_key().as_bytes()));
                    value["signature"] = json!(to_hex(&k.sign(&seal_message(&prev)).to_bytes()));
                }
                [b"\"seal\":".to_vec(), serde_json::to_vec(&value).unwrap()].concat()
            } else {
                edit(rec.seq, &mut value);
                [b"\"record\":".to_vec(), serde_json::to_vec(&value).unwrap()].concat()
            };
            let hash = chain_hash(&prev, rec.seq, &body);
            write_framed(&mut out, rec.seq, &prev, &hash, &body).unwrap();
            prev = hash;
        }
        fs::write(&path, out).unwrap();
    }
}

#[test]
fn written_records_verify_and_are_counted() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), 0, 100, opts());
    // Reopening an unsealed file appends to it.
    write(dir.path(), 100, 150, opts());
    let report = check(dir.path(), None).unwrap();
    assert_eq!(
        (
            report.files,
            report.records,
            report.seals,
            report.recoveries
        ),
        (1, 150, 0, 0)
    );
    assert_eq!(report.last_seq, Some(149));
    assert_eq!(report.unsealed_records, 150);

    let first = &lines(&files(dir.path())[0])[0];
    let text = std::str::from_utf8(first).unwrap();
    assert!(text.starts_with(&format!(
        "{{\"seq\":0,\"prev\":\"{}\",\"hash\":\"",
        "0".repeat(64)
    )));
    assert!(text.ends_with(
        ",\"record\":{\"agent\":\"claude\",\"n\":0,\"object\":\"path=/work/file-0\",\"type\":\"decision\",\"verdict\":\"allow\"}}\n"
    ));
    // The line as a whole is JSON.
    let parsed: Value = serde_json::from_slice(first).unwrap();
    assert_eq!(parsed["record"], rec(0));
}

#[test]
fn last_hash_matches_the_report() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = AuditLog::open(dir.path(), opts()).unwrap();
    for i in 0..10 {
        log.append(&rec(i)).unwrap();
    }
    let last = log.last_hash();
    log.close().unwrap();
    assert_eq!(check(dir.path(), None).unwrap().last_hash, last);
}

#[test]
fn flipped_bytes_are_reported_at_their_record() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), 0, 20, opts());
    let path = files(dir.path()).remove(0);
    let original = fs::read(&path).unwrap();

    // (line, where, offset into it): a record body, the hash field, the prev field, the seq,
    // and the body of the last line of the active file.
    let cases = [
        (5, "claude", 0),
        (10, "\"hash\":\"", 20),
        (12, "\"prev\":\"", 9),
        (7, "\"seq\":", 6),
        (20, "file-19", 5),
    ];
    for (line, needle, offset) in cases {
        fs::write(&path, &original).unwrap();
        flip(&path, line, needle, offset);
        let (p, l, seq, problem) = broken(check(dir.path(), None));
        assert_eq!(p, path);
        assert_eq!(l, line as u64, "{needle}: {problem}");
        if needle != "\"seq\":" {
            assert_eq!(seq, Some(line as u64 - 1));
        }
        assert!(problem.contains("hash mismatch"), "{problem}");
    }

    // The final newline of the active file.
    let mut bytes = original.clone();
    *bytes.last_mut().unwrap() ^= 0x01;
    fs::write(&path, &bytes).unwrap();
    let (_, l, _, problem) = broken(check(dir.path(), None));
    assert_eq!(l, 20);
    assert!(problem.contains("no trailing newline"), "{problem}");

    // Uppercase hex spells the same hash but is not what the writer wrote.
    let text = String::from_utf8(original.clone()).unwrap();
    let at = text.find("\"hash\":\"").unwrap() + 8;
    let hex_letter = at + text[at..].find(|c: char| c.is_ascii_lowercase()).unwrap();
    let mut bytes = original.clone();
    bytes[hex_letter] ^= 0x20;
    fs::write(&path, &bytes).unwrap();
    let (_, l, _, problem) = broken(check(dir.path(), None));
    assert_eq!(l, 1);
    assert!(problem.contains("not an audit record"), "{problem}");
}

#[test]
fn every_flipped_bit_is_caught_at_its_line() {
    let dir = tempfile::tempdir().unwrap();
    // Small records and files, signed: three sealed files.
    let mut log = AuditLog::open(dir.path(), signed(300)).unwrap();
    for i in 0..6 {
        log.append(&json!({"n": i})).unwrap();
    }
    log.close().unwrap();
    let all = files(dir.path());
    assert_eq!(all.len(), 3);
    let public = key(7).verifying_key();
    assert_eq!(check(dir.path(), Some(public)).unwrap().seals, 3);

    for path in &all {
        let original = fs::read(path).unwrap();
        for pos in 0..original.len() {
            let line = 1 + original[..pos].iter().filter(|&&b| b == b'\n').count() as u64;
            for mask in [0x01u8, 0x20, 0x80] {
                let mut bytes = original.clone();
                bytes[pos] ^= mask;
                fs::write(path, &bytes).unwrap();
                let keys: &[Option<VerifyingKey>] = if mask == 0x01 {
                    &[None, Some(public)]
                } else {
                    &[None]
                };
                for &k in keys {
                    let (p, l, _, problem) = broken(check(dir.path(), k));
                    assert_eq!(
                        (&p, l),
                        (path, line),
                        "byte {pos} ^ {mask:#x} of {}: {problem}",
                        path.display()
                    );
                }
            }
        }
        fs::write(path, &original).unwrap();
    }
    check(dir.path(), Some(public)).unwrap();
}

#[test]
fn a_deleted_line_is_reported_at_the_next_seq() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), 0, 20, opts());
    let path = files(dir.path()).remove(0);
    let original = lines(&path);

    let mut cut = original.clone();
    cut.remove(10); // seq 10
    write_lines(&path, &cut);
    let (_, line, seq, problem) = broken(check(dir.path(), None));
    assert_eq!((line, seq), (11, Some(11)));
    assert!(problem.contains("seq 11 follows 9"), "{problem}");
    assert!(problem.contains("missing"), "{problem}");

    let mut cut = original.clone();
    cut.remove(0);
    write_lines(&path, &cut);
    let (_, line, seq, problem) = broken(check(dir.path(), None));
    assert_eq!((line, seq), (1, Some(1)));
    assert!(problem.contains("starts at seq 1"), "{problem}");

    let mut doubled = original.clone();
    doubled.insert(5, original[4].clone());
    write_lines(&path, &doubled);
    let (_, line, seq, problem) = broken(check(dir.path(), None));
    assert_eq!((line, seq), (6, Some(4)));
    assert!(problem.contains("repeated"), "{problem}");
}

#[test]
fn reordered_lines_are_reported_where_the_order_breaks() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), 0, 20, opts());
    let path = files(dir.path()).remove(0);
    let mut all = lines(&path);
    all.swap(5, 6); // seq 5 and 6
    write_lines(&path, &all);
    let (_, line, seq, problem) = broken(check(dir.path(), None));
    assert_eq!((line, seq), (6, Some(6)));
    assert!(problem.contains("out of order"), "{problem}");
}

#[test]
fn a_replaced_record_with_the_right_seq_breaks_prev() {
    // Two logs with the same seqs: a line from the other log has a valid hash and the right
    // seq, but does not chain.
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    write(a.path(), 0, 10, opts());
    write(b.path(), 100, 110, opts());
    let (pa, pb) = (files(a.path()).remove(0), files(b.path()).remove(0));
    let mut mixed = lines(&pa);
    mixed[4] = lines(&pb)[4].clone();
    write_lines(&pa, &mixed);
    let (_, line, seq, problem) = broken(check(a.path(), None));
    assert_eq!((line, seq), (5, Some(4)));
    assert!(problem.contains("prev does not match"), "{problem}");
}

#[test]
fn rotation_by_size_chains_across_files() {
    let dir = tempfile::tempdir().unwrap();
    let small = AuditOptions {
        max_bytes: 2000,
        ..opts()
    };
    write(dir.path(), 0, 60, small);
    let all = files(dir.path());
    assert!(all.len() >= 3, "{} files", all.len());
    for path in &all {
        assert!(fs::metadata(path).unwrap().len() < 2000 + 300);
    }
    let report = check(dir.path(), None).unwrap();
    assert_eq!((report.files, report.records), (all.len(), 60));
    // Files may also be named one by one.
    assert_eq!(verify(&all, None).unwrap(), report);

    // A deleted middle file leaves a gap in seq.
    let middle = &all[all.len() / 2];
    let middle_lines = lines(middle).len() as u64;
    fs::remove_file(middle).unwrap();
    let (p, line, _, problem) = broken(check(dir.path(), None));
    assert_eq!((&p, line), (&all[all.len() / 2 + 1], 1));
    assert!(
        problem.contains(&format!("{middle_lines} record(s) are missing")),
        "{problem}"
    );
}

#[test]
fn rotation_by_size_seals_every_file_when_signing() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), 0, 60, signed(2000));
    // Reopening a sealed log starts a new file.
    write(dir.path(), 60, 65, signed(2000));
    let all = files(dir.path());
    let public = key(7).verifying_key();
    let report = check(dir.path(), Some(public)).unwrap();
    assert_eq!(report.files, all.len());
    assert_eq!(report.seals, all.len() as u64);
    assert_eq!((report.records, report.unsealed_records), (65, 0));
    for path in &all {
        let last = lines(path).pop().unwrap();
        assert!(parse_line(&last[..last.len() - 1]).unwrap().seal);
    }

    // Cutting a middle file's seal leaves a gap in seq.
    let middle = &all[1];
    let mut cut = lines(middle);
    cut.pop();
    write_lines(middle, &cut);
    let (p, line, _, problem) = broken(check(dir.path(), None));
    assert_eq!((&p, line), (&all[2], 1));
    assert!(problem.contains("missing"), "{problem}");
}

#[test]
fn an_unsealed_older_file_fails_when_a_key_is_expected() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        0,
        30,
        AuditOptions {
            max_bytes: 1000,
            ..opts()
        },
    );
    check(dir.path(), None).unwrap();
    match check(dir.path(), Some(key(7).verifying_key())) {
        Err(AuditError::Log { path, problem }) => {
            assert_eq!(path, files(dir.path())[0]);
            assert!(problem.contains("without a seal"), "{problem}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn rotation_by_age() {
    let dir = tempfile::tempdir().unwrap();
    let aged = AuditOptions {
        max_age: Some(Duration::ZERO),
        ..opts()
    };
    write(dir.path(), 0, 4, aged);
    assert_eq!(files(dir.path()).len(), 4);
    assert_eq!(check(dir.path(), None).unwrap().records, 4);
}

#[test]
fn a_torn_tail_is_cut_and_the_chain_continues() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), 0, 10, opts());
    let path = files(dir.path()).remove(0);
    let fragment = b"{\"seq\":10,\"prev\":\"0123";
    let mut bytes = fs::read(&path).unwrap();
    let good_len = bytes.len();
    bytes.extend_from_slice(fragment);
    fs::write(&path, &bytes).unwrap();
    let (_, line, _, problem) = broken(check(dir.path(), None));
    assert_eq!(line, 11);
    assert!(problem.contains("no trailing newline"), "{problem}");

    let mut log = AuditLog::open(dir.path(), opts()).unwrap();
    assert_eq!(log.next_seq(), 11, "the recovery record takes seq 10");
    for i in 0..5 {
        log.append(&rec(i)).unwrap();
    }
    log.close().unwrap();

    let report = check(dir.path(), None).unwrap();
    assert_eq!((report.records, report.recoveries), (16, 1));
    assert_eq!(report.last_seq, Some(15));
    let recovery: Value = serde_json::from_slice(&lines(&path)[10]).unwrap();
    assert_eq!(recovery["seq"], 10);
    let r = &recovery["record"];
    assert_eq!(
        (&r["type"], &r["kind"]),
        (&json!("lifecycle"), &json!("audit.recovered"))
    );
    let cut = &r["audit_cut"];
    assert_eq!(cut["truncated_bytes"], fragment.len());
    assert_eq!(cut["offset"], good_len);
    assert!(cut["reason"].as_str().unwrap().contains("torn"));
    // An event record: `events --since` shows it (red team round 32: it was skipped).
    let mut replayed = Vec::new();
    replay(dir.path(), std::time::UNIX_EPOCH, u64::MAX, |r| {
        replayed.push(r.kind.to_string());
        true
    })
    .unwrap();
    assert!(
        replayed.iter().any(|k| k == "audit.recovered"),
        "{replayed:?}"
    );
}

#[test]
fn recovery_cuts_back_to_the_last_line_whose_hash_verifies() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), 0, 10, opts());
    let path = files(dir.path()).remove(0);
    flip(&path, 10, "file-9", 0); // seq 9: complete but altered
    let mut bytes = fs::read(&path).unwrap();
    let cut = lines(&path)[9].len() + "garbage\n{\"se".len();
    bytes.extend_from_slice(b"garbage\n{\"se");
    fs::write(&path, &bytes).unwrap();

    let log = AuditLog::open(dir.path(), opts()).unwrap();
    assert_eq!(log.next_seq(), 10);
    log.close().unwrap();
    let report = check(dir.path(), None).unwrap();
    assert_eq!((report.records, report.recoveries), (10, 1));
    let recovery: Value = serde_json::from_slice(&lines(&path)[9]).unwrap();
    assert_eq!(recovery["record"]["audit_cut"]["truncated_bytes"], cut);
}

#[test]
fn a_torn_seal_is_cut_and_the_file_sealed_again() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), 0, 10, signed(1 << 30));
    let path = files(dir.path()).remove(0);
    let bytes = fs::read(&path).unwrap();
    fs::write(&path, &bytes[..bytes.len() - 40]).unwrap();
    write(dir.path(), 10, 12, signed(1 << 30));
    let report = check(dir.path(), Some(key(7).verifying_key())).unwrap();
    assert_eq!((report.files, report.seals, report.recoveries), (1, 1, 1));
    assert_eq!(report.records, 13);
}

#[test]
fn empty_directory_and_empty_last_file() {
    let dir = tempfile::tempdir().unwrap();
    AuditLog::open(dir.path(), opts()).unwrap().close().unwrap();
    assert!(files(dir.path()).is_empty());
    assert!(matches!(
        check(dir.path(), None),
        Err(AuditError::Log { .. })
    ));

    write(dir.path(), 0, 5, opts());
    // A crash right after a rotation created the next file.
    fs::write(dir.path().join(file_name(5)), "").unwrap();
    let log = AuditLog::open(dir.path(), opts()).unwrap();
    assert_eq!(log.next_seq(), 5);
    log.close().unwrap();
    write(dir.path(), 5, 8, opts());
    let report = check(dir.path(), None).unwrap();
    assert_eq!((report.files, report.records), (2, 8));
    assert_eq!(lines(&files(dir.path())[1]).len(), 3);

    // An empty newest file that does not continue the chain is refused.
    fs::write(dir.path().join(file_name(9)), "").unwrap();
    let err = AuditLog::open(dir.path(), opts()).err().unwrap();
    assert!(err.to_string().contains("continues at seq 8"), "{err}");
}

#[test]
fn a_second_writer_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let first = AuditLog::open(dir.path(), opts()).unwrap();
    let err = AuditLog::open(dir.path(), opts()).err().unwrap();
    assert!(err.to_string().contains("another writer"), "{err}");
    first.close().unwrap();
    AuditLog::open(dir.path(), opts()).unwrap();
}

#[test]
fn seals_check_the_key() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), 0, 30, signed(1500));
    check(dir.path(), Some(key(7).verifying_key())).unwrap();
    let (p, line, _, problem) = broken(check(dir.path(), Some(key(8).verifying_key())));
    assert_eq!(p, files(dir.path())[0]);
    assert_eq!(line as usize, lines(&p).len());
    assert!(problem.contains("not the expected"), "{problem}");

    // A flipped byte in a seal.
    let last = files(dir.path()).pop().unwrap();
    let n = lines(&last).len();
    flip(&last, n, "\"signature\":\"", 30);
    let (p, line, _, problem) = broken(check(dir.path(), None));
    assert_eq!((p, line as usize), (last, n));
    assert!(problem.contains("hash mismatch"), "{problem}");
}

#[test]
fn a_recomputed_chain_is_caught_by_the_seals() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), 0, 30, signed(1500));
    let public = key(7).verifying_key();
    let alter = |seq: u64, v: &mut Value| {
        if seq == 3 {
            v["verdict"] = json!("block");
        }
    };

    // A forger without the key recomputes every hash: the seals no longer verify.
    rechain(dir.path(), alter, None);
    let (_, _, _, problem) = broken(check(dir.path(), None));
    assert!(problem.contains("signature does not verify"), "{problem}");

    // Re-signed with the forger's own key: consistent in itself, caught only by the key.
    rechain(dir.path(), alter, Some(&key(9)));
    check(dir.path(), None).unwrap();
    let (p, _, _, problem) = broken(check(dir.path(), Some(public)));
    assert_eq!(p, files(dir.path())[0]);
    assert!(problem.contains("not the expected"), "{problem}");
}

#[test]
fn garbage_is_an_error_naming_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(file_name(0));
    fs::write(&path, "hello\n").unwrap();
    let (p, line, seq, problem) = broken(check(dir.path(), None));
    assert_eq!((p, line, seq), (path.clone(), 1, None));
    assert!(problem.contains("not an audit record"), "{problem}");
    assert!(
        broken(verify(std::slice::from_ref(&path), None))
            .3
            .contains("not an audit record")
    );

    // Random bytes and random damage to a real log: errors, never panics, for verify and open.
    let good = tempfile::tempdir().unwrap();
    write(good.path(), 0, 20, signed(1 << 30));
    let good_bytes = fs::read(&files(good.path())[0]).unwrap();
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for round in 0..300 {
        let bytes: Vec<u8> = if round % 2 == 0 {
            let len = (next() % 600) as usize;
            (0..len)
                .map(|_| match next() % 5 {
                    0 => b'\n',
                    1 => b'{',
                    _ => next() as u8,
                })
                .collect()
        } else {
            let mut b = good_bytes.clone();
            for _ in 0..(1 + next() % 8) {
                let at = (next() % b.len() as u64) as usize;
                match next() % 3 {
                    0 => b[at] = next() as u8,
                    1 => {
                        b.remove(at);
                    }
                    _ => b.insert(at, next() as u8),
                }
            }
            b
        };
        let scratch = tempfile::tempdir().unwrap();
        fs::write(scratch.path().join(file_name(0)), &bytes).unwrap();
        let _ = check(scratch.path(), None);
        let _ = check(scratch.path(), Some(key(7).verifying_key()));
        // Open repairs only a damaged tail, so the log may still fail to verify.
        if let Ok(log) = AuditLog::open(scratch.path(), opts()) {
            log.close().unwrap();
        }
    }
}

#[test]
fn signing_key_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.key");
    let created = load_or_create_key(&path).unwrap();
    let meta = fs::metadata(&path).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    assert_eq!(meta.len(), 65);
    assert_eq!(
        load_or_create_key(&path).unwrap().to_bytes(),
        created.to_bytes()
    );

    fs::write(&path, [3u8; 32]).unwrap();
    assert_eq!(load_or_create_key(&path).unwrap().to_bytes(), [3; 32]);
    fs::write(&path, "not a key\n").unwrap();
    let err = load_or_create_key(&path).err().unwrap();
    assert!(matches!(err, AuditError::Key { .. }));
    assert!(err.to_string().contains("audit.key"), "{err}");
}

const CRASH_DIR_ENV: &str = "GOVERNANCE_AUDIT_CRASH_DIR";

/// Files of several buffers, so that buffer spills (mid-line) and rotations both happen.
fn crash_opts() -> AuditOptions {
    signed(200_000)
}

/// The writer of `sigkill_mid_write_is_recovered`: a no-op unless that test runs it.
#[test]
fn crash_writer_child() {
    let Some(dir) = std::env::var_os(CRASH_DIR_ENV) else {
        return;
    };
    let mut log = AuditLog::open(Path::new(&dir), crash_opts()).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut i = 0;
    while Instant::now() < deadline {
        log.append(&rec(i)).unwrap();
        i += 1;
        // Batches larger than the 64 KiB buffer: it spills mid-line, so a kill can tear one.
        if i % 1000 == 0 {
            log.flush().unwrap();
        }
    }
}

fn dir_size(dir: &Path) -> u64 {
    files(dir)
        .iter()
        .map(|p| fs::metadata(p).map_or(0, |m| m.len()))
        .sum()
}

#[test]
fn sigkill_mid_write_is_recovered() {
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut size = 0;
    for round in 0..6 {
        let mut child = Command::new(&exe)
            .args([
                "--exact",
                "audit::tests::crash_writer_child",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CRASH_DIR_ENV, dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        while dir_size(dir.path()) < size + 300_000 {
            if let Some(status) = child.try_wait().unwrap() {
                panic!("the writer exited: {status}");
            }
            assert!(Instant::now() < deadline, "the writer made no progress");
            // Poll interval; the deadline above bounds the wait for its progress.
            std::thread::sleep(Duration::from_millis(1));
        }
        // A different moment in the write cycle each round (0-15 ms after the mark): where
        // the kill lands is what the test varies, not a wait for anything.
        std::thread::sleep(Duration::from_millis(round * 3));
        child.kill().unwrap();
        child.wait().unwrap();
        size = dir_size(dir.path());
    }
    let mut log = AuditLog::open(dir.path(), crash_opts()).unwrap();
    log.append(&rec(0)).unwrap();
    log.close().unwrap();
    let report = check(dir.path(), Some(key(7).verifying_key())).unwrap();
    assert!(report.records > 4000, "{report:?}");
    assert_eq!(report.unsealed_records, 0);
    assert_eq!(report.seals, report.files as u64);
}

#[test]
#[ignore = "measures throughput: cargo test --release -p governance-userspace --lib audit -- --ignored --nocapture"]
fn append_throughput() {
    let dir = tempfile::tempdir().unwrap();
    let records: Vec<Value> = (0..1000)
        .map(|i| {
            json!({
                "time": "2026-05-01T12:00:00.123456Z",
                "type": "decision",
                "agent": "claude-code",
                "kind": "file",
                "verdict": "allow",
                "denied": false,
                "rule": "workspace/read-only-etc",
                "reason": "reads under /etc are allowed",
                "generation": 3,
                "cgroup_id": 12345 + i,
                "pid": 4242 + i,
                "uid": 1000,
                "comm": "python3",
                "object": format!("path=/home/user/project/src/file-{i}.rs"),
            })
        })
        .collect();
    let n = 1_000_000u64;
    let mut log = AuditLog::open(dir.path(), signed(64 << 20)).unwrap();
    let start = Instant::now();
    for i in 0..n {
        log.append(&records[(i % 1000) as usize]).unwrap();
        if i % 1000 == 999 {
            log.flush().unwrap();
        }
    }
    log.close().unwrap();
    let took = start.elapsed();
    let bytes = dir_size(dir.path());
    println!(
        "appended {n} records ({} bytes/line) with an fsync per 1000 in {took:?}: {:.0} records/s",
        bytes / n,
        n as f64 / took.as_secs_f64()
    );
    let start = Instant::now();
    let report = check(dir.path(), Some(key(7).verifying_key())).unwrap();
    let took = start.elapsed();
    println!(
        "verified {} records in {} files in {took:?}: {:.0} records/s",
        report.records,
        report.files,
        report.records as f64 / took.as_secs_f64()
    );
}

/// A record serialised by the caller is written exactly as `append` writes it.
#[test]
fn append_json_writes_what_append_writes() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut by_value = AuditLog::open(a.path(), AuditOptions::default()).unwrap();
    let mut by_bytes = AuditLog::open(b.path(), AuditOptions::default()).unwrap();
    for i in 0..5 {
        let r = rec(i);
        assert_eq!(
            by_value.append(&r).unwrap(),
            by_bytes
                .append_json(&serde_json::to_vec(&r).unwrap())
                .unwrap()
        );
    }
    assert_eq!(by_value.last_hash(), by_bytes.last_hash());
    by_value.close().unwrap();
    by_bytes.close().unwrap();
    let read = |d: &Path| fs::read(list_files(d).unwrap()[0].1.clone()).unwrap();
    assert_eq!(read(a.path()), read(b.path()));
    assert_eq!(verify(&[b.path().to_owned()], None).unwrap().records, 5);
}
