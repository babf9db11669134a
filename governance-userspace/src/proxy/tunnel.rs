//! CONNECT tunnels and TLS connections: decided at host level, then carried whole (spliced)
//! or opened (the requests inside served and decided one by one).
//!
//! **CONNECT** `host:port` (explicit proxy use) is decided at host level: an HTTP action with
//! method `CONNECT` and an empty path, then the agent's `network` rules for the address the
//! proxy connects to. The tunnel's first bytes then decide: TLS is handled as below, plain HTTP
//! is served as requests with full decisions.
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
//! - *spliced* (the default), only to a host none of whose enforcing rules looks inside
//!   requests ([`crate::engine::Engine::looks_inside`]: a method other than `CONNECT`, a path,
//!   headers, body or MCP conditions; otherwise refused with rule `builtin:tls`, also inside a
//!   `CONNECT` tunnel: a server that is not TLS reads a crafted ClientHello as requests the
//!   proxy never decides): decided like a CONNECT (method `CONNECT`, host = SNI, empty path;
//!   in a tunnel the CONNECT was that decision), then relayed byte for byte to the destination
//!   until both sides close or it is idle for `idle_timeout`, or cut (and reported as the
//!   rule's denial) once a sequence rule the agent arms refuses its host. The record's URL is
//!   `https://<sni>:<port>`, with detail `tls: spliced`. allow → spliced; block and throttle →
//!   closed; escalate → held in the approval queue while the agent's handshake waits (a client
//!   with a short handshake timeout gives up; the approval then stays until its own timeout);
//!   sandbox with an upstream → blocked: the proxy cannot send a connection whose certificate
//!   must match the host elsewhere.
//! - *intercepted*, for the hosts a policy names in `proxy.intercept_tls` (the union over the
//!   agent's policies): never decided at host level, neither on the server name nor on a
//!   CONNECT to the host. The proxy terminates the agent's TLS with a certificate from the node
//!   CA ([`tls::NodeCa`], loaded once from [`super::ProxyConfig::ca_dir`]), serves HTTP/1.1
//!   inside with the full request-level decisions (a request whose `Host` is not the server
//!   name gets 421), and forwards each over its own TLS connection to the destination
//!   (verified for the server name against the public roots and
//!   [`super::ProxyConfig::upstream_ca`]; kept for the connection's next request). Records carry `https://` URLs and detail `tls: intercepted`. Without a
//!   usable CA, a connection to an intercepted host is closed and reported, never spliced.
//!
//! A refused TLS connection gets a fatal `access_denied` alert, then is closed.

use std::{
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::{Duration, Instant},
};

use bytes::Bytes;
use hyper::{Request, Response, StatusCode, body::Incoming};
use hyper_util::rt::TokioIo;
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use super::{
    Client, Conn, Mode, Proxy,
    forward::To,
    handle::{Dest, Lookup, ReqBody, forwards},
    io::{self, ClientIo, Prefixed, Proto, Tracked},
    listen::until_idle,
    request::{self, Head, Tls},
    respond,
    tls::{self, SniResult},
    upstream::Body,
};
use crate::{
    engine::{Action, Decision, Outcome},
    events::Source,
};

impl Proxy {
    /// CONNECT: decide at host level, then tunnel. A host whose TLS the agent's policies
    /// intercept is not decided here: what the tunnel carries is, request by request.
    pub(super) async fn connect(
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
        let engine = self.engine_for(client);
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
                conn.origin.is_some(),
                client,
                &engine,
                &view,
                &head,
                &head.host,
                port,
                &mut none,
                0,
            )
            .await
        {
            Ok(To::Upstream(addr)) => addr,
            // Not reached: a tunnel's sandbox upstream is blocked in `explicit_target`.
            Ok(To::Sandbox { .. }) => {
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

    /// A connection (or CONNECT tunnel) whose first byte is a TLS handshake record: decided
    /// on its server name and spliced, or intercepted (see the module documentation).
    pub(super) async fn tls(self: Arc<Self>, conn: Arc<Conn>, io: TlsIo) {
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
        let engine = self.engine_for(&client);
        if !self.still_identified(&conn, &client, &engine) {
            self.agent_changed(&client, Some(&head));
            return refuse_tls(io).await;
        }
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
        // A spliced stream is only the server name to the proxy: it may carry anything, and a
        // server that is not TLS reads a crafted ClientHello's bytes as requests. Where the
        // host's rules look inside requests, nothing the proxy sees could decide them: refused
        // (also inside a CONNECT tunnel, whose CONNECT was decided at host level only).
        if let Some(rule) = engine.looks_inside(&view, &sni) {
            let reason = format!(
                "TLS to `{sni}` would be spliced unread, but rule `{rule}` decides requests to it by what is inside them (method, path, headers, body or MCP): intercept its TLS (proxy.intercept_tls) or use plain HTTP"
            );
            self.tls_refused(&client, &conn, Some(&head), &reason);
            return refuse_tls(io).await;
        }
        let decided = matches!(conn.mode, Mode::Tunnel { decided: true, .. });
        if !decided {
            let (http, decision) = self.host_decision(&engine, &view, &head, None);
            if addr.is_none() && forwards(&decision.outcome) && !self.is_canary(&client) {
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
        self.splice(&conn, io, addr, &head).await;
    }

    /// Splice an allowed TLS connection (decided as `head`) to `addr`, until both sides
    /// close, it is idle for `idle_timeout`, or a sequence rule the agent arms since refuses
    /// it (see [`Proxy::until_armed_refusal`]).
    async fn splice(&self, conn: &Conn, io: Box<dyn ClientIo>, addr: SocketAddr, head: &Head) {
        // Not reached for a drill's canary (its verdicts never forward): never spliced.
        if conn.client.as_ref().is_some_and(|c| self.is_canary(c)) {
            return refuse_tls(io).await;
        }
        // From the client's network namespace (see `origin.rs`).
        let connect = self.dial(conn, addr);
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
            d = self.until_armed_refusal(conn, head) => {
                // Dropping both sides closes them: nothing more passes either way.
                self.cut(conn, head, addr, d);
            }
        }
    }

    /// Wait until a sequence rule that the agent of `conn` has armed refuses `head` (a
    /// spliced connection's host-level action): at once, then whenever the kernel reports an
    /// arming ([`crate::events::sequence::armings`]), and every [`REARM_CHECK`] (ring-buffer
    /// events can be dropped; the armed state is read where the engine reads it, the kernel's
    /// table). The engine is the one in force then. Never, for a connection without an agent.
    async fn until_armed_refusal(&self, conn: &Conn, head: &Head) -> Decision {
        let Some(client) = &conn.client else {
            return std::future::pending().await;
        };
        let mut armings = crate::events::sequence::armings();
        let mut tick = tokio::time::interval(REARM_CHECK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let action = Action::Http(request::to_engine(head, None, None));
        loop {
            tokio::select! {
                // Never an error: the sender is static.
                _ = armings.changed() => {}
                _ = tick.tick() => {}
            }
            let engine = self.engine_for(client);
            let view = self.view(Some(conn), &engine, &client.agent);
            if let Some(d) = engine.armed_refusal(&view, &action, Instant::now()) {
                return d;
            }
        }
    }

    /// Report the cut of a spliced connection that an armed sequence rule refuses: a
    /// denial by that rule, naming the arming, as a new connection's refusal is.
    fn cut(&self, conn: &Conn, head: &Head, addr: SocketAddr, mut d: Decision) {
        let Some(client) = &conn.client else { return };
        if !matches!(d.outcome, Outcome::Block | Outcome::Throttle { .. }) {
            // A connection under way cannot be held for a human or sent elsewhere.
            d.outcome = Outcome::Block;
        }
        d.reason = format!(
            "{} (a connection opened before the sequence rule was armed: cut)",
            d.reason
        );
        tracing::info!(agent = %client.info.name, %addr, rule = ?d.rule, "proxy: spliced connection cut by an armed sequence rule");
        let mut rec = self.decision_record(client, head, &d, Source::Proxy);
        rec.object.dest = addr.to_string();
        rec.object.protocol = "tcp".into();
        (self.sink)(rec);
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
}

/// How often a spliced connection re-reads its agent's armed state between the arming
/// events that wake it (a backstop for events the ring buffer drops).
const REARM_CHECK: Duration = Duration::from_secs(1);

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
pub(super) async fn refuse_tls(mut io: Box<dyn ClientIo>) {
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
