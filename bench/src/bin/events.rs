//! `cargo xtask bench events`: how many decision events per second get from the kernel to the
//! audit log and a live subscriber, and what happens to the ones that do not.
//!
//! A flood of denied actions from an agent cgroup: denied opens of a file that a `file` rule
//! blocks where BPF LSM works, denied TCP connects to a loopback port that a `network` rule
//! blocks where it does not (the development hosts refuse LSM programs, and load the cgroup
//! socket hooks). Each denial is one decision event. Two measurements:
//!
//! 1. **Ring-buffer drain** (the kernel → daemon boundary), in this process: load the programs
//!    with `Enforcer::start` under a pin directory of our own, install a one-agent policy, take
//!    the event ring, and with nobody draining let a flood fill it (it holds
//!    `EVENTS_RING_BYTES / record size` events; the rest are dropped and counted by the kernel's
//!    EventsDropped counter). Then time draining it completely: raw (`RingBuf::next` +
//!    `events::parse`) and decoded (+ `Record::from_kernel`, into a batch as the daemon's
//!    drainer does), in alternate rounds. Checked each round: drained + dropped == decisions.
//! 2. **Full pipeline**: a real `governance run` (`--quiet --no-proxy`, audit log on disk with an
//!    fsync per batch, metrics), one live subscriber reading the NDJSON stream of the control
//!    socket (`GET /v1/events?follow=true`, what `governance events --follow -o json` reads),
//!    and 1, 2, 4 producer processes in the agent cgroup, each flooding for a fixed time. From
//!    the daemon's `/v1/status` (kernel decisions, EventsDropped) and `/metrics` (records
//!    published, written to the audit log, lost by subscribers), the subscriber's own counts,
//!    and the audit files themselves: the rate at which events were recorded, whether every
//!    event was recorded, and, where not, whether every lost one was counted:
//!    decisions == recorded + kernel drops, and subscriber received + subscriber lost == records
//!    published. The daemon's CPU time per thread says where the time goes.
//!
//! Rounds interleave the producer counts; the report gives medians and ranges.
//!
//! Needs root. Usage:
//!   governance-bench-events [--governance PATH] [--rounds N] [--drain-rounds N] [--secs S]
//!                           [--producers 1,2,4] [--workload auto|connect|open]
//!                           [--allow-degraded] [--label TEXT] [--skip-drain] [--skip-pipeline]
//! The governance binary is --governance, else $GOVERNANCE_BIN.

use std::{
    collections::BTreeMap,
    hint::black_box,
    io::{ErrorKind, Read as _, Write as _},
    net::{SocketAddr, TcpListener},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use governance::{
    agents,
    events::{self, Clock, Record},
    kernel::{self, Enforcer, HookState},
    policy,
};
use governance_bench::{
    Daemon, Res, Worker, cgroup2_mount, ctx, is_root, median, min_max, ops, read_trim,
    remove_cgroup, wait_for_go,
};
use governance_common::{Counter, EVENTS_RING_BYTES, Event};

/// Marks the report's lines, so that `cargo xtask bench events` can print it again at the end.
const REPORT_BEGIN: &str = "==> event throughput";

/// Targets from the issue.
const DRAIN_TARGET: f64 = 1e6;
const PIPELINE_TARGET: f64 = 200e3;

/// A ring-buffer record: the event and the ring's 8-byte header, rounded up to 8 bytes.
const RECORD_BYTES: usize = (std::mem::size_of::<Event>() + 8).div_ceil(8) * 8;
/// Events the ring holds.
const RING_EVENTS: usize = EVENTS_RING_BYTES as usize / RECORD_BYTES;

/// After a flood, counters must stay still this long before they are read (the daemon reports
/// kernel drops once a second, as a record of their own).
const SETTLE: Duration = Duration::from_millis(1300);

#[derive(Clone, Debug)]
enum Workload {
    /// Denied TCP connects to this address (cgroup/connect4).
    Connect(SocketAddr),
    /// Denied opens of this file (lsm/file_open).
    Open(PathBuf),
}

impl Workload {
    fn describe(&self) -> String {
        match self {
            Workload::Connect(a) => format!("denied TCP connects to {a} (cgroup/connect4)"),
            Workload::Open(p) => format!("denied opens of {} (lsm/file_open)", p.display()),
        }
    }

    fn rule(&self) -> String {
        match self {
            Workload::Connect(a) => format!(
                "network: {{ cidr: {}/32, ports: {}, protocol: tcp }}",
                a.ip(),
                a.port()
            ),
            Workload::Open(p) => format!("file: {{ path: {} }}", p.display()),
        }
    }

    fn args(&self) -> [String; 2] {
        match self {
            Workload::Connect(a) => ["connect".into(), a.to_string()],
            Workload::Open(p) => ["open".into(), p.display().to_string()],
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The worker: denied attempts as fast as it can, in its own process in the agent cgroup.

/// `--worker connect ADDR|open PATH COUNT MS`: after the start line on stdin, make attempts
/// until COUNT were made (0: no limit) or MS milliseconds passed (0: no limit). Prints
/// "<attempts> <denied> <nanoseconds>".
fn worker(args: &[String]) -> Res<()> {
    let [kind, target, count, ms] = args else {
        return Err("usage: --worker connect ADDR|open PATH COUNT MS".into());
    };
    let count: u64 = ctx(count.parse(), "COUNT")?;
    let ms: u64 = ctx(ms.parse(), "MS")?;
    let limit = (ms > 0).then(|| Duration::from_millis(ms));
    let mut attempt: Box<dyn FnMut() -> bool> = match kind.as_str() {
        "connect" => {
            let addr: SocketAddr = ctx(target.parse(), "ADDR")?;
            let SocketAddr::V4(v4) = addr else {
                return Err("connect: an IPv4 address".into());
            };
            // One socket for every attempt: a connect the program refuses leaves it unconnected,
            // so the loop costs a connect(2) per decision and not a socket(2) and close(2) too.
            // SAFETY: plain socket(2).
            let fd =
                unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
            if fd < 0 {
                return Err(format!("socket: {}", std::io::Error::last_os_error()));
            }
            let sa = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: v4.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(v4.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            Box::new(move || {
                // SAFETY: a valid socket and sockaddr_in of the right length.
                let r = unsafe {
                    libc::connect(
                        fd,
                        (&raw const sa).cast(),
                        std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
                    )
                };
                r < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
            })
        }
        "open" => {
            let path = PathBuf::from(target);
            let path = governance_bench::cstring(&path)?;
            Box::new(move || {
                // SAFETY: a NUL-terminated path; the fd is closed if the open succeeds.
                let fd = unsafe { libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
                if fd >= 0 {
                    unsafe { libc::close(fd) };
                    return false;
                }
                std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
            })
        }
        other => return Err(format!("unknown worker kind {other}")),
    };
    wait_for_go()?;
    let start = Instant::now();
    let (mut n, mut denied) = (0u64, 0u64);
    loop {
        if attempt() {
            denied += 1;
        }
        n += 1;
        if count > 0 && n >= count {
            break;
        }
        if let Some(d) = limit
            && n % 64 == 0
            && start.elapsed() >= d
        {
            break;
        }
    }
    println!("{n} {denied} {}", start.elapsed().as_nanos());
    Ok(())
}

struct Flood {
    attempts: u64,
    denied: u64,
    /// The longest worker's time.
    elapsed: Duration,
}

/// Start `n` workers, place them in `cgroup`, start them together; wait for them all.
fn flood(env: &Env, n: usize, count: u64, ms: u64, started: &mut Option<Instant>) -> Res<Flood> {
    let mut workers = Vec::new();
    for _ in 0..n {
        let w = Worker::spawn(
            Command::new(&env.self_exe)
                .arg("--worker")
                .args(env.workload.args())
                .arg(count.to_string())
                .arg(ms.to_string()),
        )?;
        w.place(&env.cgroup)?;
        workers.push(w);
    }
    *started = Some(Instant::now());
    for w in &mut workers {
        w.go()?;
    }
    let mut f = Flood {
        attempts: 0,
        denied: 0,
        elapsed: Duration::ZERO,
    };
    for w in workers {
        let out = w.finish()?;
        let v: Vec<u64> = out
            .split_whitespace()
            .map(|w| w.parse().unwrap_or(0))
            .collect();
        let [a, d, ns] = v[..] else {
            return Err(format!("unexpected worker output {out:?}"));
        };
        f.attempts += a;
        f.denied += d;
        f.elapsed = f.elapsed.max(Duration::from_nanos(ns));
    }
    if f.denied != f.attempts {
        return Err(format!(
            "{} of {} attempts were not denied: the policy does not hold the flood",
            f.attempts - f.denied,
            f.attempts
        ));
    }
    Ok(f)
}

// ---------------------------------------------------------------------------------------------
// The environment: files, cgroup, pins; removed on drop.

struct Env {
    governance: PathBuf,
    self_exe: PathBuf,
    tmp: PathBuf,
    policy_dir: PathBuf,
    cgroup_root: PathBuf,
    cgroup_rel: String,
    cgroup: PathBuf,
    workload: Workload,
    /// Pins of the in-process drain measurement.
    drain_pins: PathBuf,
    /// Pins of the daemon.
    daemon_pins: PathBuf,
}

impl Drop for Env {
    fn drop(&mut self) {
        let _ = kernel::unload(&self.drain_pins);
        let _ = kernel::unload(&self.daemon_pins);
        remove_cgroup(&self.cgroup);
        let _ = std::fs::remove_dir_all(&self.tmp);
    }
}

impl Env {
    fn new(opts: &Opts) -> Res<Env> {
        let pid = std::process::id();
        // On disk (not tmpfs) where there is one, so that the audit log's fsyncs are real.
        let tmp = std::env::temp_dir().join(format!("governance-bench-events-{pid}"));
        let cgroup_root = cgroup2_mount()?;
        let cgroup_rel = format!("governance-bench-events-{pid}");
        let mut env = Env {
            governance: opts.governance.clone(),
            self_exe: ctx(std::env::current_exe(), "finding this executable")?,
            policy_dir: tmp.join("policy"),
            tmp,
            cgroup: cgroup_root.join(&cgroup_rel),
            cgroup_root,
            cgroup_rel,
            workload: Workload::Connect(SocketAddr::from(([127, 0, 0, 1], 0))),
            drain_pins: PathBuf::from(format!("/sys/fs/bpf/governance-bench-events-{pid}-drain")),
            daemon_pins: PathBuf::from(format!("/sys/fs/bpf/governance-bench-events-{pid}")),
        };
        ctx(
            std::fs::create_dir_all(&env.policy_dir),
            format_args!("creating {}", env.policy_dir.display()),
        )?;
        ctx(
            std::fs::create_dir(&env.cgroup),
            format_args!("creating the cgroup {}", env.cgroup.display()),
        )?;
        let lsm = opts.workload == "auto" && env.file_hook_attaches()?;
        env.workload = match (opts.workload.as_str(), lsm) {
            ("open", _) | ("auto", true) => {
                let file = env.tmp.join("flood-target.txt");
                ctx(
                    std::fs::write(&file, "every open of this file is denied\n"),
                    format_args!("writing {}", file.display()),
                )?;
                Workload::Open(file)
            }
            _ => {
                // A loopback port with no listener (the connects never get that far anyway).
                let port = {
                    let l = ctx(TcpListener::bind("127.0.0.1:0"), "binding a loopback port")?;
                    ctx(l.local_addr(), "local address")?.port()
                };
                Workload::Connect(SocketAddr::from(([127, 0, 0, 1], port)))
            }
        };
        let file = env.policy_dir.join("bench-events.yaml");
        ctx(
            std::fs::write(&file, env.policy_yaml()),
            format_args!("writing {}", file.display()),
        )?;
        Ok(env)
    }

    /// Does the file_open LSM program attach here? (`bpf` in the LSM list is not enough: some
    /// hosts refuse LSM programs all the same.)
    fn file_hook_attaches(&self) -> Res<bool> {
        // (No dot in the name: bpffs refuses those.)
        let pins = PathBuf::from(format!("{}-probe", self.drain_pins.display()));
        let e = ctx(
            Enforcer::start(&pins, &self.cgroup_root, false),
            "loading the eBPF programs",
        );
        let attached = match &e {
            Ok(e) => match e.hooks.iter().find(|(p, _)| p.name == "file_open") {
                Some((_, HookState::Attached)) => true,
                Some((_, state)) => {
                    eprintln!("bench: file_open: {state}");
                    false
                }
                None => false,
            },
            Err(err) => {
                eprintln!("bench: probing the LSM hooks: {err}");
                false
            }
        };
        drop(e);
        ctx(kernel::unload(&pins), "removing the probe's pins")?;
        Ok(attached)
    }

    fn policy_yaml(&self) -> String {
        format!(
            "# Generated by governance-bench-events.\n\
             name: bench-events\n\
             description: Event pipeline benchmark; every attempt of the flood is denied.\n\
             agents:\n  cgroup: {}\n\
             rules:\n  - {{ id: flood, {}, verdict: block, reason: benchmark flood }}\n",
            self.cgroup_rel,
            self.workload.rule()
        )
    }
}

// ---------------------------------------------------------------------------------------------
// 1. Ring-buffer drain, in process.

struct DrainRound {
    decoded: bool,
    /// Events drained (what the ring held).
    events: u64,
    elapsed: Duration,
    dropped: u64,
    decisions: u64,
}

impl DrainRound {
    fn rate(&self) -> f64 {
        self.events as f64 / self.elapsed.as_secs_f64()
    }
}

struct DrainResult {
    rounds: Vec<DrainRound>,
    fill: u64,
}

fn drain_bench(env: &Env, rounds: usize) -> Res<DrainResult> {
    let set = ctx(
        policy::parse(&[("bench-events.yaml".into(), env.policy_yaml())]),
        "the benchmark policy",
    )?;
    let found = ctx(
        agents::discover(&env.cgroup_root, &set, false, None),
        "finding the agent cgroup",
    )?;
    let mut enforcer = ctx(
        Enforcer::start(&env.drain_pins, &env.cgroup_root, true),
        "loading the eBPF programs",
    )?;
    let hook = match env.workload {
        Workload::Connect(_) => "connect4",
        Workload::Open(_) => "file_open",
    };
    if !enforcer
        .hooks
        .iter()
        .any(|(p, h)| p.name == hook && matches!(h, HookState::Attached))
    {
        return Err(format!("the {hook} program is not attached on this kernel"));
    }
    let protect = kernel::Protect {
        cgroup_root: env.cgroup_root.clone(),
        no_write: vec![env.drain_pins.clone(), env.policy_dir.clone()],
        no_access: vec![],
    };
    let compiled = kernel::compile(&set, &found, 1, &protect);
    if !compiled.errors.is_empty() {
        return Err(format!("compiling the policy: {:?}", compiled.errors));
    }
    ctx(enforcer.install(&compiled), "installing the policy")?;
    let names = governance::daemon::generation::names(&set, &found);
    let clock = Clock::now();
    let mut ring = ctx(enforcer.take_events(), "taking the event ring")?;
    let counters = |e: &Enforcer| -> Res<(u64, u64)> {
        Ok((
            ctx(e.counter(Counter::Decisions), "reading the counters")?,
            ctx(e.counter(Counter::EventsDropped), "reading the counters")?,
        ))
    };
    // Twice what the ring holds: it fills, and the rest is dropped and counted.
    let fill = 2 * RING_EVENTS as u64;
    let mut out = Vec::new();
    // Round 0 warms up (the ring's pages are touched for the first time) and is not counted.
    for round in 0..=2 * rounds {
        let decoded = round % 2 == 0;
        let (d0, x0) = counters(&enforcer)?;
        flood(env, 1, fill, 0, &mut None)?;
        let (d1, x1) = counters(&enforcer)?;
        let start = Instant::now();
        let mut n = 0u64;
        if decoded {
            let mut batch: Vec<Record> = Vec::with_capacity(governance::pipeline::BATCH);
            let mut batches = Vec::new();
            while let Some(item) = ring.next() {
                if let Some(ev) = events::parse(&item) {
                    drop(item);
                    batch.push(Record::from_kernel(&ev, &names, &clock));
                    n += 1;
                    if batch.len() == governance::pipeline::BATCH {
                        batches.push(std::mem::replace(
                            &mut batch,
                            Vec::with_capacity(governance::pipeline::BATCH),
                        ));
                    }
                }
            }
            let elapsed = start.elapsed();
            black_box((&batch, &batches));
            drop((batch, batches));
            out.push((round, decoded, n, elapsed, x1 - x0, d1 - d0));
        } else {
            let mut acc = 0u64;
            while let Some(item) = ring.next() {
                if let Some(ev) = events::parse(&item) {
                    acc ^= ev.time_ns ^ u64::from(ev.tgid);
                    n += 1;
                }
            }
            let elapsed = start.elapsed();
            black_box(acc);
            out.push((round, decoded, n, elapsed, x1 - x0, d1 - d0));
        }
        let last = out.last().expect("pushed");
        eprintln!(
            "bench: drain round {round}/{}{} {}: {} events in {:.2} ms = {}/s; {} dropped, {} decisions",
            2 * rounds,
            if round == 0 { " (warm-up)" } else { "" },
            if decoded { "decoded" } else { "raw" },
            last.2,
            last.3.as_secs_f64() * 1e3,
            ops(last.2 as f64 / last.3.as_secs_f64()),
            last.4,
            last.5
        );
    }
    drop(ring);
    drop(enforcer);
    ctx(kernel::unload(&env.drain_pins), "removing the pins")?;
    Ok(DrainResult {
        rounds: out
            .into_iter()
            .filter(|r| r.0 > 0)
            .map(
                |(_, decoded, events, elapsed, dropped, decisions)| DrainRound {
                    decoded,
                    events,
                    elapsed,
                    dropped,
                    decisions,
                },
            )
            .collect(),
        fill,
    })
}

// ---------------------------------------------------------------------------------------------
// 2. The full pipeline: the daemon, a subscriber, producers.

/// `GET path` on the control socket (HTTP/1.0: the answer ends when the connection closes);
/// the body.
fn get(socket: &Path, path: &str) -> Res<String> {
    let mut s = ctx(
        UnixStream::connect(socket),
        "connecting to the control socket",
    )?;
    ctx(
        write!(s, "GET {path} HTTP/1.0\r\nHost: governance\r\n\r\n"),
        "sending a request",
    )?;
    let mut text = String::new();
    ctx(s.read_to_string(&mut text), "reading an answer")?;
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("GET {path}: no HTTP answer"))?;
    if !head.starts_with("HTTP/1.") || head.split_whitespace().nth(1) != Some("200") {
        return Err(format!(
            "GET {path}: {}",
            head.lines().next().unwrap_or_default()
        ));
    }
    Ok(body.to_owned())
}

/// What the daemon says about itself at one moment.
#[derive(Clone, Copy, Debug, Default)]
struct Snapshot {
    /// Kernel counters (`/v1/status`).
    decisions: u64,
    dropped: u64,
    backlog: u64,
    /// `/metrics`.
    published: u64,
    audited: u64,
    /// `governance_decisions_total`, summed: decision records through the pipeline.
    recorded: u64,
    sub_lost: u64,
}

fn snapshot(socket: &Path) -> Res<Snapshot> {
    let status: serde_json::Value = ctx(
        serde_json::from_str(&get(socket, "/v1/status")?),
        "the status JSON",
    )?;
    let k = |name: &str| status["kernel"][name].as_u64().unwrap_or(0);
    let mut s = Snapshot {
        decisions: k("decisions"),
        dropped: k("events_dropped"),
        backlog: status["pipeline_backlog"].as_u64().unwrap_or(0),
        ..Default::default()
    };
    for line in get(socket, "/metrics")?.lines() {
        if line.starts_with('#') {
            continue;
        }
        let Some((name, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(v) = value.parse::<f64>() else {
            continue;
        };
        let v = v as u64;
        let metric = name.split('{').next().unwrap_or(name);
        match metric {
            "governance_events_published_total" => s.published += v,
            "governance_audit_records_total" => s.audited += v,
            "governance_decisions_total" => s.recorded += v,
            "governance_subscriber_events_lost_total" => s.sub_lost += v,
            _ => {}
        }
    }
    Ok(s)
}

/// CPU time (user + system) of each thread of `pid`, summed by thread name.
fn thread_cpu(pid: u32) -> BTreeMap<String, Duration> {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let mut out = BTreeMap::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for t in tasks.flatten() {
        let Ok(stat) = std::fs::read_to_string(t.path().join("stat")) else {
            continue;
        };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let name = stat[open + 1..close].to_owned();
        // After the name: state is field 3, utime field 14, stime field 15.
        let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        let ticks = |i: usize| fields.get(i - 3).and_then(|f| f.parse::<u64>().ok());
        if let (Some(u), Some(s)) = (ticks(14), ticks(15)) {
            *out.entry(name).or_default() +=
                Duration::from_secs_f64((u + s) as f64 / hz.max(1) as f64);
        }
    }
    out
}

/// One live subscriber: the NDJSON stream of `/v1/events?follow=true`, read and counted.
struct Subscriber {
    stop: Arc<AtomicBool>,
    /// Records received (decisions and the daemon's own records; not loss notices).
    records: Arc<AtomicU64>,
    decisions: Arc<AtomicU64>,
    /// Loss notices received, and the losses they report.
    notices: Arc<AtomicU64>,
    notified_lost: Arc<AtomicU64>,
    /// When the last decision arrived, in ns after `base`.
    last_ns: Arc<AtomicU64>,
    base: Instant,
    thread: Option<JoinHandle<Res<()>>>,
}

impl Subscriber {
    fn start(socket: &Path) -> Res<Subscriber> {
        let mut s = ctx(
            UnixStream::connect(socket),
            "connecting to the control socket",
        )?;
        ctx(
            write!(
                s,
                "GET /v1/events?follow=true HTTP/1.0\r\nHost: governance\r\n\r\n"
            ),
            "subscribing",
        )?;
        // The head comes once the subscription is made.
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            if ctx(s.read(&mut byte), "reading the event stream's head")? == 0 {
                return Err("the event stream closed before its head".into());
            }
            head.push(byte[0]);
        }
        let head = String::from_utf8_lossy(&head);
        if head.split_whitespace().nth(1) != Some("200") {
            return Err(format!("GET /v1/events: {}", head.trim()));
        }
        if head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked")
        {
            return Err("the event stream is chunked; expected a plain HTTP/1.0 body".into());
        }
        ctx(
            s.set_read_timeout(Some(Duration::from_millis(100))),
            "setting a read timeout",
        )?;
        let sub = Subscriber {
            stop: Arc::default(),
            records: Arc::default(),
            decisions: Arc::default(),
            notices: Arc::default(),
            notified_lost: Arc::default(),
            last_ns: Arc::default(),
            base: Instant::now(),
            thread: None,
        };
        let (stop, records, decisions, notices, notified_lost, last_ns, base) = (
            sub.stop.clone(),
            sub.records.clone(),
            sub.decisions.clone(),
            sub.notices.clone(),
            sub.notified_lost.clone(),
            sub.last_ns.clone(),
            sub.base,
        );
        let thread = std::thread::Builder::new()
            .name("subscriber".into())
            .spawn(move || -> Res<()> {
                let mut buf = vec![0u8; 1 << 20];
                let mut carry: Vec<u8> = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let n = match s.read(&mut buf) {
                        Ok(0) => return Ok(()),
                        Ok(n) => n,
                        Err(e)
                            if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) =>
                        {
                            continue;
                        }
                        Err(e) => return Err(format!("reading the event stream: {e}")),
                    };
                    let now = base.elapsed().as_nanos() as u64;
                    carry.extend_from_slice(&buf[..n]);
                    let Some(end) = carry.iter().rposition(|&b| b == b'\n') else {
                        continue;
                    };
                    let (mut r, mut d) = (0u64, 0u64);
                    for line in carry[..end].split(|&b| b == b'\n') {
                        if contains(line, b"\"kind\":\"subscriber.lost\"") {
                            notices.fetch_add(1, Ordering::Relaxed);
                            let v: serde_json::Value =
                                serde_json::from_slice(line).unwrap_or_default();
                            notified_lost.fetch_add(
                                v["counts"]["lost"].as_u64().unwrap_or(0),
                                Ordering::Relaxed,
                            );
                            continue;
                        }
                        r += 1;
                        if contains(line, b"\"type\":\"decision\"") {
                            d += 1;
                        }
                    }
                    carry.drain(..=end);
                    records.fetch_add(r, Ordering::Relaxed);
                    if d > 0 {
                        decisions.fetch_add(d, Ordering::Relaxed);
                        last_ns.store(now, Ordering::Relaxed);
                    }
                }
                Ok(())
            })
            .map_err(|e| format!("starting the subscriber thread: {e}"))?;
        Ok(Subscriber {
            thread: Some(thread),
            ..sub
        })
    }

    fn counts(&self) -> (u64, u64, u64, u64) {
        (
            self.records.load(Ordering::Relaxed),
            self.decisions.load(Ordering::Relaxed),
            self.notices.load(Ordering::Relaxed),
            self.notified_lost.load(Ordering::Relaxed),
        )
    }

    /// When the last decision arrived.
    fn last(&self) -> Instant {
        self.base + Duration::from_nanos(self.last_ns.load(Ordering::Relaxed))
    }

    fn stop(mut self) -> Res<()> {
        self.stop.store(true, Ordering::Relaxed);
        match self.thread.take().map(JoinHandle::join) {
            Some(Ok(r)) => r,
            Some(Err(_)) => Err("the subscriber thread panicked".into()),
            None => Ok(()),
        }
    }
}

/// The type of the filesystem `path` is on (the longest mount point that holds it).
fn fs_type(path: &Path) -> String {
    let Ok(text) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return "?".into();
    };
    text.lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let mount_point = left.split_whitespace().nth(4)?;
            let fs = right.split_whitespace().next()?;
            path.starts_with(mount_point)
                .then(|| (mount_point.len(), fs.to_owned()))
        })
        .max()
        .map_or_else(|| "?".into(), |(_, fs)| fs)
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// Decision records in the audit files of `dir`.
fn audit_decisions(dir: &Path) -> Res<u64> {
    let mut n = 0;
    let entries = ctx(
        std::fs::read_dir(dir),
        format_args!("listing {}", dir.display()),
    )?;
    for e in entries.flatten() {
        if !e.file_name().to_string_lossy().ends_with(".jsonl") {
            continue;
        }
        let text = ctx(std::fs::read(e.path()), "reading the audit log")?;
        n += text
            .split(|&b| b == b'\n')
            .filter(|l| {
                // `{"seq":N,"prev":"..","hash":"..","record":{"id":..,"time":..,"node":..,"type":"decision"`
                l.get(..400)
                    .is_some_and(|head| contains(head, b"\"type\":\"decision\""))
            })
            .count() as u64;
    }
    Ok(n)
}

struct PipelineRun {
    producers: usize,
    flood: Flood,
    /// Kernel decisions during the run.
    decisions: u64,
    /// Dropped by the kernel (ring full).
    dropped: u64,
    /// Decision records through the pipeline (metrics) and in the audit files.
    recorded: u64,
    in_audit: u64,
    /// Records published (all types) since the subscription, and written to the audit log.
    published: u64,
    audited: u64,
    /// The subscriber: records and decisions received, losses (metrics, and as notified).
    sub_records: u64,
    sub_decisions: u64,
    sub_lost: u64,
    sub_notified: u64,
    /// From the start of the flood to the last decision the subscriber received.
    through: Duration,
    /// The most records queued in the pipeline (sampled during the flood).
    peak_backlog: u64,
    /// The daemon's CPU time per thread name.
    cpu: BTreeMap<String, Duration>,
    verify: Res<String>,
}

impl PipelineRun {
    fn offered(&self) -> f64 {
        self.decisions as f64 / self.flood.elapsed.as_secs_f64()
    }

    /// Decision records through the whole pipeline per second.
    fn rate(&self) -> f64 {
        if self.through.is_zero() {
            return 0.0;
        }
        self.recorded as f64 / self.through.as_secs_f64()
    }

    fn lost_share(&self) -> f64 {
        self.dropped as f64 / self.decisions.max(1) as f64
    }

    /// Every event recorded or counted as dropped, everywhere.
    fn accounted(&self) -> bool {
        self.decisions == self.recorded + self.dropped
            && self.in_audit == self.recorded
            && self.audited == self.published
            && self.sub_records + self.sub_lost == self.published
            && self.sub_notified <= self.sub_lost
    }

    fn cpu_total(&self) -> Duration {
        self.cpu.values().sum()
    }
}

fn pipeline_run(env: &Env, opts: &Opts, producers: usize, run: usize) -> Res<PipelineRun> {
    let state = env.tmp.join(format!("run-{run}"));
    ctx(
        std::fs::create_dir_all(&state),
        format_args!("creating {}", state.display()),
    )?;
    let socket = state.join(governance_bench::SOCKET);
    let audit = state.join(governance_bench::AUDIT);
    let mut daemon = Daemon::start_enforcing(
        &env.governance,
        &env.daemon_pins,
        &env.policy_dir,
        &state,
        opts.allow_degraded,
    )?;
    let result = measure_pipeline(env, opts, producers, &daemon, &socket, &audit);
    daemon.stop();
    let _ = std::fs::remove_dir_all(&state);
    result
}

fn measure_pipeline(
    env: &Env,
    opts: &Opts,
    producers: usize,
    daemon: &Daemon,
    socket: &Path,
    audit: &Path,
) -> Res<PipelineRun> {
    let sub = Subscriber::start(socket)?;
    // The subscription is live (its head came). The baseline must not split a record between
    // "published before" and "received after": one denial, then wait until the subscriber has
    // it and the pipeline is empty. The stream is in order, so whatever the daemon published
    // before the marker has reached the subscriber too.
    flood(env, 1, 1, 0, &mut None)?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while sub.counts().1 == 0 || snapshot(socket)?.backlog != 0 {
        if Instant::now() >= deadline {
            return Err(
                "the subscriber did not receive the marker denial within 30 s (or the pipeline \
                 did not drain)"
                    .into(),
            );
        }
        // Poll interval; the deadline above bounds the wait.
        std::thread::sleep(Duration::from_millis(5));
    }
    let before = snapshot(socket)?;
    let sub_before = sub.counts();
    let cpu_before = thread_cpu(daemon.pid());
    // How far behind the pipeline falls, sampled while the flood runs.
    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = {
        let (sampling, socket) = (sampling.clone(), socket.to_owned());
        std::thread::spawn(move || {
            let mut peak = 0;
            while sampling.load(Ordering::Relaxed) {
                if let Ok(s) = snapshot(&socket) {
                    peak = peak.max(s.backlog);
                }
                // Sampling period while the flood runs (stopped by `sampling`), not a wait.
                std::thread::sleep(Duration::from_millis(100));
            }
            peak
        })
    };
    let mut started = None;
    let flood = flood(env, producers, 0, opts.secs * 1000, &mut started);
    sampling.store(false, Ordering::Relaxed);
    let peak_backlog = sampler.join().unwrap_or(0);
    let flood = flood?;
    let started = started.expect("set by flood");
    // Settle: everything drained and delivered, and the counters still. Still for SETTLE, a
    // little over the daemon's 1 s tick that reports new kernel drops as a record: that tick
    // says nothing when there is nothing to report, so there is no record to wait for, but
    // this long without any counter moving means no report (and nothing else) is to come.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = (snapshot(socket)?, sub.counts());
    let mut still_since = Instant::now();
    loop {
        // Poll interval; the deadline above bounds the wait.
        std::thread::sleep(Duration::from_millis(100));
        let now = (snapshot(socket)?, sub.counts());
        let moved = now.1 != last.1
            || now.0.decisions != last.0.decisions
            || now.0.dropped != last.0.dropped
            || now.0.published != last.0.published
            || now.0.sub_lost != last.0.sub_lost
            || now.0.backlog != 0;
        if moved {
            still_since = Instant::now();
        }
        last = now;
        if !moved && still_since.elapsed() >= SETTLE {
            break;
        }
        if Instant::now() >= deadline {
            eprintln!("bench: the daemon's counters did not settle within 60 s");
            break;
        }
    }
    let (after, sub_after) = last;
    let cpu_after = thread_cpu(daemon.pid());
    let through = sub.last().saturating_duration_since(started);
    sub.stop()?;
    let cpu = cpu_after
        .iter()
        .map(|(k, v)| {
            (
                k.clone(),
                v.saturating_sub(cpu_before.get(k).copied().unwrap_or_default()),
            )
        })
        .filter(|(_, v)| !v.is_zero())
        .collect();
    // Less the decisions recorded before the baseline (the marker's): the log holds them too.
    let in_audit = audit_decisions(audit)?.saturating_sub(before.recorded);
    let verify = if opts.verify {
        let out = ctx(
            Command::new(&env.governance)
                .args(["audit", "verify"])
                .arg(audit)
                .output(),
            "running governance audit verify",
        )?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if out.status.success() {
            Ok(text.trim().to_owned())
        } else {
            Err(text.trim().to_owned())
        }
    } else {
        Ok("not run".into())
    };
    let d = |f: fn(&Snapshot) -> u64| f(&after) - f(&before);
    Ok(PipelineRun {
        producers,
        flood,
        decisions: d(|s| s.decisions),
        dropped: d(|s| s.dropped),
        recorded: d(|s| s.recorded),
        in_audit,
        published: d(|s| s.published),
        audited: d(|s| s.audited),
        sub_records: sub_after.0 - sub_before.0,
        sub_decisions: sub_after.1 - sub_before.1,
        sub_lost: d(|s| s.sub_lost),
        sub_notified: sub_after.3 - sub_before.3,
        through,
        peak_backlog,
        cpu,
        verify,
    })
}

// ---------------------------------------------------------------------------------------------
// The benchmark and its report.

struct Opts {
    governance: PathBuf,
    rounds: usize,
    drain_rounds: usize,
    secs: u64,
    producers: Vec<usize>,
    workload: String,
    allow_degraded: bool,
    label: String,
    drain: bool,
    pipeline: bool,
    verify: bool,
}

const USAGE: &str = "usage: governance-bench-events [--governance PATH] [--rounds N] \
    [--drain-rounds N] [--secs S] [--producers 1,2,4] [--workload auto|connect|open] \
    [--allow-degraded] [--label TEXT] [--skip-drain] [--skip-pipeline] [--no-verify]";

fn parse_opts(args: &[String]) -> Res<Opts> {
    let mut o = Opts {
        governance: std::env::var_os("GOVERNANCE_BIN").map_or_else(PathBuf::new, PathBuf::from),
        rounds: 5,
        drain_rounds: 7,
        secs: 3,
        producers: vec![1, 2, 4],
        workload: "auto".into(),
        allow_degraded: false,
        label: String::new(),
        drain: true,
        pipeline: true,
        verify: true,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = |name: &str| it.next().cloned().ok_or(format!("{name} needs a value"));
        match a.as_str() {
            "--governance" => o.governance = value(a)?.into(),
            "--rounds" => o.rounds = ctx(value(a)?.parse(), "--rounds")?,
            "--drain-rounds" => o.drain_rounds = ctx(value(a)?.parse(), "--drain-rounds")?,
            "--secs" => o.secs = ctx(value(a)?.parse(), "--secs")?,
            "--producers" => {
                o.producers = value(a)?
                    .split(',')
                    .map(|p| ctx(p.trim().parse::<usize>(), "--producers"))
                    .collect::<Res<_>>()?
            }
            "--workload" => o.workload = value(a)?,
            "--label" => o.label = value(a)?,
            "--allow-degraded" => o.allow_degraded = true,
            "--skip-drain" => o.drain = false,
            "--skip-pipeline" => o.pipeline = false,
            "--no-verify" => o.verify = false,
            _ => return Err(format!("unknown argument {a}; {USAGE}")),
        }
    }
    if !["auto", "connect", "open"].contains(&o.workload.as_str()) {
        return Err(format!("--workload {}: auto, connect or open", o.workload));
    }
    if o.pipeline && o.governance.as_os_str().is_empty() {
        return Err("give the governance binary with --governance PATH or GOVERNANCE_BIN".into());
    }
    if o.rounds == 0 || o.drain_rounds == 0 || o.secs == 0 || o.producers.contains(&0) {
        return Err("--rounds, --drain-rounds, --secs and --producers must be positive".into());
    }
    Ok(o)
}

/// "1.23M/s [1.10M-1.31M]"
fn rate_cell(v: &[f64]) -> String {
    let (lo, hi) = min_max(v);
    format!("{}/s [{}-{}]", ops(median(v)), ops(lo), ops(hi))
}

fn verdict(met: bool) -> &'static str {
    if met { "PASS" } else { "MISS" }
}

fn bench(opts: Opts) -> Res<()> {
    if !is_root() {
        return Err("needs root: it loads eBPF programs and creates a cgroup".into());
    }
    let env = Env::new(&opts)?;
    eprintln!(
        "bench: agent cgroup {}, flood: {}",
        env.cgroup.display(),
        env.workload.describe()
    );
    let drain = if opts.drain {
        Some(drain_bench(&env, opts.drain_rounds)?)
    } else {
        None
    };
    let mut runs: Vec<PipelineRun> = Vec::new();
    if opts.pipeline {
        let mut n = 0;
        for round in 1..=opts.rounds {
            for &p in &opts.producers {
                n += 1;
                let r = pipeline_run(&env, &opts, p, n)?;
                eprintln!(
                    "bench: pipeline round {round}/{} producers={p}: offered {}/s, through {}/s; \
                     decisions {} = recorded {} + dropped {}; audit {}; subscriber {} ({} decisions) + lost {} of {} published{}",
                    opts.rounds,
                    ops(r.offered()),
                    ops(r.rate()),
                    r.decisions,
                    r.recorded,
                    r.dropped,
                    r.in_audit,
                    r.sub_records,
                    r.sub_decisions,
                    r.sub_lost,
                    r.published,
                    if r.accounted() {
                        ""
                    } else {
                        "  ACCOUNTING MISMATCH"
                    }
                );
                if let Err(e) = &r.verify {
                    eprintln!("bench: audit verify failed: {e}");
                }
                runs.push(r);
            }
        }
    }
    let report = report(&opts, &env, drain.as_ref(), &runs);
    governance_bench::print_report(REPORT_BEGIN, &opts.label, &report);
    Ok(())
}

fn report(
    opts: &Opts,
    env: &Env,
    drain: Option<&DrainResult>,
    runs: &[PipelineRun],
) -> Vec<String> {
    let mut r = Vec::new();
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    r.push(format!(
        "kernel {}, LSMs {}, {cpus} CPUs; flood: {}",
        read_trim("/proc/sys/kernel/osrelease"),
        read_trim("/sys/kernel/security/lsm"),
        env.workload.describe()
    ));
    if let Workload::Connect(_) = env.workload {
        r.push(
            "  (denied connects, not opens: this kernel refuses LSM programs, so there is no file_open hook)"
                .into(),
        );
    }
    if let Some(d) = drain {
        r.push(format!(
            "1. ring buffer -> userspace, in process: the flood ({} attempts) fills the {} MiB ring \
             ({RING_EVENTS} records of {RECORD_BYTES} bytes) with nobody draining; then it is drained completely",
            d.fill,
            EVENTS_RING_BYTES >> 20
        ));
        for (decoded, what) in [
            (false, "raw: RingBuf::next + events::parse"),
            (true, "decoded: + Record::from_kernel, batched"),
        ] {
            let rates: Vec<f64> = d
                .rounds
                .iter()
                .filter(|x| x.decoded == decoded)
                .map(DrainRound::rate)
                .collect();
            let target = if decoded {
                String::new()
            } else {
                format!(
                    "  target >= {}/s: {}",
                    ops(DRAIN_TARGET),
                    verdict(median(&rates) >= DRAIN_TARGET)
                )
            };
            r.push(format!(
                "   {what:<42} {:<30} ({} rounds){target}",
                rate_cell(&rates),
                rates.len()
            ));
        }
        let held: Vec<f64> = d.rounds.iter().map(|x| x.events as f64).collect();
        // Decisions: the flood's, and the few the worker's own start makes (socket creation
        // under BPF LSM).
        let ok = d
            .rounds
            .iter()
            .all(|x| x.events + x.dropped == x.decisions && x.decisions >= d.fill);
        r.push(format!(
            "   the ring held {}-{} events per fill; drained + dropped (EventsDropped) == decisions (>= attempts) in every round: {}",
            min_max(&held).0,
            min_max(&held).1,
            if ok { "yes" } else { "NO" }
        ));
    }
    if !runs.is_empty() {
        r.push(format!(
            "2. full pipeline: `governance run --quiet --no-proxy` (drained, enriched, audit log with fsync per batch in {} ({}), metrics) \
             and one live subscriber (NDJSON from /v1/events?follow=true); producers flood for {} s each; {} rounds",
            env.tmp.parent().unwrap_or(Path::new("/")).display(),
            fs_type(&env.tmp),
            opts.secs,
            opts.rounds
        ));
        r.push(format!(
            "   {:<4} {:<24} {:<24} {:<13} {:<20} {:<12} {:<9} {}",
            "prod",
            "offered (decisions/s)",
            "through the pipeline",
            "peak backlog",
            "kernel drops",
            "sub lost",
            "daemon CPU",
            "accounted"
        ));
        for &p in &opts.producers {
            let of: Vec<&PipelineRun> = runs.iter().filter(|x| x.producers == p).collect();
            if of.is_empty() {
                continue;
            }
            let offered: Vec<f64> = of.iter().map(|x| x.offered()).collect();
            let through: Vec<f64> = of.iter().map(|x| x.rate()).collect();
            let drops: Vec<f64> = of.iter().map(|x| x.lost_share() * 100.0).collect();
            let lost: Vec<f64> = of.iter().map(|x| x.sub_lost as f64).collect();
            let cpu: Vec<f64> = of
                .iter()
                .map(|x| x.cpu_total().as_secs_f64() / x.through.as_secs_f64() * 100.0)
                .collect();
            let (dlo, dhi) = min_max(&drops);
            let (llo, lhi) = min_max(&lost);
            let backlog: Vec<f64> = of.iter().map(|x| x.peak_backlog as f64).collect();
            r.push(format!(
                "   {p:<4} {:<24} {:<24} {:<13} {:<20} {:<12} {:<9} {}/{}",
                rate_cell(&offered),
                rate_cell(&through),
                ops(median(&backlog)),
                format!("{:.1}% [{dlo:.1}-{dhi:.1}%]", median(&drops)),
                format!("{:.0} [{llo:.0}-{lhi:.0}]", median(&lost)),
                format!("{:.0}%", median(&cpu)),
                of.iter().filter(|x| x.accounted()).count(),
                of.len()
            ));
        }
        r.push(
            "   offered: kernel decisions / flood time; through: decision records written to the audit log and \
             received by the subscriber / time from the flood's start to the subscriber's last one"
                .into(),
        );
        r.push(format!(
            "   peak backlog: records queued in the pipeline (sampled every 100 ms); past {} the drainer pauses, the ring fills and the kernel drops",
            ops(governance::pipeline::MAX_BACKLOG as f64)
        ));
        r.push(
            "   accounted: decisions == recorded + kernel drops, audit lines == recorded, subscriber received + lost == published"
                .into(),
        );
        // Where the daemon's time goes, per event.
        r.push("   daemon CPU per recorded event, by thread (median over the runs):".into());
        for &p in &opts.producers {
            let of: Vec<&PipelineRun> = runs.iter().filter(|x| x.producers == p).collect();
            let mut names: Vec<String> = of.iter().flat_map(|x| x.cpu.keys().cloned()).collect();
            names.sort();
            names.dedup();
            let per_event =
                |x: &PipelineRun, d: Duration| d.as_secs_f64() * 1e9 / x.recorded.max(1) as f64;
            let cells: Vec<String> = names
                .iter()
                .filter_map(|n| {
                    let v: Vec<f64> = of
                        .iter()
                        .map(|x| per_event(x, x.cpu.get(n).copied().unwrap_or_default()))
                        .collect();
                    // The main thread and others that only wait.
                    (median(&v) >= 10.0).then(|| format!("{n} {:.0} ns", median(&v)))
                })
                .collect();
            let total: Vec<f64> = of.iter().map(|x| per_event(x, x.cpu_total())).collect();
            r.push(format!(
                "     {p} producer(s): {}; all threads {:.0} ns",
                cells.join(", "),
                median(&total)
            ));
        }
        let verified = runs
            .iter()
            .filter(|x| matches!(&x.verify, Ok(t) if t != "not run"))
            .count();
        let failed: Vec<&String> = runs
            .iter()
            .filter_map(|x| x.verify.as_ref().err())
            .collect();
        if opts.verify {
            r.push(format!(
                "   `governance audit verify` on every run's log: {verified} OK, {} failed{}",
                failed.len(),
                failed
                    .first()
                    .map(|e| format!(" (first: {e})"))
                    .unwrap_or_default()
            ));
        }
        // What the daemon could sustain with both cores to itself (the producers' CPU
        // elsewhere): bounded by its total CPU per event over two cores, and by its busiest
        // thread on one.
        let capacity: Vec<f64> = runs
            .iter()
            .map(|x| {
                let total = x.cpu_total().as_secs_f64() / x.recorded.max(1) as f64;
                let busiest = x
                    .cpu
                    .values()
                    .max()
                    .copied()
                    .unwrap_or_default()
                    .as_secs_f64()
                    / x.recorded.max(1) as f64;
                (2.0 / total).min(1.0 / busiest)
            })
            .collect();
        r.push(format!(
            "   the daemon alone on 2 cores (from its CPU per event: 2 cores / all threads, capped by its busiest thread on one): {}",
            rate_cell(&capacity)
        ));
        // Targets.
        let one: Vec<&PipelineRun> = runs.iter().filter(|x| x.producers == 1).collect();
        if !one.is_empty() {
            let through: Vec<f64> = one.iter().map(|x| x.rate()).collect();
            let zero_loss = one.iter().all(|x| x.dropped == 0 && x.sub_lost == 0);
            // Keeping up: recorded as fast as decided (the backlog absorbs a burst; a pipeline
            // that does not keep up loses once it is full).
            let kept_up = one
                .iter()
                .filter(|x| x.rate() >= 0.95 * x.offered())
                .count();
            r.push(format!(
                "   1 producer (sharing the 2 cores with the daemon): zero loss in {}/{} runs, keeping up (through >= 95% of offered) in {kept_up}/{}; through {}  target >= {}/s: {}",
                one.iter()
                    .filter(|x| x.dropped == 0 && x.sub_lost == 0)
                    .count(),
                one.len(),
                one.len(),
                rate_cell(&through),
                ops(PIPELINE_TARGET),
                verdict(median(&through) >= PIPELINE_TARGET && zero_loss)
            ));
        }
        let best = opts
            .producers
            .iter()
            .map(|&p| {
                let v: Vec<f64> = runs
                    .iter()
                    .filter(|x| x.producers == p)
                    .map(|x| x.rate())
                    .collect();
                (p, median(&v))
            })
            .max_by(|a, b| a.1.total_cmp(&b.1));
        if let Some((p, rate)) = best {
            r.push(format!(
                "   most through the pipeline: {}/s (median, {p} producers)",
                ops(rate)
            ));
        }
        let all = runs.iter().filter(|x| x.accounted()).count();
        r.push(format!(
            "   every lost event counted: {all}/{} runs {}",
            runs.len(),
            if all == runs.len() { "PASS" } else { "MISS" }
        ));
    }
    r
}

fn main() {
    governance_bench::run_main("governance-bench-events", worker, |args| {
        parse_opts(args).and_then(bench)
    });
}
