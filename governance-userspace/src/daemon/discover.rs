//! The discovery thread: reads the `discover` program's ring (TLS ClientHellos and DNS queries
//! of processes outside every agent), and scans /proc for agent frameworks and MCP servers
//! outside every agent, every [`SCAN_INTERVAL`]. It publishes a `discovery` record per new
//! candidate+evidence (see crate::discovery). Its failures are logged and counted
//! (`Discovery::errors`), never fatal: discovery never stops the daemon nor refuses anything.

use std::{
    collections::HashSet,
    os::fd::{AsFd as _, AsRawFd},
    path::Path,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant, SystemTime},
};

use aya::maps::{MapData, RingBuf};

use super::worker::Worker;
use crate::{
    discovery::{Discovery, Evidence, procs},
    events::rfc3339,
    kernel::{Enforcer, parse_discover},
    pipeline::Publisher,
};

/// How often /proc is scanned for frameworks and MCP servers.
pub const SCAN_INTERVAL: Duration = Duration::from_secs(5);
const TICK: Duration = Duration::from_millis(100);

/// Executables whose mapped files are read for framework evidence (interpreters whose
/// packages live in `site-packages` or `node_modules`).
const INTERPRETERS: &[&str] = &["python", "node", "deno", "bun", "uv", "uvx", "npx"];

fn run(
    d: &Discovery,
    mut ring: Option<RingBuf<MapData>>,
    enforcer: &Mutex<Enforcer>,
    publisher: &Publisher,
    stop: &AtomicBool,
) {
    let mut last_scan: Option<Instant> = None;
    while !stop.load(Ordering::Relaxed) {
        if let Some(ring) = ring.as_mut() {
            while let Some(item) = ring.next() {
                let Some(ev) = parse_discover(&item) else {
                    d.errors.fetch_add(1, Ordering::Relaxed);
                    continue;
                };
                drop(item);
                if let Some(e) = d.packet(&ev)
                    && let Some(r) = d.note(e)
                {
                    publisher.publish(r);
                }
            }
        }
        if last_scan.is_none_or(|t| t.elapsed() >= SCAN_INTERVAL) {
            last_scan = Some(Instant::now());
            let agents: HashSet<u64> = match enforcer.lock() {
                Ok(e) => match e.agents() {
                    Ok(a) => a.into_iter().map(|(id, _)| id).collect(),
                    Err(err) => {
                        tracing::warn!("discovery: reading the agents: {err}");
                        d.errors.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                },
                Err(_) => continue,
            };
            for r in scan(d, &agents) {
                publisher.publish(r);
            }
        }
        match ring.as_ref() {
            Some(ring) => {
                // SAFETY: a valid fd for the ring's lifetime; one pollfd.
                let mut pfd = libc::pollfd {
                    fd: ring.as_fd().as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                };
                unsafe { libc::poll(&mut pfd, 1, TICK.as_millis() as i32) };
            }
            None => std::thread::sleep(TICK), // only the scan's clock: nothing to wait for
        }
    }
}

/// Whether the cgroup at `path` (or one above it) is an agent root.
fn in_agent(root: &Path, path: &str, agents: &HashSet<u64>) -> bool {
    let mut p = path.trim_matches('/');
    loop {
        if p.is_empty() {
            return false;
        }
        if procs::cgroup_id(root, p).is_some_and(|id| agents.contains(&id)) {
            return true;
        }
        p = p.rsplit_once('/').map_or("", |(up, _)| up);
    }
}

/// One pass over /proc: framework and MCP evidence of processes outside every agent, and the
/// parents that run MCP servers as children (stdio servers).
pub fn scan(d: &Discovery, agents: &HashSet<u64>) -> Vec<crate::events::Record> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        d.errors.fetch_add(1, Ordering::Relaxed);
        return out;
    };
    let me = std::process::id();
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Some(cgroup) = procs::cgroup_of(pid) else {
            continue;
        };
        if in_agent(&d.cgroup_root, &cgroup, agents) {
            continue;
        }
        let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap_or_default();
        let base = exe.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let interpreter = INTERPRETERS.iter().any(|i| base.starts_with(i));
        let hits = if interpreter {
            procs::scan(pid)
        } else {
            procs::scan_cmdline(pid)
        };
        if hits.is_empty() {
            continue;
        }
        let Some(info) = procs::proc_info(&d.cgroup_root, pid) else {
            continue;
        };
        let now = rfc3339(SystemTime::now());
        for (what, value, matched) in hits {
            let mut e = evidence(&info, what, value, matched, &now);
            (e.container, e.pod_uid) = procs::container_of(&e.cgroup);
            if let Some(r) = d.note(e) {
                out.push(r);
            }
            // The parent of a stdio MCP server calls it.
            if what == "mcp"
                && let Some(ppid) = procs::ppid(pid)
                && ppid > 1
                && let Some(parent) = procs::proc_info(&d.cgroup_root, ppid)
                && !in_agent(&d.cgroup_root, &parent.cgroup, agents)
            {
                let mut e = evidence(
                    &parent,
                    "mcp",
                    format!("runs MCP server pid {pid}: {}", info.cmdline),
                    matched,
                    &now,
                );
                (e.container, e.pod_uid) = procs::container_of(&e.cgroup);
                if let Some(r) = d.note(e) {
                    out.push(r);
                }
            }
        }
    }
    out
}

fn evidence(
    p: &procs::ProcInfo,
    what: &'static str,
    value: String,
    matched: &str,
    now: &str,
) -> Evidence {
    Evidence {
        what: what.into(),
        value,
        matched: matched.into(),
        pid: p.pid,
        comm: p.comm.clone(),
        exe: p.exe.clone(),
        cmdline: p.cmdline.clone(),
        cgroup_id: p.cgroup_id,
        cgroup: p.cgroup.clone(),
        attributed: "pid".into(),
        first_seen: now.into(),
        last_seen: now.into(),
        count: 1,
        ..Default::default()
    }
}

/// Start discovery (unless `--no-discover`): its state for the API, and its thread. The ring
/// buffer missing (the program could not be attached, an adopted older pin set) leaves the
/// /proc scan; a thread that cannot start leaves nothing. Both are logged, never fatal.
pub(super) fn start(
    args: &super::RunArgs,
    hosts: crate::discovery::Hosts,
    root: &Path,
    enforcer: &Arc<Mutex<Enforcer>>,
    publisher: &Publisher,
) -> (Option<Arc<Discovery>>, Option<Worker>) {
    if args.no_discover {
        return (None, None);
    }
    let discovery = Discovery::new(hosts, root.to_owned());
    let ring = match enforcer.lock().map(|mut e| e.take_discover()) {
        Ok(Ok(ring)) => Some(ring),
        Ok(Err(e)) => {
            tracing::warn!("discovery: no TLS/DNS evidence (the discover program's ring: {e})");
            discovery.errors.fetch_add(1, Ordering::Relaxed);
            None
        }
        Err(_) => None,
    };
    let (d, enforcer, publisher) = (discovery.clone(), enforcer.clone(), publisher.clone());
    match Worker::start("discovery", "starting the discovery thread", move |flag| {
        run(&d, ring, &enforcer, &publisher, &flag)
    }) {
        Ok(t) => (Some(discovery), Some(t)),
        Err(e) => {
            tracing::error!("discovery is off: {e:#}");
            (Some(discovery), None)
        }
    }
}
