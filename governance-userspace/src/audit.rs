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
//! It needs the whole log from seq 0: there is no retention (deleting old files) yet.
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
//! warning in the log, are what remain of it. After a failed write the writer refuses further
//! writes until the log is reopened. One process writes a log at a time (an flock on the
//! directory); files are created with mode 0640.

use std::{
    ffi::OsStr,
    fs::{self, File, OpenOptions},
    io::{self, BufRead, BufReader, BufWriter, Read, Seek, SeekFrom, Write},
    os::unix::fs::{OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
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
use tracing::{debug, info, warn};

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
}

impl Default for AuditOptions {
    fn default() -> Self {
        Self {
            max_bytes: 64 << 20,
            max_age: Some(Duration::from_secs(24 * 3600)),
            signing_key: None,
        }
    }
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
    /// A write failed: what is on disk no longer matches `next_seq`/`last_hash`.
    poisoned: bool,
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
            opts,
            _lock: lock,
            active: None,
            next_seq: 0,
            last_hash: ZERO_HASH,
            body: Vec::with_capacity(1024),
            poisoned: false,
        };
        let files = list_files(dir)?;
        let Some((newest_seq, newest)) = files.last() else {
            info!(dir = %dir.display(), "audit log: starting a new log");
            return Ok(log);
        };
        let tail = scan_tail(newest)?;
        let mut recovered = None;
        if tail.good_len < tail.len {
            let cut = tail.len - tail.good_len;
            let reason = tail.problem.unwrap_or_default();
            let file = OpenOptions::new()
                .write(true)
                .open(newest)
                .map_err(io_err("opening", newest))?;
            file.set_len(tail.good_len)
                .and_then(|()| file.sync_all())
                .map_err(io_err("truncating", newest))?;
            warn!(
                file = %newest.display(),
                truncated_bytes = cut,
                offset = tail.good_len,
                %reason,
                "audit log: cut a torn or corrupt tail left by a crash"
            );
            recovered = Some(json!({
                "type": "lifecycle",
                "event": "audit.recovered",
                "time": crate::events::rfc3339(SystemTime::now()),
                "file": file_name(*newest_seq),
                "offset": tail.good_len,
                "truncated_bytes": cut,
                "reason": reason,
            }));
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
                log.continue_after(newest, last)?;
                !last.seal
            }
            None => {
                // The newest file is empty: the chain continues from the file before it.
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
                    log.continue_after(previous, last)?;
                }
                if *newest_seq != log.next_seq {
                    return Err(AuditError::Log {
                        path: newest.clone(),
                        problem: format!(
                            "the file is empty but the chain continues at seq {}",
                            log.next_seq
                        ),
                    });
                }
                true
            }
        };
        if reopen {
            log.active = Some(reopen_file(newest, *newest_seq)?);
        }
        info!(
            dir = %dir.display(),
            next_seq = log.next_seq,
            file = %newest.display(),
            "audit log: opened"
        );
        if let Some(record) = recovered {
            log.append(&record)?;
            log.flush()?;
        }
        Ok(log)
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
        self.check_usable()?;
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
        result
    }

    /// Write the buffered records and fsync them.
    pub fn flush(&mut self) -> Result<(), AuditError> {
        self.check_usable()?;
        let Some(active) = self.active.as_mut() else {
            return Ok(());
        };
        let result = active
            .out
            .flush()
            .and_then(|()| active.out.get_ref().sync_data());
        let path = active.path.clone();
        result.map_err(|e| self.poison("writing", &path, e))
    }

    /// Flush, seal the current file (when a signing key is configured) and close the log.
    pub fn close(mut self) -> Result<(), AuditError> {
        self.check_usable()?;
        self.finish_file()
    }

    /// The seq the next record will get.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// The hash of the last line written: keep a copy elsewhere to detect a cut-off tail.
    pub fn last_hash(&self) -> String {
        to_hex(&self.last_hash)
    }

    fn check_usable(&self) -> Result<(), AuditError> {
        if self.poisoned {
            return Err(AuditError::Log {
                path: self.dir.clone(),
                problem: "an earlier write failed; reopen the audit log to repair it".into(),
            });
        }
        Ok(())
    }

    /// Give up on the current file after a failed write: drop what is buffered (a reopen
    /// repairs the tail) and refuse further writes.
    fn poison(&mut self, op: &'static str, path: &Path, source: io::Error) -> AuditError {
        self.poisoned = true;
        if let Some(active) = self.active.take() {
            let _ = active.out.into_parts();
        }
        AuditError::Io {
            op,
            path: path.to_path_buf(),
            source,
        }
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

    /// Chain and buffer one line, in the current file or a new one.
    fn write_line(&mut self, body: &[u8]) -> Result<u64, AuditError> {
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
            Err(e) => {
                let path = active.path.clone();
                return Err(self.poison("writing", &path, e));
            }
        }
        self.next_seq = next;
        self.last_hash = hash;
        Ok(seq)
    }

    /// Seal (if signing) and fsync the current file, and stop appending to it.
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
            self.write_line(&body)?;
        }
        self.flush()?;
        if let Some(active) = self.active.take() {
            debug!(file = %active.path.display(), next_seq = self.next_seq, "audit log: file closed");
        }
        Ok(())
    }
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
}

/// Verify the log in `paths`: files, or directories of `audit-*.jsonl` files (in seq order),
/// which together must hold the whole log from seq 0. Returns the first broken line as
/// [`AuditError::Broken`]. With `public_key`, every seal must be signed by it and every file
/// but the last must be sealed; without, seals are checked against the key they name.
pub fn verify(
    paths: &[PathBuf],
    public_key: Option<VerifyingKey>,
) -> Result<VerifyReport, AuditError> {
    let mut files = Vec::new();
    for path in paths {
        let meta = fs::metadata(path).map_err(io_err("reading", path))?;
        if meta.is_dir() {
            let found = list_files(path)?;
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
        next_seq: 0,
        last_hash: ZERO_HASH,
        report: VerifyReport::default(),
    };
    for (i, path) in files.iter().enumerate() {
        v.file(path, i + 1 == files.len())?;
    }
    v.report.last_hash = to_hex(&v.last_hash);
    Ok(v.report)
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
    for (first, path) in list_files(dir)? {
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
