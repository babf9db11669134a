//! Retention: the signed checkpoint and the removal of the oldest files.

use super::*;

pub(super) const CHECKPOINT: &str = "audit-checkpoint.json";
pub(super) const CHECKPOINT_DOMAIN: &[u8] = b"governance-audit-checkpoint-v1\0";

/// What the retention removed: `audit-checkpoint.json`.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CheckpointFile {
    /// The seq of the first line kept: every line before it was removed.
    pub(super) seq: u64,
    /// The hash of the line before it (the `prev` of the first line kept), hex.
    pub(super) prev: String,
    pub(super) time: String,
    /// Lines removed by this pass, and the files.
    pub(super) removed_files: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) public_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) signature: Option<String>,
}

pub(super) struct Checkpoint {
    pub(super) seq: u64,
    pub(super) prev: [u8; 32],
    /// The key it is signed with, and the signature.
    pub(super) signed: Option<(VerifyingKey, Signature)>,
}

pub(super) fn checkpoint_message(seq: u64, prev: &[u8; 32]) -> Vec<u8> {
    [CHECKPOINT_DOMAIN, &seq.to_be_bytes(), prev].concat()
}

pub(super) fn read_checkpoint(dir: &Path) -> Result<Option<Checkpoint>, AuditError> {
    let path = dir.join(CHECKPOINT);
    let bytes = match fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err("reading", &path)(e)),
    };
    let bad = |problem: String| AuditError::Log {
        path: path.clone(),
        problem,
    };
    let f: CheckpointFile = serde_json::from_slice(&bytes)
        .map_err(|e| bad(format!("not a retention checkpoint: {e}")))?;
    let prev = from_hex::<32>(f.prev.as_bytes())
        .ok_or_else(|| bad("prev is not 64 lowercase hex digits".into()))?;
    let signed = match (f.public_key, f.signature) {
        (None, None) => None,
        (Some(k), Some(s)) => {
            let key = from_hex::<32>(k.as_bytes())
                .and_then(|k| VerifyingKey::from_bytes(&k).ok())
                .ok_or_else(|| bad("public_key is not an Ed25519 key".into()))?;
            let sig = from_hex::<64>(s.as_bytes())
                .map(|s| Signature::from_bytes(&s))
                .ok_or_else(|| bad("signature is not 128 hex digits".into()))?;
            Some((key, sig))
        }
        _ => return Err(bad("public_key and signature go together".into())),
    };
    Ok(Some(Checkpoint {
        seq: f.seq,
        prev,
        signed,
    }))
}

pub(super) fn write_checkpoint(
    dir: &Path,
    seq: u64,
    prev: &[u8; 32],
    removed_files: u64,
    key: Option<&SigningKey>,
) -> Result<(), AuditError> {
    let f = CheckpointFile {
        seq,
        prev: to_hex(prev),
        time: crate::events::rfc3339(SystemTime::now()),
        removed_files,
        public_key: key.map(|k| to_hex(k.verifying_key().as_bytes())),
        signature: key.map(|k| to_hex(&k.sign(&checkpoint_message(seq, prev)).to_bytes())),
    };
    let mut text = serde_json::to_vec_pretty(&f).map_err(|e| AuditError::Log {
        path: dir.join(CHECKPOINT),
        problem: format!("serialising the checkpoint: {e}"),
    })?;
    text.push(b'\n');
    let path = dir.join(CHECKPOINT);
    crate::durable::replace(&path, 0o640, |w| w.write_all(&text)).map_err(io_err("writing", &path))
}

/// The first line of `path` (without its newline), read up to 16 MiB.
pub(super) fn first_line(path: &Path) -> Result<Vec<u8>, AuditError> {
    let file = File::open(path).map_err(io_err("opening", path))?;
    let mut line = Vec::new();
    BufReader::new(file.take(16 << 20))
        .read_until(b'\n', &mut line)
        .map_err(io_err("reading", path))?;
    if line.pop() != Some(b'\n') {
        return Err(AuditError::Log {
            path: path.to_path_buf(),
            problem: "no complete first line".into(),
        });
    }
    Ok(line)
}

/// Retention: remove the oldest files of `dir` (never the newest) while the log is larger
/// than `max_bytes` or the oldest file's last write is older than `max_age`, after writing a
/// checkpoint for the first file kept. Returns how many files were removed.
pub(super) fn retain(
    dir: &Path,
    max_bytes: Option<u64>,
    max_age: Option<Duration>,
    key: Option<&SigningKey>,
    now: SystemTime,
) -> Result<usize, AuditError> {
    let files = list_files(dir)?;
    let mut meta = Vec::with_capacity(files.len());
    for (_, path) in &files {
        let m = fs::metadata(path).map_err(io_err("reading", path))?;
        meta.push((m.len(), m.modified().ok()));
    }
    let mut total: u64 = meta.iter().map(|m| m.0).sum();
    let mut remove = 0;
    while remove + 1 < files.len() {
        let (len, modified) = meta[remove];
        let too_big = max_bytes.is_some_and(|max| total > max);
        let too_old = max_age.is_some_and(|age| {
            modified.is_some_and(|m| now.duration_since(m).is_ok_and(|d| d > age))
        });
        if !(too_big || too_old) {
            break;
        }
        total -= len;
        remove += 1;
    }
    if remove == 0 {
        return Ok(0);
    }
    let (kept_seq, kept) = &files[remove];
    let line = first_line(kept)?;
    let first = parse_line(&line).map_err(|why| AuditError::Broken {
        path: kept.clone(),
        line: 1,
        seq: None,
        problem: format!("not an audit record: {why}"),
    })?;
    if first.seq != *kept_seq {
        return Err(AuditError::Log {
            path: kept.clone(),
            problem: format!("starts at seq {}, not the seq in its name", first.seq),
        });
    }
    write_checkpoint(dir, first.seq, &first.prev, remove as u64, key)?;
    let mut bytes = 0;
    for ((_, path), (len, _)) in files[..remove].iter().zip(&meta) {
        fs::remove_file(path).map_err(io_err("removing", path))?;
        bytes += len;
    }
    sync_dir(dir)?;
    info!(
        dir = %dir.display(),
        files = remove,
        bytes,
        first_seq_kept = first.seq,
        signed = key.is_some(),
        "audit log: retention removed the oldest files (checkpoint written)"
    );
    Ok(remove)
}
