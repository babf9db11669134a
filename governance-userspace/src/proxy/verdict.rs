//! A decision becomes what happens next: forwarded, sent to a sandbox upstream, refused, or
//! held in the approval queue until a human decides (a pre-authorization grant lets it
//! through).
//!
//! **Verdict → HTTP.**
//!
//! | verdict | HTTP | MCP `tools/call` |
//! |---|---|---|
//! | allow | forwarded, streaming | same |
//! | block | 403 `{"error":"blocked","rule","reason","decision_id"}` | HTTP 200, JSON-RPC error -32001 with the call's id |
//! | throttle | 429 with `Retry-After` (seconds, at least 1) | JSON-RPC error -32002 |
//! | sandbox | forwarded to the rule's `upstream` URL instead, with `X-Governance-Sandboxed: <rule>` | same |
//! | escalate | held until a human decides: approve → forwarded; deny → 403 with the reason; timeout → `on_timeout` | deny/timeout → -32001 |
//!
//! Every refusal carries `X-Governance-Decision: <decision id>` (the id of the decision's
//! [`Record`]) and `X-Governance-Rule`. A `sandbox: {profile}` verdict cannot reach HTTP
//! (policy validation refuses profiles on HTTP rules); if it did, it is treated as block.

use std::{
    hash::BuildHasher,
    time::{Duration, Instant},
};

use bytes::Bytes;
use hyper::{Response, StatusCode};
use serde_json::Value;

use super::{
    Client, McpIds, Proxy,
    decide::{McpCall, parse_json, tool_call},
    handle::ReqBody,
    record::body_fields,
    request::Head,
    respond::{self, Refusal},
    upstream::Body,
};
use crate::{
    approvals::{self, Approvals, Resolution},
    engine::{Decision, Engine, HttpRequest, Outcome},
    events::{Record, Source},
    policy::{Posture, SandboxTarget},
};

/// What happens after the decision.
pub(super) enum Then {
    Forward,
    Sandbox(String),
    Respond(Response<Body>),
}

impl Proxy {
    /// Report the decision and turn the verdict into what happens next. Escalations wait
    /// here for a human.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn verdict(
        &self,
        client: &Client,
        engine: &Engine,
        head: &Head,
        http: &HttpRequest,
        decision: &Decision,
        mcp: Option<&McpCall>,
        body: &mut ReqBody,
        limit: usize,
    ) -> Then {
        let mut rec = self.decision_record(client, head, decision, Source::Proxy);
        if let Some(m) = mcp {
            rec.object.mcp_tool = m.tools.join(",");
        }
        rec.object
            .detail
            .extend(body_fields(engine, decision, http.body.as_ref()));
        self.respond_to(client, rec, head, http, decision, mcp, body, limit)
            .await
    }

    /// Turn a decision, reported as `rec`, into what happens next. Escalations wait here.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn respond_to(
        &self,
        client: &Client,
        mut rec: Record,
        head: &Head,
        http: &HttpRequest,
        decision: &Decision,
        mcp: Option<&McpCall>,
        body: &mut ReqBody,
        limit: usize,
    ) -> Then {
        let rule = decision.rule.as_deref().unwrap_or("default").to_owned();
        let ids = mcp.map(|m| &m.ids);
        let refuse = |rec: Record, status, error, reason: &str, retry_after| {
            let id = rec.id.clone();
            (self.sink)(rec);
            Then::Respond(respond::refusal(
                &Refusal {
                    status,
                    error,
                    rule: &rule,
                    reason,
                    decision_id: &id,
                    retry_after,
                },
                ids,
            ))
        };
        if self.is_canary(client)
            && matches!(
                decision.outcome,
                Outcome::Allow
                    | Outcome::Escalate { .. }
                    | Outcome::Sandbox(SandboxTarget::Upstream(_))
            )
        {
            // A drill's request: what would go out (or wait for a human) is answered here.
            let why = format!(
                "the policy {} it by {rule}; a drill's request is never forwarded",
                match decision.outcome {
                    Outcome::Allow => "allows",
                    Outcome::Escalate { .. } => "escalates",
                    _ => "sandboxes",
                }
            );
            rec.object
                .detail
                .insert("drill".into(), "not forwarded".into());
            (self.sink)(rec);
            return Then::Respond(respond::not_forwarded(&rule, &why));
        }
        match &decision.outcome {
            Outcome::Allow => {
                (self.sink)(rec);
                Then::Forward
            }
            Outcome::Block => {
                let reason = decision.reason.clone();
                refuse(rec, StatusCode::FORBIDDEN, "blocked", &reason, None)
            }
            Outcome::Throttle { retry_after } => {
                let secs = retry_after.as_secs_f64().ceil().max(1.0) as u64;
                let reason = decision.reason.clone();
                refuse(
                    rec,
                    StatusCode::TOO_MANY_REQUESTS,
                    "throttled",
                    &reason,
                    Some(secs),
                )
            }
            Outcome::Sandbox(SandboxTarget::Upstream(url)) => {
                rec.object.detail.insert("upstream".into(), url.clone());
                (self.sink)(rec);
                Then::Sandbox(url.clone())
            }
            Outcome::Sandbox(SandboxTarget::Profile(p)) => {
                rec.outcome = "block".into();
                rec.denied = true;
                let reason = format!(
                    "sandbox profile `{p}` applies to processes, not HTTP requests; blocked"
                );
                rec.reason = reason.clone();
                refuse(rec, StatusCode::FORBIDDEN, "blocked", &reason, None)
            }
            Outcome::Escalate {
                timeout,
                on_timeout,
            } => {
                // A held request keeps its body, and a grant covers only the body it was
                // given for: read before either.
                let bytes = match std::mem::replace(body, ReqBody::Read(Bytes::new())) {
                    ReqBody::Read(b) => b,
                    stream @ ReqBody::Stream(_) => {
                        // (A held request's body counts against the approvals' own budget.)
                        match self
                            .read_body(&client.agent.cgroup, stream, None, limit)
                            .await
                        {
                            Ok((b, _)) => b,
                            Err(resp) => {
                                (self.sink)(rec);
                                return Then::Respond(resp);
                            }
                        }
                    }
                };
                *body = ReqBody::Read(bytes.clone());
                show_query(&mut rec, head);
                let keys = self.grant_keys(&rule, head, http, &bytes);
                if self.granted(&client.agent.cgroup, keys) {
                    rec.outcome = "granted".into();
                    rec.denied = false;
                    rec.message = "pre-authorized by an approval".into();
                    (self.sink)(rec);
                    return Then::Forward;
                }
                self.hold(
                    client,
                    rec,
                    &rule,
                    decision,
                    *timeout,
                    *on_timeout,
                    bytes.len(),
                    ids,
                )
                .await
            }
        }
    }

    /// Hold an escalated request until approved, denied, timed out or withdrawn.
    #[allow(clippy::too_many_arguments)]
    async fn hold(
        &self,
        client: &Client,
        rec: Record,
        rule: &str,
        decision: &Decision,
        timeout: Duration,
        on_timeout: Posture,
        bytes: usize,
        mcp: Option<&McpIds>,
    ) -> Then {
        let req = approvals::Request {
            agent: (*client.info).clone(),
            kind: "http".into(),
            object: rec.object.clone(),
            rule: rule.to_owned(),
            reason: decision.reason.clone(),
            timeout,
            on_timeout,
            bytes,
        };
        let refuse = |rec: Option<Record>, id: &str, reason: &str| {
            if let Some(rec) = rec {
                (self.sink)(rec);
            }
            Then::Respond(respond::refusal(
                &Refusal {
                    status: StatusCode::FORBIDDEN,
                    error: "blocked",
                    rule,
                    reason,
                    decision_id: id,
                    retry_after: None,
                },
                mcp,
            ))
        };
        let decision_id = rec.id.clone();
        // The decision is reported when the queue takes the request (with its approval id),
        // just before the request itself; on a full queue it is reported as a block.
        let mut pending = Some(rec);
        let held = self.approvals.hold_announced(req, &mut |info| {
            if let Some(mut rec) = pending.take() {
                rec.approval = Some(Box::new(info.clone()));
                (self.sink)(rec);
            }
        });
        let (approval, mut rx) = match held {
            Ok(x) => x,
            Err(full) => {
                let rec = pending.take().map(|mut rec| {
                    rec.outcome = "block".into();
                    rec.denied = true;
                    rec.reason = format!("approval queue full ({full})");
                    rec
                });
                return refuse(rec, &decision_id, "approval queue full");
            }
        };
        // Withdraw if this future is dropped (the client went away).
        let mut guard = Withdraw {
            approvals: &self.approvals,
            id: approval.clone(),
            armed: true,
        };
        let resolution = tokio::select! {
            r = &mut rx => r.unwrap_or(Resolution::Withdrawn),
            () = tokio::time::sleep(timeout) => {
                self.approvals.expire(&approval);
                rx.await.unwrap_or(Resolution::Expired)
            }
        };
        guard.armed = false;
        match resolution {
            Resolution::Approved { .. } => Then::Forward,
            Resolution::Denied { by, reason } => {
                refuse(None, &decision_id, &format!("denied by {by}: {reason}"))
            }
            Resolution::Expired if on_timeout == Posture::Allow => Then::Forward,
            Resolution::Expired => refuse(None, &decision_id, "approval timed out"),
            Resolution::Withdrawn => refuse(None, &decision_id, "approval withdrawn"),
        }
    }

    /// What identifies an action for a pre-authorization grant: everything in the request that
    /// an upstream acts on and a rule could tell apart: rule, method, host, port (as written,
    /// else its scheme's: another port is another service), path, query, the headers the
    /// host's rules read (`http.headers`, see [`super::canonical::rule_headers`]) and the body.
    /// The body is compared as its JSON value when it is JSON (read strictly: a duplicate key
    /// is not JSON here), so a client that writes the same value with other spacing matches a
    /// grant asked for through the decision API, and byte for byte otherwise. A request that
    /// differs in any of these is another action, held for its own approval.
    ///
    /// An MCP call is compared without what names the message rather than the action (its
    /// JSON-RPC `id` and `params._meta.progressToken`, new on every retry): every other member
    /// counts, so a body that only looks like a `tools/call` (a refund with `method` and
    /// `params` members added, on a host with no MCP rules) is keyed on its amount like any
    /// other body (red team round 15).
    ///
    /// The second key, for an MCP call to a server: the same call approved through the
    /// decision API with no server named (what its approver saw: any server the agent's MCP
    /// rules cover).
    pub(super) fn grant_keys(
        &self,
        rule: &str,
        head: &Head,
        http: &HttpRequest,
        bytes: &[u8],
    ) -> (u64, Option<u64>) {
        let parsed = match &http.body {
            Some(_) => None,
            None if bytes.is_empty() => None,
            None => parse_json(bytes).ok(),
        };
        let json = http.body.as_ref().or(parsed.as_ref());
        // A number serde keeps as an f64 (a fraction, an integer past 2^64) is compared by its
        // value, which other readers may not share: 18446744073709551616 and …617 are one
        // double and two numbers to Python, Java or JavaScript, `12.5000000000000001` is 12.5
        // to a double and not to a `Decimal` (red team round 31). A body written with such a
        // number in another spelling than the value's own (`12.5`) is never granted: a key
        // nothing else has, so each request is held for its own approval. (An action given to
        // the decision API as a JSON value, not as bytes, has no other spelling.)
        if json.is_some_and(|v| {
            has_inexact_number(v)
                && !bytes.is_empty()
                && !(parse_json(bytes).is_ok_and(|read| &read == v)
                    && numbers_as_serde_writes(bytes))
        }) {
            static UNGRANTABLE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
            let n = UNGRANTABLE.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return (self.hasher.hash_one(("ungrantable", n)), None);
        }
        let call = json
            .filter(|v| tool_call(v).is_some())
            .map(without_message_ids);
        let json = call.as_ref().or(json).map(Value::to_string);
        let any_server = call
            .is_some()
            .then(|| self.hasher.hash_one((rule, "tool", &json)));
        if let Some(key) = any_server
            && http.host.is_empty()
        {
            return (key, None);
        }
        let port = head
            .port
            .unwrap_or(if head.tls.is_some() { 443 } else { 80 });
        let mut headers: Vec<(String, &str)> = http
            .headers
            .iter()
            .map(|(n, v)| (n.to_ascii_lowercase(), v.as_str()))
            .collect();
        headers.sort_unstable();
        let raw = if json.is_some() { &[][..] } else { bytes };
        let key = self.hasher.hash_one((
            rule,
            http.method.to_ascii_uppercase(),
            http.host.to_ascii_lowercase(),
            port,
            &http.path,
            head.query.as_deref(),
            headers,
            json,
            raw,
        ));
        (key, any_server)
    }

    /// Whether `agent` holds a live grant for either key.
    /// Whether an approval granted `agent` (its root's cgroup: agents of one label share a
    /// name, and an approval is one agent's; red team round 34) the request of these keys.
    pub(super) fn granted(&self, agent: &str, (key, also): (u64, Option<u64>)) -> bool {
        let mut grants = self.grants.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        grants.retain(|_, until| *until > now);
        let has = |k: u64| grants.contains_key(&(agent.to_owned(), k));
        has(key) || also.is_some_and(has)
    }
}

/// Whether every number in the JSON text `bytes` is written as serde writes the number it
/// reads (`12.5`, not `12.50`, `1.25e1` or `12.5000000000000001`): then its value, which the
/// grant's key holds, is all there is to it. Strings are skipped.
fn numbers_as_serde_writes(bytes: &[u8]) -> bool {
    let (mut i, mut in_string) = (0, false);
    while i < bytes.len() {
        let b = bytes[i];
        if in_string {
            match b {
                b'\\' => i += 1,
                b'"' => in_string = false,
                _ => {}
            }
            i += 1;
            continue;
        }
        match b {
            b'"' => {
                in_string = true;
                i += 1;
            }
            b'-' | b'0'..=b'9' => {
                let start = i;
                while bytes
                    .get(i)
                    .is_some_and(|c| matches!(c, b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E'))
                {
                    i += 1;
                }
                let Ok(text) = std::str::from_utf8(&bytes[start..i]) else {
                    return false;
                };
                match serde_json::from_str::<serde_json::Number>(text) {
                    Ok(n) if n.to_string() == text => {}
                    _ => return false,
                }
            }
            _ => i += 1,
        }
    }
    true
}

/// Whether `v` holds a number that is not an integer serde keeps exactly (an f64).
/// ([`Proxy::grant_keys`])
fn has_inexact_number(v: &Value) -> bool {
    match v {
        Value::Number(n) => n.is_f64(),
        Value::Array(a) => a.iter().any(has_inexact_number),
        Value::Object(o) => o.values().any(has_inexact_number),
        _ => false,
    }
}

/// An MCP call without its JSON-RPC `id` and `params._meta.progressToken`: what a retry of the
/// same call changes.
fn without_message_ids(call: &Value) -> Value {
    let mut call = call.clone();
    if let Some(o) = call.as_object_mut() {
        o.remove("id");
    }
    if let Some(params) = call.get_mut("params").and_then(Value::as_object_mut)
        && let Some(meta) = params.get_mut("_meta").and_then(Value::as_object_mut)
    {
        meta.remove("progressToken");
        if meta.is_empty() {
            params.remove("_meta");
        }
    }
    call
}

/// An escalation's record, and so the approval a human decides on, shows the request's query:
/// the URL in records is without it, and an approver must see what the grant lets through.
pub(super) fn show_query(rec: &mut Record, head: &Head) {
    if let Some(q) = &head.query {
        rec.object.detail.insert("query".into(), q.clone());
    }
}

/// Withdraws a held approval when dropped before it is disarmed (the request's future was
/// cancelled: the client went away).
struct Withdraw<'a> {
    approvals: &'a Approvals,
    id: String,
    armed: bool,
}

impl Drop for Withdraw<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.approvals.withdraw(&self.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::numbers_as_serde_writes as own;

    #[test]
    fn numbers_are_in_their_value_s_own_spelling_or_not() {
        for ok in [
            br#"{"a": 12.5, "b": [1, -2, 0.7], "c": "12.50 1e2", "d": 18446744073709551615}"#
                as &[u8],
            br#"{"e": "\"12.50", "f": 1.8446744073709552e+19}"#,
            b"[]",
        ] {
            assert!(own(ok), "{}", String::from_utf8_lossy(ok));
        }
        for other in [
            br#"{"a": 12.50}"# as &[u8],
            br#"{"a": 12.5000000000000001}"#,
            br#"{"a": 18446744073709551616}"#,
            br#"{"a": 1e2}"#,
            br#"{"a": 1.25e1}"#,
            br#"{"s": "\\", "a": 0.10}"#,
        ] {
            assert!(!own(other), "{}", String::from_utf8_lossy(other));
        }
    }
}
