//! Upstreams: name resolution (with a small TTL cache and the static `host_addresses`
//! override), the host check, the connection pool, and the bodies that flow both ways.
//!
//! Requests go upstream as HTTP/1.1 over pooled keep-alive connections, addressed by IP so the
//! proxy, not the pool, decides where a name goes; the `Host` header carries the name.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::{Duration, Instant},
};

use bytes::Bytes;
use hyper::{
    Uri,
    body::{Body as HttpBody, Frame, Incoming, SizeHint},
};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::{TokioExecutor, TokioIo, TokioTimer},
};

use super::{HostCheck, ProxyConfig, io::Busy, sse::SessionBody};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A request body on its way upstream: buffered (a rule needed it) or streamed untouched.
pub enum UpBody {
    Full(Option<Bytes>),
    Stream(Incoming),
}

impl HttpBody for UpBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            UpBody::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            UpBody::Stream(s) => Pin::new(s).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpBody::Full(b) => b.is_none(),
            UpBody::Stream(s) => s.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            UpBody::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            UpBody::Stream(s) => s.size_hint(),
        }
    }
}

/// A response body for the client: made by the proxy, or streamed from the upstream with an
/// idle timeout between frames (an upstream that stops sending mid-body does not wedge the
/// connection), or a legacy MCP SSE stream that refusals can be delivered on.
pub enum Body {
    Full(Option<Bytes>),
    Upstream {
        inner: Incoming,
        idle: Duration,
        timer: Option<Pin<Box<tokio::time::Sleep>>>,
        /// The request counts as in flight until its response is sent (or dropped): the
        /// connection's own idle timeout never cuts a response that is still streaming.
        _busy: Option<Busy>,
    },
    Session(Box<SessionBody>),
}

impl Body {
    pub fn full(b: impl Into<Bytes>) -> Self {
        Body::Full(Some(b.into()))
    }

    pub fn empty() -> Self {
        Body::Full(None)
    }

    /// A streamed upstream body, cut when the upstream sends nothing for `idle`; `busy` (the
    /// request's in-flight guard) is held until the body ends.
    pub fn upstream(inner: Incoming, idle: Duration, busy: Option<Busy>) -> Self {
        Body::Upstream {
            inner,
            idle,
            timer: None,
            _busy: busy,
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("the upstream sent nothing for {0:?} in the middle of a body")]
pub struct BodyTimeout(Duration);

impl HttpBody for Body {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            Body::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            Body::Session(s) => Pin::new(&mut **s).poll_frame(cx),
            Body::Upstream {
                inner, idle, timer, ..
            } => match Pin::new(inner).poll_frame(cx) {
                Poll::Ready(f) => {
                    *timer = None;
                    Poll::Ready(f.map(|r| r.map_err(Into::into)))
                }
                Poll::Pending => {
                    let t = timer.get_or_insert_with(|| Box::pin(tokio::time::sleep(*idle)));
                    match t.as_mut().poll(cx) {
                        Poll::Ready(()) => Poll::Ready(Some(Err(BodyTimeout(*idle).into()))),
                        Poll::Pending => Poll::Pending,
                    }
                }
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Body::Full(b) => b.is_none(),
            Body::Upstream { inner, .. } => inner.is_end_stream(),
            Body::Session(s) => s.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Body::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            Body::Upstream { inner, .. } => inner.size_hint(),
            Body::Session(s) => s.size_hint(),
        }
    }
}

use std::future::Future as _;

/// The `nameserver` addresses of a resolv.conf (none listed: the local one, as the C
/// library's resolver assumes).
pub fn nameservers(conf: &str) -> Vec<IpAddr> {
    let listed: Vec<IpAddr> = conf
        .lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            (words.next() == Some("nameserver"))
                .then(|| words.next()?.split('%').next()?.parse().ok())
                .flatten()
        })
        .collect();
    if listed.is_empty() {
        vec![
            IpAddr::from([127, 0, 0, 1]),
            IpAddr::from(std::net::Ipv6Addr::LOCALHOST),
        ]
    } else {
        listed
    }
}

/// Why a name could not be resolved.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("cannot resolve `{host}`: {why}")]
pub struct ResolveError {
    pub host: String,
    pub why: String,
}

/// Cached lookups: name → (expiry, addresses or the error).
type Cache = HashMap<String, (Instant, Result<Arc<[IpAddr]>, String>)>;

/// Most names cached at once (the cache starts over when full).
const CACHE_MAX: usize = 4096;
/// How long a failed lookup is remembered.
const NEGATIVE_TTL: Duration = Duration::from_secs(5);

/// Most agents with upstream connections of their own kept at once (the table starts over
/// when full: their idle connections close).
const CLIENTS_MAX: usize = 1024;

pub struct Upstream {
    /// For requests of no agent (a drill's canary, tests).
    pub client: Client<Guarded, UpBody>,
    /// Each agent's (by agent root and name): an upstream connection kept alive for one
    /// agent's requests is never reused for another's, which would carry a connection-bound
    /// login (NTLM, Negotiate) or what one agent's request left unread on it into the other's
    /// (red team round 13).
    clients: Mutex<HashMap<(u64, String), Client<Guarded, UpBody>>>,
    connect_timeout: Duration,
    host_check: HostCheck,
    overrides: HashMap<String, Vec<IpAddr>>,
    ttl: Duration,
    lookup_timeout: Duration,
    /// Where lookups go (see [`ProxyConfig::dns_servers`]).
    pub servers: Vec<IpAddr>,
    cache: Mutex<Cache>,
    #[cfg(test)]
    looked_up: Mutex<Vec<String>>,
}

/// The pools' connector: hyper's, but a connection made on the daemon's last descriptors is
/// closed at once (`io::fd_in_reserve`; red team round 28's review: plain HTTP forwards and
/// their idle pooled connections took the descriptors the reserve was for).
#[derive(Clone)]
pub struct Guarded(HttpConnector);

impl tower::Service<Uri> for Guarded {
    type Response = TokioIo<tokio::net::TcpStream>;
    type Error = Box<dyn std::error::Error + Send + Sync>;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let connecting = self.0.call(uri);
        Box::pin(async move {
            let io = connecting.await?;
            if super::io::fd_in_reserve(std::os::fd::AsRawFd::as_raw_fd(io.inner())) {
                return Err("the daemon's open files are near its limit".into());
            }
            Ok(io)
        })
    }
}

/// An HTTP client with a pool of kept-alive upstream connections.
fn pooled(connect_timeout: Duration) -> Client<Guarded, UpBody> {
    let mut http = HttpConnector::new();
    http.set_connect_timeout(Some(connect_timeout));
    http.set_nodelay(true);
    http.enforce_http(true);
    Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(Duration::from_secs(60))
        .pool_max_idle_per_host(64)
        .set_host(false)
        .build(Guarded(http))
}

impl Upstream {
    /// The client of the agent whose root is `root` and whose name is `name` (see `clients`).
    pub fn client_of(&self, root: u64, name: &str) -> Client<Guarded, UpBody> {
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        if clients.len() >= CLIENTS_MAX && !clients.contains_key(&(root, name.to_owned())) {
            clients.clear();
        }
        clients
            .entry((root, name.to_owned()))
            .or_insert_with(|| pooled(self.connect_timeout))
            .clone()
    }

    pub fn new(cfg: &ProxyConfig) -> Self {
        Self {
            client: pooled(cfg.upstream_connect_timeout),
            clients: Mutex::new(HashMap::new()),
            connect_timeout: cfg.upstream_connect_timeout,
            host_check: cfg.host_check,
            overrides: cfg
                .host_addresses
                .iter()
                .map(|(k, v)| (super::request::normalise_host(k), v.clone()))
                .collect(),
            ttl: cfg.dns_ttl,
            servers: cfg.dns_servers.clone().unwrap_or_else(|| {
                nameservers(&std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default())
            }),
            lookup_timeout: cfg.upstream_connect_timeout,
            cache: Mutex::new(HashMap::new()),
            #[cfg(test)]
            looked_up: Mutex::new(Vec::new()),
        }
    }

    /// The addresses of `host` (lowercase) when they are known without a DNS lookup: an IP
    /// literal, the static override, or a cached answer. None: it would take a lookup.
    pub fn resolve_local(&self, host: &str) -> Option<Result<Arc<[IpAddr]>, ResolveError>> {
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Some(Ok(Arc::from([connected(ip)])));
        }
        if let Some(list) = self.overrides.get(host) {
            return Some(Ok(list.iter().copied().map(connected).collect()));
        }
        let err = |why: String| ResolveError {
            host: host.to_owned(),
            why,
        };
        if host.is_empty() {
            return Some(Err(err("no host".into())));
        }
        let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        match cache.get(host) {
            Some((until, r)) if *until > Instant::now() => Some(r.clone().map_err(err)),
            _ => None,
        }
    }

    /// The addresses of `host` (lowercase): an IP literal, the static override, or DNS; each
    /// as the kernel connects to it ([`connected`]).
    pub async fn resolve(&self, host: &str) -> Result<Arc<[IpAddr]>, ResolveError> {
        if let Some(known) = self.resolve_local(host) {
            return known;
        }
        let err = |why: String| ResolveError {
            host: host.to_owned(),
            why,
        };
        let now = Instant::now();
        #[cfg(test)]
        self.looked_up
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(host.to_owned());
        let looked = tokio::time::timeout(
            self.lookup_timeout,
            tokio::net::lookup_host((host.to_owned(), 0)),
        )
        .await;
        let result: Result<Arc<[IpAddr]>, String> = match looked {
            Err(_) => Err("lookup timed out".into()),
            Ok(Err(e)) => Err(e.to_string()),
            Ok(Ok(addrs)) => {
                let mut ips: Vec<IpAddr> = addrs.map(|a| connected(a.ip())).collect();
                ips.dedup();
                if ips.is_empty() {
                    Err("no addresses".into())
                } else {
                    Ok(Arc::from(ips))
                }
            }
        };
        let ttl = if result.is_ok() {
            self.ttl
        } else {
            NEGATIVE_TTL
        };
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= CACHE_MAX {
            cache.clear();
        }
        cache.insert(host.to_owned(), (now + ttl, result.clone()));
        result.map_err(err)
    }

    /// The host check of transparent mode: does `host` (what the request or the TLS server
    /// name says) name `dst` (where the agent connected)? Err says why not.
    pub async fn host_names(&self, host: &str, dst: SocketAddr) -> Result<(), String> {
        if self.host_check == HostCheck::Off {
            return Ok(());
        }
        Self::names(host, dst, self.resolve(host).await)
    }

    /// [`Upstream::host_names`] when it needs no DNS lookup; None when it would.
    pub fn host_names_local(&self, host: &str, dst: SocketAddr) -> Option<Result<(), String>> {
        if self.host_check == HostCheck::Off {
            return Some(Ok(()));
        }
        Some(Self::names(host, dst, self.resolve_local(host)?))
    }

    fn names(
        host: &str,
        dst: SocketAddr,
        resolved: Result<Arc<[IpAddr]>, ResolveError>,
    ) -> Result<(), String> {
        let want = dst.ip().to_canonical();
        match resolved {
            Ok(ips) if ips.iter().any(|ip| ip.to_canonical() == want) => Ok(()),
            Ok(_) => Err(format!("`{host}` does not resolve to {want}")),
            Err(e) => Err(e.to_string()),
        }
    }

    /// The names looked up in DNS so far (tests: no name the agent chose is looked up before
    /// the policy allows it).
    #[cfg(test)]
    pub fn looked_up(&self) -> Vec<String> {
        self.looked_up
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// The address the kernel connects to for `ip`: IPv4-mapped addresses as IPv4, and the
/// unspecified address as the loopback (`ip_route_output_key_hash_rcu`, `tcp_v6_connect`), as
/// the kernel's programs decide an agent's own connect (net.rs). Decided on as written, a
/// request to `0.0.0.0` went past a rule blocking `127.0.0.0/8` to the node's loopback
/// services (red team round 9).
pub(super) fn connected(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V4(v4) if v4.is_unspecified() => IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
        IpAddr::V6(v6) if v6.is_unspecified() => IpAddr::V6(std::net::Ipv6Addr::LOCALHOST),
        other => other,
    }
}
