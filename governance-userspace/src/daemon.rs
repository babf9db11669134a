//! The daemon (`governance run`): policy generations, agent discovery, reloads and the event
//! loop.
//!
//! The programs are attached once and pinned (see [`kernel::Enforcer`]); a restarted daemon
//! adopts them. A generation is one validated policy set with the agent cgroups found for it,
//! compiled into the maps' inactive slot and made active by one flip (see governance_common).
//! A reload (SIGHUP, a change in the policy directory, an agent cgroup that appears, goes or is
//! labelled) builds the next generation; one that fails (invalid policy, unenforceable policy,
//! kernel error) changes nothing: the current generation keeps enforcing and the failure is
//! reported and counted.
//!
//! When the daemon stops (or dies), the programs stay attached with the last generation:
//! enforcement fails closed. `governance unload` (or `run --detach-on-exit`) removes them.

use std::{
    collections::BTreeMap,
    io::Write as _,
    os::fd::{AsFd as _, AsRawFd, RawFd},
    path::{Path, PathBuf},
    process::ExitCode,
    time::Duration,
};

use anyhow::Context as _;
use aya::maps::{MapData, RingBuf};
use governance_common::Counter;
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{SignalKind, signal},
};

use crate::{
    agents,
    cli::{EXIT_CANNOT_ENFORCE, RunArgs, report},
    events::{self, AgentInfo, Clock, Ids, Names, Record, RuleName},
    kernel::{self, Enforcer, Probe, Protect},
    policy,
};

/// How often the daemon drains the event ring when the programs have not woken it.
const EVENT_TICK_MS: u64 = 50;

/// Validate the policy directory, find the agents, and install generation `number`.
/// Ok(None): it compiled, but some of it cannot be enforced here and degraded mode was not
/// accepted; nothing changed.
fn build(
    number: u32,
    args: &RunArgs,
    enforcer: &mut Enforcer,
    root: &Path,
) -> anyhow::Result<Option<Names>> {
    let set = policy::load_dir(&args.policy)?;
    let agents = agents::discover(root, &set, !args.no_create_cgroups)?;
    let protect = Protect {
        cgroup_root: root.to_owned(),
        no_write: vec![args.policy.clone(), enforcer.pin_dir.clone()],
    };
    let compiled = kernel::compile(&set, &agents, number, &protect);
    if !compiled.errors.is_empty() {
        anyhow::bail!(
            "the policy does not fit the kernel tables:\n  {}",
            compiled.errors.join("\n  ")
        );
    }
    for line in &compiled.unenforceable {
        eprintln!("governance: NOT ENFORCED: {line}");
    }
    let complete = enforcer.fully_attached() && compiled.unenforceable.is_empty();
    if !complete && !args.allow_degraded {
        eprintln!(
            "governance: refusing generation {number}: some of the policy cannot be enforced here \
             (see NOT AVAILABLE / NOT ENFORCED above). Exec and file enforcement need BPF LSM: \
             Linux >= 6.1 with `bpf` in /sys/kernel/security/lsm (boot with lsm=...,bpf). Pass \
             --allow-degraded to enforce only what is available."
        );
        return Ok(None);
    }
    for skipped in enforcer
        .install(&compiled)
        .context("writing the policy into the kernel maps")?
    {
        tracing::warn!(
            "{skipped}; its exact rule waits for the next generation (path rules still apply)"
        );
    }
    eprintln!(
        "governance: enforcing {} as generation {number} ({} policies, {} rules, {} agents){}",
        args.policy.display(),
        set.policies.len(),
        set.rule_count(),
        agents.len(),
        if complete { "" } else { " DEGRADED" }
    );
    for a in &agents {
        eprintln!(
            "governance: agent {} = cgroup {} (id {})",
            a.name,
            a.path.display(),
            a.cgroup_id
        );
    }
    Ok(Some(names(&set, &agents)))
}

/// What the kernel ids of one generation stand for.
pub fn names(set: &policy::PolicySet, agents: &[agents::AgentCgroup]) -> Names {
    Names {
        agents: agents
            .iter()
            .map(|a| {
                let selector = set
                    .policies
                    .iter()
                    .filter(|p| p.selector.matches(&a.rel, a.label.as_deref()))
                    .map(|p| p.selector.to_string())
                    .collect::<std::collections::BTreeSet<_>>()
                    .into_iter()
                    .collect::<Vec<_>>()
                    .join(" ");
                let info = AgentInfo {
                    name: a.name.clone(),
                    selector,
                    cgroup_id: a.cgroup_id,
                    cgroup: a.rel.clone(),
                    ..Default::default()
                };
                (a.cgroup_id, info)
            })
            .collect(),
        rules: set
            .policies
            .iter()
            .flat_map(|p| p.rules.iter().map(move |r| (p, r)))
            .map(|(p, r)| RuleName {
                id: r.id.clone(),
                reason: r.reason.clone(),
                escalate_timeout: r.escalate.as_ref().map(|e| e.timeout),
                shadow: p.mode == policy::Mode::Shadow || r.mode == policy::Mode::Shadow,
            })
            .collect(),
    }
}

/// Print every event waiting in the ring buffer, named after the generation that decided.
fn drain(
    ring: &mut RingBuf<MapData>,
    names: &BTreeMap<u32, Names>,
    clock: &Clock,
    ids: &Ids,
    node: &str,
) -> std::io::Result<()> {
    let mut stdout = std::io::stdout().lock();
    let unknown = Names::default();
    while let Some(item) = ring.next() {
        match events::parse(&item) {
            Some(ev) => {
                let names = names.get(&ev.generation).unwrap_or(&unknown);
                let mut r = Record::from_kernel(&ev, names, clock);
                r.id = ids.next();
                r.node = node.to_owned();
                writeln!(stdout, "{r}")?;
            }
            None => tracing::warn!(
                len = item.len(),
                "ignoring a ring-buffer record of unexpected size"
            ),
        }
    }
    stdout.flush()
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

pub async fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    // Before anything is attached, so a stop or reload request is never lost.
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sighup = signal(SignalKind::hangup())?;
    let probe = Probe::run();
    let root = probe.cgroup2.clone().context(
        "no cgroup2 filesystem is mounted; agents are cgroup v2 groups, so there is nothing to govern",
    )?;
    let mut enforcer =
        Enforcer::start(&args.pins, &root, args.allow_degraded).with_context(|| {
            format!(
                "loading the eBPF programs (pins in {})",
                args.pins.display()
            )
        })?;
    let previous = enforcer.generation().unwrap_or(0);
    if enforcer.adopted {
        eprintln!(
            "governance: adopted the programs pinned in {} (generation {previous} was enforcing while no daemon ran)",
            args.pins.display()
        );
    }
    if !report(&probe, &enforcer) && !args.allow_degraded {
        eprintln!(
            "governance: refusing to run: not every hook is attached (see NOT AVAILABLE above). \
             Exec and file enforcement need BPF LSM: Linux >= 6.1 with `bpf` in \
             /sys/kernel/security/lsm (boot with lsm=...,bpf). Pass --allow-degraded to enforce \
             only what is available."
        );
        if !enforcer.adopted {
            // Leave nothing attached behind.
            let _ = kernel::unload(&args.pins);
        }
        return Ok(ExitCode::from(EXIT_CANNOT_ENFORCE));
    }
    enforcer
        .protect(&[std::process::id()])
        .context("protecting the daemon's process")?;
    let mut ring = {
        let ring = enforcer.take_events()?;
        // SAFETY: the ring buffer owns its fd for as long as the AsyncFd owns the ring buffer.
        unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
            .map_err(|e| anyhow::anyhow!("watching the event ring buffer: {}", e.into_parts().1))?
    };
    let clock = Clock::now();
    let ids = Ids::new();
    let node = events::node_name();
    let mut names: BTreeMap<u32, Names> = BTreeMap::new();
    // Events decided while no daemon ran (up to the ring's capacity; the drop counter says if
    // more were lost).
    if enforcer.adopted {
        drain(ring.get_mut(), &names, &clock, &ids, &node)?;
        eprintln!(
            "governance: drained the events of the downtime; {} dropped in total since load",
            enforcer.counter(Counter::EventsDropped).unwrap_or_default()
        );
    }
    let mut current = previous;
    match build(current + 1, &args, &mut enforcer, &root) {
        Ok(Some(n)) => {
            current += 1;
            names.insert(current, n);
        }
        Ok(None) => {
            if !enforcer.adopted {
                let _ = kernel::unload(&args.pins);
            }
            return Ok(ExitCode::from(EXIT_CANNOT_ENFORCE));
        }
        Err(e) => {
            if !enforcer.adopted {
                let _ = kernel::unload(&args.pins);
                return Err(e);
            }
            eprintln!(
                "governance: the policy failed to load; generation {current} (pinned) keeps enforcing:\n{e:#}"
            );
        }
    }
    let mut policy_watch = watch_policy(&args.policy)?;
    let mut cgroup_watch = watch_cgroups(&root)?;
    let mut failures = 0u64;
    let (mut policy_due, mut cgroup_due) = (None, None);
    // The programs wake the daemon only when the ring is filling up; otherwise events are
    // picked up on this tick (see governance-ebpf's emit).
    let mut tick = tokio::time::interval(Duration::from_millis(EVENT_TICK_MS));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let why = tokio::select! {
            _ = tick.tick() => {
                drain(ring.get_mut(), &names, &clock, &ids, &node)?;
                continue;
            }
            guard = ring.readable_mut() => {
                let mut guard = guard.context("waiting for events")?;
                guard.clear_ready();
                drop(guard);
                drain(ring.get_mut(), &names, &clock, &ids, &node)?;
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
            _ = until(earliest(policy_due, cgroup_due)) => {
                let why = if policy_due.is_some() {
                    "the policy directory changed"
                } else {
                    "the cgroup tree changed"
                };
                policy_due = None;
                cgroup_due = None;
                why
            }
            _ = sighup.recv() => "SIGHUP",
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
        };
        eprintln!("governance: {why}; reloading");
        let next = current + 1;
        match build(next, &args, &mut enforcer, &root) {
            Ok(Some(n)) => {
                names.insert(next, n);
                // Events of older generations may still be in the ring: keep the previous
                // names, forget the rest.
                names.retain(|g, _| *g + 1 >= current);
                drain(ring.get_mut(), &names, &clock, &ids, &node)?;
                eprintln!("governance: generation {next} is enforcing");
                current = next;
                policy_watch = watch_policy(&args.policy)?;
                cgroup_watch = watch_cgroups(&root)?;
            }
            Ok(None) => {
                failures += 1;
                eprintln!(
                    "governance: reload refused ({failures} failed so far); generation {current} keeps enforcing"
                );
            }
            Err(e) => {
                failures += 1;
                eprintln!(
                    "governance: reload failed ({failures} failed so far); generation {current} keeps enforcing:\n{e:#}"
                );
            }
        }
    }
    drain(ring.get_mut(), &names, &clock, &ids, &node)?;
    let counter = |c| enforcer.counter(c).unwrap_or_default();
    eprintln!(
        "governance: stopping; {} decisions, {} denials, {} events dropped, {} map-full failures; {failures} failed reloads",
        counter(Counter::Decisions),
        counter(Counter::Denials),
        counter(Counter::EventsDropped),
        counter(Counter::MapFull),
    );
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
