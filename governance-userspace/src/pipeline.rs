//! The event pipeline: every [`Record`] (kernel decisions from the ring-buffer drainer, HTTP
//! decisions from the proxy, approvals, policy and lifecycle records from the daemon) goes
//! through one thread that
//!
//! 1. enriches it (the acting process's cgroup path; for exec, the executable and argv from
//!    procfs, marked `gone` when the process has exited),
//! 2. numbers it (event id, node) and appends it to the audit log, fsyncing once per batch,
//! 3. counts it in the metrics and per agent,
//! 4. prints it (one readable line on stdout, unless quiet; through its own bounded queue, so
//!    a stdout nobody reads costs lines, with a warning, never the audit log),
//! 5. hands it to every live subscriber whose filter matches.
//!
//! Work is batched: the thread takes everything queued (up to [`BATCH`] records) per wakeup.
//!
//! **When the audit log cannot be written** (a full disk, EIO), records still go on to the
//! metrics, stdout and subscribers; the audit log counts the ones it could not write and, when a
//! retry succeeds, writes a gap record saying how many (see [`crate::audit`]). Retries come
//! with the next records or, when none come, on a timer of this thread (the writer's backoff).
//! Whether governed actions go on meanwhile is `--audit-on-failure`: the proxy and the API
//! ask [`Publisher::audit_health`].
//!
//! **Backpressure never reaches the kernel.** The kernel writes into its ring buffer and never
//! waits; when the ring is full it drops the event and counts it (the verdict never depends on
//! the event). The drainer stops draining while this pipeline is more than [`MAX_BACKLOG`]
//! records behind, so a stalled disk makes the ring fill and the kernel's drop counter rise
//! instead of the daemon's memory. A slow subscriber has its own bounded queue: when it is
//! full that subscriber loses records (counted, and told with a `subscriber.lost` record as
//! soon as it has room again); nobody else waits for it.

use std::{
    collections::{BTreeMap, HashMap},
    fmt::Write as _,
    io::Write as _,
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, AtomicUsize, Ordering},
        mpsc::{self as std_mpsc, RecvTimeoutError},
    },
    thread::JoinHandle,
    time::Instant,
};

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

use crate::{
    audit::{AuditError, AuditHealth, AuditLog, AuditOptions, OnFailure, Owner},
    events::{Filter, Ids, Record, RecordType, StreamInfo, rfc3339},
    metrics::Metrics,
};

/// Most records processed per wakeup (one audit fsync each).
pub const BATCH: usize = 4096;
/// Bytes of serialised records per buffer shared with subscribers (a small allocation, reused).
const SHARED_CHUNK: usize = 60 * 1024;
/// Records queued but not yet processed beyond which the kernel drainer pauses.
pub const MAX_BACKLOG: usize = 256 * 1024;

/// A record as subscribers get it: its place in the audit log and the record.
#[derive(Clone, Debug)]
pub struct Delivered {
    pub seq: u64,
    pub record: Arc<Record>,
    /// The record as JSON (the bytes `serde_json` writes: fields in declaration order), as the
    /// audit log holds it (a counted slice of its batch's buffer); empty when it was not
    /// serialised (then serialise `record`).
    pub json: Bytes,
}

/// Records as the NDJSON lines of a live stream (a [`Publisher::subscribe_lines`]
/// subscription): each record's JSON, as [`Delivered::json`], and a newline. Consecutive
/// records the subscriber gets are one counted slice of the pipeline's buffer: nothing is
/// allocated, copied or freed per record on their way to the client.
#[derive(Clone, Debug)]
pub struct Lines {
    /// Records in `bytes`.
    pub records: usize,
    pub bytes: Bytes,
}

/// A live subscription: records ([`Delivered`], one per message) or their lines
/// ([`LinesRx`]).
pub struct Subscription<R = mpsc::Receiver<Delivered>> {
    pub rx: R,
    /// Records this subscriber lost because its queue was full.
    pub lost: Arc<AtomicU64>,
    /// The audit sequence number of the first record it can receive: records before it are in
    /// the audit log (for replay).
    pub from_seq: u64,
    /// The stream's first record (`stream.subscribed`): the subscription is registered, with
    /// its filters and the last record before it.
    pub subscribed: Record,
}

/// A lines subscription's queue: its capacity is counted in records, not messages.
pub struct LinesRx {
    rx: mpsc::Receiver<Lines>,
    /// Records queued in `rx`.
    queued: Arc<AtomicUsize>,
}

impl LinesRx {
    /// The next lines, in order; None when the stream has ended.
    pub async fn recv(&mut self) -> Option<Lines> {
        let lines = self.rx.recv().await?;
        self.queued.fetch_sub(lines.records, Ordering::Relaxed);
        Some(lines)
    }

    /// The next lines if some are queued.
    pub fn try_recv(&mut self) -> Option<Lines> {
        let lines = self.rx.try_recv().ok()?;
        self.queued.fetch_sub(lines.records, Ordering::Relaxed);
        Some(lines)
    }
}

enum Msg {
    Records(Vec<Record>),
    Subscribe {
        filter: Filter,
        capacity: usize,
        reply: Reply,
    },
    /// Answered once everything sent before it is written (for orderly stops and tests).
    Flush(std_mpsc::Sender<()>),
    /// Write everything sent before it, close the audit log, end every subscription, stop.
    Stop,
}

/// Where a new subscription goes: what its subscriber gets.
enum Reply {
    Records(oneshot::Sender<Subscription>),
    Lines(oneshot::Sender<Subscription<LinesRx>>),
}

/// Where records enter the pipeline. Cheap to clone; never blocks.
#[derive(Clone)]
pub struct Publisher {
    tx: std_mpsc::Sender<Msg>,
    backlog: Arc<AtomicUsize>,
    audit: Arc<AuditHealth>,
    spares: Spares,
}

/// Emptied batches the pipeline hands back for reuse: a batch of kernel records is a few
/// hundred KB, and one freshly allocated for every publish is memory the kernel must fault
/// in again (`cargo xtask bench events`, docs/benchmarks.md).
type Spares = Arc<Mutex<Vec<Vec<Record>>>>;

/// Emptied batches kept for reuse, at most.
const SPARES: usize = 8;
/// Batches smaller than this (in records) are not worth keeping.
const SPARE_MIN: usize = 64;

impl Publisher {
    /// The audit log's state: whether it is written, its failures and losses, and (under
    /// `--audit-on-failure block`) whether governed actions must be refused.
    pub fn audit_health(&self) -> &Arc<AuditHealth> {
        &self.audit
    }

    /// An empty batch with room for `capacity` records, reused when one is spare.
    pub fn batch(&self, capacity: usize) -> Vec<Record> {
        let spare = self.spares.lock().ok().and_then(|mut s| s.pop());
        match spare {
            Some(mut b) => {
                b.reserve(capacity);
                b
            }
            None => Vec::with_capacity(capacity),
        }
    }

    pub fn publish(&self, r: Record) {
        self.publish_batch(vec![r]);
    }

    pub fn publish_batch(&self, records: Vec<Record>) {
        if records.is_empty() {
            return;
        }
        self.backlog.fetch_add(records.len(), Ordering::Relaxed);
        if self.tx.send(Msg::Records(records)).is_err() {
            tracing::warn!("event pipeline stopped; a record was not recorded");
        }
    }

    /// Records queued and not yet processed.
    pub fn backlog(&self) -> usize {
        self.backlog.load(Ordering::Relaxed)
    }

    /// Subscribe to the records published from now on that match `filter`, through a queue of
    /// `capacity` records.
    pub async fn subscribe(&self, filter: Filter, capacity: usize) -> Option<Subscription> {
        let (reply, rx) = oneshot::channel();
        self.send_subscribe(filter, capacity, Reply::Records(reply))?;
        rx.await.ok()
    }

    /// As [`Publisher::subscribe`], for a subscriber that wants only the records' NDJSON lines
    /// (a live JSON stream): they come in runs, without the records themselves.
    pub async fn subscribe_lines(
        &self,
        filter: Filter,
        capacity: usize,
    ) -> Option<Subscription<LinesRx>> {
        let (reply, rx) = oneshot::channel();
        self.send_subscribe(filter, capacity, Reply::Lines(reply))?;
        rx.await.ok()
    }

    fn send_subscribe(&self, filter: Filter, capacity: usize, reply: Reply) -> Option<()> {
        self.tx
            .send(Msg::Subscribe {
                filter,
                capacity: capacity.max(1),
                reply,
            })
            .ok()
    }

    /// Stop the pipeline once everything published before this call is written: the audit log
    /// is closed and every subscription ends (clones of the publisher may outlive it, in
    /// connections still open; what they publish later is dropped). Join the thread after.
    pub fn stop(&self) {
        let _ = self.tx.send(Msg::Stop);
    }

    /// Wait until everything published before this call is written and delivered.
    pub fn flush(&self) {
        let (tx, rx) = std_mpsc::channel();
        if self.tx.send(Msg::Flush(tx)).is_ok() {
            let _ = rx.recv();
        }
    }
}

/// Counts of decisions per agent and outcome, for `governance agents`.
pub type AgentCounts = Arc<Mutex<BTreeMap<String, BTreeMap<String, u64>>>>;

pub struct Config {
    /// The audit log directory and its options; None: no audit log (benchmarks only).
    pub audit: Option<(PathBuf, AuditOptions)>,
    /// The cgroup2 mount, to name cgroups.
    pub cgroup_root: PathBuf,
    pub metrics: Arc<Metrics>,
    /// Print each record as a line on stdout.
    pub stdout: bool,
}

/// What the pipeline thread shares with the daemon.
pub struct Handles {
    pub publisher: Publisher,
    pub counts: AgentCounts,
    /// The audit sequence number the next record gets.
    pub next_seq: Arc<AtomicU64>,
    /// The record ids the pipeline gives records that come without one; whoever else makes
    /// records takes its ids from here (two [`Ids`] made in one millisecond collide).
    pub ids: Arc<Ids>,
    /// The audit log's state (also [`Publisher::audit_health`]).
    pub audit_health: Arc<AuditHealth>,
    pub thread: JoinHandle<()>,
}

/// Open the audit log and start the pipeline thread. It runs until every [`Publisher`] is
/// dropped, then flushes and closes the audit log.
pub fn start(cfg: Config) -> Result<Handles, AuditError> {
    let ids = Arc::new(Ids::new());
    let mut audit = match &cfg.audit {
        Some((dir, opts)) => Some(AuditLog::open(dir, opts.clone())?),
        None => None,
    };
    let audit_health = match &mut audit {
        Some(a) => {
            a.set_gap_record(gap_record(ids.clone()));
            a.health()
        }
        None => Arc::new(AuditHealth::new(OnFailure::Continue)),
    };
    cfg.metrics.watch_audit(audit_health.clone());
    let (tx, rx) = std_mpsc::channel();
    let backlog = Arc::new(AtomicUsize::new(0));
    let counts = AgentCounts::default();
    let next_seq = Arc::new(AtomicU64::new(audit.as_ref().map_or(0, |a| a.next_seq())));
    let stdout = if cfg.stdout { Stdout::start() } else { None };
    let spares = Spares::default();
    let mut worker = Worker {
        audit,
        cfg,
        ids: ids.clone(),
        subs: Vec::new(),
        enricher: Enricher::default(),
        counts: counts.clone(),
        next_seq: next_seq.clone(),
        backlog: backlog.clone(),
        spares: spares.clone(),
        appended: 0,
        stdout,
        scratch: Vec::new(),
        last_id: String::new(),
    };
    let thread = std::thread::Builder::new()
        .name("events".into())
        .spawn(move || {
            crate::privilege::thread_started();
            worker.run(rx)
        })
        .map_err(|e| AuditError::Log {
            path: PathBuf::from("(pipeline thread)"),
            problem: e.to_string(),
        })?;
    Ok(Handles {
        publisher: Publisher {
            tx,
            backlog,
            audit: audit_health.clone(),
            spares,
        },
        counts,
        next_seq,
        ids,
        audit_health,
        thread,
    })
}

/// Gap records as event records (`lifecycle`, kind `audit.gap`, the counts in `counts`), with
/// the [`crate::audit::Gap`] as `audit_gap`.
fn gap_record(ids: Arc<Ids>) -> crate::audit::GapRecord {
    Box::new(move |gap| {
        let denied: u64 = gap.by_agent.iter().map(|a| a.denied).sum();
        let mut r = Record::daemon(
            RecordType::Lifecycle,
            "audit.gap",
            format!(
                "{} records are not in the audit log ({denied} of them refusals, of {} agents: \
                 audit_gap.by_agent): it could not be written from {} to {} ({} failed \
                 attempts): {}",
                gap.lost,
                gap.by_agent.len(),
                gap.failed_at,
                gap.until,
                gap.failures,
                gap.cause
            ),
        );
        r.id = ids.next();
        r.counts.insert("lost".into(), gap.lost);
        r.counts.insert("denied".into(), denied);
        r.counts.insert("failures".into(), gap.failures);
        serde_json::to_vec(&r.with_member("audit_gap", gap)).unwrap_or_default()
    })
}

struct Sub {
    filter: Filter,
    out: SubOut,
    lost: Arc<AtomicU64>,
    /// Losses already reported to the subscriber.
    reported: u64,
}

/// What a subscriber is sent.
enum SubOut {
    /// One message per record; the queue holds `capacity` of them.
    Records(mpsc::Sender<Delivered>),
    /// Runs of lines; `queued` records of them wait in the queue, at most `capacity`.
    Lines {
        tx: mpsc::Sender<Lines>,
        queued: Arc<AtomicUsize>,
        capacity: usize,
    },
}

struct Worker {
    audit: Option<AuditLog>,
    cfg: Config,
    ids: Arc<Ids>,
    subs: Vec<Sub>,
    enricher: Enricher,
    counts: AgentCounts,
    next_seq: Arc<AtomicU64>,
    backlog: Arc<AtomicUsize>,
    spares: Spares,
    /// Records the audit log took (counted in the metrics once flushed).
    appended: u64,
    stdout: Option<Stdout>,
    /// Where each record is serialised when nobody subscribes (reused).
    scratch: Vec<u8>,
    /// The id of the last record processed (a new subscription's starting point).
    last_id: String,
}

/// Records taken for one round of processing, in the batches they were published in.
#[derive(Default)]
struct Batch {
    chunks: Vec<Vec<Record>>,
    /// Records in `chunks`.
    len: usize,
}

impl Batch {
    fn push(&mut self, records: Vec<Record>) {
        self.len += records.len();
        self.chunks.push(records);
    }
}

/// Lines for stdout, written by a thread of their own through a bounded queue: when nobody
/// reads stdout (a full pipe), lines are dropped (with one warning) instead of stalling the
/// pipeline.
struct Stdout {
    tx: std_mpsc::SyncSender<String>,
    warned: bool,
}

impl Stdout {
    /// Batches of lines queued at most.
    const QUEUE: usize = 1024;

    fn start() -> Option<Self> {
        let (tx, rx) = std_mpsc::sync_channel::<String>(Self::QUEUE);
        std::thread::Builder::new()
            .name("stdout".into())
            .spawn(move || {
                crate::privilege::thread_started();
                let mut out = std::io::stdout();
                for lines in rx {
                    if out
                        .write_all(lines.as_bytes())
                        .and_then(|()| out.flush())
                        .is_err()
                    {
                        break; // stdout closed: nothing more to print
                    }
                }
            })
            .ok()?;
        Some(Self { tx, warned: false })
    }

    fn print(&mut self, lines: String) {
        if self.tx.try_send(lines).is_err() && !self.warned {
            self.warned = true;
            tracing::warn!(
                "stdout is not being read: event lines are dropped there (the audit log and subscribers have them)"
            );
        }
    }
}

impl Worker {
    fn run(&mut self, rx: std_mpsc::Receiver<Msg>) {
        // The batches as they were published, not merged: a record is large, and moving
        // thousands of them costs more than the rest of their way from the drainer.
        let mut batch = Batch::default();
        let mut flushes = Vec::new();
        let mut stopping = false;
        loop {
            // During an audit outage, wake up for the writer's retries even without records.
            let first = match self.audit.as_ref().and_then(AuditLog::retry_in) {
                None => match rx.recv() {
                    Ok(m) => m,
                    Err(_) => break,
                },
                Some(wait) => match rx.recv_timeout(wait) {
                    Ok(m) => m,
                    Err(RecvTimeoutError::Timeout) => {
                        if let Some(a) = &mut self.audit {
                            a.retry();
                        }
                        continue;
                    }
                    Err(RecvTimeoutError::Disconnected) => break,
                },
            };
            let mut next = Some(first);
            while let Some(msg) = next.take() {
                match msg {
                    Msg::Stop => stopping = true,
                    Msg::Records(r) => batch.push(r),
                    Msg::Subscribe {
                        filter,
                        capacity,
                        reply,
                    } => {
                        // Records before this point are in the audit log; the subscriber gets
                        // the ones processed after it. Process what is queued first so that
                        // the boundary is exact.
                        self.process(&mut batch);
                        self.subscribe(filter, capacity, reply);
                    }
                    Msg::Flush(done) => flushes.push(done),
                }
                if batch.len < BATCH && !stopping {
                    next = rx.try_recv().ok();
                }
            }
            self.process(&mut batch);
            for done in flushes.drain(..) {
                let _ = done.send(());
            }
            if stopping {
                break;
            }
        }
        self.process(&mut batch);
        // Every stream ends with a record that says why, then its end (the API closes the
        // response cleanly once the queue is drained).
        let seq = self.next_seq.load(Ordering::Relaxed);
        for s in std::mem::take(&mut self.subs) {
            let end = self.stream_record(
                "stream.ended",
                "the daemon is stopping".into(),
                &s.filter,
                seq,
            );
            match &s.out {
                SubOut::Records(tx) => {
                    let _ = tx.try_send(Delivered {
                        seq,
                        record: Arc::new(end),
                        json: Bytes::new(),
                    });
                }
                SubOut::Lines { tx, queued, .. } => {
                    queued.fetch_add(1, Ordering::Relaxed);
                    let _ = tx.try_send(line_of(&end));
                }
            }
        }
        if let Some(audit) = self.audit.take()
            && let Err(e) = audit.close()
        {
            tracing::error!("closing the audit log: {e}");
        }
    }

    fn process(&mut self, batch: &mut Batch) {
        if batch.len == 0 {
            return;
        }
        let n = batch.len;
        // Each record is serialised once: for the audit log, and for the subscribers' streams
        // (their sequence numbers and bytes, kept only when someone subscribes).
        // With subscribers, the batch is serialised into buffers of [`SHARED_CHUNK`] bytes and
        // each subscriber gets a counted slice of one: no allocation, copy or free per record
        // on their way, and a slow subscriber keeps a chunk alive, not the batch.
        let keep = !self.subs.is_empty();
        let mut delivering: Vec<(u64, usize, std::ops::Range<usize>)> =
            Vec::with_capacity(if keep { n } else { 0 });
        let mut json = std::mem::take(&mut self.scratch);
        let mut shared: Vec<u8> = Vec::new();
        let mut chunks: Vec<Bytes> = Vec::new();
        for r in batch.chunks.iter_mut().flatten() {
            if r.id.is_empty() {
                r.id = self.ids.next();
            }
            if r.node.is_empty() {
                r.node = crate::events::node_name().into();
            }
            if r.time.is_empty() {
                r.time = rfc3339(std::time::SystemTime::now());
            }
            self.enricher.enrich(r, &self.cfg.cgroup_root);
            if keep && shared.len() >= SHARED_CHUNK {
                let full = std::mem::replace(&mut shared, Vec::with_capacity(SHARED_CHUNK + 4096));
                chunks.push(Bytes::from(full));
            } else if keep && shared.capacity() == 0 {
                shared.reserve(SHARED_CHUNK + 4096);
            }
            let out = if keep { &mut shared } else { &mut json };
            if !keep {
                out.clear();
            }
            let start = out.len();
            let encoded =
                (self.audit.is_some() || keep) && crate::events::json::write(r, out).is_ok();
            if !encoded {
                out.truncate(start);
            }
            let end = out.len();
            let seq = self.append(r, encoded.then_some(&out[start..end]));
            if keep {
                // Each record's line ends in a newline, so that lines subscribers get runs
                // of consecutive records as one slice; the JSON is `start..end`.
                if encoded {
                    out.push(b'\n');
                }
                delivering.push((seq, chunks.len(), start..end));
            }
        }
        self.scratch = json;
        chunks.push(Bytes::from(shared));
        if let Some(last) = batch.chunks.iter().flatten().next_back() {
            self.last_id.clone_from(&last.id);
        }
        for chunk in &batch.chunks {
            self.cfg.metrics.observe_all(chunk);
        }
        if self.flush_audit() {
            self.cfg.metrics.inc_audit_records(self.appended);
        }
        self.appended = 0;
        self.cfg.metrics.inc_events_published(n as u64);
        self.count(batch.chunks.iter().flatten());
        if let Some(out) = &mut self.stdout {
            let mut lines = String::new();
            for r in batch.chunks.iter().flatten() {
                let _ = writeln!(lines, "{r}");
            }
            out.print(lines);
        }
        // Nobody to deliver to when `delivering` is empty (a subscriber that came meanwhile
        // starts after this batch). Records go into shared references only when a subscriber
        // takes records; lines subscribers get slices of `chunks`.
        let mut records = std::mem::take(&mut batch.chunks);
        if !delivering.is_empty() {
            let shared: Vec<Delivered> = if self
                .subs
                .iter()
                .any(|s| matches!(s.out, SubOut::Records(_)))
            {
                records
                    .iter_mut()
                    .flat_map(|c| c.drain(..))
                    .zip(&delivering)
                    .map(|(r, (seq, chunk, range))| Delivered {
                        seq: *seq,
                        record: Arc::new(r),
                        json: chunks[*chunk].slice(range.clone()),
                    })
                    .collect()
            } else {
                Vec::new()
            };
            if self
                .subs
                .iter()
                .any(|s| matches!(s.out, SubOut::Lines { .. }))
            {
                let refs: Vec<&Record> = if shared.is_empty() {
                    records.iter().flatten().collect()
                } else {
                    shared.iter().map(|d| &*d.record).collect()
                };
                let metrics = &self.cfg.metrics;
                self.subs
                    .retain_mut(|s| deliver_lines(s, &refs, &delivering, &chunks, metrics));
            }
            for d in shared {
                self.deliver(d);
            }
        }
        self.recycle(records);
        batch.len = 0;
        self.backlog.fetch_sub(n, Ordering::Relaxed);
    }

    /// Append to the audit log (`json`: the record serialised already); the record's sequence
    /// number.
    fn append(&mut self, r: &Record, json: Option<&[u8]>) -> u64 {
        let seq = self.next_seq.load(Ordering::Relaxed);
        if let Some(audit) = &mut self.audit {
            let appended = match json {
                Some(json) => audit.append_json_by(json, owner(r)),
                None => audit.append_by(r, owner(r)),
            };
            match appended {
                Ok(s) => {
                    self.next_seq.store(s + 1, Ordering::Relaxed);
                    self.appended += 1;
                    return s;
                }
                Err(e) => audit_failed(&e),
            }
        } else {
            self.next_seq.store(seq + 1, Ordering::Relaxed);
        }
        seq
    }

    /// Whether what was appended is durable.
    fn flush_audit(&mut self) -> bool {
        let started = Instant::now();
        let Some(audit) = &mut self.audit else {
            return false;
        };
        match audit.flush() {
            Ok(()) => {
                self.cfg.metrics.observe_audit_flush(started.elapsed());
                true
            }
            Err(e) => {
                audit_failed(&e);
                false
            }
        }
    }

    fn count<'a>(&self, batch: impl Iterator<Item = &'a Record>) {
        let Ok(mut counts) = self.counts.lock() else {
            return;
        };
        for r in batch.filter(|r| r.ty == RecordType::Decision) {
            if let Some(a) = &r.agent {
                // Looked up before inserting: no allocation for names already counted.
                let outcomes = match counts.get_mut(&a.name) {
                    Some(o) => o,
                    None => counts.entry(a.name.clone()).or_default(),
                };
                match outcomes.get_mut(&*r.outcome) {
                    Some(c) => *c += 1,
                    None => {
                        outcomes.insert(r.outcome.to_string(), 1);
                    }
                }
            }
        }
    }

    /// Drop the batches' records and keep the larger emptied batches for reuse.
    fn recycle(&self, chunks: Vec<Vec<Record>>) {
        let Ok(mut spares) = self.spares.lock() else {
            return;
        };
        for mut c in chunks {
            c.clear();
            if spares.len() < SPARES && c.capacity() >= SPARE_MIN {
                spares.push(c);
            }
        }
    }

    /// Register a subscriber: it gets the records processed from now on.
    fn subscribe(&mut self, filter: Filter, capacity: usize, reply: Reply) {
        let lost = Arc::new(AtomicU64::new(0));
        let from_seq = self.next_seq.load(Ordering::Relaxed);
        let subscribed = self.stream_record(
            "stream.subscribed",
            format!(
                "subscribed: live records follow {}",
                if self.last_id.is_empty() {
                    "from the first record"
                } else {
                    self.last_id.as_str()
                }
            ),
            &filter,
            from_seq,
        );
        let (out, sent) = match reply {
            Reply::Records(reply) => {
                let (tx, rx) = mpsc::channel(capacity);
                let sub = Subscription {
                    rx,
                    lost: lost.clone(),
                    from_seq,
                    subscribed,
                };
                (SubOut::Records(tx), reply.send(sub).is_ok())
            }
            Reply::Lines(reply) => {
                // Every message holds at least one record: a queue of `capacity` messages
                // never fills before `capacity` records do.
                let (tx, rx) = mpsc::channel(capacity);
                let queued = Arc::new(AtomicUsize::new(0));
                let sub = Subscription {
                    rx: LinesRx {
                        rx,
                        queued: queued.clone(),
                    },
                    lost: lost.clone(),
                    from_seq,
                    subscribed,
                };
                let out = SubOut::Lines {
                    tx,
                    queued,
                    capacity,
                };
                (out, reply.send(sub).is_ok())
            }
        };
        if sent {
            self.subs.push(Sub {
                filter,
                out,
                lost,
                reported: 0,
            });
        }
    }

    /// A record about a live stream itself (never in the audit log).
    fn stream_record(
        &self,
        kind: &'static str,
        message: String,
        filter: &Filter,
        next_seq: u64,
    ) -> Record {
        let mut r = Record::daemon(RecordType::Lifecycle, kind, message);
        r.stream = Some(Box::new(StreamInfo {
            filter: filter.clone(),
            after_id: self.last_id.clone(),
            next_seq,
        }));
        r
    }

    /// Hand one record to every records subscriber whose filter matches.
    fn deliver(&mut self, d: Delivered) {
        let metrics = &self.cfg.metrics;
        let seq = d.seq;
        self.subs.retain_mut(|s| {
            let SubOut::Records(tx) = &s.out else {
                return true;
            };
            if !s.filter.matches(&d.record) {
                return !tx.is_closed();
            }
            let lost = s.lost.load(Ordering::Relaxed);
            if lost > s.reported {
                let notice = lost_notice(lost - s.reported, lost);
                match tx.try_send(Delivered {
                    seq,
                    record: Arc::new(notice),
                    json: Bytes::new(),
                }) {
                    Ok(()) => s.reported = lost,
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        s.lost.fetch_add(1, Ordering::Relaxed);
                        metrics.inc_subscriber_events_lost(1);
                        return true;
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => return false,
                }
            }
            // Two counted references: the record and its bytes are shared, not copied.
            match tx.try_send(d.clone()) {
                Ok(()) => true,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    s.lost.fetch_add(1, Ordering::Relaxed);
                    metrics.inc_subscriber_events_lost(1);
                    true
                }
                Err(mpsc::error::TrySendError::Closed(_)) => false,
            }
        });
    }
}

/// Whose a record is and whether it was a refusal (anything but an allowed or granted
/// decision), for a gap record's count by agent.
fn owner(r: &Record) -> Option<(Owner, bool)> {
    let a = r.agent.as_ref()?;
    let denied = r.ty == RecordType::Decision
        && (r.denied || !matches!(r.outcome.as_ref(), "allow" | "granted"));
    let owner = Owner {
        agent: a.name.clone(),
        cgroup_id: a.cgroup_id,
        cgroup: a.cgroup.clone(),
    };
    Some((owner, denied))
}

/// The record that tells a subscriber how many records it lost.
fn lost_notice(lost: u64, lost_total: u64) -> Record {
    let mut notice = Record::daemon(
        RecordType::Lifecycle,
        "subscriber.lost",
        format!("this subscriber's queue was full: {lost} records were not delivered to it"),
    );
    notice.counts.insert("lost".into(), lost);
    notice.counts.insert("lost_total".into(), lost_total);
    notice
}

/// One record as a line of its own (a record of the stream itself, or one that was not
/// serialised with its batch).
fn line_of(r: &Record) -> Lines {
    let mut json = serde_json::to_vec(r).unwrap_or_else(|_| b"null".to_vec());
    json.push(b'\n');
    Lines {
        records: 1,
        bytes: Bytes::from(json),
    }
}

/// Hand a batch to a lines subscriber (others are left alone): the records its filter
/// matches, as runs of consecutive lines, as far as its queue has room; the rest are lost,
/// counted, and told (a `subscriber.lost` record) once it has room again. `records[i]` is
/// serialised at `chunks[delivering[i].1]`, `delivering[i].2` (empty if it was not), its
/// newline after it. False when the subscriber has gone.
fn deliver_lines(
    s: &mut Sub,
    records: &[&Record],
    delivering: &[(u64, usize, std::ops::Range<usize>)],
    chunks: &[Bytes],
    metrics: &Metrics,
) -> bool {
    let SubOut::Lines {
        tx,
        queued,
        capacity,
    } = &s.out
    else {
        return true;
    };
    // Sends one message; false when the subscriber has gone.
    let send = |lines: Lines| -> bool {
        queued.fetch_add(lines.records, Ordering::Relaxed);
        match tx.try_send(lines) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(l)) => {
                // Not reached (see `subscribe`), but never silent.
                queued.fetch_sub(l.records, Ordering::Relaxed);
                s.lost.fetch_add(l.records as u64, Ordering::Relaxed);
                metrics.inc_subscriber_events_lost(l.records as u64);
                true
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    };
    let mut room = capacity.saturating_sub(queued.load(Ordering::Relaxed));
    // The run being gathered: its chunk, its bytes, its records.
    let mut run: Option<(usize, std::ops::Range<usize>, usize)> = None;
    let flush = |run: &mut Option<(usize, std::ops::Range<usize>, usize)>| -> bool {
        match run.take() {
            Some((chunk, range, records)) => send(Lines {
                records,
                bytes: chunks[chunk].slice(range),
            }),
            None => true,
        }
    };
    for (r, (_, chunk, json)) in records.iter().zip(delivering) {
        if !s.filter.matches(r) {
            continue;
        }
        let lost = s.lost.load(Ordering::Relaxed);
        if lost > s.reported && room > 0 {
            if !flush(&mut run) || !send(line_of(&lost_notice(lost - s.reported, lost))) {
                return false;
            }
            s.reported = lost;
            room -= 1;
        }
        if room == 0 {
            s.lost.fetch_add(1, Ordering::Relaxed);
            metrics.inc_subscriber_events_lost(1);
            continue;
        }
        room -= 1;
        if json.is_empty() {
            if !flush(&mut run) || !send(line_of(r)) {
                return false;
            }
            continue;
        }
        let line = json.start..json.end + 1;
        match &mut run {
            Some((c, range, n)) if *c == *chunk && range.end == line.start => {
                range.end = line.end;
                *n += 1;
            }
            _ => {
                if !flush(&mut run) {
                    return false;
                }
                run = Some((*chunk, line, 1));
            }
        }
    }
    flush(&mut run) && !tx.is_closed()
}

/// The audit log reports its outages itself (once, and when it is written again); anything
/// else that keeps a record out of it is logged here.
fn audit_failed(e: &AuditError) {
    if !matches!(e, AuditError::Io { .. } | AuditError::Unavailable { .. }) {
        tracing::warn!("a record was not written to the audit log: {e}");
    }
}

/// Names the acting cgroup and, for exec, the process's executable and command line.
#[derive(Default)]
struct Enricher {
    /// cgroup id → path relative to the cgroup2 mount ("" when unknown).
    cgroups: HashMap<u64, String>,
}

/// Does process `pid` run another program than the exec of `asked` (its file name) started?
/// Its executable is another file than the name leads to (`stat` of `/proc/PID/exe`, and of
/// the name under the process's root, or its working directory for a relative name), and its
/// command name is not the one that exec gave it (the name's last component, as the kernel
/// cuts it): a script runs its interpreter's file under the script's name. False when either
/// cannot be read.
fn another_program(pid: u32, asked: &str) -> bool {
    use std::os::unix::fs::MetadataExt as _;
    let named = match asked.strip_prefix('/') {
        Some(rel) => format!("/proc/{pid}/root/{rel}"),
        None if !asked.is_empty() => format!("/proc/{pid}/cwd/{asked}"),
        None => return false,
    };
    let other_file = match (
        std::fs::metadata(format!("/proc/{pid}/exe")),
        std::fs::metadata(named),
    ) {
        (Ok(exe), Ok(named)) => (exe.dev(), exe.ino()) != (named.dev(), named.ino()),
        _ => false,
    };
    let given = asked.rsplit('/').next().unwrap_or(asked).as_bytes();
    let given = &given[..given.len().min(governance_common::COMM_LEN - 1)];
    other_file
        && crate::procfs::read(format!("/proc/{pid}/comm"))
            .is_ok_and(|comm| comm.strip_suffix(b"\n").unwrap_or(&comm) != given)
}

/// Entries kept per cache before it is cleared (bounded memory under churn).
const CACHE_MAX: usize = 16_384;

impl Enricher {
    fn enrich(&mut self, r: &mut Record, root: &std::path::Path) {
        let pid = r.process.as_ref().map_or(0, |p| p.pid);
        if let Some(c) = r.cgroup.as_mut()
            && c.path.is_empty()
        {
            c.path = self.cgroup_path(c.id, pid, root);
        }
        // The container the process runs in, from its cgroup (the kubelet's layout).
        if let (Some(c), Some(a)) = (&r.cgroup, r.agent.as_mut())
            && a.container.is_empty()
            && let Some(k) = crate::kubernetes::cgroup::parse(&c.path).and_then(|p| p.container)
        {
            std::sync::Arc::make_mut(a).container = k.id;
        }
        if r.kind != "exec" {
            return;
        }
        let Some(p) = r.process.as_mut() else { return };
        let exe = std::fs::read_link(format!("/proc/{pid}/exe"));
        let cmdline = crate::procfs::read(format!("/proc/{pid}/cmdline"));
        // The process may have run another program since (a shell's `exec`; red team round 32:
        // the record of `/bin/sh` named `sleep` and its arguments): after an exec that went
        // ahead its executable must be the file the exec named, as the process's root and
        // working directory find it now. (After a refused one it still runs the program that
        // asked, which is what the record names.)
        let asked = r.object.path.as_str();
        if !r.denied
            && let Ok(exe) = &exe
            && another_program(pid, asked)
        {
            // What it runs now, said as such; its arguments would be that program's.
            p.exe = exe.to_string_lossy().into_owned();
            p.enrichment = "changed".into();
            return;
        }
        match (exe, cmdline) {
            (Ok(exe), Ok(cmdline)) => {
                p.exe = exe.to_string_lossy().into_owned();
                p.argv = cmdline
                    .split(|b| *b == 0)
                    .filter(|a| !a.is_empty())
                    .map(|a| String::from_utf8_lossy(a).into_owned())
                    .collect();
                p.enrichment = "procfs".into();
            }
            _ => p.enrichment = "gone".into(),
        }
    }

    fn cgroup_path(&mut self, id: u64, pid: u32, root: &std::path::Path) -> String {
        if let Some(p) = self.cgroups.get(&id) {
            return p.clone();
        }
        // The process's cgroup (v2 line `0::/path`), checked against the id: the process may
        // have moved since.
        let found = crate::procfs::read_to_string(format!("/proc/{pid}/cgroup"))
            .ok()
            .and_then(|text| {
                text.lines()
                    .find_map(|l| l.strip_prefix("0::/"))
                    .map(str::to_owned)
            })
            .filter(|rel| crate::agents::cgroup_id(&root.join(rel)).is_ok_and(|i| i == id))
            // The process is gone (a short-lived one, reaped before its event is read): the
            // cgroup by its id, one lookup (a walk of the agent's subtree, which the agent
            // shapes, cost every such event thousands of directories: red team round 29).
            .or_else(|| crate::agents::cgroup_by_id(root, id).ok());
        match found {
            Some(rel) => {
                if self.cgroups.len() >= CACHE_MAX {
                    self.cgroups.clear();
                }
                self.cgroups.insert(id, rel.clone());
                rel
            }
            None => String::new(),
        }
    }
}

#[cfg(test)]
mod tests {

    /// Red team round 32: an exec record named the program its process ran next (`sh -c
    /// 'exec sleep'`). A script runs its interpreter's file under its own name: not another
    /// program.
    #[test]
    fn a_process_that_runs_another_program_since_its_exec_is_told_apart() {
        use std::process::{Command, Stdio};
        let wait_for_comm = |pid: u32, want: &str| {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            loop {
                let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
                if comm.trim_end() == want {
                    return;
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "{pid} as {want}: {comm:?}"
                );
                std::thread::yield_now();
            }
        };
        let sleep = std::fs::canonicalize("/bin/sleep").unwrap();
        let mut plain = Command::new(&sleep).arg("30").spawn().unwrap();
        let mut shell = Command::new("/bin/sh")
            .args(["-c", "exec sleep 30"])
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("a-script.sh");
        std::fs::write(&script, "#!/bin/sh\nread x\n").unwrap();
        std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        // (ETXTBSY while another test's fork still holds the written file open: tried again.)
        let mut scripted = (0..100)
            .find_map(
                |_| match Command::new(&script).stdin(Stdio::piped()).spawn() {
                    Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) => {
                        std::thread::sleep(std::time::Duration::from_millis(10));
                        None
                    }
                    other => Some(other.unwrap()),
                },
            )
            .expect("the script runs");
        wait_for_comm(plain.id(), "sleep");
        wait_for_comm(shell.id(), "sleep");
        wait_for_comm(scripted.id(), "a-script.sh");
        let plain_path = sleep.to_str().unwrap();
        assert!(!another_program(plain.id(), plain_path));
        assert!(another_program(shell.id(), "/bin/sh"), "sh ran sleep since");
        assert!(!another_program(shell.id(), plain_path));
        assert!(
            !another_program(scripted.id(), script.to_str().unwrap()),
            "a script"
        );
        for c in [&mut plain, &mut shell, &mut scripted] {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
    use super::*;
    use crate::events::{AgentInfo, Source};

    fn decision(agent: &str, outcome: &str, kind: &str) -> Record {
        Record {
            ty: RecordType::Decision,
            source: Source::Proxy,
            kind: kind.to_owned().into(),
            outcome: outcome.to_owned().into(),
            denied: outcome == "block",
            agent: Some(
                AgentInfo {
                    name: agent.into(),
                    cgroup: format!("agents/{agent}"),
                    ..Default::default()
                }
                .into(),
            ),
            ..Default::default()
        }
    }

    fn start_in(dir: &std::path::Path) -> Handles {
        start(Config {
            audit: Some((dir.to_owned(), AuditOptions::default())),
            cgroup_root: PathBuf::from("/nonexistent"),
            metrics: Arc::new(Metrics::new()),
            stdout: false,
        })
        .unwrap()
    }

    #[test]
    fn filters_match_agent_outcome_kind_and_type() {
        let r = decision("billing-bot", "block", "exec");
        let f = |agent: Option<&str>, outcomes: &[&str], kinds: &[&str]| Filter {
            agent: agent.map(str::to_owned),
            outcomes: outcomes.iter().map(|s| s.to_string()).collect(),
            kinds: kinds.iter().map(|s| s.to_string()).collect(),
            types: vec![],
        };
        assert!(f(None, &[], &[]).matches(&r));
        assert!(f(Some("billing-bot"), &["block"], &["exec", "file"]).matches(&r));
        assert!(f(Some("agents/billing-bot"), &["denied"], &[]).matches(&r));
        assert!(!f(Some("other"), &[], &[]).matches(&r));
        assert!(!f(None, &["allow"], &[]).matches(&r));
        assert!(!f(None, &[], &["http"]).matches(&r));
        let types = Filter {
            types: vec![RecordType::Approval],
            ..Default::default()
        };
        assert!(!types.matches(&r));
    }

    /// A subscriber that keeps up gets everything in order; one that reads nothing loses what
    /// does not fit its queue, counted, and is told when it has room again; one that goes away
    /// is dropped. Everything is in the audit log whatever the subscribers do.
    #[tokio::test]
    async fn slow_and_dead_subscribers_cost_nobody_else() {
        let dir = tempfile::tempdir().unwrap();
        let h = start_in(dir.path());
        let mut steady = h
            .publisher
            .subscribe(Filter::default(), 100_000)
            .await
            .unwrap();
        let mut slow = h.publisher.subscribe(Filter::default(), 16).await.unwrap();
        let dead = h.publisher.subscribe(Filter::default(), 16).await.unwrap();
        drop(dead);
        const N: usize = 10_000;
        for i in 0..N {
            let mut r = decision("a", "block", "exec");
            r.message = i.to_string();
            h.publisher.publish(r);
        }
        h.publisher.flush();
        for i in 0..N {
            let d = steady.rx.recv().await.unwrap();
            assert_eq!(d.record.message, i.to_string(), "in order");
            assert_eq!(d.seq, i as u64);
            // The bytes the audit log holds.
            assert_eq!(d.json, serde_json::to_vec(&*d.record).unwrap());
        }
        assert_eq!(steady.lost.load(Ordering::Relaxed), 0);
        assert_eq!(slow.lost.load(Ordering::Relaxed), (N - 16) as u64);
        for _ in 0..16 {
            slow.rx.recv().await.unwrap();
        }
        // Room again: the next record comes after a notice of the loss.
        h.publisher.publish(decision("a", "allow", "exec"));
        h.publisher.flush();
        let notice = slow.rx.recv().await.unwrap();
        assert_eq!(notice.record.kind, "subscriber.lost");
        assert_eq!(notice.record.counts["lost"], (N - 16) as u64);
        assert_eq!(slow.rx.recv().await.unwrap().record.outcome, "allow");
        drop((steady, slow));
        let Handles {
            publisher, thread, ..
        } = h;
        drop(publisher);
        thread.join().unwrap();
        let report = crate::audit::verify(&[dir.path().to_owned()], None).unwrap();
        assert_eq!(report.records, N as u64 + 1);
    }

    /// Lines subscribers get what records subscribers get, as NDJSON lines: every record
    /// their filter matches, in order, the bytes `serde_json` writes plus a newline, in runs
    /// of consecutive records; losses are counted and told as for records subscribers; the
    /// stream ends with `stream.ended`.
    #[tokio::test]
    async fn lines_subscribers_get_the_same_records_as_lines() {
        let dir = tempfile::tempdir().unwrap();
        let h = start_in(dir.path());
        let mut records = h
            .publisher
            .subscribe(Filter::default(), 100_000)
            .await
            .unwrap();
        let mut steady = h
            .publisher
            .subscribe_lines(Filter::default(), 100_000)
            .await
            .unwrap();
        let blocks = Filter {
            outcomes: vec!["block".into()],
            ..Default::default()
        };
        let mut filtered = h.publisher.subscribe_lines(blocks, 100_000).await.unwrap();
        let mut slow = h
            .publisher
            .subscribe_lines(Filter::default(), 16)
            .await
            .unwrap();
        let dead = h
            .publisher
            .subscribe_lines(Filter::default(), 16)
            .await
            .unwrap();
        drop(dead);
        const N: usize = 10_000;
        // Every third record is a block: the filtered subscriber's runs are broken up.
        let outcome = |i: usize| {
            if i.is_multiple_of(3) {
                "block"
            } else {
                "allow"
            }
        };
        for i in 0..N {
            let mut r = decision("a", outcome(i), "exec");
            r.message = i.to_string();
            h.publisher.publish(r);
        }
        h.publisher.flush();
        let mut expected = Vec::new();
        let mut expected_blocks = Vec::new();
        for i in 0..N {
            let d = records.rx.recv().await.unwrap();
            assert_eq!(d.record.message, i.to_string());
            let mut line = serde_json::to_vec(&*d.record).unwrap();
            line.push(b'\n');
            if i.is_multiple_of(3) {
                expected_blocks.extend_from_slice(&line);
            }
            expected.extend_from_slice(&line);
        }
        // Takes lines until `len` bytes have come; how many messages they came in.
        async fn take(sub: &mut LinesRx, len: usize) -> (Vec<u8>, usize, usize) {
            let (mut got, mut messages, mut records) = (Vec::new(), 0, 0);
            while got.len() < len {
                let l = sub.recv().await.unwrap();
                assert_eq!(l.bytes.iter().filter(|&&b| b == b'\n').count(), l.records);
                got.extend_from_slice(&l.bytes);
                messages += 1;
                records += l.records;
            }
            (got, messages, records)
        }
        let (got, messages, n) = take(&mut steady.rx, expected.len()).await;
        assert!(got == expected, "the same bytes, in order");
        assert_eq!(n, N);
        assert!(
            messages < N / 10,
            "in runs, not a message per record: {messages}"
        );
        let (got, _, n) = take(&mut filtered.rx, expected_blocks.len()).await;
        assert!(got == expected_blocks, "only the blocks, in order");
        assert_eq!(n, N.div_ceil(3));
        assert_eq!(steady.lost.load(Ordering::Relaxed), 0);
        assert_eq!(filtered.lost.load(Ordering::Relaxed), 0);
        assert_eq!(slow.lost.load(Ordering::Relaxed), (N - 16) as u64);
        let (got, _, n) = take(&mut slow.rx, 1).await;
        let mut first = got;
        let mut n_slow = n;
        while n_slow < 16 {
            let (more, _, n) = take(&mut slow.rx, 1).await;
            first.extend_from_slice(&more);
            n_slow += n;
        }
        assert_eq!(n_slow, 16);
        assert!(first == expected[..first.len()], "the first 16 records");
        assert!(slow.rx.try_recv().is_none());
        // Room again: the next record comes after a notice of the loss.
        h.publisher.publish(decision("a", "allow", "exec"));
        h.publisher.flush();
        let notice: Record = serde_json::from_slice(&slow.rx.recv().await.unwrap().bytes).unwrap();
        assert_eq!(notice.kind, "subscriber.lost");
        assert_eq!(notice.counts["lost"], (N - 16) as u64);
        let next: Record = serde_json::from_slice(&slow.rx.recv().await.unwrap().bytes).unwrap();
        assert_eq!(next.outcome, "allow");
        // Stopping ends the stream with a record that says why, then the end.
        h.publisher.stop();
        let (_, _, _) = take(&mut steady.rx, 1).await; // the last allow
        let ended: Record = serde_json::from_slice(&steady.rx.recv().await.unwrap().bytes).unwrap();
        assert_eq!(ended.kind, "stream.ended");
        assert!(steady.rx.recv().await.is_none());
        h.thread.join().unwrap();
    }

    /// Replay from the audit log stops where a live subscription starts: nothing is missed or
    /// doubled between the two.
    #[tokio::test]
    async fn replay_and_live_meet_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let h = start_in(dir.path());
        for _ in 0..5 {
            h.publisher.publish(decision("a", "block", "exec"));
        }
        let mut sub = h.publisher.subscribe(Filter::default(), 100).await.unwrap();
        assert_eq!(sub.from_seq, 5);
        for _ in 0..3 {
            h.publisher.publish(decision("a", "allow", "exec"));
        }
        h.publisher.flush();
        let mut replayed = Vec::new();
        crate::audit::replay(dir.path(), std::time::UNIX_EPOCH, sub.from_seq, |r| {
            replayed.push(r);
            true
        })
        .unwrap();
        assert_eq!(replayed.len(), 5);
        assert!(replayed.iter().all(|r| r.outcome == "block"));
        // The stream's first record names the seam: the last replayed record, and the first
        // live sequence number.
        assert_eq!(sub.subscribed.kind, "stream.subscribed");
        let info = sub.subscribed.stream.as_ref().unwrap();
        assert_eq!(info.after_id, replayed[4].id);
        assert_eq!(info.next_seq, 5);
        assert_eq!(info.filter, Filter::default());
        for _ in 0..3 {
            assert_eq!(sub.rx.recv().await.unwrap().record.outcome, "allow");
        }
        // Stopping ends the stream with a record that says why, then the end.
        h.publisher.stop();
        let ended = sub.rx.recv().await.unwrap();
        assert_eq!(ended.record.kind, "stream.ended");
        assert_eq!(ended.record.message, "the daemon is stopping");
        assert_eq!(ended.record.stream.as_ref().unwrap().next_seq, 8);
        assert!(sub.rx.recv().await.is_none());
        h.thread.join().unwrap();
    }

    /// A disk that fills up: the records published meanwhile reach subscribers, the audit log
    /// gets a gap record (an `audit.gap` event record) counting them once it is written again,
    /// and the metrics and the health say so.
    #[tokio::test]
    async fn an_audit_outage_is_counted_and_recorded_as_a_gap() {
        let dir = tempfile::tempdir().unwrap();
        let opts = AuditOptions {
            // Retries on every record: no timer involved.
            retry: crate::audit::Backoff {
                first: std::time::Duration::ZERO,
                max: std::time::Duration::ZERO,
            },
            ..Default::default()
        };
        let fault = opts.fault.clone();
        let metrics = Arc::new(Metrics::new());
        let h = start(Config {
            audit: Some((dir.path().to_owned(), opts)),
            cgroup_root: PathBuf::from("/nonexistent"),
            metrics: metrics.clone(),
            stdout: false,
        })
        .unwrap();
        let mut sub = h.publisher.subscribe(Filter::default(), 100).await.unwrap();
        for _ in 0..3 {
            h.publisher.publish(decision("a", "allow", "exec"));
        }
        h.publisher.flush();
        fault.store(true, Ordering::Relaxed);
        // Whose they were, and which were refusals, the gap says (red team round 35).
        for (agent, outcome) in [
            ("a", "block"),
            ("a", "block"),
            ("b", "escalate"),
            ("b", "allow"),
        ] {
            h.publisher.publish(decision(agent, outcome, "exec"));
        }
        h.publisher.flush();
        let health = h.publisher.audit_health().clone();
        assert!(!health.writable());
        assert_eq!(health.view().refused_now, 4);
        fault.store(false, Ordering::Relaxed);
        h.publisher.publish(decision("a", "allow", "file"));
        h.publisher.flush();
        assert!(health.writable());
        for _ in 0..8 {
            sub.rx.recv().await.unwrap();
        }
        let text = metrics.render();
        assert!(
            text.contains("governance_audit_records_lost_total 4"),
            "{text}"
        );
        assert!(text.contains("governance_audit_gaps_total 1"), "{text}");
        assert!(text.contains("governance_audit_writable 1"), "{text}");
        assert!(text.contains("governance_audit_records_total 4"), "{text}");
        drop(sub);
        h.publisher.stop();
        h.thread.join().unwrap();
        let report = crate::audit::verify(&[dir.path().to_owned()], None).unwrap();
        assert_eq!((report.records, report.lost_records), (5, 4));
        let by_agent: Vec<_> = report.gaps[0]
            .1
            .by_agent
            .iter()
            .map(|a| {
                (
                    a.owner.agent.as_str(),
                    a.owner.cgroup.as_str(),
                    a.lost,
                    a.denied,
                )
            })
            .collect();
        assert_eq!(by_agent, [("a", "agents/a", 2, 2), ("b", "agents/b", 2, 1)]);
        // The gap is an event record: `events --since` shows it.
        let mut kinds = Vec::new();
        crate::audit::replay(dir.path(), std::time::UNIX_EPOCH, u64::MAX, |r| {
            kinds.push((
                r.kind,
                r.counts.get("lost").copied(),
                r.counts.get("denied").copied(),
            ));
            true
        })
        .unwrap();
        assert_eq!(kinds[3], ("audit.gap".into(), Some(4), Some(3)));
        assert_eq!(kinds.len(), 5);
    }

    /// A filtered subscription says what it filters; the stream records pass every filter.
    #[tokio::test]
    async fn the_first_record_states_the_filter() {
        let dir = tempfile::tempdir().unwrap();
        let h = start_in(dir.path());
        let filter = Filter {
            agent: Some("billing-bot".into()),
            outcomes: vec!["denied".into()],
            kinds: vec!["exec".into()],
            types: vec![RecordType::Decision],
        };
        let sub = h.publisher.subscribe(filter.clone(), 10).await.unwrap();
        assert_eq!(sub.subscribed.stream.as_ref().unwrap().filter, filter);
        // Nothing recorded yet: no id before it.
        assert_eq!(sub.subscribed.stream.as_ref().unwrap().after_id, "");
        let json = serde_json::to_value(&sub.subscribed).unwrap();
        assert_eq!(json["type"], "lifecycle");
        assert_eq!(json["stream"]["filter"]["outcomes"][0], "denied");
        assert_eq!(json["stream"]["filter"]["types"][0], "decision");
    }
}
