//! Raw bytes → the proxy's request parsing and normalisation → an engine decision.
//!
//! The head is parsed with httparse (hyper's parser), then goes through exactly what the
//! proxy runs: the raw framing follower and the framing check, target normalisation, and the
//! canonical interpretation (`proxy::canonical::evaluate`: content codings, charsets, the strict
//! JSON body parse, ambiguity checks, JSON-RPC batches), against a policy with host, path,
//! header, body and MCP rules. A normalised path is a fixed point of normalisation.
#![no_main]

use std::sync::OnceLock;

use governance::{
    engine::{AgentRef, AgentRules, Engine},
    policy,
    proxy::{canonical, framing::Framer, request},
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
            pod: None,
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
    let mut framer = Framer::default();
    let mut heads = Vec::new();
    framer.feed(data, &mut |h| heads.push(h));
    if request::check_framing(&headers, heads.first().copied()).is_err() {
        return;
    }
    let Ok(head) = request::target(&method, &uri, Version::HTTP_11, &headers) else {
        return;
    };
    let _ = head.url();
    let _ = head.path_and_query();
    if let Ok(again) = request::normalise_path(&head.path) {
        assert_eq!(again, head.path, "a normalised path is a fixed point");
    }
    let (engine, view) = setup();
    if let Ok(ev) = canonical::evaluate(engine, view, &head, &headers, Some(&data[len..]), 1 << 20) {
        assert_eq!(ev.decision.generation, 1);
    }
});
