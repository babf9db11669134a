//! The writer: appends, batches and fsyncs, rotation, outages and recovery.

use super::*;

/// The writer. Not shared between processes: [`AuditLog::open`] takes an exclusive lock.
pub struct AuditLog {
    pub(super) dir: PathBuf,
    pub(super) opts: AuditOptions,
    pub(super) _lock: Flock<File>,
    /// The file being appended to; None until the first append after a seal or a fresh start.
    pub(super) active: Option<Active>,
    pub(super) next_seq: u64,
    pub(super) last_hash: [u8; 32],
    /// The body of the line being written, kept to avoid an allocation per record.
    pub(super) body: Vec<u8>,
    pub(super) health: Arc<AuditHealth>,
    /// Set while the log cannot be written.
    pub(super) outage: Option<Outage>,
    /// When the last flush succeeded.
    pub(super) durable_time: SystemTime,
    /// Seals written since the last flush (lines that are not records, when counting losses).
    pub(super) unflushed_seals: Vec<u64>,
    /// Records of agents written since the last flush: (seq, whose, refused), for a gap.
    pub(super) unflushed_by: Vec<(u64, Owner, bool)>,
    pub(super) gap_record: GapRecord,
}

/// A write failed: what is on disk no longer matches `next_seq`/`last_hash` until a retry
/// repairs the tail.
pub(super) struct Outage {
    pub(super) cause: String,
    pub(super) failed_at: SystemTime,
    /// The last successful flush before it.
    pub(super) from: SystemTime,
    pub(super) failures: u64,
    /// `next_seq` when the write failed: lines from the last one on disk up to it were lost.
    pub(super) failed_next_seq: u64,
    /// Seals among them.
    pub(super) seals: Vec<u64>,
    /// Records refused since (appends that failed or came during the outage).
    pub(super) refused: u64,
    /// The unflushed records of agents when the write failed (`unflushed_by`).
    pub(super) buffered_by: Vec<(u64, Owner, bool)>,
    /// The refused records of agents.
    pub(super) refused_by: Tally,
    pub(super) backoff: Duration,
    pub(super) next_attempt: Instant,
    /// A gap record written by a retry whose fsync then failed. If it is on disk after all, the
    /// next gap counts only what came after it.
    pub(super) attempted_gap: Option<Attempt>,
    /// The first seq of a file found removed or replaced: every record written to it is lost,
    /// whatever the file now under its name holds, and a gap record says so even when the
    /// count comes out as none.
    pub(super) lost_file: Option<u64>,
}

/// A gap record whose fsync failed: its seq and hash, and what it counted.
pub(super) struct Attempt {
    seq: u64,
    hash: [u8; 32],
    refused: u64,
    refused_by: Tally,
    lost: u64,
}

pub(super) struct Active {
    pub(super) path: PathBuf,
    pub(super) out: BufWriter<File>,
    pub(super) first_seq: u64,
    /// Bytes in the file, buffered ones included.
    pub(super) bytes: u64,
    pub(super) created: Instant,
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
            unflushed_by: Vec::new(),
            gap_record: Box::new(plain_gap_record),
        };
        if let Some(cut) = log.resume()? {
            // An event record (kind `audit.recovered`), so that `events --since` and the
            // report show the cut as they show a gap (red team round 32: it was a line of its
            // own shape, which they skipped), with the cut's facts as `audit_cut`.
            let mut r = crate::events::Record::daemon(
                crate::events::RecordType::Lifecycle,
                "audit.recovered",
                format!(
                    "the audit log's last file {} ended in a torn or corrupt tail (a crash while \
                     writing): {} bytes cut at offset {}: {}",
                    cut.file, cut.truncated_bytes, cut.offset, cut.reason
                ),
            );
            r.counts
                .insert("truncated_bytes".into(), cut.truncated_bytes);
            log.append(&r.with_member("audit_cut", &cut))?;
            log.flush()?;
        }
        log.apply_retention();
        Ok(log)
    }

    /// Take the log up where the files on disk end: cut a torn or corrupt tail off the newest
    /// file and continue the chain after its last good line (the start of [`AuditLog::open`],
    /// and of every retry after a failed write). Returns what was cut.
    pub(super) fn resume(&mut self) -> Result<Option<Cut>, AuditError> {
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

    pub(super) fn continue_after(&mut self, path: &Path, last: Last) -> Result<(), AuditError> {
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
        self.append_by(record, None)
    }

    /// [`AuditLog::append`] of a record of an agent's: see [`AuditLog::append_json_by`].
    pub fn append_by<T: Serialize + ?Sized>(
        &mut self,
        record: &T,
        by: Option<(Owner, bool)>,
    ) -> Result<u64, AuditError> {
        self.append_with(
            |body| {
                serde_json::to_writer(body, record)
                    .map_err(|e| format!("serialising a record: {e}"))
            },
            by,
        )
    }

    /// [`AuditLog::append`] of a record serialised already: `json` must be one JSON value, as
    /// `serde_json` writes it (what the line holds, and what its hash covers, are these bytes).
    /// For a caller that needs the same bytes for something else too.
    pub fn append_json(&mut self, json: &[u8]) -> Result<u64, AuditError> {
        self.append_json_by(json, None)
    }

    /// [`AuditLog::append_json`] of a record of an agent's (`by`: whose, and whether it was a
    /// refusal), so that a gap record can say whose records it lost.
    pub fn append_json_by(
        &mut self,
        json: &[u8],
        by: Option<(Owner, bool)>,
    ) -> Result<u64, AuditError> {
        self.append_with(
            |body| {
                body.extend_from_slice(json);
                Ok(())
            },
            by,
        )
    }

    pub(super) fn append_with(
        &mut self,
        value: impl FnOnce(&mut Vec<u8>) -> Result<(), String>,
        by: Option<(Owner, bool)>,
    ) -> Result<u64, AuditError> {
        if self.ready().is_err() {
            self.refused_one(by.as_ref());
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
        match result {
            Ok(seq) => {
                if let Some((owner, denied)) = by {
                    self.unflushed_by.push((seq, owner, denied));
                }
                Ok(seq)
            }
            Err(e) => {
                let e = self.fail_on_io(e);
                if self.outage.is_some() {
                    self.refused_one(by.as_ref());
                }
                Err(e)
            }
        }
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
    pub(super) fn ready(&mut self) -> Result<(), AuditError> {
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

    pub(super) fn unavailable(&self) -> AuditError {
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

    pub(super) fn refused_one(&mut self, by: Option<&(Owner, bool)>) {
        if let Some(o) = &mut self.outage {
            o.refused += 1;
            if let Some((owner, denied)) = by {
                count(&mut o.refused_by, owner, *denied);
            }
            self.health.refused_now.store(o.refused, Ordering::Relaxed);
        }
    }

    /// An I/O error means the files no longer match `next_seq`/`last_hash`: start (or
    /// prolong) an outage. Other errors (a record that does not serialise) leave the log as is.
    pub(super) fn fail_on_io(&mut self, e: AuditError) -> AuditError {
        if matches!(e, AuditError::Io { .. }) {
            self.fail(&e);
        }
        e
    }

    /// Drop what is buffered (a retry repairs the tail) and refuse writes until a retry works.
    pub(super) fn fail(&mut self, e: &AuditError) {
        // A file no longer at its name ([`still_named`]): what was written to it is lost.
        let lost_file = self
            .active
            .as_ref()
            .filter(|a| still_named(a.out.get_ref(), &a.path).is_err())
            .map(|a| a.first_seq);
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
                    buffered_by: std::mem::take(&mut self.unflushed_by),
                    refused_by: Tally::new(),
                    backoff,
                    next_attempt: now + backoff,
                    attempted_gap: None,
                    lost_file,
                });
                *lock(&self.health.outage) = Some((crate::events::rfc3339(failed_at), message));
                self.health.refused_now.store(0, Ordering::Relaxed);
                self.health.down.store(true, Ordering::Relaxed);
            }
        }
    }

    /// One retry: repair the tail, then write and fsync the gap record. The outage ends only
    /// when the gap record is durable.
    pub(super) fn recover(&mut self) {
        let cut = match self.resume() {
            Ok(cut) => cut,
            Err(e) => return self.fail(&e),
        };
        let Some(o) = self.outage.as_mut() else {
            return;
        };
        // A gap record whose fsync failed may be on disk after all: then what it counted is
        // recorded, and the outage goes on from it.
        if let Some(a) = o.attempted_gap.take()
            && self.next_seq == a.seq + 1
            && self.last_hash == a.hash
        {
            self.health
                .records_lost
                .fetch_add(a.lost, Ordering::Relaxed);
            self.health.gaps.fetch_add(1, Ordering::Relaxed);
            o.failed_next_seq = self.next_seq;
            o.seals.clear();
            o.buffered_by.clear();
            o.refused -= a.refused;
            for (owner, (lost, denied)) in a.refused_by {
                if let Some(now) = o.refused_by.get_mut(&owner) {
                    *now = (now.0.saturating_sub(lost), now.1.saturating_sub(denied));
                }
            }
            o.refused_by.retain(|_, (lost, _)| *lost > 0);
        }
        let first_lost = self.next_seq;
        let buffered = o.failed_next_seq.saturating_sub(first_lost)
            - o.seals
                .iter()
                .filter(|s| (first_lost..o.failed_next_seq).contains(s))
                .count() as u64;
        // A file removed or replaced: everything written to it is lost, also what a file now
        // at its name claims to hold (the review of round 32: a replacement whose chain went
        // on past the failure left no gap).
        let in_lost_file = o
            .lost_file
            .map_or(0, |first| o.failed_next_seq.saturating_sub(first));
        let lost = buffered.max(in_lost_file) + o.refused;
        if lost == 0 && o.lost_file.is_none() {
            return self.recovered(0, None);
        }
        let mut by_agent = o.refused_by.clone();
        for (_, owner, denied) in o
            .buffered_by
            .iter()
            .filter(|(seq, ..)| (first_lost..o.failed_next_seq).contains(seq))
        {
            count(&mut by_agent, owner, *denied);
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
            by_agent: by_agent
                .into_iter()
                .map(|(owner, (lost, denied))| AgentLoss {
                    owner,
                    lost,
                    denied,
                })
                .collect(),
        };
        let (refused, refused_by) = (o.refused, o.refused_by.clone());
        let mut body = b"\"record\":".to_vec();
        body.extend_from_slice(&(self.gap_record)(&gap));
        let written = match self.write_line(&body) {
            Ok(seq) => {
                let attempted = Attempt {
                    seq,
                    hash: self.last_hash,
                    refused,
                    refused_by,
                    lost,
                };
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

    pub(super) fn recovered(&mut self, lost: u64, gap: Option<&Gap>) {
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
    pub(super) fn discard_active(&mut self) {
        if let Some(active) = self.active.take() {
            let _ = active.out.into_parts();
        }
    }

    pub(super) fn flush_inner(&mut self) -> Result<(), AuditError> {
        if let Some(active) = self.active.as_mut() {
            #[cfg(test)]
            injected(&self.opts, &active.path)?;
            active
                .out
                .flush()
                .and_then(|()| active.out.get_ref().sync_data())
                .and_then(|()| still_named(active.out.get_ref(), &active.path))
                .map_err(|e| AuditError::Io {
                    op: "writing",
                    path: active.path.clone(),
                    source: e,
                })?;
        }
        self.durable_time = SystemTime::now();
        self.unflushed_seals.clear();
        self.unflushed_by.clear();
        Ok(())
    }

    pub(super) fn rotate_if_due(&mut self) -> Result<(), AuditError> {
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
    pub(super) fn write_line(&mut self, body: &[u8]) -> Result<u64, AuditError> {
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
    pub(super) fn finish_file(&mut self) -> Result<(), AuditError> {
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
    pub(super) fn apply_retention(&mut self) {
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
#[derive(Serialize)]
pub(super) struct Cut {
    pub(super) file: String,
    pub(super) offset: u64,
    pub(super) truncated_bytes: u64,
    pub(super) reason: String,
}

/// Is `file` still the one `path` names? A file removed or replaced outside the daemon would
/// take every record written to it since with it, unseen (red team round 32: the log said `ok`
/// while the records went to a deleted file, and a restart began a new chain that verified):
/// an error then, so that the outage's gap record counts the records the files on disk lack.
fn still_named(file: &File, path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::MetadataExt as _;
    let gone = |open: &fs::Metadata| match fs::symlink_metadata(path) {
        Ok(named) => (named.dev(), named.ino()) != (open.dev(), open.ino()),
        Err(e) => e.kind() == std::io::ErrorKind::NotFound,
    };
    // (Another error than these, a passing one, says nothing of the file.)
    match file.metadata() {
        Ok(open) if open.nlink() > 0 && !gone(&open) => return Ok(()),
        Ok(_) => {}
        Err(_) => return Ok(()),
    }
    Err(std::io::Error::other(
        "the file was removed or replaced outside the daemon; the records written to it since \
         its last copy are not in the log",
    ))
}

#[cfg(test)]
pub(super) fn injected(opts: &AuditOptions, path: &Path) -> Result<(), AuditError> {
    if opts.fault.load(Ordering::Relaxed) {
        return Err(AuditError::Io {
            op: "writing",
            path: path.to_path_buf(),
            source: io::Error::from_raw_os_error(libc::ENOSPC),
        });
    }
    Ok(())
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
