//! Ring buffer → records: the kernel event drainer, and the kernel escalations it files with
//! the approval queue.

use std::{
    collections::BTreeMap,
    os::fd::{AsFd as _, AsRawFd},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use aya::maps::{MapData, RingBuf};

use super::generation::SharedNames;
use crate::{
    approvals::{self, Approvals},
    events::{self, Clock, Names, Record},
    pipeline::{self, Publisher},
    policy,
};

/// How often the drainer reads the ring when the programs have not woken it (they wake it
/// only when the ring is filling up; see governance-ebpf's `emit`).
const EVENT_TICK: Duration = Duration::from_millis(50);
/// Events the drainer publishes at a time. A record is about a kilobyte: small batches stay
/// in the CPU's caches on their way through the pipeline, which still takes up to
/// [`pipeline::BATCH`] records per audit fsync.
const PUBLISH_CHUNK: usize = 256;

/// The kernel event drainer: a thread that reads the ring buffer in batches (on a short tick,
/// or when the programs wake it because the ring is filling up), names each event after the
/// generation that decided it, files kernel escalations with the approval queue, and publishes
/// the batch. It pauses while the pipeline is far behind: the ring then fills and the kernel
/// counts what it drops, and nothing here grows without bound.
pub(super) struct Drainer {
    pub ring: RingBuf<MapData>,
    pub names: SharedNames,
    pub clock: Clock,
    pub publisher: Publisher,
    pub approvals: Arc<Approvals>,
}

impl Drainer {
    pub(super) fn run(mut self, stop: Arc<AtomicBool>) {
        let fd = self.ring.as_fd().as_raw_fd();
        loop {
            let stopping = stop.load(Ordering::Relaxed);
            if !stopping && self.publisher.backlog() > pipeline::MAX_BACKLOG {
                std::thread::sleep(Duration::from_millis(2));
                continue;
            }
            let n = self.drain();
            if stopping {
                break;
            }
            if n == 0 {
                // SAFETY: a valid fd for the ring's lifetime; one pollfd.
                let mut pfd = libc::pollfd {
                    fd,
                    events: libc::POLLIN,
                    revents: 0,
                };
                unsafe { libc::poll(&mut pfd, 1, EVENT_TICK.as_millis() as i32) };
            }
        }
    }

    /// Publish what is in the ring now (in batches); how many events.
    fn drain(&mut self) -> usize {
        let names = self.names.read().map(|n| n.clone()).unwrap_or_default();
        let Self {
            ring,
            clock,
            publisher,
            approvals,
            ..
        } = self;
        publish_ring(ring, &names, u64::MAX, clock, publisher, approvals, None)
    }
}

/// After a handover: publish the events of the previous build's `ring` decided before
/// `until` (when this build's first generation was installed: before it, the previous build
/// alone decided, after its daemon had stopped; after it, this build's programs decided too and
/// reported it). Named by rule id only: the previous build's generations are not this
/// daemon's. How many.
pub(super) fn publish_previous(
    mut ring: RingBuf<MapData>,
    until: u64,
    clock: &Clock,
    publisher: &Publisher,
    approvals: &Approvals,
) -> usize {
    publish_ring(
        &mut ring,
        &BTreeMap::new(),
        until,
        clock,
        publisher,
        approvals,
        Some(" (decided by the previous build's programs while no daemon read its events)"),
    )
}

/// Publish what is in `ring` now (in batches) that was decided before `until`, with `note`
/// after each reason; how many events.
fn publish_ring(
    ring: &mut RingBuf<MapData>,
    names: &BTreeMap<u32, Arc<Names>>,
    until: u64,
    clock: &Clock,
    publisher: &Publisher,
    approvals: &Approvals,
    note: Option<&str>,
) -> usize {
    let unknown = Names::default();
    let mut total = 0;
    loop {
        let mut batch = publisher.batch(PUBLISH_CHUNK);
        while batch.len() < PUBLISH_CHUNK {
            let Some(item) = ring.next() else { break };
            let Some(ev) = events::parse(&item) else {
                tracing::warn!(
                    len = item.len(),
                    "ignoring a ring-buffer record of unexpected size"
                );
                continue;
            };
            drop(item);
            if ev.time_ns >= until {
                continue;
            }
            let n = names.get(&ev.generation).map_or(&unknown, |n| n.as_ref());
            let mut r = Record::from_kernel(&ev, n, clock);
            events::sequence::name(&ev, &mut r);
            if let Some(note) = note {
                r.reason.push_str(note);
            }
            match events::requested_grant(&ev) {
                // An escalation is reported when the approval queue takes it, with its
                // approval id, just before the request: what came before it goes first.
                Some(g) => {
                    total += batch.len();
                    publisher.publish_batch(std::mem::replace(
                        &mut batch,
                        publisher.batch(PUBLISH_CHUNK),
                    ));
                    escalate(approvals, publisher, r, g, n, ev.rule_id);
                    total += 1;
                }
                None => batch.push(r),
            }
        }
        if batch.is_empty() {
            return total;
        }
        total += batch.len();
        publisher.publish_batch(batch);
    }
}

/// A kernel escalation: the action was refused; file (or find) the approval request, and
/// report the decision with its approval id.
fn escalate(
    approvals: &Approvals,
    publisher: &Publisher,
    r: Record,
    g: governance_common::GrantKey,
    names: &Names,
    rule_id: u32,
) {
    let (timeout, on_timeout) = names
        .rule(rule_id)
        .and_then(|n| n.escalate)
        .unwrap_or((Duration::from_secs(300), policy::Posture::Block));
    let req = approvals::Request {
        agent: r.agent.as_deref().cloned().unwrap_or_default(),
        kind: r.kind.to_string(),
        object: r.object.clone(),
        rule: r.rule.clone(),
        reason: r.reason.clone(),
        timeout,
        on_timeout,
        bytes: 0,
    };
    let mut pending = Some(r);
    let queued = approvals.request_grant(req, g, &mut |info| {
        if let Some(mut r) = pending.take() {
            r.approval = Some(Box::new(info.clone()));
            publisher.publish(r);
        }
    });
    if let (Err(full), Some(mut r)) = (queued, pending.take()) {
        r.reason = format!("{} ({full}: not queued for approval)", r.reason);
        publisher.publish(r);
    }
}
