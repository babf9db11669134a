//! In-process tests: a proxy on 127.0.0.1, a fixed-table `Identify` (agents are told apart by
//! the loopback address they connect from), and small hyper upstreams that echo what they
//! received as JSON.

use std::{
    collections::HashMap,
    convert::Infallible,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU32, Ordering},
    },
    time::Duration,
};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response, StatusCode, body::Incoming, service::service_fn};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::{TcpListener, TcpSocket, TcpStream},
    task::JoinHandle,
};

use super::*;
use crate::{
    approvals::{Approvals, Limits},
    engine::{AgentRef, Engine},
    events::{AgentInfo, Record, Source},
    policy,
};

/// Each agent connects from its own loopback address (127.0.1.N).
static NEXT_IP: AtomicU32 = AtomicU32::new(1);

/// The cgroup id of a harness agent's root: one per cgroup path, as the kernel's.
fn root_id(cgroup: &str) -> u64 {
    cgroup.bytes().fold(77, |h: u64, b| {
        h.wrapping_mul(31).wrapping_add(u64::from(b))
    })
}

fn next_ip() -> IpAddr {
    let n = NEXT_IP.fetch_add(1, Ordering::Relaxed);
    IpAddr::V4(Ipv4Addr::new(
        127,
        0,
        1 + (n / 250) as u8,
        (n % 250 + 1) as u8,
    ))
}

#[derive(Default)]
struct Table(Mutex<HashMap<IpAddr, Client>>);

impl Identify for Table {
    fn identify(&self, peer: SocketAddr, _local: SocketAddr, _netns: u64) -> Option<Client> {
        self.0.lock().unwrap().get(&peer.ip()).cloned()
    }
}

/// An upstream that answers every request with what it saw, as JSON, and remembers it.
struct Upstream {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Value>>>,
    /// Connections accepted.
    accepted: Arc<AtomicU32>,
    task: JoinHandle<()>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn upstream(name: &'static str) -> Upstream {
    upstream_with(name, None).await
}

/// The same over TLS, with this server configuration.
async fn tls_upstream(name: &'static str, config: Arc<rustls::ServerConfig>) -> Upstream {
    upstream_with(name, Some(tokio_rustls::TlsAcceptor::from(config))).await
}

async fn upstream_with(name: &'static str, tls: Option<tokio_rustls::TlsAcceptor>) -> Upstream {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let accepted = Arc::new(AtomicU32::new(0));
    let s = seen.clone();
    let a = accepted.clone();
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            a.fetch_add(1, Ordering::Relaxed);
            let s = s.clone();
            let tls = tls.clone();
            let is_tls = tls.is_some();
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    let s = s.clone();
                    async move {
                        let (parts, body) = req.into_parts();
                        let body = body
                            .collect()
                            .await
                            .map(|c| c.to_bytes())
                            .unwrap_or_default();
                        let headers: serde_json::Map<String, Value> = parts
                            .headers
                            .iter()
                            .map(|(k, v)| {
                                (
                                    k.to_string(),
                                    Value::String(v.to_str().unwrap_or("?").into()),
                                )
                            })
                            .collect();
                        let echo = json!({
                            "upstream": name,
                            "tls": is_tls,
                            "method": parts.method.as_str(),
                            "path": parts.uri.to_string(),
                            "headers": headers,
                            "body": String::from_utf8_lossy(&body),
                        });
                        s.lock().unwrap().push(echo.clone());
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(echo.to_string()))))
                    }
                });
                let http = hyper::server::conn::http1::Builder::new();
                match &tls {
                    None => {
                        let _ = http.serve_connection(TokioIo::new(stream), svc).await;
                    }
                    Some(acceptor) => {
                        if let Ok(stream) = acceptor.accept(stream).await {
                            let _ = http.serve_connection(TokioIo::new(stream), svc).await;
                        }
                    }
                }
            });
        }
    });
    Upstream {
        addr,
        seen,
        accepted,
        task,
    }
}

/// A proxy with its records.
struct Harness {
    proxy: Arc<Proxy>,
    /// The generation the proxy decides with (a reload stores the next one).
    engine: Arc<ArcSwap<Engine>>,
    addr: SocketAddr,
    approvals: Arc<Approvals>,
    records: Arc<Mutex<Vec<Record>>>,
    identify: Arc<Table>,
    task: JoinHandle<std::io::Result<()>>,
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn examples() -> policy::PolicySet {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../policies/examples");
    policy::load_dir(&dir).unwrap()
}

fn parse(yaml: &str) -> policy::PolicySet {
    policy::parse(&[("test.yaml".into(), yaml.to_owned())]).unwrap()
}

fn config() -> ProxyConfig {
    ProxyConfig {
        listen: vec![],
        host_addresses: [
            "api.payments.example",
            "mcp.search.example",
            "elsewhere.example",
        ]
        .into_iter()
        .map(|h| (h.to_owned(), vec![IpAddr::V4(Ipv4Addr::LOCALHOST)]))
        .chain([(
            "elsewhere.example".to_owned(),
            vec![IpAddr::V4(Ipv4Addr::new(127, 9, 9, 9))],
        )])
        .collect(),
        ..ProxyConfig::default()
    }
}

async fn start(cfg: ProxyConfig, set: policy::PolicySet, limits: Limits) -> Harness {
    start_publishing(cfg, set, limits, None).await
}

/// [`start`], with the records also published into an event pipeline.
async fn start_publishing(
    cfg: ProxyConfig,
    set: policy::PolicySet,
    limits: Limits,
    publisher: Option<crate::pipeline::Publisher>,
) -> Harness {
    let records = Arc::new(Mutex::new(Vec::new()));
    let r = records.clone();
    let sink: Sink = Arc::new(move |rec: Record| {
        if let Some(p) = &publisher {
            p.publish(rec.clone());
        }
        r.lock().unwrap().push(rec)
    });
    let approvals = Approvals::new(limits, sink.clone(), Arc::new(|_, _| Ok(())));
    let identify = Arc::new(Table::default());
    let engine = Arc::new(ArcSwap::from_pointee(Engine::new(set, 1)));
    let proxy = Proxy::new(
        cfg,
        engine.clone(),
        identify.clone(),
        approvals.clone(),
        sink,
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(proxy.clone().serve(listener));
    Harness {
        proxy,
        engine,
        addr,
        approvals,
        records,
        identify,
        task,
    }
}

impl Harness {
    /// Register an agent; returns the address it connects from.
    fn agent(&self, cgroup: &str, label: Option<&str>, dst: Option<SocketAddr>) -> IpAddr {
        let ip = next_ip();
        let name = label.unwrap_or(cgroup).to_owned();
        self.identify.0.lock().unwrap().insert(
            ip,
            Client {
                agent: AgentRef {
                    name: name.clone(),
                    cgroup: cgroup.into(),
                    label: label.map(Into::into),
                    pod: None,
                },
                info: AgentInfo {
                    name,
                    cgroup: cgroup.into(),
                    cgroup_id: root_id(cgroup),
                    ..Default::default()
                }
                .into(),
                cgroup_id: 78,
                process: Some(ProcessInfo {
                    pid: 4242,
                    ..Default::default()
                }),
                original_dst: dst,
            },
        );
        ip
    }

    fn record(&self, id: &str) -> Record {
        self.records
            .lock()
            .unwrap()
            .iter()
            .find(|r| r.id == id)
            .cloned()
            .unwrap_or_else(|| panic!("no record {id}"))
    }

    /// An HTTP/2 connection with prior knowledge (h2c) from `from`, and its driving task.
    async fn h2c(
        &self,
        from: IpAddr,
    ) -> (
        hyper::client::conn::http2::SendRequest<Full<Bytes>>,
        JoinHandle<hyper::Result<()>>,
    ) {
        let (tx, conn) = hyper::client::conn::http2::handshake(
            hyper_util::rt::TokioExecutor::new(),
            TokioIo::new(self.connect(from).await),
        )
        .await
        .unwrap();
        (tx, tokio::spawn(conn))
    }

    async fn connect(&self, from: IpAddr) -> TcpStream {
        let sock = TcpSocket::new_v4().unwrap();
        sock.bind(SocketAddr::new(from, 0)).unwrap();
        sock.connect(self.addr).await.unwrap()
    }

    /// The port of the destination an agent's connections were redirected from: clients name
    /// it in `Host` when it is not their scheme's default (RFC 9110 §7.2), and the proxy
    /// refuses a Host naming another port. The harness's upstreams listen on ephemeral ports,
    /// so requests written with a bare host name get that port added ([`Harness::send`],
    /// [`Harness::raw`]).
    fn redirected_port(&self, from: IpAddr) -> Option<u16> {
        let table = self.identify.0.lock().unwrap();
        table.get(&from)?.original_dst.map(|d| d.port())
    }

    /// Send one request on a fresh connection.
    async fn send(&self, from: IpAddr, mut req: Request<Full<Bytes>>) -> Reply {
        if let Some(port) = self.redirected_port(from) {
            req = host_with_port(req, port);
        }
        let stream = self.connect(from).await;
        let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        let resp = tokio::time::timeout(Duration::from_secs(20), tx.send_request(req))
            .await
            .expect("proxy answered in time")
            .unwrap();
        Reply::read(resp).await
    }

    /// Raw bytes in, raw response text out (until the proxy closes or 10 s pass).
    async fn raw(&self, from: IpAddr, bytes: &[u8]) -> String {
        let mut stream = self.connect(from).await;
        let bytes = match self.redirected_port(from) {
            Some(port) => with_host_port(bytes, port),
            None => bytes.to_vec(),
        };
        let _ = stream.write_all(&bytes).await;
        read_all(&mut stream, Duration::from_secs(10)).await
    }

    fn assert_no_panics(&self) {
        assert_eq!(self.proxy.panics(), 0, "a proxy task panicked");
    }
}

/// `req` with `port` added to its Host if that names none.
fn host_with_port<B>(mut req: Request<B>, port: u16) -> Request<B> {
    if let Some(host) = req.headers().get("host").and_then(|h| h.to_str().ok())
        && !host.contains(':')
    {
        let with_port = format!("{host}:{port}").parse().unwrap();
        req.headers_mut().insert("host", with_port);
    }
    req
}

/// `bytes` with `port` added to each `Host: name` header line (the name in any case) that
/// names no port.
fn with_host_port(bytes: &[u8], port: u16) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len() + 16);
    let mut rest = bytes;
    while let Some(at) = rest
        .windows(7)
        .position(|w| w.eq_ignore_ascii_case(b"\r\nhost:"))
    {
        let (head, tail) = rest.split_at(at + 7);
        out.extend_from_slice(head);
        let end = tail
            .windows(2)
            .position(|w| w == b"\r\n")
            .unwrap_or(tail.len());
        let value = &tail[..end];
        let name = value.trim_ascii_end();
        out.extend_from_slice(name);
        if !name.trim_ascii().is_empty() && !name.contains(&b':') {
            out.extend_from_slice(format!(":{port}").as_bytes());
        }
        out.extend_from_slice(&value[name.len()..]);
        rest = &tail[end..];
    }
    out.extend_from_slice(rest);
    out
}

async fn read_all(stream: &mut TcpStream, limit: Duration) -> String {
    let mut out = Vec::new();
    let _ = tokio::time::timeout(limit, async {
        let mut buf = [0u8; 8192];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    String::from_utf8_lossy(&out).into_owned()
}

struct Reply {
    status: StatusCode,
    headers: hyper::HeaderMap,
    body: Value,
}

impl Reply {
    async fn read(resp: Response<Incoming>) -> Self {
        let (parts, body) = resp.into_parts();
        let bytes = body
            .collect()
            .await
            .map(|c| c.to_bytes())
            .unwrap_or_default();
        Reply {
            status: parts.status,
            headers: parts.headers,
            body: serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into())),
        }
    }

    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
}

fn post(host: &str, path: &str, body: Value) -> Request<Full<Bytes>> {
    Request::post(path)
        .header("host", host)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap()
}

fn refund(amount: u64) -> Request<Full<Bytes>> {
    post(
        "api.payments.example",
        "/v1/refunds",
        json!({ "amount": amount, "currency": "usd", "customer_age_days": 400 }),
    )
}

fn tool_call(id: u64, tool: &str, arguments: Value) -> Request<Full<Bytes>> {
    post(
        "mcp.search.example",
        "/mcp",
        json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
               "params": {"name": tool, "arguments": arguments}}),
    )
}

/// Wait until `f` holds (up to 10 s); panics naming `what` (what never happened) otherwise.
async fn until(what: &str, mut f: impl FnMut() -> bool) {
    for _ in 0..1000 {
        if f() {
            return;
        }
        // Poll interval; the 1000 rounds bound the wait.
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out after 10 s waiting for {what}");
}

/// Deny (as bob) the approval the request under test will be held for, once it is the one
/// pending.
fn deny_when_held(approvals: &Arc<Approvals>) -> tokio::task::JoinHandle<()> {
    let approvals = approvals.clone();
    tokio::spawn(async move {
        until("the request to be held for approval", || {
            approvals.list().len() == 1
        })
        .await;
        let id = approvals.list()[0].id.clone();
        approvals.deny(&id, "bob", "no").unwrap();
    })
}

/// Escalations reach humans: a held request's approval request goes through the event
/// pipeline to the `--notify-webhook` notifier, which posts a Slack-compatible message (to a
/// real HTTP receiver) within a second, with the id and the commands that decide it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_escalated_request_is_notified_within_a_second() {
    use crate::export::{self, tests as et};
    let up = upstream("payments").await;
    let (hook, seen) = et::webhook_receiver(vec![]).await;
    let metrics = Arc::new(crate::metrics::Metrics::new());
    let pipe = crate::pipeline::start(crate::pipeline::Config {
        audit: None,
        cgroup_root: PathBuf::from("/nonexistent"),
        metrics: metrics.clone(),
        stdout: false,
    })
    .unwrap();
    let notifier = export::Exporter::notifier(&format!("http://{hook}/hook"), None, None).unwrap();
    let running = export::start(vec![notifier], &pipe.publisher, &metrics)
        .await
        .unwrap();
    let h = start_publishing(
        config(),
        examples(),
        Limits::default(),
        Some(pipe.publisher.clone()),
    )
    .await;
    let me = h.agent("agents/refund-1", None, Some(up.addr));
    // The control: an allowed request is not notified.
    assert_eq!(h.send(me, refund(50)).await.status, StatusCode::OK);
    let approvals = h.approvals.clone();
    let decider = tokio::spawn(async move {
        until("the request to be held", || approvals.list().len() == 1).await;
        let held = std::time::Instant::now();
        let id = approvals.list()[0].id.clone();
        let body = et::wait_until("the notification", || {
            seen.lock().unwrap().requests.first().map(|r| r.1.clone())
        })
        .await;
        let took = held.elapsed();
        assert!(took < Duration::from_secs(1), "notified after {took:?}");
        let p: Value = serde_json::from_slice(&body).unwrap();
        et::check_notification(&p, &id, "agents/refund-1", "POST");
        assert_eq!(p["approval"]["rule"], "refund-agent/refund-medium");
        approvals.deny(&id, "alice", "not today").unwrap();
        seen.lock().unwrap().requests.len()
    });
    let r = h.send(me, refund(500)).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.body);
    assert_eq!(decider.await.unwrap(), 1, "one notification");
    assert_eq!(running.views()[0].sent, 1);
    pipe.publisher.stop();
}

/// Issue 12 item 7: a reload (here of the very same policy, as a cgroup change or a SIGHUP
/// makes) hands the next generation the buckets of the last one: a spent budget stays spent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_throttle_stays_spent_across_a_reload() {
    let up = upstream("payments").await;
    let yaml = "name: meter\nagents: { cgroup: 'agents/*' }\nrules:\n\
                \x20 - { id: search, http: { host: api.payments.example, path: /search }, verdict: throttle, throttle: { rate: 3, per: 1m }, reason: metered }\n";
    let h = start(config(), parse(yaml), Limits::default()).await;
    let me = h.agent("agents/meter-1", None, Some(up.addr));
    let other = h.agent("agents/meter-2", None, Some(up.addr));
    let search = || post("api.payments.example", "/search", json!({}));
    for _ in 0..3 {
        let r = h.send(me, search()).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    }
    // The next generation, built as the daemon builds it.
    let mut next = Engine::new(parse(yaml), 2);
    next.carry_buckets(&h.engine.load(), std::time::Instant::now());
    h.engine.store(Arc::new(next));
    let r = h.send(me, search()).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "{}", r.body);
    assert_eq!(r.body["rule"], "meter/search");
    assert!(r.header("retry-after").parse::<u64>().unwrap() >= 1);
    let id = r.body["decision_id"].as_str().unwrap();
    assert_eq!(h.record(id).generation, 2, "decided by the new generation");
    // Control: another agent's budget is untouched.
    let r = h.send(other, search()).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(up.seen.lock().unwrap().len(), 4);
    h.assert_no_panics();
}

/// Kept-alive upstream connections are each agent's own (red team round 13): one opened for an
/// agent's request was reused for another agent's, carrying a connection-bound login or what
/// the first request left unread into the second's. And a request with a body closes its
/// upstream connection after the answer, whatever the body says: an upstream that answers
/// without reading the body, or all of it, reads what is left as a request the proxy never
/// decided (a body on a GET, round 13; a POST to a route of Python's `http.server` that
/// ignores its body, round 24). Control: an agent's own requests without a body share a
/// connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_connections_are_never_shared_between_agents() {
    let up = upstream("payments").await;
    let yaml = "name: pool\nagents: { cgroup: 'agents/*' }\nrules:\n\
                \x20 - { id: search, http: { host: api.payments.example, path: /search }, verdict: allow, reason: r }\n";
    let h = start(config(), parse(yaml), Limits::default()).await;
    let me = h.agent("agents/pool-1", None, Some(up.addr));
    let other = h.agent("agents/pool-2", None, Some(up.addr));
    let with_body = |method: &str, body: &'static [u8]| {
        Request::builder()
            .method(method)
            .uri("/search")
            .header("host", "api.payments.example")
            .body(Full::new(Bytes::from_static(body)))
            .unwrap()
    };
    let search = || with_body("GET", b"");
    let accepted = || up.accepted.load(Ordering::Relaxed);
    for _ in 0..2 {
        let r = h.send(me, search()).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    }
    assert_eq!(
        accepted(),
        1,
        "control: one agent's requests share a connection"
    );
    let r = h.send(other, search()).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(
        accepted(),
        2,
        "another agent's request on a connection of its own"
    );
    let r = h.send(me, search()).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(accepted(), 2);
    // A body, on a GET and on a POST (JSON, streamed: no rule reads this host's bodies): each
    // answered, and its connection is not kept.
    for (n, request) in [
        with_body("GET", b"DELETE /admin HTTP/1.1\r\nx: "),
        with_body("POST", b"{\"query\": \"x\"}"),
    ]
    .into_iter()
    .enumerate()
    {
        let r = h.send(me, request).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        let r = h.send(me, search()).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        assert_eq!(accepted(), 3 + n as u32, "a new connection after a body");
    }
    h.assert_no_panics();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refund_agent_allow_escalate_approve_deny_block() {
    let up = upstream("payments").await;
    let h = start(config(), examples(), Limits::default()).await;
    let me = h.agent("agents/refund-1", None, Some(up.addr));

    // $50: allowed, and the upstream saw it.
    let r = h.send(me, refund(50)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["path"], "/v1/refunds");
    // The Host as the agent sent it (with the destination's port, as clients name it).
    assert_eq!(
        r.body["headers"]["host"],
        format!("api.payments.example:{}", up.addr.port())
    );
    assert!(r.body["body"].as_str().unwrap().contains("\"amount\":50"));
    assert_eq!(up.seen.lock().unwrap().len(), 1);

    // $500: held until approved from another task.
    let approvals = h.approvals.clone();
    let approver = tokio::spawn(async move {
        until("the request to be held for approval", || {
            approvals.list().len() == 1
        })
        .await;
        let p = &approvals.list()[0];
        assert_eq!(p.rule, "refund-agent/refund-medium");
        assert_eq!(p.object.detail["body $.amount"], "500");
        approvals
            .approve(&p.id, "alice", Duration::from_secs(60))
            .unwrap()
    });
    let r = h.send(me, refund(500)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(up.seen.lock().unwrap().len(), 2);
    let approved = approver.await.unwrap();
    let rec = h
        .records
        .lock()
        .unwrap()
        .iter()
        .find(|r| r.kind == "approval.approved")
        .cloned()
        .unwrap();
    assert_eq!(rec.approval.as_ref().unwrap().by, "alice");
    assert_eq!(rec.approval.as_ref().unwrap().id, approved.id);

    // Another $500: denied with a reason.
    let approvals = h.approvals.clone();
    tokio::spawn(async move {
        until("the request to be held for approval", || {
            approvals.list().len() == 1
        })
        .await;
        let id = approvals.list()[0].id.clone();
        approvals
            .deny(&id, "bob", "customer already refunded")
            .unwrap();
    });
    let r = h.send(me, refund(500)).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(r.body["reason"], "denied by bob: customer already refunded");
    assert_eq!(up.seen.lock().unwrap().len(), 2);

    // $5,000: blocked; the decision id is the record's id.
    let r = h.send(me, refund(5000)).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(r.body["error"], "blocked");
    assert_eq!(r.body["rule"], "refund-agent/refund-large");
    let id = r.body["decision_id"].as_str().unwrap();
    assert_eq!(r.header("x-governance-decision"), id);
    assert_eq!(r.header("x-governance-rule"), "refund-agent/refund-large");
    let rec = h.record(id);
    assert_eq!(
        (rec.outcome.as_ref(), rec.denied, rec.rule.as_str()),
        ("block", true, "refund-agent/refund-large")
    );
    assert_eq!(rec.source, Source::Proxy);
    assert_eq!(rec.object.method, "POST");
    assert_eq!(
        rec.object.url,
        format!("http://api.payments.example:{}/v1/refunds", up.addr.port())
    );
    assert_eq!(rec.object.detail["body $.amount"], "5000");
    assert_eq!(rec.agent.as_ref().unwrap().name, "agents/refund-1");
    assert_eq!(rec.process.as_ref().unwrap().pid, 4242);
    assert_eq!(up.seen.lock().unwrap().len(), 2);
    h.assert_no_panics();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shadow_rules_are_reported_and_change_nothing() {
    let up = upstream("payments").await;
    let h = start(config(), examples(), Limits::default()).await;
    let me = h.agent("agents/refund-2", None, Some(up.addr));
    let req = post(
        "api.payments.example",
        "/v1/refunds",
        json!({"amount": 50, "customer_age_days": 2, "currency": "usd"}),
    );
    let r = h.send(me, req).await;
    assert_eq!(r.status, StatusCode::OK);
    let recs = h.records.lock().unwrap();
    let rec = recs.last().unwrap();
    assert_eq!(rec.outcome, "allow");
    assert_eq!(rec.mode, "enforce");
    let shadow = rec.shadow.as_ref().unwrap();
    assert_eq!(
        (shadow.verdict.as_str(), shadow.rule.as_str()),
        ("escalate", "refund-agent/new-customer-watch")
    );
}

const SEARCH: &str = r#"
name: search
agents: { label: searcher }
proxy: { max_body: 4KiB }
rules:
  - id: search-rate
    http: { host: mcp.search.example, path: /mcp, mcp: { tool: web_search } }
    verdict: throttle
    throttle: { rate: 3, per: 1h }
    reason: Search is metered.
  - id: no-shell
    http: { host: mcp.search.example, path: /mcp, mcp: { tool: run_shell } }
    verdict: block
    reason: No shell commands.
  - id: fetch-sandboxed
    http: { host: mcp.search.example, path: /mcp, mcp: { tool: fetch_url } }
    verdict: sandbox
    sandbox: { upstream: "http://127.0.0.1:SANDBOX_PORT/sandbox/" }
    reason: Fetches go through the sandbox.
  - id: delete-held
    http: { host: mcp.search.example, path: /mcp, mcp: { tool: delete_index } }
    verdict: escalate
    escalate: { timeout: 1s, on_timeout: block }
    reason: Deleting an index needs a human.
  - id: reindex-held
    http: { host: mcp.search.example, path: /mcp, mcp: { tool: reindex } }
    verdict: escalate
    escalate: { timeout: 1s, on_timeout: allow }
    reason: Reindexing is allowed if nobody objects.
  - id: slow-held
    http: { host: mcp.search.example, path: /mcp, mcp: { tool: slow } }
    verdict: escalate
    escalate: { timeout: 1h }
    reason: Slow.
  - id: plain-block
    http: { host: mcp.search.example, path: /admin/** }
    verdict: block
    reason: No admin.
"#;

fn search_policy(sandbox: SocketAddr) -> policy::PolicySet {
    parse(&SEARCH.replace("SANDBOX_PORT", &sandbox.port().to_string()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mcp_throttle_block_sandbox_and_batches() {
    let up = upstream("mcp").await;
    let sandbox = upstream("sandbox").await;
    let h = start(config(), search_policy(sandbox.addr), Limits::default()).await;
    let me = h.agent("agents/s1", Some("searcher"), Some(up.addr));

    for i in 1..=3 {
        let r = h
            .send(me, tool_call(i, "web_search", json!({"q": "x"})))
            .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        assert_eq!(r.body["upstream"], "mcp");
    }
    let r = h
        .send(me, tool_call(4, "web_search", json!({"q": "x"})))
        .await;
    // An MCP call is refused the JSON-RPC way.
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["id"], 4);
    assert_eq!(r.body["error"]["code"], -32002);
    let retry: u64 = r.header("retry-after").parse().unwrap();
    assert!(retry >= 1, "{retry}");

    // A plain (non-MCP) request to a throttled or blocked path gets HTTP semantics.
    let r = h
        .send(me, post("mcp.search.example", "/admin/x", json!({})))
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(r.body["rule"], "search/plain-block");

    let r = h
        .send(me, tool_call(7, "run_shell", json!({"cmd": "id"})))
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["jsonrpc"], "2.0");
    assert_eq!(r.body["id"], 7);
    assert_eq!(r.body["error"]["code"], -32001);
    assert_eq!(r.body["error"]["data"]["rule"], "search/no-shell");
    assert_eq!(
        r.body["error"]["message"],
        "blocked by policy: No shell commands."
    );
    let id = r.body["error"]["data"]["decision_id"].as_str().unwrap();
    assert_eq!(h.record(id).object.mcp_tool, "run_shell");

    let r = h.send(me, tool_call(8, "list_tools", json!({}))).await;
    assert_eq!(r.body["upstream"], "mcp", "another tool passes: {}", r.body);

    // Sandbox: lands on the sandbox upstream, under its path prefix.
    let req = Request::post("/mcp?x=1")
        .header("host", "mcp.search.example")
        .body(Full::new(Bytes::from(
            json!({"jsonrpc":"2.0","id":9,"method":"tools/call",
                   "params":{"name":"fetch_url","arguments":{"url":"http://a"}}})
            .to_string(),
        )))
        .unwrap();
    let r = h.send(me, req).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["upstream"], "sandbox");
    assert_eq!(r.body["path"], "/sandbox/mcp?x=1");
    assert_eq!(
        r.body["headers"]["host"],
        format!("127.0.0.1:{}", sandbox.addr.port())
    );
    assert_eq!(
        r.body["headers"]["x-governance-sandboxed"],
        "search/fetch-sandboxed"
    );
    assert_eq!(r.header("x-governance-sandboxed"), "search/fetch-sandboxed");

    // A batch: decided call by call; the most severe applies to all, one error per call.
    let batch = json!([
        {"jsonrpc":"2.0","id":"a","method":"tools/call","params":{"name":"list_tools"}},
        {"jsonrpc":"2.0","id":"b","method":"tools/call","params":{"name":"run_shell"}},
    ]);
    let r = h.send(me, post("mcp.search.example", "/mcp", batch)).await;
    let errors = r.body.as_array().unwrap();
    assert_eq!(errors.len(), 2);
    assert_eq!(errors[0]["id"], "a");
    assert_eq!(errors[1]["id"], "b");
    assert_eq!(errors[1]["error"]["code"], -32001);
    h.assert_no_panics();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn escalation_timeouts_apply_on_timeout() {
    let up = upstream("mcp").await;
    let h = start(config(), search_policy(up.addr), Limits::default()).await;
    let me = h.agent("agents/s2", Some("searcher"), Some(up.addr));
    let t = std::time::Instant::now();
    let r = h.send(me, tool_call(1, "delete_index", json!({}))).await;
    assert!(t.elapsed() >= Duration::from_millis(900));
    assert_eq!(r.body["error"]["code"], -32001, "{}", r.body);
    assert_eq!(
        r.body["error"]["message"],
        "blocked by policy: approval timed out"
    );
    let r = h.send(me, tool_call(2, "reindex", json!({}))).await;
    assert_eq!(
        r.body["upstream"], "mcp",
        "on_timeout allow forwards: {}",
        r.body
    );
    let states: Vec<String> = h
        .records
        .lock()
        .unwrap()
        .iter()
        .filter_map(|r| {
            r.approval
                .as_ref()
                .map(|a| format!("{}:{}", r.kind, a.state))
        })
        .collect();
    assert!(
        states.contains(&"approval.expired:expired".to_owned()),
        "{states:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_requests_are_bounded_and_withdrawn_when_the_client_leaves() {
    let up = upstream("mcp").await;
    let limits = Limits {
        per_agent: 2,
        ..Limits::default()
    };
    let h = Arc::new(start(config(), search_policy(up.addr), limits).await);
    let me = h.agent("agents/s3", Some("searcher"), Some(up.addr));
    let mut held = Vec::new();
    for i in 0..2 {
        let h2 = h.clone();
        held.push(tokio::spawn(async move {
            h2.send(me, tool_call(i, "slow", json!({}))).await
        }));
    }
    until("both requests to be held for approval", || {
        h.approvals.list().len() == 2
    })
    .await;
    let r = h.send(me, tool_call(3, "slow", json!({}))).await;
    assert_eq!(
        r.body["error"]["message"], "blocked by policy: approval queue full",
        "{}",
        r.body
    );
    // The clients go away: their approvals are withdrawn.
    for t in held {
        t.abort();
    }
    until("the gone clients' approvals to be withdrawn", || {
        h.approvals.list().is_empty()
    })
    .await;
    let withdrawn = h
        .records
        .lock()
        .unwrap()
        .iter()
        .filter(|r| r.kind == "approval.withdrawn")
        .count();
    assert_eq!(withdrawn, 2);
    h.assert_no_panics();
}

/// The unspecified address is the loopback to the kernel (a connect to `0.0.0.0` reaches
/// 127.0.0.1), and to the proxy's decisions too: a request to `0.0.0.0` or `[::ffff:0.0.0.0]`
/// through the proxy meets the rules of the loopback (red team round 9: it went past a rule
/// blocking the node's loopback services).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_unspecified_address_is_decided_as_the_loopback() {
    let up = upstream("docker-api").await;
    let other = upstream("open").await;
    let yaml = format!(
        r#"
name: loopback
agents: {{ cgroup: agents/loopback }}
rules:
  - {{ id: local-api, network: {{ cidr: 127.0.0.0/8, ports: {} }}, verdict: block, reason: the node's local API }}
"#,
        up.addr.port()
    );
    let h = start(config(), parse(&yaml), Limits::default()).await;
    let me = h.agent("agents/loopback", None, None);
    let get = |url: String| Request::get(url).body(Full::new(Bytes::new())).unwrap();
    let port = up.addr.port();
    for url in [
        format!("http://0.0.0.0:{port}/containers/json"),
        format!("http://[::ffff:0.0.0.0]:{port}/containers/json"),
        format!("http://127.0.0.1:{port}/containers/json"),
    ] {
        let r = h.send(me, get(url.clone())).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{url}: {}", r.body);
        assert_eq!(r.body["rule"], "loopback/local-api", "{url}");
    }
    let r = h
        .raw(
            me,
            format!("CONNECT 0.0.0.0:{port} HTTP/1.1\r\nHost: 0.0.0.0:{port}\r\n\r\n").as_bytes(),
        )
        .await;
    assert!(r.starts_with("HTTP/1.1 403"), "{r}");
    assert!(
        up.seen.lock().unwrap().is_empty(),
        "nothing reached the blocked service"
    );
    // Control: the loopback's other ports, by the same spelling, are reached.
    let r = h
        .send(me, get(format!("http://0.0.0.0:{}/x", other.addr.port())))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["upstream"], "open");
    h.assert_no_panics();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explicit_proxy_absolute_form_and_connect() {
    let up = upstream("payments").await;
    let yaml = r#"
name: explicit
agents: { cgroup: agents/explicit }
defaults: { http: block }
rules:
  - { id: tunnel, http: { host: api.payments.example, method: CONNECT }, verdict: allow, reason: tunnels }
  - { id: read, http: { host: api.payments.example, method: GET, path: /v1/** }, verdict: allow, reason: reads }
  - { id: other, http: { host: blocked.example }, verdict: allow, reason: any HTTP }
  - { id: no-net, network: { cidr: 127.0.0.2/32 }, verdict: block, reason: not that network }
"#;
    let mut cfg = config();
    cfg.host_addresses.insert(
        "blocked.example".into(),
        vec![IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2))],
    );
    let h = start(cfg, parse(yaml), Limits::default()).await;
    let me = h.agent("agents/explicit", None, None);
    let port = up.addr.port();

    let req = Request::get(format!("http://api.payments.example:{port}/v1/balance"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let r = h.send(me, req).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["path"], "/v1/balance");
    assert_eq!(
        r.body["headers"]["host"],
        format!("api.payments.example:{port}")
    );
    let req = Request::get(format!("http://api.payments.example:{port}/admin"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    assert_eq!(h.send(me, req).await.status, StatusCode::FORBIDDEN);

    // The proxy connects on the agent's behalf: the agent's network rules apply.
    let req = Request::get(format!("http://blocked.example:{port}/x"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let r = h.send(me, req).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.body);
    assert_eq!(r.body["rule"], "explicit/no-net");
    let rec = h.record(r.body["decision_id"].as_str().unwrap());
    assert_eq!(rec.object.dest, format!("127.0.0.2:{port}"));
    let r = h
        .raw(
            me,
            format!("CONNECT blocked.example:{port} HTTP/1.1\r\nHost: blocked.example\r\n\r\n")
                .as_bytes(),
        )
        .await;
    assert!(r.starts_with("HTTP/1.1 403"), "{r}");

    // CONNECT, then plain HTTP inside the tunnel, each request decided.
    let mut s = h.connect(me).await;
    s.write_all(
        format!("CONNECT api.payments.example:{port} HTTP/1.1\r\nHost: api.payments.example:{port}\r\n\r\n")
            .as_bytes(),
    )
    .await
    .unwrap();
    let mut buf = [0u8; 1024];
    let n = s.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(s))
        .await
        .unwrap();
    tokio::spawn(conn);
    let get = |path: &str| {
        Request::get(path)
            .header("host", format!("api.payments.example:{port}"))
            .body(Full::new(Bytes::new()))
            .unwrap()
    };
    let r = Reply::read(tx.send_request(get("/v1/items")).await.unwrap()).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["path"], "/v1/items");
    tx.ready().await.unwrap();
    let r = Reply::read(tx.send_request(get("/admin")).await.unwrap()).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);

    // A CONNECT the policy does not allow.
    let r = h
        .raw(
            me,
            b"CONNECT elsewhere.example:443 HTTP/1.1\r\nHost: elsewhere.example:443\r\n\r\n",
        )
        .await;
    assert!(r.starts_with("HTTP/1.1 403"), "{r}");
    h.assert_no_panics();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_check_refuses_a_host_that_names_elsewhere() {
    let up = upstream("payments").await;
    let h = start(config(), examples(), Limits::default()).await;
    let me = h.agent("agents/refund-3", None, Some(up.addr));
    let mut req = refund(50);
    req.headers_mut()
        .insert("host", "elsewhere.example".parse().unwrap());
    let r = h.send(me, req).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(r.body["rule"], "builtin:host-check");
    assert!(
        r.body["reason"]
            .as_str()
            .unwrap()
            .starts_with("Host does not match the destination")
    );
    // An IP-literal Host must be the destination itself.
    let mut req = refund(50);
    req.headers_mut()
        .insert("host", "10.1.2.3".parse().unwrap());
    assert_eq!(h.send(me, req).await.status, StatusCode::FORBIDDEN);
    assert!(up.seen.lock().unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unidentified_connections_are_refused() {
    let h = start(config(), examples(), Limits::default()).await;
    let r = h
        .raw(
            next_ip(),
            b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await;
    assert!(r.starts_with("HTTP/1.1 403"), "{r}");
    assert!(r.contains("not an agent connection"), "{r}");
    let recs = h.records.lock().unwrap();
    assert!(recs[0].agent.is_none());
    assert!(recs[0].object.url.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_refused_is_502_and_hanging_is_504() {
    // A port nobody listens on.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    // An upstream that accepts and never answers.
    let hang = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hang_addr = hang.local_addr().unwrap();
    let hold = tokio::spawn(async move {
        let mut keep = Vec::new();
        while let Ok((s, _)) = hang.accept().await {
            keep.push(s);
        }
    });
    let cfg = ProxyConfig {
        upstream_timeout: Duration::from_millis(500),
        ..config()
    };
    let h = start(cfg, examples(), Limits::default()).await;
    let me = h.agent("agents/refund-4", None, Some(closed));
    let r = h.send(me, refund(50)).await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY, "{}", r.body);
    let me = h.agent("agents/refund-5", None, Some(hang_addr));
    let r = h.send(me, refund(50)).await;
    assert_eq!(r.status, StatusCode::GATEWAY_TIMEOUT, "{}", r.body);
    hold.abort();
    h.assert_no_panics();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_prior_knowledge_is_decided_like_http1() {
    let up = upstream("payments").await;
    let h = start(config(), examples(), Limits::default()).await;
    let me = h.agent("agents/refund-6", None, Some(up.addr));
    let (mut tx, _conn) = h.h2c(me).await;
    // The :authority names the destination's port, as a client's does for a non-default one.
    let authority = format!("api.payments.example:{}", up.addr.port());
    let mk = |amount: u64| {
        Request::post(format!("http://{authority}/v1/refunds"))
            .body(Full::new(Bytes::from(
                json!({"amount": amount}).to_string(),
            )))
            .unwrap()
    };
    let r = Reply::read(tx.send_request(mk(50)).await.unwrap()).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["headers"]["host"], authority.as_str());
    tx.ready().await.unwrap();
    let r = Reply::read(tx.send_request(mk(5000)).await.unwrap()).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    h.assert_no_panics();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_clients_get_clean_4xx_while_others_are_served() {
    let up = upstream("mcp").await;
    let cfg = ProxyConfig {
        header_timeout: Duration::from_secs(2),
        ..config()
    };
    let h = Arc::new(start(cfg, search_policy(up.addr), Limits::default()).await);
    let bad = h.agent("agents/bad", Some("searcher"), Some(up.addr));
    let good = h.agent("agents/good", Some("searcher"), Some(up.addr));

    // A well-behaved agent keeps being served while the hostile one hammers.
    let h2 = h.clone();
    let served = tokio::spawn(async move {
        let mut ok = 0;
        for i in 0..20 {
            let r = h2.send(good, tool_call(i, "list_tools", json!({}))).await;
            if r.status == StatusCode::OK && r.body["upstream"] == "mcp" {
                ok += 1;
            }
            // Pacing: requests keep coming while the hostile agent acts (the behaviour under
            // test), not a wait for anything.
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        ok
    });

    let slowloris = {
        let h = h.clone();
        tokio::spawn(async move {
            let mut s = h.connect(bad).await;
            let t = std::time::Instant::now();
            for b in
                b"GET /mcp HTTP/1.1\r\nHost: mcp.search.example\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaa"
            {
                if s.write_all(&[*b]).await.is_err() {
                    break;
                }
                // Slowloris: one byte every 500 ms is the attack under test; the header
                // timeout must cut it (bounded here at 8 s).
                tokio::time::sleep(Duration::from_millis(500)).await;
                if t.elapsed() > Duration::from_secs(8) {
                    break;
                }
            }
            let rest = read_all(&mut s, Duration::from_secs(2)).await;
            (t.elapsed(), rest)
        })
    };

    let r = h
        .raw(bad, b"GET /mcp HTTP/1.0\r\nConnection: close\r\n\r\n")
        .await;
    assert!(r.starts_with("HTTP/1.0 400"), "no Host: {r}");

    let r = h.raw(bad, b"GARBAGE\r\n\r\n").await;
    assert!(r.starts_with("HTTP/1.1 400"), "malformed request line: {r}");

    let big = format!(
        "GET /mcp HTTP/1.1\r\nHost: mcp.search.example\r\nX-Big: {}\r\n\r\n",
        "a".repeat(64 << 10)
    );
    let r = h.raw(bad, big.as_bytes()).await;
    assert!(r.starts_with("HTTP/1.1 431"), "64 KiB header: {r}");

    let smuggle = "POST /mcp HTTP/1.1\r\nHost: mcp.search.example\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGPOST /admin/x HTTP/1.1\r\nHost: mcp.search.example\r\n\r\n";
    let r = h.raw(bad, smuggle.as_bytes()).await;
    assert!(r.starts_with("HTTP/1.1 400"), "CL+TE: {r}");
    assert!(!r.contains("\"upstream\""), "nothing forwarded: {r}");
    let r = h
        .raw(bad, b"POST /mcp HTTP/1.1\r\nHost: mcp.search.example\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n")
        .await;
    assert!(r.starts_with("HTTP/1.1 400"), "TE tricks: {r}");
    let r = h
        .raw(bad, b"POST /mcp HTTP/1.1\r\nHost: mcp.search.example\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}")
        .await;
    assert!(r.starts_with("HTTP/1.1 400"), "duplicate CL: {r}");

    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let mut req = format!(
        "POST /mcp HTTP/1.1\r\nHost: mcp.search.example\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        deep.len()
    );
    req.push_str(&deep);
    let cfg_big = h.raw(bad, req.as_bytes()).await;
    // The search policy limits bodies to 4 KiB: refused before any parsing.
    assert!(
        cfg_big.starts_with("HTTP/1.1 413"),
        "deep JSON over the limit: {cfg_big}"
    );
    let deep = format!("{}{}", "[".repeat(2000), "]".repeat(2000));
    let req = format!(
        "POST /mcp HTTP/1.1\r\nHost: mcp.search.example\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{deep}",
        deep.len()
    );
    let r = h.raw(bad, req.as_bytes()).await;
    assert!(
        r.starts_with("HTTP/1.1 400"),
        "deep JSON on an MCP endpoint: {r}"
    );
    assert!(r.contains("-32700"), "{r}");
    let r = h
        .raw(bad, b"POST /mcp HTTP/1.1\r\nHost: mcp.search.example\r\nContent-Length: 5\r\nConnection: close\r\n\r\n{nope")
        .await;
    assert!(
        r.starts_with("HTTP/1.1 400"),
        "invalid JSON on an MCP endpoint: {r}"
    );

    let body = "x".repeat(5000);
    let req = format!(
        "POST /mcp HTTP/1.1\r\nHost: mcp.search.example\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n{:x}\r\n{body}\r\n0\r\n\r\n",
        body.len()
    );
    let r = h.raw(bad, req.as_bytes()).await;
    assert!(
        r.starts_with("HTTP/1.1 413"),
        "chunked body over max_body: {r}"
    );

    let r = h
        .raw(
            bad,
            b"GET /v1/../admin/x HTTP/1.1\r\nHost: mcp.search.example\r\n\r\n",
        )
        .await;
    assert!(r.starts_with("HTTP/1.1 400"), "dot segments: {r}");

    let (took, rest) = slowloris.await.unwrap();
    assert!(
        took < Duration::from_secs(6),
        "slowloris closed by the header timeout, took {took:?}: {rest}"
    );
    assert_eq!(
        served.await.unwrap(),
        20,
        "the well-behaved agent was served"
    );
    h.assert_no_panics();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_per_agent_are_limited() {
    let up = upstream("payments").await;
    let cfg = ProxyConfig {
        max_conns_per_agent: 2,
        ..config()
    };
    let h = start(cfg, examples(), Limits::default()).await;
    let me = h.agent("agents/refund-7", None, Some(up.addr));
    let _a = h.connect(me).await;
    let _b = h.connect(me).await;
    // The proxy takes an agent's slot when it accepts: wait until it holds both.
    until("the proxy to count the agent's two connections", || {
        h.proxy.conns.lock().unwrap().values().sum::<usize>() == 2
    })
    .await;
    let r = h.raw(me, b"").await;
    assert!(r.starts_with("HTTP/1.1 503"), "{r}");
    assert!(r.contains("too many connections"));
    // Another agent is not affected, nor another root of the same label (red team round 34:
    // the slots were kept by the agent's name, which agents of one label share).
    let other = h.agent("agents/refund-8", None, Some(up.addr));
    assert_eq!(h.send(other, refund(50)).await.status, StatusCode::OK);
    let labelled = h.agent("agents/refund-20", Some("team"), Some(up.addr));
    let _c = h.connect(labelled).await;
    let _d = h.connect(labelled).await;
    until(
        "the proxy to count the labelled agent's two connections",
        || h.proxy.conns.lock().unwrap().values().sum::<usize>() == 4,
    )
    .await;
    let sibling = h.agent("agents/refund-21", Some("team"), Some(up.addr));
    assert_eq!(h.send(sibling, refund(50)).await.status, StatusCode::OK);
}

/// Red team round 28: an agent's bodies the proxy holds at once are bounded (its HTTP/2 streams
/// of unfinished bodies took the daemon's memory); over the budget → 503 at once, another agent
/// is served, and the room comes back when the body goes.
#[tokio::test]
async fn bodies_held_at_once_are_bounded_per_agent() {
    let up = upstream("payments").await;
    let cfg = ProxyConfig {
        body_budget_per_agent: 3 << 10,
        ..config()
    };
    let h = start(cfg, examples(), Limits::default()).await;
    let me = h.agent("agents/refund-7", None, Some(up.addr));
    let port = h.redirected_port(me).unwrap();
    // A body of 2 KiB declared, 10 bytes sent: the proxy holds its room while it waits.
    let mut slow = h.connect(me).await;
    let head = format!(
        "POST /v1/refunds HTTP/1.1\r\nHost: api.payments.example:{port}\r\n\
         Content-Type: application/json\r\nContent-Length: 2048\r\n\r\n{{\"amount\": "
    );
    slow.write_all(head.as_bytes()).await.unwrap();
    until("the proxy to hold the slow body's room", || {
        h.proxy.bodies.held() >= 2 << 10
    })
    .await;
    let second = format!(
        "POST /v1/refunds HTTP/1.1\r\nHost: api.payments.example\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: 2048\r\n\r\n{}",
        " ".repeat(2048)
    );
    let r = h.raw(me, second.as_bytes()).await;
    assert!(r.starts_with("HTTP/1.1 503"), "{r}");
    assert!(r.contains("too many bodies"), "{r}");
    // Another agent has its own budget.
    let other = h.agent("agents/refund-8", None, Some(up.addr));
    assert_eq!(h.send(other, refund(50)).await.status, StatusCode::OK);
    // The slow client leaves: its room comes back, and the agent is served again.
    drop(slow);
    until("the slow body's room to come back", || {
        h.proxy.bodies.held() == 0
    })
    .await;
    assert_eq!(h.send(me, refund(50)).await.status, StatusCode::OK);
    h.assert_no_panics();
}

#[test]
fn max_body_is_validated_with_its_location() {
    let bad = "name: p\nagents: { label: x }\nproxy: { max_body: 12parsecs }\n";
    let err = policy::parse(&[("p.yaml".into(), bad.into())])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("p.yaml:3:20: proxy.max_body: bad size `12parsecs`"),
        "{err}"
    );
    let set = parse(
        "name: a\nagents: { label: x }\nproxy: { max_body: 256KiB }\n---\nname: b\nagents: { label: x }\nproxy: { max_body: 1MiB }\n",
    );
    let engine = Engine::new(set, 1);
    let view = engine.agent(&AgentRef {
        name: "x".into(),
        cgroup: "x".into(),
        label: Some("x".into()),
        pod: None,
    });
    assert_eq!(
        view.max_body(),
        Some(256 << 10),
        "the smallest limit applies"
    );
}

fn client_of(h: &Harness, ip: IpAddr) -> Client {
    h.identify.0.lock().unwrap()[&ip].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preauthorize_tools_without_a_server_counts_throttles() {
    let up = upstream("mcp").await;
    let h = start(config(), search_policy(up.addr), Limits::default()).await;
    let me = h.agent("agents/p1", Some("searcher"), None);
    let c = client_of(&h, me);
    let tool = |name: &str| DecideAction::Tool {
        tool: name.into(),
        arguments: json!({"cmd": "id"}),
        server: None,
    };
    let d = h.proxy.preauthorize(&c, tool("run_shell"));
    assert_eq!(
        (d.verdict.as_ref(), d.allowed, d.rule.as_str()),
        ("block", false, "search/no-shell")
    );
    let rec = h.record(&d.decision_id);
    assert_eq!(
        (rec.source, rec.object.mcp_tool.as_str()),
        (Source::Api, "run_shell")
    );
    let d = h.proxy.preauthorize(&c, tool("list_tools"));
    assert_eq!(
        (d.verdict.as_ref(), d.allowed, d.rule.as_str()),
        ("allow", true, "default")
    );
    for _ in 0..3 {
        assert!(h.proxy.preauthorize(&c, tool("web_search")).allowed);
    }
    let d = h.proxy.preauthorize(&c, tool("web_search"));
    assert_eq!((d.verdict.as_ref(), d.allowed), ("throttle", false));
    assert!(d.retry_after_secs.unwrap() >= 1);
    let d = h.proxy.preauthorize(&c, tool("fetch_url"));
    assert_eq!(
        d.sandbox_upstream.as_deref(),
        Some(format!("http://127.0.0.1:{}/sandbox/", up.addr.port()).as_str())
    );
    // Malformed actions are refused, not decided.
    let bad = DecideAction::Http {
        http: HttpAction {
            method: "GET".into(),
            url: "ftp://x/".into(),
            headers: Default::default(),
            body: None,
            body_base64: None,
        },
    };
    let d = h.proxy.preauthorize(&c, bad);
    assert_eq!(
        (d.verdict.as_ref(), d.rule.as_str()),
        ("block", "builtin:request")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reserved_path_decides_for_the_connecting_agent() {
    let up = upstream("mcp").await;
    let h = start(config(), search_policy(up.addr), Limits::default()).await;
    let me = h.agent("agents/p2", Some("searcher"), Some(up.addr));
    let ask = |action: Value| {
        Request::post(DECIDE_PATH)
            .header("host", "127.0.0.1:15001")
            .body(Full::new(Bytes::from(action.to_string())))
            .unwrap()
    };
    let r = h
        .send(
            me,
            ask(json!({"tool": "run_shell", "arguments": {}, "server": "http://mcp.search.example/mcp"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["verdict"], "block");
    assert_eq!(r.body["allowed"], false);
    assert_eq!(r.body["rule"], "search/no-shell");
    let rec = h.record(r.body["decision_id"].as_str().unwrap());
    assert_eq!(rec.object.url, "http://mcp.search.example/mcp");
    assert_eq!(rec.agent.unwrap().name, "searcher");
    // Nothing went upstream.
    assert!(up.seen.lock().unwrap().is_empty());
    let r = h.send(me, ask(json!({"nonsense": 1}))).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    // Without an identity, no decision.
    let r = h
        .raw(
            next_ip(),
            format!("POST {DECIDE_PATH} HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{{}}").as_bytes(),
        )
        .await;
    assert!(r.starts_with("HTTP/1.1 403"), "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_approved_preauthorization_lets_the_retry_through() {
    let up = upstream("payments").await;
    let h = start(config(), examples(), Limits::default()).await;
    let me = h.agent("agents/refund-9", None, Some(up.addr));
    let c = client_of(&h, me);
    // The port the agent's connections go to (a grant is for one port of the host).
    let url = format!("http://api.payments.example:{}/v1/refunds", up.addr.port());
    let action = || DecideAction::Http {
        http: HttpAction {
            method: "POST".into(),
            url: url.clone(),
            headers: Default::default(),
            body: Some(json!({"amount": 500, "currency": "usd", "customer_age_days": 400})),
            body_base64: None,
        },
    };
    let d = h.proxy.preauthorize(&c, action());
    assert_eq!((d.verdict.as_ref(), d.allowed), ("escalate", false));
    let id = d.approval_id.clone().unwrap();
    assert_eq!(
        h.proxy.preauthorize(&c, action()).approval_id.as_deref(),
        Some(id.as_str()),
        "asking again reuses the pending approval"
    );
    assert_eq!(h.approvals.list().len(), 1);
    h.approvals
        .approve(&id, "alice", Duration::from_secs(60))
        .unwrap();
    let d = h.proxy.preauthorize(&c, action());
    assert!(d.allowed, "{d:?}");
    assert_eq!(h.record(&d.decision_id).outcome, "granted");
    // The proxied request for the same action passes without being held.
    let r = h.send(me, refund(500)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert!(h.approvals.list().is_empty());
    // A different amount is a different action.
    deny_when_held(&h.approvals);
    assert_eq!(h.send(me, refund(501)).await.status, StatusCode::FORBIDDEN);
}

/// A grant covers the request it was approved for and nothing the upstream would read
/// otherwise: another query, body or value of a header a rule reads is held for its own
/// approval, even where no rule reads the body (the grant's key then takes the body's bytes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grant_covers_only_the_request_it_was_approved_for() {
    let up = upstream("bank").await;
    let policy = parse(
        r#"
name: bank
agents: { cgroup: agents/bank-* }
defaults: { http: block }
rules:
  - id: transfer
    http:
      host: api.payments.example
      method: POST
      path: /v1/transfers
      headers: { x-account: "acct-*" }
    verdict: escalate
    escalate: { timeout: 10m, on_timeout: block }
    reason: Transfers need a human.
"#,
    );
    let h = start(config(), policy, Limits::default()).await;
    let me = h.agent("agents/bank-1", None, Some(up.addr));
    let c = client_of(&h, me);
    // The upstream's port, which the agent's connections go to (the Host names it).
    let port = up.addr.port();
    let approve_body = |url: String, query: &str, body: Value| {
        let d = h.proxy.preauthorize(
            &c,
            DecideAction::Http {
                http: HttpAction {
                    method: "POST".into(),
                    url,
                    headers: [("x-account".to_owned(), "acct-1".to_owned())].into(),
                    body: Some(body),
                    body_base64: None,
                },
            },
        );
        assert_eq!((d.verdict.as_ref(), d.allowed), ("escalate", false));
        let pending = h.approvals.list();
        assert_eq!(
            pending[0].object.detail.get("query").map(String::as_str),
            Some(query),
            "the approver sees the query: {pending:?}"
        );
        h.approvals
            .approve(&d.approval_id.unwrap(), "alice", Duration::from_secs(60))
            .unwrap();
    };
    let approve = |url: String, query: &str| approve_body(url, query, json!({"amount": 5}));
    approve(
        format!("http://api.payments.example:{port}/v1/transfers?to=alice"),
        "to=alice",
    );
    // Approved at another port of the host, or by its https:// URL (port 443): another
    // service, never this one (red team round 7).
    approve(
        "http://api.payments.example:8443/v1/transfers?to=carol".into(),
        "to=carol",
    );
    approve(
        "https://api.payments.example/v1/transfers?to=dave".into(),
        "to=dave",
    );
    let transfer = |query: &str, account: &str, body: &str| {
        Request::post(format!("/v1/transfers{query}"))
            .header("host", "api.payments.example")
            .header("content-type", "application/json")
            .header("x-account", account)
            .header("user-agent", "any client")
            .body(Full::new(Bytes::from(body.to_owned())))
            .unwrap()
    };
    // The same action, as a client writes it (other spacing, headers no rule reads): granted.
    let r = h
        .send(me, transfer("?to=alice", "acct-1", r#"{ "amount": 5 }"#))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert!(h.approvals.list().is_empty());
    // A body that looks like an MCP `tools/call` on a host with no MCP rules is keyed on all
    // of it, as any other body: approving 5 does not grant 5000 (red team round 15). Control:
    // the same body, with another JSON-RPC id, is granted.
    approve_body(
        format!("http://api.payments.example:{port}/v1/transfers?to=bob"),
        "to=bob",
        json!({"amount": 5, "method": "tools/call", "params": {"name": "x"}, "id": 1}),
    );
    let r = h
        .send(
            me,
            transfer(
                "?to=bob",
                "acct-1",
                r#"{"amount": 5, "method": "tools/call", "params": {"name": "x"}, "id": 7}"#,
            ),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    // A number past f64's precision: approving one does not grant those it rounds to alike,
    // nor itself (red team round 31: no spelling of it is the value's own); a fraction is
    // granted in its own spelling only.
    approve_body(
        format!("http://api.payments.example:{port}/v1/transfers?to=frank"),
        "to=frank",
        json!({"amount": 12.5}),
    );
    approve_body(
        format!("http://api.payments.example:{port}/v1/transfers?to=erin"),
        "to=erin",
        serde_json::from_str(r#"{"to_account": 18446744073709551616, "amount": 5}"#).unwrap(),
    );
    let r = h
        .send(me, transfer("?to=frank", "acct-1", r#"{ "amount": 12.5 }"#))
        .await;
    assert_eq!(
        r.status,
        StatusCode::OK,
        "the approved fraction: {}",
        r.body
    );
    // Anything else is held for its own approval (denied here): nothing reaches the upstream.
    let forwarded = up.seen.lock().unwrap().len();
    for (query, account, body, what) in [
        ("?to=mallory", "acct-1", r#"{"amount": 5}"#, "another query"),
        ("", "acct-1", r#"{"amount": 5}"#, "no query"),
        (
            "?to=alice",
            "acct-2",
            r#"{"amount": 5}"#,
            "another value of a header a rule reads",
        ),
        ("?to=alice", "acct-1", r#"{"amount": 5000}"#, "another body"),
        (
            "?to=alice",
            "acct-1",
            r#"{"amount": 5000, "amount": 5}"#,
            "a duplicate key that one parser reads as the approved body",
        ),
        ("?to=alice", "acct-1", "amount=5", "a body that is not JSON"),
        (
            "?to=bob",
            "acct-2",
            r#"{"amount": 5000, "method": "tools/call", "params": {"name": "x"}}"#,
            "a body shaped like the approved MCP call, with another amount and header",
        ),
        (
            "?to=bob",
            "acct-1",
            r#"{"amount": 5000, "method": "tools/call", "params": {"name": "x"}, "id": 2}"#,
            "a body shaped like the approved MCP call, with another amount",
        ),
        (
            "?to=carol",
            "acct-1",
            r#"{"amount": 5}"#,
            "approved at another port",
        ),
        (
            "?to=dave",
            "acct-1",
            r#"{"amount": 5}"#,
            "approved at https's port",
        ),
        (
            "?to=erin",
            "acct-1",
            r#"{"to_account": 18446744073709551617, "amount": 5}"#,
            "a number the approved one equals as an f64",
        ),
        (
            "?to=erin",
            "acct-1",
            r#"{"to_account": 18446744073709551616, "amount": 5}"#,
            "the approved number past f64's precision: never granted",
        ),
        (
            "?to=frank",
            "acct-1",
            r#"{"amount": 12.5000000000000001}"#,
            "a decimal the approved one equals as an f64",
        ),
        (
            "?to=frank",
            "acct-1",
            r#"{"amount": 12.50}"#,
            "the approved fraction in another spelling",
        ),
        (
            "?to=erin",
            "acct-1",
            r#"{"to_account": 18446744073709552000, "amount": 5}"#,
            "another number the approved one equals as an f64",
        ),
    ] {
        let denier = deny_when_held(&h.approvals);
        let r = h.send(me, transfer(query, account, body)).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{what}: {}", r.body);
        denier.await.unwrap();
    }
    assert_eq!(up.seen.lock().unwrap().len(), forwarded);
}

/// An MCP grant covers the call at the server it was approved for (or at any server, when
/// approved with none named), and never a batch: a batch of more than one message is refused
/// rather than held (red team round 6).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_mcp_grant_covers_its_server_and_never_a_batch() {
    let up = upstream("mcp").await;
    let policy = parse(
        r#"
name: ops
agents: { cgroup: agents/ops-* }
rules:
  - id: deploys
    http: { host: "*.example", path: /mcp, mcp: { tool: deploy } }
    verdict: escalate
    escalate: { timeout: 10m, on_timeout: block }
    reason: deploys need a human
"#,
    );
    let h = start(config(), policy, Limits::default()).await;
    let me = h.agent("agents/ops-1", None, Some(up.addr));
    let c = client_of(&h, me);
    let approve = |target: &str, server: Option<&str>| {
        let d = h.proxy.preauthorize(
            &c,
            DecideAction::Tool {
                tool: "deploy".into(),
                arguments: json!({"env": target}),
                server: server.map(Into::into),
            },
        );
        assert_eq!(d.verdict, "escalate", "{d:?}");
        h.approvals
            .approve(&d.approval_id.unwrap(), "alice", Duration::from_secs(60))
            .unwrap();
    };
    let call_at = |host: &str, body: Value| {
        Request::post("/mcp")
            .header("host", host)
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .body(Full::new(Bytes::from(body.to_string())))
            .unwrap()
    };
    let deploy = |id: u64, env: &str| {
        json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
               "params": {"name": "deploy", "arguments": {"env": env}}})
    };
    let server = format!("http://mcp.search.example:{}/mcp", up.addr.port());
    approve("staging", Some(&server));
    // The same call approved at another port of the server: another service.
    approve("canary", Some("http://mcp.search.example:8443/mcp"));
    approve("qa", None);
    let forwarded = || up.seen.lock().unwrap().len();
    // At the server it was approved for: granted.
    let before = forwarded();
    let r = h
        .send(me, call_at("mcp.search.example", deploy(1, "staging")))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(forwarded(), before + 1);
    // Approved with no server named: at any server.
    let r = h
        .send(me, call_at("api.payments.example", deploy(2, "qa")))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    // At another server: held (denied here).
    let denier = deny_when_held(&h.approvals);
    let before = forwarded();
    let r = h
        .send(me, call_at("api.payments.example", deploy(3, "staging")))
        .await;
    assert!(r.body.to_string().contains("denied by bob"), "{}", r.body);
    denier.await.unwrap();
    // At the server's other port than the one approved: held too.
    let denier = deny_when_held(&h.approvals);
    let r = h
        .send(me, call_at("mcp.search.example", deploy(6, "canary")))
        .await;
    assert!(r.body.to_string().contains("denied by bob"), "{}", r.body);
    denier.await.unwrap();
    // A batch with the granted call and another: refused, not held, not forwarded.
    let r = h
        .send(
            me,
            call_at(
                "mcp.search.example",
                json!([deploy(4, "staging"), deploy(5, "production")]),
            ),
        )
        .await;
    assert!(r.body.to_string().contains("JSON-RPC batch"), "{}", r.body);
    assert!(h.approvals.list().is_empty());
    assert_eq!(forwarded(), before);
    // Red team round 31's review: a call with a fraction, approved with no server named,
    // grants itself and not another call (its key once lost the tool and its arguments);
    // asked again while it is pending, it is the same approval.
    let ask = |arguments: Value| {
        h.proxy.preauthorize(
            &c,
            DecideAction::Tool {
                tool: "deploy".into(),
                arguments,
                server: None,
            },
        )
    };
    let first = ask(json!({"env": "qa", "share": 0.5}));
    let again = ask(json!({"env": "qa", "share": 0.5}));
    assert_eq!(first.approval_id, again.approval_id, "one pending approval");
    h.approvals
        .approve(
            &first.approval_id.unwrap(),
            "alice",
            Duration::from_secs(60),
        )
        .unwrap();
    let other = ask(json!({"env": "production", "share": 1.5}));
    assert_eq!((other.verdict.as_ref(), other.allowed), ("escalate", false));
    h.approvals
        .deny(&other.approval_id.unwrap(), "bob", "test")
        .unwrap();
    let same = ask(json!({"env": "qa", "share": 0.5}));
    assert!(same.allowed, "{same:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_closed_but_held_requests_are_not() {
    let up = upstream("mcp").await;
    let cfg = ProxyConfig {
        idle_timeout: Duration::from_millis(300),
        ..config()
    };
    let h = start(cfg, search_policy(up.addr), Limits::default()).await;
    let me = h.agent("agents/idle", Some("searcher"), Some(up.addr));
    // HTTP/2 (HTTP/1 keep-alive connections also end at the header timeout).
    let (mut tx, conn) = h.h2c(me).await;
    let url = format!("http://mcp.search.example:{}/mcp", up.addr.port());
    let req = |tool: &str| {
        Request::post(&url)
            .body(Full::new(Bytes::from(
                json!({"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":tool}})
                    .to_string(),
            )))
            .unwrap()
    };
    // A request held for longer than the idle timeout is not cut off...
    let approvals = h.approvals.clone();
    tokio::spawn(async move {
        until("the request to be held for approval", || {
            approvals.list().len() == 1
        })
        .await;
        // Held longer than the 300 ms idle timeout: the behaviour under test, not a wait.
        tokio::time::sleep(Duration::from_millis(800)).await;
        let id = approvals.list()[0].id.clone();
        approvals.approve(&id, "alice", Duration::ZERO).unwrap();
    });
    let r = Reply::read(tx.send_request(req("slow")).await.unwrap()).await;
    assert_eq!(r.body["upstream"], "mcp", "{}", r.body);
    // ...and an idle connection is closed.
    tokio::time::timeout(Duration::from_secs(3), conn)
        .await
        .expect("the idle connection was closed")
        .unwrap()
        .unwrap();
    h.assert_no_panics();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deep_json_to_an_mcp_endpoint_is_400_and_upgrades_are_501() {
    let up = upstream("mcp").await;
    let h = start(config(), examples(), Limits::default()).await;
    let me = h.agent("agents/r1", Some("research-agent"), Some(up.addr));
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let req = format!(
        "POST /mcp HTTP/1.1\r\nHost: mcp.search.example\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{deep}",
        deep.len()
    );
    let r = h.raw(me, req.as_bytes()).await;
    assert!(r.starts_with("HTTP/1.1 400"), "100k-deep JSON: {r}");
    assert!(r.contains("recursion limit"), "{r}");
    // Not an MCP endpoint: the body conditions are false, the request is decided without it.
    let req = format!(
        "POST /other HTTP/1.1\r\nHost: mcp.search.example\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{deep}",
        deep.len()
    );
    let r = h.raw(me, req.as_bytes()).await;
    assert!(r.starts_with("HTTP/1.1 200"), "{}", &r[..r.len().min(200)]);
    let r = h
        .raw(
            me,
            b"GET /ws HTTP/1.1\r\nHost: mcp.search.example\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
        )
        .await;
    assert!(r.starts_with("HTTP/1.1 501"), "{r}");
    h.assert_no_panics();
}

// ---------------------------------------------------------------------------------------------
// TLS: decided on the server name and spliced, or intercepted

use rustls::pki_types::{CertificateDer, ServerName, pem::PemObject};

/// A fatal `access_denied` alert: how the proxy refuses TLS.
const ACCESS_DENIED: &[u8] = &[0x15, 3, 3, 0, 2, 2, 49];

/// A CA for the test upstreams (a node CA serves well as one).
struct TestCa {
    ca: tls::NodeCa,
    _dir: tempfile::TempDir,
}

fn test_ca() -> TestCa {
    let dir = tempfile::tempdir().unwrap();
    TestCa {
        ca: tls::NodeCa::load_or_create(dir.path()).unwrap(),
        _dir: dir,
    }
}

/// A TLS upstream for `host`, its certificate from `ca`.
async fn tls_upstream_for(name: &'static str, ca: &TestCa, host: &str) -> Upstream {
    tls_upstream(name, ca.ca.server_config_for(host).unwrap()).await
}

fn tls_config(upstream_ca: &TestCa, ca_dir: Option<&std::path::Path>) -> ProxyConfig {
    let mut cfg = config();
    for h in ["held.example", "sandboxed.example"] {
        cfg.host_addresses
            .insert(h.into(), vec![IpAddr::V4(Ipv4Addr::LOCALHOST)]);
    }
    cfg.upstream_ca = Some(upstream_ca.ca.cert_path().to_owned());
    cfg.ca_dir = ca_dir.map(ToOwned::to_owned);
    cfg
}

/// A TLS client configuration trusting only the certificates in the PEM file `roots`.
fn trusting(roots: &std::path::Path) -> Arc<rustls::ClientConfig> {
    let mut store = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(roots).unwrap() {
        store.add(cert.unwrap()).unwrap();
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(store)
    .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

/// A TLS handshake for `name` over `stream`.
async fn handshake<S>(
    config: &Arc<rustls::ClientConfig>,
    name: &str,
    stream: S,
) -> std::io::Result<tokio_rustls::client::TlsStream<S>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let name = ServerName::try_from(name.to_owned()).unwrap();
    let connect = tokio_rustls::TlsConnector::from(config.clone()).connect(name, stream);
    tokio::time::timeout(Duration::from_secs(20), connect)
        .await
        .expect("the handshake ended in time")
}

/// HTTP/1.1 over an established stream.
async fn http1<S>(stream: S) -> hyper::client::conn::http1::SendRequest<Full<Bytes>>
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let (tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    tx
}

async fn get(tx: &mut hyper::client::conn::http1::SendRequest<Full<Bytes>>, host: &str) -> Reply {
    tx.ready().await.unwrap();
    let req = Request::get("/v1/balance")
        .header("host", host)
        .body(Full::new(Bytes::new()))
        .unwrap();
    Reply::read(tx.send_request(req).await.unwrap()).await
}

/// `CONNECT authority` through the proxy; the stream once the tunnel is up.
async fn tunnel(h: &Harness, from: IpAddr, authority: &str) -> TcpStream {
    let mut s = h.connect(from).await;
    s.write_all(format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        assert_eq!(s.read(&mut b).await.unwrap(), 1, "CONNECT answered");
        head.push(b[0]);
    }
    let head = String::from_utf8_lossy(&head);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    s
}

/// What a rustls client sends first for `name`, with or without SNI.
fn client_hello(name: &str, sni: bool) -> Vec<u8> {
    let mut config = (*trusting(test_ca().ca.cert_path())).clone();
    config.enable_sni = sni;
    let config = Arc::new(config);
    let name = ServerName::try_from(name.to_owned()).unwrap();
    let mut conn = rustls::ClientConnection::new(config, name).unwrap();
    let mut out = Vec::new();
    conn.write_tls(&mut out).unwrap();
    out
}

impl Harness {
    /// The last record that `f` picks.
    fn last_record(&self, f: impl Fn(&Record) -> bool) -> Record {
        self.records
            .lock()
            .unwrap()
            .iter()
            .rev()
            .find(|r| f(r))
            .cloned()
            .expect("a matching record")
    }
}

const TLS_POLICY: &str = r#"
name: tls
agents: { cgroup: agents/tls-* }
defaults: { http: block }
rules:
  - id: payments
    http: { host: api.payments.example, method: CONNECT }
    verdict: allow
    reason: TLS to the payments API.
  - id: held
    http: { host: held.example, method: CONNECT }
    verdict: escalate
    escalate: { timeout: 20s }
    reason: Needs a human.
  - id: sandboxed
    http: { host: sandboxed.example, method: CONNECT }
    verdict: sandbox
    sandbox: { upstream: "http://127.0.0.1:9/" }
    reason: Sandboxed.
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transparent_tls_is_decided_on_the_server_name_and_spliced() {
    let up_ca = test_ca();
    let up = tls_upstream_for("payments", &up_ca, "api.payments.example").await;
    // Interception is available, but no policy asks for it.
    let node = tempfile::tempdir().unwrap();
    let h = start(
        tls_config(&up_ca, Some(node.path())),
        parse(TLS_POLICY),
        Limits::default(),
    )
    .await;
    let me = h.agent("agents/tls-1", None, Some(up.addr));
    let port = up.addr.port();
    // The client trusts only the upstream's CA: a certificate from the node CA would fail.
    let trust = trusting(up_ca.ca.cert_path());

    let tls = handshake(&trust, "api.payments.example", h.connect(me).await)
        .await
        .expect("spliced to the upstream");
    let mut tx = http1(tls).await;
    let r = get(&mut tx, "api.payments.example").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(
        (&r.body["tls"], &r.body["path"]),
        (&json!(true), &json!("/v1/balance"))
    );
    let rec = h.last_record(|r| r.rule == "tls/payments");
    assert_eq!(
        (
            rec.outcome.as_ref(),
            rec.object.method.as_str(),
            rec.object.url.as_str()
        ),
        (
            "allow",
            "CONNECT",
            format!("https://api.payments.example:{port}").as_str()
        )
    );
    assert_eq!(rec.object.detail["tls"], "spliced");
    assert_eq!(up.accepted.load(Ordering::Relaxed), 1);

    // No rule allows this host: the default blocks it before any byte reaches the upstream.
    let err = handshake(&trust, "mcp.search.example", h.connect(me).await)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("AccessDenied"), "{err}");
    let rec = h.last_record(|r| r.object.url.contains("mcp.search.example"));
    assert_eq!(
        (rec.outcome.as_ref(), rec.rule.as_str(), rec.denied),
        ("block", "default", true)
    );
    assert_eq!(rec.object.url, format!("https://mcp.search.example:{port}"));
    assert_eq!(up.accepted.load(Ordering::Relaxed), 1);

    // A server name that does not resolve to where the agent connected: the host check.
    let err = handshake(&trust, "elsewhere.example", h.connect(me).await)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("AccessDenied"), "{err}");
    let rec = h.last_record(|r| r.object.url.contains("elsewhere.example"));
    assert_eq!(rec.rule, "builtin:host-check");
    assert!(
        rec.reason.starts_with("SNI does not match the destination"),
        "{}",
        rec.reason
    );
    assert_eq!(up.accepted.load(Ordering::Relaxed), 1);
    h.assert_no_panics();
}

/// F1 (red team round 5): a spliced stream is only its server name to the proxy, and a server
/// that is not TLS reads a crafted ClientHello's bytes as requests the proxy never decides.
/// TLS to a host whose rules look inside requests (here a method-less allow with a DELETE
/// block) is refused, transparently and inside a CONNECT tunnel, before any byte reaches the
/// upstream. Control: a host whose rules are host-level only (`method: CONNECT`) is spliced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_to_a_host_whose_rules_look_inside_requests_is_not_spliced() {
    const POLICY: &str = r#"
name: tls
agents: { cgroup: agents/tls-* }
defaults: { http: block }
rules:
  - id: payments
    http: { host: api.payments.example, method: CONNECT }
    verdict: allow
    reason: TLS to the payments API.
  - id: search
    http: { host: mcp.search.example }
    verdict: allow
    reason: The host.
  - id: search-no-delete
    http: { host: mcp.search.example, method: DELETE }
    verdict: block
    reason: No deletes.
"#;
    let up_ca = test_ca();
    let up = tls_upstream_for("payments", &up_ca, "api.payments.example").await;
    let h = start(tls_config(&up_ca, None), parse(POLICY), Limits::default()).await;
    let me = h.agent("agents/tls-1", None, Some(up.addr));
    let explicit = h.agent("agents/tls-2", None, None);
    let trust = trusting(up_ca.ca.cert_path());
    let authority = format!("mcp.search.example:{}", up.addr.port());

    let err = handshake(&trust, "mcp.search.example", h.connect(me).await)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("AccessDenied"), "{err}");
    let rec = h.last_record(|r| r.object.url.contains("mcp.search.example"));
    assert_eq!((rec.rule.as_str(), rec.denied), ("builtin:tls", true));
    assert!(
        rec.reason.contains("tls/search-no-delete"),
        "{}",
        rec.reason
    );
    // The same inside a CONNECT tunnel (the CONNECT itself is allowed at host level).
    let err = handshake(
        &trust,
        "mcp.search.example",
        tunnel(&h, explicit, &authority).await,
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("AccessDenied"), "{err}");
    assert_eq!(up.accepted.load(Ordering::Relaxed), 0, "never spliced");

    // Control: host-level rules only.
    let tls = handshake(&trust, "api.payments.example", h.connect(me).await)
        .await
        .expect("spliced to the upstream");
    let r = get(&mut http1(tls).await, "api.payments.example").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(up.accepted.load(Ordering::Relaxed), 1);
    h.assert_no_panics();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_spliced_connections_are_closed() {
    let up_ca = test_ca();
    let up = tls_upstream_for("payments", &up_ca, "api.payments.example").await;
    let cfg = ProxyConfig {
        idle_timeout: Duration::from_millis(500),
        ..tls_config(&up_ca, None)
    };
    let h = start(cfg, parse(TLS_POLICY), Limits::default()).await;
    let me = h.agent("agents/tls-5", None, Some(up.addr));
    let tls = handshake(
        &trusting(up_ca.ca.cert_path()),
        "api.payments.example",
        h.connect(me).await,
    )
    .await
    .unwrap();
    let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    let conn = tokio::spawn(conn);
    assert_eq!(
        get(&mut tx, "api.payments.example").await.status,
        StatusCode::OK
    );
    let t = std::time::Instant::now();
    let _ = tokio::time::timeout(Duration::from_secs(5), conn)
        .await
        .expect("the idle connection was closed");
    assert!(
        t.elapsed() >= Duration::from_millis(300),
        "{:?}",
        t.elapsed()
    );
    h.assert_no_panics();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn escalated_tls_is_held_and_a_sandbox_verdict_blocks() {
    let up_ca = test_ca();
    let up = tls_upstream_for("held", &up_ca, "held.example").await;
    let h = start(
        tls_config(&up_ca, None),
        parse(TLS_POLICY),
        Limits::default(),
    )
    .await;
    let me = h.agent("agents/tls-2", None, Some(up.addr));
    let trust = trusting(up_ca.ca.cert_path());

    let approvals = h.approvals.clone();
    let approver = tokio::spawn(async move {
        until("the request to be held for approval", || {
            approvals.list().len() == 1
        })
        .await;
        let p = approvals.list()[0].clone();
        approvals.approve(&p.id, "alice", Duration::ZERO).unwrap();
        p
    });
    let tls = handshake(&trust, "held.example", h.connect(me).await)
        .await
        .expect("spliced once approved");
    let pending = approver.await.unwrap();
    assert_eq!(pending.rule, "tls/held");
    assert_eq!(
        pending.object.url,
        format!("https://held.example:{}", up.addr.port())
    );
    let mut tx = http1(tls).await;
    assert_eq!(get(&mut tx, "held.example").await.status, StatusCode::OK);

    // A sandbox upstream cannot take a spliced connection: blocked, and the record says so.
    let err = handshake(&trust, "sandboxed.example", h.connect(me).await)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("AccessDenied"), "{err}");
    let rec = h.last_record(|r| r.rule == "tls/sandboxed");
    assert_eq!((rec.outcome.as_ref(), rec.denied), ("block", true));
    assert!(rec.reason.contains("sandbox upstream"), "{}", rec.reason);
    assert_eq!(up.accepted.load(Ordering::Relaxed), 1);
    h.assert_no_panics();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_tunnels_carry_tls_for_their_own_host_only() {
    let up_ca = test_ca();
    let up = tls_upstream_for("payments", &up_ca, "api.payments.example").await;
    let h = start(
        tls_config(&up_ca, None),
        parse(TLS_POLICY),
        Limits::default(),
    )
    .await;
    let me = h.agent("agents/tls-3", None, None);
    let authority = format!("api.payments.example:{}", up.addr.port());
    let trust = trusting(up_ca.ca.cert_path());

    let s = tunnel(&h, me, &authority).await;
    let tls = handshake(&trust, "api.payments.example", s)
        .await
        .expect("spliced through the tunnel");
    let mut tx = http1(tls).await;
    let r = get(&mut tx, "api.payments.example").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["tls"], true);
    let rec = h.last_record(|r| r.rule == "tls/payments");
    assert_eq!(
        (rec.object.method.as_str(), rec.object.url.as_str()),
        ("CONNECT", authority.as_str())
    );

    // The tunnel was decided for its host: TLS inside must name that host.
    let s = tunnel(&h, me, &authority).await;
    let err = handshake(&trust, "mcp.search.example", s)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("AccessDenied"), "{err}");
    let rec = h.last_record(|r| r.rule == "builtin:host-check");
    assert!(
        rec.reason
            .starts_with("SNI does not match the CONNECT host"),
        "{}",
        rec.reason
    );
    assert_eq!(up.accepted.load(Ordering::Relaxed), 1);

    // A ClientHello over 16 KiB inside a tunnel.
    let mut s = tunnel(&h, me, &authority).await;
    s.write_all(&oversized_hello()).await.unwrap();
    let r = read_all(&mut s, Duration::from_secs(10)).await;
    assert_eq!(r.as_bytes(), ACCESS_DENIED);
    h.assert_no_panics();
}

const SEQ_TLS_POLICY: &str = r#"
name: seqtls
agents: { cgroup: agents/seqtls-* }
rules:
  - id: no-exfil-after-pii
    sequence:
      after: { file: { prefix: /data/pii } }
      then: { http: { except_hosts: [api.internal] } }
    verdict: block
    reason: No exfiltration after PII.
"#;

/// An armed-state source standing in for the kernel's table: the agents (by cgroup) in
/// `armed` have armed every sequence rule they have.
fn armed_source(armed: Arc<Mutex<Vec<String>>>) -> crate::engine::ArmedSource {
    Arc::new(move |agent: &AgentRef, rules: &[&str]| {
        if !armed.lock().unwrap().contains(&agent.cgroup) {
            return Vec::new();
        }
        rules
            .iter()
            .map(|r| crate::engine::Armed {
                rule: r.to_string(),
                at: std::time::Instant::now(),
                by: crate::events::sequence::ArmedBy {
                    rule: r.to_string(),
                    kind: "file".into(),
                    object: "/data/pii/customers.csv".into(),
                    access: "r".into(),
                    pid: 31,
                    time: String::new(),
                },
            })
            .collect()
    })
}

/// An HTTP/1 client connection over `stream`, and the task that drives it (it ends when the
/// proxy closes the connection).
async fn http1_conn<S>(
    stream: S,
) -> (
    hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    JoinHandle<hyper::Result<()>>,
)
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let (tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    (tx, tokio::spawn(conn))
}

/// Whether the connection that `conn` drives ends within `limit`.
async fn ends_within(conn: &mut JoinHandle<hyper::Result<()>>, limit: Duration) -> bool {
    tokio::time::timeout(limit, conn).await.is_ok()
}

/// A sequence rule armed after a spliced TLS connection (transparent, or through a CONNECT
/// tunnel) was opened cuts it: the kernel lets packets to the proxy through, so the proxy
/// re-checks its spliced connections when the drainer reports an arming (and on a timer, for
/// events the ring buffer drops). The cut is reported as a denial by the sequence rule,
/// naming the arming. Controls: another agent's spliced connection goes on; and requests on
/// a kept-alive plain connection are decided one by one, so the next one is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spliced_connections_are_cut_when_a_sequence_rule_arms() {
    let up_ca = test_ca();
    let up = tls_upstream_for("payments", &up_ca, "api.payments.example").await;
    let plain = upstream("plain").await;
    let set = parse(SEQ_TLS_POLICY);
    let mut cfg = tls_config(&up_ca, None);
    cfg.host_addresses.insert(
        "plain.example".into(),
        vec![IpAddr::V4(Ipv4Addr::LOCALHOST)],
    );
    let h = start(cfg, set.clone(), Limits::default()).await;
    let armed = Arc::new(Mutex::new(Vec::<String>::new()));
    h.engine.store(Arc::new(
        Engine::new(set, 2).with_armed_source(armed_source(armed.clone())),
    ));
    let reader = h.agent("agents/seqtls-reader", None, Some(up.addr));
    let explicit = h.agent("agents/seqtls-reader", None, None);
    let keepalive = h.agent("agents/seqtls-reader", None, Some(plain.addr));
    let other = h.agent("agents/seqtls-other", None, Some(up.addr));
    let trust = trusting(up_ca.ca.cert_path());
    let authority = format!("api.payments.example:{}", up.addr.port());

    // Unarmed: everything is spliced (or forwarded) and answers.
    let (mut spliced, mut spliced_conn) = http1_conn(
        handshake(&trust, "api.payments.example", h.connect(reader).await)
            .await
            .expect("spliced"),
    )
    .await;
    let (mut tunneled, mut tunneled_conn) = http1_conn(
        handshake(
            &trust,
            "api.payments.example",
            tunnel(&h, explicit, &authority).await,
        )
        .await
        .expect("spliced through the tunnel"),
    )
    .await;
    let mut control = http1(
        handshake(&trust, "api.payments.example", h.connect(other).await)
            .await
            .expect("spliced"),
    )
    .await;
    let mut kept = http1(h.connect(keepalive).await).await;
    let host = format!("plain.example:{}", plain.addr.port());
    for tx in [&mut spliced, &mut tunneled, &mut control] {
        let r = get(tx, "api.payments.example").await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    }
    let r = get(&mut kept, &host).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);

    // The agent reads the file: the kernel arms the rule, the drainer reports it.
    armed.lock().unwrap().push("agents/seqtls-reader".into());
    crate::events::sequence::armed_changed();
    assert!(
        ends_within(&mut spliced_conn, Duration::from_secs(10)).await,
        "the spliced connection was cut"
    );
    assert!(
        ends_within(&mut tunneled_conn, Duration::from_secs(10)).await,
        "the tunnel was cut"
    );
    // A cut is recorded right after its connection is dropped.
    let cut_reason = |r: &Record| r.reason.contains("before the sequence rule was armed");
    until("both cuts recorded", || {
        h.records
            .lock()
            .unwrap()
            .iter()
            .filter(|r| cut_reason(r))
            .count()
            >= 2
    })
    .await;
    let cuts: Vec<Record> = h
        .records
        .lock()
        .unwrap()
        .iter()
        .filter(|r| cut_reason(r))
        .cloned()
        .collect();
    assert_eq!(cuts.len(), 2, "{cuts:?}");
    for rec in &cuts {
        assert_eq!(
            (
                rec.rule.as_str(),
                rec.outcome.as_ref(),
                rec.denied,
                rec.object.method.as_str()
            ),
            ("seqtls/no-exfil-after-pii", "block", true, "CONNECT")
        );
        assert!(rec.object.url.contains("api.payments.example"), "{rec:?}");
        assert_eq!(rec.object.detail["tls"], "spliced");
        let by = rec.armed_by.as_ref().expect("the cut names the arming");
        assert_eq!(by.object, "/data/pii/customers.csv");
    }
    // The kept-alive connection's next request is decided anew, and refused.
    let r = get(&mut kept, &host).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.body);
    assert_eq!(r.body["rule"], "seqtls/no-exfil-after-pii");
    // Another agent's spliced connection goes on.
    let r = get(&mut control, "api.payments.example").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);

    // Without the event (the ring buffer dropped it), the timer finds the arming.
    let late = h.agent("agents/seqtls-late", None, Some(up.addr));
    let (mut tx, mut conn) = http1_conn(
        handshake(&trust, "api.payments.example", h.connect(late).await)
            .await
            .expect("spliced"),
    )
    .await;
    let r = get(&mut tx, "api.payments.example").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    armed.lock().unwrap().push("agents/seqtls-late".into());
    assert!(
        ends_within(&mut conn, Duration::from_secs(10)).await,
        "cut by the periodic re-check"
    );
    let late_cut =
        |r: &Record| cut_reason(r) && r.agent.as_ref().unwrap().cgroup == "agents/seqtls-late";
    until("the late cut recorded", || {
        h.records.lock().unwrap().iter().any(late_cut)
    })
    .await;
    let rec = h.last_record(late_cut);
    assert_eq!(rec.rule, "seqtls/no-exfil-after-pii");
    assert_eq!(rec.agent.as_ref().unwrap().cgroup, "agents/seqtls-late");
    // The control, still.
    let r = get(&mut control, "api.payments.example").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    h.assert_no_panics();
}

fn refund_intercepted() -> policy::PolicySet {
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../policies/examples/refund-agent.yaml");
    let mut yaml = std::fs::read_to_string(path).unwrap();
    yaml.push_str("proxy: { intercept_tls: [api.payments.example] }\n");
    parse(&yaml)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn intercepted_tls_gets_request_level_decisions() {
    let up_ca = test_ca();
    let up = tls_upstream_for("payments", &up_ca, "api.payments.example").await;
    let node = tempfile::tempdir().unwrap();
    let h = start(
        tls_config(&up_ca, Some(node.path())),
        refund_intercepted(),
        Limits::default(),
    )
    .await;
    let me = h.agent("agents/refund-tls", None, Some(up.addr));
    // Agents trust <ca_dir>/ca.crt.
    let trust = trusting(&node.path().join("ca.crt"));
    // The upstream is not on 443: the agent's Host names its port.
    let port = up.addr.port();
    let refund = |amount| host_with_port(refund(amount), port);

    let tls = handshake(&trust, "api.payments.example", h.connect(me).await)
        .await
        .expect("intercepted with a certificate from the node CA");
    let mut tx = http1(tls).await;
    let r = Reply::read(tx.send_request(refund(50)).await.unwrap()).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(
        (&r.body["upstream"], &r.body["tls"]),
        (&json!("payments"), &json!(true))
    );
    assert!(r.body["body"].as_str().unwrap().contains("\"amount\":50"));
    let rec = h.last_record(|r| r.rule == "refund-agent/refund-small");
    assert_eq!(
        (rec.outcome.as_ref(), rec.object.url.as_str()),
        (
            "allow",
            format!("https://api.payments.example:{port}/v1/refunds").as_str()
        )
    );
    assert_eq!(rec.object.detail["tls"], "intercepted");

    tx.ready().await.unwrap();
    let r = Reply::read(tx.send_request(refund(5000)).await.unwrap()).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(
        (&r.body["error"], &r.body["rule"]),
        (&json!("blocked"), &json!("refund-agent/refund-large"))
    );
    let rec = h.record(r.body["decision_id"].as_str().unwrap());
    assert_eq!(
        rec.object.url,
        format!("https://api.payments.example:{port}/v1/refunds")
    );
    assert_eq!(rec.object.detail["tls"], "intercepted");
    assert_eq!(rec.object.detail["body $.amount"], "5000");

    // Another allowed request: on a new upstream connection, as the one before carried a body
    // (an upstream could have left part of it unread, round 24).
    tx.ready().await.unwrap();
    let r = Reply::read(tx.send_request(refund(60)).await.unwrap()).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(up.seen.lock().unwrap().len(), 2);
    assert_eq!(up.accepted.load(Ordering::Relaxed), 2);

    // A request for another host on this connection.
    let r = get(&mut tx, &format!("elsewhere.example:{port}")).await;
    assert_eq!(r.status, StatusCode::MISDIRECTED_REQUEST, "{}", r.body);
    assert_eq!(r.body["rule"], "builtin:host-check");
    assert_eq!(up.seen.lock().unwrap().len(), 2);
    // A Host without a port names 443, not the port this connection goes to.
    let r = get(&mut tx, "api.payments.example").await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.body);
    assert_eq!(r.body["rule"], "builtin:host-check");
    assert_eq!(
        r.body["reason"],
        format!("Host names port 443, on a connection to port {port}")
    );
    assert_eq!(up.seen.lock().unwrap().len(), 2);

    // Through the proxy explicitly: a CONNECT to an intercepted host is not decided at host
    // level (the refund policy blocks anything else by default); the TLS inside is
    // intercepted and each request decided.
    let explicit = h.agent("agents/refund-tls-explicit", None, None);
    let s = tunnel(
        &h,
        explicit,
        &format!("api.payments.example:{}", up.addr.port()),
    )
    .await;
    let tls = handshake(&trust, "api.payments.example", s).await.unwrap();
    let mut tx = http1(tls).await;
    let r = Reply::read(tx.send_request(refund(70)).await.unwrap()).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    tx.ready().await.unwrap();
    let r = Reply::read(tx.send_request(refund(5000)).await.unwrap()).await;
    assert_eq!(r.body["rule"], "refund-agent/refund-large");
    assert_eq!(up.seen.lock().unwrap().len(), 3);
    let accepted = up.accepted.load(Ordering::Relaxed);
    assert_eq!(accepted, 3);

    // A client that does not trust the node CA fails its handshake; the proxy reports it.
    let err = handshake(
        &trusting(up_ca.ca.cert_path()),
        "api.payments.example",
        h.connect(me).await,
    )
    .await
    .unwrap_err();
    // (The upstream's test CA has the node CA's name, made on the same host: the signature
    // is what fails.)
    let err = err.to_string();
    assert!(
        err.contains("UnknownIssuer") || err.contains("BadSignature"),
        "{err}"
    );
    until(
        "the refused agent handshake to be recorded (builtin:tls)",
        || {
            h.records
                .lock()
                .unwrap()
                .iter()
                .any(|r| r.rule == "builtin:tls" && r.reason.contains("handshake with the agent"))
        },
    )
    .await;
    assert_eq!(up.accepted.load(Ordering::Relaxed), accepted);
    h.assert_no_panics();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interception_without_a_ca_fails_closed() {
    let up_ca = test_ca();
    let up = tls_upstream_for("payments", &up_ca, "api.payments.example").await;
    let trust = trusting(up_ca.ca.cert_path());
    // No CA directory, and a CA directory that cannot be loaded (a certificate without its key).
    let broken = tempfile::tempdir().unwrap();
    std::fs::write(broken.path().join("ca.crt"), up_ca.ca.cert_pem()).unwrap();
    for ca_dir in [None, Some(broken.path())] {
        let h = start(
            tls_config(&up_ca, ca_dir),
            refund_intercepted(),
            Limits::default(),
        )
        .await;
        let me = h.agent("agents/refund-noca", None, Some(up.addr));
        let err = handshake(&trust, "api.payments.example", h.connect(me).await)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("AccessDenied"), "{err}");
        let rec = h.last_record(|r| r.rule == "builtin:tls");
        assert!(
            rec.reason.contains("interception is unavailable"),
            "{}",
            rec.reason
        );
        assert_eq!(rec.object.detail["tls"], "intercepted");
        assert_eq!(up.accepted.load(Ordering::Relaxed), 0, "never spliced");
        h.assert_no_panics();
    }
    assert!(!broken.path().join("ca.key").exists(), "no new CA made");
}

/// A ClientHello that says it is longer than 16 KiB, and is.
fn oversized_hello() -> Vec<u8> {
    let mut b = vec![0x16, 3, 1, 0x40, 0x00, 1, 0x00, 0x50, 0x00];
    b.resize(17 << 10, 0);
    b
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_slow_and_oversized_client_hellos_are_closed() {
    let up = upstream("payments").await;
    let cfg = ProxyConfig {
        header_timeout: Duration::from_secs(1),
        ..config()
    };
    let h = start(cfg, parse(TLS_POLICY), Limits::default()).await;
    let me = h.agent("agents/tls-4", None, Some(up.addr));
    let reason = |h: &Harness| h.last_record(|r| r.rule == "builtin:tls").reason;

    let r = h
        .raw(me, b"\x16garbage that is not a ClientHello\r\n\r\n")
        .await;
    assert_eq!(r.as_bytes(), ACCESS_DENIED);
    assert_eq!(reason(&h), "not a TLS ClientHello");
    let r = h.raw(me, b"\x16\x03\x01\x00\x05\x02\x00\x00\x01\x00").await;
    assert_eq!(r.as_bytes(), ACCESS_DENIED);
    assert!(
        reason(&h).starts_with("malformed ClientHello"),
        "{}",
        reason(&h)
    );

    // A ClientHello cut short and never finished: the header timeout.
    let hello = client_hello("api.payments.example", true);
    let mut s = h.connect(me).await;
    s.write_all(&hello[..hello.len() / 2]).await.unwrap();
    let t = std::time::Instant::now();
    let r = read_all(&mut s, Duration::from_secs(10)).await;
    assert_eq!(r.as_bytes(), ACCESS_DENIED);
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    assert!(reason(&h).contains("within 1s"), "{}", reason(&h));

    let r = h.raw(me, &oversized_hello()).await;
    assert_eq!(r.as_bytes(), ACCESS_DENIED);
    assert!(reason(&h).contains("16 KiB"), "{}", reason(&h));

    let r = h
        .raw(me, &client_hello("api.payments.example", false))
        .await;
    assert_eq!(r.as_bytes(), ACCESS_DENIED);
    assert!(reason(&h).contains("names no server"), "{}", reason(&h));

    // An unidentified connection.
    let r = h.raw(next_ip(), &hello).await;
    assert_eq!(r.as_bytes(), ACCESS_DENIED);
    assert_eq!(h.last_record(|_| true).rule, "builtin:identity");
    assert_eq!(up.accepted.load(Ordering::Relaxed), 0);
    h.assert_no_panics();
}

#[test]
fn intercept_tls_is_validated_and_the_policies_add_up() {
    let bad = "name: p\nagents: { label: x }\nproxy: { intercept_tls: [ok.example, 'exa mple', 10.0.0.1] }\n";
    let err = policy::parse(&[("p.yaml".into(), bad.into())])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(
            "p.yaml:3:38: proxy.intercept_tls: host `exa mple`: use `name.example` or `*.example`"
        ),
        "{err}"
    );
    assert!(
        err.contains("proxy.intercept_tls: host `10.0.0.1` is an IP address"),
        "{err}"
    );
    let set = parse(
        "name: a\nagents: { label: x }\nproxy: { intercept_tls: [API.example] }\n---\nname: b\nagents: { label: x }\nproxy: { intercept_tls: ['*.corp.example'] }\n---\nname: c\nagents: { label: y }\nproxy: { intercept_tls: [other.example] }\n",
    );
    let engine = Engine::new(set, 1);
    let view = engine.agent(&AgentRef {
        name: "x".into(),
        cgroup: "x".into(),
        label: Some("x".into()),
        pod: None,
    });
    assert!(view.intercepts_tls("api.example"));
    assert!(view.intercepts_tls("git.corp.example"));
    assert!(!view.intercepts_tls("corp.example"));
    assert!(
        !view.intercepts_tls("other.example"),
        "another agent's policy"
    );
}

mod streams;

#[path = "canonical_proxy_tests.rs"]
mod canonical_proxy;

/// `--audit-on-failure block`: while the audit log cannot be written, requests are refused
/// with 503 and the reason; once it is written again they pass.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_are_refused_while_the_audit_log_is_down_under_block() {
    use crate::audit::{AuditLog, AuditOptions, Backoff, OnFailure};
    let dir = tempfile::tempdir().unwrap();
    let opts = AuditOptions {
        on_failure: OnFailure::Block,
        retry: Backoff {
            first: Duration::ZERO,
            max: Duration::ZERO,
        },
        ..Default::default()
    };
    let fault = opts.fault.clone();
    let mut log = AuditLog::open(dir.path(), opts).unwrap();
    let health = log.health();
    let up = upstream("payments").await;
    let cfg = ProxyConfig {
        audit: Some(health.clone()),
        ..config()
    };
    let h = start(cfg, examples(), Limits::default()).await;
    let me = h.agent("agents/refund-7", None, Some(up.addr));
    assert_eq!(h.send(me, refund(50)).await.status, StatusCode::OK);

    fault.store(true, Ordering::Relaxed);
    log.append(&json!({"n": 1})).unwrap_err();
    let r = h.send(me, refund(50)).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.body["error"], "audit_unavailable");
    assert_eq!(r.body["rule"], "builtin:audit");
    assert!(
        r.body["reason"]
            .as_str()
            .unwrap()
            .contains("the audit log cannot be written"),
        "{}",
        r.body
    );
    assert_eq!(health.blocked(), 1);

    fault.store(false, Ordering::Relaxed);
    assert!(log.retry());
    assert_eq!(h.send(me, refund(50)).await.status, StatusCode::OK);
    h.assert_no_panics();
}

/// Sequence rules in the proxy: with the agent's state as the kernel's file hook sets it
/// (here a source standing in for the pinned table: the host kernel cannot run the file
/// hook), an armed agent's requests to hosts outside `then.http` are refused, naming the
/// arming read; the allowlisted host still answers, and an agent that did not arm the rule
/// (same policy) is not restricted.
#[tokio::test]
async fn an_armed_sequence_rule_refuses_requests_outside_its_hosts() {
    let up = upstream("payments").await;
    let set = parse(
        "name: seq\nagents: { cgroup: agents/seq-* }\nrules:\n\
         \x20 - id: no-exfil-after-pii\n    sequence:\n      after: { file: { prefix: /data/pii } }\n      then: { http: { except_hosts: [api.payments.example] } }\n    verdict: block\n    reason: no exfiltration after PII\n",
    );
    let h = start(config(), set.clone(), Limits::default()).await;
    let source = armed_source(Arc::new(Mutex::new(vec!["agents/seq-armed".to_owned()])));
    h.engine
        .store(Arc::new(Engine::new(set, 2).with_armed_source(source)));
    let armed = h.agent("agents/seq-armed", None, Some(up.addr));
    let other = h.agent("agents/seq-clean", None, Some(up.addr));
    let get = |host: &str| {
        Request::get("/v1/x")
            .header("host", host)
            .body(Full::new(Bytes::new()))
            .unwrap()
    };
    let r = h.send(armed, get("mcp.search.example")).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.body);
    let rec = h.records.lock().unwrap().last().cloned().unwrap();
    assert_eq!(
        (rec.rule.as_str(), rec.outcome.as_ref()),
        ("seq/no-exfil-after-pii", "block")
    );
    let by = rec.armed_by.expect("the refusal names the arming");
    assert_eq!(
        (by.object.as_str(), by.pid),
        ("/data/pii/customers.csv", 31)
    );
    // Controls: the allowlisted host, and the agent that did not read.
    let r = h.send(armed, get("api.payments.example")).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let r = h.send(other, get("mcp.search.example")).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let rec = h.records.lock().unwrap().last().cloned().unwrap();
    assert_eq!(rec.armed_by, None);
    h.assert_no_panics();
}

/// A drill's canary: its requests are decided by the drill's engine (the policy under drill
/// alone), a refusal is what the drill's judge passes, and a request the policy would let
/// through (allow, escalate) is answered 409 `X-Governance-Drill` at once: nothing reaches
/// the upstream, nothing waits for a human, by cgroup while the drill runs and by the canary
/// label after. Control: a real agent's allowed refund is forwarded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drill_canary_is_decided_by_the_drill_and_never_forwarded() {
    use crate::drill::{self, CANARY_LABEL, HttpProbe};
    let up = upstream("payments").await;
    let set = examples();
    let h = start(config(), set.clone(), Limits::default()).await;
    let canary = h.agent("governance-drill-1-0", Some(CANARY_LABEL), Some(up.addr));
    let drill_engine = |set: &policy::PolicySet| {
        Some(Canary {
            cgroup_id: root_id("governance-drill-1-0"),
            engine: Arc::new(Engine::new(drill::canary_set(set, "refund-agent"), 1)),
        })
    };
    let probe_of = |set: &policy::PolicySet, rule: &str| {
        let r = set
            .policies
            .iter()
            .flat_map(|p| &p.rules)
            .find(|r| r.id == rule)
            .unwrap();
        let policy::Matcher::Http(m) = &r.matcher else {
            panic!("{rule} is not an http rule")
        };
        HttpProbe::for_rule(m).unwrap()
    };

    // The policy under drill refuses: a 403 by the rule, which the judge passes.
    h.proxy.set_canary(drill_engine(&set));
    let large = probe_of(&set, "refund-agent/refund-large");
    let answer = h.raw(canary, &large.wire()).await;
    assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");
    assert_eq!(
        drill::judge(&large, "refund-agent/refund-large", answer.as_bytes()),
        Ok("refused (HTTP 403, rule refund-agent/refund-large)".into())
    );
    // Refused by another rule: not passed.
    assert!(drill::judge(&large, "refund-agent/other", answer.as_bytes()).is_err());

    // Weakened: the same rule allows. Not forwarded (explicit or transparent), not passed.
    let weak = parse(
        &std::fs::read_to_string(
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("../policies/examples/refund-agent.yaml"),
        )
        .unwrap()
        .replace("    verdict: block\n", "    verdict: allow\n"),
    );
    h.proxy.set_canary(drill_engine(&weak));
    let answer = h.raw(canary, &large.wire()).await;
    assert!(answer.starts_with("HTTP/1.1 409"), "{answer}");
    let got = drill::judge(&large, "refund-agent/refund-large", answer.as_bytes()).unwrap_err();
    assert!(
        got.starts_with("not refused: the policy allows it by refund-agent/refund-large"),
        "{got}"
    );
    let r = h.send(canary, refund(5000)).await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.body);
    assert_eq!(r.body["error"], "drill");
    // Escalated: answered at once, no approval asked of anyone.
    let r = h.send(canary, refund(500)).await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.body);
    assert!(
        r.header("x-governance-drill").contains("escalates"),
        "{:?}",
        r.headers
    );
    assert!(h.approvals.list().is_empty());
    // After the drill: the canary label alone keeps it from going out.
    h.proxy.set_canary(None);
    let r = h.send(canary, refund(50)).await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.body);
    assert_eq!(
        up.accepted.load(Ordering::Relaxed),
        0,
        "a canary request reached the upstream"
    );
    let rec = h.records.lock().unwrap().last().cloned().unwrap();
    assert_eq!(
        rec.object.detail.get("drill").map(String::as_str),
        Some("not forwarded")
    );

    // Control: a real agent's allowed refund goes out.
    let me = h.agent("agents/refund-1", None, Some(up.addr));
    let r = h.send(me, refund(50)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(up.accepted.load(Ordering::Relaxed), 1);
    h.assert_no_panics();
}
