//! What the canonical interpretation decides on, and what it refuses, case by case, on the
//! shipped example policies (the proxy's own tests send the same through sockets).

use std::path::PathBuf;

use hyper::{HeaderMap, Method, Uri, Version, header::HeaderName, header::HeaderValue};
use serde_json::json;

use super::*;
use crate::{
    engine::{AgentRef, Engine},
    policy,
    proxy::request,
};

pub(crate) fn examples() -> policy::PolicySet {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../policies/examples");
    policy::load_dir(&dir).unwrap()
}

/// A fresh engine (no throttle tokens taken) for the example agent `agent`.
fn engine_for(cgroup: &str, label: Option<&str>) -> (Engine, AgentRules) {
    let engine = Engine::new(examples(), 1);
    let view = engine.agent(&AgentRef {
        name: label.unwrap_or(cgroup).into(),
        cgroup: cgroup.into(),
        label: label.map(Into::into),
        pod: None,
    });
    (engine, view)
}

/// Evaluate a request as the proxy does: `target` on the parsed head, then [`evaluate`].
pub(crate) fn eval(
    engine: &Engine,
    view: &AgentRules,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<(String, String), Refused> {
    let mut map = HeaderMap::new();
    for (k, v) in headers {
        map.append(
            HeaderName::from_bytes(k.as_bytes()).unwrap(),
            HeaderValue::from_bytes(v.as_bytes()).unwrap(),
        );
    }
    let head = request::target(
        &Method::from_bytes(method.as_bytes()).unwrap(),
        &target.parse::<Uri>().unwrap(),
        Version::HTTP_11,
        &map,
    )
    .expect("a valid head");
    let ev = evaluate(engine, view, &head, &map, Some(body), 1 << 20)?;
    Ok((
        ev.decision.verdict().as_str().to_owned(),
        ev.decision.rule.unwrap_or_else(|| "default".into()),
    ))
}

pub(crate) fn gzip(data: &[u8]) -> Vec<u8> {
    let mut out = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 255];
    out.extend(miniz_oxide::deflate::compress_to_vec(data, 6));
    out.extend(crc32fast::hash(data).to_le_bytes());
    out.extend((data.len() as u32).to_le_bytes());
    out
}

pub(crate) fn zlib(data: &[u8]) -> Vec<u8> {
    miniz_oxide::deflate::compress_to_vec_zlib(data, 6)
}

const JSON: (&str, &str) = ("content-type", "application/json");
const HOST: (&str, &str) = ("host", "api.payments.example");

fn refund(body: &[u8], extra: &[(&str, &str)]) -> Result<(String, String), Refused> {
    let (engine, view) = engine_for("agents/refund-1", None);
    let mut headers = vec![HOST];
    headers.extend_from_slice(extra);
    eval(&engine, &view, "POST", "/v1/refunds", &headers, body)
}

/// [`verdict`] of a small refund posted with the query `query`.
fn refund_with_query(query: &str) -> String {
    let (engine, view) = engine_for("agents/refund-1", None);
    let target = format!("/v1/refunds?{query}");
    verdict(eval(
        &engine,
        &view,
        "POST",
        &target,
        &[HOST, JSON],
        br#"{"amount":50}"#,
    ))
}

fn verdict(r: Result<(String, String), Refused>) -> String {
    match r {
        Ok((v, rule)) => format!("{v} {rule}"),
        Err(e) => format!("refused {} {}", e.status().as_u16(), e.rule()),
    }
}

#[test]
fn plain_json_is_decided() {
    assert_eq!(
        verdict(refund(br#"{"amount": 5000}"#, &[JSON])),
        "block refund-agent/refund-large"
    );
    assert_eq!(
        verdict(refund(br#"{"amount": 50}"#, &[JSON])),
        "allow refund-agent/refund-small"
    );
    // An empty body: no field, no rule with body conditions matches.
    assert_eq!(verdict(refund(b"", &[JSON])), "block default");
}

#[test]
fn content_codings_are_decoded_or_refused() {
    let body = br#"{"amount": 5000}"#;
    assert_eq!(
        verdict(refund(&gzip(body), &[JSON, ("content-encoding", "gzip")])),
        "block refund-agent/refund-large"
    );
    assert_eq!(
        verdict(refund(&gzip(body), &[JSON, ("content-encoding", "X-GZIP")])),
        "block refund-agent/refund-large"
    );
    assert_eq!(
        verdict(refund(
            &zlib(body),
            &[JSON, ("content-encoding", "deflate")]
        )),
        "block refund-agent/refund-large"
    );
    for coding in [
        "br",
        "zstd",
        "compress",
        "gzip, gzip",
        "gzip, identity",
        "weird",
    ] {
        assert_eq!(
            verdict(refund(&gzip(body), &[JSON, ("content-encoding", coding)])),
            "refused 415 builtin:body",
            "{coding}"
        );
    }
    // A second member, garbage after the member, a bad checksum, a raw deflate stream: 400.
    let mut two = gzip(body);
    two.extend(gzip(br#"{"amount": 1}"#));
    let mut garbage = gzip(body);
    garbage.push(0);
    let mut bad_crc = gzip(body);
    let n = bad_crc.len();
    bad_crc[n - 5] ^= 1;
    let mut trailing = zlib(body);
    trailing.extend(b"xx");
    for (bytes, coding) in [
        (two, "gzip"),
        (garbage, "gzip"),
        (bad_crc, "gzip"),
        (miniz_oxide::deflate::compress_to_vec(body, 6), "deflate"),
        (trailing, "deflate"),
        (body.to_vec(), "gzip"),
        (gzip(body)[..20].to_vec(), "gzip"),
    ] {
        assert_eq!(
            verdict(refund(&bytes, &[JSON, ("content-encoding", coding)])),
            "refused 400 builtin:body",
            "{coding} {bytes:?}"
        );
    }
    // A bomb: over 100 times its size, or over the body limit.
    let bomb = gzip(&[b' '; 1 << 20]);
    assert_eq!(
        verdict(refund(&bomb, &[JSON, ("content-encoding", "gzip")])),
        "refused 413 builtin:body"
    );
    // Identity is no coding at all.
    assert_eq!(
        verdict(refund(body, &[JSON, ("content-encoding", "identity")])),
        "block refund-agent/refund-large"
    );
}

#[test]
fn charsets_byte_order_marks_and_bad_utf8_are_refused() {
    let body = br#"{"amount": 5000}"#;
    for ct in [
        "application/json; charset=utf-16",
        "application/json; charset=latin1",
        "application/json; charset=utf-8; charset=utf-16",
    ] {
        assert_eq!(
            verdict(refund(body, &[("content-type", ct)])),
            "refused 415 builtin:body",
            "{ct}"
        );
    }
    for ct in [
        "application/json; charset=utf-8",
        "application/json;charset=\"UTF-8\"",
        "application/json; charset=utf8",
    ] {
        assert_eq!(
            verdict(refund(body, &[("content-type", ct)])),
            "block refund-agent/refund-large",
            "{ct}"
        );
    }
    let utf16: Vec<u8> = r#"{"amount": 5000}"#.encode_utf16().flat_map(u16::to_le_bytes).collect();
    let mut bom16 = vec![0xff, 0xfe];
    bom16.extend(&utf16);
    let mut bom8 = vec![0xef, 0xbb, 0xbf];
    bom8.extend(body);
    assert_eq!(verdict(refund(&bom8, &[JSON])), "refused 415 builtin:body");
    assert_eq!(verdict(refund(&bom16, &[JSON])), "refused 415 builtin:body");
    // UTF-16 without a mark (Python's json.loads detects it): not JSON to the proxy.
    assert_eq!(
        verdict(refund(&utf16, &[JSON])),
        "refused 400 builtin:invalid-json"
    );
    assert_eq!(
        verdict(refund(b"{\"amount\": 5000, \"n\": \"\xff\"}", &[JSON])),
        "refused 400 builtin:body"
    );
}

#[test]
fn content_types() {
    let body = br#"{"amount": 5000}"#;
    // JSON under another content type, or none, is decided on (Starlette reads it anyway).
    for extra in [
        vec![("content-type", "text/plain")],
        vec![],
        vec![("content-type", "application/vnd.api+json")],
    ] {
        assert_eq!(
            verdict(refund(body, &extra)),
            "block refund-agent/refund-large",
            "{extra:?}"
        );
    }
    // Form bodies carry fields too: refused.
    assert_eq!(
        verdict(refund(
            b"amount=5000",
            &[("content-type", "application/x-www-form-urlencoded")]
        )),
        "refused 415 builtin:body"
    );
    assert_eq!(
        verdict(refund(
            b"--b\r\nContent-Disposition: form-data; name=\"amount\"\r\n\r\n5000\r\n--b--\r\n",
            &[("content-type", "multipart/form-data; boundary=b")]
        )),
        "refused 415 builtin:body"
    );
    // Not JSON: 415 under another type, 400 under JSON or none.
    assert_eq!(
        verdict(refund(
            b"<amount>5000</amount>",
            &[("content-type", "application/xml")]
        )),
        "refused 415 builtin:body"
    );
    assert_eq!(
        verdict(refund(b"amount: 5000", &[JSON])),
        "refused 400 builtin:invalid-json"
    );
    assert_eq!(
        verdict(refund(b"amount: 5000", &[])),
        "refused 400 builtin:invalid-json"
    );
    // Two Content-Types.
    assert_eq!(
        verdict(refund(body, &[JSON, ("content-type", "text/plain")])),
        "refused 400 builtin:request"
    );
}

#[test]
fn duplicates_numbers_and_case_variants() {
    for body in [
        r#"{"amount": 50, "amount": 5000}"#,
        r#"{"amount": 5000, "amount": 50}"#,
        r#"{"amount": 50, "\u0061mount": 5000}"#,
        r#"{"amount": 50, "meta": {"a": 1, "a": 2}}"#,
    ] {
        assert_eq!(
            verdict(refund(body.as_bytes(), &[JSON])),
            "refused 400 builtin:invalid-json",
            "{body}"
        );
    }
    for body in [
        r#"{"amount": "5000"}"#,
        r#"{"amount": 5e3}"#,
        r#"{"amount": 5000.0}"#,
        r#"{"amount": "5e3"}"#,
        r#"{"amount": " +5000 "}"#,
    ] {
        assert_eq!(
            verdict(refund(body.as_bytes(), &[JSON])),
            "block refund-agent/refund-large",
            "{body}"
        );
    }
    for body in [
        r#"{"amount": "0x1388"}"#,
        r#"{"amount": "05000"}"#,
        r#"{"amount": "5_000"}"#,
        r#"{"amount": ""}"#,
        r#"{"amount": "Infinity"}"#,
        r#"{"amount": [5000]}"#,
        r#"{"amount": true}"#,
        r#"{"amount": 50, "Amount": 5000}"#,
        r#"{"AMOUNT": 5000}"#,
    ] {
        assert_eq!(
            verdict(refund(body.as_bytes(), &[JSON])),
            "refused 400 builtin:body",
            "{body}"
        );
    }
    // Leading zeros and hex are not JSON numbers at all.
    assert_eq!(
        verdict(refund(br#"{"amount": 05000}"#, &[JSON])),
        "refused 400 builtin:invalid-json"
    );
}

#[test]
fn query_fields_method_overrides_and_arrays() {
    let (engine, view) = engine_for("agents/refund-1", None);
    let body = br#"{"amount": 50}"#;
    for target in [
        "/v1/refunds?amount=5000",
        "/v1/refunds?Amount=5000",
        "/v1/refunds?%61mount=5000",
        "/v1/refunds?amount[]=5000",
        "/v1/refunds?x=1;amount=5000",
    ] {
        assert_eq!(
            verdict(eval(&engine, &view, "POST", target, &[HOST, JSON], body)),
            "refused 400 builtin:body",
            "{target}"
        );
    }
    assert_eq!(
        verdict(eval(
            &engine,
            &view,
            "POST",
            "/v1/refunds?note=amount",
            &[HOST, JSON],
            body
        )),
        "allow refund-agent/refund-small"
    );
    let (engine, view) = engine_for("agents/support-1", Some("support-agent"));
    let db = ("host", "db-api.internal");
    // POST overridden to DELETE: the upstream deletes.
    for (h, target) in [
        (
            ("x-http-method-override", "DELETE"),
            "/v1/tables/customers/rows/42",
        ),
        (("x-http-method", "delete"), "/v1/tables/customers/rows/42"),
        (
            ("x-method-override", "DELETE"),
            "/v1/tables/customers/rows/42",
        ),
        (
            ("x-other", "1"),
            "/v1/tables/customers/rows/42?_method=DELETE",
        ),
    ] {
        assert_eq!(
            verdict(eval(&engine, &view, "PATCH", target, &[db, h, JSON], b"{}")),
            "refused 400 builtin:request",
            "{h:?} {target}"
        );
    }
    // An override naming the request's own method changes nothing.
    assert_eq!(
        verdict(eval(
            &engine,
            &view,
            "PATCH",
            "/v1/tables/customers/rows/42",
            &[db, ("x-http-method-override", "PATCH"), JSON],
            b"{}"
        )),
        "allow support-db/update-one-row"
    );
    // An array where the rules read one object.
    assert_eq!(
        verdict(eval(
            &engine,
            &view,
            "POST",
            "/v1/query",
            &[db, JSON],
            br#"[{"sql": "DELETE FROM customers"}]"#
        )),
        "refused 400 builtin:body"
    );
    // A path no body rule covers: the body is not looked at, whatever it is.
    assert_eq!(
        verdict(eval(
            &engine,
            &view,
            "GET",
            "/v1/tables/customers/rows/42",
            &[db, ("content-encoding", "br")],
            b"\xff\xfe"
        )),
        "allow support-db/read-rows"
    );
}

/// [`verdict`] of `body` posted to the research agent's MCP endpoint.
fn research_mcp(body: serde_json::Value) -> String {
    let (engine, view) = engine_for("agents/research", Some("research-agent"));
    let host = ("host", "mcp.search.example");
    verdict(eval(
        &engine,
        &view,
        "POST",
        "/mcp",
        &[host, JSON],
        body.to_string().as_bytes(),
    ))
}

#[test]
fn json_rpc_batches_and_variants() {
    let call = |tool: &str| json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": tool, "arguments": {}}});
    let run = research_mcp;
    assert_eq!(run(call("run_shell")), "block research-agent/no-shell-tool");
    assert_eq!(
        run(json!([call("list_tools"), call("run_shell")])),
        "block research-agent/no-shell-tool"
    );
    for bad in [
        json!([call("run_shell"), 5]),
        json!([call("run_shell"), "x"]),
        json!([call("run_shell"), null]),
        json!([call("run_shell"), [call("run_shell")]]),
        json!([call("run_shell"), {"jsonrpc": "2.0", "id": 2}]),
        json!([]),
        json!([{"jsonrpc": "1.0", "id": 1, "method": "tools/call", "params": {"name": "run_shell"}}]),
        json!({"jsonrpc": "2.0", "id": 1, "method": "Tools/Call", "params": {"name": "run_shell"}}),
        json!({"jsonrpc": "2.0", "id": 1, "method": " tools/call", "params": {"name": "run_shell"}}),
        json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call\u{0}", "params": {"name": "run_shell"}}),
        json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": ["run_shell", {}]}),
        json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "run_shell "}}),
        json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "run_shell", "arguments": "rm"}}),
        json!({"jsonrpc": "2.0", "id": {"x": 1}, "method": "tools/call", "params": {"name": "run_shell"}}),
        json!({"hello": "world"}),
        json!("tools/call"),
    ] {
        assert_eq!(run(bad.clone()), "refused 400 builtin:jsonrpc", "{bad}");
    }
    // Duplicate names inside params: refused as JSON.
    let (engine, view) = engine_for("agents/research", Some("research-agent"));
    assert_eq!(
        verdict(eval(
            &engine,
            &view,
            "POST",
            "/mcp",
            &[("host", "mcp.search.example"), JSON],
            br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"list_tools","name":"run_shell"}}"#
        )),
        "refused 400 builtin:invalid-json"
    );
    // Responses and notifications pass through to the decision.
    assert_eq!(
        run(json!({"jsonrpc": "2.0", "id": 3, "result": {}})),
        "allow default"
    );
    assert_eq!(
        run(json!({"jsonrpc": "2.0", "method": "notifications/initialized"})),
        "allow default"
    );
    // Argument conditions read one way: `url` compared with a string glob.
    assert_eq!(
        run(
            json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "fetch_url", "arguments": {"url": ["http://x"]}}})
        ),
        "refused 400 builtin:body"
    );
}

#[test]
fn paths_match_in_canonical_form() {
    let (engine, view) = engine_for("agents/refund-1", None);
    let body = br#"{"amount": 5000}"#;
    for target in [
        "/v1/refunds",
        "/v1/refunds/",
        "/V1/REFUNDS",
        "//v1//refunds",
        "/v1/%72efunds",
        "/v1/%52efunds/",
    ] {
        assert_eq!(
            verdict(eval(&engine, &view, "POST", target, &[HOST, JSON], body)),
            "block refund-agent/refund-large",
            "{target}"
        );
    }
}

#[test]
fn tool_calls_without_a_server_are_checked_too() {
    let (engine, view) = engine_for("agents/research", Some("research-agent"));
    let call = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
        "params": {"name": "fetch_url", "arguments": {"url": {"u": "http://x"}}}});
    assert!(matches!(
        check_tool_call(&engine, &view, &call),
        Err(Refused::Ambiguous(_))
    ));
    let call = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
        "params": {"name": "fetch_url", "arguments": {"url": "http://x"}}});
    assert_eq!(check_tool_call(&engine, &view, &call), Ok(()));
}

/// Rules from the red team's findings of 2026-12-04 (none of them in the shipped examples).
const FOUND: &str = r#"
name: found
agents: { cgroup: agents/found }
rules:
  - id: dry-run-only
    http: { host: api.example, method: POST, path: /v1/deploy, headers: { x-dry-run: "true" } }
    verdict: allow
    reason: dry runs are fine
  - id: real-deploys
    http: { host: api.example, method: POST, path: /v1/deploy }
    verdict: block
    reason: real deploys are not
  - id: protected-user
    http: { host: api.example, method: POST, path: /v1/users/delete, body: ['$.user_id == 9007199254740992'] }
    verdict: block
    reason: this user is protected
  - id: big-transfer
    http: { host: mcp.example, path: /mcp, mcp: { tool: transfer, arguments: ['$.payment.amount > 1000'] } }
    verdict: block
    reason: no big transfers
  - id: no-ceo
    http: { host: mcp.example, path: /mcp, mcp: { tool: notify, arguments: ['$.recipients contains "ceo@corp.example"'] } }
    verdict: block
    reason: never mail the CEO
  - id: no-loopback-by-ip
    http: { host: 127.0.0.1 }
    verdict: block
    reason: not by its address
  - id: no-repo-delete
    http: { host: api.example, method: DELETE, path: "/v1/repos/*" }
    verdict: block
    reason: agents never delete repos
  - id: public-file
    http: { host: files.example, method: GET, path: /files/public.txt }
    verdict: allow
    reason: the public file
  - id: other-files
    http: { host: files.example, path: "/files/*" }
    verdict: block
    reason: only the public file
  - id: plain-http
    http: { host: mcp.example, path: /mcp, mcp: { tool: fetch_url, arguments: ['$.url matches "http://*"'] } }
    verdict: block
    reason: no plain-http fetches
  - id: no-drops
    http: { host: mcp.example, path: /mcp, mcp: { tool: sql, arguments: ['$.query contains "drop table"', '$.db in ["prod"]'] } }
    verdict: block
    reason: no drops in prod
  - id: no-export
    http: { host: reports.example, method: GET, path: /v1/export }
    verdict: block
    reason: no bulk exports
  - id: no-probe
    http: { host: reports.example, method: HEAD, path: /v1/probe }
    verdict: block
    reason: not probed
  - id: no-job-cancel
    http: { host: jobs.example, method: POST, path: "/v1/jobs/*:cancel" }
    verdict: block
    reason: jobs run to the end
  - id: no-self-delete
    http: { host: jobs.example, method: DELETE, path: "/v1/users/@me" }
    verdict: block
    reason: agents keep their account
  - id: encoded-in-rule
    http: { host: jobs.example, method: GET, path: "/v1/tags/a%2Bb" }
    verdict: block
    reason: written escaped in the rule
  - id: prod-env
    http: { host: api.example, method: POST, path: /v1/env, headers: { x-env: production } }
    verdict: block
    reason: production is not the agent's
  - id: bulk-refund
    http: { host: api.example, method: POST, path: /v1/refunds/bulk, body: ['$[0].amount > 100'] }
    verdict: block
    reason: no large bulk refunds
  - id: pay-approval
    http: { host: mcp.example, path: /mcp, mcp: { tool: pay, arguments: ['$.amount > 100'] } }
    verdict: escalate
    escalate: { timeout: 1m, on_timeout: allow }
    reason: a human approves payments
  - id: public-colon
    http: { host: files.example, method: GET, path: "/files/report:2026.txt" }
    verdict: allow
    reason: the public report
"#;

fn found(
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<(String, String), Refused> {
    let engine = Engine::new(
        policy::parse(&[("found.yaml".into(), FOUND.to_owned())]).unwrap(),
        1,
    );
    let view = engine.agent(&AgentRef {
        name: "agents/found".into(),
        cgroup: "agents/found".into(),
        label: None,
        pod: None,
    });
    eval(&engine, &view, method, target, headers, body)
}

/// An MCP `tools/call` of `tool` with `arguments` to the `found` policy's MCP endpoint.
fn found_tool_call(tool: &str, arguments: serde_json::Value) -> String {
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
        "params": {"name": tool, "arguments": arguments}});
    verdict(found(
        "POST",
        "/mcp",
        &[("host", "mcp.example"), JSON],
        body.to_string().as_bytes(),
    ))
}

/// A header a rule reads is decided as the upstream gets it: not when `Connection` names it
/// (it is removed before forwarding), and only when it comes once, under its own name.
#[test]
fn header_conditions_read_what_is_forwarded_once_and_by_its_name() {
    let deploy = |headers: &[(&str, &str)]| {
        let mut all = vec![("host", "api.example")];
        all.extend_from_slice(headers);
        verdict(found("POST", "/v1/deploy", &all, b""))
    };
    assert_eq!(deploy(&[("x-dry-run", "true")]), "allow found/dry-run-only");
    assert_eq!(deploy(&[]), "block found/real-deploys");
    assert_eq!(
        deploy(&[("x-dry-run", "false")]),
        "block found/real-deploys"
    );
    // Named by Connection: the upstream would never get it; a Connection naming anything but
    // hop-by-hop headers and connection options is refused (F3, red team round 5).
    for connection in ["x-dry-run", "keep-alive, X-Dry-Run", "close,x-dry-run "] {
        assert_eq!(
            deploy(&[("x-dry-run", "true"), ("connection", connection)]),
            "refused 400 builtin:request",
            "Connection: {connection}"
        );
    }
    // Control: connection options only.
    assert_eq!(
        deploy(&[("x-dry-run", "true"), ("connection", "keep-alive, TE")]),
        "allow found/dry-run-only"
    );
    // Two copies (Express joins them, Starlette takes the first), either order.
    for pair in [["true", "false"], ["false", "true"], ["true", "true"]] {
        assert_eq!(
            deploy(&[("x-dry-run", pair[0]), ("x-dry-run", pair[1])]),
            "refused 400 builtin:request",
            "{pair:?}"
        );
    }
    // `_` for `-`: the same header to CGI and WSGI servers.
    assert_eq!(
        deploy(&[("x_dry_run", "true")]),
        "refused 400 builtin:request"
    );
    assert_eq!(
        deploy(&[("x-dry-run", "true"), ("x_dry-run", "false")]),
        "refused 400 builtin:request"
    );
    // `.` for `-`: the same header to PHP (red team round 3: PHP's built-in server kept the
    // last copy and Symfony read `false`).
    for other in ["x.dry.run", "x-dry.run", "x.dry-run"] {
        assert_eq!(
            deploy(&[("x-dry-run", "true"), (other, "false")]),
            "refused 400 builtin:request",
            "{other}"
        );
    }
    assert_eq!(
        deploy(&[("x.dry.run", "true")]),
        "refused 400 builtin:request"
    );
    // Headers no rule reads are not judged.
    assert_eq!(
        deploy(&[
            ("x-dry-run", "true"),
            ("x_other", "1"),
            ("accept", "a"),
            ("accept", "b")
        ]),
        "allow found/dry-run-only"
    );
}

/// Integers beyond 2^53 are one number to Python and another to JavaScript: refused where a
/// rule compares a number, as JSON numbers and as numeric strings.
#[test]
fn integers_javascript_rounds_are_refused_where_compared() {
    let delete = |body: &str| {
        verdict(found(
            "POST",
            "/v1/users/delete",
            &[("host", "api.example"), JSON],
            body.as_bytes(),
        ))
    };
    assert_eq!(
        delete(r#"{"user_id": 9007199254740992}"#),
        "block found/protected-user"
    );
    assert_eq!(delete(r#"{"user_id": 42}"#), "allow default");
    for body in [
        r#"{"user_id": 9007199254740993}"#,
        r#"{"user_id": -9007199254740993}"#,
        r#"{"user_id": 18446744073709551615}"#,
        r#"{"user_id": "9007199254740993"}"#,
    ] {
        assert_eq!(delete(body), "refused 400 builtin:body", "{body}");
    }
    // 2^53 itself is exact everywhere.
    assert_eq!(
        delete(r#"{"user_id": "9007199254740992"}"#),
        "block found/protected-user"
    );
}

/// The MCP Python SDK parses a string argument as JSON when the tool's parameter is not a
/// `str`: a condition is refused when it answers differently on the string and on its JSON.
#[test]
fn mcp_arguments_holding_json_text_are_read_as_the_sdk_reads_them() {
    let call = found_tool_call;
    assert_eq!(
        call("transfer", json!({"payment": {"amount": 5000}})),
        "block found/big-transfer"
    );
    assert_eq!(
        call(
            "transfer",
            json!({"payment": "{\"amount\": 5000, \"to\": \"x\"}"})
        ),
        "refused 400 builtin:body"
    );
    assert_eq!(
        call("transfer", json!({"payment": " {\"amount\": 5000}"})),
        "refused 400 builtin:body"
    );
    // Its JSON says the same as the rule's answer on the string: decided.
    assert_eq!(
        call("transfer", json!({"payment": "{\"amount\": 5}"})),
        "allow default"
    );
    assert_eq!(
        call("transfer", json!({"payment": "not json"})),
        "allow default"
    );
    assert_eq!(
        call("notify", json!({"recipients": ["ceo@corp.example"]})),
        "block found/no-ceo"
    );
    assert_eq!(
        call(
            "notify",
            json!({"recipients": "[\"ce\\u006f@corp.example\"]"})
        ),
        "refused 400 builtin:body"
    );
    assert_eq!(
        call("notify", json!({"recipients": "[\"team@corp.example\"]"})),
        "allow default"
    );
}

/// A host that is an IP address is decided in one spelling; numeric hosts in the forms
/// resolvers differ on are refused before any rule.
#[test]
fn ip_literal_hosts_are_canonical_or_refused() {
    let get = |host: &str| verdict(found("GET", "/", &[("host", host)], b""));
    for same in [
        "127.0.0.1",
        "127.0.0.1.",
        "[::ffff:127.0.0.1]",
        "[::FFFF:7f00:1]",
    ] {
        assert_eq!(get(same), "block found/no-loopback-by-ip", "{same}");
    }
    for host in [
        "127.1",
        "2130706433",
        "0x7f000001",
        "0X7F.0.0.1",
        "0177.0.0.1",
        "127.0.0.01",
        "127.0.1",
        "example.123",
    ] {
        let head = request::target(
            &Method::GET,
            &"/".parse::<Uri>().unwrap(),
            Version::HTTP_11,
            &[(hyper::header::HOST, HeaderValue::from_str(host).unwrap())]
                .into_iter()
                .collect(),
        );
        assert!(
            matches!(head, Err(request::Reject::Target(_))),
            "{host}: {head:?}"
        );
    }
    // Names, and addresses in their one spelling, pass as they are.
    for (host, as_decided) in [
        ("api.example", "api.example"),
        ("1.example", "1.example"),
        ("10.1.2.3", "10.1.2.3"),
        ("[2001:DB8:0:0::1]", "2001:db8::1"),
    ] {
        assert_eq!(
            request::ip_literal(request::normalise_host(host)).unwrap(),
            as_decided
        );
    }
}

/// A POST whose body overrides its method (`_method`, which Rails, Laravel and Express's
/// `method-override` act on) is refused on a host whose rules name methods.
#[test]
fn method_overrides_in_bodies_are_refused() {
    let post = |ctype: &str, body: &str| {
        verdict(found(
            "POST",
            "/v1/repos/prod",
            &[("host", "api.example"), ("content-type", ctype)],
            body.as_bytes(),
        ))
    };
    let form = "application/x-www-form-urlencoded";
    let json = "application/json";
    assert_eq!(
        verdict(found(
            "DELETE",
            "/v1/repos/prod",
            &[("host", "api.example")],
            b""
        )),
        "block found/no-repo-delete"
    );
    for (ctype, body) in [
        (form, "_method=DELETE"),
        (form, "name=x&_METHOD=delete"),
        (form, "%5Fmethod=DELETE"),
        (json, r#"{"_method": "DELETE"}"#),
        (json, r#"{"_method": ["DELETE"]}"#),
        (
            "multipart/form-data; boundary=b",
            "--b\r\nContent-Disposition: form-data; name=\"_method\"\r\n\r\nDELETE\r\n--b--\r\n",
        ),
        // A form's type that names JSON anywhere: Laravel reads the body as JSON (red team
        // round 26).
        (
            "application/x-www-form-urlencoded+json",
            r#"{"_method":"DELETE"}"#,
        ),
        (
            "application/x-www-form-urlencoded; x=\"/json\"",
            r#"{"_method":"DELETE"}"#,
        ),
        (
            "application/x-www-form-urlencoded; v=\"+JSON\"",
            r#"{"_method":"DELETE"}"#,
        ),
        // Express's `express.json({type: '*/*'})` reads it whatever the type says.
        (form, r#"{"_method":"DELETE"}"#),
    ] {
        assert_eq!(post(ctype, body), "refused 400 builtin:request", "{body}");
    }
    // No override, or one naming the request's own method: decided as ever.
    for (ctype, body) in [
        (form, "name=x"),
        (form, "_method=POST"),
        (json, r#"{"name": "x", "nested": {"_method": "DELETE"}}"#),
    ] {
        assert_eq!(post(ctype, body), "allow default", "{body}");
    }
}

/// A `_method` in a POST's body is found however the framework decodes it (red team round 2):
/// a form's percent-escapes, a JSON member's `\u` escapes, a gzip or deflate content coding;
/// in a body the proxy does not parse, escaped spellings and multipart names it cannot decode.
#[test]
fn method_overrides_in_bodies_are_found_in_any_spelling_and_coding() {
    let post = |headers: &[(&str, &str)], body: &[u8]| {
        let mut all = vec![("host", "api.example")];
        all.extend_from_slice(headers);
        verdict(found("POST", "/v1/repos/prod", &all, body))
    };
    let form = ("content-type", "application/x-www-form-urlencoded");
    let multipart = ("content-type", "multipart/form-data; boundary=b");
    let text = ("content-type", "text/plain");
    let gz = ("content-encoding", "gzip");
    let deflate = ("content-encoding", "deflate");
    let part = |disposition: &str| {
        format!("--b\r\nContent-Disposition: form-data; {disposition}\r\n\r\nDELETE\r\n--b--\r\n")
            .into_bytes()
    };
    for (what, headers, body) in [
        (
            "form, an escaped letter",
            vec![form],
            b"_%6Dethod=DELETE".to_vec(),
        ),
        (
            "form, all escaped",
            vec![form],
            b"%5F%6D%65thod=DELETE".to_vec(),
        ),
        (
            "form, escaped value",
            vec![form],
            b"name=x&_method=DEL%45TE".to_vec(),
        ),
        (
            "JSON, escaped `_`",
            vec![JSON],
            br#"{"\u005fmethod":"DELETE"}"#.to_vec(),
        ),
        (
            "JSON, escaped `m`",
            vec![JSON],
            br#"{"_\u006dethod":"DELETE"}"#.to_vec(),
        ),
        (
            "JSON, escaped value",
            vec![JSON],
            br#"{"_method":"\u0044ELETE"}"#.to_vec(),
        ),
        ("gzip form", vec![form, gz], gzip(b"_method=DELETE")),
        (
            "gzip form, escaped",
            vec![form, ("content-encoding", "GZIP")],
            gzip(b"%5Fmethod=DELETE"),
        ),
        (
            "x-gzip JSON",
            vec![JSON, ("content-encoding", "x-gzip")],
            gzip(br#"{"_method":"DELETE"}"#),
        ),
        ("deflate form", vec![form, deflate], zlib(b"_method=DELETE")),
        (
            "deflate JSON, escaped",
            vec![JSON, deflate],
            zlib(br#"{"\u005fmethod":"DELETE"}"#),
        ),
        (
            "gzip multipart",
            vec![multipart, gz],
            gzip(&part("name=\"_method\"")),
        ),
        // JSON the proxy's strict parser refuses and JavaScript's `JSON.parse` reads (a
        // repeated key, the last of which counts; a lone surrogate; a number past a double).
        (
            "JSON, escaped, repeated key",
            vec![JSON],
            br#"{"\u005fmethod":"POST","\u005fmethod":"DELETE"}"#.to_vec(),
        ),
        (
            "JSON, escaped, lone surrogate",
            vec![JSON],
            br#"{"\u005fmethod":"DELETE","x":"\ud800"}"#.to_vec(),
        ),
        (
            "JSON, escaped, 1e400",
            vec![JSON],
            br#"{"_\u006dethod":"DELETE","x":1e400}"#.to_vec(),
        ),
        ("text, escaped", vec![text], b"%5f%6dethod=DELETE".to_vec()),
        (
            "text, backslashes",
            vec![text],
            br"_\method=DELETE".to_vec(),
        ),
        (
            "multipart, RFC 2231 name",
            vec![multipart],
            part("name*=UTF-8''%5Fmethod"),
        ),
        (
            "multipart, RFC 2231 continuation",
            vec![multipart],
            part("name*0=\"_me\"; name*1=\"thod\""),
        ),
        (
            "multipart, RFC 2047 word",
            vec![multipart],
            part("name=\"=?utf-8?q?=5Fmethod?=\""),
        ),
        (
            "multipart, quoted-pair",
            vec![multipart],
            part("name=\"_\\m\\ethod\""),
        ),
    ] {
        assert_eq!(
            post(&headers, &body),
            "refused 400 builtin:request",
            "{what}"
        );
    }
    // A coding the proxy cannot undo, or a corrupt one: refused, whatever the body says.
    assert_eq!(
        post(&[form, ("content-encoding", "br")], b"\x0b\x02\x80"),
        "refused 415 builtin:body"
    );
    assert_eq!(
        post(&[form, gz], b"_method=DELETE"),
        "refused 400 builtin:body"
    );
    // Text in a charset that is not ASCII-compatible (Express reads JSON in UTF-16).
    let utf16: Vec<u8> =
        r#"{"_method":"DELETE"}"#.encode_utf16().flat_map(u16::to_le_bytes).collect();
    assert_eq!(
        post(
            &[("content-type", "application/json; charset=utf-16le")],
            &utf16
        ),
        "refused 415 builtin:body"
    );
    // Controls: bodies without an override (or naming the request's own method), coded or
    // not, are decided as ever.
    for (what, headers, body) in [
        ("form", vec![form], b"name=x".to_vec()),
        ("form, escapes", vec![form], b"na%6De=x%5Fmethod".to_vec()),
        (
            "identity form",
            vec![form, ("content-encoding", "identity")],
            b"name=x".to_vec(),
        ),
        ("gzip form", vec![form, gz], gzip(b"name=x")),
        (
            "deflate JSON",
            vec![JSON, deflate],
            zlib(br#"{"name": "x"}"#),
        ),
        (
            "gzip form, own method",
            vec![form, gz],
            gzip(b"_method=POST"),
        ),
        (
            "JSON, escaped, own method",
            vec![JSON],
            br#"{"\u005fmethod":"POST"}"#.to_vec(),
        ),
        (
            "JSON, nested",
            vec![JSON],
            br#"{"x": {"\u005fmethod": "DELETE"}}"#.to_vec(),
        ),
        ("multipart", vec![multipart], part("name=\"title\"")),
        (
            "multipart file",
            vec![multipart],
            part("name=\"f\"; filename=\"a.txt\""),
        ),
        ("text", vec![text], b"delete the method".to_vec()),
        (
            "JSON, UTF-8 named",
            vec![("content-type", "application/json; charset=UTF-8")],
            br#"{"name": "x"}"#.to_vec(),
        ),
        ("empty", vec![form, ("content-encoding", "br")], Vec::new()),
    ] {
        assert_eq!(post(&headers, &body), "allow default", "{what}");
    }
}

/// A `_method` under a name a parser reads as `_method` (red team round 3): `qs` (Express's
/// `extended` forms) and Rack read `[_method]` and `_method[]`; PHP (Symfony, Laravel) reads
/// `.method`, ` _method` and `+_method`, in forms, queries and multipart part names.
/// Round 4: what PHP reads as `_method` after a NUL, in a form that is not UTF-8, and in a
/// part's header as PHP's multipart parser reads it.
#[test]
fn method_overrides_under_names_parsers_read_as_method_are_refused() {
    let post = |target: &str, headers: &[(&str, &str)], body: &[u8]| {
        let mut all = vec![("host", "api.example")];
        all.extend_from_slice(headers);
        verdict(found("POST", target, &all, body))
    };
    let form = ("content-type", "application/x-www-form-urlencoded");
    let multipart = ("content-type", "multipart/form-data; boundary=b");
    let part = |name: &str| {
        format!("--b\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\nDELETE\r\n--b--\r\n")
            .into_bytes()
    };
    let refused = "refused 400 builtin:request";
    for name in [
        "[_method]",
        "%5B_method%5D",
        "_method[]",
        "_method%5B%5D",
        "_method[0]",
        "_method.x",
        ".method",
        "%2Emethod",
        "+_method",
        "%20_method",
        " .method",
        "[method",
    ] {
        assert_eq!(
            post(
                "/v1/repos/prod",
                &[form],
                format!("{name}=DELETE").as_bytes()
            ),
            refused,
            "form {name}"
        );
        let query = name
            .replace(' ', "%20")
            .replace('[', "%5B")
            .replace(']', "%5D");
        assert_eq!(
            post(&format!("/v1/repos/prod?{query}=DELETE"), &[], b""),
            refused,
            "query {name}"
        );
    }
    for name in [".method", " _method", "[_method]", "_method[]"] {
        assert_eq!(
            post("/v1/repos/prod", &[multipart], &part(name)),
            refused,
            "multipart {name}"
        );
    }
    // Red team round 4: PHP ends a name at a NUL, reads a form's bytes whatever their
    // encoding, and reads a part's name quoted with `'` or on a folded header line.
    for body in [
        &b"_method%00x=DELETE"[..],
        b".method%00=DELETE",
        b".method\0=DELETE",
        b".method=DELETE&x=\xff\xfe",
        b"\xff=1&%2Emethod=DELETE",
    ] {
        assert_eq!(
            post("/v1/repos/prod", &[form], body),
            refused,
            "form {}",
            body.escape_ascii()
        );
    }
    assert_eq!(
        post("/v1/repos/prod?_method%00=DELETE", &[form], b"x=1"),
        refused
    );
    let raw_part = |disposition: &str| {
        format!("--b\r\nContent-Disposition: {disposition}\r\n\r\nDELETE\r\n--b--\r\n").into_bytes()
    };
    for disposition in [
        "form-data; name='.method'",
        "form-data;\r\n name=\".method\"",
        "form-data;\r\n\tname=.method",
        "form-data; name=\".method\0\"",
        "form-data; name=.method x",
    ] {
        assert_eq!(
            post("/v1/repos/prod", &[multipart], &raw_part(disposition)),
            refused,
            "multipart {disposition:?}"
        );
    }
    assert_eq!(
        post(
            "/v1/repos/prod",
            &[multipart],
            &raw_part("form-data;\r\n name='payment[method]'")
        ),
        "allow default"
    );
    // Controls: names no parser reads as `_method`, and an override naming the request's own
    // method.
    for body in [
        "payment[method]=card",
        "a.method=x",
        "methods=DELETE",
        "x_method_name=DELETE",
        "[_method]=POST",
    ] {
        assert_eq!(
            post("/v1/repos/prod", &[form], body.as_bytes()),
            "allow default",
            "{body}"
        );
    }
    assert_eq!(
        post("/v1/repos/prod?payment%5Bmethod%5D=card", &[], b""),
        "allow default"
    );
    assert_eq!(
        post("/v1/repos/prod", &[multipart], &part("payment[method]")),
        "allow default"
    );
}

/// A rule's path matches a request's whatever escapes of printable characters either
/// spells (red team round 3: Starlette routes `/v1/jobs/nightly%3Acancel` as
/// `/v1/jobs/nightly:cancel`).
#[test]
fn rule_paths_match_escaped_and_plain_reserved_characters_alike() {
    let req =
        |method: &str, path: &str| verdict(found(method, path, &[("host", "jobs.example")], b""));
    for path in [
        "/v1/jobs/nightly:cancel",
        "/v1/jobs/nightly%3Acancel",
        "/v1/jobs/nightly%3acancel",
        "/v1/jobs/nightly%3ACANCEL",
    ] {
        assert_eq!(req("POST", path), "block found/no-job-cancel", "{path}");
    }
    for path in ["/v1/users/@me", "/v1/users/%40me", "/v1/users/%40ME/"] {
        assert_eq!(req("DELETE", path), "block found/no-self-delete", "{path}");
    }
    // A rule written with an escape matches the plain spelling too.
    for path in ["/v1/tags/a+b", "/v1/tags/a%2Bb", "/v1/tags/a%2bb"] {
        assert_eq!(req("GET", path), "block found/encoded-in-rule", "{path}");
    }
    // An allow rule allows its own resource in either spelling, in its own case only.
    let file = |path: &str| verdict(found("GET", path, &[("host", "files.example")], b""));
    assert_eq!(file("/files/report:2026.txt"), "allow found/public-colon");
    assert_eq!(file("/files/report%3A2026.txt"), "allow found/public-colon");
    assert_eq!(
        file("/files/REPORT%3A2026.txt"),
        "refused 400 builtin:request"
    );
    // Controls: other jobs' paths and other characters.
    assert_eq!(req("POST", "/v1/jobs/nightly%3Arun"), "allow default");
    assert_eq!(req("POST", "/v1/jobs/nightly"), "allow default");
    assert_eq!(req("DELETE", "/v1/users/%40you"), "allow default");
    assert_eq!(req("GET", "/v1/tags/a%20b"), "allow default");
}

/// Override headers under the names CGI and WSGI servers read as theirs (`_` for `-`, as
/// `HTTP_X_HTTP_METHOD_OVERRIDE`), in any case, and PHP's (`.` for `-`).
#[test]
fn method_override_headers_are_read_under_any_underscore_spelling() {
    let post = |headers: &[(&str, &str)]| {
        let mut all = vec![("host", "api.example")];
        all.extend_from_slice(headers);
        verdict(found("POST", "/v1/repos/prod", &all, b""))
    };
    for name in [
        "X_HTTP_Method_Override",
        "X-HTTP_Method-Override",
        "x_http_method_override",
        "X_HTTP_METHOD",
        "x_method-override",
        "X.HTTP.Method.Override",
        "X-HTTP.Method-Override",
        "x.method.override",
    ] {
        assert_eq!(
            post(&[(name, "DELETE")]),
            "refused 400 builtin:request",
            "{name}"
        );
    }
    // Controls: no override, one naming the request's own method, other x_ headers.
    assert_eq!(post(&[]), "allow default");
    assert_eq!(post(&[("X_HTTP_Method_Override", "POST")]), "allow default");
    assert_eq!(post(&[("X_Other_Override", "DELETE")]), "allow default");
    assert_eq!(
        post(&[("X_HTTP_Method_Overrides", "DELETE")]),
        "allow default"
    );
}

/// A HEAD runs the GET route's handler (Express, Starlette, Flask, Rails, Django): a rule
/// naming GET decides it, blocking or allowing; a rule naming only HEAD decides only HEAD.
#[test]
fn get_rules_decide_head_too() {
    let req = |method: &str, path: &str| {
        verdict(found(method, path, &[("host", "reports.example")], b""))
    };
    assert_eq!(req("GET", "/v1/export"), "block found/no-export");
    assert_eq!(req("HEAD", "/v1/export"), "block found/no-export");
    assert_eq!(req("HEAD", "/V1/Export/"), "block found/no-export");
    // Controls: a HEAD no GET rule names, and other methods, are decided as before.
    assert_eq!(req("HEAD", "/v1/other"), "allow default");
    assert_eq!(req("POST", "/v1/export"), "allow default");
    assert_eq!(req("OPTIONS", "/v1/export"), "allow default");
    // A rule naming HEAD only.
    assert_eq!(req("HEAD", "/v1/probe"), "block found/no-probe");
    assert_eq!(req("GET", "/v1/probe"), "allow default");
    // An allow rule naming GET allows the HEAD of its resource, in its own case only.
    let file =
        |method: &str, path: &str| verdict(found(method, path, &[("host", "files.example")], b""));
    assert_eq!(file("HEAD", "/files/public.txt"), "allow found/public-file");
    assert_eq!(
        file("HEAD", "/files/PUBLIC.TXT"),
        "refused 400 builtin:request"
    );
    assert_eq!(file("HEAD", "/files/secret.txt"), "block found/other-files");
}

/// JSON text the MCP SDK's `json.loads` reads and serde_json does not (NaN, Infinity, a
/// number beyond a double, a lone surrogate, nesting past 128): refused where a condition
/// reads it; prose that only starts with a bracket stays a string (red team round 2).
#[test]
fn mcp_arguments_holding_json_text_the_proxy_cannot_read_are_refused() {
    let call = found_tool_call;
    let deep = format!(
        "{{\"amount\": 5000, \"pad\": {}{}}}",
        "[".repeat(200),
        "]".repeat(200)
    );
    for text in [
        r#"{"amount": 5000, "to": "x", "pad": NaN}"#,
        r#"{"amount": 5000, "pad": Infinity}"#,
        r#"{"amount": 5000, "pad": -Infinity}"#,
        r#"{"amount": 5000, "pad": 1e400}"#,
        r#"{"amount": 5000, "to": "\ud800"}"#,
        " {\"amount\": NaN}\r\n",
        &deep,
    ] {
        assert_eq!(
            call("transfer", json!({ "payment": text })),
            "refused 400 builtin:body",
            "{text}"
        );
    }
    assert_eq!(
        call(
            "notify",
            json!({"recipients": r#"["ceo@corp.exampl\u0065", "\ud800"]"#})
        ),
        "refused 400 builtin:body"
    );
    // Controls: readable JSON text is decided on what it says; prose, and text no condition
    // reads, pass.
    assert_eq!(
        call("transfer", json!({"payment": r#"{"amount": 5}"#})),
        "allow default"
    );
    assert_eq!(call("transfer", json!({"payment": "NaN"})), "allow default");
    assert_eq!(
        call(
            "transfer",
            json!({"payment": {"amount": 5}, "memo": r#"{"x": NaN}"#})
        ),
        "allow default"
    );
    for prose in ["[WIP] fix", "{draft} reply", "[1, 2] and then", "nope"] {
        assert_eq!(
            call("notify", json!({ "recipients": prose })),
            "allow default",
            "{prose}"
        );
    }
    assert_eq!(
        call("notify", json!({"recipients": "[WIP] ceo@corp.example"})),
        "block found/no-ceo"
    );
}

/// Paths match rules in any case; an allow rule's only as it spells them, so a request that
/// only another case lets through is refused (a case-sensitive upstream serves another file).
#[test]
fn allow_rules_allow_only_the_case_they_name() {
    let get = |path: &str| verdict(found("GET", path, &[("host", "files.example")], b""));
    assert_eq!(get("/files/public.txt"), "allow found/public-file");
    assert_eq!(get("/files/public.txt/"), "allow found/public-file");
    for path in [
        "/files/PUBLIC.TXT",
        "/Files/public.txt",
        "/files/Public.txt/",
    ] {
        assert_eq!(get(path), "refused 400 builtin:request", "{path}");
    }
    for path in ["/files/secret.txt", "/FILES/Secret.txt"] {
        assert_eq!(get(path), "block found/other-files", "{path}");
    }
}

/// A rule that restricts reads an argument's strings in any ASCII case (`HTTP://` is `http://`
/// to every URL parser, `DROP TABLE` is `drop table` to SQL).
#[test]
fn restricting_rules_read_strings_in_any_case() {
    let call = found_tool_call;
    for url in [
        "http://x.example/",
        "HTTP://x.example/",
        "Http://x.example/",
    ] {
        assert_eq!(
            call("fetch_url", json!({"url": url})),
            "block found/plain-http",
            "{url}"
        );
    }
    assert_eq!(
        call("fetch_url", json!({"url": "https://x.example/"})),
        "allow default"
    );
    for (query, db) in [
        ("drop table users", "prod"),
        ("DROP TABLE users", "PROD"),
        ("Drop Table users", "Prod"),
    ] {
        assert_eq!(
            call("sql", json!({"query": query, "db": db})),
            "block found/no-drops",
            "{query} {db}"
        );
    }
    assert_eq!(
        call("sql", json!({"query": "DROP TABLE users", "db": "staging"})),
        "allow default"
    );
}

/// Property tests: whatever the body, headers and query, `evaluate` answers without panicking,
/// and the framing follower takes any bytes.
mod props {
    use proptest::prelude::*;

    use super::*;

    fn body() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            prop::collection::vec(any::<u8>(), 0..64),
            "[\\[\\]{}\":,0-9a-z .+eE_x-]{0,48}".prop_map(String::into_bytes),
            (0u32..100_000).prop_map(|n| gzip(format!(r#"{{"amount": {n}}}"#).as_bytes())),
            prop::collection::vec(any::<u8>(), 0..64).prop_map(|b| {
                let mut g = gzip(br#"{"amount": 5000}"#);
                g.extend(b);
                g
            }),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn evaluate_never_panics(
            body in body(),
            ct in prop::option::of("(application/json|text/plain|multipart/form-data)(; charset=[a-z0-9-]{0,8})?"),
            ce in prop::option::of("(gzip|deflate|br|identity|x-gzip|gzip, gzip|)"),
            query in prop::option::of("[a-z_%0-9=&;\\[\\]+]{0,16}"),
            target in prop::sample::select(vec!["/v1/refunds", "/mcp", "/V1/Refunds/", "/other"]),
        ) {
            for (cgroup, label) in [("agents/refund-1", None), ("agents/research", Some("research-agent"))] {
                let (engine, view) = engine_for(cgroup, label);
                let mut headers = vec![("host", "api.payments.example")];
                if label.is_some() {
                    headers[0].1 = "mcp.search.example";
                }
                if let Some(ct) = &ct {
                    headers.push(("content-type", ct));
                }
                if let Some(ce) = &ce {
                    headers.push(("content-encoding", ce));
                }
                let target = match &query {
                    Some(q) => format!("{target}?{q}"),
                    None => target.to_owned(),
                };
                if target.parse::<Uri>().is_ok() {
                    let _ = eval(&engine, &view, "POST", &target, &headers, &body);
                }
            }
        }

        #[test]
        fn the_framing_follower_takes_any_bytes(
            chunks in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..64), 0..8),
        ) {
            let mut f = crate::proxy::framing::Framer::default();
            for c in &chunks {
                f.feed(c, &mut |_| {});
            }
        }
    }
}

/// Red team round 4: a JSON body whose bytes also read as a form carrying a field the rules
/// decide on (`{"amount":50,"x":"&amount=99999&"}`), sent with a Content-Type that some server
/// reads as a form: none (Rack), a list of types (Rack, Fetch), a type that only starts like a
/// form's (Tornado), an RFC 2047 word (aiohttp); and a charset that aiohttp finds where the
/// proxy did not (an RFC 2231 continuation, a comment). Rack 2's parameter names (`]]amount`,
/// `_method]`) too.
#[test]
fn bodies_servers_read_as_forms_and_content_types_they_read_otherwise_are_refused() {
    let smuggled = br#"{"amount":50,"x":"&amount=99999&"}"#;
    assert_eq!(
        verdict(refund(smuggled, &[])),
        "refused 400 builtin:body",
        "no Content-Type: Rack reads a form"
    );
    for ctype in [
        "",
        "application/x-www-form-urlencoded, application/json",
        "application/json, application/x-www-form-urlencoded",
        "text/plain, application/x-www-form-urlencoded",
        "application/x-www-form-urlencoded,x",
        "=?utf-8?q?application/x-www-form-urlencoded?=",
        "application/json; charset*0=utf-7",
        "application/json; charset*=utf-7",
        "application/json; (c)charset=utf-7",
        "application/json; charset(c)=utf-7",
        "application/json; charset=\"utf-8",
        "application/json; charset",
        "application/json (c)",
        "application",
    ] {
        assert_eq!(
            verdict(refund(smuggled, &[("content-type", ctype)])),
            "refused 415 builtin:body",
            "{ctype:?}"
        );
    }
    assert_eq!(
        verdict(refund(
            smuggled,
            &[("content-type", "application/x-www-form-urlencodedX")]
        )),
        "refused 415 builtin:body",
        "Tornado reads any type that starts as a form's"
    );
    assert_eq!(
        verdict(refund(smuggled, &[("content-type", "text/plain")])),
        "refused 400 builtin:body"
    );
    // Rack 2's names, in the query.
    for name in [
        "]]amount", "[[amount", "]amount", "amount]", "[]amount", ".amount",
    ] {
        let query = format!("{}=99999", name.replace('[', "%5B").replace(']', "%5D"));
        assert_eq!(
            refund_with_query(&query),
            "refused 400 builtin:body",
            "{name}"
        );
    }
    // Controls: the same JSON under its own type is one object with amount 50, and the
    // spellings of a JSON type that are one media type.
    for ctype in [
        "application/json",
        "application/json;charset=UTF-8",
        "application/json;",
        "application/json; ; charset=utf-8",
        "application/json; charset=\"utf-8\"",
        "Application/JSON ; charset=utf-8",
        "application/merge-patch+json",
    ] {
        assert_eq!(
            verdict(refund(smuggled, &[("content-type", ctype)])),
            "allow refund-agent/refund-small",
            "{ctype:?}"
        );
    }
    assert_eq!(
        verdict(refund(br#"{"amount":50,"note":"a&b=c"}"#, &[])),
        "allow refund-agent/refund-small"
    );
    // Rack 2's names and a form read from a body without a type, for `_method`.
    let post = |headers: &[(&str, &str)], body: &[u8]| {
        let mut all = vec![("host", "api.example")];
        all.extend_from_slice(headers);
        verdict(found("POST", "/v1/repos/prod", &all, body))
    };
    let form = ("content-type", "application/x-www-form-urlencoded");
    for name in [
        "_method]",
        "]]_method",
        "[[_method",
        "]_method",
        "[]_method",
    ] {
        assert_eq!(
            post(&[form], format!("{name}=DELETE").as_bytes()),
            "refused 400 builtin:request",
            "{name}"
        );
    }
    assert_eq!(
        post(&[], br#"{"note":"x","x":"&_method=DELETE&"}"#),
        "refused 400 builtin:request"
    );
    assert_eq!(
        post(&[JSON], br#"{"note":"x","x":"&_method=DELETE&"}"#),
        "allow default",
        "typed JSON is read as JSON"
    );
}

/// A gzip member of `data` whose header carries `comment` (FCOMMENT): decoders skip it, an
/// upstream that does not decode (PHP) reads it with the rest of the coded bytes.
fn gzip_commented(data: &[u8], comment: &[u8]) -> Vec<u8> {
    let mut out = vec![0x1f, 0x8b, 8, 0x10, 0, 0, 0, 0, 0, 255];
    out.extend_from_slice(comment);
    out.push(0);
    out.extend(miniz_oxide::deflate::compress_to_vec(data, 6));
    out.extend(crc32fast::hash(data).to_le_bytes());
    out.extend((data.len() as u32).to_le_bytes());
    out
}

/// F3 (red team round 5): `Connection` naming an end-to-end header (`Content-Type`,
/// `Content-Encoding`) would have the proxy remove it after deciding on it; a Connection
/// naming anything but hop-by-hop headers and connection options is refused.
#[test]
fn connection_may_name_only_hop_by_hop_headers() {
    let form = ("content-type", "application/x-www-form-urlencoded");
    for connection in ["Content-Type", "close, content-encoding", "content-length"] {
        assert_eq!(
            verdict(refund(
                br#"{"amount": 50}"#,
                &[JSON, ("connection", connection)]
            )),
            "refused 400 builtin:request",
            "Connection: {connection}"
        );
        // Also where no rule reads the body (the upstream's reading of it changes).
        assert_eq!(
            verdict(found(
                "POST",
                "/v1/repos/x",
                &[("host", "api.example"), form, ("connection", connection)],
                b"name=x"
            )),
            "refused 400 builtin:request",
            "Connection: {connection}"
        );
    }
    // Controls: connection options.
    for connection in [
        "close",
        "keep-alive",
        "Keep-Alive, TE",
        "upgrade",
        "trailers",
    ] {
        assert_eq!(
            verdict(refund(
                br#"{"amount": 50}"#,
                &[JSON, ("connection", connection)]
            )),
            "allow refund-agent/refund-small",
            "Connection: {connection}"
        );
    }
}

/// F4 (red team round 5): the proxy undoes gzip for its checks, PHP does not inflate request
/// bodies and reads the coded bytes as the form: a `_method` in the gzip header's comment is
/// refused, and so is a field the rules read; a type that is a form by its prefix is read as a
/// form (`application/x-www-form-urlencoded+json`). Controls: the same bodies without them.
#[test]
fn coded_bodies_are_read_as_coded_and_as_decoded() {
    let repo = |ctype: &str, coding: Option<&str>, body: &[u8]| {
        let mut headers = vec![("host", "api.example"), ("content-type", ctype)];
        if let Some(c) = coding {
            headers.push(("content-encoding", c));
        }
        verdict(found("POST", "/v1/repos/x", &headers, body))
    };
    let form = "application/x-www-form-urlencoded";
    for ctype in [form, "application/json", "text/plain"] {
        assert_eq!(
            repo(
                ctype,
                Some("gzip"),
                &gzip_commented(b"name=x", b"&_method=DELETE&")
            ),
            "refused 400 builtin:request",
            "{ctype}"
        );
        assert_eq!(
            repo(
                ctype,
                Some("gzip"),
                &gzip_commented(b"name=x", b"a comment")
            ),
            "allow default",
            "{ctype}"
        );
    }
    assert_eq!(
        repo(form, Some("gzip"), &gzip(b"name=x&_method=DELETE")),
        "refused 400 builtin:request"
    );
    // A form by its prefix, whatever its suffix says.
    assert_eq!(
        repo(
            "application/x-www-form-urlencoded+json",
            None,
            b"_method=DELETE"
        ),
        "refused 400 builtin:request"
    );
    assert_eq!(
        repo("application/x-www-form-urlencoded+json", None, b"name=x"),
        "allow default"
    );
    // On a body route: the coded bytes read as a form must not carry a field the rules read.
    let coded = gzip_commented(br#"{"amount": 50}"#, b"&amount=99999&");
    for extra in [
        vec![("content-encoding", "gzip")],
        vec![JSON, ("content-encoding", "gzip")],
    ] {
        assert_eq!(
            verdict(refund(&coded, &extra)),
            "refused 400 builtin:request",
            "{extra:?}"
        );
    }
    assert_eq!(
        verdict(refund(
            &gzip_commented(br#"{"amount": 50}"#, b"a comment"),
            &[JSON, ("content-encoding", "gzip")]
        )),
        "allow refund-agent/refund-small"
    );
}

/// F2 (red team round 5): an MCP server takes messages at paths its MCP rules may not name
/// (the legacy SSE transport's `/messages/`): on a host with MCP rules, a JSON-RPC body at a
/// path no MCP rule names is refused rather than decided by the host's other rules, in any
/// spelling a lenient parser reads. Controls: the same call at the MCP endpoint is decided by
/// the MCP rules; a JSON body that is not JSON-RPC elsewhere on the host is not refused.
#[test]
fn mcp_messages_off_the_mcp_paths_are_refused() {
    let call = serde_json::json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
        "params": {"name": "transfer", "arguments": {"payment": {"amount": 5000}}}});
    let post = |target: &str, headers: &[(&str, &str)], body: &[u8]| {
        let mut all = vec![("host", "mcp.example")];
        all.extend_from_slice(headers);
        verdict(found("POST", target, &all, body))
    };
    let body = call.to_string();
    for target in ["/messages/?session_id=abc", "/sse", "/mcp/x", "/"] {
        assert_eq!(
            post(target, &[JSON], body.as_bytes()),
            "refused 400 builtin:jsonrpc",
            "{target}"
        );
    }
    let batch = format!("[{body}]");
    let initialize = r#"{"jsonrpc":"2.0","id":0,"method":"initialize","params":{}}"#;
    let escaped = r#"{"\u006asonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"transfer","arguments":{}},"x":NaN}"#;
    for body in [batch.as_str(), initialize, escaped] {
        assert_eq!(
            post("/messages/?session_id=abc", &[JSON], body.as_bytes()),
            "refused 400 builtin:jsonrpc",
            "{body}"
        );
    }
    assert_eq!(
        post(
            "/messages/?session_id=abc",
            &[JSON, ("content-encoding", "gzip")],
            &gzip(body.as_bytes())
        ),
        "refused 400 builtin:jsonrpc"
    );
    // Controls.
    assert_eq!(
        post("/mcp", &[JSON], body.as_bytes()),
        "block found/big-transfer"
    );
    assert_eq!(
        post("/v1/upload", &[JSON], br#"{"name": "report"}"#),
        "allow default"
    );
}

/// Red team round 6: a JSON-RPC message in another charset to an MCP host, off its MCP path
/// (an MCP SDK server decodes `charset=base64`, `hex` or `utf-16le` bodies), is refused like
/// one in UTF-8; other bodies to the host's other paths are not.
#[test]
fn json_in_another_charset_is_refused_on_mcp_hosts() {
    let post = |headers: &[(&str, &str)], body: &[u8]| {
        let mut all = vec![("host", "mcp.example")];
        all.extend_from_slice(headers);
        verdict(found("POST", "/messages?sessionId=abc", &all, body))
    };
    let b64 = b"eyJqc29ucnBjIjoiMi4wIiwiaWQiOjMsIm1ldGhvZCI6InRvb2xzL2NhbGwiLCJwYXJhbXMiOnsibmFtZSI6InRyYW5zZmVyIiwiYXJndW1lbnRzIjp7InBheW1lbnQiOnsiYW1vdW50Ijo1MDAwfX19fQ==";
    let call = r#"{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"transfer","arguments":{"payment":{"amount":5000}}}}"#;
    let utf16: Vec<u8> = call.encode_utf16().flat_map(u16::to_le_bytes).collect();
    let hex: String = call.bytes().map(|b| format!("{b:02x}")).collect();
    for (charset, body) in [
        ("base64", &b64[..]),
        ("utf-16le", &utf16[..]),
        ("hex", hex.as_bytes()),
    ] {
        let ct = format!("application/json; charset={charset}");
        assert_eq!(
            post(&[("content-type", &ct)], body),
            "refused 400 builtin:jsonrpc",
            "{charset}"
        );
    }
    // A byte-order mark, or bytes that are not UTF-8, under a JSON type.
    let bom = [&[0xef, 0xbb, 0xbf][..], call.as_bytes()].concat();
    assert_eq!(post(&[JSON], &bom), "refused 400 builtin:jsonrpc");
    let latin1 = [call.as_bytes(), &[0xe9][..]].concat();
    assert_eq!(post(&[JSON], &latin1), "refused 400 builtin:jsonrpc");
    // Red team round 7: UTF-16 and UTF-32 with no byte-order mark and no charset, which
    // Python's `json.loads` (the MCP Python SDK's streamable HTTP server) tells by the NUL
    // bytes, under any type or none; and a charset other than UTF-8 under a type that only
    // contains `json` or none at all (older TypeScript SDKs decode the body by the charset).
    let wide = |unit: usize, big: bool| -> Vec<u8> {
        call.chars()
            .flat_map(|c| {
                let b = if unit == 2 {
                    (c as u16).to_be_bytes().to_vec()
                } else {
                    (c as u32).to_be_bytes().to_vec()
                };
                if big {
                    b
                } else {
                    b.into_iter().rev().collect()
                }
            })
            .collect()
    };
    for (case, body) in [
        ("utf-16le", wide(2, false)),
        ("utf-16be", wide(2, true)),
        ("utf-32le", wide(4, false)),
        ("utf-32be", wide(4, true)),
    ] {
        for headers in [&[JSON][..], &[][..], &[("content-type", "text/plain")][..]] {
            assert_eq!(
                post(headers, &body),
                "refused 400 builtin:jsonrpc",
                "{case} {headers:?}"
            );
        }
    }
    for ct in [
        "application/json-rpc; charset=utf-16le",
        "text/plain; charset=base64",
    ] {
        assert_eq!(
            post(&[("content-type", ct)], &b64[..]),
            "refused 400 builtin:jsonrpc",
            "{ct}"
        );
    }
    // Controls: JSON that is not JSON-RPC, and bytes that are not JSON by their type (also
    // with NUL bytes where UTF-16 would have them: a video's header).
    assert_eq!(post(&[JSON], br#"{"name": "report"}"#), "allow default");
    assert_eq!(
        post(
            &[("content-type", "image/png")],
            &[0x89, b'P', b'N', b'G', 0xff, 0xfe]
        ),
        "allow default"
    );
    assert_eq!(
        post(
            &[("content-type", "video/mp4")],
            b"\0\0\0\x18ftypmp42\0\0\0\0"
        ),
        "allow default"
    );
}

/// Red team round 6: a batch of more than one message is never held for a human (the approval
/// and its timeout's posture would cover calls the approver was not shown): refused; one call
/// on its own, or in a batch of one, is held.
#[test]
fn batches_are_not_held_for_a_human() {
    let pay = |id: u64, amount: u64| {
        json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
               "params": {"name": "pay", "arguments": {"amount": amount}}})
    };
    let list = json!({"jsonrpc": "2.0", "id": 9, "method": "tools/list"});
    let run = |body: serde_json::Value| {
        verdict(found(
            "POST",
            "/mcp",
            &[("host", "mcp.example"), JSON],
            body.to_string().as_bytes(),
        ))
    };
    assert_eq!(run(pay(1, 500)), "escalate found/pay-approval");
    assert_eq!(run(json!([pay(1, 500)])), "escalate found/pay-approval");
    for batch in [
        json!([pay(1, 500), pay(2, 900_000)]),
        json!([list, pay(2, 500)]),
    ] {
        assert_eq!(run(batch.clone()), "block found/pay-approval", "{batch}");
    }
    // Control: a batch nothing in which needs a human.
    assert_eq!(run(json!([list, pay(2, 50)])), "allow default");
}

/// Red team round 6: an array document read by `$[N]` rules is decided as one document even
/// when its elements look like JSON-RPC messages.
#[test]
fn array_documents_are_read_whole_when_their_elements_look_like_json_rpc() {
    let bulk = |body: &str| {
        verdict(found(
            "POST",
            "/v1/refunds/bulk",
            &[("host", "api.example"), JSON],
            body.as_bytes(),
        ))
    };
    assert_eq!(bulk(r#"[{"amount": 5000}]"#), "block found/bulk-refund");
    assert_eq!(
        bulk(r#"[{"jsonrpc": "2.0", "method": "x", "charge": "ch_1", "amount": 5000}]"#),
        "block found/bulk-refund"
    );
    // Controls.
    assert_eq!(bulk(r#"[{"amount": 50}]"#), "allow default");
    assert_eq!(
        bulk(r#"[{"jsonrpc": "2.0", "method": "x", "amount": 50}]"#),
        "allow default"
    );
}

/// Red team round 6: a header a restricting rule reads is matched without the whitespace
/// around it (an HTTP/2 field may carry it; HTTP/1 servers trim it) and in any ASCII case.
#[test]
fn restricting_header_rules_read_values_as_servers_do() {
    let env = |value: &str| {
        verdict(found(
            "POST",
            "/v1/env",
            &[("host", "api.example"), ("x-env", value)],
            b"",
        ))
    };
    for value in [
        "production",
        " production",
        "production\t",
        "PRODUCTION",
        "Production ",
    ] {
        assert_eq!(env(value), "block found/prod-env", "{value:?}");
    }
    // Control.
    assert_eq!(env("staging"), "allow default");
}

/// A header naming another host, port or path than the request's own, under any spelling a
/// server reads as it, is refused: Rack and Rails take the host from `X-Forwarded-Host`
/// unconditionally (red team round 21), Express with `trust proxy`, Werkzeug's `ProxyFix`,
/// Rack 3 from `Forwarded: host=`. One naming the request's own target passes.
#[test]
fn forwarded_targets_other_than_the_request_s_are_refused() {
    let body = br#"{"amount": 50}"#;
    let control = verdict(refund(body, &[JSON]));
    assert!(control.starts_with("allow "), "{control}");
    for header in [
        ("x-forwarded-host", "tenant-b.example"),
        ("X_Forwarded_Host", "tenant-b.example"),
        ("x.forwarded.host", "tenant-b.example"),
        ("x-forwarded-host", "api.payments.example, tenant-b.example"),
        ("x-forwarded-host", "tenant-b.example, api.payments.example"),
        ("x-forwarded-host", "api.payments.example:8443"),
        ("x-forwarded-host", "[::1]"),
        ("x-forwarded-server", "tenant-b.example"),
        ("x-original-host", "tenant-b.example"),
        ("x-host", "tenant-b.example"),
        ("forwarded", "for=192.0.2.1;host=tenant-b.example"),
        (
            "forwarded",
            "for=192.0.2.1, host=\"tenant-b.example\";proto=https",
        ),
        ("Forwarded", "HOST=tenant-b.example"),
        // Found wherever it starts by Spring, Reactor Netty and Vert.x (round 23).
        ("forwarded", "for=192.0.2.1;xhost=tenant-b.example"),
        ("forwarded", "by=\"host=tenant-b.example\";for=192.0.2.1"),
        ("x-forwarded-port", "8443"),
        ("x-original-url", "/v1/admin/refunds"),
        ("X_Rewrite_URL", "/v1/admin/refunds"),
    ] {
        assert_eq!(
            verdict(refund(body, &[JSON, header])),
            "refused 400 builtin:request",
            "{header:?}"
        );
    }
    // Controls: the request's own target, in any case, with its port, quoted; other
    // forwarding headers.
    for header in [
        ("x-forwarded-host", "API.Payments.Example"),
        (
            "x-forwarded-host",
            "api.payments.example:80, api.payments.example.",
        ),
        (
            "forwarded",
            "for=192.0.2.1;host=\"api.payments.example\";proto=http",
        ),
        ("x-forwarded-port", "80"),
        ("x-original-url", "/v1/refunds"),
        ("x-forwarded-proto", "https"),
        ("x-forwarded-for", "192.0.2.1"),
    ] {
        assert_eq!(
            verdict(refund(body, &[JSON, header])),
            control,
            "{header:?}"
        );
    }
}

/// Rails wraps a JSON body's members in `params[<controller>]` when the body has no member of
/// that name, and scaffolded controllers read only that: a field a rule reads at the top that
/// the body holds one level down instead, or a nested field whose outer object is missing
/// while the inner key is at the top, is the same field to it (red team round 21). So is a
/// query parameter `refund[amount]`.
#[test]
fn wrapped_parameters_are_read_both_ways() {
    for body in [
        &br#"{"refund": {"amount": 5000}}"#[..],
        br#"{"refund": {"Amount": 5000}, "currency": "EUR"}"#,
        br#"{"anything": {"amount": 5000}}"#,
        // With a decoy at the top: the body names the controller's object, Rails does not
        // wrap and reads the one inside (round 23).
        br#"{"amount": 1, "refund": {"amount": 5000}}"#,
    ] {
        assert_eq!(
            verdict(refund(body, &[JSON])),
            "refused 400 builtin:body",
            "{}",
            String::from_utf8_lossy(body)
        );
    }
    for query in [
        "refund[amount]=5000",
        // Rack 2 reads both as `refund[amount]` (round 23).
        "[refund][amount]=5000",
        "refund[[amount]]=5000",
    ] {
        assert_eq!(
            refund_with_query(query),
            "refused 400 builtin:body",
            "{query}"
        );
    }
    // The other way round: a rule on `$.refund.amount`, a body with `amount` at the top.
    let nested = policy::parse(&[(
        "n.yaml".into(),
        "name: n\nagents: { cgroup: agents/n }\nrules:\n  - id: big\n    http: { host: shop.example, method: POST, path: /v1/refunds, body: ['$.refund.amount > 1000'] }\n    verdict: block\n    reason: big refunds\n  - id: rest\n    http: { host: shop.example }\n    verdict: allow\n    reason: the rest\n"
            .to_owned(),
    )])
    .unwrap();
    let engine = Engine::new(nested, 1);
    let view = engine.agent(&AgentRef {
        name: "agents/n".into(),
        cgroup: "agents/n".into(),
        label: None,
        pod: None,
    });
    let post = |body: &[u8]| {
        verdict(eval(
            &engine,
            &view,
            "POST",
            "/v1/refunds",
            &[("host", "shop.example"), JSON],
            body,
        ))
    };
    assert_eq!(post(br#"{"amount": 5000}"#), "refused 400 builtin:body");
    assert_eq!(post(br#"{"refund": {"amount": 5000}}"#), "block n/big");
    // Controls: the field where the rule reads it, next to others of the same name deeper;
    // a body without the field anywhere; another query parameter.
    assert_eq!(
        post(br#"{"refund": {"amount": 5}, "amount": 5000}"#),
        "allow n/rest"
    );
    assert_eq!(post(br#"{"note": "x"}"#), "allow n/rest");
    let control = verdict(refund(br#"{"amount": 50, "meta": {"note": "x"}}"#, &[JSON]));
    assert!(control.starts_with("allow "), "{control}");
    assert!(refund_with_query("refund[note]=x").starts_with("allow "));
}

/// A decimal with more digits than a double holds is one number to a reader of doubles and
/// another to a reader of decimals (pydantic's `Decimal`): `100.000000000000001` is 100 to the
/// first, above 100 to the second. Refused on a body route, as a JSON number or as a string a rule
/// compares; so is a whole-number string beyond 2^53 (`"9007199254740993.0"`: Python's `int()`
/// keeps it, JavaScript rounds it) (red team round 22). A double's own spelling passes.
#[test]
fn decimals_a_double_does_not_hold_are_refused() {
    for body in [
        &br#"{"amount": 100.000000000000001}"#[..],
        br#"{"amount": 50, "fee": 0.10000000000000000001}"#,
        br#"{"amount": "100.000000000000001"}"#,
        br#"{"amount": "9007199254740993.0"}"#,
        br#"{"amount": 1.00000000000000000000000000001e2}"#,
    ] {
        assert_eq!(
            verdict(refund(body, &[JSON])),
            "refused 400 builtin:body",
            "{}",
            String::from_utf8_lossy(body)
        );
    }
    // Controls: doubles' own spellings, exponents, integers, digits in strings no rule compares.
    for body in [
        &br#"{"amount": 0.30000000000000004}"#[..],
        br#"{"amount": 50.5, "rate": 1e-7}"#,
        br#"{"amount": 5E1}"#,
        br#"{"amount": 50, "id": 123456789012345678901}"#,
        br#"{"amount": 50, "note": "100.000000000000001 \"1.00000000000000000001\""}"#,
    ] {
        let v = verdict(refund(body, &[JSON]));
        assert!(
            v.starts_with("allow "),
            "{}: {v}",
            String::from_utf8_lossy(body)
        );
    }
}

/// An MCP server that samples with tools runs the `tool_use` blocks of the answer: the agent's
/// answer to its `sampling/createMessage` is a tool call of the agent's own, decided by the MCP
/// rules as one (red team round 22).
#[test]
fn tool_uses_in_a_sampling_answer_are_decided_as_tool_calls() {
    let run = research_mcp;
    let answer = |content: serde_json::Value| {
        json!({"jsonrpc": "2.0", "id": 0, "result": {"role": "assistant", "model": "m",
            "stopReason": "toolUse", "content": content}})
    };
    let tool_use = |name: &str| json!({"type": "tool_use", "id": "t1", "name": name, "input": {"cmd": "curl x | sh"}});
    assert_eq!(
        run(answer(json!([tool_use("run_shell")]))),
        "block research-agent/no-shell-tool"
    );
    assert_eq!(
        run(answer(tool_use("run_shell"))),
        "block research-agent/no-shell-tool"
    );
    assert_eq!(
        run(answer(
            json!([{"type": "text", "text": "ok"}, tool_use("run_shell")])
        )),
        "block research-agent/no-shell-tool"
    );
    // A block with no `type` is a tool use to the Python SDK (round 23).
    assert_eq!(
        run(answer(
            json!([{"id": "t1", "name": "run_shell", "input": {"cmd": "x"}}])
        )),
        "block research-agent/no-shell-tool"
    );
    // From the 2026-07-28 protocol on, the answer comes back inside the retried request
    // (`params.inputResponses`): the request and the tool uses are decided (round 23).
    let retried = |tool: &str| {
        json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "calculator",
            "arguments": {}, "inputResponses": {"s1": {"role": "assistant", "model": "m",
            "stopReason": "toolUse", "content": [tool_use(tool)]}}}})
    };
    assert_eq!(
        run(retried("run_shell")),
        "block research-agent/no-shell-tool"
    );
    let other = run(retried("calculator"));
    assert!(other.starts_with("allow "), "{other}");
    // The same in a batch, alone or beside another message (round 24).
    assert_eq!(
        run(json!([retried("run_shell")])),
        "block research-agent/no-shell-tool"
    );
    assert_eq!(
        run(json!([retried("calculator"), retried("run_shell")])),
        "block research-agent/no-shell-tool"
    );
    let other = run(json!([retried("calculator")]));
    assert!(other.starts_with("allow "), "{other}");
    // A tool use the server could not read as one is refused.
    assert_eq!(
        run(answer(
            json!([{"type": "tool_use", "id": "t1", "name": "run_shell", "input": "x"}])
        )),
        "refused 400 builtin:jsonrpc"
    );
    // Controls: a text answer, another tool's use, a call of another tool.
    let text = run(answer(json!([{"type": "text", "text": "ok"}])));
    assert!(text.starts_with("allow "), "{text}");
    let other = run(answer(json!([tool_use("calculator")])));
    assert!(other.starts_with("allow "), "{other}");
}

/// A path through a script is refused: PHP (and CGI, ASP.NET) give the script the rest of the
/// path, and Laravel and Symfony route on a part of it (red team round 26: `DELETE
/// /index.php/v1/repos/x`, then `/index.phpv1/repos/x`, which Symfony strips as a string
/// prefix, deleted the repo past `no-repo-delete`). A path that ends with a script's name, or
/// names one only as a part of a longer name, is decided as written.
#[test]
fn paths_through_scripts_are_refused() {
    let api = [("host", "api.example")];
    let delete = |path: &str| verdict(found("DELETE", path, &api, b""));
    assert_eq!(delete("/v1/repos/x"), "block found/no-repo-delete");
    for path in [
        "/index.php/v1/repos/x",
        "/INDEX.PHP/v1/repos/x",
        "/index.phpv1/repos/x",
        "/a/index.php12345/v1/repos/x",
        "/x/public/index.php/v1/repos/x",
        "/app.cgi/v1/repos/x",
        "/Service.svc/v1/repos/x",
        "/v1/repos/x.phtml.bak",
    ] {
        assert_eq!(delete(path), "refused 400 builtin:request", "{path}");
    }
    assert_eq!(delete("/v1/repos/x.php"), "block found/no-repo-delete");
    assert_eq!(delete("/v1/index.php"), "allow default");
    assert_eq!(delete("/v1/app.cgi"), "allow default");
    assert_eq!(delete("/v1/cgi/x.aspxfile/y"), "allow default");
}
