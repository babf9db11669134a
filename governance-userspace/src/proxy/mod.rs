//! The HTTP policy proxy: every HTTP request an agent makes is decided by the engine before
//! it leaves the node, and the verdict becomes HTTP semantics.
//!
//! **How traffic arrives.** The kernel redirects an agent's TCP egress to the proxy's
//! listener and records where it was going; [`Identify`] turns the accepted socket into the
//! agent and that original destination ([`Client`]). The identity never comes from anything
//! the client says. Two ways of use:
//!
//! - *transparent*: `original_dst` is the upstream. The request's `Host` must name that
//!   destination (the host check, below), since rules match on the name.
//! - *explicit proxy*: absolute-form requests (`GET http://host:port/path`) go to the host
//!   they name, resolved by the proxy; `CONNECT host:port` is decided at host level (an HTTP
//!   action with method `CONNECT`, empty path), then the tunnel's first bytes decide: TLS is
//!   handled as below, plain HTTP is served as requests with full decisions.
//!   The proxy connects on the agent's behalf here, so the agent's `network` rules are
//!   checked against the address it connects to, resolved once the request itself is allowed,
//!   with all five verdicts (block → 403, throttle → 429, escalate → held, sandbox upstream →
//!   the request goes there, sandbox profile or a tunnel to a sandbox upstream → 403).
//!
//! **No DNS before a decision.** A transparent request's host check (and a TLS server name's)
//! is made at once only when it needs no lookup (an IP literal, a static address, a cached
//! answer); otherwise only after the decision, and only for a request that is to go to its
//! destination: a name the agent chose is never resolved for a request the policy refuses.
//!
//! HTTP/1.1 and h2c (prior knowledge) from clients; HTTP/1.1 to upstreams.
//!
//! **TLS.** A connection (or tunnel) whose first byte is a TLS handshake record is decided on
//! the server name (SNI) of its ClientHello: peeked without consuming it
//! ([`tls::peek_client_hello`]), or in a tunnel read and replayed; at most
//! [`tls::MAX_CLIENT_HELLO`] bytes within `header_timeout`. No server name, a malformed or
//! oversized ClientHello, or a timeout → closed, reported with rule `builtin:tls`. The server
//! name must name the destination, as `Host` must: in transparent mode it must resolve to
//! `original_dst` (the host check), in a tunnel it must be the CONNECT's host (a tunnel to an IP
//! address carries none; that is accepted). Then one of two ways:
//!
//! - *spliced* (the default): decided like a CONNECT (method `CONNECT`, host = SNI, empty path;
//!   in a tunnel the CONNECT was that decision), then relayed byte for byte to the destination
//!   until both sides close or it is idle for `idle_timeout`. The record's URL is
//!   `https://<sni>:<port>`, with detail `tls: spliced`. allow → spliced; block and throttle →
//!   closed; escalate → held in the approval queue while the agent's handshake waits (a client
//!   with a short handshake timeout gives up; the approval then stays until its own timeout);
//!   sandbox with an upstream → blocked: the proxy cannot send a connection whose certificate
//!   must match the host elsewhere.
//! - *intercepted*, for the hosts a policy names in `proxy.intercept_tls` (the union over the
//!   agent's policies): never decided at host level, neither on the server name nor on a
//!   CONNECT to the host. The proxy terminates the agent's TLS with a certificate from the node
//!   CA ([`tls::NodeCa`], loaded once from [`ProxyConfig::ca_dir`]), serves HTTP/1.1 inside with
//!   the full request-level decisions (a request whose `Host` is not the server name gets 421),
//!   and forwards each over its own TLS connection to the destination (verified for the server
//!   name against the public roots and [`ProxyConfig::upstream_ca`]; kept for the connection's
//!   next request). Records carry `https://` URLs and detail `tls: intercepted`. Without a
//!   usable CA, a connection to an intercepted host is closed and reported, never spliced.
//!
//! A refused TLS connection gets a fatal `access_denied` alert, then is closed.
//!
//! **Verdict → HTTP.**
//!
//! | verdict | HTTP | MCP `tools/call` |
//! |---|---|---|
//! | allow | forwarded, streaming | same |
//! | block | 403 `{"error":"blocked","rule","reason","decision_id"}` | HTTP 200, JSON-RPC error -32001 with the call's id |
//! | throttle | 429 with `Retry-After` (seconds, at least 1) | JSON-RPC error -32002 |
//! | sandbox | forwarded to the rule's `upstream` URL instead, with `X-Governance-Sandboxed: <rule>` | same |
//! | escalate | held until a human decides: approve → forwarded; deny → 403 with the reason; timeout → `on_timeout` | deny/timeout → -32001 |
//!
//! Every refusal carries `X-Governance-Decision: <decision id>` (the id of the decision's
//! [`Record`]) and `X-Governance-Rule`. A `sandbox: {profile}` verdict cannot reach HTTP
//! (policy validation refuses profiles on HTTP rules); if it did, it is treated as block.
//!
//! **What is buffered.** A body is read into memory only when a rule that could match the
//! host needs it ([`Engine::needs_body`]: body or MCP conditions), or when the request is
//! escalated (a held request keeps its body). Otherwise it streams through untouched. The
//! buffer limit is the smallest `proxy.max_body` of the agent's policies, else
//! [`ProxyConfig::max_body`]; over it → 413. What the decision reads, and what is refused
//! because an upstream could read it another way, is [`canonical`]'s: on a route whose rules
//! read the body (and on an MCP endpoint, where refusals are JSON-RPC errors), a body that is
//! not certainly JSON is refused; elsewhere a body that is not JSON makes body conditions
//! false. A JSON-RPC batch (an array of calls) is decided call by call; the most severe verdict
//! (block > escalate > sandbox > throttle > allow) applies to the whole batch, and a refused
//! batch gets one JSON-RPC error per call.
//!
//! A request without a body whose method carries none (`GET`, `HEAD`, `DELETE`, `OPTIONS`:
//! MCP clients' event-stream GET and session-ending DELETE) is not invalid JSON on an MCP
//! endpoint: the host's rules decide it. A refused call of a legacy MCP SSE session (the
//! SDK's SSE transport, whose POSTs are answered 202 and replied to on the event stream) is
//! delivered on that session's stream (see `sse.rs`).
//!
//! **Streams.** Responses stream through unbuffered. The upstream may be silent for
//! `upstream_timeout` before the head (504) and between body frames (cut), except between the
//! frames of a `text/event-stream` response: `stream_idle_timeout`. A policy's
//! `proxy.idle_timeout` for the host replaces both ([`AgentRules::idle_timeout`]). A response
//! still streaming counts as in flight, so the connection's idle timeout never cuts it.
//!
//! **Upgrades** (WebSocket): decided like any request; when allowed, refused with 501 (not
//! supported yet).
//!
//! Every decision is reported as one [`Record`] (type decision, source proxy, kind http).

pub mod canonical;
pub mod framing;
pub mod request;
pub mod tls;

mod io;
mod preauth;
mod respond;
mod sse;
mod upstream;

use std::{
    collections::HashMap,
    convert::Infallible,
    hash::{BuildHasher, RandomState},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime},
};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper::{
    Method, Request, Response, StatusCode, Uri, Version, body::Incoming, header, http,
    service::service_fn,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::Deserialize as _;
use serde_json::Value;
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

pub use preauth::{DecideAction, DecideResponse, HttpAction};
pub use respond::McpIds;

use self::{
    io::{Activity, ClientIo, Prefixed, Proto, Tracked},
    request::{Head, Reject, Tls},
    respond::Refusal,
    sse::SessionBody,
    tls::SniResult,
    upstream::{Body, UpBody, Upstream},
};
use crate::{
    approvals::{self, Approvals, Resolution},
    engine::{Action, AgentRef, AgentRules, Decision, Engine, HttpRequest, Outcome},
    events::{
        AgentInfo, CgroupInfo, Ids, Object, ProcessInfo, Record, RecordType, Shadow, Sink, Source,
        rfc3339,
    },
    policy::{Matcher, Posture, SandboxTarget, Verdict},
};

/// The reserved path of the decision API on the proxy listener.
pub const DECIDE_PATH: &str = "/.governance/v1/decide";

/// Whether transparent requests must name their destination.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum HostCheck {
    /// The `Host` must resolve to the address the agent connected to (an IP-literal `Host`
    /// must equal it); otherwise 403 "Host does not match the destination".
    #[default]
    Resolve,
    /// No check (for labs that point names anywhere).
    Off,
}

/// The proxy's settings.
#[derive(Clone, Debug)]
pub struct ProxyConfig {
    /// Where to listen (the daemon binds these): 127.0.0.1:15001 and [::1]:15001.
    pub listen: Vec<SocketAddr>,
    /// Largest request head (request line and headers); over it → 431. At least 8 KiB.
    pub max_header_bytes: usize,
    /// A request head must arrive within this (slowloris); also how long an idle
    /// HTTP/1 keep-alive connection stays open.
    pub header_timeout: Duration,
    /// A connection with no traffic and no request in flight for this long is closed.
    pub idle_timeout: Duration,
    /// A body the proxy buffers must arrive within this; otherwise 408.
    pub body_timeout: Duration,
    pub upstream_connect_timeout: Duration,
    /// For the upstream's response head (over it → 504), and between frames of its body
    /// (over it, the response is cut); a policy's `proxy.idle_timeout` for the host replaces
    /// both.
    pub upstream_timeout: Duration,
    /// Between the frames of a `text/event-stream` response (SSE: MCP streams, LLM token
    /// streams), instead of `upstream_timeout`, unless a policy sets the host's.
    pub stream_idle_timeout: Duration,
    /// Open connections per agent; over it → 503 and close.
    pub max_conns_per_agent: usize,
    /// Default buffering limit when no policy sets `proxy.max_body`.
    pub max_body: usize,
    pub host_check: HostCheck,
    /// Static name → addresses, used before DNS (tests and labs).
    pub host_addresses: HashMap<String, Vec<IpAddr>>,
    /// How long a DNS answer is cached.
    pub dns_ttl: Duration,
    /// Directory of the node CA for TLS interception (`ca.crt`, `ca.key`; see [`tls`]).
    pub ca_dir: Option<std::path::PathBuf>,
    /// Extra PEM roots trusted for upstream TLS, besides the public ones.
    pub upstream_ca: Option<std::path::PathBuf>,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        Self {
            listen: vec![
                SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 15001),
                SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), 15001),
            ],
            max_header_bytes: 16 << 10,
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(90),
            body_timeout: Duration::from_secs(30),
            upstream_connect_timeout: Duration::from_secs(5),
            upstream_timeout: Duration::from_secs(30),
            stream_idle_timeout: Duration::from_secs(600),
            max_conns_per_agent: 256,
            max_body: 1 << 20,
            host_check: HostCheck::Resolve,
            host_addresses: HashMap::new(),
            dns_ttl: Duration::from_secs(30),
            ca_dir: None,
            upstream_ca: None,
        }
    }
}

/// Who is on the other end of an accepted connection. The daemon implements this with a
/// kernel map lookup (by the peer's address/port); tests use a fixed table.
pub trait Identify: Send + Sync + 'static {
    fn identify(&self, peer: SocketAddr, local: SocketAddr) -> Option<Client>;
}

/// An identified connection.
#[derive(Clone, Debug)]
pub struct Client {
    pub agent: AgentRef,
    pub info: AgentInfo,
    /// The connecting task's own cgroup.
    pub cgroup_id: u64,
    /// The connecting process (pid from the kernel, the rest from procfs), if known.
    pub process: Option<ProcessInfo>,
    /// Where the agent was connecting; None: explicit proxy use.
    pub original_dst: Option<SocketAddr>,
}

/// How a connection reached the proxy.
#[derive(Clone, Debug)]
enum Mode {
    Transparent(SocketAddr),
    Explicit,
    /// Inside a CONNECT tunnel to `host` (resolved to `addr`); `decided`: the CONNECT was
    /// decided at host level (it is not for a host whose TLS is intercepted).
    Tunnel {
        host: String,
        addr: SocketAddr,
        decided: bool,
    },
    /// Inside an intercepted TLS connection for the server name `host`, to `addr`.
    Intercepted {
        host: String,
        addr: SocketAddr,
    },
}

/// One client connection.
struct Conn {
    client: Option<Client>,
    peer: SocketAddr,
    local: SocketAddr,
    mode: Mode,
    activity: Arc<Activity>,
    /// The agent's rules for the engine generation last used on this connection.
    view: Mutex<Option<(Arc<Engine>, Arc<AgentRules>)>>,
    /// Intercepted: the TLS connection to the upstream, kept between requests.
    tls_upstream: Mutex<Option<UpstreamTls>>,
}

type UpstreamTls = hyper::client::conn::http1::SendRequest<UpBody>;

impl Conn {
    fn new(client: Option<Client>, peer: SocketAddr, local: SocketAddr, mode: Mode) -> Arc<Conn> {
        Arc::new(Conn {
            client,
            peer,
            local,
            mode,
            activity: Activity::new(),
            view: Mutex::new(None),
            tls_upstream: Mutex::new(None),
        })
    }

    /// The same agent's traffic inside a tunnel or an intercepted TLS connection.
    fn inner(&self, mode: Mode) -> Arc<Conn> {
        Conn::new(self.client.clone(), self.peer, self.local, mode)
    }
}

#[derive(Default)]
struct ViewCache {
    engine: Option<Arc<Engine>>,
    views: HashMap<AgentRef, Arc<AgentRules>>,
}

/// Agents' rule views cached per generation (the cache starts over when it is full).
const VIEWS_MAX: usize = 1024;

/// The proxy. See the module documentation.
pub struct Proxy {
    cfg: ProxyConfig,
    engine: Arc<ArcSwap<Engine>>,
    identify: Arc<dyn Identify>,
    approvals: Arc<Approvals>,
    sink: Sink,
    ids: Arc<Ids>,
    node: String,
    upstream: Upstream,
    views: Mutex<ViewCache>,
    conns: Arc<Mutex<HashMap<String, usize>>>,
    panics: Arc<AtomicU64>,
    /// Pre-authorized escalations: (agent, action key) → until when.
    grants: Arc<Mutex<HashMap<(String, u64), Instant>>>,
    /// Live legacy MCP SSE sessions, where refusals of their calls are delivered.
    sessions: Arc<sse::Sessions>,
    hasher: RandomState,
    /// What TLS interception needs, loaded once; or why it is unavailable (connections to
    /// intercepted hosts are then refused, never spliced).
    interception: Result<Interception, String>,
}

/// The node CA that signs certificates for intercepted hosts, and the TLS client
/// configuration for their upstreams.
struct Interception {
    ca: tls::NodeCa,
    upstream: Arc<rustls::ClientConfig>,
}

impl Interception {
    fn load(cfg: &ProxyConfig) -> Result<Interception, String> {
        let dir = cfg
            .ca_dir
            .as_deref()
            .ok_or("no CA directory is configured")?;
        let ca = tls::NodeCa::load_or_create(dir).map_err(|e| e.to_string())?;
        let upstream = tls::client_config(cfg.upstream_ca.as_deref()).map_err(|e| e.to_string())?;
        Ok(Interception { ca, upstream })
    }
}

/// A request body: still streaming, or read.
enum ReqBody {
    Stream(Incoming),
    Read(Bytes),
}

/// Where an allowed request goes.
enum Dest {
    Addr(SocketAddr),
    /// Explicit proxy use: resolve the host.
    Name(String, u16),
}

/// Whether a host check may look a name up in DNS.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Lookup {
    /// Only what needs no lookup: an IP literal, a static address, a cached answer.
    Local,
    Resolve,
}

/// Where an explicit-proxy request goes after the network rules.
enum Target {
    Addr(SocketAddr),
    /// A network rule's sandbox upstream.
    Sandbox {
        rule: String,
        url: String,
    },
}

/// Whether a decision sends the request to its destination (allow, or escalate once approved):
/// only then is the destination's name looked up.
fn forwards(outcome: &Outcome) -> bool {
    matches!(outcome, Outcome::Allow | Outcome::Escalate { .. })
}

/// Where a decided request is sent.
#[derive(Clone, Copy)]
enum To<'a> {
    /// Its destination.
    Upstream(SocketAddr),
    /// The deciding rule's sandbox upstream instead.
    Sandbox { rule: &'a str, url: &'a str },
}

/// What happens after the decision.
enum Then {
    Forward,
    Sandbox(String),
    Respond(Response<Body>),
}

impl Proxy {
    pub fn new(
        cfg: ProxyConfig,
        engine: Arc<ArcSwap<Engine>>,
        identify: Arc<dyn Identify>,
        approvals: Arc<Approvals>,
        sink: Sink,
    ) -> Arc<Self> {
        let mut cfg = cfg;
        // hyper refuses smaller header buffers.
        cfg.max_header_bytes = cfg.max_header_bytes.max(8192);
        let interception = Interception::load(&cfg);
        if let Err(why) = &interception {
            tracing::warn!(
                "proxy: TLS interception is unavailable ({why}); TLS to hosts a policy intercepts will be refused"
            );
        }
        Arc::new(Self {
            interception,
            upstream: Upstream::new(&cfg),
            cfg,
            engine,
            identify,
            ids: approvals.ids().clone(),
            approvals,
            sink,
            node: crate::events::node_name(),
            views: Mutex::new(ViewCache::default()),
            conns: Arc::new(Mutex::new(HashMap::new())),
            panics: Arc::new(AtomicU64::new(0)),
            grants: Arc::new(Mutex::new(HashMap::new())),
            sessions: Arc::new(sse::Sessions::default()),
            hasher: RandomState::new(),
        })
    }

    pub fn config(&self) -> &ProxyConfig {
        &self.cfg
    }

    /// Tasks that panicked (each dropped its connection; the proxy went on). Tests assert 0.
    pub fn panics(&self) -> u64 {
        self.panics.load(Ordering::Relaxed)
    }

    /// Accept and serve connections until the task is aborted.
    pub async fn serve(self: Arc<Self>, listener: TcpListener) -> std::io::Result<()> {
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "proxy: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let this = self.clone();
            io::spawn(
                &self.panics,
                async move { this.connection(stream, peer).await },
            );
        }
    }

    async fn connection(self: Arc<Self>, stream: TcpStream, peer: SocketAddr) {
        let _ = stream.set_nodelay(true);
        let Ok(local) = stream.local_addr() else {
            return;
        };
        let client = self.identify.identify(peer, local);
        // Unidentified connections share one budget.
        let key = client
            .as_ref()
            .map_or(String::new(), |c| c.agent.name.clone());
        let Some(_slot) = self.conn_slot(&key) else {
            tracing::debug!(%peer, agent = %key, "proxy: too many connections");
            too_many_connections(stream).await;
            return;
        };
        let proto =
            match tokio::time::timeout(self.cfg.header_timeout, io::sniff_tcp(&stream)).await {
                Ok(Ok(p)) => p,
                _ => return,
            };
        let mode = match client.as_ref().and_then(|c| c.original_dst) {
            Some(d) if !self.is_self(d, local) => Mode::Transparent(d),
            _ => Mode::Explicit,
        };
        let conn = Conn::new(client, peer, local, mode);
        match proto {
            Proto::Tls => self.tls(conn, TlsIo::Tcp(stream)).await,
            p => self.serve_http(conn, stream, p).await,
        }
    }

    /// A connection (or CONNECT tunnel) whose first byte is a TLS handshake record: decided
    /// on its server name and spliced, or intercepted (see the module documentation).
    async fn tls(self: Arc<Self>, conn: Arc<Conn>, io: TlsIo) {
        let Some(client) = conn.client.clone() else {
            self.unidentified(&conn);
            return refuse_tls(io.into_io()).await;
        };
        let (hello, io) = io.client_hello(self.cfg.header_timeout).await;
        let sni = match (hello, &conn.mode) {
            (Ok(SniResult::Sni(name)), _) => name,
            // Clients send no server name for an IP address: a CONNECT to one was decided on it.
            (Ok(SniResult::NoSni), Mode::Tunnel { host, .. }) if host.parse::<IpAddr>().is_ok() => {
                host.clone()
            }
            (hello, _) => {
                let reason = match hello {
                    Ok(SniResult::NoSni) => {
                        "the ClientHello names no server (SNI): TLS is decided on the server name"
                            .to_owned()
                    }
                    Ok(SniResult::Malformed(why)) => format!("malformed ClientHello: {why}"),
                    Ok(_) => "not a TLS ClientHello".to_owned(),
                    Err(e) => format!("no ClientHello: {e}"),
                };
                self.tls_refused(&client, &conn, None, &reason);
                return refuse_tls(io).await;
            }
        };
        let port = match &conn.mode {
            Mode::Transparent(dst) => dst.port(),
            Mode::Tunnel { addr, .. } => addr.port(),
            _ => {
                let reason = "TLS to the proxy itself: use CONNECT, or let the kernel redirect";
                self.tls_refused(&client, &conn, None, reason);
                return refuse_tls(io).await;
            }
        };
        let authority = if sni.contains(':') {
            format!("[{sni}]:{port}")
        } else {
            format!("{sni}:{port}")
        };
        let head = Head {
            method: "CONNECT".into(),
            host: sni.clone(),
            port: Some(port),
            authority,
            path: String::new(),
            query: None,
            absolute: false,
            tls: Some(Tls::Spliced),
        };
        let engine = self.engine.load_full();
        let view = self.view(Some(&conn), &engine, &client.agent);
        // The server name must name where the connection goes: the host check, or the host of
        // the CONNECT (a refusal is reported there). An intercepted host is named by the
        // policy and may be looked up; any other name is looked up only once the policy
        // allows it (no DNS lookup of a name the agent chose before a decision).
        let intercepted = view.intercepts_tls(&sni);
        let lookup = if intercepted {
            Lookup::Resolve
        } else {
            Lookup::Local
        };
        let mut addr = match self.destination(&conn, &client, &head, lookup).await {
            Ok(Some(Dest::Addr(a))) => Some(a),
            Ok(None) => None,
            Ok(Some(Dest::Name(..))) | Err(_) => return refuse_tls(io).await,
        };
        if intercepted {
            let head = Head {
                tls: Some(Tls::Intercepted),
                ..head
            };
            let Some(addr) = addr else {
                return refuse_tls(io).await;
            };
            return self.intercept(&conn, &client, io, &head, addr).await;
        }
        let decided = matches!(conn.mode, Mode::Tunnel { decided: true, .. });
        if !decided {
            let (http, decision) = self.host_decision(&engine, &view, &head, None);
            if addr.is_none() && forwards(&decision.outcome) {
                addr = match self
                    .destination(&conn, &client, &head, Lookup::Resolve)
                    .await
                {
                    Ok(Some(Dest::Addr(a))) => Some(a),
                    _ => return refuse_tls(io).await,
                };
            }
            if self
                .host_verdict(&client, &engine, &head, &http, &decision)
                .await
                .is_err()
            {
                return refuse_tls(io).await;
            }
        }
        let addr = match addr {
            Some(a) => a,
            None => match self
                .destination(&conn, &client, &head, Lookup::Resolve)
                .await
            {
                Ok(Some(Dest::Addr(a))) => a,
                _ => return refuse_tls(io).await,
            },
        };
        self.splice(&conn, io, addr).await;
    }

    /// Splice an allowed TLS connection to `addr`, until both sides close or it is idle for
    /// `idle_timeout`.
    async fn splice(&self, conn: &Conn, io: Box<dyn ClientIo>, addr: SocketAddr) {
        let connect = TcpStream::connect(addr);
        let upstream = match tokio::time::timeout(self.cfg.upstream_connect_timeout, connect).await
        {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                tracing::debug!(peer = %conn.peer, %addr, error = %e, "proxy: TLS upstream refused");
                return;
            }
            Err(_) => {
                tracing::debug!(peer = %conn.peer, %addr, "proxy: TLS upstream connect timed out");
                return;
            }
        };
        let _ = upstream.set_nodelay(true);
        let client = Tracked::new(io, conn.activity.clone(), false);
        tokio::select! {
            r = tls::splice(client, upstream) => {
                if let Err(e) = r {
                    tracing::debug!(peer = %conn.peer, %addr, error = %e, "proxy: spliced connection failed");
                }
            }
            () = until_idle(&conn.activity, self.cfg.idle_timeout) => {
                tracing::debug!(peer = %conn.peer, %addr, "proxy: spliced connection idle, closed");
            }
        }
    }

    /// Terminate the agent's TLS with the node CA's certificate for the server name and serve
    /// the requests inside, each decided, upstream over TLS to `addr`.
    async fn intercept(
        self: &Arc<Self>,
        conn: &Conn,
        client: &Client,
        io: Box<dyn ClientIo>,
        head: &Head,
        addr: SocketAddr,
    ) {
        let ca = match &self.interception {
            Ok(i) => &i.ca,
            Err(why) => {
                let reason = format!(
                    "TLS to `{}` is to be intercepted, but interception is unavailable: {why}",
                    head.host
                );
                tracing::warn!(agent = %client.info.name, "proxy: {reason}");
                self.tls_refused(client, conn, Some(head), &reason);
                return refuse_tls(io).await;
            }
        };
        let stream = match tls::accept_intercepted(ca, io, &head.host).await {
            Ok(s) => s,
            Err(e) => {
                // Most often: the agent does not trust the node CA.
                self.tls_refused(client, conn, Some(head), &e.to_string());
                return;
            }
        };
        let inner = conn.inner(Mode::Intercepted {
            host: head.host.clone(),
            addr,
        });
        self.clone().serve_http(inner, stream, Proto::Http1).await;
    }

    /// Report a TLS connection the proxy closes without deciding on a request (rule
    /// `builtin:tls`).
    fn tls_refused(&self, client: &Client, conn: &Conn, head: Option<&Head>, reason: &str) {
        let dest = match &conn.mode {
            Mode::Transparent(a) | Mode::Tunnel { addr: a, .. } => a.to_string(),
            _ => String::new(),
        };
        let object = Object {
            dest,
            ..Default::default()
        };
        tracing::debug!(peer = %conn.peer, agent = %client.info.name, reason, "proxy: TLS refused");
        let rec = self.builtin_record(Some(client), head, "builtin:tls", reason, object);
        (self.sink)(rec);
    }

    /// Report a connection that is not an agent's; returns the record's id.
    fn unidentified(&self, conn: &Conn) -> String {
        let rec = self.builtin_record(
            None,
            None,
            "builtin:identity",
            "not an agent connection",
            Object {
                detail: [("peer".to_owned(), conn.peer.to_string())].into(),
                ..Default::default()
            },
        );
        let id = rec.id.clone();
        (self.sink)(rec);
        id
    }

    /// A per-agent connection slot, released when the guard drops.
    fn conn_slot(&self, key: &str) -> Option<ConnSlot> {
        let mut conns = self.conns.lock().unwrap_or_else(|p| p.into_inner());
        let n = conns.entry(key.to_owned()).or_default();
        if *n >= self.cfg.max_conns_per_agent {
            return None;
        }
        *n += 1;
        Some(ConnSlot {
            conns: self.conns.clone(),
            key: key.to_owned(),
        })
    }

    /// Whether `addr` is the proxy itself (a request there would loop).
    fn is_self(&self, addr: SocketAddr, local: SocketAddr) -> bool {
        addr == local || self.cfg.listen.contains(&addr)
    }

    /// Serve HTTP on a connection or tunnel. (Boxed: tunnels serve HTTP from inside a request.)
    fn serve_http<I>(
        self: Arc<Self>,
        conn: Arc<Conn>,
        io: I,
        proto: Proto,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        Box::pin(async move {
            let activity = conn.activity.clone();
            let io = TokioIo::new(Tracked::new(io, activity.clone(), proto == Proto::Http1));
            let this = self.clone();
            let c = conn.clone();
            let svc = service_fn(move |req| {
                let (this, conn) = (this.clone(), c.clone());
                async move { Ok::<_, Infallible>(this.handle(&conn, req).await) }
            });
            let idle = self.cfg.idle_timeout;
            let result = match proto {
                Proto::Http2 => {
                    let mut b =
                        hyper::server::conn::http2::Builder::new(io::Exec(self.panics.clone()));
                    b.timer(TokioTimer::new())
                        .max_header_list_size(self.cfg.max_header_bytes as u32)
                        .max_concurrent_streams(128);
                    drive(b.serve_connection(io, svc), &activity, idle).await
                }
                _ => {
                    let mut b = hyper::server::conn::http1::Builder::new();
                    b.timer(TokioTimer::new())
                        .header_read_timeout(self.cfg.header_timeout)
                        .max_header_size(self.cfg.max_header_bytes)
                        .half_close(false);
                    drive(b.serve_connection(io, svc).with_upgrades(), &activity, idle).await
                }
            };
            if let Err(e) = result {
                tracing::debug!(peer = %conn.peer, error = %e, "proxy: connection ended");
            }
        })
    }

    /// The agent's rules under `engine`, cached per connection and per generation.
    fn view(&self, conn: Option<&Conn>, engine: &Arc<Engine>, agent: &AgentRef) -> Arc<AgentRules> {
        if let Some(conn) = conn {
            let cached = conn.view.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((e, v)) = &*cached
                && Arc::ptr_eq(e, engine)
            {
                return v.clone();
            }
        }
        let v = {
            let mut cache = self.views.lock().unwrap_or_else(|p| p.into_inner());
            if !cache
                .engine
                .as_ref()
                .is_some_and(|e| Arc::ptr_eq(e, engine))
            {
                cache.engine = Some(engine.clone());
                cache.views.clear();
            }
            if cache.views.len() >= VIEWS_MAX && !cache.views.contains_key(agent) {
                cache.views.clear();
            }
            cache
                .views
                .entry(agent.clone())
                .or_insert_with(|| Arc::new(engine.agent(agent)))
                .clone()
        };
        if let Some(conn) = conn {
            *conn.view.lock().unwrap_or_else(|p| p.into_inner()) =
                Some((engine.clone(), v.clone()));
        }
        v
    }

    /// One request, start to finish.
    async fn handle(self: &Arc<Self>, conn: &Arc<Conn>, req: Request<Incoming>) -> Response<Body> {
        // Held until the response is sent: a streaming response keeps the connection busy.
        let busy = conn.activity.busy();
        // What this request's raw head said about its length (HTTP/1), taken in order.
        let raw_head = conn.activity.take_head();
        let Some(client) = &conn.client else {
            let id = self.unidentified(conn);
            return respond::refusal(
                &Refusal {
                    status: StatusCode::FORBIDDEN,
                    error: "blocked",
                    rule: "builtin:identity",
                    reason: "not an agent connection",
                    decision_id: &id,
                    retry_after: None,
                },
                None,
            );
        };
        if req.uri().path() == DECIDE_PATH {
            return self.decide_endpoint(client, req).await;
        }
        let mut head = match request::check_framing(req.headers(), raw_head)
            .and_then(|()| request::target(req.method(), req.uri(), req.version(), req.headers()))
        {
            Ok(h) => h,
            Err(e) => return self.reject(client, &req, &e),
        };
        if let Mode::Intercepted { .. } = conn.mode {
            head.tls = Some(Tls::Intercepted);
        }
        if head.method == "CONNECT" {
            let mut resp = self.connect(conn, client, head, req).await;
            if !resp.status().is_success() {
                // The client may already be sending what it meant for the tunnel.
                resp.headers_mut().insert(
                    header::CONNECTION,
                    header::HeaderValue::from_static("close"),
                );
            }
            return resp;
        }
        // The host check now if it needs no DNS lookup; otherwise after the decision, and only
        // if the request is to go to its destination.
        let mut dest = match self.destination(conn, client, &head, Lookup::Local).await {
            Ok(d) => d,
            Err(resp) => return resp,
        };
        let engine = self.engine.load_full();
        let view = self.view(Some(conn), &engine, &client.agent);
        let (parts, body) = req.into_parts();
        let limit = view.max_body().unwrap_or(self.cfg.max_body);
        let mut body = ReqBody::Stream(body);
        let mut bytes = None;
        if engine.needs_body(&view, &head.host) {
            match self
                .read_body(body, parts.headers.get(header::CONTENT_LENGTH), limit)
                .await
            {
                Ok(b) => bytes = Some(b),
                Err(resp) => {
                    let why = resp.status().canonical_reason().unwrap_or("refused");
                    self.refused(client, &head, "builtin:body", why);
                    return resp;
                }
            };
            body = ReqBody::Read(bytes.clone().unwrap_or_default());
        }
        let ev = match canonical::evaluate(
            &engine,
            &view,
            &head,
            &parts.headers,
            bytes.as_deref(),
            limit,
        ) {
            Ok(ev) => ev,
            Err(why) => {
                let mcp = engine.is_mcp_endpoint(&view, &head.host, &head.path);
                return self.refuse_unreadable(client, &head, &why, mcp);
            }
        };
        let canonical::Evaluated {
            decision,
            mcp,
            http,
            ..
        } = ev;
        if dest.is_none() && forwards(&decision.outcome) {
            dest = match self.destination(conn, client, &head, Lookup::Resolve).await {
                Ok(d) => d,
                Err(resp) => return resp,
            };
        }
        let then = self
            .verdict(
                client,
                &engine,
                &head,
                &http,
                &decision,
                mcp.as_ref(),
                &mut body,
                limit,
            )
            .await;
        let sandbox = match then {
            Then::Respond(r) if mcp.is_some() => return self.on_session(client, &head, r),
            Then::Respond(r) => return r,
            Then::Forward => None,
            Then::Sandbox(url) => Some(url),
        };
        if request::wants_upgrade(&parts.headers) {
            let mut resp = respond::error(
                StatusCode::NOT_IMPLEMENTED,
                "upgrade not supported",
                "the policy proxy does not carry protocol upgrades (WebSocket) yet",
                None,
            );
            // The client may already be speaking the new protocol: end the connection.
            resp.headers_mut().insert(
                header::CONNECTION,
                header::HeaderValue::from_static("close"),
            );
            return resp;
        }
        let mut rule = decision.rule.clone().unwrap_or_else(|| "default".into());
        let mut sandbox = sandbox;
        let dest = match (dest, &sandbox) {
            (_, Some(_)) => None,
            (Some(d), None) => Some(d),
            // Not reached: a request that goes to its destination was checked above.
            (None, None) => match self.destination(conn, client, &head, Lookup::Resolve).await {
                Ok(d) => d,
                Err(resp) => return resp,
            },
        };
        let addr = match dest {
            None => None,
            Some(Dest::Addr(addr)) => Some(addr),
            Some(Dest::Name(host, port)) => {
                match self
                    .explicit_target(client, &engine, &view, &head, &host, port, &mut body, limit)
                    .await
                {
                    Ok(Target::Addr(addr)) => Some(addr),
                    Ok(Target::Sandbox { rule: r, url }) => {
                        rule = r;
                        sandbox = Some(url);
                        None
                    }
                    Err(resp) => return resp,
                }
            }
        };
        let to = match (addr, sandbox.as_deref()) {
            (_, Some(url)) => To::Sandbox { rule: &rule, url },
            (Some(addr), None) => To::Upstream(addr),
            (None, None) => {
                return respond::error(
                    StatusCode::BAD_GATEWAY,
                    "bad gateway",
                    "no destination",
                    None,
                );
            }
        };
        let stream_of_session =
            parts.method == Method::GET && engine.has_mcp_rules(&view, &head.host);
        let wait = view.idle_timeout(&head.host);
        let resp = self.forward(conn, parts, body, &head, to, wait, busy).await;
        if stream_of_session && is_event_stream(resp.headers()) {
            let sessions = self.sessions.clone();
            let (agent, host, path) = (&client.agent.name, &head.host, &head.path);
            return resp.map(|b| {
                Body::Session(Box::new(SessionBody::new(b, sessions, agent, host, path)))
            });
        }
        resp
    }

    /// A refused MCP call (a JSON-RPC error, HTTP 200) that a legacy SSE session posted: the
    /// refusal goes to the session's event stream, where its client waits for the reply, and
    /// the POST gets 202 as the server would answer it (see [`sse`]). Anything else as it is.
    fn on_session(&self, client: &Client, head: &Head, resp: Response<Body>) -> Response<Body> {
        if head.method != "POST" || resp.status() != StatusCode::OK {
            return resp;
        }
        let (parts, body) = resp.into_parts();
        let delivered = matches!(&body, Body::Full(Some(message)) if self.sessions.deliver(
            &client.agent.name,
            &head.host,
            &head.path,
            head.query.as_deref(),
            message,
        ));
        if !delivered {
            return Response::from_parts(parts, body);
        }
        let mut accepted = Response::new(Body::empty());
        *accepted.status_mut() = StatusCode::ACCEPTED;
        for (name, value) in &parts.headers {
            if name.as_str().starts_with("x-governance-") {
                accepted.headers_mut().insert(name, value.clone());
            }
        }
        accepted
    }

    /// Where a request goes, after the host check (transparent) or the tunnel check. With
    /// [`Lookup::Local`], a transparent request's host check that would need a DNS lookup is
    /// not made: Ok(None).
    async fn destination(
        &self,
        conn: &Conn,
        client: &Client,
        head: &Head,
        lookup: Lookup,
    ) -> Result<Option<Dest>, Response<Body>> {
        let mismatch = |status: StatusCode, reason: String| {
            let rec = self.builtin_record(
                Some(client),
                Some(head),
                "builtin:host-check",
                &reason,
                Object::default(),
            );
            let id = rec.id.clone();
            (self.sink)(rec);
            let error = if status == StatusCode::MISDIRECTED_REQUEST {
                "misdirected request"
            } else {
                "blocked"
            };
            respond::refusal(
                &Refusal {
                    status,
                    error,
                    rule: "builtin:host-check",
                    reason: &reason,
                    decision_id: &id,
                    retry_after: None,
                },
                None,
            )
        };
        if head.host.is_empty() && !matches!(conn.mode, Mode::Explicit) {
            // Without a name, host rules could not apply: never decide without one.
            return Err(respond::error(
                StatusCode::BAD_REQUEST,
                "bad request",
                "a Host header is required",
                None,
            ));
        }
        // What names the destination: the request's Host, or a TLS server name.
        let what = if head.tls == Some(Tls::Spliced) {
            "SNI"
        } else {
            "Host"
        };
        match &conn.mode {
            Mode::Tunnel { host, addr, .. } => {
                if head.host != *host {
                    return Err(mismatch(
                        StatusCode::FORBIDDEN,
                        format!(
                            "{what} does not match the CONNECT host: `{}` inside a tunnel to `{host}`",
                            head.host
                        ),
                    ));
                }
                Ok(Some(Dest::Addr(*addr)))
            }
            Mode::Intercepted { host, addr } => {
                if head.host != *host {
                    return Err(mismatch(
                        StatusCode::MISDIRECTED_REQUEST,
                        format!(
                            "Host does not match the TLS server name: `{}` on a connection to `{host}`",
                            head.host
                        ),
                    ));
                }
                Ok(Some(Dest::Addr(*addr)))
            }
            Mode::Transparent(dst) if !head.absolute => {
                let checked = match lookup {
                    Lookup::Local => match self.upstream.host_names_local(&head.host, *dst) {
                        Some(r) => r,
                        None => return Ok(None),
                    },
                    Lookup::Resolve => self.upstream.host_names(&head.host, *dst).await,
                };
                match checked {
                    Ok(()) => Ok(Some(Dest::Addr(*dst))),
                    Err(why) => Err(mismatch(
                        StatusCode::FORBIDDEN,
                        format!("{what} does not match the destination: {why}"),
                    )),
                }
            }
            _ if head.host.is_empty() => Err(respond::error(
                StatusCode::BAD_REQUEST,
                "not a proxy request",
                "this is an HTTP policy proxy: send absolute-form requests (GET http://host/path) or CONNECT",
                None,
            )),
            _ => Ok(Some(Dest::Name(head.host.clone(), head.port.unwrap_or(80)))),
        }
    }

    /// Read a body the decision needs, within the limit and `body_timeout`.
    async fn read_body(
        &self,
        body: ReqBody,
        declared: Option<&header::HeaderValue>,
        limit: usize,
    ) -> Result<Bytes, Response<Body>> {
        let too_large = || {
            respond::error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body too large",
                &format!("the policy proxy reads bodies up to {limit} bytes to decide on them"),
                None,
            )
        };
        let body = match body {
            ReqBody::Read(b) => return Ok(b),
            ReqBody::Stream(b) => b,
        };
        let declared = declared
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > limit as u64) {
            return Err(too_large());
        }
        match tokio::time::timeout(self.cfg.body_timeout, Limited::new(body, limit).collect()).await
        {
            Err(_) => Err(respond::error(
                StatusCode::REQUEST_TIMEOUT,
                "body timeout",
                "the request body did not arrive in time",
                None,
            )),
            Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => Err(too_large()),
            Ok(Err(e)) => Err(respond::error(
                StatusCode::BAD_REQUEST,
                "bad body",
                &e.to_string(),
                None,
            )),
            Ok(Ok(c)) => Ok(c.to_bytes()),
        }
    }

    /// Report the decision and turn the verdict into what happens next. Escalations wait
    /// here for a human.
    #[allow(clippy::too_many_arguments)]
    async fn verdict(
        &self,
        client: &Client,
        engine: &Engine,
        head: &Head,
        http: &HttpRequest,
        decision: &Decision,
        mcp: Option<&McpCall>,
        body: &mut ReqBody,
        limit: usize,
    ) -> Then {
        let mut rec = self.decision_record(client, head, decision, Source::Proxy);
        if let Some(m) = mcp {
            rec.object.mcp_tool = m.tools.join(",");
        }
        rec.object
            .detail
            .extend(body_fields(engine, decision, http.body.as_ref()));
        self.respond_to(client, rec, http, decision, mcp, body, limit)
            .await
    }

    /// Turn a decision, reported as `rec`, into what happens next. Escalations wait here.
    #[allow(clippy::too_many_arguments)]
    async fn respond_to(
        &self,
        client: &Client,
        mut rec: Record,
        http: &HttpRequest,
        decision: &Decision,
        mcp: Option<&McpCall>,
        body: &mut ReqBody,
        limit: usize,
    ) -> Then {
        let rule = decision.rule.as_deref().unwrap_or("default").to_owned();
        let ids = mcp.map(|m| &m.ids);
        let refuse = |rec: Record, status, error, reason: &str, retry_after| {
            let id = rec.id.clone();
            (self.sink)(rec);
            Then::Respond(respond::refusal(
                &Refusal {
                    status,
                    error,
                    rule: &rule,
                    reason,
                    decision_id: &id,
                    retry_after,
                },
                ids,
            ))
        };
        match &decision.outcome {
            Outcome::Allow => {
                (self.sink)(rec);
                Then::Forward
            }
            Outcome::Block => {
                let reason = decision.reason.clone();
                refuse(rec, StatusCode::FORBIDDEN, "blocked", &reason, None)
            }
            Outcome::Throttle { retry_after } => {
                let secs = retry_after.as_secs_f64().ceil().max(1.0) as u64;
                let reason = decision.reason.clone();
                refuse(
                    rec,
                    StatusCode::TOO_MANY_REQUESTS,
                    "throttled",
                    &reason,
                    Some(secs),
                )
            }
            Outcome::Sandbox(SandboxTarget::Upstream(url)) => {
                rec.object.detail.insert("upstream".into(), url.clone());
                (self.sink)(rec);
                Then::Sandbox(url.clone())
            }
            Outcome::Sandbox(SandboxTarget::Profile(p)) => {
                rec.outcome = "block".into();
                rec.denied = true;
                let reason = format!(
                    "sandbox profile `{p}` applies to processes, not HTTP requests; blocked"
                );
                rec.reason = reason.clone();
                refuse(rec, StatusCode::FORBIDDEN, "blocked", &reason, None)
            }
            Outcome::Escalate {
                timeout,
                on_timeout,
            } => {
                let key = self.grant_key(&rule, http);
                if self.granted(&client.agent.name, key) {
                    rec.outcome = "granted".into();
                    rec.denied = false;
                    rec.message = "pre-authorized by an approval".into();
                    (self.sink)(rec);
                    return Then::Forward;
                }
                // A held request keeps its body.
                let bytes = match std::mem::replace(body, ReqBody::Read(Bytes::new())) {
                    ReqBody::Read(b) => b,
                    stream @ ReqBody::Stream(_) => {
                        match self.read_body(stream, None, limit).await {
                            Ok(b) => b,
                            Err(resp) => {
                                (self.sink)(rec);
                                return Then::Respond(resp);
                            }
                        }
                    }
                };
                *body = ReqBody::Read(bytes.clone());
                self.hold(
                    client,
                    rec,
                    &rule,
                    decision,
                    *timeout,
                    *on_timeout,
                    bytes.len(),
                    ids,
                )
                .await
            }
        }
    }

    /// Hold an escalated request until approved, denied, timed out or withdrawn.
    #[allow(clippy::too_many_arguments)]
    async fn hold(
        &self,
        client: &Client,
        rec: Record,
        rule: &str,
        decision: &Decision,
        timeout: Duration,
        on_timeout: Posture,
        bytes: usize,
        mcp: Option<&McpIds>,
    ) -> Then {
        let req = approvals::Request {
            agent: client.info.clone(),
            kind: "http".into(),
            object: rec.object.clone(),
            rule: rule.to_owned(),
            reason: decision.reason.clone(),
            timeout,
            on_timeout,
            bytes,
        };
        let refuse = |rec: Option<Record>, id: &str, reason: &str| {
            if let Some(rec) = rec {
                (self.sink)(rec);
            }
            Then::Respond(respond::refusal(
                &Refusal {
                    status: StatusCode::FORBIDDEN,
                    error: "blocked",
                    rule,
                    reason,
                    decision_id: id,
                    retry_after: None,
                },
                mcp,
            ))
        };
        let decision_id = rec.id.clone();
        // The decision is reported when the queue takes the request (with its approval id),
        // just before the request itself; on a full queue it is reported as a block.
        let mut pending = Some(rec);
        let held = self.approvals.hold_announced(req, &mut |info| {
            if let Some(mut rec) = pending.take() {
                rec.approval = Some(info.clone());
                (self.sink)(rec);
            }
        });
        let (approval, mut rx) = match held {
            Ok(x) => x,
            Err(full) => {
                let rec = pending.take().map(|mut rec| {
                    rec.outcome = "block".into();
                    rec.denied = true;
                    rec.reason = format!("approval queue full ({full})");
                    rec
                });
                return refuse(rec, &decision_id, "approval queue full");
            }
        };
        // Withdraw if this future is dropped (the client went away).
        let mut guard = Withdraw {
            approvals: &self.approvals,
            id: approval.clone(),
            armed: true,
        };
        let resolution = tokio::select! {
            r = &mut rx => r.unwrap_or(Resolution::Withdrawn),
            () = tokio::time::sleep(timeout) => {
                self.approvals.expire(&approval);
                rx.await.unwrap_or(Resolution::Expired)
            }
        };
        guard.armed = false;
        match resolution {
            Resolution::Approved { .. } => Then::Forward,
            Resolution::Denied { by, reason } => {
                refuse(None, &decision_id, &format!("denied by {by}: {reason}"))
            }
            Resolution::Expired if on_timeout == Posture::Allow => Then::Forward,
            Resolution::Expired => refuse(None, &decision_id, "approval timed out"),
            Resolution::Withdrawn => refuse(None, &decision_id, "approval withdrawn"),
        }
    }

    /// Where an explicit-proxy request or tunnel goes: the named host, resolved (only now,
    /// after the request's own decision allowed it), if the agent's `network` rules let it
    /// connect there. In transparent mode the kernel already decided the agent's own connect;
    /// here the proxy connects on the agent's behalf, so the same rules apply with all five
    /// verdicts: block → 403, throttle → 429, escalate → held for a human (a held request keeps
    /// its body), sandbox with an upstream → the request goes there (a tunnel cannot: blocked),
    /// sandbox with a profile → blocked (a profile applies to the agent's processes, and this
    /// connection is the proxy's). CONNECT passes an empty body.
    #[allow(clippy::too_many_arguments)]
    async fn explicit_target(
        &self,
        client: &Client,
        engine: &Engine,
        view: &AgentRules,
        head: &Head,
        host: &str,
        port: u16,
        body: &mut ReqBody,
        limit: usize,
    ) -> Result<Target, Response<Body>> {
        let addr = match self.upstream.resolve(host).await {
            Ok(ips) => SocketAddr::new(ips[0], port),
            Err(e) => {
                return Err(respond::error(
                    StatusCode::BAD_GATEWAY,
                    "bad gateway",
                    &e.to_string(),
                    None,
                ));
            }
        };
        let action = Action::Network {
            addr: addr.ip(),
            port,
            protocol: crate::policy::Protocol::Tcp,
        };
        let mut d = engine.decide(view, &action, Instant::now());
        if d.outcome == Outcome::Allow {
            return Ok(Target::Addr(addr));
        }
        let tunnel = head.method == "CONNECT";
        match &d.outcome {
            Outcome::Sandbox(SandboxTarget::Upstream(url)) if tunnel => {
                d.reason = format!(
                    "{} (sandbox upstream `{url}`: a tunnel cannot be sent there; blocked)",
                    d.reason
                );
                d.outcome = Outcome::Block;
            }
            Outcome::Sandbox(SandboxTarget::Profile(p)) => {
                d.reason = format!(
                    "{} (sandbox profile `{p}` applies to the agent's processes, not to a connection the proxy makes for it; blocked)",
                    d.reason
                );
                d.outcome = Outcome::Block;
            }
            _ => {}
        }
        d.reason = format!("{} (connecting to {addr})", d.reason);
        let mut rec = self.decision_record(client, head, &d, Source::Proxy);
        rec.object.dest = addr.to_string();
        rec.object.protocol = "tcp".into();
        let http = request::to_engine(head, None, None);
        match self
            .respond_to(client, rec, &http, &d, None, body, limit)
            .await
        {
            Then::Forward => Ok(Target::Addr(addr)),
            Then::Sandbox(url) => Ok(Target::Sandbox {
                rule: d.rule.clone().unwrap_or_else(|| "default".into()),
                url,
            }),
            Then::Respond(r) => Err(r),
        }
    }

    /// Send the request upstream and stream the response back. `wait`: the host's
    /// `proxy.idle_timeout`, if a policy sets one; `busy` is held until the response is sent.
    #[allow(clippy::too_many_arguments)]
    async fn forward(
        &self,
        conn: &Conn,
        mut parts: http::request::Parts,
        body: ReqBody,
        head: &Head,
        to: To<'_>,
        wait: Option<Duration>,
        busy: io::Busy,
    ) -> Response<Body> {
        let bad_gateway =
            |reason: String| respond::error(StatusCode::BAD_GATEWAY, "bad gateway", &reason, None);
        let (addr, authority, path) = match to {
            To::Sandbox { url, .. } => {
                let Some(rest) = url.strip_prefix("http://") else {
                    return bad_gateway(format!(
                        "sandbox upstream `{url}`: only http:// upstreams are supported yet"
                    ));
                };
                let (authority, prefix) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
                let Ok(a) = authority.parse::<http::uri::Authority>() else {
                    return bad_gateway(format!("sandbox upstream `{url}` has a bad authority"));
                };
                let host = request::normalise_host(a.host());
                let addr = match self.upstream.resolve(&host).await {
                    Ok(ips) => SocketAddr::new(ips[0], a.port_u16().unwrap_or(80)),
                    Err(e) => return bad_gateway(e.to_string()),
                };
                let path = format!("{}{}", prefix.trim_end_matches('/'), head.path_and_query());
                (addr, authority.to_owned(), path)
            }
            To::Upstream(addr) => (addr, head.authority.clone(), head.path_and_query()),
        };
        if self.is_self(addr, conn.local) {
            return respond::error(
                StatusCode::LOOP_DETECTED,
                "loop",
                "the request would come back to the proxy",
                None,
            );
        }
        // Intercepted: upstream over TLS, verified for the server name the agent asked for.
        let tls_name = match (&conn.mode, to) {
            (Mode::Intercepted { host, .. }, To::Upstream(_)) => Some(host.as_str()),
            _ => None,
        };
        let uri = match tls_name {
            Some(_) => Uri::builder().path_and_query(path).build(),
            None => Uri::builder()
                .scheme("http")
                .authority(addr.to_string())
                .path_and_query(path)
                .build(),
        };
        let uri = match uri {
            Ok(u) => u,
            Err(e) => return bad_gateway(format!("cannot build the upstream request: {e}")),
        };
        request::strip_hop_by_hop(&mut parts.headers);
        let host_value = if authority.is_empty() {
            addr.to_string()
        } else {
            authority
        };
        parts
            .headers
            .insert(header::HOST, request::header_value(&host_value));
        if let To::Sandbox { rule, .. } = to {
            parts
                .headers
                .insert("x-governance-sandboxed", request::header_value(rule));
        }
        parts.uri = uri;
        parts.version = Version::HTTP_11;
        let body = match body {
            ReqBody::Read(b) => {
                parts.headers.remove(header::CONTENT_LENGTH);
                UpBody::Full((!b.is_empty()).then_some(b))
            }
            ReqBody::Stream(s) => UpBody::Stream(s),
        };
        let req = Request::from_parts(parts, body);
        let head_wait = wait.unwrap_or(self.cfg.upstream_timeout);
        let gateway_timeout = || {
            respond::error(
                StatusCode::GATEWAY_TIMEOUT,
                "gateway timeout",
                &format!("the upstream did not answer within {head_wait:?}"),
                None,
            )
        };
        let resp = match tls_name {
            Some(name) => {
                let sent = self.send_tls(conn, name, addr, req);
                match tokio::time::timeout(head_wait, sent).await {
                    Err(_) => return gateway_timeout(),
                    Ok(Err(reason)) => return bad_gateway(reason),
                    Ok(Ok(r)) => r,
                }
            }
            None => {
                let sent = self.upstream.client.request(req);
                match tokio::time::timeout(head_wait, sent).await {
                    Err(_) => return gateway_timeout(),
                    Ok(Err(e)) => {
                        let timed_out = std::error::Error::source(&e)
                            .and_then(|s| s.to_string().contains("timed out").then_some(()))
                            .is_some();
                        return if timed_out {
                            respond::error(
                                StatusCode::GATEWAY_TIMEOUT,
                                "gateway timeout",
                                &format!("connecting to {addr} timed out"),
                                None,
                            )
                        } else if e.is_connect() {
                            bad_gateway(format!("cannot connect to {addr}: {}", error_chain(&e)))
                        } else {
                            bad_gateway(format!("upstream {addr} failed: {}", error_chain(&e)))
                        };
                    }
                    Ok(Ok(r)) => r,
                }
            }
        };
        let (mut parts, body) = resp.into_parts();
        request::strip_hop_by_hop(&mut parts.headers);
        if let To::Sandbox { rule, .. } = to {
            parts
                .headers
                .insert("x-governance-sandboxed", request::header_value(rule));
        }
        // Between frames: the host's limit, else SSE's own, else the upstream timeout.
        let idle = wait.unwrap_or(if is_event_stream(&parts.headers) {
            self.cfg.stream_idle_timeout
        } else {
            self.cfg.upstream_timeout
        });
        Response::from_parts(parts, Body::upstream(body, idle, Some(busy)))
    }

    /// Send an intercepted connection's request over its own TLS connection to the upstream,
    /// made on first use and kept for the next request (HTTP/1.1: one at a time).
    async fn send_tls(
        &self,
        conn: &Conn,
        name: &str,
        addr: SocketAddr,
        req: Request<UpBody>,
    ) -> Result<Response<Incoming>, String> {
        let Ok(interception) = &self.interception else {
            return Err("TLS interception is unavailable".into());
        };
        let kept = conn
            .tls_upstream
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        let ready = match kept {
            // Not ready: the upstream closed it.
            Some(mut s) => s.ready().await.is_ok().then_some(s),
            None => None,
        };
        let mut sender = match ready {
            Some(s) => s,
            None => {
                let stream = tls::connect_upstream(&interception.upstream, addr, name)
                    .await
                    .map_err(|e| e.to_string())?;
                let (s, connection) =
                    hyper::client::conn::http1::handshake::<_, UpBody>(TokioIo::new(stream))
                        .await
                        .map_err(|e| format!("upstream {addr}: {}", error_chain(&e)))?;
                let peer = conn.peer;
                io::spawn(&self.panics, async move {
                    if let Err(e) = connection.await {
                        tracing::debug!(%peer, %addr, error = %e, "proxy: upstream TLS connection ended");
                    }
                });
                s
            }
        };
        let response = sender.send_request(req);
        *conn.tls_upstream.lock().unwrap_or_else(|p| p.into_inner()) = Some(sender);
        response
            .await
            .map_err(|e| format!("upstream {addr} failed: {}", error_chain(&e)))
    }

    /// The host-level decision of a CONNECT or of a TLS server name: an HTTP action with
    /// method `CONNECT` and an empty path. A `sandbox` upstream cannot apply (the proxy never
    /// sees the requests inside): blocked.
    fn host_decision(
        &self,
        engine: &Engine,
        view: &AgentRules,
        head: &Head,
        headers: Option<&hyper::HeaderMap>,
    ) -> (HttpRequest, Decision) {
        let headers = headers.filter(|_| engine.needs_headers(view, &head.host));
        let http = request::to_engine(head, headers, None);
        let mut decision = engine.decide(view, &Action::Http(http.clone()), Instant::now());
        if let Outcome::Sandbox(SandboxTarget::Upstream(url)) = &decision.outcome {
            decision.reason = format!(
                "{} (sandbox upstream `{url}`: a tunnel or a spliced TLS connection cannot be sent there; blocked)",
                decision.reason
            );
            decision.outcome = Outcome::Block;
        }
        (http, decision)
    }

    /// Report a host-level decision and act on it (held here if escalated). Err: the refusal.
    async fn host_verdict(
        &self,
        client: &Client,
        engine: &Engine,
        head: &Head,
        http: &HttpRequest,
        decision: &Decision,
    ) -> Result<(), Response<Body>> {
        let mut body = ReqBody::Read(Bytes::new());
        match self
            .verdict(client, engine, head, http, decision, None, &mut body, 0)
            .await
        {
            Then::Forward => Ok(()),
            Then::Respond(r) => Err(r),
            // Not reached: sandbox upstreams are blocked in `host_decision`.
            Then::Sandbox(_) => Err(respond::error(
                StatusCode::FORBIDDEN,
                "blocked",
                "sandbox upstreams apply to requests, not tunnels",
                None,
            )),
        }
    }

    /// [`Proxy::host_decision`], then [`Proxy::host_verdict`].
    async fn decide_host(
        &self,
        client: &Client,
        engine: &Engine,
        view: &AgentRules,
        head: &Head,
        headers: Option<&hyper::HeaderMap>,
    ) -> Result<(), Response<Body>> {
        let (http, decision) = self.host_decision(engine, view, head, headers);
        self.host_verdict(client, engine, head, &http, &decision)
            .await
    }

    /// CONNECT: decide at host level, then tunnel. A host whose TLS the agent's policies
    /// intercept is not decided here: what the tunnel carries is, request by request.
    async fn connect(
        self: &Arc<Self>,
        conn: &Arc<Conn>,
        client: &Client,
        head: Head,
        req: Request<Incoming>,
    ) -> Response<Body> {
        if matches!(conn.mode, Mode::Tunnel { .. } | Mode::Intercepted { .. }) {
            return respond::error(
                StatusCode::BAD_REQUEST,
                "bad request",
                "CONNECT inside a tunnel",
                None,
            );
        }
        let engine = self.engine.load_full();
        let view = self.view(Some(conn), &engine, &client.agent);
        let decided = !view.intercepts_tls(&head.host);
        if decided
            && let Err(r) = self
                .decide_host(client, &engine, &view, &head, Some(req.headers()))
                .await
        {
            return r;
        }
        let port = head.port.unwrap_or(443);
        let mut none = ReqBody::Read(Bytes::new());
        let addr = match self
            .explicit_target(
                client, &engine, &view, &head, &head.host, port, &mut none, 0,
            )
            .await
        {
            Ok(Target::Addr(addr)) => addr,
            // Not reached: a tunnel's sandbox upstream is blocked in `explicit_target`.
            Ok(Target::Sandbox { .. }) => {
                return respond::error(
                    StatusCode::FORBIDDEN,
                    "blocked",
                    "a tunnel cannot go to a sandbox upstream",
                    None,
                );
            }
            Err(resp) => return resp,
        };
        if self.is_self(addr, conn.local) {
            return respond::error(
                StatusCode::LOOP_DETECTED,
                "loop",
                "the tunnel would come back to the proxy",
                None,
            );
        }
        let upgrade = hyper::upgrade::on(req);
        let this = self.clone();
        let tunnel = conn.inner(Mode::Tunnel {
            host: head.host.clone(),
            addr,
            decided,
        });
        io::spawn(&self.panics, async move {
            let Ok(upgraded) = upgrade.await else {
                return;
            };
            let mut io = TokioIo::new(upgraded);
            let sniffed =
                tokio::time::timeout(this.cfg.header_timeout, io::sniff_read(&mut io)).await;
            let Ok(Ok((proto, first))) = sniffed else {
                return;
            };
            let io = Prefixed::new(first, io);
            match proto {
                Proto::Tls => this.tls(tunnel, TlsIo::Tunnel(Box::new(io))).await,
                p => this.serve_http(tunnel, io, p).await,
            }
        });
        Response::new(Body::empty())
    }

    /// Report a request the proxy refused itself (body over the limit, invalid JSON, ...);
    /// returns the record's id.
    fn refused(&self, client: &Client, head: &Head, rule: &str, reason: &str) -> String {
        let rec = self.builtin_record(Some(client), Some(head), rule, reason, Object::default());
        let id = rec.id.clone();
        (self.sink)(rec);
        id
    }

    /// Refuse a request whose body (or query, or method) could be read in more than one way
    /// ([`canonical::Refused`]): reported, and answered with the reason as JSON (a JSON-RPC
    /// error on an MCP endpoint).
    fn refuse_unreadable(
        &self,
        client: &Client,
        head: &Head,
        why: &canonical::Refused,
        mcp_endpoint: bool,
    ) -> Response<Body> {
        let reason = why.to_string();
        let id = self.refused(client, head, why.rule(), &reason);
        tracing::debug!(agent = %client.info.name, url = %head.url(), %reason, "proxy: refused");
        if mcp_endpoint {
            return respond::jsonrpc_error(
                why.status(),
                why.jsonrpc_code(),
                &reason,
                why.rule(),
                &id,
            );
        }
        respond::refusal(
            &Refusal {
                status: why.status(),
                error: why.error(),
                rule: why.rule(),
                reason: &reason,
                decision_id: &id,
                retry_after: None,
            },
            None,
        )
    }

    /// A request refused before any decision (400).
    fn reject(&self, client: &Client, req: &Request<Incoming>, e: &Reject) -> Response<Body> {
        let reason = e.to_string();
        let rec = self.builtin_record(
            Some(client),
            None,
            "builtin:request",
            &reason,
            Object {
                method: req.method().as_str().to_owned(),
                ..Default::default()
            },
        );
        let id = rec.id.clone();
        (self.sink)(rec);
        let mut resp = respond::refusal(
            &Refusal {
                status: StatusCode::BAD_REQUEST,
                error: "bad request",
                rule: "builtin:request",
                reason: &reason,
                decision_id: &id,
                retry_after: None,
            },
            None,
        );
        if matches!(e, Reject::Framing(_)) {
            // The rest of the connection cannot be told apart from this body: end it.
            resp.headers_mut().insert(
                header::CONNECTION,
                header::HeaderValue::from_static("close"),
            );
        }
        resp
    }

    fn base_record(&self, client: Option<&Client>, source: Source) -> Record {
        Record {
            id: self.ids.next(),
            time: rfc3339(SystemTime::now()),
            node: self.node.clone(),
            ty: RecordType::Decision,
            source,
            kind: "http".into(),
            agent: client.map(|c| c.info.clone()),
            cgroup: client.map(|c| CgroupInfo {
                id: c.cgroup_id,
                path: String::new(),
            }),
            process: client.and_then(|c| c.process.clone()),
            ..Default::default()
        }
    }

    /// The record of an engine decision.
    fn decision_record(
        &self,
        client: &Client,
        head: &Head,
        d: &Decision,
        source: Source,
    ) -> Record {
        let verdict = d.verdict();
        let mut rec = self.base_record(Some(client), source);
        rec.outcome = verdict.as_str().into();
        rec.denied = matches!(verdict, Verdict::Block | Verdict::Throttle);
        rec.verdict = verdict.as_str().into();
        rec.mode = "enforce".into();
        rec.rule = d.rule.clone().unwrap_or_else(|| "default".into());
        rec.reason = d.reason.clone();
        rec.generation = d.generation;
        rec.shadow = d.shadow.as_ref().map(|s| Shadow {
            verdict: s.verdict().as_str().into(),
            rule: s.rule.clone().unwrap_or_else(|| "default".into()),
        });
        rec.object = Object {
            method: head.method.clone(),
            url: head.url(),
            ..Default::default()
        };
        if let Some(tls) = head.tls {
            rec.object.detail.insert("tls".into(), tls.as_str().into());
        }
        rec
    }

    /// The record of a built-in refusal (identity, host check, malformed request).
    fn builtin_record(
        &self,
        client: Option<&Client>,
        head: Option<&Head>,
        rule: &str,
        reason: &str,
        object: Object,
    ) -> Record {
        let mut rec = self.base_record(client, Source::Proxy);
        rec.outcome = "block".into();
        rec.denied = true;
        rec.verdict = "block".into();
        rec.mode = "enforce".into();
        rec.rule = rule.into();
        rec.reason = reason.into();
        rec.object = object;
        if let Some(h) = head {
            rec.object.method = h.method.clone();
            rec.object.url = h.url();
            if let Some(tls) = h.tls {
                rec.object.detail.insert("tls".into(), tls.as_str().into());
            }
        }
        rec
    }

    /// What identifies an action for a pre-authorization grant: an MCP call by (rule, tool,
    /// arguments), any other request by (rule, method, host, path, body).
    fn grant_key(&self, rule: &str, http: &HttpRequest) -> u64 {
        let body = http.body.as_ref();
        match body.and_then(tool_call) {
            Some((tool, args)) => {
                self.hasher
                    .hash_one((rule, "tool", tool, args.map(Value::to_string)))
            }
            None => self.hasher.hash_one((
                rule,
                http.method.to_ascii_uppercase(),
                http.host.to_ascii_lowercase(),
                &http.path,
                body.map(Value::to_string),
            )),
        }
    }

    fn granted(&self, agent: &str, key: u64) -> bool {
        let mut grants = self.grants.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        grants.retain(|_, until| *until > now);
        grants.contains_key(&(agent.to_owned(), key))
    }

    async fn decide_endpoint(
        self: &Arc<Self>,
        client: &Client,
        req: Request<Incoming>,
    ) -> Response<Body> {
        if req.method() != Method::POST {
            return respond::error(
                StatusCode::METHOD_NOT_ALLOWED,
                "method not allowed",
                "POST a JSON action to the decision API",
                None,
            );
        }
        let bytes = match self
            .read_body(ReqBody::Stream(req.into_body()), None, self.cfg.max_body)
            .await
        {
            Ok(b) => b,
            Err(r) => return r,
        };
        // Strictly: an action with duplicate keys could be read two ways.
        let action = parse_json(&bytes).and_then(DecideAction::deserialize);
        let action: DecideAction = match action {
            Ok(a) => a,
            Err(e) => {
                return respond::error(
                    StatusCode::BAD_REQUEST,
                    "bad request",
                    &e.to_string(),
                    None,
                );
            }
        };
        match self.preauthorize_with(client, action) {
            Ok(r) => respond::json_response(
                StatusCode::OK,
                &serde_json::to_value(&r).unwrap_or(Value::Null),
            ),
            Err(e) => respond::error(StatusCode::BAD_REQUEST, "bad request", &e, None),
        }
    }
}

/// A connection slot of an agent; released on drop.
struct ConnSlot {
    conns: Arc<Mutex<HashMap<String, usize>>>,
    key: String,
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        let mut conns = self.conns.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = conns.get_mut(&self.key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                conns.remove(&self.key);
            }
        }
    }
}

/// Withdraws a held approval when dropped before it is disarmed (the request's future was
/// cancelled: the client went away).
struct Withdraw<'a> {
    approvals: &'a Approvals,
    id: String,
    armed: bool,
}

impl Drop for Withdraw<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.approvals.withdraw(&self.id);
        }
    }
}

/// A connection whose first byte is a TLS handshake record.
pub(crate) enum TlsIo {
    /// A transparently redirected connection, nothing consumed (peek for the SNI).
    Tcp(TcpStream),
    /// A CONNECT tunnel; the bytes read to recognise TLS are replayed first.
    Tunnel(Box<Prefixed<TokioIo<hyper::upgrade::Upgraded>>>),
}

impl TlsIo {
    fn into_io(self) -> Box<dyn ClientIo> {
        match self {
            TlsIo::Tcp(s) => Box::new(s),
            TlsIo::Tunnel(t) => t,
        }
    }

    /// Wait (up to `timeout`) for the ClientHello and read its server name. Nothing is lost:
    /// a connection is peeked at, a tunnel's bytes are read (at most
    /// [`tls::MAX_CLIENT_HELLO`]) and replayed.
    async fn client_hello(
        self,
        timeout: Duration,
    ) -> (std::io::Result<SniResult>, Box<dyn ClientIo>) {
        match self {
            TlsIo::Tcp(s) => (tls::peek_client_hello(&s, timeout).await, Box::new(s)),
            TlsIo::Tunnel(t) => {
                let (mut buf, mut inner) = t.into_parts();
                let hello = tokio::time::timeout(timeout, read_client_hello(&mut buf, &mut inner))
                    .await
                    .unwrap_or_else(|_| {
                        Err(std::io::Error::new(
                            std::io::ErrorKind::TimedOut,
                            format!("no complete ClientHello within {timeout:?}"),
                        ))
                    });
                (hello, Box::new(Prefixed::new(buf, inner)))
            }
        }
    }
}

/// Read from `io` into `buf` (which holds what was read already) until the ClientHello is
/// whole, or cannot be.
async fn read_client_hello<I: AsyncRead + Unpin>(
    buf: &mut Vec<u8>,
    io: &mut I,
) -> std::io::Result<SniResult> {
    let mut chunk = [0u8; 4096];
    loop {
        match tls::parse_sni(buf) {
            SniResult::NeedMore if buf.len() < tls::MAX_CLIENT_HELLO => {}
            SniResult::NeedMore => return Ok(SniResult::Malformed("ClientHello too large")),
            done => return Ok(done),
        }
        let want = (tls::MAX_CLIENT_HELLO - buf.len()).min(chunk.len());
        let n = io.read(&mut chunk[..want]).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Close a TLS connection the proxy refuses, with a fatal `access_denied` alert so that the
/// client reports a refusal rather than a reset. What the client still sends is read and
/// dropped until it closes (2 s at most): closing with unread bytes would reset the
/// connection, and could discard the alert.
async fn refuse_tls(mut io: Box<dyn ClientIo>) {
    const ACCESS_DENIED: [u8; 7] = [0x15, 3, 3, 0, 2, 2, 49];
    let close = async {
        io.write_all(&ACCESS_DENIED).await?;
        io.shutdown().await?;
        let mut sink = [0u8; 4096];
        while io.read(&mut sink).await? > 0 {}
        Ok::<_, std::io::Error>(())
    };
    let _ = tokio::time::timeout(Duration::from_secs(2), close).await;
}

/// Resolves once `activity` has seen nothing for `idle`.
async fn until_idle(activity: &Activity, idle: Duration) {
    loop {
        let deadline = activity.last() + idle;
        if deadline <= Instant::now() {
            return;
        }
        tokio::time::sleep_until(deadline.into()).await;
    }
}

/// 503 without reading the request, then close.
async fn too_many_connections(mut stream: TcpStream) {
    let body = br#"{"error":"too many connections","reason":"this agent has too many open connections through the policy proxy"}"#;
    let head = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    let write = async {
        stream.write_all(head.as_bytes()).await?;
        stream.write_all(body).await?;
        stream.shutdown().await
    };
    let _ = tokio::time::timeout(Duration::from_secs(2), write).await;
}

/// A connection future that can be asked to finish.
trait Graceful: std::future::Future<Output = Result<(), hyper::Error>> {
    fn shutdown(self: std::pin::Pin<&mut Self>);
}

impl<I, S, B> Graceful for hyper::server::conn::http1::UpgradeableConnection<I, S>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    S: hyper::service::HttpService<Incoming, ResBody = B>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: hyper::body::Body + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    fn shutdown(self: std::pin::Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

impl<I, S, B, E> Graceful for hyper::server::conn::http2::Connection<I, S, E>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin,
    S: hyper::service::HttpService<Incoming, ResBody = B>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: hyper::body::Body + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    E: hyper::rt::bounds::Http2ServerConnExec<S::Future, B>,
{
    fn shutdown(self: std::pin::Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

/// Run a connection; close it gracefully once idle for `idle` with nothing in flight.
async fn drive<C: Graceful>(
    conn: C,
    activity: &Activity,
    idle: Duration,
) -> Result<(), hyper::Error> {
    tokio::pin!(conn);
    loop {
        // While requests are in flight (held, or slow upstreams) look again every second.
        let next = if activity.inflight() > 0 {
            Instant::now() + idle.min(Duration::from_secs(1))
        } else {
            activity.last() + idle
        };
        tokio::select! {
            r = conn.as_mut() => return r,
            () = tokio::time::sleep_until(next.into()) => {
                if activity.inflight() == 0 && activity.last() + idle <= Instant::now() {
                    conn.as_mut().shutdown();
                    return tokio::time::timeout(Duration::from_secs(5), conn)
                        .await
                        .unwrap_or(Ok(()));
                }
            }
        }
    }
}

/// Whether a response is an event stream (SSE): `Content-Type: text/event-stream`.
fn is_event_stream(headers: &hyper::HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(';')
                .next()
                .is_some_and(|t| t.trim().eq_ignore_ascii_case("text/event-stream"))
        })
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// An MCP call in a request body: tool names and JSON-RPC ids.
#[derive(Clone, Debug, PartialEq)]
pub struct McpCall {
    pub tools: Vec<String>,
    pub ids: McpIds,
}

/// `(tool name, arguments)` of a JSON-RPC `tools/call`.
fn tool_call(v: &Value) -> Option<(&str, Option<&Value>)> {
    if v.get("method").and_then(Value::as_str) != Some("tools/call") {
        return None;
    }
    let name = v.pointer("/params/name").and_then(Value::as_str)?;
    Some((name, v.pointer("/params/arguments")))
}

/// Whether a JSON array is a JSON-RPC batch: non-empty, objects with a `method`.
fn is_batch(calls: &[Value]) -> bool {
    !calls.is_empty()
        && calls
            .iter()
            .all(|x| x.get("method").and_then(Value::as_str).is_some())
}

/// Decide one request; `http` is lent to the engine and given back.
fn decide_one(
    engine: &Engine,
    view: &AgentRules,
    http: &mut HttpRequest,
    now: Instant,
) -> Decision {
    let action = Action::Http(std::mem::take(http));
    let d = engine.decide(view, &action, now);
    if let Action::Http(back) = action {
        *http = back;
    }
    d
}

/// Decide a request (each call of a JSON-RPC batch, the most severe winning). `http.body`
/// holds the JSON body afterwards (the deciding call, for a batch).
pub fn decide_request(
    engine: &Engine,
    view: &AgentRules,
    http: &mut HttpRequest,
    json: Option<Value>,
) -> (Decision, Option<McpCall>) {
    let now = Instant::now();
    match json {
        Some(Value::Array(calls)) if is_batch(&calls) => {
            let mut worst: Option<(Decision, Value)> = None;
            let mut tools = Vec::new();
            let mut ids = Vec::new();
            for call in calls {
                if let Some((tool, _)) = tool_call(&call) {
                    tools.push(tool.to_owned());
                }
                ids.push(call.get("id").cloned().unwrap_or(Value::Null));
                http.body = Some(call);
                let d = decide_one(engine, view, http, now);
                let call = http.body.take().unwrap_or(Value::Null);
                if worst
                    .as_ref()
                    .is_none_or(|(w, _)| d.verdict() > w.verdict())
                {
                    worst = Some((d, call));
                }
            }
            let (d, call) = match worst {
                Some(w) => w,
                None => (decide_one(engine, view, http, now), Value::Null),
            };
            http.body = Some(call);
            let mcp = (!tools.is_empty()).then_some(McpCall {
                tools,
                ids: McpIds { ids, batch: true },
            });
            (d, mcp)
        }
        json => {
            let mcp = json.as_ref().and_then(|v| {
                tool_call(v).map(|(tool, _)| McpCall {
                    tools: vec![tool.to_owned()],
                    ids: McpIds {
                        ids: vec![v.get("id").cloned().unwrap_or(Value::Null)],
                        batch: false,
                    },
                })
            });
            http.body = json;
            (decide_one(engine, view, http, now), mcp)
        }
    }
}

/// Parse a body as JSON, refusing duplicate object keys (a parser differential: upstreams
/// disagree on which one wins). Depth is bounded by serde_json (128).
pub fn parse_json(bytes: &[u8]) -> Result<Value, serde_json::Error> {
    let StrictJson(v) = serde_json::from_slice(bytes)?;
    Ok(v)
}

struct StrictJson(Value);

impl<'de> serde::Deserialize<'de> for StrictJson {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = StrictJson;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON value")
            }
            fn visit_bool<E>(self, b: bool) -> Result<StrictJson, E> {
                Ok(StrictJson(Value::Bool(b)))
            }
            fn visit_i64<E>(self, n: i64) -> Result<StrictJson, E> {
                Ok(StrictJson(n.into()))
            }
            fn visit_u64<E>(self, n: u64) -> Result<StrictJson, E> {
                Ok(StrictJson(n.into()))
            }
            fn visit_f64<E>(self, n: f64) -> Result<StrictJson, E> {
                Ok(StrictJson(
                    serde_json::Number::from_f64(n).map_or(Value::Null, Value::Number),
                ))
            }
            fn visit_str<E>(self, s: &str) -> Result<StrictJson, E> {
                Ok(StrictJson(Value::String(s.to_owned())))
            }
            fn visit_string<E>(self, s: String) -> Result<StrictJson, E> {
                Ok(StrictJson(Value::String(s)))
            }
            fn visit_unit<E>(self) -> Result<StrictJson, E> {
                Ok(StrictJson(Value::Null))
            }
            fn visit_none<E>(self) -> Result<StrictJson, E> {
                Ok(StrictJson(Value::Null))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<StrictJson, A::Error> {
                let mut out = Vec::new();
                while let Some(StrictJson(v)) = seq.next_element()? {
                    out.push(v);
                }
                Ok(StrictJson(Value::Array(out)))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<StrictJson, A::Error> {
                let mut out = serde_json::Map::new();
                while let Some(k) = map.next_key::<String>()? {
                    let StrictJson(v) = map.next_value()?;
                    if out.insert(k.clone(), v).is_some() {
                        return Err(serde::de::Error::custom(format!("duplicate key `{k}`")));
                    }
                }
                Ok(StrictJson(Value::Object(out)))
            }
        }
        d.deserialize_any(V)
    }
}

/// Whether the deciding rule has body or MCP argument conditions.
/// Longest value quoted in records and approvals.
const DETAIL_MAX: usize = 256;

/// The body fields the deciding rule's conditions looked at: path → value (truncated); none
/// when it has no body or MCP argument conditions.
fn body_fields(
    engine: &Engine,
    d: &Decision,
    body: Option<&Value>,
) -> std::collections::BTreeMap<String, String> {
    let mut out = std::collections::BTreeMap::new();
    let (Some(rule), Some(body)) = (d.rule.as_deref().and_then(|r| engine.rule_by_id(r)), body)
    else {
        return out;
    };
    let Matcher::Http(h) = &rule.matcher else {
        return out;
    };
    let mut quote = |key: String, v: Option<&Value>| {
        let mut s = v.map_or_else(|| "(missing)".to_owned(), Value::to_string);
        if s.len() > DETAIL_MAX {
            let mut cut = DETAIL_MAX;
            while !s.is_char_boundary(cut) {
                cut -= 1;
            }
            s.truncate(cut);
            s.push('…');
        }
        out.insert(key, s);
    };
    for c in &h.body {
        quote(format!("body {}", c.path()), c.lookup(body));
    }
    if let Some((_, args)) = &h.mcp {
        let a = body.pointer("/params/arguments").unwrap_or(&Value::Null);
        for c in args {
            quote(format!("arguments {}", c.path()), c.lookup(a));
        }
    }
    out
}

#[cfg(test)]
mod tests;
