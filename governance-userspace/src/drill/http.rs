//! HTTP drill requests: a request made up to fall under an `http` rule (its host, method, path,
//! headers, body conditions, MCP tool), sent by the canary through the proxy. What is made up
//! is a best guess (a glob's instance, a number past a bound); the planner keeps it only when
//! the engine decides it by the rule under drill.

use serde_json::{Value, json};

use crate::{engine::HttpRequest, policy::HostMatch, policy::HttpMatcher};

/// What stands in for a glob's wildcards and for a suffix rule's subdomain.
const FILL: &str = "governance-drill";

/// The host of the default-deny HTTP probe: `.invalid` never resolves (RFC 6761).
pub const DEFAULT_HOST: &str = "governance-drill.invalid";

/// A request the canary sends (absolute-form, to the proxy's own address).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpProbe {
    pub method: String,
    pub host: String,
    pub path: String,
    /// (name, value), besides Host, Content-Type, Content-Length and Connection.
    pub headers: Vec<(String, String)>,
    /// The JSON body, if any.
    pub body: Option<String>,
    /// An MCP `tools/call`: refused as a JSON-RPC error (HTTP 200), not a 403.
    pub mcp: bool,
}

impl HttpProbe {
    /// The default-deny probe: a GET no rule covers.
    pub fn default_deny() -> Self {
        HttpProbe {
            method: "GET".into(),
            host: DEFAULT_HOST.into(),
            path: "/".into(),
            headers: Vec::new(),
            body: None,
            mcp: false,
        }
    }

    /// A request `m` matches, or why none was found.
    pub fn for_rule(m: &HttpMatcher) -> Result<Self, String> {
        let host = match &m.host {
            HostMatch::Any => DEFAULT_HOST.to_owned(),
            HostMatch::Exact(h) => h.clone(),
            HostMatch::Suffix(s) => format!("{FILL}{s}"),
        };
        let path = match &m.path {
            None => "/".to_owned(),
            Some(p) => p
                .split('/')
                .map(|seg| {
                    if seg == "**" {
                        FILL.to_owned()
                    } else {
                        fill(seg)
                    }
                })
                .collect::<Vec<_>>()
                .join("/"),
        };
        let headers = m
            .headers
            .iter()
            .map(|(name, glob)| (name.clone(), fill(glob)))
            .collect();
        let doc = |conds: &[crate::policy::cond::Condition]| -> Result<Value, String> {
            let mut doc = Value::Object(Default::default());
            for c in conds {
                if !c.eval(&doc) && !c.satisfy(&mut doc) {
                    return Err(format!("no JSON value is found for the condition `{c}`"));
                }
            }
            match conds.iter().find(|c| !c.eval(&doc)) {
                Some(c) => Err(format!(
                    "the JSON made up for the conditions does not meet `{c}`"
                )),
                None => Ok(doc),
            }
        };
        let (body, mcp) = match &m.mcp {
            Some((tool, args)) => {
                let call = json!({
                    "jsonrpc": "2.0",
                    "id": 1,
                    "method": "tools/call",
                    "params": { "name": fill(tool), "arguments": doc(args)? },
                });
                (Some(call), true)
            }
            None if m.body.is_empty() => (None, false),
            None => (Some(doc(&m.body)?), false),
        };
        let method = match m.methods.first() {
            Some(method) => method.clone(),
            None if body.is_some() => "POST".into(),
            None => "GET".into(),
        };
        Ok(HttpProbe {
            method,
            host,
            path,
            headers,
            body: body.map(|b| b.to_string()),
            mcp,
        })
    }

    /// The request as the engine sees it.
    pub fn request(&self) -> HttpRequest {
        HttpRequest {
            method: self.method.clone(),
            host: self.host.clone(),
            path: self.path.clone(),
            headers: self.headers.clone(),
            body: self
                .body
                .as_deref()
                .and_then(|b| serde_json::from_str(b).ok()),
        }
    }

    /// `POST api.example/v1/refunds {"amount":1001}`.
    pub fn object(&self) -> String {
        let mut s = format!("{} {}{}", self.method, self.host, self.path);
        if let Some(b) = &self.body {
            s.push(' ');
            s.push_str(b);
        }
        s
    }

    /// The request on the wire, absolute-form (explicit proxy use), one per connection.
    pub fn wire(&self) -> Vec<u8> {
        let mut s = format!(
            "{} http://{}{} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nUser-Agent: governance-drill\r\n",
            self.method, self.host, self.path, self.host
        );
        for (name, value) in &self.headers {
            s.push_str(&format!("{name}: {value}\r\n"));
        }
        match &self.body {
            Some(b) => {
                s.push_str("Content-Type: application/json\r\n");
                if self.mcp {
                    s.push_str("Accept: application/json, text/event-stream\r\n");
                }
                s.push_str(&format!("Content-Length: {}\r\n\r\n{b}", b.len()));
            }
            None => s.push_str("\r\n"),
        }
        s.into_bytes()
    }
}

/// A glob's instance: `*` filled, `?` one character.
fn fill(glob: &str) -> String {
    glob.replace('*', FILL).replace('?', "x")
}

/// What a proxy's answer to a probe says: Ok(how it refused) when it was refused by `rule`
/// (`default` for the policy's default), Err(what happened) otherwise. `head` is the response
/// as read (its head, and as much of the body as came with it).
pub fn judge(probe: &HttpProbe, rule: &str, response: &[u8]) -> Result<String, String> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut resp = httparse::Response::new(&mut headers);
    let body_at = match resp.parse(response) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if response.is_empty() => {
            return Err("no answer: the proxy closed the connection".into());
        }
        Ok(httparse::Status::Partial) => {
            return Err("an incomplete answer from the proxy".into());
        }
        Err(e) => return Err(format!("not an HTTP answer ({e})")),
    };
    let status = resp.code.unwrap_or(0);
    let header = |name: &str| {
        resp.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| String::from_utf8_lossy(h.value).into_owned())
    };
    let by = header("x-governance-rule");
    let body: Option<Value> = serde_json::from_slice(&response[body_at..]).ok();
    if let Some(why) = header("x-governance-drill") {
        return Err(format!("not refused: {why}"));
    }
    if probe.mcp && status == 200 {
        let error = body.as_ref().and_then(|b| b.get("error"));
        let code = error.and_then(|e| e.get("code")).and_then(Value::as_i64);
        let refused_by = error
            .and_then(|e| e.pointer("/data/rule"))
            .and_then(Value::as_str);
        return match (code, refused_by) {
            (Some(crate::proxy::MCP_BLOCKED), Some(r)) if r == rule => Ok(format!(
                "refused (JSON-RPC error {}, rule {r})",
                crate::proxy::MCP_BLOCKED
            )),
            (Some(c), Some(r)) => Err(format!(
                "JSON-RPC error {c} by {r}, not by the rule under drill"
            )),
            _ => Err("not refused: HTTP 200 without a JSON-RPC error from the proxy".into()),
        };
    }
    let reason = body
        .as_ref()
        .and_then(|b| b.get("reason"))
        .and_then(Value::as_str)
        .map(|r| format!(" ({r})"))
        .unwrap_or_default();
    match (status, by) {
        (403, Some(r)) if r == rule => Ok(format!("refused (HTTP 403, rule {r})")),
        (s, Some(r)) => Err(format!(
            "HTTP {s} by {r}{reason}, not a refusal by the rule under drill"
        )),
        (s, None) => Err(format!("HTTP {s} from the proxy, no rule named{reason}")),
    }
}
