//! The approval queue: actions an `escalate` rule sent to a human, and what became of them.
//!
//! Three kinds of request wait here:
//!
//! - **HTTP holds** ([`Approvals::hold`]): the proxy keeps the client's request open and waits
//!   on the returned receiver. Approve → the request is forwarded; deny → 403 with the reason;
//!   timeout → the rule's `on_timeout`; the client going away → `withdrawn`.
//! - **Kernel escalations** ([`Approvals::request_grant`]): the kernel already refused the
//!   action (EPERM) and reported it; approving calls the daemon's [`Grant`] (a kernel map
//!   write) so the agent's retry passes for `grant_for`. The same [`GrantKey`] pending twice
//!   (the agent retrying) reuses the pending id.
//! - **Pre-authorizations** ([`Approvals::request_action`]): the decision API answered
//!   `escalate`; approving runs the caller's callback (the proxy records a time-bounded grant
//!   for that action), and the framework polls [`Approvals::get`] or retries.
//!
//! Every state change (requested, approved, denied, expired, withdrawn) is reported to the sink
//! as a [`Record`] of type `approval` with kind `approval.<state>`, the agent, the object and
//! an [`ApprovalInfo`] (id, state, who, deadline, reason): the audit trail. The sink is called
//! with the queue's lock held, so records come out in the order the changes happened; it must
//! not block and must not call back into the queue. The same holds for [`Grant`].
//!
//! Held requests are bounded per agent (count and buffered bytes) and overall ([`Limits`]); a
//! request over a limit is refused at once ([`Full`]).

use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use governance_common::GrantKey;
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use crate::{
    events::{AgentInfo, ApprovalInfo, Ids, Object, Record, RecordType, Sink, Source, rfc3339},
    policy::Posture,
};

/// Bounds on what may wait for a human at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Pending requests per agent.
    pub per_agent: usize,
    /// Bytes held (buffered request bodies) per agent.
    pub per_agent_bytes: usize,
    /// Pending requests overall.
    pub total: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            per_agent: 32,
            per_agent_bytes: 16 << 20,
            total: 1024,
        }
    }
}

/// An action waiting for a human.
#[derive(Clone, Debug)]
pub struct Request {
    pub agent: AgentInfo,
    /// `http`, `exec`, `file`, `connect`.
    pub kind: String,
    pub object: Object,
    /// `<policy>/<rule>` of the escalate rule.
    pub rule: String,
    pub reason: String,
    /// How long a human has to decide.
    pub timeout: Duration,
    /// What happens when nobody decides in time.
    pub on_timeout: Posture,
    /// Bytes the request holds in memory (an HTTP body); 0 for kernel escalations.
    pub bytes: usize,
}

/// What became of a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Resolution {
    Approved { by: String, grant_for: Duration },
    Denied { by: String, reason: String },
    Expired,
    Withdrawn,
}

/// The daemon's kernel map write: let the [`GrantKey`] through for this long.
pub type Grant = Arc<dyn Fn(GrantKey, Duration) -> Result<(), String> + Send + Sync>;

/// What approving a pre-authorization does (the proxy records a grant for the action).
pub type OnApprove = Box<dyn FnOnce(Duration) + Send>;

/// A request over one of the [`Limits`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("approval queue full: {what} ({limit})")]
pub struct Full {
    /// Which limit: `pending requests for this agent`, `bytes held for this agent`,
    /// `pending requests`.
    pub what: &'static str,
    pub limit: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApprovalError {
    #[error("no pending approval {0}")]
    NotFound(String),
    /// Already approved, denied, expired or withdrawn.
    #[error("{id} was {state}{} at {at}", by.as_ref().map(|b| format!(" by {b}")).unwrap_or_default())]
    Settled {
        id: String,
        state: String,
        by: Option<String>,
        at: String,
    },
    /// The kernel grant could not be written; the request stays pending.
    #[error("approving {id}: the grant failed: {message}")]
    Grant { id: String, message: String },
}

/// One request as the CLI and the control API show it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingView {
    /// `a-` and 8 base32 characters.
    pub id: String,
    /// pending, approved, denied, expired, withdrawn.
    pub state: String,
    pub agent: AgentInfo,
    pub kind: String,
    pub object: Object,
    pub rule: String,
    pub reason: String,
    /// RFC 3339.
    pub created: String,
    /// RFC 3339: after this the `on_timeout` posture applies.
    pub deadline: String,
    /// Seconds since it was created.
    pub age_secs: u64,
    /// Who approved or denied it.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub by: String,
    /// Why it was denied.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub denial: String,
    /// When it was settled (RFC 3339).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub settled: String,
}

/// What approving does.
enum Waiter {
    Hold(oneshot::Sender<Resolution>),
    Kernel(GrantKey),
    Action(OnApprove),
}

/// Identifies a repeated request so it reuses its pending id.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Dedup {
    Kernel(GrantKey),
    /// The agent root (cgroup id: agents of one label share a name) and the action's key.
    Action(u64, u64),
}

struct Entry {
    req: Request,
    created: SystemTime,
    deadline: SystemTime,
    state: &'static str,
    by: String,
    denial: String,
    settled: Option<SystemTime>,
}

struct Pending {
    entry: Entry,
    waiter: Waiter,
    dedup: Option<Dedup>,
}

#[derive(Default)]
struct State {
    pending: HashMap<String, Pending>,
    dedup: HashMap<Dedup, String>,
    /// Pending requests and bytes held, by agent root (cgroup id): agents that share a label
    /// each have their own (red team round 34: one agent's held requests filled its label's
    /// other agents' queue).
    per_agent: HashMap<u64, (usize, usize)>,
    /// Recently settled requests, for clear errors and polling; oldest first.
    settled: HashMap<String, Entry>,
    settled_order: VecDeque<String>,
    /// Approved kernel escalations whose grant is still running: (approval id, until when).
    /// A refusal the kernel reported just before the grant landed (the agent's retry racing the
    /// approval) belongs to that approval, not to a new request.
    granted: HashMap<GrantKey, (String, SystemTime)>,
}

/// How many settled requests are remembered.
const SETTLED_KEPT: usize = 4096;

/// The queue. Shared by the proxy, the daemon's kernel event loop and the control API.
pub struct Approvals {
    limits: Limits,
    sink: Sink,
    grant: Grant,
    ids: Arc<Ids>,
    state: Mutex<State>,
}

impl Approvals {
    pub fn new(limits: Limits, sink: Sink, grant: Grant) -> Arc<Self> {
        Self::with_ids(limits, sink, grant, Arc::new(Ids::new()))
    }

    /// Like [`Approvals::new`], sharing the daemon's record ids (two [`Ids`] created in the
    /// same millisecond would hand out the same ids). The proxy takes its ids from here.
    pub fn with_ids(limits: Limits, sink: Sink, grant: Grant, ids: Arc<Ids>) -> Arc<Self> {
        Arc::new(Self {
            limits,
            sink,
            grant,
            ids,
            state: Mutex::new(State::default()),
        })
    }

    /// The record ids this queue (and the proxy built on it) hands out.
    pub fn ids(&self) -> &Arc<Ids> {
        &self.ids
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// HTTP: hold until resolved. The receiver yields the resolution; the caller also runs
    /// its own timer (calling [`Approvals::expire`]) and calls [`Approvals::withdraw`] when its
    /// client goes away.
    pub fn hold(&self, req: Request) -> Result<(String, oneshot::Receiver<Resolution>), Full> {
        self.hold_announced(req, &mut |_| {})
    }

    /// [`Approvals::hold`], calling `announce` with the request's approval (id, deadline) just
    /// before the `approval.requested` record: the caller reports its decision there, so the
    /// stream reads decision, then request. Not called when the queue is full.
    pub fn hold_announced(
        &self,
        req: Request,
        announce: &mut dyn FnMut(&ApprovalInfo),
    ) -> Result<(String, oneshot::Receiver<Resolution>), Full> {
        let (tx, rx) = oneshot::channel();
        let id = self.insert(req, Waiter::Hold(tx), None, announce)?;
        Ok((id, rx))
    }

    /// Kernel: the action was already refused; approving calls `grant`. The same
    /// `GrantKey` pending twice reuses the pending id (and emits no new request).
    /// `announce` as for [`Approvals::hold_announced`] (also called for a reused id).
    pub fn request_grant(
        &self,
        req: Request,
        grant: GrantKey,
        announce: &mut dyn FnMut(&ApprovalInfo),
    ) -> Result<String, Full> {
        self.insert(
            req,
            Waiter::Kernel(grant),
            Some(Dedup::Kernel(grant)),
            announce,
        )
    }

    /// Pre-authorization: approving runs `on_approve` with the grant duration. `key`
    /// identifies the action: the same (agent, key) pending twice reuses the pending id.
    /// `announce` as for [`Approvals::hold_announced`] (also called for a reused id).
    pub fn request_action(
        &self,
        req: Request,
        key: u64,
        on_approve: OnApprove,
        announce: &mut dyn FnMut(&ApprovalInfo),
    ) -> Result<String, Full> {
        let dedup = Dedup::Action(req.agent.cgroup_id, key);
        self.insert(req, Waiter::Action(on_approve), Some(dedup), announce)
    }

    fn insert(
        &self,
        req: Request,
        waiter: Waiter,
        dedup: Option<Dedup>,
        announce: &mut dyn FnMut(&ApprovalInfo),
    ) -> Result<String, Full> {
        let mut st = self.lock();
        if let Waiter::Kernel(g) = &waiter {
            let now = SystemTime::now();
            st.granted.retain(|_, (_, until)| *until > now);
            if let Some((id, _)) = st.granted.get(g) {
                announce(&ApprovalInfo {
                    id: id.clone(),
                    state: "approved".into(),
                    ..Default::default()
                });
                return Ok(id.clone());
            }
        }
        if let Some(id) = dedup.as_ref().and_then(|d| st.dedup.get(d)).cloned() {
            if let Some(p) = st.pending.get(&id) {
                announce(&ApprovalInfo {
                    id: id.clone(),
                    state: "pending".into(),
                    deadline: rfc3339(p.entry.deadline),
                    ..Default::default()
                });
            }
            return Ok(id);
        }
        let (count, bytes) = st
            .per_agent
            .get(&req.agent.cgroup_id)
            .copied()
            .unwrap_or_default();
        if st.pending.len() >= self.limits.total {
            return Err(Full {
                what: "pending requests",
                limit: self.limits.total,
            });
        }
        if count >= self.limits.per_agent {
            return Err(Full {
                what: "pending requests for this agent",
                limit: self.limits.per_agent,
            });
        }
        if bytes.saturating_add(req.bytes) > self.limits.per_agent_bytes {
            return Err(Full {
                what: "bytes held for this agent",
                limit: self.limits.per_agent_bytes,
            });
        }
        let id = loop {
            let id = new_id();
            if !st.pending.contains_key(&id) && !st.settled.contains_key(&id) {
                break id;
            }
        };
        let created = SystemTime::now();
        let entry = Entry {
            deadline: created + req.timeout,
            created,
            state: "pending",
            by: String::new(),
            denial: String::new(),
            settled: None,
            req,
        };
        let slot = st.per_agent.entry(entry.req.agent.cgroup_id).or_default();
        slot.0 += 1;
        slot.1 += entry.req.bytes;
        announce(&ApprovalInfo {
            id: id.clone(),
            state: "pending".into(),
            deadline: rfc3339(entry.deadline),
            ..Default::default()
        });
        self.emit(&id, &entry, "requested");
        if let Some(d) = &dedup {
            st.dedup.insert(d.clone(), id.clone());
        }
        st.pending.insert(
            id.clone(),
            Pending {
                entry,
                waiter,
                dedup,
            },
        );
        Ok(id)
    }

    /// Every pending request, oldest first.
    pub fn list(&self) -> Vec<PendingView> {
        let st = self.lock();
        let now = SystemTime::now();
        let mut out: Vec<PendingView> = st
            .pending
            .iter()
            .map(|(id, p)| view(id, &p.entry, now))
            .collect();
        out.sort_by(|a, b| a.created.cmp(&b.created).then(a.id.cmp(&b.id)));
        out
    }

    /// One request, pending or recently settled (for polling).
    pub fn get(&self, id: &str) -> Option<PendingView> {
        let st = self.lock();
        let now = SystemTime::now();
        st.pending
            .get(id)
            .map(|p| view(id, &p.entry, now))
            .or_else(|| st.settled.get(id).map(|e| view(id, e, now)))
    }

    /// Approve: the held request is forwarded, the kernel grant written, or the
    /// pre-authorization's grant recorded, for `grant_for`.
    pub fn approve(
        &self,
        id: &str,
        by: &str,
        grant_for: Duration,
    ) -> Result<PendingView, ApprovalError> {
        let mut st = self.lock();
        let Some(p) = st.pending.get(id) else {
            return Err(settled_error(&st, id));
        };
        if let Waiter::Kernel(g) = &p.waiter
            && let Err(message) = (self.grant)(*g, grant_for)
        {
            return Err(ApprovalError::Grant {
                id: id.to_owned(),
                message,
            });
        }
        let Some(p) = self.take(&mut st, id) else {
            return Err(settled_error(&st, id));
        };
        let (mut entry, waiter) = (p.entry, p.waiter);
        let delivered = match waiter {
            Waiter::Hold(tx) => tx
                .send(Resolution::Approved {
                    by: by.to_owned(),
                    grant_for,
                })
                .is_ok(),
            Waiter::Kernel(g) => {
                st.granted
                    .insert(g, (id.to_owned(), SystemTime::now() + grant_for));
                true
            }
            Waiter::Action(f) => {
                f(grant_for);
                true
            }
        };
        if !delivered {
            // The client went away before the approval reached it: nothing was let through.
            let v = self.settle(&mut st, id.to_owned(), entry, "withdrawn", "", "");
            return Err(ApprovalError::Settled {
                id: id.to_owned(),
                state: "withdrawn (the client went away)".into(),
                by: None,
                at: v.settled,
            });
        }
        entry.by = by.to_owned();
        Ok(self.settle(&mut st, id.to_owned(), entry, "approved", by, ""))
    }

    /// Deny: a held request gets 403 with `reason`; a kernel or pre-authorization request
    /// stays refused.
    pub fn deny(&self, id: &str, by: &str, reason: &str) -> Result<PendingView, ApprovalError> {
        let mut st = self.lock();
        let Some(p) = self.take(&mut st, id) else {
            return Err(settled_error(&st, id));
        };
        if let Waiter::Hold(tx) = p.waiter {
            let _ = tx.send(Resolution::Denied {
                by: by.to_owned(),
                reason: reason.to_owned(),
            });
        }
        Ok(self.settle(&mut st, id.to_owned(), p.entry, "denied", by, reason))
    }

    /// The HTTP client went away: the request is dropped, unapproved. No-op when settled.
    pub fn withdraw(&self, id: &str) {
        let mut st = self.lock();
        if let Some(p) = self.take(&mut st, id) {
            if let Waiter::Hold(tx) = p.waiter {
                let _ = tx.send(Resolution::Withdrawn);
            }
            self.settle(&mut st, id.to_owned(), p.entry, "withdrawn", "", "");
        }
    }

    /// Expire one request now (an HTTP hold's own timer). Returns whether it was pending.
    pub fn expire(&self, id: &str) -> bool {
        let mut st = self.lock();
        match self.take(&mut st, id) {
            Some(p) => {
                if let Waiter::Hold(tx) = p.waiter {
                    let _ = tx.send(Resolution::Expired);
                }
                self.settle(&mut st, id.to_owned(), p.entry, "expired", "", "");
                true
            }
            None => false,
        }
    }

    /// Expire every request whose deadline is at or before `now`; returns how many. The
    /// daemon ticks this every second.
    pub fn expire_due(&self, now: SystemTime) -> usize {
        let due: Vec<String> = {
            let st = self.lock();
            st.pending
                .iter()
                .filter(|(_, p)| p.entry.deadline <= now)
                .map(|(id, _)| id.clone())
                .collect()
        };
        due.iter().filter(|id| self.expire(id)).count()
    }

    /// Remove a pending request and release what it held.
    fn take(&self, st: &mut State, id: &str) -> Option<Pending> {
        let p = st.pending.remove(id)?;
        if let Some(d) = &p.dedup {
            st.dedup.remove(d);
        }
        let root = p.entry.req.agent.cgroup_id;
        if let Some(slot) = st.per_agent.get_mut(&root) {
            slot.0 = slot.0.saturating_sub(1);
            slot.1 = slot.1.saturating_sub(p.entry.req.bytes);
            if slot.0 == 0 {
                st.per_agent.remove(&root);
            }
        }
        Some(p)
    }

    /// Record a settled request (kept for errors and polling) and report it.
    fn settle(
        &self,
        st: &mut State,
        id: String,
        mut entry: Entry,
        state: &'static str,
        by: &str,
        denial: &str,
    ) -> PendingView {
        entry.state = state;
        entry.by = by.to_owned();
        entry.denial = denial.to_owned();
        entry.settled = Some(SystemTime::now());
        self.emit(&id, &entry, state);
        let v = view(&id, &entry, SystemTime::now());
        st.settled.insert(id.clone(), entry);
        st.settled_order.push_back(id);
        while st.settled_order.len() > SETTLED_KEPT {
            if let Some(old) = st.settled_order.pop_front() {
                st.settled.remove(&old);
            }
        }
        v
    }

    fn emit(&self, id: &str, e: &Entry, what: &str) {
        let source = if e.req.kind == "http" {
            Source::Proxy
        } else {
            Source::Daemon
        };
        (self.sink)(Record {
            id: self.ids.next(),
            time: rfc3339(e.settled.unwrap_or(e.created)),
            node: crate::events::node_name().into(),
            ty: RecordType::Approval,
            source,
            kind: format!("approval.{what}").into(),
            rule: e.req.rule.clone(),
            reason: e.req.reason.clone(),
            agent: Some(e.req.agent.clone().into()),
            object: e.req.object.clone(),
            approval: Some(Box::new(ApprovalInfo {
                id: id.to_owned(),
                state: e.state.to_owned(),
                by: e.by.clone(),
                deadline: rfc3339(e.deadline),
                reason: e.denial.clone(),
            })),
            message: format!("{} request for {}", e.req.kind, e.req.agent.name),
            ..Default::default()
        });
    }
}

fn view(id: &str, e: &Entry, now: SystemTime) -> PendingView {
    PendingView {
        id: id.to_owned(),
        state: e.state.to_owned(),
        agent: e.req.agent.clone(),
        kind: e.req.kind.clone(),
        object: e.req.object.clone(),
        rule: e.req.rule.clone(),
        reason: e.req.reason.clone(),
        created: rfc3339(e.created),
        deadline: rfc3339(e.deadline),
        age_secs: now.duration_since(e.created).unwrap_or_default().as_secs(),
        by: e.by.clone(),
        denial: e.denial.clone(),
        settled: e.settled.map(rfc3339).unwrap_or_default(),
    }
}

fn settled_error(st: &State, id: &str) -> ApprovalError {
    match st.settled.get(id) {
        Some(e) => ApprovalError::Settled {
            id: id.to_owned(),
            state: e.state.to_owned(),
            by: (!e.by.is_empty()).then(|| e.by.clone()),
            at: e.settled.map(rfc3339).unwrap_or_default(),
        },
        None => ApprovalError::NotFound(id.to_owned()),
    }
}

/// `a-` and 8 characters of Crockford's base32 (no i, l, o, u): 40 random bits.
fn new_id() -> String {
    const ALPHABET: &[u8; 32] = b"0123456789abcdefghjkmnpqrstvwxyz";
    let mut bytes = [0u8; 5];
    if getrandom::fill(&mut bytes).is_err() {
        // No OS randomness (never seen on Linux): fall back to the clock; ids stay unique
        // because the caller checks for collisions.
        let n = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        bytes.copy_from_slice(&n.to_le_bytes()[..5]);
    }
    let mut n = bytes.iter().fold(0u64, |n, b| n << 8 | u64::from(*b));
    let mut s = String::with_capacity(10);
    s.push_str("a-");
    let mut chars = [0u8; 8];
    for c in chars.iter_mut().rev() {
        *c = ALPHABET[(n & 31) as usize];
        n >>= 5;
    }
    s.extend(chars.iter().map(|&c| char::from(c)));
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixture {
        q: Arc<Approvals>,
        records: Arc<Mutex<Vec<Record>>>,
        grants: Arc<Mutex<Vec<(GrantKey, Duration)>>>,
    }

    fn fixture(limits: Limits) -> Fixture {
        let records = Arc::new(Mutex::new(Vec::new()));
        let grants = Arc::new(Mutex::new(Vec::new()));
        let (r, g) = (records.clone(), grants.clone());
        let q = Approvals::new(
            limits,
            Arc::new(move |rec| r.lock().unwrap().push(rec)),
            Arc::new(move |req, d| {
                g.lock().unwrap().push((req, d));
                Ok(())
            }),
        );
        Fixture { q, records, grants }
    }

    /// A request of agent `agent`, whose root is a cgroup of its own.
    fn request(agent: &str, bytes: usize) -> Request {
        request_of(agent, agent.bytes().map(u64::from).sum(), bytes)
    }

    /// A request of the agent named `name` whose root is cgroup `root`.
    fn request_of(name: &str, root: u64, bytes: usize) -> Request {
        Request {
            agent: AgentInfo {
                name: name.into(),
                cgroup_id: root,
                ..Default::default()
            },
            kind: "http".into(),
            object: Object {
                method: "POST".into(),
                url: "http://api.payments.example/v1/refunds".into(),
                ..Default::default()
            },
            rule: "refund-agent/refund-medium".into(),
            reason: "needs a human".into(),
            timeout: Duration::from_secs(600),
            on_timeout: Posture::Block,
            bytes,
        }
    }

    fn kinds(f: &Fixture) -> Vec<String> {
        f.records
            .lock()
            .unwrap()
            .iter()
            .map(|r| format!("{}:{}", r.kind, r.approval.as_ref().unwrap().state))
            .collect()
    }

    #[test]
    fn ids_are_short_and_unambiguous() {
        for _ in 0..100 {
            let id = new_id();
            assert_eq!(id.len(), 10, "{id}");
            assert!(id.starts_with("a-"));
            assert!(
                id[2..]
                    .chars()
                    .all(|c| "0123456789abcdefghjkmnpqrstvwxyz".contains(c))
            );
        }
    }

    #[tokio::test]
    async fn approving_a_hold_delivers_and_is_audited() {
        let f = fixture(Limits::default());
        let (id, rx) = f.q.hold(request("refund-1", 10)).unwrap();
        assert_eq!(f.q.list().len(), 1);
        assert_eq!(f.q.list()[0].state, "pending");
        let v = f.q.approve(&id, "alice", Duration::from_secs(60)).unwrap();
        assert_eq!((v.state.as_str(), v.by.as_str()), ("approved", "alice"));
        assert_eq!(
            rx.await.unwrap(),
            Resolution::Approved {
                by: "alice".into(),
                grant_for: Duration::from_secs(60)
            }
        );
        assert!(f.q.list().is_empty());
        assert_eq!(
            kinds(&f),
            ["approval.requested:pending", "approval.approved:approved"]
        );
        let recs = f.records.lock().unwrap();
        let last = recs.last().unwrap();
        assert_eq!(last.approval.as_ref().unwrap().by, "alice");
        assert_eq!(last.ty, RecordType::Approval);
        assert_eq!(last.agent.as_ref().unwrap().name, "refund-1");
        assert_eq!(last.object.method, "POST");
        assert_ne!(recs[0].id, recs[1].id);
    }

    #[tokio::test]
    async fn settled_and_unknown_ids_give_clear_errors() {
        let f = fixture(Limits::default());
        let (id, rx) = f.q.hold(request("refund-1", 0)).unwrap();
        f.q.deny(&id, "bob", "not today").unwrap();
        assert_eq!(
            rx.await.unwrap(),
            Resolution::Denied {
                by: "bob".into(),
                reason: "not today".into()
            }
        );
        let err = f.q.approve(&id, "alice", Duration::ZERO).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.starts_with(&format!("{id} was denied by bob at ")),
            "{msg}"
        );
        let err = f.q.deny("a-zzzzzzzz", "x", "y").unwrap_err();
        assert_eq!(err.to_string(), "no pending approval a-zzzzzzzz");
        assert_eq!(f.q.get(&id).unwrap().denial, "not today");
    }

    #[test]
    fn limits_per_agent_bytes_and_total() {
        let f = fixture(Limits {
            per_agent: 2,
            per_agent_bytes: 100,
            total: 3,
        });
        let _a = f.q.hold(request("a", 10)).unwrap();
        let _b = f.q.hold(request("a", 10)).unwrap();
        let e = f.q.hold(request("a", 10)).unwrap_err();
        assert_eq!(e.what, "pending requests for this agent");
        let e = f.q.hold(request("b", 101)).unwrap_err();
        assert_eq!(e.what, "bytes held for this agent");
        let (c, _rx) = f.q.hold(request("b", 100)).unwrap();
        let e = f.q.hold(request("c", 0)).unwrap_err();
        assert_eq!(e.what, "pending requests");
        // Settling releases the slot and the bytes.
        f.q.withdraw(&c);
        f.q.hold(request("b", 100)).unwrap();
    }

    /// Agents that share a label share a name; each root has its own limits (red team round
    /// 34: one labelled agent's 32 held requests had its siblings' refused at once).
    #[test]
    fn agents_of_one_label_each_have_their_own_limits() {
        let f = fixture(Limits {
            per_agent: 2,
            per_agent_bytes: 100,
            total: 10,
        });
        let _a = f.q.hold(request_of("support", 1, 60)).unwrap();
        let _b = f.q.hold(request_of("support", 1, 10)).unwrap();
        let e = f.q.hold(request_of("support", 1, 0)).unwrap_err();
        assert_eq!(e.what, "pending requests for this agent");
        let _c = f.q.hold(request_of("support", 2, 90)).unwrap();
        let _d = f.q.hold(request_of("support", 2, 0)).unwrap();
        let e = f.q.hold(request_of("support", 3, 101)).unwrap_err();
        assert_eq!(e.what, "bytes held for this agent");
    }

    #[tokio::test]
    async fn withdraw_and_expiry() {
        let f = fixture(Limits::default());
        let (id, rx) = f.q.hold(request("a", 0)).unwrap();
        f.q.withdraw(&id);
        assert_eq!(rx.await.unwrap(), Resolution::Withdrawn);
        f.q.withdraw(&id); // settled: no-op, no second record
        let mut short = request("a", 0);
        short.timeout = Duration::from_millis(1);
        let (id2, rx2) = f.q.hold(short).unwrap();
        let (_id3, _rx3) = f.q.hold(request("a", 0)).unwrap();
        assert_eq!(
            f.q.expire_due(SystemTime::now() + Duration::from_millis(5)),
            1
        );
        assert_eq!(rx2.await.unwrap(), Resolution::Expired);
        assert!(!f.q.expire(&id2));
        assert_eq!(
            kinds(&f),
            [
                "approval.requested:pending",
                "approval.withdrawn:withdrawn",
                "approval.requested:pending",
                "approval.requested:pending",
                "approval.expired:expired",
            ]
        );
    }

    #[test]
    fn approving_after_the_client_left_is_an_error_not_a_grant() {
        let f = fixture(Limits::default());
        let (id, rx) = f.q.hold(request("a", 0)).unwrap();
        drop(rx);
        let e = f.q.approve(&id, "alice", Duration::ZERO).unwrap_err();
        assert!(e.to_string().contains("withdrawn"), "{e}");
        assert_eq!(f.q.get(&id).unwrap().state, "withdrawn");
    }

    #[test]
    fn kernel_escalations_reuse_the_pending_id_and_grant_on_approval() {
        let f = fixture(Limits::default());
        let g = GrantKey::new(7, governance_common::Kind::Exec, 42);
        let mut req = request("a", 0);
        req.kind = "exec".into();
        let id = f.q.request_grant(req.clone(), g, &mut |_| {}).unwrap();
        assert_eq!(f.q.request_grant(req.clone(), g, &mut |_| {}).unwrap(), id);
        assert_eq!(f.q.list().len(), 1);
        f.q.approve(&id, "alice", Duration::from_secs(30)).unwrap();
        assert_eq!(
            f.grants.lock().unwrap().as_slice(),
            [(g, Duration::from_secs(30))]
        );
        // A refusal the kernel reported just before the grant landed belongs to the approval.
        let mut state = String::new();
        let again =
            f.q.request_grant(req.clone(), g, &mut |i| state = i.state.clone());
        assert_eq!((again.unwrap(), state.as_str()), (id.clone(), "approved"));
        assert!(f.q.list().is_empty());
        // Once the grant has run out, a new escalation of the same object is a new request.
        let id2 =
            f.q.approve(&id, "bob", Duration::ZERO)
                .map(|_| ())
                .unwrap_err();
        assert!(id2.to_string().contains("approved"), "{id2}");
        f.q.lock().granted.clear();
        assert_ne!(f.q.request_grant(req, g, &mut |_| {}).unwrap(), id);
    }

    #[test]
    fn a_failed_grant_keeps_the_request_pending() {
        let q = Approvals::new(
            Limits::default(),
            Arc::new(|_| {}),
            Arc::new(|_, _| Err("map full".into())),
        );
        let g = GrantKey::new(1, governance_common::Kind::Exec, 1);
        let id = q.request_grant(request("a", 0), g, &mut |_| {}).unwrap();
        let e = q.approve(&id, "alice", Duration::ZERO).unwrap_err();
        assert!(e.to_string().contains("map full"), "{e}");
        assert_eq!(q.list().len(), 1);
    }

    #[test]
    fn pre_authorizations_run_their_callback() {
        let f = fixture(Limits::default());
        let hit = Arc::new(Mutex::new(None));
        let h = hit.clone();
        let id =
            f.q.request_action(
                request("a", 0),
                9,
                Box::new(move |d| *h.lock().unwrap() = Some(d)),
                &mut |_| {},
            )
            .unwrap();
        assert_eq!(
            f.q.request_action(request("a", 0), 9, Box::new(|_| {}), &mut |_| {})
                .unwrap(),
            id
        );
        f.q.approve(&id, "alice", Duration::from_secs(5)).unwrap();
        assert_eq!(*hit.lock().unwrap(), Some(Duration::from_secs(5)));
        assert_eq!(f.q.get(&id).unwrap().state, "approved");
    }
}
