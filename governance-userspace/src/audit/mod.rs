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

mod format;
mod health;
mod keys;
mod replay;
mod retention;
mod verify;
mod writer;

use self::{format::*, retention::*};
pub use self::{health::*, keys::*, replay::*, verify::*, writer::*};

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

#[cfg(test)]
mod tests;

#[cfg(test)]
mod fault_tests;
