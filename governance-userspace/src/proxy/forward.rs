//! Forwarding: a request that may go is sent to its destination (or a sandbox upstream;
//! over TLS for an intercepted connection) and the response streams back.
//!
//! **Streams.** Responses stream through unbuffered. The upstream may be silent for
//! `upstream_timeout` before the head (504) and between body frames (cut), except between the
//! frames of a `text/event-stream` response: `stream_idle_timeout`. A policy's `proxy.idle_timeout`
//! for the host replaces both ([`crate::engine::AgentRules::idle_timeout`]). A response still
//! streaming counts as in flight, so the connection's idle timeout never cuts it.

use std::{net::SocketAddr, time::Duration};

use hyper::{Request, Response, StatusCode, Uri, Version, body::Incoming, header, http};
use hyper_util::rt::TokioIo;

use super::{
    Conn, Mode, Proxy,
    handle::ReqBody,
    io,
    request::{self, Head},
    respond, tls,
    upstream::{Body, UpBody},
};

/// Where a decided request is sent.
pub(super) enum To {
    /// Its destination.
    Upstream(SocketAddr),
    /// A sandbox upstream instead: the deciding rule's, or (explicit proxy use) that of the
    /// `network` rule for the address the proxy would connect to.
    Sandbox { rule: String, url: String },
}

impl Proxy {
    /// Send the request upstream and stream the response back. `wait`: the host's
    /// `proxy.idle_timeout`, if a policy sets one; `busy` is held until the response is sent.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn forward(
        &self,
        conn: &Conn,
        mut parts: http::request::Parts,
        body: ReqBody,
        head: &Head,
        to: To,
        wait: Option<Duration>,
        busy: io::Busy,
    ) -> Response<Body> {
        // Not reached for a drill's canary (its verdicts never forward): never sent.
        if let Some(c) = conn.client.as_ref().filter(|c| self.is_canary(c)) {
            let why = format!(
                "{} is a drill's canary: its requests never leave the node",
                c.agent.name
            );
            return respond::not_forwarded("-", &why);
        }
        let bad_gateway =
            |reason: String| respond::error(StatusCode::BAD_GATEWAY, "bad gateway", &reason, None);
        let (addr, authority, path) = match &to {
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
            To::Upstream(addr) => (*addr, head.authority.clone(), head.path_and_query()),
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
        let tls_name = match (&conn.mode, &to) {
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
        // A body the upstream may leave unread, all of it or its end: an upstream that answers
        // without reading a request's body, or all of it, reads what is left as the next
        // request on the connection, one the proxy never decided (red team round 13: a body on
        // GET, HEAD, DELETE, OPTIONS; round 24: a POST to a route of Python's `http.server`
        // whose handler ignores its body, and bytes that server splits a request line on, a
        // handler that reads one line of it). Whatever the body says, a connection that
        // carried one is not kept for another request. Decided on the body itself, whatever
        // the headers say (HTTP/2 DATA frames need neither Content-Length nor
        // Transfer-Encoding: round 14).
        let (body, unread_body) = match body {
            ReqBody::Read(b) => {
                parts.headers.remove(header::CONTENT_LENGTH);
                let carried = !b.is_empty();
                (UpBody::Full(carried.then_some(b)), carried)
            }
            ReqBody::Stream(s) => {
                let carried = !hyper::body::Body::is_end_stream(&s);
                (UpBody::Stream(s), carried)
            }
        };
        request::strip_hop_by_hop(&mut parts.headers);
        if unread_body {
            parts
                .headers
                .insert(header::CONNECTION, request::header_value("close"));
        }
        let host_value = if authority.is_empty() {
            addr.to_string()
        } else {
            authority
        };
        parts
            .headers
            .insert(header::HOST, request::header_value(&host_value));
        if let To::Sandbox { rule, .. } = &to {
            parts
                .headers
                .insert("x-governance-sandboxed", request::header_value(rule));
        }
        parts.uri = uri;
        parts.version = Version::HTTP_11;
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
                // A sandbox upstream (the policy's) from the proxy's namespace; the request's
                // destination from the client's (see `origin.rs`).
                let sent = match (&conn.origin, &to, &conn.client) {
                    (Some(origin), To::Upstream(_), _) => origin.client.request(req),
                    (_, _, Some(c)) => self
                        .upstream
                        .client_of(c.info.cgroup_id, &c.agent.name)
                        .request(req),
                    _ => self.upstream.client.request(req),
                };
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
        if let To::Sandbox { rule, .. } = &to {
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
                let tcp = self.dial(conn, addr);
                let stream = tls::connect_upstream_via(&interception.upstream, addr, name, tcp)
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
}

/// Whether a response is an event stream (SSE): `Content-Type: text/event-stream`.
pub(super) fn is_event_stream(headers: &hyper::HeaderMap) -> bool {
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
