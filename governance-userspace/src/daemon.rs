//! The daemon (`governance run`): policy generations, reloads, and the event loop.
//!
//! A generation is one validated policy set, loaded into its own instance of the eBPF programs
//! and maps, stamped with its number on every event. A reload (SIGHUP, or a change in the
//! policy directory) builds and attaches the next generation completely, then detaches the
//! previous one after draining its events. While both are attached an action must pass both,
//! so the switch is never more permissive than either generation, and no decision mixes two
//! generations. A reload that fails (invalid policy, unenforceable policy, kernel error) changes
//! nothing: the current generation keeps enforcing and the failure is reported and counted.

use std::{
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
    cli::{EXIT_CANNOT_ENFORCE, RunArgs, load_and_attach, report},
    events::{self, Clock, Decision, Names},
    kernel::{self, Probe},
    policy,
};

/// One generation of policy, enforcing.
struct Generation {
    number: u32,
    enforcer: kernel::Enforcer,
    ring: AsyncFd<RingBuf<MapData>>,
    names: Names,
}

/// Validate the policy directory and bring up generation `number` next to whatever runs now.
/// None: it loaded, but some of it cannot be enforced here and degraded mode was not accepted.
fn build(
    number: u32,
    args: &RunArgs,
    probe: &Probe,
    root: &Path,
) -> anyhow::Result<Option<Generation>> {
    let set = policy::load_dir(&args.policy)?;
    let agents = agents::discover(root, &set, !args.no_create_cgroups)?;
    let compiled = kernel::compile(&set, &agents);
    let mut enforcer = load_and_attach(number, root, Some(&compiled))?;
    // The full report once, at start; reloads only say what is missing.
    let hooks = if number == 1 {
        report(probe, &enforcer)
    } else {
        enforcer.fully_attached()
    };
    for line in &compiled.unenforceable {
        eprintln!("governance: NOT ENFORCED: {line}");
    }
    let complete = hooks && compiled.unenforceable.is_empty();
    if !complete && !args.allow_degraded {
        eprintln!(
            "governance: refusing generation {number}: some of the policy cannot be enforced here \
             (see NOT AVAILABLE / NOT ENFORCED above). Exec enforcement needs BPF LSM: Linux >= \
             6.1 with `bpf` in /sys/kernel/security/lsm (boot with lsm=...,bpf). Pass \
             --allow-degraded to enforce only what is available."
        );
        return Ok(None);
    }
    if !complete {
        eprintln!("governance: WARNING: running DEGRADED: only the hooks marked attached enforce.");
    }
    let ring = enforcer.take_events()?;
    // SAFETY: the ring buffer owns its fd for as long as the AsyncFd owns the ring buffer.
    let ring = unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
        .map_err(|e| anyhow::anyhow!("watching the event ring buffer: {}", e.into_parts().1))?;
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
    let names = Names {
        agents: agents.iter().map(|a| a.name.clone()).collect(),
        rules: set
            .rules()
            .map(|r| (r.id.clone(), r.reason.clone()))
            .collect(),
    };
    Ok(Some(Generation {
        number,
        enforcer,
        ring,
        names,
    }))
}

/// Print every event waiting in a generation's ring buffer.
fn drain(g: &mut Generation, clock: &Clock) -> std::io::Result<()> {
    let mut stdout = std::io::stdout().lock();
    let names = &g.names;
    let ring = g.ring.get_mut();
    while let Some(item) = ring.next() {
        match events::parse(&item) {
            Some(ev) => writeln!(stdout, "{}", Decision::new(&ev, names, clock))?,
            None => tracing::warn!(
                len = item.len(),
                "ignoring a ring-buffer record of unexpected size"
            ),
        }
    }
    stdout.flush()
}

/// inotify on the policy directory and its subdirectories, for tokio.
struct Watch(Inotify);

impl AsRawFd for Watch {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_fd().as_raw_fd()
    }
}

fn watch(dir: &Path) -> anyhow::Result<AsyncFd<Watch>> {
    let inotify =
        Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC).context("inotify_init")?;
    let flags = AddWatchFlags::IN_CLOSE_WRITE
        | AddWatchFlags::IN_MOVED_TO
        | AddWatchFlags::IN_MOVED_FROM
        | AddWatchFlags::IN_CREATE
        | AddWatchFlags::IN_DELETE;
    let mut dirs: Vec<PathBuf> = vec![dir.to_owned()];
    while let Some(d) = dirs.pop() {
        inotify
            .add_watch(&d, flags)
            .with_context(|| format!("watching {}", d.display()))?;
        if let Ok(rd) = std::fs::read_dir(&d) {
            dirs.extend(
                rd.flatten()
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .map(|e| e.path()),
            );
        }
    }
    // SAFETY: Watch owns the inotify fd for as long as the AsyncFd owns the Watch.
    unsafe { AsyncFd::register_with_interest(Watch(inotify), tokio::io::Interest::READABLE) }
        .map_err(|e| anyhow::anyhow!("watching {}: {}", dir.display(), e.into_parts().1))
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
    let mut current = match build(1, &args, &probe, &root)? {
        Some(g) => g,
        None => return Ok(ExitCode::from(EXIT_CANNOT_ENFORCE)),
    };
    let mut watcher = watch(&args.policy)?;
    let clock = Clock::now();
    let mut failures = 0u64;
    loop {
        let reload = tokio::select! {
            guard = current.ring.readable_mut() => {
                let mut guard = guard.context("waiting for events")?;
                guard.clear_ready();
                drop(guard);
                drain(&mut current, &clock)?;
                false
            }
            guard = watcher.readable_mut() => {
                let mut guard = guard.context("watching the policy directory")?;
                let _ = guard.get_inner().0.read_events();
                guard.clear_ready();
                drop(guard);
                // Editors and deploy tools write in several steps: let them finish.
                tokio::time::sleep(Duration::from_millis(300)).await;
                let _ = watcher.get_ref().0.read_events();
                eprintln!("governance: the policy directory changed; reloading");
                true
            }
            _ = sighup.recv() => {
                eprintln!("governance: SIGHUP; reloading");
                true
            }
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
        };
        if !reload {
            continue;
        }
        let next = current.number + 1;
        match build(next, &args, &probe, &root) {
            Ok(Some(new)) => {
                let mut old = std::mem::replace(&mut current, new);
                drain(&mut old, &clock)?;
                drop(old); // detaches the previous generation's programs
                eprintln!(
                    "governance: generation {next} is enforcing; generation {} detached",
                    next - 1
                );
                // New subdirectories are watched from now on.
                match watch(&args.policy) {
                    Ok(w) => watcher = w,
                    Err(e) => tracing::warn!("re-watching the policy directory: {e:#}"),
                }
            }
            Ok(None) => {
                failures += 1;
                eprintln!(
                    "governance: reload refused ({failures} failed so far); generation {} keeps enforcing",
                    current.number
                );
            }
            Err(e) => {
                failures += 1;
                eprintln!(
                    "governance: reload failed ({failures} failed so far); generation {} keeps enforcing:\n{e:#}",
                    current.number
                );
            }
        }
    }
    drain(&mut current, &clock)?;
    let dropped = current
        .enforcer
        .counter(Counter::EventsDropped)
        .unwrap_or_default();
    let decisions = current
        .enforcer
        .counter(Counter::Decisions)
        .unwrap_or_default();
    eprintln!(
        "governance: stopping; generation {}: {decisions} decisions, {dropped} events dropped; {failures} failed reloads; programs detach now",
        current.number
    );
    Ok(ExitCode::SUCCESS)
}
