//! Verification of a log directory: the chain, the seals and the checkpoint.

use super::*;

/// What a successful [`verify`] saw.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VerifyReport {
    pub files: usize,
    /// Records, seals not included (recoveries included).
    pub records: u64,
    pub seals: u64,
    /// `audit.recovered` records: times the writer cut a torn tail after a crash.
    pub recoveries: u64,
    /// Records after the last seal: chained, but covered by no signature.
    pub unsealed_records: u64,
    pub last_seq: Option<u64>,
    /// The hash of the last line, hex: compare it with a copy kept elsewhere to detect a tail
    /// that was cut off.
    pub last_hash: String,
    /// The seq the verified log starts at: 0, or the retention checkpoint's.
    pub first_seq: u64,
    /// With a retention checkpoint: whether it is signed (and the signature verified).
    pub checkpoint_signed: Option<bool>,
    /// Gap records (seq, what they say): records the writer could not write.
    pub gaps: Vec<(u64, Gap)>,
    /// Records lost, by all gap records.
    pub lost_records: u64,
}

/// Verify the log in `paths`: files, or directories of `audit-*.jsonl` files (in seq order),
/// which together must hold the whole log from seq 0 — or, for one directory with a retention
/// checkpoint, from the checkpoint on. Returns the first broken line as
/// [`AuditError::Broken`]. With `public_key`, every seal (and the checkpoint) must be signed by
/// it and every file but the last must be sealed; without, seals and the checkpoint are
/// checked against the key they name.
pub fn verify(
    paths: &[PathBuf],
    public_key: Option<VerifyingKey>,
) -> Result<VerifyReport, AuditError> {
    let mut files = Vec::new();
    let mut checkpoint = None;
    for path in paths {
        let meta = fs::metadata(path).map_err(io_err("reading", path))?;
        if meta.is_dir() {
            let mut found = list_files(path)?;
            if paths.len() == 1
                && let Some(cp) = read_checkpoint(path)?
            {
                check_checkpoint(&cp, public_key, &path.join(CHECKPOINT))?;
                // Files wholly before it were being removed when the writer stopped.
                found.retain(|(first, _)| *first >= cp.seq);
                checkpoint = Some(cp);
            }
            if found.is_empty() {
                return Err(AuditError::Log {
                    path: path.clone(),
                    problem: "no audit-*.jsonl files".into(),
                });
            }
            files.extend(found.into_iter().map(|(_, p)| p));
        } else {
            files.push(path.clone());
        }
    }
    let mut v = Verifier {
        public_key,
        next_seq: checkpoint.as_ref().map_or(0, |c| c.seq),
        last_hash: checkpoint.as_ref().map_or(ZERO_HASH, |c| c.prev),
        report: VerifyReport {
            first_seq: checkpoint.as_ref().map_or(0, |c| c.seq),
            checkpoint_signed: checkpoint.as_ref().map(|c| c.signed.is_some()),
            ..Default::default()
        },
    };
    for (i, path) in files.iter().enumerate() {
        v.file(path, i + 1 == files.len())?;
    }
    v.report.last_hash = to_hex(&v.last_hash);
    Ok(v.report)
}

/// A checkpoint's signature: by the expected key when one is given (then it must be signed),
/// else by the key it names.
pub(super) fn check_checkpoint(
    cp: &Checkpoint,
    expected: Option<VerifyingKey>,
    path: &Path,
) -> Result<(), AuditError> {
    let bad = |problem: String| AuditError::Log {
        path: path.to_path_buf(),
        problem,
    };
    match (&cp.signed, expected) {
        (None, Some(_)) => Err(bad(
            "the retention checkpoint is not signed, but a public key is expected".into(),
        )),
        (None, None) => Ok(()),
        (Some((named, _)), Some(expected)) if *named != expected => Err(bad(format!(
            "the retention checkpoint was signed with key {}, not the expected {}",
            to_hex(named.as_bytes()),
            to_hex(expected.as_bytes())
        ))),
        (Some((key, sig)), _) => key
            .verify_strict(&checkpoint_message(cp.seq, &cp.prev), sig)
            .map_err(|_| bad("the retention checkpoint's signature does not verify".into())),
    }
}

pub(super) struct Verifier {
    pub(super) public_key: Option<VerifyingKey>,
    pub(super) next_seq: u64,
    pub(super) last_hash: [u8; 32],
    pub(super) report: VerifyReport,
}

impl Verifier {
    pub(super) fn file(&mut self, path: &Path, is_last: bool) -> Result<(), AuditError> {
        let file = File::open(path).map_err(io_err("opening", path))?;
        let mut reader = BufReader::with_capacity(256 * 1024, file);
        let named_seq = path.file_name().and_then(seq_in_name);
        let mut buf = Vec::new();
        let mut line_no = 0u64;
        let mut first_seq = None;
        let mut sealed = false;
        loop {
            buf.clear();
            let n = reader
                .read_until(b'\n', &mut buf)
                .map_err(io_err("reading", path))?;
            if n == 0 {
                break;
            }
            line_no += 1;
            let broken = |seq: Option<u64>, problem: String| AuditError::Broken {
                path: path.to_path_buf(),
                line: line_no,
                seq,
                problem,
            };
            let Some(line) = buf.strip_suffix(b"\n") else {
                return Err(broken(
                    None,
                    "no trailing newline: the line is incomplete (a torn write) or was altered"
                        .into(),
                ));
            };
            let rec = parse_line(line)
                .map_err(|why| broken(None, format!("not an audit record: {why}")))?;
            let seq = Some(rec.seq);
            if chain_hash(&rec.prev, rec.seq, rec.body) != rec.hash {
                return Err(broken(seq, "hash mismatch: the record was altered".into()));
            }
            if sealed {
                return Err(broken(seq, "a line follows the file's seal".into()));
            }
            if rec.seq != self.next_seq {
                let problem = match self.next_seq.checked_sub(1) {
                    Some(_)
                        if self.report.first_seq == self.next_seq
                            && self.report.checkpoint_signed.is_some() =>
                    {
                        format!(
                            "the retention checkpoint says the log continues at seq {}, the oldest file kept starts at seq {}",
                            self.next_seq, rec.seq
                        )
                    }
                    None => format!(
                        "the log starts at seq {}: earlier records are missing",
                        rec.seq
                    ),
                    Some(prev) if rec.seq > self.next_seq => format!(
                        "seq {} follows {prev}: {} record(s) are missing, or records are out of order",
                        rec.seq,
                        rec.seq - self.next_seq
                    ),
                    Some(prev) => format!(
                        "seq {} follows {prev}: records are out of order or repeated",
                        rec.seq
                    ),
                };
                return Err(broken(seq, problem));
            }
            if rec.prev != self.last_hash
                && self.report.last_seq.is_none()
                && self.report.checkpoint_signed.is_some()
            {
                return Err(broken(
                    seq,
                    "prev does not match the retention checkpoint's hash: the oldest file kept does not continue it"
                        .into(),
                ));
            }
            if rec.prev != self.last_hash {
                return Err(broken(
                    seq,
                    "prev does not match the previous record's hash: records are out of order or one was removed"
                        .into(),
                ));
            }
            let first = *first_seq.get_or_insert(rec.seq);
            if first == rec.seq
                && let Some(named) = named_seq
                && named != rec.seq
            {
                return Err(broken(
                    seq,
                    format!(
                        "the file is named for seq {named} but starts at seq {}",
                        rec.seq
                    ),
                ));
            }
            if rec.seal {
                self.check_seal(&rec, first).map_err(|p| broken(seq, p))?;
                self.report.seals += 1;
                self.report.unsealed_records = 0;
                sealed = true;
            } else {
                let value: Value = serde_json::from_slice(rec.value)
                    .map_err(|e| broken(seq, format!("the record is not valid JSON: {e}")))?;
                // (`event` in logs written before round 32; `kind`, an event record's, since.)
                let event = value.get("kind").or_else(|| value.get("event"));
                if value.get("type").and_then(Value::as_str) == Some("lifecycle")
                    && event.and_then(Value::as_str) == Some("audit.recovered")
                {
                    self.report.recoveries += 1;
                }
                if let Some(gap) = value.get("audit_gap") {
                    let gap = Gap::deserialize(gap)
                        .map_err(|e| broken(seq, format!("the gap record is invalid: {e}")))?;
                    if gap.after_seq != rec.seq.checked_sub(1) {
                        return Err(broken(
                            seq,
                            format!(
                                "the gap record says it follows seq {:?}, it follows {:?}",
                                gap.after_seq,
                                rec.seq.checked_sub(1)
                            ),
                        ));
                    }
                    self.report.lost_records += gap.lost;
                    self.report.gaps.push((rec.seq, gap));
                }
                self.report.records += 1;
                self.report.unsealed_records += 1;
            }
            self.next_seq = rec
                .seq
                .checked_add(1)
                .ok_or_else(|| broken(seq, "seq is exhausted".into()))?;
            self.last_hash = rec.hash;
            self.report.last_seq = seq;
        }
        if !is_last && !sealed && self.public_key.is_some() {
            return Err(AuditError::Log {
                path: path.to_path_buf(),
                problem: format!(
                    "ends at line {line_no} without a seal, but newer files follow: \
                     its last lines or its seal were removed"
                ),
            });
        }
        self.report.files += 1;
        Ok(())
    }

    pub(super) fn check_seal(&self, rec: &Line<'_>, first_seq: u64) -> Result<(), String> {
        let seal: Seal =
            serde_json::from_slice(rec.value).map_err(|e| format!("the seal is invalid: {e}"))?;
        if seal.first_seq != first_seq {
            return Err(format!(
                "the seal says the file starts at seq {}, it starts at {first_seq}",
                seal.first_seq
            ));
        }
        if seal.records != rec.seq - first_seq {
            return Err(format!(
                "the seal counts {} records, the file has {}",
                seal.records,
                rec.seq - first_seq
            ));
        }
        let last_hash = from_hex::<32>(seal.last_hash.as_bytes())
            .filter(|h| *h == rec.prev)
            .ok_or("the seal's last_hash is not the previous record's hash")?;
        let named = from_hex::<32>(seal.public_key.as_bytes())
            .and_then(|k| VerifyingKey::from_bytes(&k).ok())
            .ok_or("the seal's public_key is not an Ed25519 key")?;
        let key = match self.public_key {
            Some(expected) if expected != named => {
                return Err(format!(
                    "the seal was made with key {}, not the expected {}",
                    seal.public_key,
                    to_hex(expected.as_bytes())
                ));
            }
            _ => named,
        };
        let signature = from_hex::<64>(seal.signature.as_bytes())
            .map(|s| Signature::from_bytes(&s))
            .ok_or("the seal's signature is not 128 hex digits")?;
        key.verify_strict(&seal_message(&last_hash), &signature)
            .map_err(|_| "the seal's signature does not verify".to_string())
    }
}

impl std::fmt::Display for VerifyReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "audit log OK: {} records in {} files, {} seals, {} crash recoveries",
            self.records, self.files, self.seals, self.recoveries
        )?;
        if let Some(seq) = self.last_seq {
            write!(f, "; last seq {seq}, last hash {}", self.last_hash)?;
        }
        if self.unsealed_records > 0 && self.seals > 0 {
            write!(
                f,
                "; {} records after the last seal (chained, not yet signed)",
                self.unsealed_records
            )?;
        }
        if let Some(signed) = self.checkpoint_signed {
            write!(
                f,
                "; starts at seq {} (older files removed by retention; the checkpoint is {})",
                self.first_seq,
                if signed { "signed" } else { "not signed" }
            )?;
        }
        if !self.gaps.is_empty() {
            write!(
                f,
                "; {} gap(s), {} records lost while the log could not be written:",
                self.gaps.len(),
                self.lost_records
            )?;
            for (seq, g) in &self.gaps {
                write!(
                    f,
                    "\n  gap at seq {seq}: {} records lost after seq {}, made between {} and {} ({} failed attempts): {}",
                    g.lost,
                    g.after_seq.map_or("(none)".into(), |s| s.to_string()),
                    g.from,
                    g.until,
                    g.failures,
                    g.cause
                )?;
                for a in &g.by_agent {
                    write!(
                        f,
                        "\n    agent={} cgroup={}: {} lost, {} of them refusals",
                        crate::events::display::quoted(&a.owner.agent),
                        crate::events::display::quoted(&a.owner.cgroup),
                        a.lost,
                        a.denied
                    )?;
                }
            }
        }
        Ok(())
    }
}
