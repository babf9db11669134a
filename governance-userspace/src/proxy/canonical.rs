//! Canonical interpretation: the proxy decides on what the upstream will act on, and refuses
//! what an upstream could read in more than one way. One function, [`evaluate`], turns a
//! request (its normalised head, its headers and, when a rule needs it, its body bytes) into a
//! decision or a refusal; the proxy and the decision API both call it on the same bytes.
//!
//! What it refuses, before any rule is consulted:
//!
//! - **Method overrides**: `X-HTTP-Method-Override`, `X-HTTP-Method`, `X-Method-Override`
//!   headers, or a `_method` query parameter, naming a method other than the request's (Express's
//!   `method-override`, Rails, Laravel act on them): 400. On a host whose rules name methods, the
//!   same in a POST's body (`body_method_override`).
//! - **Forwarded targets**: `X-Forwarded-Host`, `X-Forwarded-Server`, `X-Original-Host`,
//!   `X-Host` or `Forwarded: host=` naming another host or port than the request's,
//!   `X-Forwarded-Port` naming another port, and `X-Original-URL` or `X-Rewrite-URL` naming
//!   another path (Rack and Rails take the host from `X-Forwarded-Host` unconditionally, Express
//!   with `trust proxy`, Werkzeug's `ProxyFix`; IIS and older Symfony the path from the others):
//!   400 ([`forwarded_target`]).
//!
//! On a *body-governed route*, one where an enforcing rule that could match the host, method
//! and path has body or MCP conditions ([`Engine::body_route`]), and on MCP endpoints, the body
//! must be certainly JSON or certainly empty; otherwise the request is refused (the reason as
//! JSON, and a decision record) rather than decided as if the body said nothing, which would
//! let it fall through to a broader rule while the upstream acts on it:
//!
//! - `Content-Encoding`: `identity`, `gzip` (`x-gzip`) and `deflate` (zlib) are decoded, at most
//!   to the body limit and 100 times the encoded size, and the decision is made on the decoded
//!   JSON (Express's `express.json()` inflates them); the encoded bytes go upstream. Anything
//!   else (`br`, `zstd`, several codings, unknown ones) → 415; a corrupt stream, or bytes after
//!   its end → 400; too large → 413.
//! - `Content-Type`: a `charset` other than UTF-8 → 415; a byte-order mark (UTF-8, UTF-16,
//!   UTF-32: Python's `json.loads` and body-parser read them) → 415; bytes that are not UTF-8
//!   → 400. Form bodies (`application/x-www-form-urlencoded`, `multipart/*`: `express.urlencoded()`
//!   and FastAPI's `Form()` read fields from them) → 415. A body that parses as JSON is decided
//!   on whatever its content type says (Starlette's `request.json()` ignores it); one that does
//!   not → 400 under a JSON content type or none, 415 under another.
//! - JSON: duplicate keys anywhere (parsers disagree on which one wins), a `__proto__` key
//!   anywhere (JavaScript parsers that copy keys by assignment make it the object's prototype,
//!   so its members read as the object's own) or nesting deeper than 128 → 400. A field a rule reads that is present in several cases, or whose value could be
//!   read as different numbers or booleans ([`Condition::ambiguity`]) → 400. A query-string
//!   parameter named like the first key of a body condition (frameworks that merge query and
//!   body) → 400.
//! - Arrays: a top-level array is a JSON-RPC batch; every element must be a valid request
//!   object (`"jsonrpc": "2.0"`, a `method` string, an `id` that is a string, number or null,
//!   or none), or the whole batch is refused (400). Each call is decided and the most severe
//!   verdict applies to the whole batch. On a route whose rules read one object, an array that
//!   is not a batch is refused, unless a body condition starts with an index (`$[0]`).
//! - JSON-RPC on MCP endpoints: a message must be a request, notification or response with
//!   `"jsonrpc": "2.0"`; a `method` with surrounding whitespace or control characters, or that
//!   is `tools/call` in another case, is refused; a `tools/call` must have by-name `params` (an
//!   object, not an array) with a string `name` (no surrounding whitespace) and an object (or no)
//!   `arguments`.
//!
//! Elsewhere (no rule of the route reads the body) a body that is not JSON is decided as having
//! no JSON, as before: no rule looks at it.

use std::borrow::Cow;

use hyper::{HeaderMap, StatusCode, header};
use serde_json::Value;

use super::{McpCall, decide::tool_call, decide_request, parse_json, request::Head};
use crate::{
    engine::{AgentRules, BodyRoute, Decision, Engine, HttpRequest, Outcome},
    policy::{
        cond::{Condition, kind_name},
        glob,
    },
};

/// A decided request.
#[derive(Clone, Debug)]
pub struct Evaluated {
    pub decision: Decision,
    /// The MCP tool calls in the body, with their JSON-RPC ids.
    pub mcp: Option<McpCall>,
    /// What the engine decided on; `body` holds the JSON body (the deciding call, for a batch).
    pub http: HttpRequest,
    /// The request is on an MCP endpoint (refusals there are JSON-RPC errors).
    pub mcp_endpoint: bool,
}

/// Why a request is refused before any rule decides it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error(
        "the request overrides its method ({0}): upstreams act on the override, the proxy decides on the request's method"
    )]
    MethodOverride(String),
    #[error(
        "the query string carries `{0}`, a field that body rules of this route decide on (frameworks that merge query and body read it)"
    )]
    QueryField(String),
    #[error(
        "`{0}` names another target than the request's: upstreams behind proxies act on it, the proxy decides on the request's own host, port and path"
    )]
    Forwarded(String),
    #[error("more than one {0} header")]
    Headers(&'static str),
    #[error("{0}")]
    Header(String),
    #[error(
        "the path `{0}` is allowed by `{1}` only in another case, and a case-sensitive upstream serves it as another resource"
    )]
    PathCase(String, String),
    #[error(
        "the path `{0}` runs through a script (`.php`, `.cgi`, `.aspx`, ...) whose framework routes on a part of what follows it: call the route by its own path"
    )]
    Script(String),
    #[error(
        "Content-Encoding `{0}` is not decoded by the policy proxy (identity, gzip and deflate are)"
    )]
    Encoding(String),
    #[error("bad {0} body: {1}")]
    Corrupt(&'static str, String),
    #[error(
        "the decoded body is larger than {0} bytes (the body limit, or 100 times its encoded size)"
    )]
    TooLarge(usize),
    #[error("charset `{0}`: only UTF-8 bodies are decided on")]
    Charset(String),
    #[error("the body starts with a {0} byte-order mark: only UTF-8 without one is decided on")]
    Bom(&'static str),
    #[error("the body is not UTF-8")]
    NotUtf8,
    #[error("`{0}` bodies are not decided on: the rules of this route read JSON")]
    Form(String),
    #[error(
        "Content-Type `{0}` is not one media type with plain parameters: servers disagree on what it names"
    )]
    ContentType(String),
    #[error(
        "the body also reads as a form carrying `{0}`, a field the rules of this route decide on (servers read a body without a JSON Content-Type as a form)"
    )]
    FormField(String),
    #[error("Content-Type `{0}` with a body that is not JSON: the rules of this route read JSON")]
    MediaType(String),
    #[error("invalid JSON: {0}")]
    Json(String),
    #[error("ambiguous body: {0}")]
    Ambiguous(String),
    #[error("a JSON array on a route whose rules read one object: each element could be acted on")]
    Array,
    #[error("invalid JSON-RPC: {0}")]
    JsonRpc(String),
    #[error(
        "the POST names the live MCP session whose stream announced `{0}`, and its server takes the session's messages whatever the path: post them to that endpoint"
    )]
    Session(String),
    #[error(
        "`Connection: {0}` names a header that is not hop-by-hop: the proxy removes what Connection names before forwarding, so the upstream would read the request otherwise than it was decided"
    )]
    Connection(String),
    #[error(
        "a JSON-RPC (MCP) message to `{0}`, a path the MCP rules of this host do not name: its server acts on it whatever the path, so the MCP rules must decide it (write them for every path the server takes messages at)"
    )]
    McpPath(String),
    #[error(
        "the body reads differently with its Content-Encoding undone and without it ({0}): an upstream that does not decode it (PHP) reads the coded bytes"
    )]
    Coding(String),
}

impl Refused {
    pub fn status(&self) -> StatusCode {
        match self {
            Refused::Encoding(_)
            | Refused::Charset(_)
            | Refused::Bom(_)
            | Refused::Form(_)
            | Refused::ContentType(_)
            | Refused::MediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Refused::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            _ => StatusCode::BAD_REQUEST,
        }
    }

    /// The `error` of the JSON answer.
    pub fn error(&self) -> &'static str {
        match self.status() {
            StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported media type",
            StatusCode::PAYLOAD_TOO_LARGE => "body too large",
            _ => match self {
                Refused::MethodOverride(_)
                | Refused::Forwarded(_)
                | Refused::QueryField(_)
                | Refused::FormField(_)
                | Refused::Ambiguous(_)
                | Refused::Header(_)
                | Refused::PathCase(..)
                | Refused::Script(_)
                | Refused::Session(_)
                | Refused::Connection(_)
                | Refused::McpPath(_)
                | Refused::Coding(_) => "ambiguous request",
                _ => "bad body",
            },
        }
    }

    /// The rule quoted in the record and the answer.
    pub fn rule(&self) -> &'static str {
        match self {
            Refused::MethodOverride(_)
            | Refused::Forwarded(_)
            | Refused::Headers(_)
            | Refused::Header(_)
            | Refused::PathCase(..)
            | Refused::Script(_)
            | Refused::Session(_)
            | Refused::Connection(_)
            | Refused::Coding(_) => "builtin:request",
            Refused::McpPath(_) => "builtin:jsonrpc",
            Refused::Json(_) => "builtin:invalid-json",
            Refused::JsonRpc(_) => "builtin:jsonrpc",
            _ => "builtin:body",
        }
    }

    /// The JSON-RPC error code, on an MCP endpoint: -32700 (parse error) when the body cannot
    /// be read as JSON, -32600 (invalid request) otherwise.
    pub fn jsonrpc_code(&self) -> i64 {
        match self {
            Refused::Json(_)
            | Refused::NotUtf8
            | Refused::Bom(_)
            | Refused::Charset(_)
            | Refused::Encoding(_)
            | Refused::Corrupt(..)
            | Refused::MediaType(_)
            | Refused::ContentType(_)
            | Refused::Form(_) => -32700,
            _ => -32600,
        }
    }
}

/// Script names a server runs with the rest of the path as its path info (CGI, ASP.NET: the
/// segment's name ends so), and PHP's, which Symfony's request (Laravel's too) strips from the
/// path as a string prefix, or by its length where the path names it elsewhere, so that any
/// part of what follows it may be the route.
const SCRIPT_SUFFIXES: &[&str] = &[
    ".cgi", ".fcgi", ".pl", ".asp", ".aspx", ".asmx", ".ashx", ".svc",
];
const PHP_SUFFIXES: &[&str] = &[
    ".php", ".php3", ".php4", ".php5", ".php7", ".php8", ".phtml", ".phar",
];

/// Refused: a path through a script, whose framework routes on a part of it the rules do not
/// read: a non-final segment named like a script (`/index.php/v1/repos/x`, `/app.cgi/v1/x`), or
/// a PHP script's name followed by anything (`/index.phpv1/repos/x`, which Symfony routes as
/// `/v1/repos/x`). A path that ends with the script's name is decided as written.
fn through_script(path: &str) -> Result<(), Refused> {
    let lower = path.to_ascii_lowercase();
    let php = PHP_SUFFIXES.iter().any(|s| {
        lower
            .match_indices(s)
            .any(|(at, _)| at + s.len() < lower.len())
    });
    let mut segments: Vec<&str> = lower.split('/').collect();
    segments.pop();
    let script = segments.iter().any(|seg| {
        SCRIPT_SUFFIXES
            .iter()
            .any(|s| seg.len() > s.len() && seg.ends_with(s))
    });
    if php || script {
        return Err(Refused::Script(path.to_owned()));
    }
    Ok(())
}

/// Decide a request: the one code path of the proxy and of the decision API. `head` is the
/// normalised request target ([`super::request::target`]), `headers` the request's headers,
/// `body` the body bytes when the proxy read them (None: streamed, no rule of the host reads
/// it). `limit` bounds a decoded body. See the module documentation for what is refused.
///
/// A path through a script (`/index.php/v1/repos/x`) is refused: PHP, CGI and ASP.NET give the
/// script the rest of the path, and Laravel and Symfony route on a part of it the proxy cannot
/// tell (red team round 26).
pub fn evaluate(
    engine: &Engine,
    view: &AgentRules,
    head: &Head,
    headers: &HeaderMap,
    body: Option<&[u8]>,
    limit: usize,
) -> Result<Evaluated, Refused> {
    through_script(&head.path)?;
    // Decided on exactly the headers that are forwarded: hop-by-hop ones and what
    // `Connection` names are removed first, and `Connection` may name only hop-by-hop
    // headers and connection options (`Connection: Content-Type` would remove, after the
    // decision, a header the decision relied on).
    connection_options(headers)?;
    let mut sent = headers.clone();
    super::request::strip_hop_by_hop(&mut sent);
    let headers = &sent;
    method_override(head, headers)?;
    forwarded_target(head, headers)?;
    if head.method == "POST"
        && let Some(bytes) = body
        && engine.names_methods(view, &head.host)
    {
        body_method_override(head, headers, bytes, limit)?;
    }
    // A body is only looked at when a rule of the host could read it (as the proxy reads it).
    let needs_body = engine.needs_body(view, &head.host);
    let body = body.filter(|_| needs_body);
    let (route, mcp_endpoint) = if needs_body {
        (
            engine.body_route(view, &head.host, &head.method, &head.path),
            engine.is_mcp_endpoint(view, &head.host, &head.path),
        )
    } else {
        (BodyRoute::default(), false)
    };
    if let Some(bytes) = body
        && !mcp_endpoint
        && !bytes.is_empty()
        && engine.has_mcp_rules(view, &head.host)
        && (is_jsonrpc(headers, bytes, limit) || json_not_utf8(headers, bytes))
    {
        return Err(Refused::McpPath(head.path.clone()));
    }
    let json = if route.governed || mcp_endpoint {
        query_fields(head, &route)?;
        let json = match body {
            Some(bytes) => read_json(headers, bytes, limit, &route)?,
            None => None,
        };
        let json = match json {
            Some(v) if mcp_endpoint => Some(sampled_tool_uses(v)?),
            json => json,
        };
        // An MCP message is a POST with a JSON-RPC body: an empty POST is invalid JSON there.
        // (A GET or DELETE without a body is the transport's own: its event stream, the end of
        // a session; the host's other rules decide it.)
        if mcp_endpoint && json.is_none() && head.method == "POST" {
            return Err(Refused::Json(
                "an empty body is not a JSON-RPC message".into(),
            ));
        }
        if let Some(v) = &json {
            check_structure(v, &route, mcp_endpoint)?;
            check_conditions(v, &route)?;
        }
        json
    } else {
        body.and_then(|b| parse_json(b).ok())
    };
    let headers = rule_headers(engine, view, &head.host, headers)?;
    let mut http = super::request::to_engine(head, headers.as_ref(), None);
    let (decision, mcp) = decide_request(engine, view, &mut http, json, route.array_docs);
    // Allowed by a rule whose path matched only in another case: refused (a case-sensitive
    // upstream serves `/files/PUBLIC.TXT` as another resource than the rule's).
    if matches!(decision.outcome, Outcome::Allow)
        && let Some(rule) = &decision.rule
        && engine
            .allowed_in_another_case(view, &head.host, &head.method, &head.path)
            .as_ref()
            == Some(rule)
    {
        return Err(Refused::PathCase(head.path.clone(), rule.clone()));
    }
    Ok(Evaluated {
        decision,
        mcp,
        http,
        mcp_endpoint,
    })
}

/// The headers the rules of `host` decide on, when some rule reads headers: those of them the
/// upstream will get. Hop-by-hop headers and the ones `Connection` names are removed first, as
/// they are before forwarding (`Connection: x-dry-run` would otherwise let a rule read a header
/// the upstream never sees). A header a rule reads must come at most once and under its own
/// name: two copies (Express joins them, Starlette takes the first) or another spelling a
/// server reads as it ([`same_header`]: CGI and WSGI servers read `X_Dry_Run` as `X-Dry-Run`,
/// PHP reads `X.Dry.Run` as it too) are refused.
pub fn rule_headers(
    engine: &Engine,
    view: &AgentRules,
    host: &str,
    headers: &HeaderMap,
) -> Result<Option<HeaderMap>, Refused> {
    let read = engine.headers_read(view, host);
    if read.is_empty() {
        return Ok(None);
    }
    let mut sent = headers.clone();
    super::request::strip_hop_by_hop(&mut sent);
    for &name in &read {
        let mut copies = sent.iter().filter(|(n, _)| same_header(n.as_str(), name));
        let Some((first, _)) = copies.next() else {
            continue;
        };
        if copies.next().is_some() {
            return Err(Refused::Header(format!(
                "more than one `{name}` header (a rule reads it; upstreams differ on which copy counts)"
            )));
        }
        if first.as_str() != name {
            return Err(Refused::Header(format!(
                "the header `{first}` is `{name}` to servers that read `_` or `.` as `-` (a rule reads `{name}`)"
            )));
        }
    }
    // The engine and a grant's key see only what the rules read, and without the whitespace
    // around a value, which HTTP/1 servers trim (an HTTP/2 field may carry it, and is
    // forwarded with it).
    let mut read_only = HeaderMap::new();
    for (name, value) in &sent {
        if read.contains(&name.as_str()) {
            // (A header value holds no other ASCII whitespace than SP and HTAB.)
            let trimmed = hyper::header::HeaderValue::from_bytes(value.as_bytes().trim_ascii())
                .map_err(|_| {
                    Refused::Header(format!("the value of `{name}` is not a header value"))
                })?;
            read_only.append(name.clone(), trimmed);
        }
    }
    Ok(Some(read_only))
}

/// The checks of an MCP `tools/call` that names no server (the decision API): its arguments
/// must read the same way to every MCP rule of the agent that names the tool.
pub fn check_tool_call(engine: &Engine, view: &AgentRules, call: &Value) -> Result<(), Refused> {
    let route = engine.mcp_route(view);
    validate_request(call).map_err(Refused::JsonRpc)?;
    check_conditions(call, &route)
}

/// What `Connection` may name: the hop-by-hop headers (RFC 9110 §7.6.1, and those the
/// proxy removes anyway) and connection options. Anything else is refused: the proxy removes
/// what `Connection` names, so naming an end-to-end header (`Content-Type`,
/// `Content-Encoding`, a header a rule reads) would change the request after its decision.
const CONNECTION_OPTIONS: [&str; 12] = [
    "close",
    "keep-alive",
    "upgrade",
    "te",
    "trailer",
    "trailers",
    "transfer-encoding",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "http2-settings",
    "expect",
];

/// Refuse a `Connection` header naming anything but [`CONNECTION_OPTIONS`].
fn connection_options(headers: &HeaderMap) -> Result<(), Refused> {
    for v in headers.get_all(header::CONNECTION) {
        let v = String::from_utf8_lossy(v.as_bytes());
        for name in v.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            if !CONNECTION_OPTIONS
                .iter()
                .any(|o| o.eq_ignore_ascii_case(name))
            {
                return Err(Refused::Connection(name.to_owned()));
            }
        }
    }
    Ok(())
}

/// Whether a body could be a JSON-RPC message (MCP) to a server: as sent, and with its
/// content coding undone (a coding the proxy cannot undo counts as such a body), each also as
/// the UTF-16 or UTF-32 text Python's `json.loads` reads it as ([`wide_json_text`]). Parsed
/// strictly, an object (or an array holding one) with a `jsonrpc` or `method` member in any
/// case; a body the strict parser refuses, if `jsonrpc` appears in it in any spelling a
/// lenient parser could read (JSON's `\u` escapes and percent escapes undone, any case).
fn is_jsonrpc(headers: &HeaderMap, bytes: &[u8], limit: usize) -> bool {
    fn one(bytes: &[u8]) -> bool {
        narrow(bytes) || wide_json_text(bytes).is_some_and(|t| narrow(t.as_bytes()))
    }
    fn narrow(bytes: &[u8]) -> bool {
        let member = |v: &Value| {
            v.as_object().is_some_and(|o| {
                o.keys()
                    .any(|k| k.eq_ignore_ascii_case("jsonrpc") || k.eq_ignore_ascii_case("method"))
            })
        };
        match parse_json(bytes) {
            Ok(Value::Array(items)) => items.iter().any(member),
            Ok(v) => member(&v),
            Err(_) => {
                let text = String::from_utf8_lossy(bytes);
                json_unescaped(&decode_component(&text))
                    .to_ascii_lowercase()
                    .contains("jsonrpc")
            }
        }
    }
    one(bytes)
        || match decoded(headers, bytes, limit) {
            Ok(d) => one(&d),
            Err(_) => true,
        }
}

/// The text Python's `json.loads` reads from bytes in UTF-32 or UTF-16 (`json.detect_encoding`:
/// by a byte-order mark, else by which of the first bytes are NUL, since JSON text starts with
/// an ASCII character), decoded leniently; None for bytes it reads as UTF-8. The MCP Python
/// SDK's streamable HTTP server hands the request's bytes to `json.loads` whatever their
/// `Content-Type` says (red team round 7: a BOM-less UTF-16LE `tools/call` off the MCP path).
fn wide_json_text(b: &[u8]) -> Option<String> {
    let (unit, big_endian, skip) = match b {
        [0, 0, 0xfe, 0xff, ..] => (4, true, 4),
        [0xff, 0xfe, 0, 0, ..] => (4, false, 4),
        [0xfe, 0xff, ..] => (2, true, 2),
        [0xff, 0xfe, ..] => (2, false, 2),
        [0, 0, _, _, ..] => (4, true, 0),
        [0, _, _, _, ..] | [0, _] => (2, true, 0),
        [_, 0, 0, 0, ..] => (4, false, 0),
        [_, 0, _, _, ..] | [_, 0] => (2, false, 0),
        _ => return None,
    };
    let units = b[skip..].chunks(unit).map(|c| {
        let mut word = [0u8; 4];
        word[..c.len()].copy_from_slice(c);
        match (unit, big_endian) {
            (2, true) => u32::from(u16::from_be_bytes([word[0], word[1]])),
            (2, false) => u32::from(u16::from_le_bytes([word[0], word[1]])),
            (_, true) => u32::from_be_bytes(word),
            (_, false) => u32::from_le_bytes(word),
        }
    });
    Some(if unit == 2 {
        char::decode_utf16(units.map(|u| u as u16))
            .map(|c| c.unwrap_or(char::REPLACEMENT_CHARACTER))
            .collect()
    } else {
        units
            .map(|u| char::from_u32(u).unwrap_or(char::REPLACEMENT_CHARACTER))
            .collect()
    })
}

/// Whether a `charset` parameter names UTF-8.
fn is_utf8(charset: &str) -> bool {
    charset.eq_ignore_ascii_case("utf-8") || charset.eq_ignore_ascii_case("utf8")
}

/// Whether a body is not UTF-8 text as sent where a server could read it as JSON: a charset
/// other than UTF-8 whatever the type (an MCP SDK server decodes `charset=base64`, `hex` or
/// `utf-16le` into a JSON-RPC message that none of [`is_jsonrpc`]'s readings finds; older
/// TypeScript SDKs take any `Content-Type` that merely contains `application/json`), or, with
/// `json` anywhere in the `Content-Type`, a byte-order mark or bytes that are not UTF-8; or a
/// `Content-Type` that cannot be read.
fn json_not_utf8(headers: &HeaderMap, bytes: &[u8]) -> bool {
    let (raw, media) = match single(headers, header::CONTENT_TYPE, "Content-Type") {
        Ok(Some(v)) => match MediaType::parse(&v) {
            Ok(m) => (v, m),
            Err(_) => return true,
        },
        Ok(None) => return false,
        Err(_) => return true,
    };
    let json = raw.to_ascii_lowercase().contains("json");
    media.charset.as_deref().is_some_and(|c| !is_utf8(c))
        || json && (bom(bytes).is_some() || std::str::from_utf8(bytes).is_err())
}

const OVERRIDE_HEADERS: [&str; 3] = [
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
];

/// Whether two header names are one to the servers that read the most spellings as one name:
/// ASCII case aside, every character other than a letter or digit is a `-` (CGI and WSGI
/// servers read `_` as `-`, PHP's `$_SERVER` reads `.` as `_` as well: `X.HTTP.Method.Override`
/// is `HTTP_X_HTTP_METHOD_OVERRIDE`). Compared in place: every header of a request may be.
fn same_header(a: &str, b: &str) -> bool {
    let key = |c: u8| {
        if c.is_ascii_alphanumeric() {
            c.to_ascii_lowercase()
        } else {
            b'-'
        }
    };
    a.len() == b.len() && a.bytes().map(key).eq(b.bytes().map(key))
}

/// The top-level fields a form or query parameter named `name` sets, as the web's parsers
/// read it: the name itself; `qs` (Express's `extended` parser) and Rack (Rails) read `a[b]`
/// and `a[]` as `a`, and `[a]` as `a`, Rack 2 also `]]a` and `a]`; `qs` with `allowDots` reads
/// `a.b` and `.a` as `a`; PHP (and so
/// Symfony and Laravel) drops leading spaces, ends the name at a `[` that a `]` follows, and
/// turns `.`, spaces and an unmatched `[` into `_` (`.method` and ` _method` are `_method`).
/// PHP also ends a name at its first NUL (it measures names as C strings: `_method%00x` is
/// `_method`); every reading here does, which refuses more, never less.
fn field_names(name: &str) -> [Cow<'_, str>; 5] {
    let name = name.split('\0').next().unwrap_or(name);
    let bracketed = match name.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or(rest),
        None => name.split('[').next().unwrap_or(name),
    };
    let dotted = bracketed
        .split('.')
        .find(|s| !s.is_empty())
        .unwrap_or(bracketed);
    // Rack 2's `normalize_params`: leading brackets skipped, the name up to the next bracket
    // (`]]amount`, `[[amount`, `amount]` are `amount`).
    let rack = name.trim_start_matches(['[', ']']);
    let rack = rack.split(['[', ']']).next().unwrap_or(rack);
    let php = name.trim_start_matches(' ');
    let php = match php.find('[') {
        Some(i) if php[i..].contains(']') => &php[..i],
        _ => php,
    };
    let php = if php.contains(['.', ' ', '[']) {
        Cow::Owned(php.replace(['.', ' ', '['], "_"))
    } else {
        Cow::Borrowed(php)
    };
    [
        name.into(),
        bracketed.into(),
        dotted.into(),
        rack.into(),
        php,
    ]
}

/// Headers from which servers behind a proxy take the request's host, and its port when one
/// is written (a comma-separated list: Rails reads the last element, Express the first).
const FORWARDED_HOSTS: [&str; 4] = [
    "x-forwarded-host",
    "x-forwarded-server",
    "x-original-host",
    "x-host",
];

/// Headers from which some servers take the request's path (IIS's URL Rewrite, Symfony
/// before 2018, Zend).
const REWRITTEN_PATHS: [&str; 2] = ["x-original-url", "x-rewrite-url"];

/// A header naming another host, port or path than the request's own, under any name a server
/// reads as one of [`FORWARDED_HOSTS`], `Forwarded` (its `host=` parameters),
/// `X-Forwarded-Port` or [`REWRITTEN_PATHS`] ([`same_header`]): the agent is not a proxy, so
/// the upstream would act on a target the proxy did not decide (red team round 21: Rack took
/// `X-Forwarded-Host: tenant-b` on a request allowed for `Host: tenant-a`). One that names the
/// request's own target passes.
fn forwarded_target(head: &Head, headers: &HeaderMap) -> Result<(), Refused> {
    let port = head
        .port
        .unwrap_or(if head.tls.is_some() { 443 } else { 80 });
    // `host[:port]` as written in a header, quotes and whitespace aside: the request's own?
    let own = |authority: &str| {
        let a = authority.trim().trim_matches('"');
        let (host, written_port) = match a.strip_prefix('[') {
            Some(rest) => match rest.split_once(']') {
                Some((h, tail)) => (h, tail.strip_prefix(':')),
                None => return false,
            },
            None => match a.rsplit_once(':') {
                Some((h, p)) if !h.contains(':') => (h, Some(p)),
                _ => (a, None),
            },
        };
        let host = host.strip_suffix('.').unwrap_or(host);
        host.eq_ignore_ascii_case(&head.host)
            && written_port.is_none_or(|p| p.trim().parse::<u16>() == Ok(port))
    };
    for (name, v) in headers {
        let name = name.as_str();
        // (Every name below starts so: most headers are passed over here.)
        if !name.starts_with(['x', 'f']) {
            continue;
        }
        let value = String::from_utf8_lossy(v.as_bytes());
        let refused = if FORWARDED_HOSTS.iter().any(|h| same_header(name, h)) {
            !value.split(',').all(own)
        } else if same_header(name, "forwarded") {
            // Every `host=` in the value, wherever it starts: Spring, Reactor Netty and Vert.x
            // find one with an unanchored pattern (`xhost=`, inside a quoted `by=`; round 23).
            let lower = value.to_ascii_lowercase();
            lower.match_indices("host=").any(|(i, _)| {
                let rest = &value[i + "host=".len()..];
                let end = rest
                    .char_indices()
                    .skip(usize::from(rest.starts_with('"')))
                    .find(|&(_, c)| matches!(c, ';' | ',' | '"'))
                    .map_or(rest.len(), |(j, _)| j);
                !own(&rest[..end])
            })
        } else if same_header(name, "x-forwarded-port") {
            !value
                .split(',')
                .all(|p| p.trim().parse::<u16>() == Ok(port))
        } else if REWRITTEN_PATHS.iter().any(|h| same_header(name, h)) {
            let target = match &head.query {
                Some(q) => format!("{}?{q}", head.path),
                None => head.path.clone(),
            };
            value.trim() != head.path && value.trim() != target
        } else {
            false
        };
        if refused {
            return Err(Refused::Forwarded(format!("{name}: {}", value.trim())));
        }
    }
    Ok(())
}

/// Whether some parser reads a parameter named `name` as `_method` (any case, [`field_names`]).
fn is_method_field(name: &str) -> bool {
    field_names(name)
        .iter()
        .any(|n| n.trim().eq_ignore_ascii_case("_method"))
}

/// An override header naming another method, under any name a server reads as one of
/// [`OVERRIDE_HEADERS`] ([`same_header`]: `X_HTTP_Method_Override`, `X.HTTP.Method.Override`).
fn method_override(head: &Head, headers: &HeaderMap) -> Result<(), Refused> {
    for (name, v) in headers {
        let name = name.as_str();
        if !name.starts_with('x') {
            continue;
        }
        if OVERRIDE_HEADERS.iter().any(|o| same_header(name, o)) {
            let v = String::from_utf8_lossy(v.as_bytes());
            if !v.trim().eq_ignore_ascii_case(&head.method) {
                return Err(Refused::MethodOverride(format!("{name}: {}", v.trim())));
            }
        }
    }
    let query = head.query.as_deref().unwrap_or("");
    // Cheap first: `method` spelled plainly or with escapes.
    if !(query.contains('%') || query.to_ascii_lowercase().contains("method")) {
        return Ok(());
    }
    for (name, value) in query_pairs(query) {
        if is_method_field(&name) && !value.trim().eq_ignore_ascii_case(&head.method) {
            return Err(Refused::MethodOverride(format!("_method={}", value.trim())));
        }
    }
    Ok(())
}

/// A `_method` in a POST's body naming another method: Rack's `MethodOverride` (Rails) reads
/// it from form bodies, Laravel from form and JSON input, Express's `method-override` wherever
/// the application's getter says. The body is read as those frameworks read it: its content
/// coding undone (Express inflates gzip and deflate; a coding the proxy cannot undo is
/// refused, and so is a charset that is not ASCII-compatible), a form's pairs percent-decoded, a JSON object's members with their escapes
/// decoded. In any other body (multipart, text), which the proxy does not parse, a `_method`
/// in any spelling a parser could decode is refused ([`names_method_field`]).
fn body_method_override(
    head: &Head,
    headers: &HeaderMap,
    bytes: &[u8],
    limit: usize,
) -> Result<(), Refused> {
    let decoded = decoded(headers, bytes, limit)?;
    // An upstream that does not undo the content coding (PHP) reads the coded bytes: both
    // readings are checked.
    if decoded[..] != *bytes {
        body_names_method(head, headers, bytes)?;
    }
    body_names_method(head, headers, &decoded)
}

/// [`body_method_override`] on one reading of the body.
fn body_names_method(head: &Head, headers: &HeaderMap, bytes: &[u8]) -> Result<(), Refused> {
    // Text in another encoding (Express reads JSON in UTF-16 and UTF-32) would hide the name
    // from the byte-wise reads below: only ASCII-compatible charsets are read.
    let media = single(headers, header::CONTENT_TYPE, "Content-Type")?
        .map(|v| MediaType::parse(&v))
        .transpose()?;
    if let Some(c) = media.as_ref().and_then(|m| m.charset.as_deref())
        && !["utf-8", "utf8", "us-ascii", "iso-8859-1", "latin1"]
            .iter()
            .any(|ok| c.eq_ignore_ascii_case(ok))
    {
        return Err(Refused::Charset(c.to_owned()));
    }
    let overrides = |value: &str| !value.trim().eq_ignore_ascii_case(&head.method);
    let refused =
        |value: &str| Refused::MethodOverride(format!("_method={} in the body", value.trim()));
    // A body that is not typed JSON may be read as a form: Rack reads a POST without a
    // Content-Type as one, whatever it holds (`{"x":"&_method=DELETE&"}`). PHP reads a form's
    // bytes whatever their encoding: names are read the same in a body that is not UTF-8 (its
    // other bytes as U+FFFD).
    if !media.as_ref().is_some_and(MediaType::is_json) {
        let text = String::from_utf8_lossy(bytes);
        if let Some((_, v)) = query_pairs(&text).find(|(k, v)| is_method_field(k) && overrides(v)) {
            return Err(refused(&v));
        }
    }
    // A form's body is read as JSON too: Laravel reads a body as JSON when its type contains
    // `/json` or `+json`, a parameter's value included (`application/x-www-form-urlencoded;
    // x="/json"`), Express's `express.json({type: '*/*'})` whatever its type, and they take
    // `_method` from it (red team round 26). A form that is not JSON was read as one above.
    let form = media
        .as_ref()
        .is_some_and(|m| m.essence.starts_with("application/x-www-form-urlencoded"));
    match parse_json(bytes) {
        Ok(Value::Object(map)) => {
            for (k, v) in &map {
                if k.eq_ignore_ascii_case("_method") {
                    match v.as_str() {
                        Some(m) if !overrides(m) => {}
                        Some(m) => return Err(refused(m)),
                        None => return Err(refused(&v.to_string())),
                    }
                }
            }
            Ok(())
        }
        // Other JSON has no members a framework reads as the method.
        Ok(_) => Ok(()),
        Err(_) if form => Ok(()),
        Err(_) if names_method_field(bytes) => Err(Refused::MethodOverride(
            "`_method` in a body the proxy does not parse".into(),
        )),
        Err(_) => Ok(()),
    }
}

/// Whether a body the proxy does not parse could name a `_method` field to a parser that
/// does: `_method` in any case once percent escapes (RFC 2231's `name*=UTF-8''%5Fmethod` of a
/// multipart part), JSON's `\u` escapes (JSON the proxy's strict parser refuses and
/// JavaScript's accepts: `{"\u005fmethod": "DELETE", "x": "\ud800"}`) and backslash escapes
/// (a quoted `name="\_method"`) are undone; or a multipart part named so that a parser reads
/// it as `_method` (PHP's `.method`, [`is_method_field`]); or a part's name in a form the proxy
/// does not decode (RFC 2231 continuations `name*0=`, RFC 2047 encoded words `=?`). Part
/// headers are read as PHP's multipart parser reads them: a line that starts with a space or a
/// tab continues the one before, and a name may be quoted with `"` or `'`, or end at a space.
fn names_method_field(bytes: &[u8]) -> bool {
    let text = String::from_utf8_lossy(bytes);
    let plain: String = json_unescaped(&decode_component(&text))
        .chars()
        .filter(|&c| c != '\\')
        .flat_map(char::to_lowercase)
        .collect();
    if plain.contains("_method") {
        return true;
    }
    // A `\r` left inside an unfolded line is trimmed with the parameter it precedes.
    let unfolded = plain.replace("\n ", " ").replace("\n\t", " ");
    unfolded.lines().any(|l| {
        let Some(params) = l.trim_start().strip_prefix("content-disposition:") else {
            return false;
        };
        l.contains("*0")
            || l.contains("=?")
            || params.split(';').any(|p| {
                let Some(value) = p.trim().strip_prefix("name=") else {
                    return false;
                };
                let value = value.trim();
                let php = match value.chars().next() {
                    Some(q @ ('"' | '\'')) => value[1..].split(q).next().unwrap_or(""),
                    _ => value.split(char::is_whitespace).next().unwrap_or(""),
                };
                is_method_field(value.trim_matches(['"', '\''])) || is_method_field(php)
            })
    })
}

/// `text` with each `\uXXXX` escape replaced by its character (U+FFFD for a surrogate), the
/// rest as it is.
fn json_unescaped(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("\\u") {
        out.push_str(&rest[..at]);
        let hex = rest
            .get(at + 2..at + 6)
            .filter(|h| h.bytes().all(|b| b.is_ascii_hexdigit()));
        match hex.and_then(|h| u32::from_str_radix(h, 16).ok()) {
            Some(code) => {
                out.push(char::from_u32(code).unwrap_or(char::REPLACEMENT_CHARACTER));
                rest = &rest[at + 6..];
            }
            None => {
                out.push_str("\\u");
                rest = &rest[at + 2..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// A query string's (name, value) pairs, percent-decoded (`+` is a space), split on `&` and
/// `;` (older Python splits on both).
pub(super) fn query_pairs(query: &str) -> impl Iterator<Item = (String, String)> + '_ {
    query.split(['&', ';']).filter(|p| !p.is_empty()).map(|p| {
        let (n, v) = p.split_once('=').unwrap_or((p, ""));
        (decode_component(n), decode_component(v))
    })
}

/// Percent-decode leniently (bad escapes stay as written), `+` as a space.
fn decode_component(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => match (hex(b[i + 1]), hex(b[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex(b: u8) -> Option<u8> {
    char::from(b).to_digit(16).map(|d| d as u8)
}

/// Refuse a query parameter named like a field the route's body rules read (`amount`,
/// `amount[]`, `Amount`).
fn query_fields(head: &Head, route: &BodyRoute<'_>) -> Result<(), Refused> {
    match head.query.as_deref().and_then(|q| carried_field(route, q)) {
        Some(f) => Err(Refused::QueryField(f.to_owned())),
        None => Ok(()),
    }
}

/// The first field the route's body rules read that `pairs` (a query string or a body read as
/// a form) carries under a name some parser reads as it ([`field_names`]).
fn carried_field<'r>(route: &'r BodyRoute<'_>, pairs: &str) -> Option<&'r str> {
    let fields: Vec<&str> = route.body.iter().filter_map(|c| c.top_key()).collect();
    if fields.is_empty() {
        return None;
    }
    query_pairs(pairs).find_map(|(name, _)| {
        let names = field_names(&name);
        // `refund[amount]` carries `amount` one level down: where the body does not name
        // `refund`, Rails reads it as the wrapped body's `amount` (see `Condition::wrapped`).
        // As Rack 2 reads it, step by step: the first name after any leading brackets, then
        // the next one after the brackets that follow it (`[refund][amount]`,
        // `refund[[amount]]`: round 23).
        let inner = {
            let rest = name.trim_start_matches(['[', ']']);
            let first = rest.split(['[', ']']).next().unwrap_or("");
            rest[first.len()..]
                .trim_start_matches(['[', ']'])
                .split(['[', ']'])
                .next()
                .filter(|n| !n.is_empty())
        };
        fields
            .iter()
            .find(|f| {
                names
                    .iter()
                    .map(|n| n.trim())
                    .chain(inner)
                    .any(|n| crate::policy::cond::alike(f, n))
            })
            .copied()
    })
}

/// A request body with its content coding (`Content-Encoding`) undone, at most `limit` bytes
/// and `MAX_RATIO` times its coded size; a coding other than gzip and deflate is refused.
fn decoded<'a>(
    headers: &HeaderMap,
    bytes: &'a [u8],
    limit: usize,
) -> Result<std::borrow::Cow<'a, [u8]>, Refused> {
    let coding = single(headers, header::CONTENT_ENCODING, "Content-Encoding")?;
    let coding = coding.as_deref().map(str::trim).unwrap_or("");
    let cap = limit.min(bytes.len().saturating_mul(MAX_RATIO));
    Ok(match coding.to_ascii_lowercase().as_str() {
        _ if bytes.is_empty() => bytes.into(),
        "" | "identity" => bytes.into(),
        "gzip" | "x-gzip" => gunzip(bytes, cap)?.into(),
        "deflate" => inflate(bytes, miniz_oxide::DataFormat::Zlib, cap, "deflate")?
            .0
            .into(),
        _ => return Err(Refused::Encoding(coding.to_owned())),
    })
}

/// The one value of a header, if any; two → refused.
fn single(
    headers: &HeaderMap,
    name: header::HeaderName,
    what: &'static str,
) -> Result<Option<String>, Refused> {
    let mut all = headers.get_all(&name).iter();
    let first = all.next();
    if all.next().is_some() {
        return Err(Refused::Headers(what));
    }
    Ok(first.map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned()))
}

/// A parsed `Content-Type`: the media type, lowercase, and the charset parameter.
struct MediaType {
    essence: String,
    charset: Option<String>,
}

impl MediaType {
    /// RFC 9110's `type "/" subtype *( OWS ";" OWS token "=" ( token / quoted-string ) )`, and
    /// nothing else: servers read what lies outside it differently (Rack and Fetch split types
    /// on `,`, aiohttp decodes RFC 2047 words and drops comments, and joins RFC 2231's
    /// `charset*0=` continuations), so a Content-Type outside it is refused, and so is a
    /// parameter name with a `*`.
    fn parse(v: &str) -> Result<MediaType, Refused> {
        let malformed = || Refused::ContentType(v.to_owned());
        let token = |t: &str| {
            !t.is_empty()
                && t.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
        };
        let (essence, mut rest) = v.split_once(';').unwrap_or((v, ""));
        let essence = essence.trim_matches([' ', '\t']).to_ascii_lowercase();
        match essence.split_once('/') {
            Some((t, sub)) if token(t) && token(sub) => {}
            _ => return Err(malformed()),
        }
        let mut charset = None;
        loop {
            // Empty parameters (`a/b;`, `a/b; ;c=d`) are allowed.
            rest = rest.trim_start_matches([' ', '\t', ';']);
            if rest.is_empty() {
                break;
            }
            let (name, after) = rest.split_once('=').ok_or_else(malformed)?;
            if !token(name) || name.contains('*') {
                return Err(malformed());
            }
            let (value, after) = if let Some(quoted) = after.strip_prefix('"') {
                // A quoted string: `\` escapes the next character.
                let mut value = String::new();
                let mut chars = quoted.char_indices();
                let end = loop {
                    match chars.next().ok_or_else(malformed)? {
                        (i, '"') => break i + 1,
                        (_, '\\') => value.push(chars.next().ok_or_else(malformed)?.1),
                        (_, c) => value.push(c),
                    }
                };
                (value, &quoted[end..])
            } else {
                let end = after.find(';').unwrap_or(after.len());
                let value = after[..end].trim_end_matches([' ', '\t']);
                if !token(value) {
                    return Err(malformed());
                }
                (value.to_owned(), &after[end..])
            };
            rest = match after.trim_start_matches([' ', '\t']) {
                "" => "",
                more => more.strip_prefix(';').ok_or_else(malformed)?,
            };
            if name.eq_ignore_ascii_case("charset") {
                if charset.is_some() {
                    return Err(Refused::Charset("(given twice)".into()));
                }
                charset = Some(value);
            }
        }
        Ok(MediaType { essence, charset })
    }

    /// `application/json`, `application/*+json`, `text/json`.
    fn is_json(&self) -> bool {
        let e = self.essence.as_str();
        // `application/x-www-form-urlencoded+json` is a form to the servers that read a type
        // by its prefix (Tornado): a form, never JSON.
        !self.is_form()
            && (e == "application/json"
                || e == "text/json"
                || (e.starts_with("application/") && e.ends_with("+json")))
    }

    /// A form, as the most lenient servers tell one (Tornado: any type that starts so).
    fn is_form(&self) -> bool {
        self.essence
            .starts_with("application/x-www-form-urlencoded")
            || self.essence.starts_with("multipart/")
    }
}

/// Largest decoded body, as a multiple of the encoded one.
const MAX_RATIO: usize = 100;

/// The JSON a body certainly is, or None for an empty one; see the module documentation.
fn read_json(
    headers: &HeaderMap,
    bytes: &[u8],
    limit: usize,
    route: &BodyRoute<'_>,
) -> Result<Option<Value>, Refused> {
    let media = single(headers, header::CONTENT_TYPE, "Content-Type")?
        .map(|v| MediaType::parse(&v))
        .transpose()?;
    if let Some(c) = media.as_ref().and_then(|m| m.charset.as_deref())
        && !is_utf8(c)
    {
        return Err(Refused::Charset(c.to_owned()));
    }
    if bytes.is_empty() {
        return Ok(None);
    }
    let raw = bytes;
    let bytes = decoded(headers, bytes, limit)?;
    let bytes = &bytes[..];
    // A coded body is read as it is by an upstream that does not undo the coding (PHP, Rack):
    // as a form, those bytes must not carry a field the rules read.
    if bytes != raw
        && let Some(f) = carried_field(route, &String::from_utf8_lossy(raw))
    {
        return Err(Refused::Coding(format!(
            "the coded bytes read as a form carrying `{f}`"
        )));
    }
    if bytes.is_empty() {
        return Ok(None);
    }
    if let Some(bom) = bom(bytes) {
        return Err(Refused::Bom(bom));
    }
    if let Some(m) = &media
        && m.is_form()
    {
        return Err(Refused::Form(m.essence.clone()));
    }
    let Ok(text) = std::str::from_utf8(bytes) else {
        return Err(Refused::NotUtf8);
    };
    // Without a JSON type, a server may read the body as a form (Rack does when there is no
    // Content-Type): its pairs must not carry a field the rules read.
    if !media.as_ref().is_some_and(MediaType::is_json)
        && let Some(f) = carried_field(route, text)
    {
        return Err(Refused::FormField(f.to_owned()));
    }
    match parse_json(bytes) {
        Ok(_) if let Some(n) = inexact_number(text) => Err(Refused::Ambiguous(format!(
            "the number {n} has {}",
            crate::policy::cond::INEXACT
        ))),
        Ok(v) => Ok(Some(v)),
        Err(e) => match &media {
            Some(m) if !m.is_json() => Err(Refused::MediaType(m.essence.clone())),
            _ => Err(Refused::Json(e.to_string())),
        },
    }
}

/// The first number of the JSON `text` (valid JSON) that is not exactly the double the parser
/// reads ([`crate::policy::cond::exact_as_double`]): the parser keeps the double, a server that
/// reads decimals keeps the digits. Integers are read exactly (past 2^64 they are doubles, whole
/// ones, refused where a rule compares them).
fn inexact_number(text: &str) -> Option<&str> {
    let b = text.as_bytes();
    let (mut i, mut in_string) = (0, false);
    while i < b.len() {
        match (in_string, b[i]) {
            (true, b'\\') => i += 2,
            (true, b'"') | (false, b'"') => {
                in_string = !in_string;
                i += 1;
            }
            (false, b'-' | b'0'..=b'9') => {
                let start = i;
                while i < b.len() && matches!(b[i], b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9')
                {
                    i += 1;
                }
                let n = &text[start..i];
                if n.contains(['.', 'e', 'E']) && !crate::policy::cond::exact_as_double(n) {
                    return Some(n);
                }
            }
            _ => i += 1,
        }
    }
    None
}

fn bom(b: &[u8]) -> Option<&'static str> {
    if b.starts_with(&[0xef, 0xbb, 0xbf]) {
        Some("UTF-8")
    } else if b.starts_with(&[0, 0, 0xfe, 0xff]) || b.starts_with(&[0xff, 0xfe, 0, 0]) {
        Some("UTF-32")
    } else if b.starts_with(&[0xfe, 0xff]) || b.starts_with(&[0xff, 0xfe]) {
        Some("UTF-16")
    } else {
        None
    }
}

/// Inflate a zlib or raw deflate stream to at most `cap` bytes; also returns how many input
/// bytes the stream took. Bytes after the end of a zlib stream are refused (decoders disagree
/// on them).
fn inflate(
    input: &[u8],
    format: miniz_oxide::DataFormat,
    cap: usize,
    what: &'static str,
) -> Result<(Vec<u8>, usize), Refused> {
    use miniz_oxide::{
        MZFlush, MZStatus,
        inflate::stream::{InflateState, inflate as step},
    };
    let mut state = InflateState::new_boxed(format);
    let mut out = vec![0u8; cap.clamp(1, 64 << 10)];
    let mut written = 0;
    let mut read = 0;
    let truncated = || Refused::Corrupt(what, "the stream ends early".into());
    loop {
        if written == out.len() {
            if out.len() >= cap {
                return Err(Refused::TooLarge(cap));
            }
            let grow = out.len().saturating_mul(2).min(cap);
            out.resize(grow, 0);
        }
        let r = step(
            &mut state,
            &input[read..],
            &mut out[written..],
            MZFlush::None,
        );
        read += r.bytes_consumed;
        written += r.bytes_written;
        match r.status {
            Ok(MZStatus::StreamEnd) => break,
            Ok(_) if r.bytes_consumed == 0 && r.bytes_written == 0 && written < out.len() => {
                return Err(truncated());
            }
            Ok(_) => {}
            Err(miniz_oxide::MZError::Buf) if written == out.len() => {}
            Err(miniz_oxide::MZError::Buf) => return Err(truncated()),
            Err(e) => return Err(Refused::Corrupt(what, format!("{e:?}"))),
        }
    }
    out.truncate(written);
    if format == miniz_oxide::DataFormat::Zlib && read != input.len() {
        return Err(Refused::Corrupt(
            what,
            "bytes after the end of the stream".into(),
        ));
    }
    Ok((out, read))
}

/// Decode one gzip member (RFC 1952), checking its CRC and length; anything after it (another
/// member, or garbage) is refused: decoders disagree on it.
fn gunzip(input: &[u8], cap: usize) -> Result<Vec<u8>, Refused> {
    let bad = |why: &str| Refused::Corrupt("gzip", why.to_owned());
    if input.len() < 18 || input[0] != 0x1f || input[1] != 0x8b || input[2] != 8 {
        return Err(bad("not a gzip stream"));
    }
    let flags = input[3];
    if flags & 0xe0 != 0 {
        return Err(bad("reserved flags"));
    }
    let mut pos = 10;
    if flags & 4 != 0 {
        let len = input
            .get(pos..pos + 2)
            .map(|b| usize::from(u16::from_le_bytes([b[0], b[1]])))
            .ok_or_else(|| bad("truncated header"))?;
        pos += 2 + len;
    }
    for flag in [8u8, 16] {
        if flags & flag != 0 {
            let end = input
                .get(pos..)
                .and_then(|r| r.iter().position(|&b| b == 0))
                .ok_or_else(|| bad("truncated header"))?;
            pos += end + 1;
        }
    }
    if flags & 2 != 0 {
        pos += 2;
    }
    let deflated = input.get(pos..).ok_or_else(|| bad("truncated header"))?;
    let (out, used) = inflate(deflated, miniz_oxide::DataFormat::Raw, cap, "gzip")?;
    let trailer = &deflated[used..];
    if trailer.len() < 8 {
        return Err(bad("truncated trailer"));
    }
    if trailer.len() > 8 {
        return Err(bad("data after the gzip member"));
    }
    let crc = u32::from_le_bytes([trailer[0], trailer[1], trailer[2], trailer[3]]);
    let size = u32::from_le_bytes([trailer[4], trailer[5], trailer[6], trailer[7]]);
    if crc != crc32fast::hash(&out) || size != out.len() as u32 {
        return Err(bad("checksum or length mismatch"));
    }
    Ok(out)
}

/// Arrays and JSON-RPC messages: see the module documentation.
fn check_structure(v: &Value, route: &BodyRoute<'_>, mcp_endpoint: bool) -> Result<(), Refused> {
    match v {
        Value::Array(items) => {
            let rpc_like = mcp_endpoint
                || route.mcp
                || items
                    .iter()
                    .any(|i| i.get("method").is_some() || i.get("jsonrpc").is_some());
            if !rpc_like {
                return if route.array_docs {
                    Ok(())
                } else {
                    Err(Refused::Array)
                };
            }
            if items.is_empty() {
                return Err(Refused::JsonRpc("an empty batch".into()));
            }
            for (i, item) in items.iter().enumerate() {
                validate_request(item)
                    .map_err(|why| Refused::JsonRpc(format!("batch element {i}: {why}")))?;
            }
            Ok(())
        }
        Value::Object(o) if mcp_endpoint || route.mcp => {
            if o.contains_key("method") {
                validate_request(v).map_err(Refused::JsonRpc)
            } else if o.get("jsonrpc").and_then(Value::as_str) == Some("2.0")
                && o.contains_key("id")
                && (o.contains_key("result") || o.contains_key("error"))
            {
                Ok(())
            } else {
                Err(Refused::JsonRpc(
                    "neither a JSON-RPC 2.0 request, notification nor response".into(),
                ))
            }
        }
        _ if mcp_endpoint || route.mcp => Err(Refused::JsonRpc(
            "a JSON-RPC message is an object or a batch of them".into(),
        )),
        _ => Ok(()),
    }
}

/// A message that carries tool uses the server runs, as the `tools/call`s of those tools: the
/// answer to a server's sampling request whose model asked for tools (a JSON-RPC response whose
/// `result.content` holds `tool_use` blocks), and, from the 2026-07-28 protocol on, the same
/// answers carried inside a retried request's `params.inputResponses` (red team rounds 22 and
/// 23). An MCP server that samples with tools runs each block (its `input` as the arguments),
/// so the message is decided as a batch of calls: the request itself, if it is one, and a call
/// per block. A block with no `type` is a tool use to the Python SDK (`ToolUseContent`'s type
/// defaults to it) when it has a `name` or an `input`. Any other message is returned as it is.
///
/// In a batch, each message is expanded in place (red team round 24: a one-message batch hid
/// its `inputResponses`' tool uses).
fn sampled_tool_uses(v: Value) -> Result<Value, Refused> {
    let Value::Array(batch) = v else {
        return sampled_tool_uses_of(v);
    };
    let mut out = Vec::with_capacity(batch.len());
    for message in batch {
        // A batch inside a batch is no message: left as it is, for the batch's own checks.
        if message.is_array() {
            out.push(message);
            continue;
        }
        match sampled_tool_uses_of(message)? {
            Value::Array(calls) => out.extend(calls),
            one => out.push(one),
        }
    }
    Ok(Value::Array(out))
}

/// [`sampled_tool_uses`] of one message (not a batch).
fn sampled_tool_uses_of(v: Value) -> Result<Value, Refused> {
    let mut results: Vec<&Value> = Vec::new();
    if v.get("method").is_none() {
        results.extend(v.get("result"));
    } else if let Some(Value::Object(answers)) = v.pointer("/params/inputResponses") {
        results.extend(answers.values());
    }
    let mut calls = Vec::new();
    for result in results {
        let blocks: Vec<&Value> = match result.get("content") {
            Some(Value::Array(blocks)) => blocks.iter().collect(),
            Some(block @ Value::Object(_)) => vec![block],
            _ => continue,
        };
        for block in blocks {
            let tool_use = match block.get("type") {
                Some(t) => t.as_str() == Some("tool_use"),
                None => block.get("name").is_some() || block.get("input").is_some(),
            };
            if !tool_use {
                continue;
            }
            let (Some(name), Some(input @ Value::Object(_))) = (
                block.get("name").and_then(Value::as_str),
                block.get("input"),
            ) else {
                return Err(Refused::JsonRpc(
                    "a tool_use without a `name` string and an `input` object".into(),
                ));
            };
            calls.push(serde_json::json!({
                "jsonrpc": "2.0",
                "id": v.get("id").cloned().unwrap_or(Value::Null),
                "method": "tools/call",
                "params": {"name": name, "arguments": input},
            }));
        }
    }
    if calls.is_empty() {
        return Ok(v);
    }
    if v.get("method").is_some() {
        calls.insert(0, v);
    }
    Ok(Value::Array(calls))
}

fn has_edge_noise(s: &str) -> bool {
    s.trim() != s || s.chars().any(char::is_control)
}

/// A JSON-RPC 2.0 request or notification, as every reader reads it.
fn validate_request(v: &Value) -> Result<(), String> {
    let Value::Object(o) = v else {
        return Err(format!("{} is not a request object", kind_name(v)));
    };
    if o.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
        return Err("`jsonrpc` must be \"2.0\"".into());
    }
    let Some(method) = o.get("method").and_then(Value::as_str) else {
        return Err("no `method` string".into());
    };
    if has_edge_noise(method) {
        return Err(format!(
            "method {method:?} has surrounding whitespace or control characters"
        ));
    }
    if method != "tools/call" && method.eq_ignore_ascii_case("tools/call") {
        return Err(format!("method {method:?} is `tools/call` in another case"));
    }
    match o.get("id") {
        None | Some(Value::String(_) | Value::Number(_) | Value::Null) => {}
        Some(other) => return Err(format!("`id` is {}", kind_name(other))),
    }
    match o.get("params") {
        None | Some(Value::Object(_)) => {}
        Some(Value::Array(_)) if method != "tools/call" => {}
        Some(Value::Array(_)) => {
            return Err("`tools/call` with by-position `params` (an array)".into());
        }
        Some(other) => return Err(format!("`params` is {}", kind_name(other))),
    }
    if method == "tools/call" {
        match v.pointer("/params/name") {
            Some(Value::String(name)) if !has_edge_noise(name) && !name.is_empty() => {}
            Some(Value::String(name)) => {
                return Err(format!(
                    "tool name {name:?} is empty or has surrounding whitespace or control characters"
                ));
            }
            _ => return Err("`tools/call` without a `params.name` string".into()),
        }
        match v.pointer("/params/arguments") {
            None | Some(Value::Object(_)) => {}
            Some(other) => return Err(format!("`params.arguments` is {}", kind_name(other))),
        }
    }
    Ok(())
}

/// Each condition of the route, on each document (each call of a batch), must read one way.
fn check_conditions(v: &Value, route: &BodyRoute<'_>) -> Result<(), Refused> {
    let docs: Vec<&Value> = match v {
        Value::Array(items)
            if !route.array_docs || items.iter().any(|i| i.get("method").is_some()) =>
        {
            items.iter().collect()
        }
        _ => vec![v],
    };
    for doc in docs {
        for c in &route.body {
            ambiguous(c, doc)?;
            if let Some(why) = c.wrapped(doc) {
                return Err(Refused::Ambiguous(why));
            }
        }
        if route.arguments.is_empty() {
            continue;
        }
        if let Some((tool, args)) = tool_call(doc) {
            let args = args.unwrap_or(&Value::Null);
            for (glob_, conds) in &route.arguments {
                if glob::simple(glob_, tool) {
                    for c in conds.iter() {
                        ambiguous(c, args)?;
                        if let Some(why) = c.json_text_ambiguity(args) {
                            return Err(Refused::Ambiguous(why));
                        }
                    }
                }
            }
        }
    }
    Ok(())
}

fn ambiguous(c: &Condition, doc: &Value) -> Result<(), Refused> {
    match c.ambiguity(doc) {
        Some(why) => Err(Refused::Ambiguous(why)),
        None => Ok(()),
    }
}

#[cfg(test)]
#[path = "canonical_tests.rs"]
pub(crate) mod tests;

#[cfg(test)]
#[path = "differential_tests.rs"]
mod differential;
