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
//!   handled as `tunnel.rs` describes, plain HTTP is served as requests with full decisions.
//!   The proxy connects on the agent's behalf here, so the agent's `network` rules are
//!   checked against the address it connects to, resolved once the request itself is allowed,
//!   with all five verdicts (block → 403, throttle → 429, escalate → held, sandbox upstream →
//!   the request goes there, sandbox profile or a tunnel to a sandbox upstream → 403).
//!
//! **No DNS before a decision.** A transparent request's host check (and a TLS server name's)
//! is made at once only when it needs no lookup (an IP literal, a static address, a cached
//! answer); otherwise only after the decision, and only for a request that is to go to its
//! destination: a name the agent chose is never resolved for a request the policy refuses.
//! Where the address decides (the host check, `network` rules that open a port for some
//! addresses), a name is looked up only if a rule names it or the agent may query DNS itself
//! (`Proxy::may_look_up`); a `network` decision the same for every address is made unresolved.
//!
//! **Where upstream connections come from.** For a client in the proxy's own network namespace,
//! the proxy's. For a client in a namespace of its own (a container, a pod: served by a
//! listener the daemon opened there), that namespace's (`origin.rs`): every address means what
//! it would mean to the agent's own connect (`127.0.0.1` is the pod's loopback), so an upstream
//! has no more reach than the agent. A sandbox upstream, which the policy names, is connected
//! from the proxy's namespace.
//!
//! HTTP/1.1 and h2c (prior knowledge) from clients; HTTP/1.1 to upstreams.
//!
//! **TLS** is decided on the server name of the ClientHello, then spliced, or intercepted for
//! the hosts a policy names in `proxy.intercept_tls` (see `tunnel.rs`). A verdict becomes HTTP
//! as `verdict.rs` tabulates: allow → forwarded, block → 403, throttle → 429, sandbox → sent
//! to the rule's upstream, escalate → held until a human decides.
//!
//! Every decision is reported as one [`Record`] (type decision, source proxy, kind http).
//!
//! **Where things are.** This file holds the proxy, what it knows of a connection, and the
//! agents' rule views; the rest follows a request through:
//!
//! - `config.rs`: the settings ([`ProxyConfig`]), and what interception loads from them.
//! - `listen.rs`: accepting connections, per-agent budgets, serving HTTP, idle timeouts.
//! - `tunnel.rs`: CONNECT tunnels and TLS connections: decided at host level, then spliced or
//!   intercepted.
//! - `handle.rs`: one request, start to finish; what is buffered.
//! - `decide.rs`: the decision on a parsed request, shared with the decision API
//!   (`preauth.rs`); host-level and `network` decisions; strict JSON.
//! - `verdict.rs`: a verdict becomes HTTP, or a hold in the approval queue.
//! - `forward.rs`: sending a request upstream and streaming the response back.
//! - `record.rs`: what is reported, and the refusals the proxy makes itself.
//!
//! They use [`request`] (the request head), [`framing`], [`canonical`] (what a body means),
//! `respond.rs` (refusals as HTTP and JSON-RPC), `upstream.rs` (DNS, the upstream client,
//! bodies), `io.rs`, `sse.rs` and [`tls`].

pub mod canonical;
pub mod framing;
pub mod request;
pub mod tls;

mod budget;
mod config;
mod decide;
mod forward;
mod handle;
mod io;
mod listen;
mod origin;
mod preauth;
mod record;
mod respond;
mod sse;
mod tunnel;
mod upstream;
mod verdict;

use std::{
    collections::HashMap,
    hash::RandomState,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Instant,
};

use arc_swap::ArcSwap;

pub use self::{
    config::{HostCheck, ProxyConfig},
    decide::{McpCall, decide_request, parse_json},
    origin::{Origin, SocketMaker, SocketRequests, serve_sockets, socket_channel},
    preauth::{DecideAction, DecideResponse, HttpAction},
    respond::{MCP_BLOCKED, McpIds},
};

use self::{
    config::Interception,
    io::Activity,
    upstream::{UpBody, Upstream},
};
use crate::{
    approvals::Approvals,
    engine::{AgentRef, AgentRules, Engine},
    events::{AgentInfo, Ids, ProcessInfo, Sink},
};

/// The reserved path of the decision API on the proxy listener.
pub const DECIDE_PATH: &str = "/.governance/v1/decide";

/// Who is on the other end of an accepted connection. The daemon implements this with a
/// kernel map lookup (by the peer's port and the connection's network namespace cookie);
/// tests use a fixed table.
pub trait Identify: Send + Sync + 'static {
    fn identify(&self, peer: SocketAddr, local: SocketAddr, netns: u64) -> Option<Client>;

    /// What `client`'s agent root is now, in the newest generation: None when it is no agent
    /// root any more (an enclosing cgroup became the agent, or no policy selects it). A
    /// connection keeps the identity it was accepted with; a reload can change it (a label,
    /// a pod's labels, a new enclosing agent), and its later requests are then refused (red
    /// team round 33). Identities that never change answer with the one they gave.
    fn current(&self, client: &Client) -> Option<AgentRef> {
        Some(client.agent.clone())
    }
}

/// An identified connection.
#[derive(Clone, Debug)]
pub struct Client {
    pub agent: AgentRef,
    pub info: std::sync::Arc<AgentInfo>,
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
    /// Where its upstream connections come from: the client's own network namespace when it
    /// is not the proxy's (see `origin.rs`); None: the proxy's.
    origin: Option<Arc<Origin>>,
}

type UpstreamTls = hyper::client::conn::http1::SendRequest<UpBody>;

impl Conn {
    fn new(
        client: Option<Client>,
        peer: SocketAddr,
        local: SocketAddr,
        mode: Mode,
        origin: Option<Arc<Origin>>,
    ) -> Arc<Conn> {
        Arc::new(Conn {
            client,
            peer,
            local,
            mode,
            activity: Activity::new(),
            view: Mutex::new(None),
            tls_upstream: Mutex::new(None),
            origin,
        })
    }

    /// The same agent's traffic inside a tunnel or an intercepted TLS connection.
    fn inner(&self, mode: Mode) -> Arc<Conn> {
        Conn::new(
            self.client.clone(),
            self.peer,
            self.local,
            mode,
            self.origin.clone(),
        )
    }
}

#[derive(Default)]
struct ViewCache {
    engine: Option<Arc<Engine>>,
    views: HashMap<AgentRef, Arc<AgentRules>>,
}

/// A drill's canary agent (see `daemon::drill`) while the drill runs: its requests are
/// decided by the drill's engine (the policy under drill alone), and never leave the node.
pub struct Canary {
    /// The canary's agent cgroup.
    pub cgroup_id: u64,
    pub engine: Arc<Engine>,
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
    upstream: Upstream,
    views: Mutex<ViewCache>,
    conns: Arc<Mutex<HashMap<String, usize>>>,
    bodies: budget::BodyBudget,
    panics: Arc<AtomicU64>,
    /// Pre-authorized escalations: (agent, action key) → until when.
    grants: Arc<Mutex<HashMap<(String, u64), Instant>>>,
    /// Live legacy MCP SSE sessions, where refusals of their calls are delivered.
    sessions: Arc<sse::Sessions>,
    hasher: RandomState,
    /// What TLS interception needs, loaded once; or why it is unavailable (connections to
    /// intercepted hosts are then refused, never spliced).
    interception: Result<Interception, String>,
    /// The proxy's own threads, where identified connections are served (none: the current
    /// runtime's). See [`Proxy::serve_on`].
    threads: std::sync::OnceLock<Threads>,
    /// The canary of the drill that runs, if one does.
    canary: arc_swap::ArcSwapOption<Canary>,
}

/// The proxy's own threads (a runtime of its own): they hold no capability, and everything an
/// agent sends is parsed there (see [`crate::privilege`]). Shut down, without waiting for its
/// tasks, when dropped.
pub struct Threads(Option<tokio::runtime::Runtime>);

impl Threads {
    /// Thread names in /proc/PID/task/TID/comm.
    pub const NAME: &str = "gov-proxy";

    pub fn start(workers: usize) -> std::io::Result<Self> {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers)
            .thread_name(Self::NAME)
            .on_thread_start(crate::privilege::proxy_thread_started)
            .enable_all()
            .build()
            .map(|rt| Self(Some(rt)))
    }

    pub fn handle(&self) -> Option<&tokio::runtime::Handle> {
        self.0.as_ref().map(|rt| rt.handle())
    }
}

impl Drop for Threads {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
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
        let bodies = budget::BodyBudget::new(cfg.body_budget_per_agent, cfg.body_budget_total);
        Arc::new(Self {
            interception,
            upstream: Upstream::new(&cfg),
            cfg,
            engine,
            identify,
            ids: approvals.ids().clone(),
            approvals,
            sink,
            views: Mutex::new(ViewCache::default()),
            conns: Arc::new(Mutex::new(HashMap::new())),
            bodies,
            panics: Arc::new(AtomicU64::new(0)),
            grants: Arc::new(Mutex::new(HashMap::new())),
            sessions: Arc::new(sse::Sessions::default()),
            hasher: RandomState::new(),
            threads: std::sync::OnceLock::new(),
            canary: arc_swap::ArcSwapOption::empty(),
        })
    }

    pub fn config(&self) -> &ProxyConfig {
        &self.cfg
    }

    /// Serve identified connections on `threads` from now on (the daemon's threads go on
    /// accepting and identifying them: that needs privileges the proxy's threads do not hold).
    pub fn serve_on(&self, threads: Threads) {
        let _ = self.threads.set(threads);
    }

    /// The capabilities the proxy's threads hold (None: it has no threads of its own).
    pub async fn capabilities(&self) -> Option<Vec<String>> {
        let rt = self.threads.get()?.handle()?;
        rt.spawn(async { crate::privilege::held() }).await.ok()
    }

    /// Tasks that panicked (each dropped its connection; the proxy went on). Tests assert 0.
    pub fn panics(&self) -> u64 {
        self.panics.load(Ordering::Relaxed)
    }

    /// A drill's canary from now on (None: the drill is over).
    pub fn set_canary(&self, canary: Option<Canary>) {
        self.canary.store(canary.map(Arc::new));
    }

    /// The engine that decides for `client`: the drill's for its canary, else the generation's.
    fn engine_for(&self, client: &Client) -> Arc<Engine> {
        match &*self.canary.load() {
            Some(c) if c.cgroup_id == client.info.cgroup_id => c.engine.clone(),
            _ => self.engine.load_full(),
        }
    }

    /// Whether `client` is a drill's canary, whose requests are never forwarded: the canary of
    /// the drill that runs, or any agent with the label only canaries carry (one still
    /// connected after its drill ended, say).
    fn is_canary(&self, client: &Client) -> bool {
        client.agent.label.as_deref() == Some(crate::drill::CANARY_LABEL)
            || self
                .canary
                .load()
                .as_ref()
                .is_some_and(|c| c.cgroup_id == client.info.cgroup_id)
    }

    /// A TCP connection to `addr` for the client of `conn`, from its network namespace
    /// ([`Origin`]) or, for a client in the proxy's own, from the proxy's. Not timed: the
    /// caller's timeout applies.
    async fn dial(&self, conn: &Conn, addr: SocketAddr) -> std::io::Result<tokio::net::TcpStream> {
        let stream = match &conn.origin {
            // `Origin::connect` keeps the reserve itself.
            Some(o) => return o.connect(addr).await,
            None => tokio::net::TcpStream::connect(addr).await?,
        };
        // Not on the daemon's last descriptors (see `io::fd_in_reserve`).
        if io::fd_in_reserve(std::os::fd::AsRawFd::as_raw_fd(&stream)) {
            return Err(std::io::Error::other(
                "the daemon's open files are near its limit",
            ));
        }
        Ok(stream)
    }

    /// Whether `client` is still the agent it was identified as, under `engine` (asked once
    /// per connection and generation: a connection whose agent changed is refused).
    fn still_identified(&self, conn: &Conn, client: &Client, engine: &Arc<Engine>) -> bool {
        let seen = conn
            .view
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .is_some_and(|(e, _)| Arc::ptr_eq(e, engine));
        seen || self.is_canary(client)
            || self.identify.current(client).as_ref() == Some(&client.agent)
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
}

#[cfg(test)]
mod tests;
