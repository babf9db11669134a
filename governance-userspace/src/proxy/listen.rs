//! Listening: connections are accepted, identified, counted against their agent's budget
//! (over it → 503 and close), told apart by their first bytes (HTTP/1.1, h2c, or TLS: see
//! `tunnel.rs`), and served as HTTP until they close or are idle with nothing in flight.

use std::{
    collections::HashMap,
    convert::Infallible,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use hyper::{body::Incoming, service::service_fn};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{
    io::{AsyncRead, AsyncWrite, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

use super::{
    Conn, Mode, Proxy, Threads,
    io::{self, Activity, Proto, Tracked},
    tunnel::TlsIo,
};

impl Proxy {
    /// Accept and serve connections until the task is aborted.
    pub async fn serve(self: Arc<Self>, listener: TcpListener) -> std::io::Result<()> {
        self.serve_from(listener, None).await
    }

    /// [`Proxy::serve`] for a listener in another network namespace: its clients' upstream
    /// connections are made from `origin` (that namespace), never from the proxy's.
    pub async fn serve_from(
        self: Arc<Self>,
        listener: TcpListener,
        origin: Option<Arc<super::Origin>>,
    ) -> std::io::Result<()> {
        let mut reserve_warned: Option<Instant> = None;
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
            if io::fd_in_reserve(std::os::fd::AsRawFd::as_raw_fd(&stream)) {
                if reserve_warned.is_none_or(|t: Instant| t.elapsed() > Duration::from_secs(60)) {
                    tracing::warn!(
                        "proxy: the daemon's open files are near its limit; connections are closed as they come until some end"
                    );
                    reserve_warned = Some(Instant::now());
                }
                continue;
            }
            let this = self.clone();
            let origin = origin.clone();
            io::spawn(&self.panics, async move {
                this.connection(stream, peer, origin).await
            });
        }
    }

    async fn connection(
        self: Arc<Self>,
        stream: TcpStream,
        peer: SocketAddr,
        origin: Option<Arc<super::Origin>>,
    ) {
        let _ = stream.set_nodelay(true);
        let Ok(local) = stream.local_addr() else {
            return;
        };
        // The connection's network namespace: the host's, or an agent's (a listener opened
        // there, see `daemon/netns.rs`). Unknown: no agent's connection (refused as such).
        let netns = {
            use std::os::fd::AsFd as _;
            crate::kernel::netns_cookie(stream.as_fd()).unwrap_or(0)
        };
        let client = self.identify.identify(peer, local, netns);
        // What the agent sends is parsed on the proxy's own threads, which hold no capability:
        // the socket goes there (the kernel map and /proc reads above needed the daemon's).
        if let Some(rt) = self.threads.get().and_then(Threads::handle) {
            let Ok(stream) = stream.into_std() else {
                return;
            };
            let this = self.clone();
            let _in = rt.enter();
            io::spawn(&self.panics, async move {
                match TcpStream::from_std(stream) {
                    Ok(stream) => this.identified(stream, peer, local, client, origin).await,
                    Err(e) => {
                        tracing::debug!(%peer, error = %e, "proxy: handing a connection over failed")
                    }
                }
            });
            return;
        }
        self.identified(stream, peer, local, client, origin).await;
    }

    /// Serve an identified connection.
    async fn identified(
        self: Arc<Self>,
        stream: TcpStream,
        peer: SocketAddr,
        local: SocketAddr,
        client: Option<super::Client>,
        origin: Option<Arc<super::Origin>>,
    ) {
        // Unidentified connections share one budget. An agent's is its root's, not its name's:
        // agents that share a label each have their own (red team round 34: one agent's idle
        // connections took every slot of its label's other agents).
        let key = client
            .as_ref()
            .map_or(String::new(), |c| c.agent.cgroup.clone());
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
        let conn = Conn::new(client, peer, local, mode, origin);
        // Audit log down under `block`: no TLS (spliced TLS is decided before any request).
        if matches!(proto, Proto::Tls) && self.audit_refusal().is_some() {
            return super::tunnel::refuse_tls(Box::new(stream)).await;
        }
        match proto {
            Proto::Tls => self.tls(conn, TlsIo::Tcp(stream)).await,
            p => self.serve_http(conn, stream, p).await,
        }
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
    pub(super) fn is_self(&self, addr: SocketAddr, local: SocketAddr) -> bool {
        addr == local || self.cfg.listen.contains(&addr)
    }

    /// Serve HTTP on a connection or tunnel. (Boxed: tunnels serve HTTP from inside a request.)
    pub(super) fn serve_http<I>(
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
                async move {
                    let head = req.method() == hyper::Method::HEAD;
                    let mut resp = this.handle(&conn, req).await;
                    // A response to HEAD has no content (RFC 9110 §9.3.2); hyper's HTTP/2
                    // server would send the proxy's own refusal body after `content-length: 0`.
                    if head {
                        *resp.body_mut() = super::upstream::Body::empty();
                    }
                    Ok::<_, Infallible>(resp)
                }
            });
            let idle = self.cfg.idle_timeout;
            let result = match proto {
                Proto::Http2 => {
                    let mut b =
                        hyper::server::conn::http2::Builder::new(io::Exec(self.panics.clone()));
                    b.timer(TokioTimer::new())
                        .max_header_list_size(self.cfg.max_header_bytes as u32)
                        .max_concurrent_streams(128)
                        // What a client may send ahead on a connection, before the proxy reads
                        // it: a body streamed to an upstream that does not read waits in the
                        // daemon's memory (hyper's default is 1 MiB a connection; round 28).
                        .initial_stream_window_size(64 << 10)
                        .initial_connection_window_size(256 << 10);
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

/// Resolves once `activity` has seen nothing for `idle`.
pub(super) async fn until_idle(activity: &Activity, idle: Duration) {
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
