//! A differential test of the canonical interpretation against models of how real frameworks
//! read a request.
//!
//! Every HTTP case of `policies/examples/*.tests.yaml` is a canonical request. For each, the
//! test sends variants (spellings of the path, of the body's keys and numbers, batches and
//! JSON-RPC variants, content codings, charsets, content types, query strings, method
//! overrides) through the proxy's request parsing (httparse, the framing check, `target`) and
//! [`evaluate`], and through models of frameworks: each says whether it would route the
//! variant to the canonical request's handler and what it would act on (method, body fields
//! after its own coercions). The proxy must refuse a variant, or decide it exactly as the
//! engine decides what each framework acts on. (A batch that a lenient JSON-RPC server acts
//! on only in part may be decided more severely: the proxy decides every call.)
//!
//! The models, from the frameworks' documented behaviour:
//!
//! | model | path | body | numbers |
//! |---|---|---|---|
//! | Starlette/FastAPI | percent-decoded, case-sensitive, trailing slash redirected | JSON if no content type or `application/json`, `application/*+json`; `json.loads` (BOM, UTF-16/32 detected); last duplicate wins; no content coding | pydantic lax (`float()`: `_`, `inf`, Unicode digits; `true` = 1) |
//! | FastAPI query / form params | as above | query string / urlencoded or multipart form, last value | pydantic lax |
//! | Express 5 + `express.json()` | raw, case-insensitive, optional trailing slash, `method-override` | `application/json` only; inflates gzip, deflate, br; charset `utf-*` (UTF-16 via iconv, BOM stripped); last duplicate wins | JavaScript `Number()` (hex, `""` = 0, `[5000]` = 5000) |
//! | Express 5 query / `express.urlencoded()` | as above | `qs` (`a[]=x` is an array) | `Number()` |
//! | MCP Python SDK | as Starlette | JSON-RPC, `application/json`, strict pydantic (`"2.0"`, exact method, by-name params), a batch all or nothing | |
//! | lenient JSON-RPC server | as Express | any content type, decodes gzip and deflate, UTF-16 detected, first duplicate wins; method trimmed and lowercased, by-position params, each valid call of a batch | |
//! | lenient normaliser (a servlet container behind a normalising proxy, IIS) | every escape decoded (twice), overlong UTF-8, `\` as `/`, `;params` stripped, NUL truncates, trailing dots and spaces of segments stripped, dot segments resolved, case-insensitive | any content type, decodes gzip, deflate, br, UTF-16; first duplicate wins; form fields; query fields win | `Number()`, then `float()` |

use std::{collections::BTreeMap, io::Write as _, path::PathBuf};

use hyper::{HeaderMap, Method, Uri, Version, header::HeaderName, header::HeaderValue};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::tests::{examples, gzip, zlib};
use super::*;
use crate::{
    engine::{AgentRef, Engine, HttpRequest},
    policy::{Matcher, Mode, PolicySet, Verdict},
    proxy::{framing::Framer, request},
};

// ---------------------------------------------------------------------------------------------
// Canonical requests: the HTTP cases of the shipped policy tests

#[derive(Deserialize)]
struct TestFile {
    #[serde(default)]
    agent: Option<AgentDoc>,
    cases: Vec<CaseDoc>,
}

#[derive(Clone, Deserialize)]
struct AgentDoc {
    cgroup: String,
    #[serde(default)]
    label: Option<String>,
}

#[derive(Deserialize)]
struct CaseDoc {
    name: String,
    #[serde(default)]
    agent: Option<AgentDoc>,
    #[serde(default)]
    http: Option<HttpDoc>,
}

#[derive(Deserialize)]
struct HttpDoc {
    method: String,
    host: String,
    path: String,
    #[serde(default)]
    body: Option<Value>,
    #[serde(default)]
    mcp: Option<McpDoc>,
}

#[derive(Deserialize)]
struct McpDoc {
    tool: String,
    #[serde(default)]
    arguments: Value,
}

/// A canonical request, and what the rules of its route read.
#[derive(Clone)]
struct Canon {
    name: String,
    agent: AgentDoc,
    method: String,
    host: String,
    path: String,
    body: Option<Value>,
    mcp: bool,
    /// Top-level body fields some condition compares with a number.
    numeric: Vec<String>,
    /// Top-level body fields some condition reads.
    fields: Vec<String>,
}

fn canonical_cases(set: &PolicySet) -> Vec<Canon> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../policies/examples");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(".tests.yaml"))
        .collect();
    files.sort();
    let mut out: Vec<Canon> = Vec::new();
    for f in files {
        let doc: TestFile = serde_norway::from_str(&std::fs::read_to_string(&f).unwrap()).unwrap();
        for case in doc.cases {
            let Some(http) = case.http else { continue };
            let agent = case.agent.or(doc.agent.clone()).unwrap();
            let mcp = http.mcp.is_some();
            let body = match http.mcp {
                Some(m) => Some(json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                    "params": {"name": m.tool, "arguments": m.arguments}})),
                None => http.body,
            };
            if out.iter().any(|c| {
                c.method == http.method
                    && c.host == http.host
                    && c.path == http.path
                    && c.body == body
                    && c.agent.cgroup == agent.cgroup
            }) {
                continue;
            }
            let (numeric, fields) = route_fields(set, &http.host, &http.path);
            out.push(Canon {
                name: case.name,
                agent,
                method: http.method.to_ascii_uppercase(),
                host: http.host.to_ascii_lowercase(),
                path: http.path,
                body,
                mcp,
                numeric,
                fields,
            });
        }
    }
    out
}

/// The top-level fields that body conditions of rules for this host and path read, and
/// those compared with numbers.
fn route_fields(set: &PolicySet, host: &str, path: &str) -> (Vec<String>, Vec<String>) {
    let (mut numeric, mut fields) = (Vec::new(), Vec::new());
    for rule in set.rules() {
        let Matcher::Http(h) = &rule.matcher else {
            continue;
        };
        let host_ok = match &h.host {
            crate::policy::HostMatch::Any => true,
            crate::policy::HostMatch::Exact(e) => e.eq_ignore_ascii_case(host),
            crate::policy::HostMatch::Suffix(s) => host.to_ascii_lowercase().ends_with(s.as_str()),
        };
        let path_ok = h
            .path
            .as_deref()
            .is_none_or(|p| crate::policy::glob::path(p, &path.to_ascii_lowercase()));
        if !(host_ok && path_ok) {
            continue;
        }
        for c in &h.body {
            if let Some(k) = c.top_key() {
                fields.push(k.to_owned());
                if c.numeric() {
                    numeric.push(k.to_owned());
                }
            }
        }
    }
    fields.sort();
    fields.dedup();
    numeric.sort();
    numeric.dedup();
    (numeric, fields)
}

// ---------------------------------------------------------------------------------------------
// Requests on the wire

#[derive(Clone, Debug)]
struct Wire {
    what: String,
    method: String,
    /// Path and query, as sent.
    target: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    /// For a `br` body (no encoder at hand): what it decodes to, for the models that inflate it.
    br_plain: Option<Vec<u8>>,
}

impl Wire {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn count(&self, name: &str) -> usize {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .count()
    }

    fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or("")
    }

    fn query(&self) -> &str {
        self.target.split_once('?').map_or("", |(_, q)| q)
    }

    fn bytes(&self, host: &str) -> Vec<u8> {
        let mut out = format!(
            "{} {} HTTP/1.1\r\nhost: {host}\r\n",
            self.method, self.target
        );
        for (k, v) in &self.headers {
            out.push_str(&format!("{k}: {v}\r\n"));
        }
        out.push_str(&format!("content-length: {}\r\n\r\n", self.body.len()));
        let mut out = out.into_bytes();
        out.extend_from_slice(&self.body);
        out
    }

    fn with(&self, what: impl Into<String>, f: impl FnOnce(&mut Wire)) -> Wire {
        let mut w = self.clone();
        w.what = what.into();
        f(&mut w);
        w
    }

    fn set_header(&mut self, name: &str, value: &str) {
        self.headers.retain(|(k, _)| !k.eq_ignore_ascii_case(name));
        self.headers.push((name.to_owned(), value.to_owned()));
    }

    fn drop_header(&mut self, name: &str) {
        self.headers.retain(|(k, _)| !k.eq_ignore_ascii_case(name));
    }
}

fn canonical_wire(c: &Canon) -> Wire {
    let (headers, body) = match &c.body {
        Some(b) => (
            vec![("content-type".to_owned(), "application/json".to_owned())],
            b.to_string().into_bytes(),
        ),
        None => (vec![], vec![]),
    };
    Wire {
        what: "canonical".into(),
        method: c.method.clone(),
        target: c.path.clone(),
        headers,
        body,
        br_plain: None,
    }
}

// ---------------------------------------------------------------------------------------------
// Variants

fn path_variants(c: &Canon, base: &Wire) -> Vec<Wire> {
    let p = c.path.as_str();
    let segs: Vec<&str> = p.trim_start_matches('/').split('/').collect();
    let join = |segs: &[String]| format!("/{}", segs.join("/"));
    let owned: Vec<String> = segs.iter().map(|s| (*s).to_owned()).collect();
    let last = owned.len() - 1;
    let mut paths: Vec<(String, String)> = vec![
        ("uppercase".into(), p.to_ascii_uppercase()),
        ("trailing slash".into(), format!("{p}/")),
        ("two trailing slashes".into(), format!("{p}//")),
        ("leading double slash".into(), format!("/{p}")),
        (
            "double slash".into(),
            p.replacen('/', "//", 2).replacen("//", "/", 1),
        ),
        ("dot segment".into(), format!("/.{p}")),
        ("dot-dot segment".into(), format!("/x/..{p}")),
        ("encoded dot-dot".into(), format!("/x/%2e%2E{p}")),
        ("overlong dot-dot".into(), format!("/x/%C0%AE%C0%AE{p}")),
        ("double-encoded dot-dot".into(), format!("/x/%252e%252e{p}")),
        ("trailing dot".into(), format!("{p}/.")),
        (
            "encoded slash".into(),
            p.replacen('/', "%2F", 2).replacen("%2F", "/", 1),
        ),
        (
            "encoded slash, lowercase".into(),
            p.replacen('/', "%2f", 2).replacen("%2f", "/", 1),
        ),
        ("encoded trailing slash".into(), format!("{p}%2F")),
        (
            "backslash".into(),
            p.replacen('/', "\\", 2).replacen('\\', "/", 1),
        ),
        (
            "encoded backslash".into(),
            p.replacen('/', "%5C", 2).replacen("%5C", "/", 1),
        ),
        ("NUL".into(), format!("{p}%00")),
        ("NUL and suffix".into(), format!("{p}%00.json")),
        ("path parameter".into(), format!("{p};x=1")),
        ("empty path parameter".into(), format!("{p};")),
        ("encoded space".into(), format!("{p}%20")),
        ("encoded tab".into(), format!("{p}%09")),
    ];
    let mut first_caps = owned.clone();
    for s in &mut first_caps {
        let mut cs = s.chars();
        if let Some(f) = cs.next() {
            *s = f.to_ascii_uppercase().to_string() + cs.as_str();
        }
    }
    paths.push(("capitalised segments".into(), join(&first_caps)));
    let mut param_mid = owned.clone();
    param_mid[0].push_str(";v=2");
    paths.push(("path parameter, first segment".into(), join(&param_mid)));
    for (i, seg) in owned.iter().enumerate() {
        if let Some((at, ch)) = seg.char_indices().find(|(_, c)| c.is_ascii_alphanumeric()) {
            for (name, enc) in [
                ("encoded unreserved", format!("%{:02X}", ch as u32)),
                (
                    "encoded unreserved, lowercase hex",
                    format!("%{:02x}", ch as u32),
                ),
            ] {
                let mut s = owned.clone();
                s[i] = format!("{}{enc}{}", &seg[..at], &seg[at + 1..]);
                paths.push((format!("{name}, segment {i}"), join(&s)));
            }
        }
    }
    let all: String = p
        .bytes()
        .map(|b| {
            if b == b'/' {
                "/".to_owned()
            } else {
                format!("%{b:02x}")
            }
        })
        .collect();
    paths.push(("every character encoded".into(), all));
    let mut dotted = owned.clone();
    dotted[last].push('.');
    paths.push(("trailing dot in the last segment".into(), join(&dotted)));
    paths
        .into_iter()
        .map(|(what, path)| base.with(format!("path: {what} `{path}`"), |w| w.target = path))
        .collect()
}

fn numeric_forms(n: f64) -> Vec<(String, Value)> {
    let i = n as i64;
    vec![
        ("as a string".into(), json!(i.to_string())),
        (
            "exponent".into(),
            serde_json::from_str(&format!("{}e0", i)).unwrap(),
        ),
        ("as a float".into(), json!(n)),
        ("exponent string".into(), json!(format!("{}e0", i))),
        ("plus sign string".into(), json!(format!("+{i}"))),
        ("padded string".into(), json!(format!(" {i} "))),
        ("leading zeros string".into(), json!(format!("0{i}"))),
        ("hex string".into(), json!(format!("0x{i:x}"))),
        (
            "underscore string".into(),
            json!(format!("{}_{}", i / 10, i % 10)),
        ),
        (
            "fullwidth digits".into(),
            json!(
                i.to_string()
                    .chars()
                    .map(|c| char::from_u32(0xff10 + c.to_digit(10).unwrap()).unwrap())
                    .collect::<String>()
            ),
        ),
        ("array".into(), json!([i])),
        ("array of a string".into(), json!([i.to_string()])),
        ("suffixed string".into(), json!(format!("{i}abc"))),
        ("empty string".into(), json!("")),
        ("infinity".into(), json!("Infinity")),
        ("null".into(), Value::Null),
        ("boolean".into(), json!(true)),
    ]
}

fn encode_utf16(s: &[u8], bom: bool) -> Vec<u8> {
    let text = String::from_utf8_lossy(s);
    let mut out = if bom { vec![0xff, 0xfe] } else { vec![] };
    out.extend(text.encode_utf16().flat_map(u16::to_le_bytes));
    out
}

fn body_variants(c: &Canon, base: &Wire) -> Vec<Wire> {
    let Some(body) = &c.body else {
        return vec![];
    };
    let mut out = Vec::new();
    let text = body.to_string();
    let bytes = text.as_bytes().to_vec();
    let json_body = |out: &mut Vec<Wire>, what: String, v: String| {
        out.push(base.with(format!("body: {what} {v}"), |w| w.body = v.into_bytes()));
    };
    if let Value::Object(map) = body {
        for (k, v) in map {
            let rest: Vec<String> = map
                .iter()
                .filter(|(k2, _)| *k2 != k)
                .map(|(k2, v2)| format!("{}:{v2}", Value::from(k2.as_str())))
                .collect();
            let obj = |pairs: &[String]| {
                let mut all = rest.clone();
                all.extend_from_slice(pairs);
                format!("{{{}}}", all.join(","))
            };
            let benign = match v {
                Value::Number(_) => json!(1),
                Value::String(_) => json!("SELECT 1"),
                _ => Value::Null,
            };
            let key = Value::from(k.as_str());
            let upper = Value::from(k.to_ascii_uppercase());
            let capital = Value::from({
                let mut cs = k.chars();
                cs.next()
                    .map(|f| f.to_ascii_uppercase().to_string() + cs.as_str())
                    .unwrap_or_default()
            });
            let escaped = format!("\"\\u{:04x}{}\"", k.chars().next().unwrap() as u32, &k[1..]);
            json_body(
                &mut out,
                format!("duplicate `{k}`, benign last"),
                obj(&[format!("{key}:{v}"), format!("{key}:{benign}")]),
            );
            json_body(
                &mut out,
                format!("duplicate `{k}`, benign first"),
                obj(&[format!("{key}:{benign}"), format!("{key}:{v}")]),
            );
            json_body(
                &mut out,
                format!("escaped duplicate `{k}`"),
                obj(&[format!("{key}:{benign}"), format!("{escaped}:{v}")]),
            );
            json_body(
                &mut out,
                format!("`{k}` in upper case"),
                obj(&[format!("{upper}:{v}")]),
            );
            json_body(
                &mut out,
                format!("`{k}` capitalised beside a benign one"),
                obj(&[format!("{key}:{benign}"), format!("{capital}:{v}")]),
            );
            json_body(
                &mut out,
                format!("nested duplicate beside `{k}`"),
                obj(&[format!("{key}:{v}"), r#""meta":{"a":1,"a":2}"#.to_owned()]),
            );
            if let Some(n) = v.as_f64() {
                for (what, form) in numeric_forms(n) {
                    json_body(
                        &mut out,
                        format!("`{k}` {what}"),
                        obj(&[format!("{key}:{form}")]),
                    );
                }
            }
            if v.is_string() {
                json_body(
                    &mut out,
                    format!("`{k}` in an array"),
                    obj(&[format!("{key}:[{v}]")]),
                );
                json_body(
                    &mut out,
                    format!("`{k}` in an object"),
                    obj(&[format!("{key}:{{\"v\":{v}}}")]),
                );
            }
            // The field in the query string, the body benign.
            let benign_body = obj(&[format!("{key}:{benign}")]);
            let plain = v.as_str().map_or_else(|| v.to_string(), str::to_owned);
            let enc: String = plain
                .bytes()
                .map(|b| {
                    if b.is_ascii_alphanumeric() {
                        (b as char).to_string()
                    } else {
                        format!("%{b:02X}")
                    }
                })
                .collect();
            for (what, q) in [
                ("query", format!("{k}={enc}")),
                ("query, brackets", format!("{k}[]={enc}")),
                (
                    "query, upper case",
                    format!("{}={enc}", k.to_ascii_uppercase()),
                ),
                (
                    "query, encoded name",
                    format!("%{:02X}{}={enc}", k.as_bytes()[0], &k[1..]),
                ),
            ] {
                let b = benign_body.clone();
                out.push(base.with(format!("{what}: ?{q}"), |w| {
                    w.target = format!("{}?{q}", w.target);
                    w.body = b.into_bytes();
                }));
            }
            // A form carrying the field.
            let form = format!("{k}={enc}");
            out.push(base.with(format!("urlencoded form {form}"), |w| {
                w.set_header("content-type", "application/x-www-form-urlencoded");
                w.body = form.clone().into_bytes();
            }));
            let part = format!(
                "--B\r\ncontent-disposition: form-data; name=\"{k}\"\r\n\r\n{plain}\r\n--B--\r\n"
            );
            out.push(base.with(format!("multipart form with `{k}`"), |w| {
                w.set_header("content-type", "multipart/form-data; boundary=B");
                w.body = part.into_bytes();
            }));
        }
    }
    // Content types.
    for ct in [
        None,
        Some("text/plain"),
        Some("application/vnd.api+json"),
        Some("application/json; charset=utf-8"),
        Some("application/json; charset=utf-16"),
        Some("application/json; charset=iso-8859-1"),
        Some("application/x-www-form-urlencoded"),
        Some("application/octet-stream"),
    ] {
        out.push(base.with(format!("content-type {ct:?}"), |w| match ct {
            Some(ct) => w.set_header("content-type", ct),
            None => w.drop_header("content-type"),
        }));
    }
    out.push(base.with("two content types", |w| {
        w.headers.push(("content-type".into(), "text/plain".into()));
    }));
    // Content codings.
    let mut garbage = gzip(&bytes);
    garbage.extend(b"xyz");
    let mut two = gzip(br#"{}"#);
    two.extend(gzip(&bytes));
    for (what, coding, data) in [
        ("gzip", "gzip", gzip(&bytes)),
        ("x-gzip", "x-gzip", gzip(&bytes)),
        ("GZIP", "GZIP", gzip(&bytes)),
        ("deflate", "deflate", zlib(&bytes)),
        (
            "raw deflate",
            "deflate",
            miniz_oxide::deflate::compress_to_vec(&bytes, 6),
        ),
        ("gzip twice", "gzip, gzip", gzip(&gzip(&bytes))),
        ("gzip with garbage after it", "gzip", garbage),
        ("two gzip members", "gzip", two),
        ("unknown coding", "snappy", bytes.clone()),
        ("identity", "identity", bytes.clone()),
        ("gzip, not compressed", "gzip", bytes.clone()),
    ] {
        out.push(base.with(format!("content-encoding {what}"), |w| {
            w.set_header("content-encoding", coding);
            w.body = data;
        }));
    }
    out.push(base.with("content-encoding br", |w| {
        w.set_header("content-encoding", "br");
        w.body = vec![0x1b, 0x2a, 0x00, 0xf8];
        w.br_plain = Some(bytes.clone());
    }));
    out.push(base.with("two content-encoding headers", |w| {
        w.headers
            .push(("content-encoding".into(), "identity".into()));
        w.headers.push(("content-encoding".into(), "gzip".into()));
        w.body = gzip(&bytes);
    }));
    // Charsets and byte-order marks.
    let mut bom8 = vec![0xef, 0xbb, 0xbf];
    bom8.extend(&bytes);
    for (what, data) in [
        ("UTF-8 BOM", bom8),
        ("UTF-16LE with BOM", encode_utf16(&bytes, true)),
        ("UTF-16LE without BOM", encode_utf16(&bytes, false)),
    ] {
        out.push(base.with(format!("charset: {what}"), |w| w.body = data.clone()));
        out.push(base.with(format!("charset: {what}, declared utf-16"), |w| {
            w.set_header("content-type", "application/json; charset=utf-16");
            w.body = data;
        }));
    }
    let mut latin = bytes.clone();
    latin.extend(b" \xe9");
    out.push(base.with("invalid UTF-8 after the JSON", |w| w.body = latin));
    // Arrays.
    out.push(base.with("in an array", |w| w.body = format!("[{text}]").into_bytes()));
    out.push(base.with("twice in an array", |w| {
        w.body = format!("[{text},{text}]").into_bytes()
    }));
    out
}

fn mcp_variants(c: &Canon, base: &Wire) -> Vec<Wire> {
    let Some(call) = &c.body else {
        return vec![];
    };
    let benign = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call",
        "params": {"name": "list_tools", "arguments": {}}});
    let name = call.pointer("/params/name").cloned().unwrap_or(Value::Null);
    let args = call
        .pointer("/params/arguments")
        .cloned()
        .unwrap_or(json!({}));
    let with = |f: &dyn Fn(&mut Value)| {
        let mut v = call.clone();
        f(&mut v);
        v.to_string()
    };
    let mut bodies: Vec<(String, String)> = vec![
        (
            "batch, benign first".into(),
            json!([benign, call]).to_string(),
        ),
        (
            "batch, benign last".into(),
            json!([call, benign]).to_string(),
        ),
        ("batch with a number".into(), json!([call, 5]).to_string()),
        ("batch with a string".into(), json!([call, "x"]).to_string()),
        ("batch with null".into(), json!([call, null]).to_string()),
        (
            "batch with an array".into(),
            json!([call, [benign]]).to_string(),
        ),
        (
            "batch with an object without method".into(),
            json!([call, {"jsonrpc": "2.0", "id": 9}]).to_string(),
        ),
        ("nested batch".into(), json!([[call]]).to_string()),
        ("empty batch".into(), "[]".into()),
        (
            "params by position".into(),
            with(&|v| v["params"] = json!([name, args])),
        ),
        ("jsonrpc 1.0".into(), with(&|v| v["jsonrpc"] = json!("1.0"))),
        (
            "no jsonrpc".into(),
            with(&|v| {
                v.as_object_mut().unwrap().remove("jsonrpc");
            }),
        ),
        ("id an object".into(), with(&|v| v["id"] = json!({"a": 1}))),
        (
            "arguments an array".into(),
            with(&|v| v["params"]["arguments"] = json!([args])),
        ),
        (
            "name with a space".into(),
            with(&|v| v["params"]["name"] = json!(format!("{} ", name.as_str().unwrap_or("")))),
        ),
        (
            "duplicate name, benign last".into(),
            format!(
                r#"{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{{"name":{name},"name":"list_tools","arguments":{args}}}}}"#
            ),
        ),
        (
            "duplicate name, benign first".into(),
            format!(
                r#"{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{{"name":"list_tools","name":{name},"arguments":{args}}}}}"#
            ),
        ),
        (
            "duplicate method".into(),
            format!(
                r#"{{"jsonrpc":"2.0","id":1,"method":"tools/list","method":"tools/call","params":{{"name":{name},"arguments":{args}}}}}"#
            ),
        ),
    ];
    for m in [
        "Tools/Call",
        "TOOLS/CALL",
        " tools/call",
        "tools/call ",
        "tools/call\u{0}",
        "\ttools/call",
    ] {
        bodies.push((format!("method {m:?}"), with(&|v| v["method"] = json!(m))));
    }
    if let Some(Value::Object(a)) = call.pointer("/params/arguments") {
        for (k, v) in a {
            bodies.push((
                format!("argument `{k}` in an array"),
                with(&|c| c["params"]["arguments"][k.as_str()] = json!([v])),
            ));
            bodies.push((
                format!("argument `{k}` capitalised"),
                with(&|c| {
                    let args = c["params"]["arguments"].as_object_mut().unwrap();
                    let val = args.remove(k.as_str()).unwrap();
                    args.insert(k.to_ascii_uppercase(), val);
                }),
            ));
        }
    }
    bodies
        .into_iter()
        .map(|(what, b)| base.with(format!("json-rpc: {what}"), |w| w.body = b.into_bytes()))
        .collect()
}

fn method_variants(c: &Canon, base: &Wire) -> Vec<Wire> {
    let mut out = vec![base.with("lowercase method", |w| {
        w.method = c.method.to_ascii_lowercase()
    })];
    if c.method != "POST" {
        let m = c.method.clone();
        out.push(base.with(format!("POST overridden to {m} by header"), |w| {
            w.method = "POST".into();
            w.set_header("x-http-method-override", &m);
        }));
        out.push(
            base.with(format!("POST overridden to {m} by _method"), |w| {
                w.method = "POST".into();
                w.target = format!("{}?_method={m}", w.target);
            }),
        );
    }
    out
}

// ---------------------------------------------------------------------------------------------
// The proxy: httparse (hyper's parser), the framing check, `target`, `evaluate`

#[derive(Clone, Debug, PartialEq)]
enum Outcome {
    Refused(String),
    Decided(Verdict, String),
}

fn engine_for(set: &PolicySet, agent: &AgentDoc) -> (Engine, AgentRules) {
    let engine = Engine::new(set.clone(), 1);
    let view = engine.agent(&AgentRef {
        name: agent.label.clone().unwrap_or_else(|| agent.cgroup.clone()),
        cgroup: agent.cgroup.clone(),
        label: agent.label.clone(),
        pod: None,
    });
    (engine, view)
}

fn proxy(set: &PolicySet, c: &Canon, w: &Wire) -> Outcome {
    let raw = w.bytes(&c.host);
    let mut framer = Framer::default();
    let mut heads = Vec::new();
    framer.feed(&raw, &mut |h| heads.push(h));
    let mut slots = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut slots);
    let len = match req.parse(&raw) {
        Ok(httparse::Status::Complete(len)) => len,
        other => return Outcome::Refused(format!("unparsable: {other:?}")),
    };
    let (Some(m), Some(target)) = (req.method, req.path) else {
        return Outcome::Refused("no request line".into());
    };
    let (Ok(method), Ok(uri)) = (Method::from_bytes(m.as_bytes()), target.parse::<Uri>()) else {
        return Outcome::Refused("bad request line".into());
    };
    let mut headers = HeaderMap::new();
    for h in req.headers.iter() {
        let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(h.name.as_bytes()),
            HeaderValue::from_bytes(h.value),
        ) else {
            return Outcome::Refused("bad header".into());
        };
        headers.append(n, v);
    }
    if let Err(e) = request::check_framing(&headers, heads.first().copied()) {
        return Outcome::Refused(e.to_string());
    }
    let head = match request::target(&method, &uri, Version::HTTP_11, &headers) {
        Ok(h) => h,
        Err(e) => return Outcome::Refused(e.to_string()),
    };
    let (engine, view) = engine_for(set, &c.agent);
    match evaluate(&engine, &view, &head, &headers, Some(&raw[len..]), 1 << 20) {
        Ok(ev) => Outcome::Decided(
            ev.decision.verdict(),
            ev.decision.rule.unwrap_or_else(|| "default".into()),
        ),
        Err(e) => Outcome::Refused(e.to_string()),
    }
}

/// The engine's decision on what a framework acts on.
fn decide(set: &PolicySet, c: &Canon, r: &Reading) -> Outcome {
    let (engine, view) = engine_for(set, &c.agent);
    let mut http = HttpRequest {
        method: r.method.clone(),
        host: c.host.clone(),
        path: c.path.clone(),
        headers: vec![],
        body: None,
    };
    let array_docs = engine
        .body_route(&view, &c.host, &r.method, &c.path)
        .array_docs;
    let (d, _) = decide_request(&engine, &view, &mut http, r.body.clone(), array_docs);
    Outcome::Decided(d.verdict(), d.rule.unwrap_or_else(|| "default".into()))
}

// ---------------------------------------------------------------------------------------------
// Framework models

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fw {
    Starlette,
    FastapiQuery,
    FastapiForm,
    Express,
    ExpressQuery,
    ExpressForm,
    McpSdk,
    LaxJsonRpc,
    Lenient,
}

const FRAMEWORKS: [Fw; 9] = [
    Fw::Starlette,
    Fw::FastapiQuery,
    Fw::FastapiForm,
    Fw::Express,
    Fw::ExpressQuery,
    Fw::ExpressForm,
    Fw::McpSdk,
    Fw::LaxJsonRpc,
    Fw::Lenient,
];

/// What a framework acts on.
#[derive(Clone, Debug)]
struct Reading {
    method: String,
    body: Option<Value>,
}

fn hexval(b: u8) -> Option<u8> {
    char::from(b).to_digit(16).map(|d| d as u8)
}

/// Percent-decode every escape (bad ones stay).
fn unquote(s: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < s.len() {
        if s[i] == b'%'
            && let (Some(h), Some(l)) = (
                s.get(i + 1).copied().and_then(hexval),
                s.get(i + 2).copied().and_then(hexval),
            )
        {
            out.push(h << 4 | l);
            i += 3;
            continue;
        }
        out.push(s[i]);
        i += 1;
    }
    out
}

/// Starlette: uvicorn decodes the path; routes are case-sensitive; a missing or extra
/// trailing slash is redirected (307, which clients follow with the body).
fn starlette_routes(path: &str, route: &str) -> bool {
    let decoded = String::from_utf8_lossy(&unquote(path.as_bytes())).into_owned();
    decoded == route || decoded == format!("{route}/") || format!("{decoded}/") == route
}

/// Express: the raw path, case-insensitive, one optional trailing slash.
fn express_routes(path: &str, route: &str) -> bool {
    let p = path.strip_suffix('/').unwrap_or(path);
    p.eq_ignore_ascii_case(route)
}

/// The worst case of normalisation.
fn lenient_path(path: &str) -> String {
    let mut bytes = unquote(&unquote(path.as_bytes()));
    // Overlong UTF-8 for `.` and `/`.
    let mut fixed = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        match (bytes[i], bytes.get(i + 1)) {
            (0xc0, Some(0xae)) => {
                fixed.push(b'.');
                i += 2;
            }
            (0xc0, Some(0xaf)) => {
                fixed.push(b'/');
                i += 2;
            }
            (b, _) => {
                fixed.push(b);
                i += 1;
            }
        }
    }
    bytes = fixed;
    if let Some(nul) = bytes.iter().position(|&b| b == 0) {
        bytes.truncate(nul);
    }
    let s = String::from_utf8_lossy(&bytes).replace('\\', "/");
    let mut out: Vec<&str> = Vec::new();
    for seg in s.split('/') {
        let seg = seg.split(';').next().unwrap_or("");
        // Windows strips trailing dots and spaces (but `.` and `..` stay what they are).
        let seg = if seg == "." || seg == ".." {
            seg
        } else {
            seg.trim_end_matches(['.', ' '])
        };
        match seg {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            s => out.push(s),
        }
    }
    format!("/{}", out.join("/")).to_ascii_lowercase()
}

fn lenient_routes(path: &str, route: &str) -> bool {
    lenient_path(path) == route.to_ascii_lowercase().trim_end_matches('/')
}

/// Decode a JSON text as Python's `json.loads(bytes)` does: BOMs and UTF-16/32 detected.
fn python_text(b: &[u8]) -> Option<String> {
    let utf16 = |b: &[u8], le: bool| {
        let units: Vec<u16> = b
            .chunks(2)
            .map(|c| {
                let pair = [c[0], *c.get(1).unwrap_or(&0)];
                if le {
                    u16::from_le_bytes(pair)
                } else {
                    u16::from_be_bytes(pair)
                }
            })
            .collect();
        String::from_utf16(&units).ok()
    };
    if let Some(rest) = b.strip_prefix(&[0xef, 0xbb, 0xbf]) {
        return String::from_utf8(rest.to_vec()).ok();
    }
    if let Some(rest) = b.strip_prefix(&[0xff, 0xfe]) {
        return utf16(rest, true);
    }
    if let Some(rest) = b.strip_prefix(&[0xfe, 0xff]) {
        return utf16(rest, false);
    }
    if b.len() >= 2 && b[0] != 0 && b[1] == 0 {
        return utf16(b, true);
    }
    if b.len() >= 2 && b[0] == 0 && b[1] != 0 {
        return utf16(b, false);
    }
    String::from_utf8(b.to_vec()).ok()
}

/// JSON with the first duplicate winning (the other readers' serde_json keeps the last).
fn parse_first_wins(text: &str) -> Option<Value> {
    struct First(Value);
    impl<'de> Deserialize<'de> for First {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl<'de> serde::de::Visitor<'de> for V {
                type Value = First;
                fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                    f.write_str("JSON")
                }
                fn visit_bool<E>(self, b: bool) -> Result<First, E> {
                    Ok(First(b.into()))
                }
                fn visit_i64<E>(self, n: i64) -> Result<First, E> {
                    Ok(First(n.into()))
                }
                fn visit_u64<E>(self, n: u64) -> Result<First, E> {
                    Ok(First(n.into()))
                }
                fn visit_f64<E>(self, n: f64) -> Result<First, E> {
                    Ok(First(n.into()))
                }
                fn visit_str<E>(self, s: &str) -> Result<First, E> {
                    Ok(First(s.into()))
                }
                fn visit_unit<E>(self) -> Result<First, E> {
                    Ok(First(Value::Null))
                }
                fn visit_seq<A: serde::de::SeqAccess<'de>>(
                    self,
                    mut s: A,
                ) -> Result<First, A::Error> {
                    let mut out = Vec::new();
                    while let Some(First(v)) = s.next_element()? {
                        out.push(v);
                    }
                    Ok(First(Value::Array(out)))
                }
                fn visit_map<A: serde::de::MapAccess<'de>>(
                    self,
                    mut m: A,
                ) -> Result<First, A::Error> {
                    let mut out = Map::new();
                    while let Some(k) = m.next_key::<String>()? {
                        let First(v) = m.next_value()?;
                        out.entry(k).or_insert(v);
                    }
                    Ok(First(Value::Object(out)))
                }
            }
            d.deserialize_any(V)
        }
    }
    serde_json::from_str::<First>(text).ok().map(|f| f.0)
}

fn gunzip_all(b: &[u8]) -> Option<Vec<u8>> {
    // Node's gunzip decodes concatenated members; garbage after one is an error.
    let mut out = Vec::new();
    let mut rest = b;
    while !rest.is_empty() {
        if rest.len() < 18 || rest[..3] != [0x1f, 0x8b, 8] {
            return None;
        }
        let mut state =
            miniz_oxide::inflate::stream::InflateState::new_boxed(miniz_oxide::DataFormat::Raw);
        let mut buf = vec![0u8; 1 << 20];
        let r = miniz_oxide::inflate::stream::inflate(
            &mut state,
            &rest[10..],
            &mut buf,
            miniz_oxide::MZFlush::Finish,
        );
        if r.status != Ok(miniz_oxide::MZStatus::StreamEnd) {
            return None;
        }
        out.extend_from_slice(&buf[..r.bytes_written]);
        rest = rest.get(10 + r.bytes_consumed + 8..)?;
    }
    Some(out)
}

fn inflate_zlib(b: &[u8]) -> Option<Vec<u8>> {
    miniz_oxide::inflate::decompress_to_vec_zlib(b).ok()
}

/// The body bytes after the content coding, as a reader that decodes codings sees them.
fn decoded(w: &Wire, brotli: bool) -> Option<Vec<u8>> {
    if w.count("content-encoding") > 1 {
        return None;
    }
    match w
        .header("content-encoding")
        .map(|v| v.trim().to_ascii_lowercase())
        .as_deref()
    {
        None | Some("identity") | Some("") => Some(w.body.clone()),
        Some("gzip") => gunzip_all(&w.body),
        Some("deflate") => inflate_zlib(&w.body),
        Some("br") if brotli => w.br_plain.clone(),
        _ => None,
    }
}

fn media(w: &Wire) -> (String, Option<String>) {
    let ct = w.header("content-type").unwrap_or("");
    let mut parts = ct.split(';');
    let essence = parts.next().unwrap_or("").trim().to_ascii_lowercase();
    let charset = parts.find_map(|p| {
        let (k, v) = p.split_once('=')?;
        k.trim()
            .eq_ignore_ascii_case("charset")
            .then(|| v.trim().trim_matches('"').to_ascii_lowercase())
    });
    (essence, charset)
}

/// Form fields (`a=1&b=2`, or one multipart part); `qs`: `a[]=x` makes an array.
fn form_fields(w: &Wire, body: &[u8], qs: bool) -> Option<Value> {
    let (essence, _) = media(w);
    if essence == "application/x-www-form-urlencoded" {
        return Some(pairs(&String::from_utf8_lossy(body), qs));
    }
    if essence.starts_with("multipart/form-data") {
        let text = String::from_utf8_lossy(body);
        let name = text.split("name=\"").nth(1)?.split('"').next()?.to_owned();
        let value = text
            .split("\r\n\r\n")
            .nth(1)?
            .split("\r\n")
            .next()?
            .to_owned();
        let mut m = Map::new();
        m.insert(name, Value::String(value));
        return Some(Value::Object(m));
    }
    None
}

fn pairs(q: &str, qs: bool) -> Value {
    let mut m = Map::new();
    for p in q.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = p.split_once('=').unwrap_or((p, ""));
        let dec = |s: &str| {
            String::from_utf8_lossy(&unquote(s.replace('+', " ").as_bytes())).into_owned()
        };
        let (k, v) = (dec(k), dec(v));
        match k.strip_suffix("[]") {
            Some(base) if qs => {
                let e = m.entry(base.to_owned()).or_insert_with(|| json!([]));
                if let Value::Array(a) = e {
                    a.push(Value::String(v));
                }
            }
            _ => {
                m.insert(k, Value::String(v));
            }
        }
    }
    Value::Object(m)
}

/// Fields the rules read, taken from the query string over the body's.
fn merge_query(body: &mut Value, query: Value, c: &Canon) {
    if let (Value::Object(m), Value::Object(q)) = (body, query) {
        for (k, v) in q {
            if c.fields.contains(&k) {
                m.insert(k, v);
            }
        }
    }
}

/// Python's `float()` (pydantic's lax numbers): whitespace, `_` between digits, `inf`,
/// `nan`, Unicode digits; None when it is an error.
fn python_number(v: &Value) -> Option<Option<f64>> {
    match v {
        Value::Number(n) => Some(n.as_f64()),
        Value::Bool(b) => Some(Some(f64::from(u8::from(*b)))),
        Value::String(s) => {
            let t: String = s
                .trim()
                .chars()
                .map(|c| match c {
                    '\u{ff10}'..='\u{ff19}' => char::from_digit(c as u32 - 0xff10, 10).unwrap_or(c),
                    c => c,
                })
                .collect();
            let l = t.to_ascii_lowercase();
            let unsigned = l.trim_start_matches(['+', '-']);
            if unsigned == "inf" || unsigned == "infinity" {
                return Some(Some(if l.starts_with('-') { -1e300 } else { 1e300 }));
            }
            if unsigned == "nan" {
                return Some(None);
            }
            let ok_underscores = !t.starts_with('_')
                && !t.ends_with('_')
                && !t.contains("__")
                && t.split('_').count() > 1
                && t.chars()
                    .all(|c| c.is_ascii_digit() || c == '_' || c == '.');
            let t = if ok_underscores {
                t.replace('_', "")
            } else {
                t
            };
            match t.parse::<f64>() {
                Ok(f)
                    if t.bytes()
                        .all(|b| b.is_ascii_digit() || b"+-.eE".contains(&b)) =>
                {
                    Some(Some(f))
                }
                _ => None,
            }
        }
        _ => None,
    }
}

/// JavaScript's `Number(v)`: None for NaN.
fn js_number(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::Bool(b) => Some(f64::from(u8::from(*b))),
        Value::Null => Some(0.0),
        Value::Array(a) => {
            let joined: Vec<String> = a
                .iter()
                .map(|x| match x {
                    Value::String(s) => s.clone(),
                    Value::Null => String::new(),
                    other => other.to_string(),
                })
                .collect();
            js_number(&Value::String(joined.join(",")))
        }
        Value::Object(_) => None,
        Value::String(s) => {
            let t = s.trim();
            if t.is_empty() {
                return Some(0.0);
            }
            for (prefix, radix) in [("0x", 16), ("0X", 16), ("0o", 8), ("0b", 2)] {
                if let Some(d) = t.strip_prefix(prefix) {
                    return i64::from_str_radix(d, radix).ok().map(|n| n as f64);
                }
            }
            match t.trim_start_matches(['+', '-']) {
                "Infinity" => Some(if t.starts_with('-') { -1e300 } else { 1e300 }),
                u if u
                    .bytes()
                    .all(|b| b.is_ascii_digit() || b"eE.+-".contains(&b))
                    && u.bytes().any(|b| b.is_ascii_digit()) =>
                {
                    t.parse::<f64>().ok()
                }
                _ => None,
            }
        }
    }
}

fn number_value(f: f64) -> Value {
    if f.fract() == 0.0 && f.abs() < 1e15 {
        json!(f as i64)
    } else {
        json!(f)
    }
}

/// Coerce the numeric fields of a body object as a framework's handler reads them. None:
/// the framework refuses the request (pydantic's 422).
fn coerce(fw: Fw, c: &Canon, body: Value) -> Option<Value> {
    let Value::Object(mut m) = body else {
        return Some(body);
    };
    for k in &c.numeric {
        let Some(v) = m.get(k) else { continue };
        let n = match fw {
            Fw::Starlette | Fw::FastapiQuery | Fw::FastapiForm => python_number(v)?,
            Fw::Express | Fw::ExpressQuery | Fw::ExpressForm => js_number(v),
            _ => js_number(v).or_else(|| python_number(v).flatten()),
        };
        match n {
            Some(n) => {
                m.insert(k.clone(), number_value(n));
            }
            None => {
                m.remove(k);
            }
        }
    }
    // String fields: JavaScript's `String(["x"])` is "x"; pydantic refuses a list.
    for k in &c.fields {
        if c.numeric.contains(k) {
            continue;
        }
        if let Some(Value::Array(a)) = m.get(k).cloned() {
            match fw {
                Fw::Starlette | Fw::FastapiQuery | Fw::FastapiForm => return None,
                _ if a.len() == 1 && a[0].is_string() => {
                    m.insert(k.clone(), a[0].clone());
                }
                _ => {}
            }
        }
    }
    Some(Value::Object(m))
}

/// A JSON-RPC message as a lenient server normalises it: method trimmed and lowercased,
/// by-position params, name trimmed. None: not a call it would run.
fn lax_call(v: &Value) -> Option<Value> {
    let o = v.as_object()?;
    let method = o.get("method")?.as_str()?;
    let method = method
        .trim_matches(|c: char| c.is_whitespace() || c.is_control())
        .to_ascii_lowercase();
    let (name, args) = match o.get("params") {
        Some(Value::Object(p)) => (p.get("name").cloned(), p.get("arguments").cloned()),
        Some(Value::Array(p)) => (p.first().cloned(), p.get(1).cloned()),
        _ => (None, None),
    };
    let name = name.and_then(|n| n.as_str().map(|s| Value::from(s.trim())));
    let args = match args {
        Some(Value::Array(a)) => a.first().cloned(),
        other => other,
    };
    Some(
        json!({"jsonrpc": "2.0", "id": o.get("id").cloned().unwrap_or(Value::Null), "method": method,
        "params": {"name": name, "arguments": args.unwrap_or(json!({}))}}),
    )
}

/// The MCP Python SDK: strict messages; a batch all or nothing.
fn sdk_message(v: &Value) -> bool {
    let Some(o) = v.as_object() else { return false };
    o.get("jsonrpc") == Some(&json!("2.0"))
        && o.get("method").is_some_and(Value::is_string)
        && matches!(
            o.get("id"),
            None | Some(Value::String(_) | Value::Number(_))
        )
        && matches!(o.get("params"), None | Some(Value::Object(_)))
        && (o.get("method") != Some(&json!("tools/call"))
            || (v.pointer("/params/name").is_some_and(Value::is_string)
                && matches!(
                    v.pointer("/params/arguments"),
                    None | Some(Value::Object(_))
                )))
}

fn read(fw: Fw, c: &Canon, w: &Wire) -> Option<Reading> {
    let path = w.path();
    let routed = match fw {
        Fw::Starlette | Fw::FastapiQuery | Fw::FastapiForm | Fw::McpSdk => {
            starlette_routes(path, &c.path)
        }
        Fw::Express | Fw::ExpressQuery | Fw::ExpressForm | Fw::LaxJsonRpc => {
            express_routes(path, &c.path)
        }
        Fw::Lenient => lenient_routes(path, &c.path),
    };
    if !routed {
        return None;
    }
    let query = w.query();
    let method = match fw {
        // Node's parser refuses lowercase methods; Starlette matches them exactly.
        Fw::Starlette | Fw::FastapiQuery | Fw::FastapiForm | Fw::McpSdk => w.method.clone(),
        Fw::Express | Fw::ExpressQuery | Fw::ExpressForm | Fw::LaxJsonRpc => {
            if w.method != w.method.to_ascii_uppercase() {
                return None;
            }
            // With `method-override`.
            w.header("x-http-method-override")
                .map_or_else(|| w.method.clone(), |m| m.to_ascii_uppercase())
        }
        Fw::Lenient => {
            let q = pairs(query, false);
            w.header("x-http-method-override")
                .or(w.header("x-http-method"))
                .or(w.header("x-method-override"))
                .or(q.get("_method").and_then(Value::as_str))
                .unwrap_or(&w.method)
                .to_ascii_uppercase()
        }
    };
    if method != c.method {
        return None;
    }
    if c.body.is_none() {
        return Some(Reading { method, body: None });
    }
    let (essence, charset) = media(w);
    let body: Value = match fw {
        Fw::Starlette => {
            let jsonish = essence.is_empty()
                || essence == "application/json"
                || (essence.starts_with("application/") && essence.ends_with("+json"));
            if !jsonish {
                return None;
            }
            serde_json::from_str(&python_text(&w.body)?).ok()?
        }
        // A handler that reads some fields from the query string and the rest from the body.
        Fw::FastapiQuery => {
            let mut v = python_text(&w.body)
                .and_then(|t| serde_json::from_str(&t).ok())
                .unwrap_or_else(|| json!({}));
            merge_query(&mut v, pairs(query, false), c);
            v
        }
        Fw::FastapiForm => form_fields(w, &w.body, false)?,
        Fw::Express => {
            if essence != "application/json" {
                return None;
            }
            let bytes = decoded(w, true)?;
            let text = match charset.as_deref() {
                None | Some("utf-8") | Some("utf8") => String::from_utf8(
                    bytes
                        .strip_prefix(&[0xef, 0xbb, 0xbf])
                        .unwrap_or(&bytes)
                        .to_vec(),
                )
                .ok()?,
                Some(cs) if cs.starts_with("utf-16") => python_text(&bytes)?,
                Some(_) => return None,
            };
            let v: Value = serde_json::from_str(&text).ok()?;
            if !(v.is_object() || v.is_array()) {
                return None;
            }
            v
        }
        Fw::ExpressQuery => {
            let mut v = (essence == "application/json")
                .then(|| decoded(w, true))
                .flatten()
                .and_then(|b| serde_json::from_slice(&b).ok())
                .unwrap_or_else(|| json!({}));
            merge_query(&mut v, pairs(query, true), c);
            v
        }
        Fw::ExpressForm => form_fields(w, &w.body, true)?,
        Fw::McpSdk => {
            if essence != "application/json" || w.header("content-encoding").is_some() {
                return None;
            }
            let v: Value = serde_json::from_slice(&w.body).ok()?;
            let ok = match &v {
                Value::Array(items) => !items.is_empty() && items.iter().all(sdk_message),
                one => sdk_message(one),
            };
            if !ok {
                return None;
            }
            v
        }
        Fw::LaxJsonRpc => {
            let v = parse_first_wins(&python_text(&decoded(w, false)?)?)?;
            match v {
                Value::Array(items) => {
                    let calls: Vec<Value> = items.iter().filter_map(lax_call).collect();
                    if calls.is_empty() {
                        return None;
                    }
                    Value::Array(calls)
                }
                one => lax_call(&one)?,
            }
        }
        Fw::Lenient => {
            let bytes = decoded(w, true)?;
            let mut v = match form_fields(w, &bytes, false) {
                Some(f) => f,
                None => parse_first_wins(&python_text(&bytes)?)?,
            };
            merge_query(&mut v, pairs(query, false), c);
            v
        }
    };
    // Only readings that carry what the rules read count: a form without the field is a
    // request the framework refuses, and a query without one is what the body readers read.
    let in_query = |f: &String| pairs(query, true).get(f).is_some();
    match fw {
        Fw::FastapiForm | Fw::ExpressForm if !c.fields.iter().any(|f| body.get(f).is_some()) => {
            return None;
        }
        Fw::FastapiQuery | Fw::ExpressQuery if !c.fields.iter().any(in_query) => return None,
        _ => {}
    }
    let body = if c.mcp { body } else { coerce(fw, c, body)? };
    Some(Reading {
        method,
        body: Some(body),
    })
}

// ---------------------------------------------------------------------------------------------
// The test

#[test]
fn differential_framework_readings() {
    let set = examples();
    let cases = canonical_cases(&set);
    // Every enforcing rule with a path, body or MCP conditions is some case's deciding rule.
    let mut covered = std::collections::BTreeSet::new();
    for c in &cases {
        if let Outcome::Decided(_, rule) = proxy(&set, c, &canonical_wire(c)) {
            covered.insert(rule);
        }
    }
    for rule in set.rules() {
        if let Matcher::Http(h) = &rule.matcher
            && rule.mode == Mode::Enforce
            && (h.path.is_some() || !h.body.is_empty() || h.mcp.is_some())
        {
            assert!(
                covered.contains(&rule.id),
                "no canonical case is decided by {}",
                rule.id
            );
        }
    }

    let (mut total, mut refused, mut same, mut severer, mut unread, mut differ) =
        (0, 0, 0, 0, 0, 0);
    let mut by_reader: BTreeMap<String, usize> = BTreeMap::new();
    let mut failures = Vec::new();
    let mut unread_list = Vec::new();
    for c in &cases {
        let base = canonical_wire(c);
        let canonical = proxy(&set, c, &base);
        let reading = Reading {
            method: c.method.clone(),
            body: c.body.clone(),
        };
        assert_eq!(
            canonical,
            decide(&set, c, &reading),
            "{}: the canonical request is decided as the engine decides it",
            c.name
        );
        let mut variants = vec![base.clone()];
        variants.extend(path_variants(c, &base));
        variants.extend(method_variants(c, &base));
        if c.mcp {
            variants.extend(mcp_variants(c, &base));
        }
        variants.extend(body_variants(c, &base));
        for w in variants {
            total += 1;
            let got = proxy(&set, c, &w);
            let readings: Vec<(Fw, Outcome, bool)> = FRAMEWORKS
                .iter()
                .filter_map(|&fw| read(fw, c, &w).map(|r| (fw, r)))
                .map(|(fw, r)| {
                    let batch = r.body.as_ref().is_some_and(Value::is_array);
                    (fw, decide(&set, c, &r), batch)
                })
                .collect();
            for (fw, _, _) in &readings {
                *by_reader.entry(format!("{fw:?}")).or_default() += 1;
            }
            match &got {
                Outcome::Refused(_) => refused += 1,
                Outcome::Decided(v, _) => {
                    if readings.is_empty() {
                        if got == canonical {
                            same += 1;
                        } else {
                            unread += 1;
                            unread_list.push(format!("{} | {} | {got:?}", c.name, w.what));
                        }
                        continue;
                    }
                    let mut all_same = true;
                    let mut ok = true;
                    for (fw, want, batch) in &readings {
                        if *want == got {
                            continue;
                        }
                        all_same = false;
                        let severer_batch =
                            *batch && matches!(want, Outcome::Decided(wv, _) if v > wv);
                        if !severer_batch {
                            ok = false;
                            failures.push(format!(
                                "{} | {} | proxy {got:?}, {fw:?} acts on it as {want:?}",
                                c.name, w.what
                            ));
                        }
                    }
                    if all_same {
                        same += 1;
                    } else if ok {
                        severer += 1;
                    } else {
                        differ += 1;
                    }
                }
            }
        }
    }
    // Straight to stdout, past the test harness's capture: the count shows in `cargo test`,
    // and `cargo xtask test` reads it for its summary (keep the words up to "differently").
    // One write of the whole line, so that libtest's progress dots cannot split it.
    let line = format!(
        "differential: {total} variants, {} refused or decided as canonical, {differ} acted on differently ({refused} refused, {same} decided as canonical, {severer} batches decided more severely than a lenient reader acting on part of them; {unread} acted on by no modelled framework); framework readings: {by_reader:?}\n",
        refused + same + severer
    );
    let _ = std::io::stdout().lock().write_all(line.as_bytes());
    for u in &unread_list {
        println!("  acted on by no modelled framework: {u}");
    }
    assert!(
        failures.is_empty(),
        "{} variants a framework acts on differently than the proxy decides:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(total > 500, "{total} variants");
}
