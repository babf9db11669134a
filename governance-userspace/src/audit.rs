//! Tamper-evident audit log: append-only JSON Lines files bound by a SHA-256 hash chain, with
//! optional Ed25519 seals.
//!
//! # Format
//! A log is a directory of files named `audit-<first seq, 20 digits>.jsonl`. Every line is one
//! JSON object with its fields in this exact order and no whitespace:
//!
//! ```text
//! {"seq":7,"prev":"<64 hex>","hash":"<64 hex>","record":{"agent":"a","event":"exec"}}
//! {"seq":8,"prev":"<64 hex>","hash":"<64 hex>","seal":{"first_seq":0,"records":8,...}}
//! ```
//!
//! - `seq` counts every line of the whole log from 0, across files, strictly +1.
//! - `prev` is the `hash` of the line before it; the first line of the log has 32 zero bytes.
//! - `hash = SHA-256(prev (32 bytes) || seq (8 bytes, big-endian) || body)`, where `body` is the
//!   exact bytes of the line after `"hash":"<hex>",` and before its closing `}`: `"record":<json>`
//!   or `"seal":<json>`. Hashing the bytes as written (not a re-serialisation of the parsed
//!   value) keeps the hash independent of serde_json's map ordering and float formatting, and the
//!   field name in `body` keeps a record from passing for a seal.
//! - A record is any [`serde_json::Value`]; this module knows nothing of the event schema.
//! - A seal (written only when a signing key is configured) closes a file when it is rotated or
//!   the log is closed. It is itself a chained line: `first_seq` and `records` describe the file
//!   (`records` counts the lines before the seal), `last_hash` is the hash of the line before
//!   it, `signature` is Ed25519 over `"governance-audit-seal-v1\0" || last_hash`, made with the
//!   key whose `public_key` it names. Since `last_hash` commits to every line before it, a seal
//!   signs the whole log up to it.
//!
//! [`verify`] accepts only the exact framing the writer produces, so every byte of a line is
//! either checked literally (field names, quotes, lowercase hex, the final `}` and newline) or
//! covered by the hash (seq, prev, body), and the stored hash is compared with the recomputed one.
//! It needs the whole log from seq 0, or from the retention checkpoint on (see Retention below).
//!
//! # What [`verify`] detects
//! - any changed byte anywhere in any file, the stored hashes included, and the last line of the
//!   newest file too (a missing final newline is reported as a torn write);
//! - a deleted line, two swapped lines, a deleted or renamed file other than the newest, lines
//!   after a seal;
//! - with a public key: any rewrite of the log up to the last seal, even one that recomputes the
//!   whole chain, and a file other than the newest that lacks its seal.
//!
//! # What it cannot detect
//! - Removing the last lines of the newest file, or the newest files whole, leaves a shorter
//!   chain that is still valid: nothing in the files says more lines existed. A log closed
//!   cleanly with a key ends in a seal, so a newest file that no longer does
//!   ([`VerifyReport::unsealed_records`] > 0) is a hint; cutting exactly at a seal is invisible.
//!   Only a copy of the last hash kept elsewhere ([`AuditLog::last_hash`],
//!   [`VerifyReport::last_hash`]) reveals it.
//! - Without a key, someone who rewrites a record and recomputes every later hash produces a
//!   valid chain: the chain proves integrity only against a trusted last hash or a signature
//!   (and a seal signed with a key of the forger's own passes unless the expected key is given).
//! - Records after the last seal are covered by the chain but by no signature.
//!
//! # Durability and crashes
//! [`AuditLog::append`] only buffers; [`AuditLog::flush`] writes and fsyncs the batch (a new
//! file's directory is fsynced when the file is created); rotation fsyncs the old file before
//! creating the next. On [`AuditLog::open`] the tail of the newest file is checked: lines at the
//! end that are torn (no newline), unparsable or whose hash does not verify are cut off, and an
//! `audit.recovered` record saying where and how many bytes were cut continues the chain. An
//! altered last line looks the same as a torn one, so it is cut too: the recovery record, and a
//! warning in the log, are what remain of it. One process writes a log at a time (an flock on
//! the directory); files are created with mode 0640.
//!
//! # When a write fails
//! A failed write or fsync (a full disk, EIO) puts the writer in an *outage*: what was buffered
//! is dropped, and every later append is refused ([`AuditError::Unavailable`]) and counted as
//! lost, until a retry succeeds. Retries happen on the next append or flush (or
//! [`AuditLog::retry`], for a caller with nothing to write) once the backoff has passed
//! ([`Backoff`]: doubling, bounded). A retry does what [`AuditLog::open`] does to the newest
//! file (cut a torn tail, continue the chain from the last line on disk), then writes a *gap
//! record* and fsyncs it: a record with an `audit_gap` object ([`Gap`]) saying how many records
//! are not in the log (those buffered but never written, and those refused during the outage),
//! after which seq, between which times, and why. The chain continues across it, so [`verify`]
//! passes and counts the gaps and the lost records. [`AuditHealth`] shows the outage to others
//! (metrics, status) and, under [`OnFailure::Block`], tells them to refuse what they govern.
//!
//! # Retention
//! With [`AuditOptions::retain_bytes`] or [`AuditOptions::retain_age`], after each rotation the
//! oldest files are removed while the log is larger than `retain_bytes` or while the oldest
//! file's last write is older than `retain_age` (the newest file is always kept). First a
//! checkpoint is written (`audit-checkpoint.json`, atomically): the seq of the first line kept
//! and the hash of the line before it, Ed25519-signed when a key is configured (over
//! `"governance-audit-checkpoint-v1\0" || seq (8 bytes, big-endian) || last_hash`). [`verify`]
//! of a directory then starts at the checkpoint: the oldest file kept must start at its seq and
//! continue its hash; with a public key the checkpoint must be signed by it.

use std::{
    ffi::OsStr,
    fs::{self, File, OpenOptions},
    io::{self, BufRead, BufReader, BufWriter, Read, Seek, SeekFrom, Write},
    os::unix::fs::{OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime},
};

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use nix::{
    errno::Errno,
    fcntl::{Flock, FlockArg},
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tracing::{debug, error, info, warn};

const ZERO_HASH: [u8; 32] = [0; 32];
const SEAL_DOMAIN: &[u8] = b"governance-audit-seal-v1\0";

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("{op} {}: {source}", .path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    /// The first line that fails verification (or that stops the writer from reopening a log).
    #[error("{}: line {line}{}: {problem}", .path.display(), seq_note(.seq))]
    Broken {
        path: PathBuf,
        line: u64,
        seq: Option<u64>,
        problem: String,
    },
    /// A problem with a whole file or directory.
    #[error("{}: {problem}", .path.display())]
    Log { path: PathBuf, problem: String },
    #[error("signing key {}: {problem}", .path.display())]
    Key { path: PathBuf, problem: String },
    /// The log is in an outage (see the module doc): the record was not written.
    #[error(
        "{}: the audit log cannot be written since {since} ({failures} failed attempts, \
         {lost} records not written so far, next retry in {retry_in:?}): {cause}",
        .path.display()
    )]
    Unavailable {
        path: PathBuf,
        since: String,
        failures: u64,
        lost: u64,
        retry_in: Duration,
        cause: String,
    },
}

fn seq_note(seq: &Option<u64>) -> String {
    seq.map(|s| format!(" (seq {s})")).unwrap_or_default()
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> AuditError + 'a {
    move |source| AuditError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

#[derive(Clone, Debug)]
pub struct AuditOptions {
    /// Rotate before appending to a file that already holds this many bytes (a file may exceed
    /// it by one line and its seal).
    pub max_bytes: u64,
    /// Rotate before appending to a file older than this (from its creation).
    pub max_age: Option<Duration>,
    /// Seal each file when it is rotated or the log is closed.
    pub signing_key: Option<SigningKey>,
    /// What others should do while the log cannot be written ([`AuditHealth::refusal`]).
    pub on_failure: OnFailure,
    /// How often a failed log is retried.
    pub retry: Backoff,
    /// Remove the oldest files while the log is larger than this (bytes).
    pub retain_bytes: Option<u64>,
    /// Remove the oldest files whose last write is older than this.
    pub retain_age: Option<Duration>,
    /// Where the retry backoff reads the time (tests drive it by hand).
    pub clock: Clock,
    /// Tests: while set, every write and fsync fails with ENOSPC.
    #[cfg(test)]
    pub fault: Arc<std::sync::atomic::AtomicBool>,
}

impl Default for AuditOptions {
    fn default() -> Self {
        Self {
            max_bytes: 64 << 20,
            max_age: Some(Duration::from_secs(24 * 3600)),
            signing_key: None,
            on_failure: OnFailure::default(),
            retry: Backoff::default(),
            retain_bytes: None,
            retain_age: None,
            clock: Clock::default(),
            #[cfg(test)]
            fault: Arc::default(),
        }
    }
}

/// What governed actions do while the audit log cannot be written (`--audit-on-failure`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum OnFailure {
    /// Actions go on; the records that could not be written are counted and the log gets a
    /// gap record when it can be written again.
    #[default]
    Continue,
    /// What the daemon can refuse is refused (fail closed) until the log can be written again:
    /// requests through the HTTP proxy, approvals and pre-authorizations. Kernel decisions go
    /// on (the programs do not wait for user space); their records are counted in the gap.
    Block,
}

impl std::fmt::Display for OnFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            OnFailure::Continue => "continue",
            OnFailure::Block => "block",
        })
    }
}

/// Retry delays after a failed write: `first`, doubling up to `max`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    pub first: Duration,
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            first: Duration::from_millis(100),
            max: Duration::from_secs(30),
        }
    }
}

/// The writer's clock for retries: the monotonic clock, or a manual one (tests).
#[derive(Clone, Debug, Default)]
pub struct Clock(Option<Arc<Mutex<Instant>>>);

impl Clock {
    /// A clock that moves only with [`Clock::advance`].
    pub fn manual() -> Self {
        Clock(Some(Arc::new(Mutex::new(Instant::now()))))
    }

    pub fn advance(&self, by: Duration) {
        if let Some(t) = &self.0 {
            let mut t = t.lock().unwrap_or_else(|p| p.into_inner());
            *t += by;
        }
    }

    pub fn now(&self) -> Instant {
        match &self.0 {
            Some(t) => *t.lock().unwrap_or_else(|p| p.into_inner()),
            None => Instant::now(),
        }
    }
}

/// The writer's state as others see it (metrics, status, the proxy under `block`). Shared.
#[derive(Debug, Default)]
pub struct AuditHealth {
    on_failure: OnFailure,
    down: AtomicBool,
    write_failures: AtomicU64,
    /// Records counted lost by gap records written.
    records_lost: AtomicU64,
    /// Records refused during the current outage (a lower bound of what its gap will count).
    refused_now: AtomicU64,
    gaps: AtomicU64,
    /// Actions refused under [`OnFailure::Block`].
    blocked: AtomicU64,
    /// (since, cause) of the current outage.
    outage: Mutex<Option<(String, String)>>,
    last_error: Mutex<Option<String>>,
}

/// [`AuditHealth`] at one moment, for status.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthView {
    /// `ok` or `failing`.
    pub state: String,
    pub on_failure: String,
    pub write_failures: u64,
    pub records_lost: u64,
    pub gaps: u64,
    pub blocked: u64,
    /// During an outage: since when, why, and how many records were refused so far.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failing_since: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cause: Option<String>,
    #[serde(default)]
    pub refused_now: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

impl AuditHealth {
    pub fn new(on_failure: OnFailure) -> Self {
        Self {
            on_failure,
            ..Default::default()
        }
    }

    pub fn on_failure(&self) -> OnFailure {
        self.on_failure
    }

    /// Whether the log is being written (no outage).
    pub fn writable(&self) -> bool {
        !self.down.load(Ordering::Relaxed)
    }

    /// Under [`OnFailure::Block`] during an outage: why a governed action must be refused (the
    /// refusal is counted). None: go ahead.
    pub fn refusal(&self) -> Option<String> {
        if self.on_failure != OnFailure::Block || self.writable() {
            return None;
        }
        self.blocked.fetch_add(1, Ordering::Relaxed);
        let since = lock(&self.outage)
            .as_ref()
            .map(|(since, _)| since.clone())
            .unwrap_or_default();
        Some(format!(
            "the audit log cannot be written (since {since}) and --audit-on-failure is block: \
             governed actions are refused until it can be written again"
        ))
    }

    pub fn write_failures(&self) -> u64 {
        self.write_failures.load(Ordering::Relaxed)
    }

    pub fn records_lost(&self) -> u64 {
        self.records_lost.load(Ordering::Relaxed)
    }

    pub fn gaps(&self) -> u64 {
        self.gaps.load(Ordering::Relaxed)
    }

    pub fn blocked(&self) -> u64 {
        self.blocked.load(Ordering::Relaxed)
    }

    pub fn view(&self) -> HealthView {
        let outage = lock(&self.outage).clone();
        HealthView {
            state: if self.writable() { "ok" } else { "failing" }.into(),
            on_failure: self.on_failure.to_string(),
            write_failures: self.write_failures(),
            records_lost: self.records_lost(),
            gaps: self.gaps(),
            blocked: self.blocked(),
            refused_now: self.refused_now.load(Ordering::Relaxed),
            failing_since: outage.as_ref().map(|o| o.0.clone()),
            cause: outage.map(|o| o.1),
            last_error: lock(&self.last_error).clone(),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// What a gap record says (its `audit_gap` object): records that are not in the log.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Gap {
    /// Records not written: buffered when the write failed, or refused during the outage.
    pub lost: u64,
    /// The last line written before the gap (None: the log had none); the gap record follows
    /// it directly.
    pub after_seq: Option<u64>,
    /// The last successful write: the lost records were made after it (RFC 3339).
    pub from: String,
    /// The first failed write.
    pub failed_at: String,
    /// When the log could be written again.
    pub until: String,
    /// Failed attempts (the first write and the retries).
    pub failures: u64,
    /// The first error.
    pub cause: String,
    /// Bytes of a torn line cut from the file on recovery.
    pub truncated_bytes: u64,
}

/// Makes the body of a gap record (one JSON value, which must hold the [`Gap`] as its
/// `audit_gap` field); the daemon makes one of its event records.
pub type GapRecord = Box<dyn Fn(&Gap) -> Vec<u8> + Send>;

fn plain_gap_record(gap: &Gap) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "type": "lifecycle",
        "event": "audit.gap",
        "time": crate::events::rfc3339(SystemTime::now()),
        "audit_gap": gap,
    }))
    .unwrap_or_default()
}

/// The writer. Not shared between processes: [`AuditLog::open`] takes an exclusive lock.
pub struct AuditLog {
    dir: PathBuf,
    opts: AuditOptions,
    _lock: Flock<File>,
    /// The file being appended to; None until the first append after a seal or a fresh start.
    active: Option<Active>,
    next_seq: u64,
    last_hash: [u8; 32],
    /// The body of the line being written, kept to avoid an allocation per record.
    body: Vec<u8>,
    health: Arc<AuditHealth>,
    /// Set while the log cannot be written.
    outage: Option<Outage>,
    /// When the last flush succeeded.
    durable_time: SystemTime,
    /// Seals written since the last flush (lines that are not records, when counting losses).
    unflushed_seals: Vec<u64>,
    gap_record: GapRecord,
}

/// A write failed: what is on disk no longer matches `next_seq`/`last_hash` until a retry
/// repairs the tail.
struct Outage {
    cause: String,
    failed_at: SystemTime,
    /// The last successful flush before it.
    from: SystemTime,
    failures: u64,
    /// `next_seq` when the write failed: lines from the last one on disk up to it were lost.
    failed_next_seq: u64,
    /// Seals among them.
    seals: Vec<u64>,
    /// Records refused since (appends that failed or came during the outage).
    refused: u64,
    backoff: Duration,
    next_attempt: Instant,
    /// A gap record written by a retry whose fsync then failed: (seq, hash, refused then, lost
    /// it counts). If it is on disk after all, the next gap counts only what came after it.
    attempted_gap: Option<(u64, [u8; 32], u64, u64)>,
}

struct Active {
    path: PathBuf,
    out: BufWriter<File>,
    first_seq: u64,
    /// Bytes in the file, buffered ones included.
    bytes: u64,
    created: Instant,
}

impl AuditLog {
    /// Open (or start) the log in `dir`, repairing a torn tail left by a crash.
    pub fn open(dir: &Path, opts: AuditOptions) -> Result<AuditLog, AuditError> {
        fs::create_dir_all(dir).map_err(io_err("creating", dir))?;
        let dir_file = File::open(dir).map_err(io_err("opening", dir))?;
        let lock = Flock::lock(dir_file, FlockArg::LockExclusiveNonblock).map_err(
            |(_, errno)| match errno {
                Errno::EWOULDBLOCK => AuditError::Log {
                    path: dir.to_path_buf(),
                    problem: "another writer holds this audit log".into(),
                },
                e => AuditError::Io {
                    op: "locking",
                    path: dir.to_path_buf(),
                    source: e.into(),
                },
            },
        )?;
        let mut log = AuditLog {
            dir: dir.to_path_buf(),
            health: Arc::new(AuditHealth::new(opts.on_failure)),
            opts,
            _lock: lock,
            active: None,
            next_seq: 0,
            last_hash: ZERO_HASH,
            body: Vec::with_capacity(1024),
            outage: None,
            durable_time: SystemTime::now(),
            unflushed_seals: Vec::new(),
            gap_record: Box::new(plain_gap_record),
        };
        if let Some(cut) = log.resume()? {
            let record = json!({
                "type": "lifecycle",
                "event": "audit.recovered",
                "time": crate::events::rfc3339(SystemTime::now()),
                "file": cut.file,
                "offset": cut.offset,
                "truncated_bytes": cut.truncated_bytes,
                "reason": cut.reason,
            });
            log.append(&record)?;
            log.flush()?;
        }
        log.apply_retention();
        Ok(log)
    }

    /// Take the log up where the files on disk end: cut a torn or corrupt tail off the newest
    /// file and continue the chain after its last good line (the start of [`AuditLog::open`],
    /// and of every retry after a failed write). Returns what was cut.
    fn resume(&mut self) -> Result<Option<Cut>, AuditError> {
        self.discard_active();
        self.next_seq = 0;
        self.last_hash = ZERO_HASH;
        let dir = self.dir.clone();
        let files = list_files(&dir)?;
        let Some((newest_seq, newest)) = files.last() else {
            info!(dir = %dir.display(), "audit log: starting a new log");
            return Ok(None);
        };
        let tail = scan_tail(newest)?;
        let mut cut = None;
        if tail.good_len < tail.len {
            let truncated = tail.len - tail.good_len;
            let reason = tail.problem.clone().unwrap_or_default();
            let file = OpenOptions::new()
                .write(true)
                .open(newest)
                .map_err(io_err("opening", newest))?;
            file.set_len(tail.good_len)
                .and_then(|()| file.sync_all())
                .map_err(io_err("truncating", newest))?;
            warn!(
                file = %newest.display(),
                truncated_bytes = truncated,
                offset = tail.good_len,
                %reason,
                "audit log: cut a torn or corrupt tail"
            );
            cut = Some(Cut {
                file: file_name(*newest_seq),
                offset: tail.good_len,
                truncated_bytes: truncated,
                reason,
            });
        }
        let reopen = match tail.last {
            Some(last) => {
                if last.seq < *newest_seq {
                    return Err(AuditError::Log {
                        path: newest.clone(),
                        problem: format!(
                            "its last record has seq {}, before the seq in its name",
                            last.seq
                        ),
                    });
                }
                self.continue_after(newest, last)?;
                !last.seal
            }
            None => {
                // The newest file is empty: the chain continues from the file before it, or
                // from the retention checkpoint.
                if let [.., (_, previous), _] = files.as_slice() {
                    let tail = scan_tail(previous)?;
                    let (Some(last), true) = (tail.last, tail.good_len == tail.len) else {
                        return Err(AuditError::Log {
                            path: previous.clone(),
                            problem: format!(
                                "the newest file is empty and this one does not end with a \
                                 valid record ({}); run verify",
                                tail.problem.unwrap_or_default()
                            ),
                        });
                    };
                    self.continue_after(previous, last)?;
                } else if let Some(cp) = read_checkpoint(&dir)? {
                    self.next_seq = cp.seq;
                    self.last_hash = cp.prev;
                }
                if *newest_seq != self.next_seq {
                    return Err(AuditError::Log {
                        path: newest.clone(),
                        problem: format!(
                            "the file is empty but the chain continues at seq {}",
                            self.next_seq
                        ),
                    });
                }
                true
            }
        };
        if reopen {
            self.active = Some(reopen_file(newest, *newest_seq)?);
        }
        info!(
            dir = %dir.display(),
            next_seq = self.next_seq,
            file = %newest.display(),
            "audit log: opened"
        );
        Ok(cut)
    }

    fn continue_after(&mut self, path: &Path, last: Last) -> Result<(), AuditError> {
        self.next_seq = last.seq.checked_add(1).ok_or_else(|| AuditError::Log {
            path: path.to_path_buf(),
            problem: "seq is exhausted".into(),
        })?;
        self.last_hash = last.hash;
        Ok(())
    }

    /// Buffer one record; returns its seq. Durable only after [`AuditLog::flush`].
    /// Any serialisable record (the daemon's [`crate::events::Record`], a [`Value`]).
    pub fn append<T: Serialize + ?Sized>(&mut self, record: &T) -> Result<u64, AuditError> {
        self.append_with(|body| {
            serde_json::to_writer(body, record).map_err(|e| format!("serialising a record: {e}"))
        })
    }

    /// [`AuditLog::append`] of a record serialised already: `json` must be one JSON value, as
    /// `serde_json` writes it (what the line holds, and what its hash covers, are these bytes).
    /// For a caller that needs the same bytes for something else too.
    pub fn append_json(&mut self, json: &[u8]) -> Result<u64, AuditError> {
        self.append_with(|body| {
            body.extend_from_slice(json);
            Ok(())
        })
    }

    fn append_with(
        &mut self,
        value: impl FnOnce(&mut Vec<u8>) -> Result<(), String>,
    ) -> Result<u64, AuditError> {
        if self.ready().is_err() {
            self.refused_one();
            return Err(self.unavailable());
        }
        let mut body = std::mem::take(&mut self.body);
        body.clear();
        body.extend_from_slice(b"\"record\":");
        let result = match value(&mut body) {
            Ok(()) => self.rotate_if_due().and_then(|()| self.write_line(&body)),
            Err(problem) => Err(AuditError::Log {
                path: self.dir.clone(),
                problem,
            }),
        };
        self.body = body;
        result.map_err(|e| {
            let e = self.fail_on_io(e);
            if self.outage.is_some() {
                self.refused_one();
            }
            e
        })
    }

    /// Write the buffered records and fsync them.
    pub fn flush(&mut self) -> Result<(), AuditError> {
        self.ready()?;
        self.flush_inner().map_err(|e| self.fail_on_io(e))
    }

    /// Flush, seal the current file (when a signing key is configured) and close the log.
    /// During an outage, one last retry first.
    pub fn close(mut self) -> Result<(), AuditError> {
        if self.outage.is_some() {
            self.recover();
            if self.outage.is_some() {
                let e = self.unavailable();
                error!(
                    error = %e,
                    "audit log: closed while it cannot be written; the records it refused are \
                     not in the log and no gap record says so"
                );
                return Err(e);
            }
        }
        self.finish_file().map_err(|e| self.fail_on_io(e))
    }

    /// The seq the next record will get.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// The hash of the last line written: keep a copy elsewhere to detect a cut-off tail.
    pub fn last_hash(&self) -> String {
        to_hex(&self.last_hash)
    }

    /// The writer's state, shared (metrics, status, refusals under `block`).
    pub fn health(&self) -> Arc<AuditHealth> {
        self.health.clone()
    }

    /// How gap records are made (by default a plain `audit.gap` lifecycle object).
    pub fn set_gap_record(&mut self, make: GapRecord) {
        self.gap_record = make;
    }

    /// During an outage, the time until the next retry is due (zero: due now); None when the
    /// log is being written.
    pub fn retry_in(&self) -> Option<Duration> {
        let o = self.outage.as_ref()?;
        Some(
            o.next_attempt
                .saturating_duration_since(self.opts.clock.now()),
        )
    }

    /// Retry now if a retry is due (for a caller with nothing to append); whether the log is
    /// being written.
    pub fn retry(&mut self) -> bool {
        self.ready().is_ok()
    }

    /// Ok when the log can be written: no outage, or a retry that was due succeeded.
    fn ready(&mut self) -> Result<(), AuditError> {
        let Some(o) = &self.outage else {
            return Ok(());
        };
        if self.opts.clock.now() >= o.next_attempt {
            self.recover();
            if self.outage.is_none() {
                return Ok(());
            }
        }
        Err(self.unavailable())
    }

    fn unavailable(&self) -> AuditError {
        let (since, failures, lost, retry_in, cause) = match &self.outage {
            Some(o) => (
                crate::events::rfc3339(o.failed_at),
                o.failures,
                o.refused,
                o.next_attempt
                    .saturating_duration_since(self.opts.clock.now()),
                o.cause.clone(),
            ),
            None => Default::default(),
        };
        AuditError::Unavailable {
            path: self.dir.clone(),
            since,
            failures,
            lost,
            retry_in,
            cause,
        }
    }

    fn refused_one(&mut self) {
        if let Some(o) = &mut self.outage {
            o.refused += 1;
            self.health.refused_now.store(o.refused, Ordering::Relaxed);
        }
    }

    /// An I/O error means the files no longer match `next_seq`/`last_hash`: start (or
    /// prolong) an outage. Other errors (a record that does not serialise) leave the log as is.
    fn fail_on_io(&mut self, e: AuditError) -> AuditError {
        if matches!(e, AuditError::Io { .. }) {
            self.fail(&e);
        }
        e
    }

    /// Drop what is buffered (a retry repairs the tail) and refuse writes until a retry works.
    fn fail(&mut self, e: &AuditError) {
        self.discard_active();
        let now = self.opts.clock.now();
        let message = e.to_string();
        self.health.write_failures.fetch_add(1, Ordering::Relaxed);
        *lock(&self.health.last_error) = Some(message.clone());
        match &mut self.outage {
            Some(o) => {
                o.failures += 1;
                o.backoff = o.backoff.saturating_mul(2).min(self.opts.retry.max);
                o.next_attempt = now + o.backoff;
                warn!(
                    error = %message,
                    failures = o.failures,
                    refused = o.refused,
                    retry_in = ?o.backoff,
                    "audit log: still cannot be written"
                );
            }
            None => {
                let failed_at = SystemTime::now();
                let backoff = self.opts.retry.first.min(self.opts.retry.max);
                error!(
                    dir = %self.dir.display(),
                    error = %message,
                    on_failure = %self.opts.on_failure,
                    "audit log: a write failed; records are not written (they are counted, and a \
                     gap record will say how many) until a retry succeeds"
                );
                self.outage = Some(Outage {
                    cause: message.clone(),
                    failed_at,
                    from: self.durable_time,
                    failures: 1,
                    failed_next_seq: self.next_seq,
                    seals: std::mem::take(&mut self.unflushed_seals),
                    refused: 0,
                    backoff,
                    next_attempt: now + backoff,
                    attempted_gap: None,
                });
                *lock(&self.health.outage) = Some((crate::events::rfc3339(failed_at), message));
                self.health.refused_now.store(0, Ordering::Relaxed);
                self.health.down.store(true, Ordering::Relaxed);
            }
        }
    }

    /// One retry: repair the tail, then write and fsync the gap record. The outage ends only
    /// when the gap record is durable.
    fn recover(&mut self) {
        let cut = match self.resume() {
            Ok(cut) => cut,
            Err(e) => return self.fail(&e),
        };
        let Some(o) = self.outage.as_mut() else {
            return;
        };
        // A gap record whose fsync failed may be on disk after all: then what it counted is
        // recorded, and the outage goes on from it.
        if let Some((seq, hash, refused_then, lost_then)) = o.attempted_gap.take()
            && self.next_seq == seq + 1
            && self.last_hash == hash
        {
            self.health
                .records_lost
                .fetch_add(lost_then, Ordering::Relaxed);
            self.health.gaps.fetch_add(1, Ordering::Relaxed);
            o.failed_next_seq = self.next_seq;
            o.seals.clear();
            o.refused -= refused_then;
        }
        let first_lost = self.next_seq;
        let buffered = o.failed_next_seq.saturating_sub(first_lost)
            - o.seals
                .iter()
                .filter(|s| (first_lost..o.failed_next_seq).contains(s))
                .count() as u64;
        let lost = buffered + o.refused;
        if lost == 0 {
            return self.recovered(0, None);
        }
        let gap = Gap {
            lost,
            after_seq: self.next_seq.checked_sub(1),
            from: crate::events::rfc3339(o.from),
            failed_at: crate::events::rfc3339(o.failed_at),
            until: crate::events::rfc3339(SystemTime::now()),
            failures: o.failures,
            cause: o.cause.clone(),
            truncated_bytes: cut.as_ref().map_or(0, |c| c.truncated_bytes),
        };
        let refused_then = o.refused;
        let mut body = b"\"record\":".to_vec();
        body.extend_from_slice(&(self.gap_record)(&gap));
        let written = match self.write_line(&body) {
            Ok(seq) => {
                let attempted = (seq, self.last_hash, refused_then, lost);
                self.flush_inner().map_err(|e| (e, Some(attempted)))
            }
            Err(e) => Err((e, None)),
        };
        match written {
            Ok(()) => self.recovered(lost, Some(&gap)),
            Err((e, attempted)) => {
                if let Some(o) = self.outage.as_mut() {
                    o.attempted_gap = attempted;
                }
                self.fail(&e);
            }
        }
    }

    fn recovered(&mut self, lost: u64, gap: Option<&Gap>) {
        self.outage = None;
        let h = &self.health;
        if gap.is_some() {
            h.records_lost.fetch_add(lost, Ordering::Relaxed);
            h.gaps.fetch_add(1, Ordering::Relaxed);
        }
        h.refused_now.store(0, Ordering::Relaxed);
        *lock(&h.outage) = None;
        h.down.store(false, Ordering::Relaxed);
        warn!(
            lost,
            after_seq = ?gap.and_then(|g| g.after_seq),
            failures = ?gap.map(|g| g.failures),
            "audit log: written again; a gap record counts the records that are not in the log"
        );
    }

    /// Forget the current file's buffer without writing it.
    fn discard_active(&mut self) {
        if let Some(active) = self.active.take() {
            let _ = active.out.into_parts();
        }
    }

    fn flush_inner(&mut self) -> Result<(), AuditError> {
        if let Some(active) = self.active.as_mut() {
            #[cfg(test)]
            injected(&self.opts, &active.path)?;
            active
                .out
                .flush()
                .and_then(|()| active.out.get_ref().sync_data())
                .map_err(|e| AuditError::Io {
                    op: "writing",
                    path: active.path.clone(),
                    source: e,
                })?;
        }
        self.durable_time = SystemTime::now();
        self.unflushed_seals.clear();
        Ok(())
    }

    fn rotate_if_due(&mut self) -> Result<(), AuditError> {
        if let Some(active) = &self.active {
            let full = active.bytes >= self.opts.max_bytes;
            let old = self
                .opts
                .max_age
                .is_some_and(|age| active.created.elapsed() >= age);
            if active.bytes > 0 && (full || old) {
                debug!(file = %active.path.display(), bytes = active.bytes, "audit log: rotating");
                self.finish_file()?;
            }
        }
        Ok(())
    }

    /// Chain and buffer one line, in the current file or a new one. On an I/O error the caller
    /// must call [`AuditLog::fail`].
    fn write_line(&mut self, body: &[u8]) -> Result<u64, AuditError> {
        #[cfg(test)]
        injected(&self.opts, &self.dir)?;
        let active = match self.active {
            Some(ref mut active) => active,
            None => self.active.insert(create_file(&self.dir, self.next_seq)?),
        };
        let seq = self.next_seq;
        let next = seq.checked_add(1).ok_or_else(|| AuditError::Log {
            path: active.path.clone(),
            problem: "seq is exhausted".into(),
        })?;
        let hash = chain_hash(&self.last_hash, seq, body);
        match write_framed(&mut active.out, seq, &self.last_hash, &hash, body) {
            Ok(n) => active.bytes += n,
            Err(source) => {
                return Err(AuditError::Io {
                    op: "writing",
                    path: active.path.clone(),
                    source,
                });
            }
        }
        self.next_seq = next;
        self.last_hash = hash;
        Ok(seq)
    }

    /// Seal (if signing) and fsync the current file, stop appending to it, and apply retention.
    fn finish_file(&mut self) -> Result<(), AuditError> {
        let Some(active) = &self.active else {
            return Ok(());
        };
        if let Some(key) = &self.opts.signing_key
            && self.next_seq > active.first_seq
        {
            let seal = Seal {
                first_seq: active.first_seq,
                records: self.next_seq - active.first_seq,
                last_hash: to_hex(&self.last_hash),
                time: crate::events::rfc3339(SystemTime::now()),
                public_key: to_hex(key.verifying_key().as_bytes()),
                signature: to_hex(&key.sign(&seal_message(&self.last_hash)).to_bytes()),
            };
            let mut body = b"\"seal\":".to_vec();
            serde_json::to_writer(&mut body, &seal).map_err(|e| AuditError::Log {
                path: active.path.clone(),
                problem: format!("serialising the seal: {e}"),
            })?;
            let seq = self.write_line(&body)?;
            self.unflushed_seals.push(seq);
        }
        self.flush_inner()?;
        if let Some(active) = self.active.take() {
            debug!(file = %active.path.display(), next_seq = self.next_seq, "audit log: file closed");
        }
        self.apply_retention();
        Ok(())
    }

    /// Remove the oldest files beyond the retention limits, after writing the checkpoint.
    /// A failure leaves the files (it is logged, the log goes on).
    fn apply_retention(&mut self) {
        if self.opts.retain_bytes.is_none() && self.opts.retain_age.is_none() {
            return;
        }
        if let Err(e) = retain(
            &self.dir,
            self.opts.retain_bytes,
            self.opts.retain_age,
            self.opts.signing_key.as_ref(),
            SystemTime::now(),
        ) {
            warn!(error = %e, "audit log: retention failed; the old files stay");
        }
    }
}

/// What [`AuditLog::resume`] cut off the newest file.
struct Cut {
    file: String,
    offset: u64,
    truncated_bytes: u64,
    reason: String,
}

#[cfg(test)]
fn injected(opts: &AuditOptions, path: &Path) -> Result<(), AuditError> {
    if opts.fault.load(Ordering::Relaxed) {
        return Err(AuditError::Io {
            op: "writing",
            path: path.to_path_buf(),
            source: io::Error::from_raw_os_error(libc::ENOSPC),
        });
    }
    Ok(())
}

const CHECKPOINT: &str = "audit-checkpoint.json";
const CHECKPOINT_DOMAIN: &[u8] = b"governance-audit-checkpoint-v1\0";

/// What the retention removed: `audit-checkpoint.json`.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct CheckpointFile {
    /// The seq of the first line kept: every line before it was removed.
    seq: u64,
    /// The hash of the line before it (the `prev` of the first line kept), hex.
    prev: String,
    time: String,
    /// Lines removed by this pass, and the files.
    removed_files: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    public_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    signature: Option<String>,
}

struct Checkpoint {
    seq: u64,
    prev: [u8; 32],
    /// The key it is signed with, and the signature.
    signed: Option<(VerifyingKey, Signature)>,
}

fn checkpoint_message(seq: u64, prev: &[u8; 32]) -> Vec<u8> {
    [CHECKPOINT_DOMAIN, &seq.to_be_bytes(), prev].concat()
}

fn read_checkpoint(dir: &Path) -> Result<Option<Checkpoint>, AuditError> {
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

fn write_checkpoint(
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
    let tmp = dir.join(format!("{CHECKPOINT}.tmp"));
    let path = dir.join(CHECKPOINT);
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o640)
        .open(&tmp)
        .map_err(io_err("creating", &tmp))?;
    file.write_all(&text)
        .and_then(|()| file.sync_all())
        .map_err(io_err("writing", &tmp))?;
    fs::rename(&tmp, &path).map_err(io_err("renaming", &tmp))?;
    sync_dir(dir)
}

/// The first line of `path` (without its newline), read up to 16 MiB.
fn first_line(path: &Path) -> Result<Vec<u8>, AuditError> {
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
fn retain(
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

impl Drop for AuditLog {
    /// Without [`AuditLog::close`], write what is buffered (no seal, no fsync), as a crash
    /// after the last write would leave it.
    fn drop(&mut self) {
        if let Some(active) = self.active.as_mut()
            && let Err(e) = active.out.flush()
        {
            warn!(file = %active.path.display(), error = %e, "audit log: writing on drop");
        }
    }
}

/// Write one framed line; returns its length.
fn write_framed(
    out: &mut impl Write,
    seq: u64,
    prev: &[u8; 32],
    hash: &[u8; 32],
    body: &[u8],
) -> io::Result<u64> {
    let mut digits = [0u8; 20];
    let seq_text = decimal(seq, &mut digits);
    out.write_all(b"{\"seq\":")?;
    out.write_all(seq_text)?;
    out.write_all(b",\"prev\":\"")?;
    out.write_all(&hex32(prev))?;
    out.write_all(b"\",\"hash\":\"")?;
    out.write_all(&hex32(hash))?;
    out.write_all(b"\",")?;
    out.write_all(body)?;
    out.write_all(b"}\n")?;
    Ok((7 + seq_text.len() + 9 + 64 + 10 + 64 + 2 + body.len() + 2) as u64)
}

fn decimal(mut n: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &buf[i..];
        }
    }
}

fn chain_hash(prev: &[u8; 32], seq: u64, body: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(prev);
    h.update(seq.to_be_bytes());
    h.update(body);
    h.finalize().into()
}

fn seal_message(last_hash: &[u8; 32]) -> Vec<u8> {
    [SEAL_DOMAIN, last_hash].concat()
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Seal {
    first_seq: u64,
    records: u64,
    last_hash: String,
    time: String,
    public_key: String,
    signature: String,
}

fn file_name(first_seq: u64) -> String {
    format!("audit-{first_seq:020}.jsonl")
}

/// The first seq in an `audit-<20 digits>.jsonl` name.
fn seq_in_name(name: &OsStr) -> Option<u64> {
    let digits = name
        .to_str()?
        .strip_prefix("audit-")?
        .strip_suffix(".jsonl")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The audit files in `dir`, in seq order.
fn list_files(dir: &Path) -> Result<Vec<(u64, PathBuf)>, AuditError> {
    let mut files = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_err("listing", dir))? {
        let entry = entry.map_err(io_err("listing", dir))?;
        if let Some(seq) = seq_in_name(&entry.file_name()) {
            files.push((seq, entry.path()));
        }
    }
    files.sort();
    Ok(files)
}

fn sync_dir(dir: &Path) -> Result<(), AuditError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("syncing", dir))
}

fn create_file(dir: &Path, first_seq: u64) -> Result<Active, AuditError> {
    let path = dir.join(file_name(first_seq));
    let file = OpenOptions::new()
        .create_new(true)
        .append(true)
        .mode(0o640)
        .open(&path)
        .map_err(io_err("creating", &path))?;
    sync_dir(dir)?;
    debug!(file = %path.display(), "audit log: new file");
    Ok(Active {
        path,
        out: BufWriter::with_capacity(64 * 1024, file),
        first_seq,
        bytes: 0,
        created: Instant::now(),
    })
}

fn reopen_file(path: &Path, first_seq: u64) -> Result<Active, AuditError> {
    let file = OpenOptions::new()
        .append(true)
        .open(path)
        .map_err(io_err("opening", path))?;
    let meta = file.metadata().map_err(io_err("reading", path))?;
    // Age from the file's birth time where the filesystem records it, else from its last write.
    let born = meta.created().or_else(|_| meta.modified());
    let age = born
        .ok()
        .and_then(|t| SystemTime::now().duration_since(t).ok())
        .unwrap_or_default();
    Ok(Active {
        path: path.to_path_buf(),
        out: BufWriter::with_capacity(64 * 1024, file),
        first_seq,
        bytes: meta.len(),
        created: Instant::now().checked_sub(age).unwrap_or_else(Instant::now),
    })
}

#[derive(Clone, Copy)]
struct Last {
    seq: u64,
    hash: [u8; 32],
    seal: bool,
}

struct Tail {
    len: u64,
    /// The file up to the end of its last good line.
    good_len: u64,
    last: Option<Last>,
    /// What is wrong with the first bad line found from the end.
    problem: Option<String>,
}

/// Find the last line of `path` that is complete and whose hash verifies, reading backwards.
fn scan_tail(path: &Path) -> Result<Tail, AuditError> {
    let mut file = File::open(path).map_err(io_err("opening", path))?;
    let len = file.metadata().map_err(io_err("reading", path))?.len();
    let mut window: u64 = 64 * 1024;
    loop {
        let start = len.saturating_sub(window);
        let mut buf = vec![0; (len - start) as usize];
        file.seek(SeekFrom::Start(start))
            .and_then(|_| file.read_exact(&mut buf))
            .map_err(io_err("reading", path))?;
        // Unless at the start of the file, the window begins inside a line: skip it.
        let skip = if start == 0 {
            Some(0)
        } else {
            buf.iter().position(|&b| b == b'\n').map(|i| i + 1)
        };
        if let Some(skip) = skip {
            let region = &buf[skip..];
            let mut end = region
                .iter()
                .rposition(|&b| b == b'\n')
                .map_or(0, |i| i + 1);
            let mut problem = (end < region.len())
                .then(|| "the last line has no trailing newline (a torn write)".to_string());
            while end > 0 {
                let line_start = region[..end - 1]
                    .iter()
                    .rposition(|&b| b == b'\n')
                    .map_or(0, |i| i + 1);
                match check_line(&region[line_start..end - 1]) {
                    Ok(last) => {
                        return Ok(Tail {
                            len,
                            good_len: start + (skip + end) as u64,
                            last: Some(last),
                            problem,
                        });
                    }
                    Err(why) => {
                        problem.get_or_insert(why);
                        end = line_start;
                    }
                }
            }
            if start == 0 {
                return Ok(Tail {
                    len,
                    good_len: 0,
                    last: None,
                    problem,
                });
            }
        }
        window = window.saturating_mul(2);
    }
}

fn check_line(line: &[u8]) -> Result<Last, String> {
    let rec = parse_line(line).map_err(|why| format!("not an audit record: {why}"))?;
    if chain_hash(&rec.prev, rec.seq, rec.body) != rec.hash {
        return Err(format!("seq {}: hash mismatch", rec.seq));
    }
    Ok(Last {
        seq: rec.seq,
        hash: rec.hash,
        seal: rec.seal,
    })
}

struct Line<'a> {
    seq: u64,
    prev: [u8; 32],
    hash: [u8; 32],
    seal: bool,
    /// What the hash covers: `"record":<json>` or `"seal":<json>`.
    body: &'a [u8],
    /// The JSON value in `body`.
    value: &'a [u8],
}

/// Split a line (without its newline) into its fields, accepting only the exact framing the
/// writer produces.
fn parse_line(line: &[u8]) -> Result<Line<'_>, &'static str> {
    let rest = line
        .strip_prefix(b"{\"seq\":")
        .ok_or("it does not start with {\"seq\":")?;
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    let (number, rest) = rest.split_at(digits);
    let seq = std::str::from_utf8(number)
        .ok()
        .filter(|n| !n.is_empty() && (n.len() == 1 || !n.starts_with('0')))
        .and_then(|n| n.parse().ok())
        .ok_or("seq is not an unsigned integer")?;
    let rest = rest
        .strip_prefix(b",\"prev\":\"")
        .ok_or("\"prev\" does not follow seq")?;
    let (prev, rest) = take_hash(rest).ok_or("prev is not 64 lowercase hex digits")?;
    let rest = rest
        .strip_prefix(b"\",\"hash\":\"")
        .ok_or("\"hash\" does not follow prev")?;
    let (hash, rest) = take_hash(rest).ok_or("hash is not 64 lowercase hex digits")?;
    let body = rest
        .strip_prefix(b"\",")
        .and_then(|b| b.strip_suffix(b"}"))
        .ok_or("it does not end in a \"record\" or \"seal\" field and }")?;
    let (seal, value) = if let Some(v) = body.strip_prefix(b"\"record\":") {
        (false, v)
    } else if let Some(v) = body.strip_prefix(b"\"seal\":") {
        (true, v)
    } else {
        return Err("\"record\" or \"seal\" does not follow hash");
    };
    Ok(Line {
        seq,
        prev,
        hash,
        seal,
        body,
        value,
    })
}

fn take_hash(s: &[u8]) -> Option<([u8; 32], &[u8])> {
    let (hex, rest) = s.split_at_checked(64)?;
    Some((from_hex(hex)?, rest))
}

const HEX: &[u8; 16] = b"0123456789abcdef";

fn hex32(bytes: &[u8; 32]) -> [u8; 64] {
    let mut out = [0; 64];
    for (i, b) in bytes.iter().enumerate() {
        out[2 * i] = HEX[usize::from(b >> 4)];
        out[2 * i + 1] = HEX[usize::from(b & 0xf)];
    }
    out
}

fn to_hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .flat_map(|b| [HEX[usize::from(b >> 4)], HEX[usize::from(b & 0xf)]])
        .map(char::from)
        .collect()
}

/// Lowercase hex only, so that each value has exactly one spelling.
fn from_hex<const N: usize>(hex: &[u8]) -> Option<[u8; N]> {
    fn nibble(c: u8) -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            _ => None,
        }
    }
    if hex.len() != 2 * N {
        return None;
    }
    let mut out = [0; N];
    for (o, pair) in out.iter_mut().zip(hex.chunks_exact(2)) {
        *o = nibble(pair[0])? << 4 | nibble(pair[1])?;
    }
    Some(out)
}

/// Load a 32-byte Ed25519 seed (64 hex digits, or 32 raw bytes), or create one with mode 0600.
pub fn load_or_create_key(path: &Path) -> Result<SigningKey, AuditError> {
    let key_err = |problem: &str| AuditError::Key {
        path: path.to_path_buf(),
        problem: problem.to_string(),
    };
    match fs::read(path) {
        Ok(bytes) => {
            let mode = fs::metadata(path)
                .map_err(io_err("reading", path))?
                .permissions()
                .mode();
            if mode & 0o077 != 0 {
                warn!(path = %path.display(), mode = format!("{mode:o}"), "audit signing key is readable by others");
            }
            let seed = if bytes.len() == 32 {
                bytes.as_slice().try_into().ok()
            } else {
                from_hex::<32>(bytes.trim_ascii())
            };
            let seed =
                seed.ok_or_else(|| key_err("not 64 lowercase hex digits or 32 raw bytes"))?;
            Ok(SigningKey::from_bytes(&seed))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let mut seed = [0u8; 32];
            getrandom::fill(&mut seed)
                .map_err(|e| key_err(&format!("no random seed from the kernel: {e}")))?;
            let key = SigningKey::from_bytes(&seed);
            let mut file = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .map_err(io_err("creating", path))?;
            file.write_all(format!("{}\n", to_hex(&seed)).as_bytes())
                .and_then(|()| file.sync_all())
                .map_err(io_err("writing", path))?;
            if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
                sync_dir(parent)?;
            }
            info!(
                path = %path.display(),
                public_key = %to_hex(key.verifying_key().as_bytes()),
                "audit log: created a signing key"
            );
            Ok(key)
        }
        Err(e) => Err(io_err("reading", path)(e)),
    }
}

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
fn check_checkpoint(
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

struct Verifier {
    public_key: Option<VerifyingKey>,
    next_seq: u64,
    last_hash: [u8; 32],
    report: VerifyReport,
}

impl Verifier {
    fn file(&mut self, path: &Path, is_last: bool) -> Result<(), AuditError> {
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
                if value.get("type").and_then(Value::as_str) == Some("lifecycle")
                    && value.get("event").and_then(Value::as_str) == Some("audit.recovered")
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

    fn check_seal(&self, rec: &Line<'_>, first_seq: u64) -> Result<(), String> {
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

#[cfg(test)]
#[path = "audit_tests.rs"]
mod tests;

#[cfg(test)]
#[path = "audit_fault_tests.rs"]
mod fault_tests;

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
            }
        }
        Ok(())
    }
}

/// An Ed25519 public key given as 64 hex digits, or a file holding them (or the 32 raw bytes).
pub fn parse_public_key(s: &str) -> Result<VerifyingKey, AuditError> {
    let bad = |problem: String| AuditError::Key {
        path: PathBuf::from(s),
        problem,
    };
    let bytes: [u8; 32] = match from_hex::<32>(s.trim().as_bytes()) {
        Some(b) => b,
        None => {
            let raw = fs::read(s)
                .map_err(|e| bad(format!("neither 64 hex digits nor a readable file: {e}")))?;
            let text = String::from_utf8_lossy(&raw);
            match from_hex::<32>(text.trim().as_bytes()) {
                Some(b) => b,
                None => raw
                    .as_slice()
                    .try_into()
                    .map_err(|_| bad("not 64 hex digits or 32 raw bytes".into()))?,
            }
        }
    };
    VerifyingKey::from_bytes(&bytes).map_err(|e| bad(format!("not an Ed25519 public key: {e}")))
}

/// Replay records from the log in `dir`: every record (seals and lines that do not parse are
/// skipped; `verify` is the integrity check) with `time` at or after `since` and seq before
/// `until_seq`, in order, until `each` returns false.
pub fn replay(
    dir: &Path,
    since: SystemTime,
    until_seq: u64,
    mut each: impl FnMut(crate::events::Record) -> bool,
) -> Result<(), AuditError> {
    let files = list_files(dir)?;
    let start = seek(&files, since);
    for (first, path) in files.into_iter().skip(start) {
        if first >= until_seq {
            break;
        }
        let file = File::open(&path).map_err(io_err("reading", &path))?;
        for line in BufReader::new(file).split(b'\n') {
            let line = line.map_err(io_err("reading", &path))?;
            let Ok(l) = parse_line(&line) else { continue };
            if l.seq >= until_seq {
                return Ok(());
            }
            if l.seal {
                continue;
            }
            let Ok(r) = serde_json::from_slice::<crate::events::Record>(l.value) else {
                continue;
            };
            if crate::events::parse_rfc3339(&r.time).is_some_and(|t| t >= since) && !each(r) {
                return Ok(());
            }
        }
    }
    Ok(())
}

/// The file a replay from `since` starts at: the last file whose first record is before
/// `since` (binary search on each file's first line; records are written in time order, so
/// every earlier file ends before it). A file whose first time cannot be read counts as after
/// `since`, so it is read rather than skipped.
fn seek(files: &[(u64, PathBuf)], since: SystemTime) -> usize {
    files
        .partition_point(|(_, path)| first_time(path).is_some_and(|t| t < since))
        .saturating_sub(1)
}

/// The `time` of a file's first record.
fn first_time(path: &Path) -> Option<SystemTime> {
    let line = first_line(path).ok()?;
    let l = parse_line(&line).ok()?;
    #[derive(Deserialize)]
    struct Time<'a> {
        #[serde(borrow)]
        time: std::borrow::Cow<'a, str>,
    }
    let t: Time = serde_json::from_slice(l.value).ok()?;
    crate::events::parse_rfc3339(&t.time)
}
