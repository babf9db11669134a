//! Responses the proxy makes itself: refusals (block, throttle, denied or timed-out
//! approvals) as JSON, or as JSON-RPC 2.0 errors for MCP calls, and protocol errors.

use hyper::{Response, StatusCode, header};
use serde_json::{Value, json};

use super::{request::header_value, upstream::Body};

/// JSON-RPC error code for a call blocked (or denied) by policy.
pub const MCP_BLOCKED: i64 = -32001;
/// JSON-RPC error code for a throttled call.
pub const MCP_THROTTLED: i64 = -32002;

/// The JSON-RPC request ids of an MCP call (one, or each of a batch).
#[derive(Clone, Debug, PartialEq)]
pub struct McpIds {
    pub ids: Vec<Value>,
    pub batch: bool,
}

/// A refusal by policy.
pub struct Refusal<'a> {
    /// 403 or 429.
    pub status: StatusCode,
    /// `blocked`, `throttled`.
    pub error: &'static str,
    pub rule: &'a str,
    pub reason: &'a str,
    pub decision_id: &'a str,
    /// Throttle: seconds until a retry can pass (at least 1).
    pub retry_after: Option<u64>,
}

/// HTTP: `status` with `{"error","rule","reason","decision_id"}` and the `X-Governance-*`
/// headers. MCP: HTTP 200 with a JSON-RPC error for each call (same ids), code -32001
/// (blocked) or -32002 (throttled), `data: {rule, decision_id}`.
pub fn refusal(r: &Refusal<'_>, mcp: Option<&McpIds>) -> Response<Body> {
    let (status, body) = match mcp {
        Some(m) => {
            let code = if r.status == StatusCode::TOO_MANY_REQUESTS {
                MCP_THROTTLED
            } else {
                MCP_BLOCKED
            };
            let verb = if code == MCP_THROTTLED {
                "throttled"
            } else {
                "blocked"
            };
            let mut data = json!({ "rule": r.rule, "decision_id": r.decision_id });
            if let Some(s) = r.retry_after {
                data["retry_after_secs"] = s.into();
            }
            let error = |id: &Value| {
                json!({
                    "jsonrpc": "2.0",
                    "id": id,
                    "error": {
                        "code": code,
                        "message": format!("{verb} by policy: {}", r.reason),
                        "data": data,
                    }
                })
            };
            let body = if m.batch {
                Value::Array(m.ids.iter().map(error).collect())
            } else {
                error(m.ids.first().unwrap_or(&Value::Null))
            };
            (StatusCode::OK, body)
        }
        None => {
            let mut body = json!({
                "error": r.error,
                "rule": r.rule,
                "reason": r.reason,
                "decision_id": r.decision_id,
            });
            if let Some(s) = r.retry_after {
                body["retry_after_secs"] = s.into();
            }
            (r.status, body)
        }
    };
    let mut resp = json_response(status, &body);
    let h = resp.headers_mut();
    h.insert("x-governance-decision", header_value(r.decision_id));
    h.insert("x-governance-rule", header_value(r.rule));
    if let Some(s) = r.retry_after {
        h.insert(header::RETRY_AFTER, header_value(&s.to_string()));
    }
    resp
}

/// A drill's canary request that the policy did not refuse: 409, `{"error": "drill", "rule",
/// "reason"}` and `X-Governance-Drill: <reason>`, never forwarded.
pub fn not_forwarded(rule: &str, reason: &str) -> Response<Body> {
    let mut resp = json_response(
        StatusCode::CONFLICT,
        &json!({ "error": "drill", "rule": rule, "reason": reason }),
    );
    let h = resp.headers_mut();
    h.insert("x-governance-drill", header_value(reason));
    h.insert("x-governance-rule", header_value(rule));
    resp
}

/// A protocol or upstream error: `{"error": what, "reason": reason}` (and the decision id
/// when there was a decision).
pub fn error(
    status: StatusCode,
    what: &str,
    reason: &str,
    decision_id: Option<&str>,
) -> Response<Body> {
    let mut body = json!({ "error": what, "reason": reason });
    if let Some(id) = decision_id {
        body["decision_id"] = id.into();
    }
    let mut resp = json_response(status, &body);
    if let Some(id) = decision_id {
        resp.headers_mut()
            .insert("x-governance-decision", header_value(id));
    }
    resp
}

/// A JSON-RPC 2.0 error for a request the proxy refuses on an MCP endpoint before deciding it
/// (a body that is not JSON, an invalid or ambiguous message): HTTP `status`, `code` -32700
/// (parse error) or -32600 (invalid request), `id` null, `data: {rule, decision_id}`.
pub fn jsonrpc_error(
    status: StatusCode,
    code: i64,
    reason: &str,
    rule: &str,
    decision_id: &str,
) -> Response<Body> {
    let what = if code == -32700 {
        "parse error"
    } else {
        "invalid request"
    };
    let mut resp = json_response(
        status,
        &json!({
            "jsonrpc": "2.0",
            "id": null,
            "error": {
                "code": code,
                "message": format!("{what}: {reason}"),
                "data": { "rule": rule, "decision_id": decision_id },
            }
        }),
    );
    let h = resp.headers_mut();
    h.insert("x-governance-decision", header_value(decision_id));
    h.insert("x-governance-rule", header_value(rule));
    resp
}

pub fn json_response(status: StatusCode, body: &Value) -> Response<Body> {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    let mut resp = Response::new(Body::full(bytes));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    resp
}
