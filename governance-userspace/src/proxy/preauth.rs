//! The decision API: the decision the proxy would make for an action, without doing it.
//!
//! An agent framework asks before it acts: `POST /.governance/v1/decide` on the proxy
//! listener (identified by its socket, like proxied traffic) or `POST /v1/decide` on the
//! control API, with a [`DecideAction`]:
//!
//! ```json
//! {"http": {"method": "POST", "url": "http://api.payments.example/v1/refunds",
//!           "headers": {"content-type": "application/json"}, "body": {"amount": 500}}}
//! {"tool": "web_search", "arguments": {"q": "rust"}, "server": "http://mcp.search.example/mcp"}
//! ```
//!
//! A tool call without `server` is matched against every MCP rule of the agent, whatever
//! the rule's host and path ([`crate::engine::Engine::decide_tool`]).
//!
//! **The same code path as the proxy.** An HTTP action is turned into what the proxy would
//! receive, a request head (normalised by [`super::request::target`]), headers and body bytes
//! (`body` serialised as JSON, with `content-type: application/json` unless the headers say
//! otherwise; or `body_base64`, the exact bytes, for bodies that are not JSON text: compressed,
//! another charset), and decided by [`super::canonical::evaluate`], the function the proxy
//! calls: a request the proxy would refuse as ambiguous is refused here too (verdict `block`,
//! rule `builtin:body`, `builtin:invalid-json`, `builtin:jsonrpc` or `builtin:request`). The
//! action document itself is parsed strictly (duplicate keys are refused).
//!
//! The answer is a [`DecideResponse`]. Semantics that differ from a bare engine call:
//!
//! - **A pre-authorization counts against throttles**: it takes a token from the bucket, as
//!   the framework is about to act. (Its later request through the proxy takes another one;
//!   a framework that pre-authorizes every call should budget twice, or not pre-authorize
//!   throttled tools.)
//! - **Escalate** puts a request in the approval queue and returns its `approval_id`
//!   (asking again for the same action while it is pending returns the same id). When a human
//!   approves, the proxy remembers a grant for that action (agent, rule, and the tool and
//!   arguments of an MCP call, or method, host, path, query, the headers the rules read and
//!   the body otherwise: [`Proxy::grant_keys`]) for the approval's duration: the retry, pre-authorized or proxied, is then allowed (`allowed: true`, record
//!   outcome `granted`). Denied or expired requests grant nothing.
//! - **Sandbox**: `allowed: false` with `sandbox_upstream`: the action may only go to that
//!   upstream (through the proxy it is sent there automatically).
//!
//! Each pre-authorization is reported as a decision [`crate::events::Record`] with source
//! `api`.

use std::{collections::BTreeMap, time::Instant};

use hyper::{HeaderMap, Method, Uri, Version, header, header::HeaderName, header::HeaderValue};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Value, json};

use super::{Client, McpCall, Proxy, canonical, decide::tool_call, request};
use crate::{
    approvals,
    engine::Outcome,
    events::{ApprovalInfo, Object, Source},
    policy::SandboxTarget,
};

/// An action to decide: `{"http": {...}}` or `{"tool": ..., "arguments": ..., "server": ...}`.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(untagged)]
pub enum DecideAction {
    Http {
        http: HttpAction,
    },
    Tool {
        /// The MCP tool name.
        tool: String,
        /// Its arguments (`params.arguments` of the `tools/call`).
        #[serde(default)]
        arguments: Value,
        /// The MCP server's URL; without it, MCP rules on any host and path apply.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        server: Option<String>,
    },
}

/// An HTTP request to decide.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpAction {
    pub method: String,
    /// `http://` or `https://` URL (the scheme does not change the decision).
    pub url: String,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// The JSON body, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<Value>,
    /// Or the body's exact bytes, base64 (standard alphabet): what will be sent, when it is not
    /// JSON text as given (compressed, another charset, duplicate keys).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body_base64: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HttpDoc {
    http: HttpAction,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ToolDoc {
    tool: String,
    #[serde(default)]
    arguments: Value,
    #[serde(default)]
    server: Option<String>,
}

impl<'de> Deserialize<'de> for DecideAction {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let v = Value::deserialize(d)?;
        if v.get("http").is_some() {
            HttpDoc::deserialize(v)
                .map(|h| DecideAction::Http { http: h.http })
                .map_err(D::Error::custom)
        } else if v.get("tool").is_some() {
            ToolDoc::deserialize(v)
                .map(|t| DecideAction::Tool {
                    tool: t.tool,
                    arguments: t.arguments,
                    server: t.server,
                })
                .map_err(D::Error::custom)
        } else {
            Err(D::Error::custom(
                "an action is {\"http\": {method, url, headers, body}} or {\"tool\": name, \"arguments\": {...}, \"server\": url}",
            ))
        }
    }
}

/// The decision.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DecideResponse {
    /// The id of the decision's record (as in `X-Governance-Decision`).
    pub decision_id: String,
    /// allow, block, throttle, sandbox, escalate.
    pub verdict: String,
    /// Whether the framework may go ahead with the action as asked.
    pub allowed: bool,
    /// `<policy>/<rule>`, `default`, or `builtin:<what>`.
    pub rule: String,
    pub reason: String,
    /// Throttle: seconds until a retry can pass.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_secs: Option<u64>,
    /// Escalate: the pending approval (poll `/v1/approvals/{id}`, or retry once approved).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval_id: Option<String>,
    /// Sandbox: where the action may go instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox_upstream: Option<String>,
}

impl Proxy {
    /// An action the proxy would refuse before deciding it (ambiguous or unreadable):
    /// reported, and answered as a block by the built-in rule.
    fn refused_action(
        &self,
        client: &Client,
        head: &request::Head,
        why: &canonical::Refused,
        server_less: bool,
    ) -> DecideResponse {
        self.refused_response(
            client,
            (!server_less).then_some(head),
            why.rule(),
            why.to_string(),
        )
    }

    /// A refusal by a built-in rule, reported and answered as a block.
    fn refused_response(
        &self,
        client: &Client,
        head: Option<&request::Head>,
        rule: &str,
        reason: String,
    ) -> DecideResponse {
        let mut rec = self.builtin_record(Some(client), head, rule, &reason, Object::default());
        rec.source = Source::Api;
        let id = rec.id.clone();
        (self.sink)(rec);
        DecideResponse {
            decision_id: id,
            verdict: "block".into(),
            allowed: false,
            rule: rule.into(),
            reason,
            retry_after_secs: None,
            approval_id: None,
            sandbox_upstream: None,
        }
    }

    /// The decision API: the same decision the proxy would make for this action, without
    /// doing it (see the module documentation for throttles, escalations and sandboxes). An
    /// action that cannot be decided (a bad URL) is refused: verdict block, rule
    /// `builtin:request`.
    pub fn preauthorize(&self, client: &Client, action: DecideAction) -> DecideResponse {
        self.preauthorize_with(client, action)
            .unwrap_or_else(|reason| self.refused_response(client, None, "builtin:request", reason))
    }

    /// Err: the action is malformed (the reason).
    pub(super) fn preauthorize_with(
        &self,
        client: &Client,
        action: DecideAction,
    ) -> Result<DecideResponse, String> {
        let engine = self.engine_for(client);
        let view = self.view(None, &engine, &client.agent);
        let limit = view.max_body().unwrap_or(self.cfg.max_body);
        let json_type = |headers: &mut HeaderMap| {
            if !headers.contains_key(header::CONTENT_TYPE) {
                headers.insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                );
            }
        };
        // (head, what the engine decided or the refusal of an ambiguous request, whether the
        // call names no server, the body's bytes).
        let (head, evaluated, server_less, bytes) = match action {
            DecideAction::Http { http } => {
                let (head, mut headers) = http_head(&http.method, &http.url, &http.headers)?;
                let bytes = match (http.body, http.body_base64) {
                    (Some(_), Some(_)) => {
                        return Err("give `body` or `body_base64`, not both".into());
                    }
                    (Some(v), None) => {
                        json_type(&mut headers);
                        Some(serde_json::to_vec(&v).map_err(|e| e.to_string())?)
                    }
                    (None, Some(b)) => Some(base64_decode(&b)?),
                    (None, None) => None,
                };
                let bytes = bytes.unwrap_or_default();
                let ev = canonical::evaluate(&engine, &view, &head, &headers, Some(&bytes), limit);
                (head, ev, false, bytes)
            }
            DecideAction::Tool {
                tool,
                arguments,
                server,
            } => {
                let call = json!({
                    "jsonrpc": "2.0",
                    "id": 1,
                    "method": "tools/call",
                    "params": { "name": tool, "arguments": arguments },
                });
                match server {
                    Some(url) => {
                        let (head, mut headers) = http_head("POST", &url, &BTreeMap::new())?;
                        json_type(&mut headers);
                        let bytes = serde_json::to_vec(&call).map_err(|e| e.to_string())?;
                        let ev = canonical::evaluate(
                            &engine,
                            &view,
                            &head,
                            &headers,
                            Some(&bytes),
                            limit,
                        );
                        (head, ev, false, bytes)
                    }
                    None => {
                        let head = request::Head {
                            method: "POST".into(),
                            host: String::new(),
                            port: None,
                            authority: String::new(),
                            path: String::new(),
                            query: None,
                            absolute: true,
                            tls: None,
                        };
                        let ev = canonical::check_tool_call(&engine, &view, &call).map(|()| {
                            let decision = engine.decide_tool(&view, &call, Instant::now());
                            let tools = tool_call(&call).map(|(t, _)| McpCall {
                                tools: vec![t.to_owned()],
                                ids: super::McpIds {
                                    ids: vec![Value::from(1)],
                                    batch: false,
                                },
                            });
                            let mut http = request::to_engine(&head, None, None);
                            http.body = Some(call);
                            canonical::Evaluated {
                                decision,
                                mcp: tools,
                                http,
                                mcp_endpoint: true,
                            }
                        });
                        (head, ev, true, Vec::new())
                    }
                }
            }
        };
        let canonical::Evaluated {
            decision,
            mcp,
            http,
            ..
        } = match evaluated {
            Ok(ev) => ev,
            Err(why) => return Ok(self.refused_action(client, &head, &why, server_less)),
        };
        let mcp = mcp.map(|m| m.tools);
        let mut rec = self.decision_record(client, &head, &decision, Source::Api);
        if server_less {
            rec.object.url = String::new();
        }
        if let Some(tools) = &mcp {
            rec.object.mcp_tool = tools.join(",");
        }
        rec.object.detail.extend(super::record::body_fields(
            &engine,
            &decision,
            http.body.as_ref(),
        ));
        let rule = decision.rule.clone().unwrap_or_else(|| "default".into());
        let mut resp = DecideResponse {
            decision_id: rec.id.clone(),
            verdict: rec.verdict.to_string(),
            allowed: false,
            rule: rule.clone(),
            reason: decision.reason.clone(),
            retry_after_secs: None,
            approval_id: None,
            sandbox_upstream: None,
        };
        match &decision.outcome {
            Outcome::Allow => resp.allowed = true,
            Outcome::Block => {}
            Outcome::Throttle { retry_after } => {
                resp.retry_after_secs = Some(retry_after.as_secs_f64().ceil().max(1.0) as u64);
            }
            Outcome::Sandbox(SandboxTarget::Upstream(url)) => {
                resp.sandbox_upstream = Some(url.clone());
            }
            Outcome::Sandbox(SandboxTarget::Profile(_)) => {
                resp.verdict = "block".into();
                resp.reason = "sandbox profiles apply to processes, not HTTP requests".into();
            }
            Outcome::Escalate {
                timeout,
                on_timeout,
            } => {
                super::verdict::show_query(&mut rec, &head);
                let keys = self.grant_keys(&rule, &head, &http, &bytes);
                let key = keys.0;
                if self.granted(&client.agent.cgroup, keys) {
                    rec.outcome = "granted".into();
                    rec.message = "pre-authorized by an approval".into();
                    resp.allowed = true;
                    resp.reason = format!("approved earlier: {}", decision.reason);
                } else {
                    let grants = self.grants.clone();
                    let agent = client.agent.cgroup.clone();
                    let req = approvals::Request {
                        agent: (*client.info).clone(),
                        kind: "http".into(),
                        object: rec.object.clone(),
                        rule: rule.clone(),
                        reason: decision.reason.clone(),
                        timeout: *timeout,
                        on_timeout: *on_timeout,
                        bytes: 0,
                    };
                    let on_approve = Box::new(move |d| {
                        grants
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .insert((agent, key), Instant::now() + d);
                    });
                    let mut info = None;
                    let announce = &mut |a: &ApprovalInfo| info = Some(a.clone());
                    match self
                        .approvals
                        .request_action(req, key, on_approve, announce)
                    {
                        Ok(id) => {
                            rec.approval = info.map(Box::new);
                            resp.approval_id = Some(id);
                        }
                        Err(full) => {
                            rec.reason = format!("approval queue full ({full})");
                            resp.reason = "approval queue full".into();
                        }
                    }
                }
            }
        }
        rec.denied = !resp.allowed;
        (self.sink)(rec);
        Ok(resp)
    }
}

/// The request head of an HTTP action, normalised as the proxy normalises a request's
/// ([`request::target`]: the same function).
fn http_head(
    method: &str,
    url: &str,
    headers: &BTreeMap<String, String>,
) -> Result<(request::Head, HeaderMap), String> {
    let uri: Uri = url.parse().map_err(|e| format!("url `{url}`: {e}"))?;
    match uri.scheme_str() {
        Some(s) if s.eq_ignore_ascii_case("http") || s.eq_ignore_ascii_case("https") => {}
        _ => return Err(format!("url `{url}`: give an http:// or https:// URL")),
    }
    let authority = uri
        .authority()
        .ok_or_else(|| format!("url `{url}` has no host"))?;
    let m = method.trim().to_ascii_uppercase();
    if m.is_empty() || !m.bytes().all(|b| b.is_ascii_alphabetic()) {
        return Err(format!("`{method}` is not an HTTP method"));
    }
    let method = Method::from_bytes(m.as_bytes()).map_err(|e| e.to_string())?;
    // The scheme does not change the decision; `target` reads absolute-form http:// targets.
    // It does choose the port a grant is keyed on (see `Proxy::grant_keys`).
    let https = uri
        .scheme_str()
        .is_some_and(|s| s.eq_ignore_ascii_case("https"));
    let uri = Uri::builder()
        .scheme("http")
        .authority(authority.as_str())
        .path_and_query(uri.path_and_query().map_or("/", |p| p.as_str()))
        .build()
        .map_err(|e| format!("url `{url}`: {e}"))?;
    let mut map = HeaderMap::new();
    for (k, v) in headers {
        let name =
            HeaderName::from_bytes(k.as_bytes()).map_err(|_| format!("bad header name `{k}`"))?;
        let value = HeaderValue::from_str(v).map_err(|_| format!("bad value for header `{k}`"))?;
        map.append(name, value);
    }
    // The URL names the host, as an absolute-form request does.
    map.remove(header::HOST);
    let mut head = request::target(&method, &uri, Version::HTTP_11, &map).map_err(|e| match e {
        request::Reject::Target(why) => format!("url `{url}`: {why}"),
        other => other.to_string(),
    })?;
    if https {
        head.port = head.port.or(Some(443));
    }
    Ok((head, map))
}

/// Standard base64 (padding optional, whitespace ignored).
fn base64_decode(s: &str) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(s.len() / 4 * 3);
    let mut acc = 0u32;
    let mut bits = 0;
    let mut padded = false;
    for c in s.bytes().filter(|c| !c.is_ascii_whitespace()) {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            b'=' => {
                padded = true;
                continue;
            }
            _ => return Err("`body_base64` is not base64".into()),
        };
        if padded {
            return Err("`body_base64` has data after padding".into());
        }
        acc = acc << 6 | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::base64_decode;

    #[test]
    fn base64_bodies() {
        assert_eq!(base64_decode("eyJhIjoxfQ==").unwrap(), br#"{"a":1}"#);
        assert_eq!(base64_decode("eyJhIjoxfQ").unwrap(), br#"{"a":1}"#);
        assert_eq!(base64_decode("").unwrap(), b"");
        assert!(base64_decode("e$").is_err());
        assert!(base64_decode("eQ==eQ").is_err());
    }
}
