//! Raw bytes → the proxy's request parsing and normalisation → an engine decision.
//!
//! The head is parsed with httparse (hyper's parser), then goes through exactly what the
//! proxy runs: the framing check, target normalisation, the strict JSON body parse and the
//! per-call decision of JSON-RPC batches, against a policy with host, path, header, body and
//! MCP rules.
#![no_main]

use std::sync::OnceLock;

use governance::{
    engine::{AgentRef, AgentRules, Engine},
    policy,
    proxy::{decide_request, parse_json, request},
};
use hyper::{HeaderMap, Method, Uri, Version, header::HeaderName, header::HeaderValue};
use libfuzzer_sys::fuzz_target;

const POLICY: &str = r#"
name: fuzz
agents: { label: fuzz }
defaults: { http: block }
rules:
  - { id: small, http: { host: api.example, method: POST, path: /v1/refunds, body: ['$.amount <= 100'] }, verdict: allow, reason: r }
  - { id: big, http: { host: api.example, method: POST, path: /v1/refunds, body: ['$.amount > 1000', '$.currency in ["usd", "eur"]'] }, verdict: block, reason: r }
  - { id: any-get, http: { host: "*.example", method: GET, path: /v1/** }, verdict: allow, reason: r }
  - { id: hdr, http: { headers: { x-admin: "yes*" } }, verdict: escalate, escalate: { timeout: 1m }, reason: r }
  - { id: shell, http: { path: /mcp, mcp: { tool: "run_*", arguments: ['$.cmd matches "rm *"'] } }, verdict: block, reason: r }
  - { id: search, http: { path: /mcp, mcp: { tool: web_search } }, verdict: throttle, throttle: { rate: 5, per: 1m }, reason: r }
  - { id: tunnel, http: { method: CONNECT }, verdict: allow, reason: r }
"#;

fn setup() -> &'static (Engine, AgentRules) {
    static S: OnceLock<(Engine, AgentRules)> = OnceLock::new();
    S.get_or_init(|| {
        let set = policy::parse(&[("fuzz.yaml".into(), POLICY.into())]).expect("fuzz policy");
        let engine = Engine::new(set, 1);
        let view = engine.agent(&AgentRef {
            name: "fuzz".into(),
            cgroup: "fuzz".into(),
            label: Some("fuzz".into()),
        });
        (engine, view)
    })
}

fuzz_target!(|data: &[u8]| {
    let mut slots = [httparse::EMPTY_HEADER; 32];
    let mut req = httparse::Request::new(&mut slots);
    let Ok(httparse::Status::Complete(len)) = req.parse(data) else {
        return;
    };
    let (Some(method), Some(path)) = (req.method, req.path) else {
        return;
    };
    let (Ok(method), Ok(uri)) = (method.parse::<Method>(), path.parse::<Uri>()) else {
        return;
    };
    let mut headers = HeaderMap::new();
    for h in req.headers.iter() {
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(h.name.as_bytes()),
            HeaderValue::from_bytes(h.value),
        ) {
            headers.append(n, v);
        }
    }
    let raw_cl = data[..len]
        .windows(16)
        .any(|w| w.eq_ignore_ascii_case(b"\ncontent-length:"));
    if request::check_framing(&headers, raw_cl).is_err() {
        return;
    }
    let Ok(head) = request::target(&method, &uri, Version::HTTP_11, &headers) else {
        return;
    };
    let _ = head.url();
    let _ = head.path_and_query();
    let (engine, view) = setup();
    let json = if engine.needs_body(view, &head.host) {
        parse_json(&data[len..]).ok()
    } else {
        None
    };
    let _ = engine.is_mcp_endpoint(view, &head.host, &head.path);
    let want_headers = engine.needs_headers(view, &head.host);
    let mut http = request::to_engine(&head, want_headers.then_some(&headers), None);
    let (decision, _mcp) = decide_request(engine, view, &mut http, json);
    assert_eq!(decision.generation, 1);
});
