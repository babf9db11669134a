//! The control API: a local HTTP API on a Unix socket (root only), and optionally on TCP with a
//! bearer token, for the CLI, incident responders, chat-ops bots and Prometheus.
//!
//! | method and path | what |
//! |---|---|
//! | `GET /v1/status` | generation, hooks, counters, proxy and audit state, the daemon's build (`version`) |
//! | `GET /v1/agents` | live agents: cgroup, selector, policies, decisions by outcome |
//! | `GET /v1/agents/capabilities` | what each live agent can do under the enforcing generation ([`crate::capabilities`]); query: `agent` (a name or cgroup: that agent only) |
//! | `POST /v1/policy/reload` | build the next generation now; the result or the errors |
//! | `POST /v1/drill` | run a drill now (`{"policy": NAME}` or every enforcing policy); the checks ([`wire::DrillResult`]) |
//! | `GET /v1/events` | decision events as NDJSON (or SSE with `Accept: text/event-stream`); query: `follow`, `agent`, `verdict`/`outcome`, `kind`, `type`, `since` (RFC 3339 or `10m`), `format=ocsf`, `queue` (this subscriber's queue, records). A live stream's first record is `stream.subscribed` and, when the daemon ends it, its last is `stream.ended` |
//! | `GET /v1/approvals` | pending approvals |
//! | `POST /v1/approvals/{id}/approve` | `{"for": "10m", "by": "alice"}` |
//! | `POST /v1/approvals/{id}/deny` | `{"reason": "...", "by": "alice"}` |
//! | `POST /v1/decide` | pre-authorize an action for a named agent (operators; agents use the proxy's `/.governance/v1/decide`, identified by their socket) |
//! | `GET /metrics` | Prometheus text format |
//!
//! `run --health-listen ADDR` serves `/healthz`, `/readyz` and `/metrics` without a token on a
//! listener of their own (see [`health_router`]).
//!
//! Who called is recorded with every approval: on the Unix socket the caller's uid (from the
//! kernel, `SO_PEERCRED`), on TCP the user of the bearer token (`--api-tokens`, see [`auth`]);
//! a `by` name in the request is added to it, never trusted instead of it. The TCP listener
//! speaks TLS with `--api-tls-cert` and `--api-tls-key`.
//!
//! No process inside an agent uses the API, whatever it asks: on the Unix socket every request
//! from a peer whose cgroup is in a live agent's subtree is refused (403) and recorded (see
//! [`crate::peer`]); the kernel refuses agents' connects to the control socket and to the TCP
//! listener before that.

use std::{
    convert::Infallible,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use axum::{
    Json, Router,
    body::{Body, Bytes},
    extract::{ConnectInfo, Path, Query, State, connect_info::Connected},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post},
    serve::IncomingStream,
};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};

pub mod auth;
pub mod wire;

pub use wire::EventsQuery;

use crate::{
    approvals::Approvals,
    events::{Filter, Record, RecordType, parse_rfc3339},
    kernel::Enforcer,
    metrics::Metrics,
    pipeline::{AgentCounts, Delivered, LinesRx, Publisher, Subscription},
};

/// Default queue length of a live event subscriber (records); beyond it, it loses records
/// (counted, and told). `queue=N` asks for another, up to [`MAX_SUBSCRIBER_QUEUE`].
pub const SUBSCRIBER_QUEUE: usize = 8192;
pub const MAX_SUBSCRIBER_QUEUE: usize = 1 << 20;

/// What the daemon knows about itself, kept current by it and read by the API.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Snapshot {
    pub generation: u32,
    pub policy_dir: PathBuf,
    pub pins: PathBuf,
    pub degraded: bool,
    pub reload_failures: u64,
    /// The last reload error, if the last reload failed.
    pub last_error: Option<String>,
    /// (program, what it enforces, state).
    pub hooks: Vec<(String, String, String)>,
    pub agents: Vec<AgentView>,
    pub proxy: Option<String>,
    pub audit: Option<PathBuf>,
    pub started: String,
    /// What the daemon kept after start (None until then).
    pub capabilities: Option<wire::Capabilities>,
    /// The policy set the enforcing generation decides with.
    #[serde(skip)]
    pub policies: Arc<crate::policy::PolicySet>,
}

#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct AgentView {
    pub name: String,
    pub cgroup: String,
    pub cgroup_id: u64,
    pub selector: String,
    pub policies: Vec<String>,
    /// What the proxy's engine knows the agent by (with its pod, in Kubernetes).
    #[serde(skip)]
    pub agent_ref: crate::engine::AgentRef,
}

/// A reload request: answered with the new generation, or why the current one stays.
pub type ReloadReply = oneshot::Sender<Result<u32, String>>;

/// A drill request (the policy to drill, or every enforcing one): answered with the drill, or
/// why none ran.
pub type DrillRequest = (
    Option<String>,
    oneshot::Sender<Result<crate::drill::Drill, String>>,
);

pub struct ApiState {
    pub publisher: Publisher,
    pub counts: AgentCounts,
    pub audit_dir: Option<PathBuf>,
    pub metrics: Arc<Metrics>,
    pub approvals: Arc<Approvals>,
    pub enforcer: Arc<Mutex<Enforcer>>,
    pub snapshot: Arc<Mutex<Snapshot>>,
    pub reload: mpsc::Sender<ReloadReply>,
    pub drill: mpsc::Sender<DrillRequest>,
    pub proxy: Option<Arc<crate::proxy::Proxy>>,
    /// The bearer tokens of the TCP listener, with their users.
    pub tokens: auth::Tokens,
    /// The exporters' counts (`--export`, `--notify-webhook`).
    pub exporters: Vec<Arc<crate::export::Stats>>,
    /// Discovery of unlabelled agents (None with `run --no-discover`).
    pub discovery: Option<Arc<crate::discovery::Discovery>>,
}

/// Who is calling, from the connection (never from the request): in words, and the process on
/// the control socket (None on TCP).
#[derive(Clone, Debug)]
pub struct Caller(pub String, pub Option<crate::peer::LocalPeer>);

/// The cgroup2 mount, looked up once.
fn cgroup_root() -> Option<&'static std::path::Path> {
    static ROOT: std::sync::OnceLock<Option<PathBuf>> = std::sync::OnceLock::new();
    ROOT.get_or_init(|| crate::agents::cgroup2_mount().ok())
        .as_deref()
}

impl Connected<IncomingStream<'_, tokio::net::UnixListener>> for Caller {
    fn connect_info(stream: IncomingStream<'_, tokio::net::UnixListener>) -> Self {
        use std::os::fd::AsRawFd as _;
        match stream.io().peer_cred() {
            Ok(c) => {
                // Identified as the connection is accepted, while the caller waits for it.
                let peer =
                    crate::peer::identify(stream.io().as_raw_fd(), c.pid(), c.uid(), cgroup_root());
                Caller(
                    format!("uid {} via the control socket", c.uid()),
                    Some(peer),
                )
            }
            Err(e) => Caller(
                "unknown via the control socket".into(),
                Some(crate::peer::LocalPeer {
                    cgroups: Err(crate::peer::PeerError::Os {
                        what: "SO_PEERCRED".into(),
                        errno: e.raw_os_error().unwrap_or(0),
                    }),
                    ..Default::default()
                }),
            ),
        }
    }
}

impl Connected<IncomingStream<'_, tokio::net::TcpListener>> for Caller {
    fn connect_info(stream: IncomingStream<'_, tokio::net::TcpListener>) -> Self {
        Caller(format!("api token from {}", stream.remote_addr()), None)
    }
}

impl Connected<IncomingStream<'_, auth::TlsListener>> for Caller {
    fn connect_info(stream: IncomingStream<'_, auth::TlsListener>) -> Self {
        Caller(
            format!("api token from {} over TLS", stream.remote_addr()),
            None,
        )
    }
}

/// The API's routes. `tcp`: require the bearer token.
pub fn router(state: Arc<ApiState>, tcp: bool) -> Router {
    let r = Router::new()
        .route("/v1/status", get(status))
        .route("/v1/agents", get(agents))
        .route("/v1/agents/capabilities", get(capabilities))
        .route("/v1/discover", get(discover))
        .route("/v1/policy/reload", post(reload))
        .route("/v1/drill", post(drill))
        .route("/v1/events", get(events))
        .route("/v1/approvals", get(approvals))
        .route("/v1/approvals/{id}/approve", post(approve))
        .route("/v1/approvals/{id}/deny", post(deny))
        .route("/v1/decide", post(decide))
        .route("/metrics", get(metrics));
    let r = if tcp {
        r.layer(axum::middleware::from_fn_with_state(
            state.clone(),
            require_token,
        ))
    } else {
        r.layer(axum::middleware::from_fn_with_state(
            state.clone(),
            refuse_agents,
        ))
    };
    r.with_state(state)
}

/// The health listener (`run --health-listen`): liveness, readiness and the metrics, for
/// probes and scrapers, with no token and nothing that changes or reveals more than the
/// metrics do.
///
/// | path | answer |
/// |---|---|
/// | `GET /healthz` | 200 `ok` while the daemon answers |
/// | `GET /readyz` | 200 when programs are attached and a policy generation enforces, else 503 and why |
/// | `GET /metrics` | as the control API's `/metrics` |
pub fn health_router(state: Arc<ApiState>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state)
}

async fn readyz(State(st): State<Arc<ApiState>>) -> Response {
    let snap = st.snapshot.lock().map(|s| s.clone()).unwrap_or_default();
    match readiness(&snap) {
        Ok(why) => (StatusCode::OK, why + "\n").into_response(),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, why + "\n").into_response(),
    }
}

/// Ready: programs attached and a generation enforcing (Ok says which, Err why not).
pub fn readiness(s: &Snapshot) -> Result<String, String> {
    let attached = s.hooks.iter().filter(|(_, _, st)| st == "attached").count();
    if attached == 0 {
        return Err("not ready: no program is attached".into());
    }
    if s.generation == 0 {
        return Err("not ready: no policy generation enforces yet".into());
    }
    Ok(format!(
        "ready: generation {} enforcing, {attached} of {} programs attached{}",
        s.generation,
        s.hooks.len(),
        if s.degraded { " (degraded)" } else { "" }
    ))
}

/// The live agent whose subtree holds a cgroup of `chain` (the outermost, as in the kernel).
pub fn agent_of(agents: &[AgentView], chain: &[u64]) -> Option<AgentView> {
    chain
        .iter()
        .rev()
        .find_map(|id| agents.iter().find(|a| a.cgroup_id == *id))
        .cloned()
}

/// Every request on the control socket from a process inside an agent is refused (403) and
/// recorded; so is one from a peer that cannot be told (fail closed).
async fn refuse_agents(
    State(st): State<Arc<ApiState>>,
    ConnectInfo(caller): ConnectInfo<Caller>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let Some(peer) = &caller.1 else {
        return next.run(req).await;
    };
    // Asked again at every request: a process that opened the connection outside every agent
    // and then joined one (`echo $$ > cgroup.procs; exec agent`) must not carry the control
    // API in with it (red team round 31: an agent approved its own escalation so). A pid
    // that names no process now (the opener exited; whoever holds the connection may be in an
    // agent), or names another process (its start time), is refused: the kernel does not say
    // which process sends.
    let mut peer = peer.clone();
    match peer.cgroups_now(cgroup_root()) {
        Ok((rel, chain)) => {
            peer.cgroup = rel;
            peer.cgroups = Ok(chain);
        }
        Err(e) => peer.cgroups = Err(e),
    }
    let (agent, why) = match &peer.cgroups {
        Ok(chain) => {
            let agents = st
                .snapshot
                .lock()
                .map(|s| s.agents.clone())
                .unwrap_or_default();
            match agent_of(&agents, chain) {
                None => return next.run(req).await,
                Some(a) => {
                    let why = format!(
                        "the control API is refused to processes inside an agent (pid {} is in \
                         agent {}, cgroup {})",
                        peer.pid.unwrap_or_default(),
                        a.name,
                        peer.cgroup
                    );
                    (Some(a), why)
                }
            }
        }
        Err(e) => (
            None,
            format!(
                "the control API cannot tell whether the caller is inside an agent ({e}); refused"
            ),
        ),
    };
    let generation = st.snapshot.lock().map(|s| s.generation).unwrap_or_default();
    let mut r = Record {
        ty: RecordType::Decision,
        source: crate::events::Source::Api,
        kind: "api".into(),
        outcome: "block".into(),
        denied: true,
        verdict: "block".into(),
        mode: "enforce".into(),
        rule: "builtin:control-api".into(),
        reason: why.clone(),
        generation,
        ..Default::default()
    };
    r.time = crate::events::rfc3339(SystemTime::now());
    r.agent = agent.as_ref().map(|a| {
        crate::events::AgentInfo {
            name: a.name.clone(),
            selector: a.selector.clone(),
            cgroup_id: a.cgroup_id,
            cgroup: a.cgroup.clone(),
            ..Default::default()
        }
        .into()
    });
    if let Some(pid) = peer.pid {
        let mut p = crate::events::ProcessInfo::from_procfs(pid);
        p.uid = peer.uid;
        r.process = Some(p);
    }
    r.object.method = req.method().to_string();
    r.object.url = req.uri().to_string();
    st.publisher.publish(r);
    let mut resp = error(StatusCode::FORBIDDEN, why);
    if let Some(a) = agent {
        resp = (
            StatusCode::FORBIDDEN,
            Json(json!({
                "error": "the control API is refused to processes inside an agent",
                "agent": a.name,
                "cgroup": peer.cgroup,
                "pid": peer.pid,
            })),
        )
            .into_response();
    }
    resp
}

/// The TCP API: a known bearer token (compared in constant time, see [`auth`]); its user goes
/// with the request ([`auth::ApiUser`]) and is recorded as the approver.
async fn require_token(
    State(st): State<Arc<ApiState>>,
    mut req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let user = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .and_then(|t| st.tokens.user(t))
        .map(str::to_owned);
    match user {
        Some(u) => {
            req.extensions_mut().insert(auth::ApiUser(u));
            next.run(req).await
        }
        None => error(
            StatusCode::UNAUTHORIZED,
            "a valid bearer token is required (Authorization: Bearer <token>)",
        ),
    }
}

fn error(status: StatusCode, msg: impl Into<String>) -> Response {
    (status, answer(&wire::Error { error: msg.into() })).into_response()
}

/// An answer on the wire, through a JSON value: its keys come out sorted, as they always have.
fn answer(a: &impl serde::Serialize) -> Json<Value> {
    Json(serde_json::to_value(a).unwrap_or(Value::Null))
}

async fn status(State(st): State<Arc<ApiState>>) -> Response {
    let snap = st.snapshot.lock().map(|s| s.clone()).unwrap_or_default();
    let kernel = st.enforcer.lock().ok().map(|e| {
        use governance_common::Counter;
        let c = |k| e.counter(k).unwrap_or_default();
        let dropped = e
            .counter_per_cpu(Counter::EventsDropped)
            .unwrap_or_default();
        wire::KernelCounters {
            decisions: c(Counter::Decisions),
            denials: c(Counter::Denials),
            events_dropped: dropped.iter().sum::<u64>(),
            events_dropped_per_cpu: dropped,
            map_full: c(Counter::MapFull),
        }
    });
    answer(&wire::Status {
        generation: snap.generation,
        degraded: snap.degraded,
        policy_dir: snap.policy_dir,
        pins: snap.pins,
        reload_failures: snap.reload_failures,
        last_error: snap.last_error,
        hooks: snap
            .hooks
            .into_iter()
            .map(|(program, enforces, state)| wire::Hook {
                program,
                enforces,
                state,
            })
            .collect(),
        agents: snap.agents.len(),
        kernel,
        pipeline_backlog: st.publisher.backlog(),
        pending_approvals: st.approvals.list().len(),
        proxy: snap.proxy,
        audit: snap.audit,
        audit_log: Some(st.publisher.audit_health().view()),
        exporters: st.exporters.iter().map(|e| e.view()).collect(),
        started: snap.started,
        version: Some(crate::version::Version::this()),
        capabilities: snap.capabilities,
    })
    .into_response()
}

async fn agents(State(st): State<Arc<ApiState>>) -> Response {
    let snap = st.snapshot.lock().map(|s| s.clone()).unwrap_or_default();
    let counts = st.counts.lock().map(|c| c.clone()).unwrap_or_default();
    let agents = snap
        .agents
        .into_iter()
        .map(|a| wire::Agent {
            decisions: counts.get(&a.name).cloned().unwrap_or_default(),
            counted: st.metrics.counted().of_agent(&a.name),
            name: a.name,
            cgroup: a.cgroup,
            cgroup_id: a.cgroup_id,
            selector: a.selector,
            policies: a.policies,
            pod: a
                .agent_ref
                .pod
                .as_ref()
                .map(|p| p.name.clone())
                .unwrap_or_default(),
            namespace: a
                .agent_ref
                .pod
                .as_ref()
                .map(|p| p.namespace.clone())
                .unwrap_or_default(),
        })
        .collect();
    answer(&wire::Agents {
        generation: snap.generation,
        agents,
    })
    .into_response()
}

/// `GET /v1/discover`: candidate agents outside every agent (see crate::discovery).
async fn discover(State(st): State<Arc<ApiState>>) -> Response {
    let kernel = st
        .enforcer
        .lock()
        .ok()
        .and_then(|e| e.discover_stats().ok())
        .map(|s| wire::DiscoverKernel {
            reported: s.reported,
            dropped: s.dropped,
            limited: s.limited,
        });
    answer(&crate::discovery::api::answer(
        st.discovery.as_deref(),
        kernel,
    ))
    .into_response()
}

/// The query of `GET /v1/agents/capabilities`.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CapabilitiesQuery {
    pub agent: Option<String>,
}

async fn capabilities(
    State(st): State<Arc<ApiState>>,
    Query(q): Query<CapabilitiesQuery>,
) -> Response {
    let snap = st.snapshot.lock().map(|s| s.clone()).unwrap_or_default();
    let agents: Vec<_> = snap
        .agents
        .iter()
        .filter(|a| {
            q.agent
                .as_deref()
                .is_none_or(|n| a.name == n || a.cgroup == n)
        })
        .map(|a| crate::capabilities::of_agent(&snap.policies, &a.agent_ref, &a.selector))
        .collect();
    if let Some(n) = &q.agent
        && agents.is_empty()
    {
        return error(
            StatusCode::NOT_FOUND,
            format!("no live agent `{n}` (see GET /v1/agents)"),
        );
    }
    answer(&wire::AgentCapabilitiesList {
        generation: snap.generation,
        agents,
    })
    .into_response()
}

async fn reload(State(st): State<Arc<ApiState>>) -> Response {
    let (tx, rx) = oneshot::channel();
    if st.reload.send(tx).await.is_err() {
        return error(StatusCode::SERVICE_UNAVAILABLE, "the daemon is stopping");
    }
    match rx.await {
        Ok(Ok(generation)) => answer(&wire::Reloaded { generation }).into_response(),
        Ok(Err(e)) => error(StatusCode::UNPROCESSABLE_ENTITY, e),
        Err(_) => error(StatusCode::SERVICE_UNAVAILABLE, "the daemon is stopping"),
    }
}

async fn drill(State(st): State<Arc<ApiState>>, body: Bytes) -> Response {
    let ask: wire::DrillAsk = if body.is_empty() {
        wire::DrillAsk::default()
    } else {
        match serde_json::from_slice(&body) {
            Ok(a) => a,
            Err(e) => return error(StatusCode::BAD_REQUEST, format!("the drill request: {e}")),
        }
    };
    let (tx, rx) = oneshot::channel();
    if st.drill.send((ask.policy, tx)).await.is_err() {
        return error(StatusCode::SERVICE_UNAVAILABLE, "the daemon is stopping");
    }
    match rx.await {
        Ok(Ok(d)) => answer(&wire::DrillResult {
            passed: d.ok(),
            summary: d.summary(),
            drill: d,
        })
        .into_response(),
        Ok(Err(e)) => error(StatusCode::UNPROCESSABLE_ENTITY, e),
        Err(_) => error(StatusCode::SERVICE_UNAVAILABLE, "the daemon is stopping"),
    }
}

fn list(s: &Option<String>) -> Vec<String> {
    s.as_deref()
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|w| !w.is_empty())
        .map(str::to_owned)
        .collect()
}

/// An events query that cannot be answered as asked.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error("since `{text}`: expected an RFC 3339 time or a duration like 10m ({source})")]
    Since {
        text: String,
        source: crate::policy::ValueError,
    },
    #[error("type `{0}`: one of decision, approval, policy, lifecycle, discovery")]
    Type(String),
}

/// `since` as a time: RFC 3339, or a duration back from now ([`crate::policy::parse_span`]).
pub fn parse_since(s: &str) -> Result<SystemTime, QueryError> {
    if let Some(t) = parse_rfc3339(s) {
        return Ok(t);
    }
    let back = crate::policy::parse_span(s).map_err(|source| QueryError::Since {
        text: s.to_owned(),
        source,
    })?;
    Ok(SystemTime::now()
        .checked_sub(back)
        .unwrap_or(SystemTime::UNIX_EPOCH))
}

impl EventsQuery {
    pub fn filter(&self) -> Result<Filter, QueryError> {
        let mut outcomes = list(&self.verdict);
        outcomes.extend(list(&self.outcome));
        let types = list(&self.ty)
            .into_iter()
            .map(|t| {
                serde_json::from_value::<RecordType>(Value::String(t.clone()))
                    .map_err(|_| QueryError::Type(t.clone()))
            })
            .collect::<Result<_, _>>()?;
        Ok(Filter {
            agent: self.agent.clone().filter(|a| !a.is_empty()),
            outcomes,
            kinds: list(&self.kind),
            types,
        })
    }

    fn follow(&self) -> bool {
        matches!(self.follow.as_deref(), Some("" | "1" | "true" | "yes"))
    }
}

/// One record in the requested format: the event schema's JSON (fields in declaration order,
/// byte for byte what the audit log holds), or OCSF.
fn render(r: &Record, ocsf: bool) -> Vec<u8> {
    if ocsf {
        serde_json::to_vec(&crate::ocsf::to_ocsf(r)).unwrap_or_default()
    } else {
        serde_json::to_vec(r).unwrap_or_else(|_| b"null".to_vec())
    }
}

/// Bytes of stream gathered into one write, at most (more records are not waited for).
const STREAM_CHUNK: usize = 64 << 10;

/// Send what `rx` yields to the client in chunks: what is queued when the client can take more
/// goes out as one write of up to [`STREAM_CHUNK`] bytes. False when the client has gone.
async fn pump<T>(
    rx: &mut mpsc::Receiver<T>,
    tx: &mpsc::Sender<Bytes>,
    put: impl Fn(&mut Vec<u8>, &T),
) -> bool {
    while let Some(first) = rx.recv().await {
        // Room for a full chunk: growing it would copy it again.
        let mut out = Vec::with_capacity(STREAM_CHUNK + 4096);
        put(&mut out, &first);
        while out.len() < STREAM_CHUNK {
            let Ok(next) = rx.try_recv() else { break };
            put(&mut out, &next);
        }
        if tx.send(Bytes::from(out)).await.is_err() {
            return false;
        }
    }
    true
}

/// A live stream's subscription.
enum Live {
    Records(Subscription),
    Lines(Subscription<LinesRx>),
}

impl Live {
    fn first_seq(&self) -> u64 {
        match self {
            Live::Records(s) => s.from_seq,
            Live::Lines(s) => s.from_seq,
        }
    }

    fn subscribed(&self) -> &Record {
        match self {
            Live::Records(s) => &s.subscribed,
            Live::Lines(s) => &s.subscribed,
        }
    }
}

/// Send a lines subscription's runs to the client: a run of at least half a
/// [`STREAM_CHUNK`] as it is, smaller ones gathered with what else is queued.
async fn pump_lines(sub: &mut LinesRx, tx: &mpsc::Sender<Bytes>) {
    while let Some(first) = sub.recv().await {
        let chunk = if first.bytes.len() >= STREAM_CHUNK / 2 {
            first.bytes
        } else {
            let mut out = Vec::with_capacity(STREAM_CHUNK + 4096);
            out.extend_from_slice(&first.bytes);
            while out.len() < STREAM_CHUNK {
                let Some(next) = sub.try_recv() else { break };
                out.extend_from_slice(&next.bytes);
            }
            Bytes::from(out)
        };
        if tx.send(chunk).await.is_err() {
            return;
        }
    }
}

async fn events(
    State(st): State<Arc<ApiState>>,
    headers: HeaderMap,
    Query(q): Query<EventsQuery>,
) -> Response {
    let filter = match q.filter() {
        Ok(f) => f,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.to_string()),
    };
    let since = match q.since.as_deref().map(parse_since).transpose() {
        Ok(s) => s,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.to_string()),
    };
    let ocsf = match q.format.as_deref() {
        None | Some("json") => false,
        Some("ocsf") => true,
        Some(other) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("format `{other}`: json or ocsf"),
            );
        }
    };
    let sse = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/event-stream"));
    let follow = q.follow() || sse;
    if !follow && since.is_none() {
        return error(
            StatusCode::BAD_REQUEST,
            "ask for `follow=true` (live), `since=...` (from the audit log) or both",
        );
    }
    // Subscribe first, then replay the audit log up to where the subscription starts: no
    // record is missed or doubled between the two.
    let queue = q.queue.unwrap_or(SUBSCRIBER_QUEUE);
    if queue == 0 || queue > MAX_SUBSCRIBER_QUEUE {
        return error(
            StatusCode::BAD_REQUEST,
            format!("queue: between 1 and {MAX_SUBSCRIBER_QUEUE} records"),
        );
    }
    // A live JSON stream takes the lines the pipeline serialised, in runs; OCSF and SSE
    // render each record.
    let lines = !ocsf && !sse;
    let sub = match (follow, lines) {
        (false, _) => None,
        (true, false) => st
            .publisher
            .subscribe(filter.clone(), queue)
            .await
            .map(Live::Records),
        (true, true) => st
            .publisher
            .subscribe_lines(filter.clone(), queue)
            .await
            .map(Live::Lines),
    };
    if follow && sub.is_none() {
        return error(StatusCode::SERVICE_UNAVAILABLE, "the daemon is stopping");
    }
    let until_seq = sub.as_ref().map_or(u64::MAX, Live::first_seq);
    // Chunks of up to STREAM_CHUNK bytes on their way to the client; the subscription's own
    // queue is where records wait.
    let (tx, rx) = mpsc::channel::<Bytes>(8);
    // One record, framed: a line of NDJSON, or an SSE event.
    let frame = move |out: &mut Vec<u8>, body: &[u8]| {
        if sse {
            out.extend_from_slice(b"data: ");
            out.extend_from_slice(body);
            out.extend_from_slice(b"\n\n");
        } else {
            out.extend_from_slice(body);
            out.push(b'\n');
        }
    };
    let audit_dir = st.audit_dir.clone();
    // A live stream starts with `stream.subscribed`: from here on the subscriber misses
    // nothing, so a client can wait for it before it acts (then replay, then live records).
    if let Some(s) = &sub {
        let mut first = Vec::new();
        frame(&mut first, &render(s.subscribed(), ocsf));
        if tx.try_send(Bytes::from(first)).is_err() {
            return error(StatusCode::SERVICE_UNAVAILABLE, "the daemon is stopping");
        }
    }
    tokio::spawn(async move {
        if let (Some(since), Some(dir)) = (since, audit_dir) {
            let (rtx, mut rrx) = mpsc::channel::<Record>(256);
            let filter = filter.clone();
            // Reading the files blocks: on a blocking thread.
            tokio::task::spawn_blocking(move || {
                // A record the filter leaves out is skipped; the replay stops only when the
                // client has gone.
                crate::audit::replay(&dir, since, until_seq, |r| {
                    !filter.matches(&r) || rtx.blocking_send(r).is_ok()
                })
            });
            let put = |out: &mut Vec<u8>, r: &Record| frame(out, &render(r, ocsf));
            if !pump(&mut rrx, &tx, put).await {
                return;
            }
        }
        // Ends when the client goes away: dropping the receiver unsubscribes.
        match sub {
            None => {}
            Some(Live::Lines(mut sub)) => pump_lines(&mut sub.rx, &tx).await,
            Some(Live::Records(mut sub)) => {
                // The record as the pipeline serialised it for the audit log, else rendered
                // here.
                let put = |out: &mut Vec<u8>, d: &Delivered| {
                    if ocsf || d.json.is_empty() {
                        frame(out, &render(&d.record, ocsf));
                    } else {
                        frame(out, &d.json);
                    }
                };
                pump(&mut sub.rx, &tx, put).await;
            }
        }
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok::<_, Infallible>(b), rx))
    });
    let mut resp = Response::new(Body::from_stream(stream));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(if sse {
            "text/event-stream"
        } else {
            "application/x-ndjson"
        }),
    );
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    resp
}

async fn approvals(State(st): State<Arc<ApiState>>) -> Response {
    answer(&wire::Pending {
        pending: st.approvals.list(),
    })
    .into_response()
}

/// `alice (uid 0 via the control socket)`, or just the connection's identity. On TCP the
/// token's user is the approver: `alice (api token of alice from 127.0.0.1:40000)`; a name
/// claimed besides it is recorded with it, never instead of it.
fn who(caller: &Caller, user: Option<&auth::ApiUser>, claimed: Option<&str>) -> String {
    let claimed = claimed.map(str::trim).filter(|c| !c.is_empty());
    match user {
        Some(auth::ApiUser(u)) => {
            let via = caller
                .0
                .replacen("api token", &format!("api token of {u}"), 1);
            format!("{} ({via})", claimed.unwrap_or(u))
        }
        None => match claimed {
            Some(name) => format!("{name} ({})", caller.0),
            None => caller.0.clone(),
        },
    }
}

async fn approve(
    State(st): State<Arc<ApiState>>,
    ConnectInfo(caller): ConnectInfo<Caller>,
    user: Option<axum::Extension<auth::ApiUser>>,
    Path(id): Path<String>,
    body: Option<Json<wire::Approve>>,
) -> Response {
    if let Some(why) = st.publisher.audit_health().refusal() {
        return error(StatusCode::SERVICE_UNAVAILABLE, why);
    }
    let body = body.map(|Json(b)| b).unwrap_or_default();
    let duration = match body.duration.as_deref().map(crate::policy::parse_duration) {
        None => Duration::from_secs(300),
        Some(Ok(d)) => d,
        Some(Err(e)) => return error(StatusCode::BAD_REQUEST, format!("for: {e}")),
    };
    match st.approvals.approve(
        &id,
        &who(&caller, user.as_deref(), body.by.as_deref()),
        duration,
    ) {
        Ok(approved) => answer(&wire::Approved { approved }).into_response(),
        Err(e) => error(StatusCode::CONFLICT, e.to_string()),
    }
}

async fn deny(
    State(st): State<Arc<ApiState>>,
    ConnectInfo(caller): ConnectInfo<Caller>,
    user: Option<axum::Extension<auth::ApiUser>>,
    Path(id): Path<String>,
    body: Option<Json<wire::Deny>>,
) -> Response {
    let body = body.map(|Json(b)| b).unwrap_or_default();
    let reason = body.reason.unwrap_or_else(|| "denied by a human".into());
    match st.approvals.deny(
        &id,
        &who(&caller, user.as_deref(), body.by.as_deref()),
        &reason,
    ) {
        Ok(denied) => answer(&wire::Denied { denied }).into_response(),
        Err(e) => error(StatusCode::CONFLICT, e.to_string()),
    }
}

#[derive(Debug, Deserialize)]
struct DecideBody {
    /// The agent's name (label or cgroup path) or its cgroup path.
    agent: String,
    action: crate::proxy::DecideAction,
}

/// The live agent `name` names (a name or a cgroup). Agents that share a label share a name,
/// and a decision (a grant) is one agent root's (red team round 34): a name of several is
/// refused with their cgroups.
fn one_agent<'a>(
    agents: &'a [AgentView],
    name: &str,
) -> Result<&'a AgentView, (StatusCode, String)> {
    if let Some(a) = agents.iter().find(|a| a.cgroup == name) {
        return Ok(a);
    }
    let named: Vec<&AgentView> = agents.iter().filter(|a| a.name == name).collect();
    match named.as_slice() {
        [] => Err((
            StatusCode::NOT_FOUND,
            format!("no live agent `{name}` (see GET /v1/agents)"),
        )),
        [one] => Ok(one),
        several => Err((
            StatusCode::CONFLICT,
            format!(
                "`{name}` names {} agents; give one's cgroup: {}",
                several.len(),
                several
                    .iter()
                    .map(|a| a.cgroup.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )),
    }
}

async fn decide(State(st): State<Arc<ApiState>>, raw: Bytes) -> Response {
    if let Some(why) = st.publisher.audit_health().refusal() {
        return error(StatusCode::SERVICE_UNAVAILABLE, why);
    }
    // Strictly, as the proxy reads its decision API: duplicate keys are refused.
    let body = match crate::proxy::parse_json(&raw).and_then(DecideBody::deserialize) {
        Ok(b) => b,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("bad decide request: {e}")),
    };
    let Some(proxy) = &st.proxy else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the HTTP policy engine is not running (--no-proxy)",
        );
    };
    let agent = match st.snapshot.lock() {
        Ok(s) => one_agent(&s.agents, &body.agent).cloned(),
        Err(_) => Err((StatusCode::INTERNAL_SERVER_ERROR, "no snapshot".into())),
    };
    let agent = match agent {
        Ok(a) => a,
        Err((status, why)) => return error(status, why),
    };
    let client = crate::proxy::Client {
        agent: agent.agent_ref.clone(),
        info: crate::events::AgentInfo {
            name: agent.name.clone(),
            selector: agent.selector.clone(),
            cgroup_id: agent.cgroup_id,
            cgroup: agent.cgroup.clone(),
            pod: agent
                .agent_ref
                .pod
                .as_ref()
                .map(|p| p.name.clone())
                .unwrap_or_default(),
            namespace: agent
                .agent_ref
                .pod
                .as_ref()
                .map(|p| p.namespace.clone())
                .unwrap_or_default(),
            ..Default::default()
        }
        .into(),
        cgroup_id: agent.cgroup_id,
        process: None,
        original_dst: None,
    };
    Json(proxy.preauthorize(&client, body.action)).into_response()
}

async fn metrics(State(st): State<Arc<ApiState>>) -> Response {
    if let Ok(e) = st.enforcer.lock() {
        use governance_common::Counter;
        let c = |k| e.counter(k).unwrap_or_default();
        st.metrics.set_kernel_counters(
            c(Counter::Decisions),
            c(Counter::Denials),
            c(Counter::EventsDropped),
            c(Counter::MapFull),
        );
    }
    st.metrics
        .set_pending_approvals(st.approvals.list().len() as u64);
    (
        [(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)],
        st.metrics.render(),
    )
        .into_response()
}

/// Bind the control socket: the directory 0700 and the socket 0600, owned by the daemon's user
/// (root), replacing a stale socket from a previous run.
pub fn bind_socket(path: &std::path::Path) -> std::io::Result<tokio::net::UnixListener> {
    use std::os::unix::fs::PermissionsExt as _;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    // Whatever is at the name goes: a stale socket, or anything else put there while no daemon
    // ran (a directory there made every start fail; red team round 22). A directory is moved
    // aside, not removed: what is below it (a mount, another's files) is left as it is.
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => {
            let aside = path.with_extension(format!("stale-{}", std::process::id()));
            tracing::warn!(
                "moving the directory at the control socket's name {} aside, to {}",
                path.display(),
                aside.display()
            );
            std::fs::rename(path, &aside)?;
        }
        Ok(_) => std::fs::remove_file(path)?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    // Created 0600 (umask) so there is no window in which others could connect.
    let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o177));
    let l = tokio::net::UnixListener::bind(path);
    nix::sys::stat::umask(old);
    let l = l?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(l)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whatever was put at the socket's name while no daemon ran (a directory, with something
    /// in it; a file) does not keep the daemon from binding it (red team round 22).
    #[tokio::test]
    async fn the_socket_is_bound_over_whatever_is_at_its_name() {
        use std::os::unix::fs::FileTypeExt as _;
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("run/governance.sock");
        std::fs::create_dir_all(socket.join("inside")).unwrap();
        std::fs::write(socket.join("inside/file"), "x").unwrap();
        drop(bind_socket(&socket).expect("bound over a directory"));
        assert!(
            std::fs::symlink_metadata(&socket)
                .unwrap()
                .file_type()
                .is_socket()
        );
        std::fs::remove_file(&socket).unwrap();
        std::fs::write(&socket, "a file").unwrap();
        drop(bind_socket(&socket).expect("bound over a file"));
        assert!(
            std::fs::symlink_metadata(&socket)
                .unwrap()
                .file_type()
                .is_socket()
        );
        // And over a stale socket, as before.
        drop(bind_socket(&socket).expect("bound over a stale socket"));
    }

    /// Red team round 34: agents that share a label share a name; a decision is asked of one
    /// of them by its cgroup, and the name of several is refused with theirs.
    #[test]
    fn a_decision_is_one_agent_root_s() {
        let view = |name: &str, cgroup: &str| AgentView {
            name: name.into(),
            cgroup: cgroup.into(),
            cgroup_id: 0,
            selector: String::new(),
            policies: Vec::new(),
            agent_ref: Default::default(),
        };
        let agents = [
            view("support", "agents/a"),
            view("support", "agents/b"),
            view("agents/c", "agents/c"),
        ];
        let (status, why) = one_agent(&agents, "support").unwrap_err();
        assert_eq!(status, StatusCode::CONFLICT);
        assert!(
            why.ends_with("give one's cgroup: agents/a, agents/b"),
            "{why}"
        );
        assert_eq!(one_agent(&agents, "agents/b").unwrap().cgroup, "agents/b");
        assert_eq!(one_agent(&agents, "agents/c").unwrap().cgroup, "agents/c");
        assert_eq!(
            one_agent(&agents, "other").unwrap_err().0,
            StatusCode::NOT_FOUND
        );
    }

    #[test]
    fn since_is_a_time_or_a_duration_back() {
        let t = parse_since("2000-02-29T00:00:00Z").unwrap();
        assert_eq!(t, SystemTime::UNIX_EPOCH + Duration::from_secs(951_782_400));
        let before = SystemTime::now();
        let t = parse_since("1500ms").unwrap();
        let after = SystemTime::now();
        assert!(before - Duration::from_millis(1500) <= t);
        assert!(t <= after - Duration::from_millis(1500));
        assert!(parse_since("0s").is_ok());
        for bad in ["", "10w", "yesterday", "2024-02-31T00:00:00Z"] {
            assert!(parse_since(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn ready_means_programs_attached_and_a_generation_enforcing() {
        let hook = |state: &str| ("p".to_owned(), "what".to_owned(), state.to_owned());
        let mut s = Snapshot::default();
        assert!(
            readiness(&s)
                .unwrap_err()
                .contains("no program is attached")
        );
        s.hooks = vec![hook("NOT AVAILABLE: no BPF LSM"), hook("attached")];
        assert!(readiness(&s).unwrap_err().contains("no policy generation"));
        s.generation = 3;
        s.degraded = true;
        assert_eq!(
            readiness(&s).unwrap(),
            "ready: generation 3 enforcing, 1 of 2 programs attached (degraded)"
        );
    }
}
