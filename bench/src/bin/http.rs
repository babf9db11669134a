//! `cargo xtask bench http`: what the HTTP policy proxy adds to a request, on loopback.
//!
//! Three ways to the same minimal upstream (a hyper server answering a small 200), side by
//! side in one run:
//!
//! - **A** direct to the upstream;
//! - **B** through the proxy, an allow decision among 1,000 HTTP rules (999 on other hosts
//!   and paths, one allowing this request): no body is buffered;
//! - **A'** the same POST as C, direct to the upstream (C's baseline);
//! - **C** through the proxy, a JSON-body condition rule (a POST with a small JSON body, which
//!   the proxy buffers and parses).
//!
//! Latency: open loop at a fixed rate over a persistent keep-alive connection, measured from
//! each request's *scheduled* send time (coordinated-omission aware: a slow answer delays
//! the next send, and that delay is counted), into an HdrHistogram. Phases run interleaved
//! (A B A' C A B A' C ...), and the report gives medians across rounds of p50/p99 and of the
//! added latency (B − A, C − A').
//!
//! Throughput: closed loop, several connections, as many requests as they can, for the
//! upstream alone and through the proxy. The proxy and the upstream share core 1 (the load
//! generator has core 0), so the proxy's own capacity per core is derived from the two:
//! `1 / (1/proxied − 1/direct)`.
//!
//! The binary plays both parts: without arguments it is the load generator and starts itself
//! with `serve` as the proxy + upstream process.

use clap::Parser;
use governance_bench::median;
use std::{
    collections::HashMap,
    io::{BufRead, BufReader, Read, Write},
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream},
    process::{Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use arc_swap::ArcSwap;
use governance::{
    approvals::{Approvals, Limits},
    engine::{AgentRef, Engine},
    events::AgentInfo,
    policy,
    proxy::{Client, HostCheck, Identify, Proxy, ProxyConfig},
};
use hdrhistogram::Histogram;

const RULES: usize = 1000;
const RATE: u64 = 2000;
const PHASE: Duration = Duration::from_secs(10);
const ROUNDS: usize = 4;
const SAT_CONNS: usize = 16;
const SAT_TIME: Duration = Duration::from_secs(5);

/// What the HTTP policy proxy adds to a request, on loopback: the latency (open loop at a fixed
/// rate, coordinated-omission aware; p50 and p99) and the throughput (closed loop, several
/// connections) of requests direct to a minimal upstream and through the proxy (an allow
/// decision among 1,000 rules; a JSON-body condition), side by side in one run. Run by `cargo
/// xtask bench http`.
#[derive(Parser)]
#[command(name = "governance-bench-http")]
struct Opts {}

fn main() {
    // `serve` (the proxy + upstream process that the load generator starts) is not an option.
    let result = if std::env::args().nth(1).as_deref() == Some("serve") {
        serve()
    } else {
        Opts::parse();
        generate()
    };
    if let Err(e) = result {
        eprintln!("governance-bench-http: {e}");
        std::process::exit(1);
    }
}

fn pin(core: usize) -> Result<(), String> {
    let mut set = nix::sched::CpuSet::new();
    set.set(core).map_err(|e| format!("cpu set: {e}"))?;
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set)
        .map_err(|e| format!("pinning to core {core}: {e}"))
}

// ---------------------------------------------------------------- the proxy + upstream side

/// Every connection is the bench agent, transparently redirected to the upstream.
struct Everyone(SocketAddr);

impl Identify for Everyone {
    fn identify(&self, _peer: SocketAddr, _local: SocketAddr, _netns: u64) -> Option<Client> {
        Some(Client {
            agent: AgentRef {
                name: "bench".into(),
                cgroup: "bench".into(),
                label: Some("bench".into()),
                pod: None,
            },
            info: AgentInfo {
                name: "bench".into(),
                ..Default::default()
            }
            .into(),
            cgroup_id: 1,
            process: None,
            original_dst: Some(self.0),
        })
    }
}

fn policy_yaml() -> String {
    let mut yaml =
        String::from("name: bench\nagents: { label: bench }\ndefaults: { http: block }\nrules:\n");
    for i in 0..RULES - 2 {
        yaml.push_str(&format!(
            "  - {{ id: r{i}, http: {{ host: svc{i}.example, method: POST, path: /v1/items/{i}, body: ['$.amount > {i}'] }}, verdict: block, reason: r }}\n"
        ));
    }
    yaml.push_str("  - { id: target, http: { host: svc-target.example, method: GET, path: /v1/items }, verdict: allow, reason: reads are fine }\n");
    yaml.push_str("  - { id: body, http: { host: svc-body.example, method: POST, path: /v1/orders, body: ['$.amount < 100'] }, verdict: allow, reason: small orders }\n");
    yaml
}

fn serve() -> Result<(), String> {
    pin(1)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(async {
        let up = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| e.to_string())?;
        let up_addr = up.local_addr().map_err(|e| e.to_string())?;
        tokio::spawn(upstream(up));

        let set =
            policy::parse(&[("bench.yaml".into(), policy_yaml())]).map_err(|e| e.to_string())?;
        assert_eq!(set.rule_count(), RULES);
        let engine = Arc::new(ArcSwap::from_pointee(Engine::new(set, 1)));
        let sink: governance::events::Sink = Arc::new(|r| {
            std::hint::black_box(r);
        });
        let approvals = Approvals::new(Limits::default(), sink.clone(), Arc::new(|_, _| Ok(())));
        let local = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let cfg = ProxyConfig {
            listen: vec![],
            host_check: HostCheck::Resolve,
            host_addresses: HashMap::from([
                ("svc-target.example".to_owned(), vec![local]),
                ("svc-body.example".to_owned(), vec![local]),
            ]),
            ..ProxyConfig::default()
        };
        let proxy = Proxy::new(cfg, engine, Arc::new(Everyone(up_addr)), approvals, sink);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| e.to_string())?;
        let proxy_addr = listener.local_addr().map_err(|e| e.to_string())?;
        println!("upstream={up_addr} proxy={proxy_addr}");
        let _ = std::io::stdout().flush();
        // Runs until the generator kills this process (or closes stdin).
        tokio::select! {
            r = proxy.serve(listener) => r.map_err(|e| e.to_string()),
            () = stdin_closed() => Ok(()),
        }
    })
}

async fn stdin_closed() {
    let _ = tokio::task::spawn_blocking(|| {
        let mut buf = [0u8; 1];
        let _ = std::io::stdin().read(&mut buf);
    })
    .await;
}

async fn upstream(listener: tokio::net::TcpListener) {
    use http_body_util::Full;
    use hyper::{Response, body::Bytes, service::service_fn};
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            return;
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let svc = service_fn(|_req| async {
                Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from_static(
                    b"{\"ok\":true}",
                ))))
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                .await;
        });
    }
}

// ----------------------------------------------------------------------- the load generator

#[derive(Clone, Copy, Debug)]
enum Scenario {
    /// The GET of B, straight to the upstream.
    Direct,
    Allow,
    /// The POST of C, straight to the upstream.
    DirectPost,
    Body,
}

impl Scenario {
    const ALL: [Scenario; 4] = [
        Scenario::Direct,
        Scenario::Allow,
        Scenario::DirectPost,
        Scenario::Body,
    ];

    fn name(self) -> &'static str {
        match self {
            Scenario::Direct => "A direct GET",
            Scenario::Allow => "B proxy, allow among 1,000 rules",
            Scenario::DirectPost => "A' direct POST with a JSON body",
            Scenario::Body => "C proxy, JSON-body rule",
        }
    }

    /// The direct request B or C is compared with.
    fn baseline(self) -> usize {
        match self {
            Scenario::Direct | Scenario::Allow => 0,
            Scenario::DirectPost | Scenario::Body => 2,
        }
    }

    /// The request, its Host naming the upstream's `port`: the proxy refuses a Host whose port
    /// is not the one the connection goes to (`builtin:host-check`).
    fn request(self, port: u16) -> Vec<u8> {
        match self {
            Scenario::Direct | Scenario::Allow => {
                format!("GET /v1/items HTTP/1.1\r\nHost: svc-target.example:{port}\r\n\r\n")
                    .into_bytes()
            }
            Scenario::DirectPost | Scenario::Body => {
                let body = br#"{"amount": 42, "sku": "A-1", "note": "bench"}"#;
                let mut r = format!(
                    "POST /v1/orders HTTP/1.1\r\nHost: svc-body.example:{port}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                    body.len()
                )
                .into_bytes();
                r.extend_from_slice(body);
                r
            }
        }
    }
}

/// A minimal HTTP/1.1 client on a blocking keep-alive connection: cheap enough that the
/// generator is not what is measured.
struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    fn open(addr: SocketAddr) -> Result<Self, String> {
        let stream = TcpStream::connect(addr).map_err(|e| format!("connect {addr}: {e}"))?;
        stream.set_nodelay(true).map_err(|e| e.to_string())?;
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .map_err(|e| e.to_string())?;
        Ok(Self {
            stream,
            buf: Vec::with_capacity(4096),
        })
    }

    /// Send one request and read its whole response; Err unless 200.
    fn roundtrip(&mut self, req: &[u8]) -> Result<(), String> {
        self.stream.write_all(req).map_err(|e| e.to_string())?;
        self.buf.clear();
        let mut chunk = [0u8; 4096];
        loop {
            let n = self.stream.read(&mut chunk).map_err(|e| e.to_string())?;
            if n == 0 {
                return Err("connection closed".into());
            }
            self.buf.extend_from_slice(&chunk[..n]);
            let Some(end) = find(&self.buf, b"\r\n\r\n") else {
                continue;
            };
            let head = std::str::from_utf8(&self.buf[..end]).map_err(|e| e.to_string())?;
            if !head.starts_with("HTTP/1.1 200") {
                return Err(format!("unexpected response: {head}"));
            }
            let len = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse::<usize>().ok())?
                })
                .ok_or("no content-length")?;
            if self.buf.len() >= end + 4 + len {
                return Ok(());
            }
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Spin until `t`: the generator has core 0 to itself, and OS sleeps wake too late for µs
/// measurements (lateness would count as latency).
fn wait_until(t: Instant) {
    while Instant::now() < t {
        std::hint::spin_loop();
    }
}

/// Open loop at RATE for PHASE; latency from the scheduled send time, in ns.
fn open_loop(addr: SocketAddr, s: Scenario, port: u16) -> Result<Histogram<u64>, String> {
    let mut conn = Conn::open(addr)?;
    let req = s.request(port);
    // Warm up the connection, the proxy's pool and caches.
    for _ in 0..200 {
        conn.roundtrip(&req)?;
    }
    let mut hist =
        Histogram::<u64>::new_with_bounds(1_000, 60_000_000_000, 3).map_err(|e| e.to_string())?;
    let interval = Duration::from_nanos(1_000_000_000 / RATE);
    let start = Instant::now() + Duration::from_millis(10);
    let n = (PHASE.as_nanos() / interval.as_nanos()) as u32;
    for i in 0..n {
        let scheduled = start + interval * i;
        wait_until(scheduled);
        conn.roundtrip(&req)?;
        let took = scheduled.elapsed().as_nanos() as u64;
        hist.saturating_record(took.max(1_000));
    }
    Ok(hist)
}

/// Closed loop: SAT_CONNS connections as fast as they go for SAT_TIME; requests per second.
fn saturate(addr: SocketAddr, s: Scenario, port: u16) -> Result<f64, String> {
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    // Connections through their warm-up (the proxy's pool and caches, as in `open_loop`).
    let warm = Arc::new(AtomicU64::new(0));
    let mut threads = Vec::new();
    for _ in 0..SAT_CONNS {
        let (stop, done, warm) = (stop.clone(), done.clone(), warm.clone());
        let mut conn = Conn::open(addr)?;
        let req = s.request(port);
        threads.push(std::thread::spawn(move || -> Result<(), String> {
            for _ in 0..200 {
                if stop.load(Ordering::Relaxed) {
                    return Ok(());
                }
                conn.roundtrip(&req)?;
            }
            warm.fetch_add(1, Ordering::Relaxed);
            while !stop.load(Ordering::Relaxed) {
                conn.roundtrip(&req)?;
                done.fetch_add(1, Ordering::Relaxed);
            }
            Ok(())
        }));
    }
    // The window opens once every connection is warm and going.
    let deadline = Instant::now() + Duration::from_secs(60);
    while warm.load(Ordering::Relaxed) < SAT_CONNS as u64 {
        if threads.iter().any(|t| t.is_finished()) || Instant::now() >= deadline {
            stop.store(true, Ordering::Relaxed);
            for t in threads {
                t.join().map_err(|_| "load thread panicked")??;
            }
            return Err("the load connections did not all warm up within 60 s".into());
        }
        // Poll interval; the deadline above bounds the wait.
        std::thread::sleep(Duration::from_millis(1));
    }
    let (t0, n0) = (Instant::now(), done.load(Ordering::Relaxed));
    // The measured window itself, not a wait for anything.
    std::thread::sleep(SAT_TIME);
    let (t1, n1) = (Instant::now(), done.load(Ordering::Relaxed));
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().map_err(|_| "load thread panicked")??;
    }
    Ok((n1 - n0) as f64 / (t1 - t0).as_secs_f64())
}

fn us(ns: f64) -> String {
    format!("{:.1} µs", ns / 1000.0)
}

fn generate() -> Result<(), String> {
    pin(0)?;
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut child = Command::new(exe)
        .arg("serve")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("starting the proxy process: {e}"))?;
    let result = (|| {
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .map_err(|e| e.to_string())?;
        let addr = |key: &str| -> Result<SocketAddr, String> {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(key))
                .ok_or_else(|| format!("no {key} in `{line}`"))?
                .parse()
                .map_err(|e| format!("{key}: {e}"))
        };
        let (up, proxy) = (addr("upstream=")?, addr("proxy=")?);
        run(up, proxy)
    })();
    let _ = child.kill();
    let _ = child.wait();
    result
}

fn run(up: SocketAddr, proxy: SocketAddr) -> Result<(), String> {
    println!(
        "HTTP proxy benchmark: open loop at {RATE} req/s on one keep-alive connection, {} s per \
         phase, phases interleaved A B A' C × {ROUNDS}; load generator on core 0, proxy + upstream \
         on core 1",
        PHASE.as_secs()
    );
    let target = |s: Scenario| match s {
        Scenario::Direct | Scenario::DirectPost => up,
        _ => proxy,
    };
    // GOVERNANCE_BENCH_HTTP=saturation: only the throughput part (for profiling).
    let only_saturation = std::env::var("GOVERNANCE_BENCH_HTTP").as_deref() == Ok("saturation");
    // [scenario] → per-round (p50, p99) in ns.
    let mut rounds: Vec<Vec<(f64, f64)>> = vec![Vec::new(); Scenario::ALL.len()];
    for round in (1..=ROUNDS).filter(|_| !only_saturation) {
        let mut line = format!("  round {round}:");
        for (i, s) in Scenario::ALL.into_iter().enumerate() {
            let h = open_loop(target(s), s, up.port())?;
            let (p50, p99) = (
                h.value_at_quantile(0.50) as f64,
                h.value_at_quantile(0.99) as f64,
            );
            rounds[i].push((p50, p99));
            line.push_str(&format!(
                "  {} p50 {} p99 {} (max {})",
                s.name().split(' ').next().unwrap_or("?"),
                us(p50),
                us(p99),
                us(h.max() as f64)
            ));
        }
        println!("{line}");
    }
    if only_saturation {
        return saturation(up, proxy);
    }
    println!("\nmedians across rounds          p50         p99");
    for (i, s) in Scenario::ALL.into_iter().enumerate() {
        println!(
            "  {:<34} {:>10}  {:>10}",
            s.name(),
            us(median(&rounds[i].iter().map(|r| r.0).collect::<Vec<_>>())),
            us(median(&rounds[i].iter().map(|r| r.1).collect::<Vec<_>>()))
        );
    }
    for (i, what) in [
        (1, "added by the proxy, B − A"),
        (3, "added by the proxy, C − A'"),
    ] {
        let base = Scenario::ALL[i].baseline();
        let added = |q: fn(&(f64, f64)) -> f64| {
            median(
                &rounds[i]
                    .iter()
                    .zip(&rounds[base])
                    .map(|(p, d)| q(p) - q(d))
                    .collect::<Vec<_>>(),
            )
        };
        println!(
            "  {:<34} {:>10}  {:>10}   (targets ≤ 50 µs, ≤ 150 µs)",
            what,
            us(added(|r| r.0)),
            us(added(|r| r.1))
        );
    }
    saturation(up, proxy)
}

fn saturation(up: SocketAddr, proxy: SocketAddr) -> Result<(), String> {
    println!(
        "\nsaturation: closed loop, {SAT_CONNS} connections, {} s each",
        SAT_TIME.as_secs()
    );
    let direct = saturate(up, Scenario::Direct, up.port())?;
    let allow = saturate(proxy, Scenario::Allow, up.port())?;
    let direct_post = saturate(up, Scenario::DirectPost, up.port())?;
    let body = saturate(proxy, Scenario::Body, up.port())?;
    for (s, r, base) in [
        (Scenario::Direct, direct, None),
        (Scenario::Allow, allow, Some(direct)),
        (Scenario::DirectPost, direct_post, None),
        (Scenario::Body, body, Some(direct_post)),
    ] {
        match base {
            None => println!(
                "  {:<34} {r:>9.0} req/s (upstream alone on core 1)",
                s.name()
            ),
            Some(base) => println!(
                "  {:<34} {r:>9.0} req/s (proxy + upstream on core 1); the proxy alone ≈ {:.0} req/s per core (target ≥ 20,000)",
                s.name(),
                1.0 / (1.0 / r - 1.0 / base)
            ),
        }
    }
    Ok(())
}
