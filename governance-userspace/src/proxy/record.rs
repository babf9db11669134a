//! What the proxy reports: one [`Record`] per decision, the engine's or a built-in rule's
//! (`builtin:identity`, `builtin:host-check`, `builtin:request`, `builtin:tls`, and the
//! canonical-reading refusals), and the refusals the proxy answers itself.

use std::time::SystemTime;

use hyper::{Request, Response, StatusCode, body::Incoming, header};
use serde_json::Value;

use super::{
    Client, Conn, Mode, Proxy, canonical,
    request::{Head, Reject},
    respond::{self, Refusal},
    upstream::Body,
};
use crate::{
    engine::{Decision, Engine},
    events::{CgroupInfo, Object, Record, RecordType, Shadow, Source, rfc3339},
    policy::{Matcher, Verdict},
};

/// Why a connection whose agent changed since it was accepted is refused.
pub(super) const AGENT_CHANGED: &str =
    "the agent of this connection changed since it was made: connect again";

impl Proxy {
    /// Report a TLS connection the proxy closes without deciding on a request (rule
    /// `builtin:tls`).
    pub(super) fn tls_refused(
        &self,
        client: &Client,
        conn: &Conn,
        head: Option<&Head>,
        reason: &str,
    ) {
        let dest = match &conn.mode {
            Mode::Transparent(a) | Mode::Tunnel { addr: a, .. } => a.to_string(),
            _ => String::new(),
        };
        let object = Object {
            dest,
            ..Default::default()
        };
        tracing::debug!(peer = %conn.peer, agent = %client.info.name, reason, "proxy: TLS refused");
        let rec = self.builtin_record(Some(client), head, "builtin:tls", reason, object);
        (self.sink)(rec);
    }

    /// Report a connection that is not an agent's; returns the record's id.
    pub(super) fn unidentified(&self, conn: &Conn) -> String {
        let rec = self.builtin_record(
            None,
            None,
            "builtin:identity",
            "not an agent connection",
            Object {
                detail: [("peer".to_owned(), conn.peer.to_string())].into(),
                ..Default::default()
            },
        );
        let id = rec.id.clone();
        (self.sink)(rec);
        id
    }

    /// Report a request the proxy refused itself (body over the limit, invalid JSON, ...);
    /// returns the record's id.
    pub(super) fn refused(&self, client: &Client, head: &Head, rule: &str, reason: &str) -> String {
        let rec = self.builtin_record(Some(client), Some(head), rule, reason, Object::default());
        let id = rec.id.clone();
        (self.sink)(rec);
        id
    }

    /// Report the refusal of a connection whose agent changed since it was accepted (see
    /// `Proxy::still_identified`); returns the record's id.
    pub(super) fn agent_changed(&self, client: &Client, head: Option<&Head>) -> String {
        tracing::info!(agent = %client.info.name, "proxy: refusing a connection whose agent changed since it was accepted");
        let rec = self.builtin_record(
            Some(client),
            head,
            "builtin:identity",
            AGENT_CHANGED,
            Object::default(),
        );
        let id = rec.id.clone();
        (self.sink)(rec);
        id
    }

    /// Refuse a request whose body (or query, or method) could be read in more than one way
    /// ([`canonical::Refused`]): reported, and answered with the reason as JSON (a JSON-RPC
    /// error on an MCP endpoint).
    pub(super) fn refuse_unreadable(
        &self,
        client: &Client,
        head: &Head,
        why: &canonical::Refused,
        mcp_endpoint: bool,
    ) -> Response<Body> {
        let reason = why.to_string();
        let id = self.refused(client, head, why.rule(), &reason);
        tracing::debug!(agent = %client.info.name, url = %head.url(), %reason, "proxy: refused");
        if mcp_endpoint {
            return respond::jsonrpc_error(
                why.status(),
                why.jsonrpc_code(),
                &reason,
                why.rule(),
                &id,
            );
        }
        respond::refusal(
            &Refusal {
                status: why.status(),
                error: why.error(),
                rule: why.rule(),
                reason: &reason,
                decision_id: &id,
                retry_after: None,
            },
            None,
        )
    }

    /// A request refused before any decision (400).
    pub(super) fn reject(
        &self,
        client: &Client,
        req: &Request<Incoming>,
        e: &Reject,
    ) -> Response<Body> {
        let reason = e.to_string();
        let rec = self.builtin_record(
            Some(client),
            None,
            "builtin:request",
            &reason,
            Object {
                method: req.method().as_str().to_owned(),
                ..Default::default()
            },
        );
        let id = rec.id.clone();
        (self.sink)(rec);
        let mut resp = respond::refusal(
            &Refusal {
                status: StatusCode::BAD_REQUEST,
                error: "bad request",
                rule: "builtin:request",
                reason: &reason,
                decision_id: &id,
                retry_after: None,
            },
            None,
        );
        if matches!(e, Reject::Framing(_)) {
            // The rest of the connection cannot be told apart from this body: end it.
            resp.headers_mut().insert(
                header::CONNECTION,
                header::HeaderValue::from_static("close"),
            );
        }
        resp
    }

    pub(super) fn base_record(&self, client: Option<&Client>, source: Source) -> Record {
        Record {
            id: self.ids.next(),
            time: rfc3339(SystemTime::now()),
            node: crate::events::node_name().into(),
            ty: RecordType::Decision,
            source,
            kind: "http".into(),
            agent: client.map(|c| c.info.clone()),
            cgroup: client.map(|c| CgroupInfo {
                id: c.cgroup_id,
                path: String::new(),
            }),
            process: client.and_then(|c| c.process.clone()),
            ..Default::default()
        }
    }

    /// The record of an engine decision.
    pub(super) fn decision_record(
        &self,
        client: &Client,
        head: &Head,
        d: &Decision,
        source: Source,
    ) -> Record {
        let verdict = d.verdict();
        let mut rec = self.base_record(Some(client), source);
        rec.outcome = verdict.as_str().into();
        rec.denied = matches!(verdict, Verdict::Block | Verdict::Throttle);
        rec.verdict = verdict.as_str().into();
        rec.mode = "enforce".into();
        rec.rule = d.rule.clone().unwrap_or_else(|| "default".into());
        rec.reason = d.reason.clone();
        rec.generation = d.generation;
        rec.shadow = d.shadow.as_ref().map(|s| Shadow {
            verdict: s.verdict().as_str().into(),
            rule: s.rule.clone().unwrap_or_else(|| "default".into()),
        });
        rec.object = Object {
            method: head.method.clone(),
            url: head.url(),
            ..Default::default()
        };
        if let Some(tls) = head.tls {
            rec.object.detail.insert("tls".into(), tls.as_str().into());
        }
        rec.armed_by = d
            .armed_by
            .clone()
            .or_else(|| d.shadow.as_ref().and_then(|s| s.armed_by.clone()))
            .map(Box::new);
        rec
    }

    /// The record of a built-in refusal (identity, host check, malformed request).
    pub(super) fn builtin_record(
        &self,
        client: Option<&Client>,
        head: Option<&Head>,
        rule: &str,
        reason: &str,
        object: Object,
    ) -> Record {
        let mut rec = self.base_record(client, Source::Proxy);
        rec.outcome = "block".into();
        rec.denied = true;
        rec.verdict = "block".into();
        rec.mode = "enforce".into();
        rec.rule = rule.into();
        rec.reason = reason.into();
        rec.object = object;
        if let Some(h) = head {
            rec.object.method = h.method.clone();
            rec.object.url = h.url();
            if let Some(tls) = h.tls {
                rec.object.detail.insert("tls".into(), tls.as_str().into());
            }
        }
        rec
    }
}

/// Whether the deciding rule has body or MCP argument conditions.
/// Longest value quoted in records and approvals.
const DETAIL_MAX: usize = 256;

/// The body fields the deciding rule's conditions looked at: path → value (truncated); none
/// when it has no body or MCP argument conditions.
pub(super) fn body_fields(
    engine: &Engine,
    d: &Decision,
    body: Option<&Value>,
) -> std::collections::BTreeMap<String, String> {
    let mut out = std::collections::BTreeMap::new();
    let (Some(rule), Some(body)) = (d.rule.as_deref().and_then(|r| engine.rule_by_id(r)), body)
    else {
        return out;
    };
    let Matcher::Http(h) = &rule.matcher else {
        return out;
    };
    let mut quote = |key: String, v: Option<&Value>| {
        let mut s = v.map_or_else(|| "(missing)".to_owned(), Value::to_string);
        if s.len() > DETAIL_MAX {
            let mut cut = DETAIL_MAX;
            while !s.is_char_boundary(cut) {
                cut -= 1;
            }
            s.truncate(cut);
            s.push('…');
        }
        out.insert(key, s);
    };
    for c in &h.body {
        quote(format!("body {}", c.path()), c.lookup(body));
    }
    if let Some((_, args)) = &h.mcp {
        let a = body.pointer("/params/arguments").unwrap_or(&Value::Null);
        for c in args {
            quote(format!("arguments {}", c.path()), c.lookup(a));
        }
    }
    out
}
