//! The daemon (`governance run`): policy generations, agent discovery, reloads, the kernel
//! event drainer, the HTTP policy proxy and the control API.
//!
//! The programs are attached once and pinned (see [`kernel::Enforcer`]); a restarted daemon
//! adopts them. A generation is one validated policy set with the agent cgroups found for it,
//! compiled into the maps' inactive slot and made active by one flip (see governance_common),
//! and handed to the HTTP engine at the same time. A reload (SIGHUP, `governance policy
//! reload`, a change in the policy directory, an agent cgroup that appears, goes or is
//! labelled) builds the next generation; one that fails (invalid policy, unenforceable policy,
//! kernel error) changes nothing: the current generation keeps enforcing and the failure is
//! reported and counted. A change in the cgroup tree that leaves the set of agents as it was (a
//! cgroup made or removed inside an agent, or outside every selector) builds nothing. Throttle
//! buckets carry over from one generation to the next, in the kernel and in the HTTP engine.
//!
//! Data flow: kernel ring buffer → drainer thread → [`pipeline`] (enrich, audit log, metrics,
//! subscribers); the proxy and the approval queue publish into the same pipeline.
//!
//! When the daemon stops (or dies), the programs stay attached with the last generation:
//! enforcement fails closed. `governance unload` (or `run --detach-on-exit`) removes them.

use std::{
    collections::BTreeMap,
    net::{Ipv6Addr, SocketAddr, SocketAddrV6},
    os::fd::{AsFd as _, AsRawFd, RawFd},
    path::{Path, PathBuf},
    process::ExitCode,
    sync::{
        Arc, Mutex, RwLock,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant, SystemTime},
};

use anyhow::Context as _;
use arc_swap::ArcSwap;
use aya::maps::{MapData, RingBuf};
use governance_common::Counter;
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{SignalKind, signal},
    sync::mpsc,
};

use crate::{
    agents,
    api::{self, AgentView, ApiState, Snapshot},
    approvals::{self, Approvals},
    audit::AuditOptions,
    client,
    engine::Engine,
    events::{
        self, AgentInfo, Clock, GrantRequest, Names, ProcessInfo, Record, RecordType, RuleName,
        rfc3339,
    },
    kernel::{
        self, Enforcer, Probe, Protect, ProxyConns,
        probe::{EXIT_CANNOT_ENFORCE, report},
    },
    metrics::Metrics,
    pipeline::{self, Publisher},
    policy,
    proxy::{self, Proxy},
};

/// How often the drainer reads the ring when the programs have not woken it (they wake it
/// only when the ring is filling up; see governance-ebpf's `emit`).
const EVENT_TICK: Duration = Duration::from_millis(50);
/// Events the drainer publishes at a time. A record is about a kilobyte: small batches stay
/// in the CPU's caches on their way through the pipeline, which still takes up to
/// [`pipeline::BATCH`] records per audit fsync.
const PUBLISH_CHUNK: usize = 256;
/// Generations whose names are kept for events still in the ring.
const NAMED_GENERATIONS: usize = 8;
/// How long a stopping daemon lets open API connections (event streams) finish.
const API_DRAIN: Duration = Duration::from_secs(5);

// `governance run`: what to enforce, where, and how the daemon is reached. (No doc comment:
// clap would take it for the help text of `run`, which is the `Command::Run` variant's.)
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Directory of policy files (*.yaml, *.yml).
    #[arg(
        long,
        short,
        env = "GOVERNANCE_POLICY_DIR",
        default_value = "/etc/governance/policies"
    )]
    pub policy: PathBuf,
    /// Keep running when some hooks cannot be attached (for example exec enforcement on a
    /// kernel without BPF LSM), enforcing only what the kernel allows; exec then falls back to
    /// killing a process right after a blocked exec.
    #[arg(long)]
    pub allow_degraded: bool,
    /// Fail instead of creating agent cgroups that do not exist yet.
    #[arg(long)]
    pub no_create_cgroups: bool,
    /// Detach the programs when the daemon stops (default: they stay, enforcing the last
    /// generation, until `governance unload`).
    #[arg(long)]
    pub detach_on_exit: bool,
    /// bpffs directory of the pinned maps and links.
    #[arg(long = "pins", env = "GOVERNANCE_PINS", default_value = governance_common::pins::DIR)]
    pub pins: PathBuf,
    /// The control socket (mode 0600, root only).
    #[arg(long, env = "GOVERNANCE_SOCKET", default_value = client::DEFAULT_SOCKET)]
    pub socket: PathBuf,
    /// Also serve the control API on TCP at this address (e.g. 127.0.0.1:7777); needs
    /// --api-token-file.
    #[arg(long, requires = "api_token_file")]
    pub api_listen: Option<SocketAddr>,
    /// File holding the bearer token of the TCP API.
    #[arg(long)]
    pub api_token_file: Option<PathBuf>,
    /// Where the HTTP policy proxy listens (agents' `via_proxy` traffic is sent here by the
    /// kernel). Give an IPv4 address; it also listens on [::1] at the same port.
    #[arg(long, default_value = "127.0.0.1:15001")]
    pub proxy_listen: std::net::SocketAddrV4,
    /// Do not run the HTTP policy proxy (`via_proxy` connects are then refused).
    #[arg(long)]
    pub no_proxy: bool,
    /// Directory of the node CA for TLS interception (ca.crt, ca.key; created when the proxy
    /// first starts).
    #[arg(long, default_value = "/var/lib/governance/ca")]
    pub ca_dir: PathBuf,
    /// Extra PEM roots the proxy trusts for upstream TLS (besides the public roots).
    #[arg(long)]
    pub upstream_ca: Option<PathBuf>,
    /// Host → address overrides for the proxy's Host check, `host=ip[,ip]` (repeatable), for
    /// hosts your resolver does not know.
    #[arg(long = "proxy-host", value_name = "HOST=IP")]
    pub proxy_hosts: Vec<String>,
    /// Do not check that the Host of a redirected request resolves to where the agent was
    /// connecting (labs only: rules then trust a Host header the agent chose).
    #[arg(long)]
    pub no_host_check: bool,
    /// The audit log directory.
    #[arg(
        long,
        env = "GOVERNANCE_AUDIT_DIR",
        default_value = "/var/lib/governance/audit"
    )]
    pub audit_dir: PathBuf,
    /// Rotate audit files at this size (bytes; K, M, G suffixes).
    #[arg(long, default_value = "64M", value_parser = crate::policy::parse_size)]
    pub audit_max_bytes: u64,
    /// Rotate audit files at this age (`1h`, `1d`).
    #[arg(long, default_value = "24h", value_parser = policy::parse_duration)]
    pub audit_max_age: Duration,
    /// Ed25519 key that seals each audit file (created 0600 if missing).
    #[arg(long)]
    pub audit_signing_key: Option<PathBuf>,
    /// Do not print each event on stdout (the audit log and the API still have them).
    #[arg(long, short)]
    pub quiet: bool,
}

/// Names of recent generations, shared by the drainer and the proxy's agent lookup.
type SharedNames = Arc<RwLock<BTreeMap<u32, Arc<Names>>>>;

/// One built generation.
struct Built {
    names: Names,
    engine: Engine,
    agents: Vec<AgentView>,
    /// The agent cgroups it was built for.
    found: Vec<agents::AgentCgroup>,
    rules: usize,
}

/// Validate the policy directory, find the agents, and install generation `number`.
/// Ok(None): it compiled, but some of it cannot be enforced here and degraded mode was not
/// accepted; nothing changed.
fn build(
    number: u32,
    args: &RunArgs,
    enforcer: &Mutex<Enforcer>,
    root: &Path,
) -> anyhow::Result<Option<Built>> {
    let set = policy::load_dir(&args.policy)?;
    let found = agents::discover(root, &set, !args.no_create_cgroups)?;
    let mut enforcer = enforcer
        .lock()
        .map_err(|_| anyhow::anyhow!("the kernel state lock is poisoned"))?;
    let protect = Protect {
        cgroup_root: root.to_owned(),
        no_write: vec![args.policy.clone(), enforcer.pin_dir.clone()],
        no_access: [
            Some(&args.audit_dir),
            Some(&args.ca_dir),
            args.api_token_file.as_ref(),
        ]
        .into_iter()
        .flatten()
        .cloned()
        .collect(),
    };
    let compiled = kernel::compile(&set, &found, number, &protect);
    if !compiled.errors.is_empty() {
        anyhow::bail!(
            "the policy does not fit the kernel tables:\n  {}",
            compiled.errors.join("\n  ")
        );
    }
    for line in &compiled.unenforceable {
        eprintln!("governance: NOT ENFORCED: {line}");
    }
    for line in &compiled.notes {
        tracing::warn!("{line}");
    }
    let complete = enforcer.fully_attached() && compiled.unenforceable.is_empty();
    if !complete && !args.allow_degraded {
        eprintln!(
            "governance: refusing generation {number}: some of the policy cannot be enforced here \
             (see NOT AVAILABLE / NOT ENFORCED above; exec and file enforcement need BPF LSM, \
             and `governance probe` says why this node refuses it). Pass --allow-degraded to \
             enforce only what is available."
        );
        return Ok(None);
    }
    for skipped in enforcer
        .install(&compiled)
        .context("writing the policy into the kernel maps")?
    {
        match skipped {
            kernel::KernelError::UnixTarget { .. } => tracing::warn!(
                "{skipped}; its rule applies from the generation installed when the socket appears"
            ),
            _ => tracing::warn!(
                "{skipped}; its exact rule waits for the next generation (path rules still apply)"
            ),
        }
    }
    drop(enforcer);
    eprintln!(
        "governance: enforcing {} as generation {number} ({} policies, {} rules, {} agents){}",
        args.policy.display(),
        set.policies.len(),
        set.rule_count(),
        found.len(),
        if complete { "" } else { " DEGRADED" }
    );
    for a in &found {
        eprintln!(
            "governance: agent {} = cgroup {} (id {})",
            a.name,
            a.path.display(),
            a.cgroup_id
        );
    }
    let names = names(&set, &found);
    let agents = found
        .iter()
        .map(|a| AgentView {
            name: a.name.clone(),
            cgroup: a.rel.clone(),
            cgroup_id: a.cgroup_id,
            selector: names
                .agents
                .get(&a.cgroup_id)
                .map(|i| i.selector.clone())
                .unwrap_or_default(),
            policies: set
                .policies
                .iter()
                .filter(|p| p.selector.matches(&a.rel, a.label.as_deref()))
                .map(|p| p.name.clone())
                .collect(),
        })
        .collect();
    let rules = set.rule_count();
    Ok(Some(Built {
        names,
        engine: Engine::new(set, number),
        agents,
        found,
        rules,
    }))
}

/// What the kernel ids of one generation stand for.
pub fn names(set: &policy::PolicySet, found: &[agents::AgentCgroup]) -> Names {
    let mut agents = std::collections::HashMap::new();
    let mut refs = std::collections::HashMap::new();
    for a in found {
        let selector = set
            .policies
            .iter()
            .filter(|p| p.selector.matches(&a.rel, a.label.as_deref()))
            .map(|p| p.selector.to_string())
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect::<Vec<_>>()
            .join(" ");
        agents.insert(
            a.cgroup_id,
            AgentInfo {
                name: a.name.clone(),
                selector,
                cgroup_id: a.cgroup_id,
                cgroup: a.rel.clone(),
                ..Default::default()
            },
        );
        refs.insert(a.cgroup_id, a.agent_ref());
    }
    Names {
        agents,
        refs,
        rules: set
            .policies
            .iter()
            .flat_map(|p| p.rules.iter().map(move |r| (p, r)))
            .map(|(p, r)| RuleName {
                id: r.id.clone(),
                reason: r.reason.clone(),
                escalate: r.escalate.as_ref().map(|e| (e.timeout, e.on_timeout)),
                shadow: p.mode == policy::Mode::Shadow || r.mode == policy::Mode::Shadow,
            })
            .collect(),
    }
}

/// The kernel event drainer: a thread that reads the ring buffer in batches (on a short tick,
/// or when the programs wake it because the ring is filling up), names each event after the
/// generation that decided it, files kernel escalations with the approval queue, and publishes
/// the batch. It pauses while the pipeline is far behind: the ring then fills and the kernel
/// counts what it drops, and nothing here grows without bound.
struct Drainer {
    ring: RingBuf<MapData>,
    names: SharedNames,
    clock: Clock,
    publisher: Publisher,
    approvals: Arc<Approvals>,
}

impl Drainer {
    fn run(mut self, stop: Arc<AtomicBool>) {
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
        let unknown = Names::default();
        let mut total = 0;
        loop {
            let mut batch = Vec::with_capacity(PUBLISH_CHUNK);
            while batch.len() < PUBLISH_CHUNK {
                let Some(item) = self.ring.next() else { break };
                let Some(ev) = events::parse(&item) else {
                    tracing::warn!(
                        len = item.len(),
                        "ignoring a ring-buffer record of unexpected size"
                    );
                    continue;
                };
                drop(item);
                let n = names.get(&ev.generation).map_or(&unknown, |n| n.as_ref());
                let r = Record::from_kernel(&ev, n, &self.clock);
                match GrantRequest::of(&ev) {
                    // An escalation is reported when the approval queue takes it, with its
                    // approval id, just before the request: what came before it goes first.
                    Some(g) => {
                        total += batch.len();
                        self.publisher.publish_batch(std::mem::take(&mut batch));
                        escalate(&self.approvals, &self.publisher, r, g, n, ev.rule_id);
                        total += 1;
                    }
                    None => batch.push(r),
                }
            }
            if batch.is_empty() {
                return total;
            }
            total += batch.len();
            self.publisher.publish_batch(batch);
        }
    }
}

/// A kernel escalation: the action was refused; file (or find) the approval request, and
/// report the decision with its approval id.
fn escalate(
    approvals: &Approvals,
    publisher: &Publisher,
    r: Record,
    g: GrantRequest,
    names: &Names,
    rule_id: u32,
) {
    let (timeout, on_timeout) = names
        .rule(rule_id)
        .and_then(|n| n.escalate)
        .unwrap_or((Duration::from_secs(300), policy::Posture::Block));
    let req = approvals::Request {
        agent: r.agent.clone().unwrap_or_default(),
        kind: r.kind.clone(),
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
            r.approval = Some(info.clone());
            publisher.publish(r);
        }
    });
    if let (Err(full), Some(mut r)) = (queued, pending.take()) {
        r.reason = format!("{} ({full}: not queued for approval)", r.reason);
        publisher.publish(r);
    }
}

/// The drainer's thread: stopped (after a last drain) and joined on [`DrainerThread::stop`]
/// or drop.
struct DrainerThread {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl DrainerThread {
    fn start(d: Drainer) -> anyhow::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("ring".into())
            .spawn(move || d.run(flag))
            .context("starting the event drainer")?;
        Ok(Self {
            stop,
            thread: Some(thread),
        })
    }

    fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for DrainerThread {
    fn drop(&mut self) {
        self.stop();
    }
}

/// inotify for tokio.
struct Watch(Inotify);

impl AsRawFd for Watch {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_fd().as_raw_fd()
    }
}

/// Watch `dir` and its subdirectories (down to `depth` levels).
fn watch(dir: &Path, flags: AddWatchFlags, depth: u32) -> anyhow::Result<AsyncFd<Watch>> {
    let inotify =
        Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC).context("inotify_init")?;
    let mut dirs: Vec<(PathBuf, u32)> = vec![(dir.to_owned(), 0)];
    while let Some((d, level)) = dirs.pop() {
        if let Err(e) = inotify.add_watch(&d, flags) {
            if level == 0 {
                return Err(e).with_context(|| format!("watching {}", d.display()));
            }
            continue; // removed meanwhile
        }
        if level < depth
            && let Ok(rd) = std::fs::read_dir(&d)
        {
            dirs.extend(
                rd.flatten()
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .map(|e| (e.path(), level + 1)),
            );
        }
    }
    // SAFETY: Watch owns the inotify fd for as long as the AsyncFd owns the Watch.
    unsafe { AsyncFd::register_with_interest(Watch(inotify), tokio::io::Interest::READABLE) }
        .map_err(|e| anyhow::anyhow!("watching {}: {}", dir.display(), e.into_parts().1))
}

/// The directories of the Unix sockets the kernel decides on by identity (runtime sockets, the
/// sockets `unix` rules name): a socket re-created there has a new identity.
fn watch_sockets(enforcer: &Mutex<Enforcer>) -> anyhow::Result<AsyncFd<Watch>> {
    let rule_paths = enforcer
        .lock()
        .map(|e| e.unix_rule_paths())
        .unwrap_or_default();
    let inotify =
        Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC).context("inotify_init")?;
    let flags = AddWatchFlags::IN_CREATE
        | AddWatchFlags::IN_DELETE
        | AddWatchFlags::IN_MOVED_TO
        | AddWatchFlags::IN_MOVED_FROM
        | AddWatchFlags::IN_ATTRIB;
    for dir in kernel::unix::socket_dirs(&rule_paths) {
        // A directory removed meanwhile: the once-a-second check covers it.
        let _ = inotify.add_watch(&dir, flags);
    }
    // SAFETY: Watch owns the inotify fd for as long as the AsyncFd owns the Watch.
    unsafe { AsyncFd::register_with_interest(Watch(inotify), tokio::io::Interest::READABLE) }
        .map_err(|e| anyhow::anyhow!("watching the socket directories: {}", e.into_parts().1))
}

/// Look at the sockets the kernel decides on by identity again: a runtime socket that
/// appeared or was re-created is refused at once; a socket a rule names needs the next
/// generation (true).
fn sockets_changed(enforcer: &Mutex<Enforcer>) -> bool {
    let Ok(mut e) = enforcer.lock() else {
        return false;
    };
    match e.unix_sockets_changed() {
        Ok(c) => {
            if c.runtime {
                tracing::info!("the runtime sockets changed; the ones that exist are refused");
            }
            c.rules
        }
        Err(err) => {
            tracing::error!("refusing the runtime sockets: {err}");
            false
        }
    }
}

fn watch_policy(dir: &Path) -> anyhow::Result<AsyncFd<Watch>> {
    let flags = AddWatchFlags::IN_CLOSE_WRITE
        | AddWatchFlags::IN_MOVED_TO
        | AddWatchFlags::IN_MOVED_FROM
        | AddWatchFlags::IN_CREATE
        | AddWatchFlags::IN_DELETE;
    watch(dir, flags, 16)
}

/// cgroups appearing, going, or getting a label (an xattr change is IN_ATTRIB).
fn watch_cgroups(root: &Path) -> anyhow::Result<AsyncFd<Watch>> {
    let flags = AddWatchFlags::IN_CREATE
        | AddWatchFlags::IN_DELETE
        | AddWatchFlags::IN_ATTRIB
        | AddWatchFlags::IN_ONLYDIR;
    watch(root, flags, governance_common::MAX_CGROUP_DEPTH)
}

/// Wait until `w` is readable and swallow what it says. Cancel-safe: nothing is consumed
/// unless the future completes, so a select! arm can be dropped without losing a change.
async fn changed(w: &mut AsyncFd<Watch>) -> anyhow::Result<()> {
    let mut guard = w.readable_mut().await.context("inotify")?;
    let _ = guard.get_inner().0.read_events();
    guard.clear_ready();
    Ok(())
}

fn earliest(
    a: Option<tokio::time::Instant>,
    b: Option<tokio::time::Instant>,
) -> Option<tokio::time::Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Sleep until `due`, or forever when nothing is due.
async fn until(due: Option<tokio::time::Instant>) {
    match due {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

/// The proxy asks the kernel who is on the other end of a connection it accepted.
struct KernelIdentify {
    conns: Mutex<ProxyConns>,
    names: SharedNames,
}

impl proxy::Identify for KernelIdentify {
    fn identify(&self, peer: SocketAddr, _local: SocketAddr) -> Option<proxy::Client> {
        let orig = self.conns.lock().ok()?.take(peer)?;
        let names = self.names.read().ok()?;
        // The generation that decided the connect, else the newest (an agent that outlived a
        // reload is still the same cgroup).
        let n = names
            .get(&orig.generation)
            .filter(|n| n.agents.contains_key(&orig.agent_cgroup))
            .or_else(|| names.values().next_back())?;
        let info = n.agents.get(&orig.agent_cgroup)?.clone();
        let agent = n.refs.get(&orig.agent_cgroup)?.clone();
        let original_dst = (orig.redirected == 1).then(|| {
            let ip = Ipv6Addr::from(orig.addr);
            match ip.to_ipv4_mapped() {
                Some(v4) => SocketAddr::new(v4.into(), orig.port),
                None => SocketAddr::V6(SocketAddrV6::new(ip, orig.port, 0, 0)),
            }
        });
        Some(proxy::Client {
            agent,
            info,
            cgroup_id: orig.cgroup_id,
            // Read while the client is connected, so it is alive (procfs read once per
            // connection, not per request).
            process: (orig.tgid != 0).then(|| ProcessInfo::from_procfs(orig.tgid)),
            original_dst,
        })
    }
}

/// `host=ip[,ip]` overrides of the proxy's Host check.
fn host_overrides(
    args: &[String],
) -> anyhow::Result<std::collections::HashMap<String, Vec<std::net::IpAddr>>> {
    let mut out = std::collections::HashMap::new();
    for a in args {
        let (host, ips) = a
            .split_once('=')
            .with_context(|| format!("--proxy-host `{a}`: expected HOST=IP[,IP]"))?;
        let ips = ips
            .split(',')
            .map(|ip| {
                ip.trim()
                    .parse()
                    .with_context(|| format!("--proxy-host `{a}`: `{ip}` is not an IP address"))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        out.insert(host.trim().to_ascii_lowercase(), ips);
    }
    Ok(out)
}

fn lifecycle(kind: &str, message: impl Into<String>) -> Record {
    Record::daemon(RecordType::Lifecycle, kind, message)
}

pub async fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    // The policy first, before the kernel is probed or anything is loaded: a typo or a missing
    // directory is reported with its place, and the exit status is that of `policy check`
    // (1), not 3 ("cannot enforce").
    policy::load_dir(&args.policy)?;
    // Before anything is attached, so a stop or reload request is never lost.
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sighup = signal(SignalKind::hangup())?;
    let probe = Probe::run();
    let root = probe.cgroup2.clone().context(
        "no cgroup2 filesystem is mounted; agents are cgroup v2 groups, so there is nothing to govern",
    )?;
    let hosts = host_overrides(&args.proxy_hosts)?;
    let token = match &args.api_token_file {
        Some(p) => Some(
            std::fs::read_to_string(p)
                .with_context(|| format!("reading the API token from {}", p.display()))?
                .trim()
                .to_owned(),
        )
        .filter(|t| !t.is_empty()),
        None => None,
    };
    if args.api_listen.is_some() && token.is_none() {
        anyhow::bail!("--api-listen needs a non-empty token in --api-token-file");
    }
    let enforcer = Enforcer::start(&args.pins, &root, args.allow_degraded).with_context(|| {
        format!(
            "loading the eBPF programs (pins in {})",
            args.pins.display()
        )
    })?;
    let previous = enforcer.generation().unwrap_or(0);
    let adopted = enforcer.adopted;
    if adopted {
        eprintln!(
            "governance: adopted the programs pinned in {} (generation {previous} was enforcing while no daemon ran)",
            args.pins.display()
        );
    }
    let complete = report(&probe, &enforcer);
    if !complete && !args.allow_degraded {
        eprintln!(
            "governance: refusing to run: not every hook is attached (see NOT AVAILABLE and why \
             above). Pass --allow-degraded to enforce only what is available."
        );
        if !adopted {
            // Leave nothing attached behind.
            let _ = kernel::unload(&args.pins);
        }
        return Ok(ExitCode::from(EXIT_CANNOT_ENFORCE));
    }
    let mut enforcer = enforcer;
    enforcer
        .protect(&[std::process::id()])
        .context("protecting the daemon's process")?;
    let hooks: Vec<(String, String, String)> = enforcer
        .hooks
        .iter()
        .map(|(p, s)| (p.name.to_owned(), p.what.to_owned(), s.to_string()))
        .collect();
    let ring = enforcer.take_events()?;
    let enforcer = Arc::new(Mutex::new(enforcer));

    // The event pipeline, with the audit log.
    let metrics = Arc::new(Metrics::new());
    let signing_key = args
        .audit_signing_key
        .as_deref()
        .map(crate::audit::load_or_create_key)
        .transpose()?;
    let pipe = pipeline::start(pipeline::Config {
        audit: Some((
            args.audit_dir.clone(),
            AuditOptions {
                max_bytes: args.audit_max_bytes,
                max_age: Some(args.audit_max_age),
                signing_key,
            },
        )),
        cgroup_root: root.clone(),
        metrics: metrics.clone(),
        stdout: !args.quiet,
    })
    .with_context(|| format!("opening the audit log in {}", args.audit_dir.display()))?;
    let publisher = pipe.publisher.clone();
    let mut started = lifecycle(
        "daemon.started",
        format!(
            "governance {} started (pid {}){}",
            env!("CARGO_PKG_VERSION"),
            std::process::id(),
            if complete { "" } else { " DEGRADED" }
        ),
    );
    started.generation = previous;
    if adopted {
        started.message.push_str(&format!(
            "; adopted the pinned programs: generation {previous} enforced while no daemon ran"
        ));
    }
    publisher.publish(started);

    // Approvals: HTTP holds, and kernel escalations approved by a time-bounded grant.
    let sink: events::Sink = {
        let p = publisher.clone();
        Arc::new(move |r| p.publish(r))
    };
    let grant: approvals::Grant = {
        let e = enforcer.clone();
        Arc::new(move |g: GrantRequest, d: Duration| {
            let mut e = e.lock().map_err(|_| "the kernel state lock is poisoned")?;
            e.grant(
                governance_common::GrantKey {
                    cgroup_id: g.cgroup_id,
                    kind: g.kind,
                    _pad: [0; 7],
                    object: g.object,
                },
                events::monotonic_ns().saturating_add(d.as_nanos() as u64),
            )
            .map_err(|e| e.to_string())
        })
    };
    let approvals = Approvals::with_ids(
        approvals::Limits::default(),
        sink.clone(),
        grant,
        pipe.ids.clone(),
    );

    // Drain kernel events from now on (what the programs decided while no daemon ran first).
    let names: SharedNames = Arc::default();
    let mut drainer = {
        let d = Drainer {
            ring,
            names: names.clone(),
            clock: Clock::now(),
            publisher: publisher.clone(),
            approvals: approvals.clone(),
        };
        DrainerThread::start(d)?
    };

    let snapshot = Arc::new(Mutex::new(Snapshot {
        policy_dir: args.policy.clone(),
        pins: args.pins.clone(),
        degraded: !complete,
        hooks,
        proxy: None,
        audit: Some(args.audit_dir.clone()),
        started: rfc3339(SystemTime::now()),
        generation: previous,
        ..Default::default()
    }));
    // Generation 1 (or the one after what was pinned).
    let mut current = previous;
    let engine: Arc<ArcSwap<Engine>>;
    // The agents of the current generation, and whether the last build failed (then any
    // change is worth another try).
    let mut agents_now = Vec::new();
    let mut last_failed = false;
    match build(current + 1, &args, &enforcer, &root) {
        Ok(Some(b)) => {
            current += 1;
            agents_now = b.found;
            engine = Arc::new(ArcSwap::from_pointee(b.engine));
            install_names(&names, current, b.names);
            let mut s = snapshot.lock().unwrap_or_else(|e| e.into_inner());
            s.generation = current;
            s.agents = b.agents;
            let mut r = Record::daemon(
                RecordType::Policy,
                "policy.reloaded",
                format!(
                    "generation {current} is enforcing {}",
                    args.policy.display()
                ),
            );
            r.generation = current;
            r.counts.insert("rules".into(), b.rules as u64);
            r.counts.insert("agents".into(), s.agents.len() as u64);
            publisher.publish(r);
            metrics.set_generation(current);
        }
        Ok(None) => {
            if !adopted {
                let _ = kernel::unload(&args.pins);
            }
            return Ok(ExitCode::from(EXIT_CANNOT_ENFORCE));
        }
        Err(e) => {
            if !adopted {
                let _ = kernel::unload(&args.pins);
                return Err(e);
            }
            eprintln!(
                "governance: the policy failed to load; generation {current} (pinned) keeps enforcing:\n{e:#}"
            );
            last_failed = true;
            engine = Arc::new(ArcSwap::from_pointee(Engine::new(
                policy::PolicySet::default(),
                current,
            )));
        }
    }

    // The HTTP policy proxy.
    let mut tasks = Vec::new();
    let proxy = if args.no_proxy {
        enforcer
            .lock()
            .map_err(|_| anyhow::anyhow!("lock"))?
            .set_proxy(None)?;
        None
    } else {
        // Port 0 picks a free port; the IPv6 listener and the kernel use the same one.
        let first = tokio::net::TcpListener::bind(args.proxy_listen)
            .await
            .with_context(|| format!("the proxy cannot listen on {}", args.proxy_listen))?;
        let v4 = match first.local_addr()? {
            SocketAddr::V4(a) => a,
            SocketAddr::V6(_) => anyhow::bail!("--proxy-listen takes an IPv4 address"),
        };
        let v6 = SocketAddrV6::new(Ipv6Addr::LOCALHOST, v4.port(), 0, 0);
        let mut listeners = vec![first];
        match tokio::net::TcpListener::bind(v6).await {
            Ok(l) => listeners.push(l),
            Err(e) => tracing::warn!(
                "the proxy does not listen on {v6} ({e}); IPv6 agents' via_proxy connects will be refused"
            ),
        }
        let identify = Arc::new(KernelIdentify {
            conns: Mutex::new(ProxyConns::open(&args.pins)?),
            names: names.clone(),
        });
        let cfg = proxy::ProxyConfig {
            host_check: if args.no_host_check {
                proxy::HostCheck::Off
            } else {
                proxy::HostCheck::Resolve
            },
            host_addresses: hosts,
            ca_dir: Some(args.ca_dir.clone()),
            upstream_ca: args.upstream_ca.clone(),
            ..Default::default()
        };
        let p = Proxy::new(
            cfg,
            engine.clone(),
            identify,
            approvals.clone(),
            sink.clone(),
        );
        for l in listeners {
            tasks.push(tokio::spawn(p.clone().serve(l)));
        }
        enforcer
            .lock()
            .map_err(|_| anyhow::anyhow!("lock"))?
            .set_proxy(Some((*v4.ip(), Ipv6Addr::LOCALHOST, v4.port())))?;
        eprintln!(
            "governance: HTTP policy proxy on {v4} and [::1]:{}",
            v4.port()
        );
        snapshot.lock().unwrap_or_else(|e| e.into_inner()).proxy = Some(v4.to_string());
        Some(p)
    };

    // The control API.
    let (reload_tx, mut reload_rx) = mpsc::channel::<api::ReloadReply>(8);
    let state = Arc::new(ApiState {
        publisher: publisher.clone(),
        counts: pipe.counts.clone(),
        audit_dir: Some(args.audit_dir.clone()),
        metrics: metrics.clone(),
        approvals: approvals.clone(),
        enforcer: enforcer.clone(),
        snapshot: snapshot.clone(),
        reload: reload_tx,
        proxy: proxy.clone(),
        token,
    });
    let socket = api::bind_socket(&args.socket)
        .with_context(|| format!("creating the control socket {}", args.socket.display()))?;
    // Agents may never reach it, whatever the policy says: refused by its identity, which
    // the kernel checks whatever name an agent uses.
    enforcer
        .lock()
        .map_err(|_| anyhow::anyhow!("lock"))?
        .protect_control_socket(&args.socket)
        .context("refusing the control socket to agents")?;
    // The API servers stop gracefully: live event streams end with their last record and a
    // proper end of body, not a connection cut mid-chunk.
    let (api_stop, api_stopping) = tokio::sync::watch::channel(false);
    let stopped = move || {
        let mut rx = api_stopping.clone();
        async move {
            let _ = rx.wait_for(|stop| *stop).await;
        }
    };
    let mut api_tasks = Vec::new();
    {
        let app =
            api::router(state.clone(), false).into_make_service_with_connect_info::<api::Caller>();
        let stop = stopped();
        api_tasks.push(tokio::spawn(async move {
            if let Err(e) = axum::serve(socket, app).with_graceful_shutdown(stop).await {
                tracing::error!("control socket: {e}");
            }
        }));
    }
    let mut api_addr = None;
    if let Some(addr) = args.api_listen {
        let l = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("the API cannot listen on {addr}"))?;
        api_addr = Some(l.local_addr()?);
        let app =
            api::router(state.clone(), true).into_make_service_with_connect_info::<api::Caller>();
        let stop = stopped();
        api_tasks.push(tokio::spawn(async move {
            if let Err(e) = axum::serve(l, app).with_graceful_shutdown(stop).await {
                tracing::error!("API on {addr}: {e}");
            }
        }));
    }
    // Agents' connects to the TCP API are refused in the kernel (and a previous daemon's
    // address forgotten).
    enforcer
        .lock()
        .map_err(|_| anyhow::anyhow!("lock"))?
        .set_api_addr(api_addr)
        .context("refusing the TCP control API to agents")?;
    eprintln!(
        "governance: control API on {}{}",
        args.socket.display(),
        args.api_listen
            .map(|a| format!(" and {a} (bearer token)"))
            .unwrap_or_default()
    );

    let mut policy_watch = watch_policy(&args.policy)?;
    let mut cgroup_watch = watch_cgroups(&root)?;
    let mut socket_watch = watch_sockets(&enforcer)?;
    let mut failures = 0u64;
    let (mut policy_due, mut cgroup_due, mut socket_due) = (None, None, None);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut dropped = enforcer
        .lock()
        .ok()
        .and_then(|e| e.counter(Counter::EventsDropped).ok())
        .unwrap_or_default();
    loop {
        let mut reply = None;
        let why = tokio::select! {
            _ = tick.tick() => {
                approvals.expire_due(SystemTime::now());
                // Socket files re-created where no directory watch saw it (a directory that
                // did not exist yet): looked at once a second.
                if sockets_changed(&enforcer) {
                    socket_due.get_or_insert(tokio::time::Instant::now());
                }
                // The kernel's drop counter, told as a record when it moves.
                let now = enforcer.lock().ok().and_then(|e| e.counter(Counter::EventsDropped).ok()).unwrap_or(dropped);
                if now > dropped {
                    let mut r = lifecycle("events.dropped", format!(
                        "the kernel's event ring was full: {} decision events were not recorded (the decisions were enforced)",
                        now - dropped
                    ));
                    r.counts.insert("dropped".into(), now - dropped);
                    r.counts.insert("dropped_total".into(), now);
                    publisher.publish(r);
                    dropped = now;
                }
                continue;
            }
            // A burst of changes (an editor saving, a tree of cgroups appearing) settles
            // before the reload: the first change sets the due time, later ones ride along.
            r = changed(&mut policy_watch) => {
                r?;
                let due = tokio::time::Instant::now() + Duration::from_millis(300);
                policy_due.get_or_insert(due);
                continue;
            }
            r = changed(&mut cgroup_watch) => {
                r?;
                let due = tokio::time::Instant::now() + Duration::from_millis(50);
                cgroup_due.get_or_insert(due);
                continue;
            }
            // A socket re-created: a runtime socket is refused again at once, a rule's socket
            // with the next generation.
            r = changed(&mut socket_watch) => {
                r?;
                if sockets_changed(&enforcer) {
                    socket_due.get_or_insert(tokio::time::Instant::now());
                }
                socket_watch = watch_sockets(&enforcer)?;
                continue;
            }
            _ = until(earliest(earliest(policy_due, cgroup_due), socket_due)) => {
                let policy_changed = policy_due.is_some();
                let socket_changed = socket_due.is_some();
                policy_due = None;
                cgroup_due = None;
                socket_due = None;
                if policy_changed {
                    "the policy directory changed"
                } else if socket_changed {
                    "a Unix socket a rule names was created or re-created"
                } else {
                    // Only cgroups changed. If the agents are the same ones, the current
                    // generation is exactly what a rebuild would make: keep it. (Watch the new
                    // directories first, so a cgroup made meanwhile is seen next time.)
                    cgroup_watch = watch_cgroups(&root)?;
                    if !last_failed
                        && agents::discover(&root, engine.load().policies(), !args.no_create_cgroups)
                            .is_ok_and(|found| found == agents_now)
                    {
                        eprintln!(
                            "governance: the cgroup tree changed, the agents did not; generation {current} stays"
                        );
                        continue;
                    }
                    "the agent cgroups changed"
                }
            }
            r = reload_rx.recv() => {
                reply = r;
                "a reload was requested through the API"
            }
            _ = sighup.recv() => "SIGHUP",
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
        };
        eprintln!("governance: {why}; reloading");
        let next = current + 1;
        let result = match build(next, &args, &enforcer, &root) {
            Ok(Some(mut b)) => {
                // The kernel's buckets carried over with the flip; the HTTP engine's carry
                // over before it decides anything.
                b.engine.carry_buckets(&engine.load(), Instant::now());
                install_names(&names, next, b.names);
                engine.store(Arc::new(b.engine));
                agents_now = b.found;
                last_failed = false;
                eprintln!("governance: generation {next} is enforcing");
                current = next;
                let mut s = snapshot.lock().unwrap_or_else(|e| e.into_inner());
                s.generation = current;
                s.agents = b.agents;
                s.last_error = None;
                let mut r = Record::daemon(
                    RecordType::Policy,
                    "policy.reloaded",
                    format!("generation {current} is enforcing ({why})"),
                );
                r.generation = current;
                r.counts.insert("rules".into(), b.rules as u64);
                r.counts.insert("agents".into(), s.agents.len() as u64);
                publisher.publish(r);
                metrics.set_generation(current);
                policy_watch = watch_policy(&args.policy)?;
                cgroup_watch = watch_cgroups(&root)?;
                socket_watch = watch_sockets(&enforcer)?;
                Ok(current)
            }
            Ok(None) => Err(
                "some of the policy cannot be enforced on this kernel (see the daemon's log); \
                 pass --allow-degraded to enforce only what is available"
                    .to_owned(),
            ),
            Err(e) => Err(format!("{e:#}")),
        };
        if let Err(e) = &result {
            failures += 1;
            last_failed = true;
            eprintln!(
                "governance: reload failed ({failures} failed so far); generation {current} keeps enforcing:\n{e}"
            );
            let mut r = Record::daemon(
                RecordType::Policy,
                "policy.reload_failed",
                format!("generation {current} keeps enforcing: {e}"),
            );
            r.generation = current;
            publisher.publish(r);
            let mut s = snapshot.lock().unwrap_or_else(|e| e.into_inner());
            s.reload_failures = failures;
            s.last_error = Some(e.clone());
        }
        if let Some(reply) = reply {
            let _ = reply.send(result);
        }
    }

    // Stop: no new connections, the last events recorded, then the pipeline closes the log.
    for t in &tasks {
        t.abort();
    }
    let _ = api_stop.send(true);
    let _ = std::fs::remove_file(&args.socket);
    drainer.stop();
    let (decisions, denials, ring_drops, map_full) = {
        let e = enforcer.lock().unwrap_or_else(|e| e.into_inner());
        let c = |k| e.counter(k).unwrap_or_default();
        (
            c(Counter::Decisions),
            c(Counter::Denials),
            c(Counter::EventsDropped),
            c(Counter::MapFull),
        )
    };
    eprintln!(
        "governance: stopping; {decisions} decisions, {denials} denials, {ring_drops} events dropped, {map_full} map-full failures; {failures} failed reloads"
    );
    let mut r = lifecycle(
        "daemon.stopped",
        if args.detach_on_exit {
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
    publisher.publish(r);
    drop((publisher, sink, approvals, state, proxy, tasks));
    // Connections still open (an `events --follow`) hold publishers: stop explicitly.
    pipe.publisher.stop();
    let _ = tokio::task::spawn_blocking(move || pipe.thread.join()).await;
    // The streams have their last record; let them end cleanly (bounded: a client that does
    // not read keeps nothing alive).
    let drained = futures_util::future::join_all(api_tasks);
    if tokio::time::timeout(API_DRAIN, drained).await.is_err() {
        tracing::warn!("API connections still open after {API_DRAIN:?}; closing them");
    }
    if args.detach_on_exit {
        kernel::unload(&args.pins).context("removing the pins")?;
        eprintln!("governance: programs detached (--detach-on-exit)");
    } else {
        eprintln!(
            "governance: generation {current} stays enforcing (pinned in {}); `governance unload` removes it",
            args.pins.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Name generation `g`, keeping the recent ones for events still in the ring.
fn install_names(names: &SharedNames, g: u32, n: Names) {
    let mut names = names.write().unwrap_or_else(|e| e.into_inner());
    names.insert(g, Arc::new(n));
    while names.len() > NAMED_GENERATIONS {
        names.pop_first();
    }
}
