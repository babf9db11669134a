//! The proxy's settings ([`ProxyConfig`]), and what TLS interception loads from them once
//! (the node CA and the upstream TLS client configuration).

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use super::tls;

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
    /// Bodies buffered at once for one agent, and for all ([`super::budget`]); over it → 503.
    pub body_budget_per_agent: usize,
    pub body_budget_total: usize,
    pub host_check: HostCheck,
    /// Static name → addresses, used before DNS (tests and labs).
    pub host_addresses: HashMap<String, Vec<IpAddr>>,
    /// How long a DNS answer is cached.
    pub dns_ttl: Duration,
    /// The DNS servers the proxy's lookups reach (None: the `nameserver`s of
    /// /etc/resolv.conf). A name that no rule of an agent names is looked up for it only if the
    /// agent's `network` rules let it query one of them itself (see `handle.rs`).
    pub dns_servers: Option<Vec<IpAddr>>,
    /// Directory of the node CA for TLS interception (`ca.crt`, `ca.key`; see [`tls`]).
    pub ca_dir: Option<std::path::PathBuf>,
    /// Extra PEM roots trusted for upstream TLS, besides the public ones.
    pub upstream_ca: Option<std::path::PathBuf>,
    /// The audit log's state: under `--audit-on-failure block`, while it cannot be written,
    /// requests are refused (503) and TLS connections closed with `access_denied`.
    pub audit: Option<std::sync::Arc<crate::audit::AuditHealth>>,
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
            body_budget_per_agent: 64 << 20,
            body_budget_total: 256 << 20,
            host_check: HostCheck::Resolve,
            host_addresses: HashMap::new(),
            dns_ttl: Duration::from_secs(30),
            dns_servers: None,
            ca_dir: None,
            upstream_ca: None,
            audit: None,
        }
    }
}

/// The node CA that signs certificates for intercepted hosts, and the TLS client
/// configuration for their upstreams.
pub(super) struct Interception {
    pub(super) ca: tls::NodeCa,
    pub(super) upstream: Arc<rustls::ClientConfig>,
}

impl Interception {
    pub(super) fn load(cfg: &ProxyConfig) -> Result<Interception, String> {
        let dir = cfg
            .ca_dir
            .as_deref()
            .ok_or("no CA directory is configured")?;
        let ca = tls::NodeCa::load_or_create(dir).map_err(|e| e.to_string())?;
        let upstream = tls::client_config(cfg.upstream_ca.as_deref()).map_err(|e| e.to_string())?;
        Ok(Interception { ca, upstream })
    }
}
