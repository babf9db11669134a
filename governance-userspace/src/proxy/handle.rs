//! One request, start to finish: the host check, what is read of the body, the decision
//! (`decide.rs`, [`canonical`]), what the verdict makes of it (`verdict.rs`), and where the
//! request then goes (`forward.rs`).
//!
//! **What is buffered.** A body is read into memory only when a rule that could match the host
//! needs it ([`Engine::needs_body`]: body or MCP conditions), or when the request is escalated (a
//! held request keeps its body). Otherwise it streams through untouched. The buffer limit is the
//! smallest `proxy.max_body` of the agent's policies, else [`super::ProxyConfig::max_body`]; over
//! it → 413. What the decision reads, and what is refused because an upstream could read it another
//! way, is [`canonical`]'s: on a route whose rules read the body (and on an MCP endpoint, where
//! refusals are JSON-RPC errors), a body that is not certainly JSON is refused; elsewhere a body
//! that is not JSON makes body conditions false. A JSON-RPC batch (an array of calls) is decided
//! call by call; the most severe verdict (block > escalate > sandbox > throttle > allow) applies to
//! the whole batch, and a refused batch gets one JSON-RPC error per call.
//!
//! A request without a body whose method carries none (`GET`, `HEAD`, `DELETE`, `OPTIONS`:
//! MCP clients' event-stream GET and session-ending DELETE) is not invalid JSON on an MCP
//! endpoint: the host's rules decide it. A refused call of a legacy MCP SSE session (the
//! SDK's SSE transport, whose POSTs are answered 202 and replied to on the event stream) is
//! delivered on that session's stream (see `sse.rs`).
//!
//! **Upgrades** (WebSocket): decided like any request; when allowed, refused with 501 (not
//! supported yet).

use std::{net::SocketAddr, sync::Arc};

use bytes::Bytes;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper::{Method, Request, Response, StatusCode, body::Incoming, header};

use super::{
    Client, Conn, DECIDE_PATH, Mode, Proxy, canonical,
    forward::{To, is_event_stream},
    record,
    request::{self, Head, Tls},
    respond::{self, Refusal},
    sse::SessionBody,
    upstream::Body,
    verdict::Then,
};
use crate::{engine::Outcome, events::Object};

/// A request body: still streaming, or read.
pub(super) enum ReqBody {
    Stream(Incoming),
    Read(Bytes),
}

/// Where an allowed request goes.
pub(super) enum Dest {
    Addr(SocketAddr),
    /// Explicit proxy use: resolve the host.
    Name(String, u16),
}

/// Whether a host check may look a name up in DNS.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Lookup {
    /// Only what needs no lookup: an IP literal, a static address, a cached answer.
    Local,
    Resolve,
}

/// Whether a decision sends the request to its destination at once (allow): only then is the
/// destination's name looked up before the verdict. An escalated request's is looked up once a
/// human approved it (red team round 26: a name under an escalate rule went to DNS, the data it
/// carried with it, before anyone decided).
pub(super) fn forwards(outcome: &Outcome) -> bool {
    matches!(outcome, Outcome::Allow)
}

impl Proxy {
    /// Why requests are refused now: the audit log cannot be written under `block`.
    pub(super) fn audit_refusal(&self) -> Option<String> {
        self.cfg.audit.as_ref().and_then(|a| a.refusal())
    }

    /// One request, start to finish.
    pub(super) async fn handle(
        self: &Arc<Self>,
        conn: &Arc<Conn>,
        req: Request<Incoming>,
    ) -> Response<Body> {
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
        if let Some(reason) = self.audit_refusal() {
            return respond::refusal(
                &Refusal {
                    status: StatusCode::SERVICE_UNAVAILABLE,
                    error: "audit_unavailable",
                    rule: "builtin:audit",
                    reason: &reason,
                    decision_id: "",
                    retry_after: Some(1),
                },
                None,
            );
        }
        if !self.still_identified(conn, client, &self.engine_for(client)) {
            let id = self.agent_changed(client, None);
            let mut resp = respond::refusal(
                &Refusal {
                    status: StatusCode::FORBIDDEN,
                    error: "blocked",
                    rule: "builtin:identity",
                    reason: record::AGENT_CHANGED,
                    decision_id: &id,
                    retry_after: None,
                },
                None,
            );
            resp.headers_mut().insert(
                header::CONNECTION,
                header::HeaderValue::from_static("close"),
            );
            return resp;
        }
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
        let engine = self.engine_for(client);
        let view = self.view(Some(conn), &engine, &client.agent);
        let (parts, body) = req.into_parts();
        let limit = view.max_body().unwrap_or(self.cfg.max_body);
        let mut body = ReqBody::Stream(body);
        let mut bytes = None;
        // Held until the request is answered (the body goes upstream from memory).
        let mut _held = None;
        if engine.needs_body(&view, &head.host)
            || (head.method == "POST" && engine.names_methods(&view, &head.host))
        {
            match self
                .read_body(
                    &client.agent.cgroup,
                    body,
                    parts.headers.get(header::CONTENT_LENGTH),
                    limit,
                )
                .await
            {
                Ok((b, hold)) => {
                    bytes = Some(b);
                    _held = hold;
                }
                Err(resp) => {
                    let why = resp.status().canonical_reason().unwrap_or("refused");
                    self.refused(client, &head, "builtin:body", why);
                    return resp;
                }
            };
            body = ReqBody::Read(bytes.clone().unwrap_or_default());
        }
        // A POST to a legacy SSE session away from the endpoint its stream announced would be
        // decided by that path's rules while the server acts on it as the session's (see
        // `sse::Sessions::misrouted`).
        if head.method == "POST"
            && let Some(endpoint) = self.sessions.misrouted(
                &client.agent.cgroup,
                &head.host,
                &head.path,
                head.query.as_deref(),
            )
        {
            return self.refuse_unreadable(
                client,
                &head,
                &canonical::Refused::Session(endpoint),
                true,
            );
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
                let mcp = engine.is_mcp_endpoint(&view, &head.host, &head.path)
                    || matches!(why, canonical::Refused::McpPath(_));
                return self.refuse_unreadable(client, &head, &why, mcp);
            }
        };
        let canonical::Evaluated {
            decision,
            mcp,
            http,
            ..
        } = ev;
        if dest.is_none() && forwards(&decision.outcome) && !self.is_canary(client) {
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
        let rule = decision.rule.clone().unwrap_or_else(|| "default".into());
        let dest = match (dest, &sandbox) {
            (_, Some(_)) => None,
            (Some(d), None) => Some(d),
            // An approved escalation (an allowed request was checked above).
            (None, None) => match self.destination(conn, client, &head, Lookup::Resolve).await {
                Ok(d) => d,
                Err(resp) => return resp,
            },
        };
        let to = match (dest, sandbox) {
            (_, Some(url)) => To::Sandbox { rule, url },
            (Some(Dest::Addr(addr)), None) => To::Upstream(addr),
            (Some(Dest::Name(host, port)), None) => match self
                .explicit_target(
                    conn.origin.is_some(),
                    client,
                    &engine,
                    &view,
                    &head,
                    &host,
                    port,
                    &mut body,
                    limit,
                )
                .await
            {
                Ok(to) => to,
                Err(resp) => return resp,
            },
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
            let (agent, host, path) = (&client.agent.cgroup, &head.host, &head.path);
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
            &client.agent.cgroup,
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
    pub(super) async fn destination(
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
        let spliced = head.tls == Some(Tls::Spliced);
        let what = if spliced { "SNI" } else { "Host" };
        // The Host's port (or its scheme's default) must be the one the connection goes to:
        // another port of the address is another service (two names on one IP, each with a
        // port of its own), which rules naming the Host's name do not decide. (A TLS server
        // name has no port.)
        let connected = match &conn.mode {
            Mode::Transparent(dst) if !head.absolute => Some((dst, 80)),
            Mode::Tunnel { addr, .. } => Some((addr, 80)),
            Mode::Intercepted { addr, .. } => Some((addr, 443)),
            _ => None,
        };
        if !spliced
            && let Some((dst, default)) = connected
            && head.port.unwrap_or(default) != dst.port()
        {
            return Err(mismatch(
                StatusCode::FORBIDDEN,
                format!(
                    "Host names port {}, on a connection to port {}",
                    head.port.unwrap_or(default),
                    dst.port()
                ),
            ));
        }
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
                    // A name the agent chose is looked up only if it may be (see
                    // `Proxy::may_look_up`); otherwise the check fails without a lookup.
                    Lookup::Resolve => match self.upstream.host_names_local(&head.host, *dst) {
                        Some(r) => r,
                        None => {
                            let engine = self.engine_for(client);
                            let view = self.view(Some(conn), &engine, &client.agent);
                            match self.may_look_up(
                                &engine,
                                &view,
                                &head.host,
                                conn.origin.is_some(),
                            ) {
                                Ok(()) => self.upstream.host_names(&head.host, *dst).await,
                                Err(why) => Err(why),
                            }
                        }
                    },
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

    /// Read a body the decision needs, within the limit, `body_timeout` and `agent`'s budget of
    /// bodies held at once ([`super::budget`]); the room is held as long as the hold returned.
    /// `agent` is the agent root's cgroup, not its name: agents that share a label each have a
    /// budget of their own (red team round 34: one took its siblings').
    pub(super) async fn read_body(
        &self,
        agent: &str,
        body: ReqBody,
        declared: Option<&header::HeaderValue>,
        limit: usize,
    ) -> Result<(Bytes, Option<super::budget::BodyHold>), Response<Body>> {
        let too_large = || {
            respond::error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body too large",
                &format!("the policy proxy reads bodies up to {limit} bytes to decide on them"),
                None,
            )
        };
        let body = match body {
            ReqBody::Read(b) => return Ok((b, None)),
            ReqBody::Stream(b) => b,
        };
        let declared = declared
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > limit as u64) {
            return Err(too_large());
        }
        let room = declared.map_or(limit, |n| n as usize);
        let Some(hold) = self.bodies.reserve(agent, room) else {
            tracing::debug!(agent, "proxy: the agent's budget of bodies is spent");
            let mut resp = respond::error(
                StatusCode::SERVICE_UNAVAILABLE,
                "too many bodies",
                "the policy proxy holds as many of this agent's request bodies as it may at once; retry",
                None,
            );
            resp.headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
            return Err(resp);
        };
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
            Ok(Ok(c)) => Ok((c.to_bytes(), Some(hold))),
        }
    }
}
