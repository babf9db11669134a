//! The daemon's loop: the generation that enforces, and what replaces it (a changed policy
//! directory, agent cgroups that come or go, a rule's socket re-created, SIGHUP, an API
//! request), until SIGINT or SIGTERM.

use std::{
    path::Path,
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime},
};

use arc_swap::ArcSwap;
use governance_common::Counter;
use tokio::{
    signal::unix::{Signal, SignalKind, signal},
    sync::mpsc,
};

use super::{
    RunArgs, burst,
    generation::{Built, SharedNames, Source, build, install_names},
    netns::NetnsSync,
    watch::{self, Watches},
};
use crate::{
    agents,
    api::{self, Snapshot},
    approvals::Approvals,
    engine::Engine,
    events::{Record, RecordType},
    kernel::{self, Enforcer},
    metrics::Metrics,
    pipeline::Publisher,
};

/// The signals the daemon answers: SIGINT and SIGTERM stop it, SIGHUP reloads.
pub(super) struct Signals {
    int: Signal,
    term: Signal,
    hup: Signal,
}

impl Signals {
    pub fn new() -> std::io::Result<Self> {
        Ok(Self {
            int: signal(SignalKind::interrupt())?,
            term: signal(SignalKind::terminate())?,
            hup: signal(SignalKind::hangup())?,
        })
    }
}

/// The running daemon's loop: the generation that enforces, what changes it, and where each
/// change is reported.
pub(super) struct Daemon<'a> {
    pub args: &'a RunArgs,
    pub root: &'a Path,
    pub enforcer: Arc<Mutex<Enforcer>>,
    pub publisher: Publisher,
    pub metrics: Arc<Metrics>,
    pub snapshot: Arc<Mutex<Snapshot>>,
    pub approvals: Arc<Approvals>,
    /// Names of recent generations (the drainer's and the proxy's).
    pub names: SharedNames,
    /// The HTTP engine of the current generation (the proxy's).
    pub engine: Arc<ArcSwap<Engine>>,
    /// The generation that enforces.
    pub current: u32,
    /// The agents of the current generation.
    pub agents_now: Vec<agents::AgentCgroup>,
    /// Whether the last build failed (then any change is worth another try).
    pub last_failed: bool,
    /// Failed reloads so far.
    pub failures: u64,
    /// The kernel's drop counter, as last told.
    pub dropped: u64,
    /// The kernel's per-agent drop counts at the last look (see `dropped_by_agent`).
    pub dropped_by: std::collections::HashMap<u64, u64>,
    /// The HTTP policy proxy and its `--proxy-listen` address (None: no proxy).
    pub proxy: Option<(Arc<crate::proxy::Proxy>, std::net::SocketAddrV4)>,
    /// The proxy's listeners in agents' network namespaces (None: no proxy).
    pub netns: Option<NetnsSync>,
    /// Kubernetes: the pods of this node, as the API server told them (`--kubernetes`).
    pub pods: Option<Arc<crate::kubernetes::Identities>>,
    /// The kernel's counts of allowed actions, as taken so far.
    pub counts: super::counts::Counts,
    /// The policy documents of the last read (a reload parses only those that changed).
    pub parsed: crate::policy::Parsed,
    /// Writes the copy of the policy in force.
    pub in_force: super::in_force::Saver,
    /// The content hash of the policy the current generation enforces (None until this run
    /// built a generation).
    pub content_hash: Option<String>,
    /// Once-a-second ticks so far.
    pub ticks: u64,
    /// The filesystems mounted below directories the identity resolution does not list, as
    /// last looked at ([`crate::kernel::unlisted_mounts`]).
    pub mounts: Vec<Vec<u8>>,
    /// The mounts of the devices the current generation's identity entries are on.
    pub marked_mounts: Vec<(Vec<u8>, u32)>,
    /// The mount table a remount last started a generation for (its hash).
    pub remount_tried: Option<u64>,
}

/// How many ticks apart the proxy's listeners are matched against every agent process's
/// network namespace, besides when an agent's subtree becomes populated or empty.
const NETNS_RESCAN_TICKS: u64 = 10;

/// Where a reload takes its policy from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PolicyFrom {
    /// The policy directory, read now: the policy changed, or a reload was asked for.
    Read,
    /// A reload for the agents' sake (a cgroup, a pod, a socket) while the directory is
    /// settled: read it, and if it does not read, the agents as they are now get the policy
    /// the current generation enforces (a broken file keeps no new agent unenforced).
    ReadOrKeep,
    /// A reload for the agents' sake while a burst of changes to the directory is in progress
    /// (a file open for writing, changes not yet quiet): the policy the current generation
    /// enforces, and the directory is read when its burst is over.
    Keep,
}

impl Daemon<'_> {
    /// Generation 1 (or the one after what was pinned). Ok(false): some of the policy cannot
    /// be enforced here and degraded mode was not accepted. Without pinned programs to fall
    /// back on, nothing this run attached is left behind when it fails.
    pub fn first_generation(
        &mut self,
        adopted: bool,
        kept: Option<(super::in_force::Kept, String)>,
    ) -> anyhow::Result<bool> {
        let next = self.current + 1;
        let (source, read_error) = match kept {
            Some((k, error)) => (Source::Kept(k.set, k.content_hash), Some((k.saved, error))),
            None => (Source::Read(&mut self.parsed), None),
        };
        match build(
            next,
            self.args,
            &self.enforcer,
            self.root,
            self.pods.as_deref(),
            source,
        ) {
            Ok(Some(b)) => {
                let policy = self.args.policy.display();
                let Some((saved, error)) = read_error else {
                    self.enforce(next, b, format!("generation {next} is enforcing {policy}"));
                    return Ok(true);
                };
                let copy = super::in_force::file(&self.args.policy_in_force);
                let copy = copy.display();
                self.enforce(
                    next,
                    b,
                    format!(
                        "generation {next} is enforcing the copy of the policy in force saved at \
                         {saved} ({copy}): {policy} does not read"
                    ),
                );
                // Said as a failed read, and shown by the status, until the directory reads.
                let mut r = Record::daemon(
                    RecordType::Policy,
                    "policy.reload_failed",
                    format!(
                        "{policy} does not read; generation {next} enforces the copy of the \
                         policy in force saved at {saved}: {error}"
                    ),
                );
                r.generation = next;
                self.publisher.publish(r);
                self.snapshot
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .last_error = Some(error);
                Ok(true)
            }
            Ok(None) => {
                if !adopted {
                    let _ = kernel::unload(&self.pin_dir());
                }
                Ok(false)
            }
            Err(e) => {
                if !adopted {
                    let _ = kernel::unload(&self.pin_dir());
                    return Err(e);
                }
                crate::say!(
                    "the policy failed to load; generation {} (pinned) keeps enforcing:\n{e:#}",
                    self.current
                );
                self.last_failed = true;
                Ok(true)
            }
        }
    }

    /// Where this run's programs are pinned (staged beside the previous build's during a
    /// handover: unloading them leaves the previous build enforcing).
    fn pin_dir(&self) -> std::path::PathBuf {
        self.enforcer
            .lock()
            .map_or_else(|e| e.into_inner().pin_dir.clone(), |e| e.pin_dir.clone())
    }

    /// Generation `g` (built and installed in the kernel) enforces: the HTTP engine, the
    /// names, the status and the metrics follow, and a `policy.reloaded` record says so.
    fn enforce(&mut self, g: u32, b: Built, message: String) {
        // What the previous generation counted, recorded before the new one's rule ids.
        if self.current != 0 {
            self.count_tick(true);
        }
        self.counts
            .prepare(&self.enforcer, b.engine.policies(), &b.found, g);
        install_names(&self.names, g, b.names);
        self.engine.store(Arc::new(b.engine));
        self.agents_now = b.found;
        if let Some(n) = &self.netns {
            n.sync(&self.agents_now);
        }
        self.last_failed = false;
        self.current = g;
        self.content_hash = Some(b.content_hash.clone());
        self.marked_mounts = b.marked_mounts;
        let mut s = self.snapshot.lock().unwrap_or_else(|e| e.into_inner());
        s.generation = g;
        s.agents = b.agents;
        s.policies = Arc::new(self.engine.load().policies().clone());
        s.last_error = None;
        let mut r = Record::daemon(RecordType::Policy, "policy.reloaded", message);
        r.generation = g;
        r.counts.insert("rules".into(), b.rules as u64);
        r.counts.insert("agents".into(), s.agents.len() as u64);
        // What it enforces: the policy directory and its content hash.
        r.object.path = self.args.policy.display().to_string();
        r.object.detail.insert("sha256".into(), b.content_hash);
        drop(s);
        self.publisher.publish(r);
        self.metrics.set_generation(g);
        // What was read from the directory, kept for a start that finds it broken.
        if let Some(sources) = b.sources {
            self.in_force.keep(sources);
        }
    }

    /// The cleanup after the generation the last flip retired ([`Enforcer::settle`]) waits
    /// for an RCU grace period (several ms): it runs off the daemon's loop and without the
    /// kernel state, so that a change or signal that comes meanwhile is not kept waiting. A
    /// next flip made before it is done settles first itself (and this one then finds nothing
    /// to do, see [`Enforcer::settle_waited`]).
    fn settle_later(&self) {
        let g = self.current;
        let enforcer = Arc::clone(&self.enforcer);
        let Some(unsettled) = enforcer.lock().ok().and_then(|e| e.unsettled()) else {
            return;
        };
        let spawned = std::thread::Builder::new()
            .name("settle".into())
            .spawn(move || {
                kernel::grace_period();
                let settled = match enforcer.lock() {
                    Ok(mut e) => e.settle_waited(unsettled).map_err(|e| e.to_string()),
                    Err(_) => Err("the kernel state lock is poisoned".to_owned()),
                };
                if let Err(e) = settled {
                    tracing::warn!(
                        "cleaning up after the generation before {g}: {e}; the next reload tries again first"
                    );
                }
            });
        if let Err(e) = spawned {
            tracing::warn!(
                "cleaning up after the generation before {g}: {e}; the next reload does it first"
            );
        }
    }

    /// Wait for changes and reload on each, until SIGINT or SIGTERM.
    pub async fn serve(
        &mut self,
        signals: &mut Signals,
        reload_rx: &mut mpsc::Receiver<api::ReloadReply>,
        drill_rx: &mut mpsc::Receiver<api::DrillRequest>,
    ) -> anyhow::Result<()> {
        let mut watches = Watches::new(
            &self.args.policy,
            self.root,
            &self.agents_now,
            &self.enforcer,
        );
        // The agents' processes coming and going, for the proxy's listeners in their network
        // namespaces (added with each generation's agents).
        let mut populated = watch::Kept::new("the agents' cgroup.events");
        let populated_watch = |d: &Self, w: &mut watch::Kept| {
            if d.netns.is_some() {
                watch::watch_populated(w, &d.agents_now);
            }
        };
        populated_watch(self, &mut populated);
        // A blind policy watch's last look (see `watch::Kept`).
        let mut policy_print = None;
        self.settle_later();
        let (mut cgroup_due, mut socket_due) = (None, None);
        // A cgroup made between the first generation's walk of the tree and these watches was
        // reported by none of them: look once, now that they are in place (an agent made then
        // waited for the next change to the tree).
        if self.agents_changed() {
            cgroup_due = Some(tokio::time::Instant::now());
        }
        let mut policy = burst::Burst::default();
        let mut pods_changed = self.pods.as_ref().map(|p| p.subscribe());
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // `--drill-every`: the first drill one period after start.
        let mut drills = self.args.drill_every.map(|every| {
            let mut i = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            i
        });
        self.dropped = self
            .enforcer
            .lock()
            .ok()
            .and_then(|e| e.counter(Counter::EventsDropped).ok())
            .unwrap_or_default();
        // Whether the cgroup tree changed since its watch was made. Until it does, that watch
        // covers every directory of the tree: each one was either there when the watch was
        // made (added, then listed) or created since, which the watch on its parent reports.
        let mut cgroups_changed = false;
        loop {
            let mut reply = None;
            let (why, mut from) = tokio::select! {
                _ = tick.tick() => {
                    let now = tokio::time::Instant::now();
                    if self.tick() {
                        socket_due.get_or_insert(now);
                    }
                    // What a blind watch would have reported, looked for (see `watch::Kept`).
                    if watches.cgroups.blind() {
                        watch::watch_cgroups(&mut watches.cgroups, self.root, &self.agents_now);
                        if self.agents_changed() {
                            cgroup_due.get_or_insert(now);
                        }
                    }
                    if watches.policy.blind() {
                        watch::watch_policy(&mut watches.policy, &self.args.policy);
                        let print = watch::policy_fingerprint(&self.args.policy);
                        if policy_print.is_some_and(|p| p != print) {
                            policy.note(vec![burst::Change::Other], now);
                        }
                        policy_print = Some(print);
                    } else {
                        policy_print = None;
                    }
                    if watches.sockets.blind() {
                        watch::watch_sockets(&mut watches.sockets, &self.enforcer);
                    }
                    continue;
                }
                // A burst of changes to the policy directory (an editor saving, a tool writing
                // several files) is over before the reload, and no file is read half-written
                // (see `burst`).
                r = watch::policy_changes(&mut watches.policy) => {
                    policy.note(r?, tokio::time::Instant::now());
                    continue;
                }
                // A tree of cgroups appearing settles before the reload: the first change sets
                // the due time, later ones ride along.
                r = watches.cgroups.changed() => {
                    r?;
                    cgroups_changed = true;
                    let due = tokio::time::Instant::now() + Duration::from_millis(50);
                    cgroup_due.get_or_insert(due);
                    continue;
                }
                // A pod's labels (or its namespace's) changed: the agents may have.
                _ = watch::pods_changed(&mut pods_changed) => {
                    let due = tokio::time::Instant::now() + Duration::from_millis(50);
                    cgroup_due.get_or_insert(due);
                    continue;
                }
                // A socket re-created: a runtime socket is refused again at once, a rule's
                // socket with the next generation.
                r = populated.changed() => {
                    r?;
                    if let Some(n) = &self.netns {
                        n.sync(&self.agents_now);
                    }
                    continue;
                }
                r = watches.sockets.changed() => {
                    r?;
                    if watch::sockets_changed(&self.enforcer) {
                        socket_due.get_or_insert(tokio::time::Instant::now());
                    }
                    watch::watch_sockets(&mut watches.sockets, &self.enforcer);
                    continue;
                }
                _ = watch::until(policy.due()) => {
                    match policy.fire() {
                        burst::Due::Reload => ("the policy directory changed", PolicyFrom::Read),
                        burst::Due::Waiting(files) => {
                            let files: Vec<String> =
                                files.iter().map(|f| f.display().to_string()).collect();
                            crate::say!(
                                "the policy directory changed; waiting for {} to be closed before \
                                 reloading (a file half-written is never read; SIGHUP or \
                                 `governance policy reload` reloads now)",
                                files.join(", ")
                            );
                            continue;
                        }
                    }
                }
                _ = watch::until(watch::earliest(cgroup_due, socket_due)) => {
                    let socket_changed = socket_due.is_some();
                    cgroup_due = None;
                    socket_due = None;
                    if socket_changed {
                        (
                            "a Unix socket a rule names was created or re-created, or a \
                             filesystem was mounted or unmounted below a protected directory",
                            PolicyFrom::ReadOrKeep,
                        )
                    } else {
                        // Only cgroups changed. If the agents are the same ones, the current
                        // generation is exactly what a rebuild would make: keep it. (Watch the
                        // new directories first, so a cgroup made meanwhile is seen next time.)
                        watch::watch_cgroups(&mut watches.cgroups, self.root, &self.agents_now);
                        cgroups_changed = false;
                        if self.same_agents() {
                            crate::say!(
                                "the cgroup tree changed, the agents did not; generation {} stays",
                                self.current
                            );
                            continue;
                        }
                        ("the agent cgroups changed", PolicyFrom::ReadOrKeep)
                    }
                }
                // A drill runs here, between reloads: the generation does not change under it,
                // and a stop waits for it to clean up.
                r = drill_rx.recv() => {
                    if let Some((only, reply)) = r {
                        let result = self.drill(only.as_deref());
                        let _ = reply.send(result);
                    }
                    continue;
                }
                _ = async {
                    match &mut drills {
                        Some(i) => i.tick().await,
                        None => std::future::pending().await,
                    }
                } => {
                    if let Err(e) = self.drill(None) {
                        tracing::error!("the scheduled drill did not run: {e}");
                    }
                    continue;
                }
                r = reload_rx.recv() => {
                    reply = r;
                    ("a reload was requested through the API", PolicyFrom::Read)
                }
                _ = signals.hup.recv() => ("SIGHUP", PolicyFrom::Read),
                _ = signals.int.recv() => break,
                _ = signals.term.recv() => break,
            };
            crate::say!("{why}; reloading");
            // What the old watch still holds goes to the burst first: a file still open for
            // writing keeps its place there until its close, which the new watch reports.
            policy.note(
                watch::pending_policy_changes(&watches.policy),
                tokio::time::Instant::now(),
            );
            if from == PolicyFrom::ReadOrKeep && !policy.settled() {
                from = PolicyFrom::Keep;
            }
            if from != PolicyFrom::Keep {
                policy.reloaded();
                // Watch before the build reads the tree and the directory: a change made while
                // it builds (a slow build of many agents) is then seen and leads to the next
                // reload. A watch made after the build would miss it.
                watch::watch_policy(&mut watches.policy, &self.args.policy);
            }
            // The cgroup tree is watched anew only if it changed: a watch of every directory
            // of a large tree takes tens of milliseconds, and the one there still covers an
            // unchanged tree.
            if cgroups_changed {
                watch::watch_cgroups(&mut watches.cgroups, self.root, &self.agents_now);
                cgroups_changed = false;
            }
            let roots_before: Vec<std::path::PathBuf> =
                self.agents_now.iter().map(|a| a.path.clone()).collect();
            let result = self.reload(why, from);
            if result.is_ok() {
                // The cgroup watch stops at agent roots: with other agents, a former root's
                // subtree is watched again (a cgroup made there since was reported by nothing:
                // look once, as at start) and a new root's is left alone.
                if !self
                    .agents_now
                    .iter()
                    .map(|a| &a.path)
                    .eq(roots_before.iter())
                {
                    watch::watch_cgroups(&mut watches.cgroups, self.root, &self.agents_now);
                    if self.agents_changed() {
                        cgroup_due.get_or_insert(tokio::time::Instant::now());
                    }
                }
                // The sockets the new generation's rules name, and its agents.
                watch::watch_sockets(&mut watches.sockets, &self.enforcer);
                populated_watch(self, &mut populated);
                self.settle_later();
            }
            if let Some(reply) = reply {
                let _ = reply.send(result);
            }
        }
        Ok(())
    }

    /// Once a second: expire approvals, look at the sockets and the mounts below unlisted
    /// directories again (true: one changed, the next generation is due), and tell the
    /// kernel's dropped events.
    fn tick(&mut self) -> bool {
        self.approvals.expire_due(SystemTime::now());
        // Agent processes that entered network namespaces of their own since, where the
        // agents' `cgroup.events` watch did not tell (a process joining an agent that already
        // had some): looked at every NETNS_RESCAN_TICKS seconds.
        self.ticks += 1;
        if self.ticks.is_multiple_of(NETNS_RESCAN_TICKS)
            && let Some(n) = &self.netns
        {
            n.sync(&self.agents_now);
        }
        // Socket files re-created where no directory watch saw it (a directory that did not
        // exist yet): looked at once a second.
        let sockets = watch::sockets_changed(&self.enforcer);
        // A filesystem mounted or unmounted below them (a container started, a pod's volume):
        // the next generation gives it identity entries.
        // One read of the mount table for both looks below.
        let mountinfo = crate::kernel::mountinfo();
        let mounts = crate::kernel::unlisted_mounts(&mountinfo);
        let mut remounted = mounts != self.mounts;
        if remounted {
            tracing::debug!("filesystems mounted below unlisted directories changed");
            self.mounts = mounts;
        }
        // Kept until a generation is built (its own list replaces them); a reload that fails
        // is tried again when the mount table changes again, not at every tick.
        if crate::kernel::remounted(&mountinfo, &self.marked_mounts) {
            let table = {
                use std::hash::{Hash as _, Hasher as _};
                // Fixed keys: the same table hashes alike at every tick.
                let mut h = std::hash::DefaultHasher::new();
                mountinfo.hash(&mut h);
                h.finish()
            };
            if self.remount_tried != Some(table) {
                tracing::info!(
                    "a filesystem protected files are on was unmounted or mounted again: the next generation keys them on its device now"
                );
                self.remount_tried = Some(table);
                remounted = true;
            }
        }
        self.count_tick(false);
        // The credentials' record, ended by the kernel when its table filled, started again once
        // the table has room (every ten seconds: a walk of the table).
        if self.ticks.is_multiple_of(10)
            && let Ok(mut e) = self.enforcer.lock()
            && e.resume_credential_records().unwrap_or(false)
        {
            crate::say!(
                "the table of credentials io_uring tasks of agents had filled and has room again: recording them again (processes started before now take every capability check in their io_uring tasks as the agent's)"
            );
        }
        // The kernel's drop counter, told as a record when it moves.
        let now = self
            .enforcer
            .lock()
            .ok()
            .and_then(|e| e.counter(Counter::EventsDropped).ok())
            .unwrap_or(self.dropped);
        if now > self.dropped {
            let by_agent = self.dropped_by_agent();
            let whose = by_agent
                .iter()
                .map(|(name, n)| format!("{name}: {n}"))
                .collect::<Vec<_>>()
                .join(", ");
            let mut r = lifecycle(
                "events.dropped",
                format!(
                    "the kernel's event ring was full: {} decision events were not recorded (the decisions were enforced){}",
                    now - self.dropped,
                    if whose.is_empty() {
                        String::new()
                    } else {
                        format!("; by agent: {whose}")
                    }
                ),
            );
            r.counts.insert("dropped".into(), now - self.dropped);
            r.counts.insert("dropped_total".into(), now);
            for (name, n) in by_agent {
                r.counts.insert(format!("dropped:{name}"), n);
            }
            self.publisher.publish(r);
            self.dropped = now;
        }
        sockets || remounted
    }

    /// The events dropped since the last look, by agent (its name, or its cgroup id for one no
    /// longer known), most first; the entries of agents no longer governed are removed after.
    /// One agent filling the ring drops every agent's events: the record says whose they were
    /// (red team round 26).
    fn dropped_by_agent(&mut self) -> Vec<(String, u64)> {
        let Ok(mut enforcer) = self.enforcer.lock() else {
            return Vec::new();
        };
        let counts = enforcer.dropped_by_agent().unwrap_or_default();
        let mut out = Vec::new();
        let mut gone = Vec::new();
        for (root, n) in counts {
            let before = self.dropped_by.get(&root).copied().unwrap_or(0);
            let known = self.agents_now.iter().find(|a| a.cgroup_id == root);
            if n > before {
                let name = known.map_or_else(|| format!("cgroup {root}"), |a| a.name.clone());
                out.push((name, n - before));
            }
            if known.is_some() {
                self.dropped_by.insert(root, n);
            } else {
                gone.push(root);
                self.dropped_by.remove(&root);
            }
        }
        if let Err(e) = enforcer.forget_dropped(&gone) {
            tracing::warn!(error = %e, "forgetting the drop counts of agents gone");
        }
        out.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        out
    }

    /// Read the kernel's counts of allowed actions; publish count records if due (or `now`).
    fn count_tick(&mut self, now: bool) {
        self.counts.tick(
            &self.enforcer,
            &self.names,
            &self.metrics,
            &self.publisher,
            self.current,
            now,
        );
    }

    /// The daemon stops: the kernel's counts taken in full (and reset, so that the next run
    /// counts from here) and recorded.
    pub fn take_counts(&mut self) {
        self.counts.read(
            &self.enforcer,
            &self.names,
            &self.metrics,
            self.current,
            true,
        );
        let records = self.counts.records(&self.names);
        if !records.is_empty() {
            self.publisher.publish_batch(records);
        }
    }

    /// The agents the cgroup tree holds now, under the current generation's policies (None:
    /// the tree did not read).
    fn discovered(&self) -> Option<Vec<agents::AgentCgroup>> {
        agents::discover(
            self.root,
            self.engine.load().policies(),
            !self.args.no_create_cgroups,
            self.pods.as_deref(),
        )
        .ok()
    }

    /// Whether the agents found now differ from the generation's (the look once the watches
    /// are in place, and a blind cgroup watch's once a second).
    fn agents_changed(&self) -> bool {
        self.discovered()
            .is_some_and(|found| found != self.agents_now)
    }

    /// Whether the cgroup tree still holds the agents of the current generation (and it did
    /// not fail to build).
    fn same_agents(&self) -> bool {
        !self.last_failed
            && self
                .discovered()
                .is_some_and(|found| found == self.agents_now)
    }

    /// Build generation `next` from the policy directory, or from `kept` (a policy read
    /// before and its content hash).
    fn build(
        &mut self,
        next: u32,
        kept: Option<(crate::policy::PolicySet, String)>,
    ) -> anyhow::Result<Option<Built>> {
        let source = match kept {
            Some((set, hash)) => Source::Kept(set, hash),
            None => Source::Read(&mut self.parsed),
        };
        build(
            next,
            self.args,
            &self.enforcer,
            self.root,
            self.pods.as_deref(),
            source,
        )
    }

    /// Build and install the next generation, its policy taken as `from` says; on failure the
    /// current one keeps enforcing and the failure is counted and reported.
    fn reload(&mut self, why: &str, from: PolicyFrom) -> Result<u32, String> {
        // The build and the previous generation, freed as the new one takes over.
        let _burst = crate::memory::Burst::start();
        let (current, next) = (self.current, self.current + 1);
        // The policy the current generation enforces (none before this run built one: then
        // the directory is read, whatever the reason).
        let kept = self
            .content_hash
            .clone()
            .map(|hash| (self.engine.load().policies().clone(), hash));
        // Why the policy was kept, and the directory's read error if it did not read.
        let (built, kept_because) = match (from, kept) {
            (PolicyFrom::Keep, Some(kept)) => (
                self.build(next, Some(kept)),
                Some(("a policy file is being written", None)),
            ),
            (PolicyFrom::ReadOrKeep, Some(kept)) => match self.build(next, None) {
                Err(e) => {
                    let e = format!("{e:#}");
                    crate::say!(
                        "the policy directory does not read; the agents as they are now get the \
                         policy generation {current} enforces:\n{e}"
                    );
                    let built = self.build(next, Some(kept)).map_err(|again| {
                        anyhow::anyhow!(
                            "{e}\nwith the policy generation {current} enforces: {again:#}"
                        )
                    });
                    (built, Some(("the policy directory does not read", Some(e))))
                }
                built => (built, None),
            },
            _ => (self.build(next, None), None),
        };
        let result = match built {
            Ok(Some(mut b)) => {
                // The kernel's buckets carried over with the flip; the HTTP engine's carry
                // over before it decides anything.
                b.engine.carry_buckets(&self.engine.load(), Instant::now());
                let why = match &kept_because {
                    Some((because, _)) => {
                        format!("{why}; the policy generation {current} enforced: {because}")
                    }
                    None => why.to_owned(),
                };
                crate::say!("generation {next} is enforcing ({why})");
                let error = self.snapshot_error();
                self.enforce(next, b, format!("generation {next} is enforcing ({why})"));
                // A kept policy leaves the directory's error standing: what was read last
                // still did not load.
                if let Some((_, read_error)) = kept_because {
                    self.snapshot
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .last_error = read_error.or(error);
                }
                Ok(next)
            }
            Ok(None) => Err(
                "some of the policy cannot be enforced on this kernel (see the daemon's log); \
                 pass --allow-degraded to enforce only what is available"
                    .to_owned(),
            ),
            Err(e) => Err(format!("{e:#}")),
        };
        if let Err(e) = &result {
            self.failures += 1;
            self.last_failed = true;
            let failures = self.failures;
            crate::say!(
                "reload failed ({failures} failed so far); generation {current} keeps enforcing:\n{e}"
            );
            let mut r = Record::daemon(
                RecordType::Policy,
                "policy.reload_failed",
                format!("generation {current} keeps enforcing: {e}"),
            );
            r.generation = current;
            self.publisher.publish(r);
            let mut s = self.snapshot.lock().unwrap_or_else(|e| e.into_inner());
            s.reload_failures = failures;
            s.last_error = Some(e.clone());
            drop(s);
            self.quarantine_new_agents();
        }
        result
    }

    /// After a failed reload: the agent roots its own policy selects that the generation in
    /// force does not hold (cgroups that appeared since it was built) are refused everything
    /// until a generation governs them (`Enforcer::quarantine`), and each is named in the log.
    /// Not by the policy that failed: what it newly selects was no agent, and stays as it was
    /// (red team round 25: a running workload would have been stopped).
    fn quarantine_new_agents(&mut self) {
        /// What `governance agents` shows for a quarantined agent's policies.
        const QUARANTINE: &str = "(quarantined: no generation can be built; everything refused)";
        let set = self.engine.load().policies().clone();
        let found = match agents::discover(self.root, &set, false, self.pods.as_deref()) {
            Ok(found) => found,
            Err(e) => {
                tracing::warn!(error = %e, "finding agents to quarantine");
                return;
            }
        };
        let Ok(mut enforcer) = self.enforcer.lock() else {
            return;
        };
        // No generation yet: nothing decides for anyone, and the daemon says so at its start.
        if !enforcer.generation().is_ok_and(|g| g > 0) {
            return;
        }
        let mut quarantined = Vec::new();
        for agent in found {
            let view = || crate::api::AgentView {
                name: agent.name.clone(),
                cgroup: agent.rel.clone(),
                cgroup_id: agent.cgroup_id,
                selector: String::new(),
                policies: vec![QUARANTINE.into()],
                agent_ref: agent.agent_ref(),
            };
            match enforcer.quarantine(agent.cgroup_id) {
                Ok(true) => {
                    crate::say!(
                        "agent {} ({}) appeared while no generation can be built: everything it \
                         does is refused until one governs it",
                        agent.name,
                        agent.rel
                    );
                    quarantined.push(view());
                }
                // In the generation already: as its policy says, or quarantined before (by an
                // earlier failed reload, or before the daemon restarted).
                Ok(false) => quarantined.push(view()),
                Err(e) => crate::say!("agent {} could not be quarantined: {e}", agent.name),
            }
        }
        drop(enforcer);
        // Agents to the control API (which refuses them, red team round 26) and to `governance
        // agents`, until the next generation lists them as its policy says.
        let mut s = self.snapshot.lock().unwrap_or_else(|e| e.into_inner());
        for view in quarantined {
            if !s.agents.iter().any(|a| a.cgroup_id == view.cgroup_id) {
                s.agents.push(view);
            }
        }
    }

    /// The error `governance status` shows.
    fn snapshot_error(&self) -> Option<String> {
        self.snapshot
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .last_error
            .clone()
    }

    /// The `daemon.stopped` record, with the kernel's counters (also said on stderr).
    pub fn stopped(&self) -> Record {
        let (decisions, denials, ring_drops, map_full) = {
            let e = self.enforcer.lock().unwrap_or_else(|e| e.into_inner());
            let c = |k| e.counter(k).unwrap_or_default();
            (
                c(Counter::Decisions),
                c(Counter::Denials),
                c(Counter::EventsDropped),
                c(Counter::MapFull),
            )
        };
        let (current, failures) = (self.current, self.failures);
        crate::say!(
            "stopping; {decisions} decisions, {denials} denials, {ring_drops} events dropped, {map_full} map-full failures; {failures} failed reloads"
        );
        let mut r = lifecycle(
            "daemon.stopped",
            if self.args.detach_on_exit {
                "stopped; the programs are detached (--detach-on-exit)".to_owned()
            } else {
                format!("stopped; generation {current} stays enforcing (pinned)")
            },
        );
        r.generation = current;
        for (k, v) in [
            ("decisions", decisions),
            ("denials", denials),
            ("events_dropped", ring_drops),
            ("map_full", map_full),
            ("reload_failures", failures),
        ] {
            r.counts.insert(k.into(), v);
        }
        r
    }
}

pub(super) fn lifecycle(kind: &'static str, message: impl Into<String>) -> Record {
    Record::daemon(RecordType::Lifecycle, kind, message)
}
