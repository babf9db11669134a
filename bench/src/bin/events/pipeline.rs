//! 2. The full pipeline: the daemon, a subscriber, producers.

use super::*;

// ---------------------------------------------------------------------------------------------
// 2. The full pipeline: the daemon, a subscriber, producers.

/// `GET path` on the control socket (HTTP/1.0: the answer ends when the connection closes);
/// the body.
pub(super) fn get(socket: &Path, path: &str) -> Res<String> {
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
pub(super) struct Snapshot {
    /// Kernel counters (`/v1/status`).
    pub(super) decisions: u64,
    pub(super) dropped: u64,
    pub(super) backlog: u64,
    /// `/metrics`.
    pub(super) published: u64,
    pub(super) audited: u64,
    /// `governance_decisions_total`, summed: decision records through the pipeline.
    pub(super) recorded: u64,
    pub(super) sub_lost: u64,
}

pub(super) fn snapshot(socket: &Path) -> Res<Snapshot> {
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
pub(super) fn thread_cpu(pid: u32) -> BTreeMap<String, Duration> {
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
pub(super) struct Subscriber {
    pub(super) stop: Arc<AtomicBool>,
    /// Records received (decisions and the daemon's own records; not loss notices).
    pub(super) records: Arc<AtomicU64>,
    pub(super) decisions: Arc<AtomicU64>,
    /// Loss notices received, and the losses they report.
    pub(super) notices: Arc<AtomicU64>,
    pub(super) notified_lost: Arc<AtomicU64>,
    /// When the last decision arrived, in ns after `base`.
    pub(super) last_ns: Arc<AtomicU64>,
    pub(super) base: Instant,
    pub(super) thread: Option<JoinHandle<Res<()>>>,
}

impl Subscriber {
    pub(super) fn start(socket: &Path) -> Res<Subscriber> {
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

    pub(super) fn counts(&self) -> (u64, u64, u64, u64) {
        (
            self.records.load(Ordering::Relaxed),
            self.decisions.load(Ordering::Relaxed),
            self.notices.load(Ordering::Relaxed),
            self.notified_lost.load(Ordering::Relaxed),
        )
    }

    /// When the last decision arrived.
    pub(super) fn last(&self) -> Instant {
        self.base + Duration::from_nanos(self.last_ns.load(Ordering::Relaxed))
    }

    pub(super) fn stop(mut self) -> Res<()> {
        self.stop.store(true, Ordering::Relaxed);
        match self.thread.take().map(JoinHandle::join) {
            Some(Ok(r)) => r,
            Some(Err(_)) => Err("the subscriber thread panicked".into()),
            None => Ok(()),
        }
    }
}

/// The type of the filesystem `path` is on (the longest mount point that holds it).
pub(super) fn fs_type(path: &Path) -> String {
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

pub(super) fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// Decision records in the audit files of `dir`.
pub(super) fn audit_decisions(dir: &Path) -> Res<u64> {
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

pub(super) struct PipelineRun {
    pub(super) producers: usize,
    pub(super) flood: Flood,
    /// Kernel decisions during the run.
    pub(super) decisions: u64,
    /// Dropped by the kernel (ring full).
    pub(super) dropped: u64,
    /// Decision records through the pipeline (metrics) and in the audit files.
    pub(super) recorded: u64,
    pub(super) in_audit: u64,
    /// Records published (all types) since the subscription, and written to the audit log.
    pub(super) published: u64,
    pub(super) audited: u64,
    /// The subscriber: records and decisions received, losses (metrics, and as notified).
    pub(super) sub_records: u64,
    pub(super) sub_decisions: u64,
    pub(super) sub_lost: u64,
    pub(super) sub_notified: u64,
    /// From the start of the flood to the last decision the subscriber received.
    pub(super) through: Duration,
    /// The most records queued in the pipeline (sampled during the flood).
    pub(super) peak_backlog: u64,
    /// The daemon's CPU time per thread name.
    pub(super) cpu: BTreeMap<String, Duration>,
    pub(super) verify: Res<String>,
}

impl PipelineRun {
    pub(super) fn offered(&self) -> f64 {
        self.decisions as f64 / self.flood.elapsed.as_secs_f64()
    }

    /// The daemon's CPU (all threads) per recorded event, in ns.
    pub(super) fn daemon_ns(&self) -> f64 {
        self.cpu_total().as_secs_f64() * 1e9 / self.recorded.max(1) as f64
    }

    /// The producers' CPU per decision, in ns.
    pub(super) fn producer_ns(&self) -> f64 {
        self.flood.cpu.as_secs_f64() * 1e9 / self.flood.attempts.max(1) as f64
    }

    /// Decision records through the whole pipeline per second.
    pub(super) fn rate(&self) -> f64 {
        if self.through.is_zero() {
            return 0.0;
        }
        self.recorded as f64 / self.through.as_secs_f64()
    }

    pub(super) fn lost_share(&self) -> f64 {
        self.dropped as f64 / self.decisions.max(1) as f64
    }

    /// Every event recorded or counted as dropped, everywhere.
    pub(super) fn accounted(&self) -> bool {
        self.decisions == self.recorded + self.dropped
            && self.in_audit == self.recorded
            && self.audited == self.published
            && self.sub_records + self.sub_lost == self.published
            && self.sub_notified <= self.sub_lost
    }

    pub(super) fn cpu_total(&self) -> Duration {
        self.cpu.values().sum()
    }
}

pub(super) fn pipeline_run(
    env: &Env,
    opts: &Opts,
    producers: usize,
    run: usize,
) -> Res<PipelineRun> {
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

pub(super) fn measure_pipeline(
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
