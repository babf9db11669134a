//! Deciding: the decision on a parsed request (each call of a JSON-RPC batch, the most
//! severe winning), shared with the decision API (`preauth.rs`) through [`canonical`]; the
//! host-level decision of a CONNECT or a TLS server name; the agent's `network` rules for
//! where the proxy connects on its behalf (explicit proxy use); the decision API endpoint on
//! the proxy listener; and the strict JSON parser every body and action goes through.

use std::{net::SocketAddr, sync::Arc, time::Instant};

use bytes::Bytes;
use hyper::{Method, Request, Response, StatusCode, body::Incoming};
use serde::Deserialize as _;
use serde_json::Value;

use super::{
    Client, DecideAction, McpIds, Proxy,
    forward::To,
    handle::ReqBody,
    request::{self, Head},
    respond,
    upstream::Body,
    verdict::Then,
};
use crate::{
    engine::{Action, AgentRules, Decision, Engine, HttpRequest, Outcome},
    events::Source,
    policy::SandboxTarget,
};

impl Proxy {
    /// The host-level decision of a CONNECT or of a TLS server name: an HTTP action with
    /// method `CONNECT` and an empty path. A `sandbox` upstream cannot apply (the proxy never
    /// sees the requests inside): blocked.
    pub(super) fn host_decision(
        &self,
        engine: &Engine,
        view: &AgentRules,
        head: &Head,
        headers: Option<&hyper::HeaderMap>,
    ) -> (HttpRequest, Decision) {
        // The tunnel's own headers go nowhere; hop-by-hop ones are left out as everywhere.
        let headers = headers
            .filter(|_| !engine.headers_read(view, &head.host).is_empty())
            .map(|h| {
                let mut h = h.clone();
                request::strip_hop_by_hop(&mut h);
                h
            });
        let http = request::to_engine(head, headers.as_ref(), None);
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
    pub(super) async fn host_verdict(
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
    pub(super) async fn decide_host(
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

    /// Where an explicit-proxy request or tunnel goes: the named host, if the agent's
    /// `network` rules let the proxy connect there. In transparent mode the kernel already
    /// decided the agent's own connect; here the proxy connects on the agent's behalf, so the
    /// same rules apply with all five verdicts: block → 403, throttle → 429, escalate → held
    /// for a human (a held request keeps its body), sandbox with an upstream → the request
    /// goes there (a tunnel cannot: blocked), sandbox with a profile → blocked (a profile
    /// applies to the agent's processes, and this connection is the proxy's). CONNECT passes
    /// an empty body.
    ///
    /// The name is resolved only once the request itself is allowed (the caller decided it),
    /// and only when the `network` decision needs the address or the connection is to be
    /// made: a decision that is the same for every address
    /// ([`Engine::network_without_address`]: a port no rule opens, under `network: block`) is
    /// made without a lookup; one that depends on the address looks up only a name
    /// [`Proxy::may_look_up`] allows. A name that needs no lookup (an IP literal, a static
    /// address, a cached answer) is decided on its address.
    ///
    /// `foreign`: the client is in a network namespace other than the proxy's (see
    /// [`Proxy::may_look_up`]).
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn explicit_target(
        &self,
        foreign: bool,
        client: &Client,
        engine: &Engine,
        view: &AgentRules,
        head: &Head,
        host: &str,
        port: u16,
        body: &mut ReqBody,
        limit: usize,
    ) -> Result<To, Response<Body>> {
        let bad_gateway = |e: super::upstream::ResolveError| {
            respond::error(StatusCode::BAD_GATEWAY, "bad gateway", &e.to_string(), None)
        };
        let now = Instant::now();
        let decide = |ip: std::net::IpAddr| {
            let action = Action::Network {
                addr: ip,
                port,
                protocol: crate::policy::Protocol::Tcp,
            };
            // Sequence rules decided this request by its host (`then.http`); their `network`
            // allowlist is for what an agent sends out directly, as in the kernel.
            engine.decide_armed(view, &action, now, &[])
        };
        let (mut addr, mut d) = match self.upstream.resolve_local(host) {
            Some(Ok(ips)) => (Some(SocketAddr::new(ips[0], port)), decide(ips[0])),
            Some(Err(e)) => return Err(bad_gateway(e)),
            None => {
                match engine.network_without_address(view, port, crate::policy::Protocol::Tcp, now)
                {
                    Some(d) => (None, d),
                    None => {
                        if let Err(why) = self.may_look_up(engine, view, host, foreign) {
                            return Err(self.not_looked_up(client, head, &why));
                        }
                        let ips = self.upstream.resolve(host).await.map_err(bad_gateway)?;
                        (Some(SocketAddr::new(ips[0], port)), decide(ips[0]))
                    }
                }
            }
        };
        if d.outcome == Outcome::Allow {
            return match addr {
                Some(a) => Ok(To::Upstream(a)),
                None => self.resolve_to(host, port).await.map(To::Upstream),
            };
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
        let dest = match addr {
            Some(a) => a.to_string(),
            // Decided for every address: the name was not looked up.
            None => format!("{host}:{port}"),
        };
        d.reason = format!("{} (connecting to {dest})", d.reason);
        let mut rec = self.decision_record(client, head, &d, Source::Proxy);
        rec.object.dest = dest;
        rec.object.protocol = "tcp".into();
        let http = request::to_engine(head, None, None);
        match self
            .respond_to(client, rec, head, &http, &d, None, body, limit)
            .await
        {
            Then::Forward => {
                let a = match addr.take() {
                    Some(a) => a,
                    // Approved by a human: now it goes, and only now is it looked up.
                    None => self.resolve_to(host, port).await?,
                };
                Ok(To::Upstream(a))
            }
            Then::Sandbox(url) => Ok(To::Sandbox {
                rule: d.rule.clone().unwrap_or_else(|| "default".into()),
                url,
            }),
            Then::Respond(r) => Err(r),
        }
    }

    /// `host:port`, resolved (502 if it cannot be).
    async fn resolve_to(&self, host: &str, port: u16) -> Result<SocketAddr, Response<Body>> {
        match self.upstream.resolve(host).await {
            Ok(ips) => Ok(SocketAddr::new(ips[0], port)),
            Err(e) => Err(respond::error(
                StatusCode::BAD_GATEWAY,
                "bad gateway",
                &e.to_string(),
                None,
            )),
        }
    }

    /// Whether the proxy may look `host` (a name that needs a DNS lookup: not an IP literal,
    /// a static address or a cached answer) up for the agent of `view`: when a rule of the
    /// agent names it ([`Engine::names_host`]: the policy chose the name), or when the agent's
    /// `network` rules (with what it has armed) let it query one of the proxy's DNS servers
    /// itself (the lookup opens no way out that it does not have). Otherwise a name the agent
    /// chose would carry what it encodes to the resolver, and on to the name's servers, for
    /// an agent whose own DNS is refused. Err says why not.
    ///
    /// `foreign`: the agent is in a network namespace of its own. The proxy's DNS servers are
    /// the node's; one at a loopback, unspecified or link-local address is a server of the
    /// node's namespace that the same address in the agent's namespace does not reach (the
    /// agent's own `127.0.0.53` is not the node's resolver), so the agent's rules for that
    /// address do not let it query this server, and it does not count.
    pub(super) fn may_look_up(
        &self,
        engine: &Engine,
        view: &AgentRules,
        host: &str,
        foreign: bool,
    ) -> Result<(), String> {
        if engine.names_host(view, host) {
            return Ok(());
        }
        let now = Instant::now();
        let servers = self.upstream.servers.iter();
        let mut servers = servers.filter(|ip| !(foreign && node_local(**ip)));
        let own_dns = servers.any(|ip| {
            let query = Action::Network {
                addr: *ip,
                port: 53,
                protocol: crate::policy::Protocol::Udp,
            };
            engine.decide(view, &query, now).outcome == Outcome::Allow
        });
        if own_dns {
            return Ok(());
        }
        Err(format!(
            "`{host}` would need a DNS lookup; no rule of the agent names it, and the agent may not query DNS itself: the proxy does not look up a name the agent chose"
        ))
    }

    /// Refuse a request whose name the proxy will not look up (403, `builtin:dns`).
    pub(super) fn not_looked_up(&self, client: &Client, head: &Head, why: &str) -> Response<Body> {
        let rec = self.builtin_record(
            Some(client),
            Some(head),
            "builtin:dns",
            why,
            crate::events::Object::default(),
        );
        let id = rec.id.clone();
        (self.sink)(rec);
        respond::refusal(
            &respond::Refusal {
                status: StatusCode::FORBIDDEN,
                error: "blocked",
                rule: "builtin:dns",
                reason: why,
                decision_id: &id,
                retry_after: None,
            },
            None,
        )
    }

    pub(super) async fn decide_endpoint(
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
        let (bytes, _held) = match self
            .read_body(
                &client.agent.cgroup,
                ReqBody::Stream(req.into_body()),
                None,
                self.cfg.max_body,
            )
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

/// An address that names something of the network namespace it is used in, not a place both
/// namespaces reach alike: loopback, unspecified, link-local (IPv4-mapped forms included).
pub(super) fn node_local(ip: std::net::IpAddr) -> bool {
    match ip.to_canonical() {
        std::net::IpAddr::V4(v4) => v4.is_loopback() || v4.is_unspecified() || v4.is_link_local(),
        std::net::IpAddr::V6(v6) => {
            v6.is_loopback() || v6.is_unspecified() || v6.is_unicast_link_local()
        }
    }
}

/// An MCP call in a request body: tool names and JSON-RPC ids.
#[derive(Clone, Debug, PartialEq)]
pub struct McpCall {
    pub tools: Vec<String>,
    pub ids: McpIds,
}

/// `(tool name, arguments)` of a JSON-RPC `tools/call`.
pub(super) fn tool_call(v: &Value) -> Option<(&str, Option<&Value>)> {
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
/// holds the JSON body afterwards (the deciding call, for a batch). `array_docs`: some rule of
/// the route reads an array document (`$[0].amount`), which then decides a batch-shaped array
/// as one document as well: elements that look like JSON-RPC messages do not hide it from
/// those rules.
///
/// A batch of more than one message is never held for a human: an approval (and a timeout's
/// posture, and a grant) would cover the calls the approver was not shown. Its escalation is
/// refused, with a reason that says to send the call on its own.
pub fn decide_request(
    engine: &Engine,
    view: &AgentRules,
    http: &mut HttpRequest,
    json: Option<Value>,
    array_docs: bool,
) -> (Decision, Option<McpCall>) {
    let now = Instant::now();
    match json {
        Some(Value::Array(calls)) if is_batch(&calls) => {
            let messages = calls.len();
            let whole = array_docs.then(|| Value::Array(calls.clone()));
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
                keep_worse(&mut worst, d, call);
            }
            if let Some(doc) = whole {
                http.body = Some(doc);
                let d = decide_one(engine, view, http, now);
                let doc = http.body.take().unwrap_or(Value::Null);
                keep_worse(&mut worst, d, doc);
            }
            let (mut d, call) = match worst {
                Some(w) => w,
                None => (decide_one(engine, view, http, now), Value::Null),
            };
            if messages > 1 && matches!(d.outcome, Outcome::Escalate { .. }) {
                d.outcome = Outcome::Block;
                d.reason = format!(
                    "{} (in a JSON-RPC batch of {messages} messages: a human approves one call at a time; send it on its own)",
                    d.reason
                );
            }
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

/// Keep `d` (decided on `body`) if it is more severe than what `worst` holds (the first of
/// equals stays).
fn keep_worse(worst: &mut Option<(Decision, Value)>, d: Decision, body: Value) {
    if worst
        .as_ref()
        .is_none_or(|(w, _)| d.verdict() > w.verdict())
    {
        *worst = Some((d, body));
    }
}

/// Parse a body as JSON, refusing duplicate object keys (a parser differential: upstreams
/// disagree on which one wins) and `__proto__` keys (JavaScript reads them as the prototype).
/// Depth is bounded by serde_json (128).
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
                    // JavaScript parsers that copy keys by assignment (zod's loose objects in
                    // the MCP TypeScript SDK) make `__proto__` the object's prototype, whose
                    // members then read as the object's own: `params.__proto__.arguments` is
                    // the tool's arguments there and none here (red team round 11).
                    if k == "__proto__" {
                        return Err(serde::de::Error::custom(
                            "the key `__proto__` (a JavaScript parser reads it as the object's prototype)",
                        ));
                    }
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
