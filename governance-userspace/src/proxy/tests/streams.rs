//! Long-lived responses: event streams (SSE) and their idle limits, MCP clients' body-less
//! GET and DELETE, and legacy MCP SSE sessions, whose refusals go on the session's stream.

use std::convert::Infallible;

use futures_util::stream;
use http_body_util::{BodyExt, Empty, StreamBody};
use hyper::body::Frame;
use tokio::sync::mpsc;

use super::*;

type Chunks = mpsc::Receiver<Bytes>;
type BoxBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

/// A body that sends what arrives on `rx`, and ends when its sender is dropped.
fn channel_body(rx: Chunks) -> BoxBody {
    let frames = stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|b| (Ok::<_, Infallible>(Frame::data(b)), rx))
    });
    StreamBody::new(frames).boxed()
}

/// A body of two chunks, `gap` apart.
fn two_chunks(first: &'static str, second: &'static str, gap: Duration) -> BoxBody {
    let (tx, rx) = mpsc::channel(2);
    tokio::spawn(async move {
        let _ = tx.send(Bytes::from(first)).await;
        // The silence under test.
        tokio::time::sleep(gap).await;
        let _ = tx.send(Bytes::from(second)).await;
    });
    channel_body(rx)
}

/// An upstream for streams:
/// - `GET /sse?gap=MS`: an event stream of two events, MS apart; `/plain?gap=MS` the same as
///   text/plain;
/// - `GET /legacy`: a legacy MCP SSE stream: an `endpoint` event naming
///   `/messages/?session_id=s1` (`/legacy?session=ID`: `session_id=ID`), then a `message`
///   event per call POSTed there (each POST is answered 202), until a POST to `/messages/?end`;
/// - anything else: 200 with `{"method", "path", "body"}`.
struct StreamUpstream {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Drop for StreamUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn stream_upstream() -> StreamUpstream {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let session: Arc<Mutex<Option<mpsc::Sender<Bytes>>>> = Arc::default();
    let task = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let session = session.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    let session = session.clone();
                    async move { Ok::<_, Infallible>(answer(req, &session).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    StreamUpstream { addr, task }
}

async fn answer(
    req: Request<Incoming>,
    session: &Mutex<Option<mpsc::Sender<Bytes>>>,
) -> Response<BoxBody> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    let path = parts.uri.path().to_owned();
    let query = parts.uri.query().unwrap_or("").to_owned();
    let gap = query
        .strip_prefix("gap=")
        .and_then(|ms| ms.parse().ok())
        .map(Duration::from_millis)
        .unwrap_or_default();
    let typed = |ty: &'static str, body: BoxBody| {
        Response::builder()
            .header("content-type", ty)
            .body(body)
            .unwrap()
    };
    match (parts.method.as_str(), path.as_str()) {
        ("GET", "/sse") => typed(
            "text/event-stream; charset=utf-8",
            two_chunks("data: 1\n\n", "data: 2\n\n", gap),
        ),
        ("GET", "/plain") => typed("text/plain", two_chunks("one\n", "two\n", gap)),
        ("GET", "/legacy") => {
            let (tx, rx) = mpsc::channel(8);
            let id = query.strip_prefix("session=").unwrap_or("s1");
            tx.send(Bytes::from(format!(
                "event: endpoint\r\ndata: /messages/?session_id={id}\r\n\r\n"
            )))
            .await
            .unwrap();
            *session.lock().unwrap() = Some(tx);
            typed("text/event-stream", channel_body(rx))
        }
        ("POST", "/messages/") => {
            if query == "end" {
                session.lock().unwrap().take();
            } else {
                let tx = session.lock().unwrap().clone();
                if let Some(tx) = tx {
                    let mut ev = b"event: message\r\ndata: ".to_vec();
                    ev.extend_from_slice(&body);
                    ev.extend_from_slice(b"\r\n\r\n");
                    let _ = tx.send(Bytes::from(ev)).await;
                }
            }
            let mut r = Response::new(Full::new(Bytes::from_static(b"Accepted")).boxed());
            *r.status_mut() = StatusCode::ACCEPTED;
            r
        }
        _ => {
            let echo = json!({
                "method": parts.method.as_str(),
                "path": parts.uri.to_string(),
                "body": String::from_utf8_lossy(&body),
            });
            typed(
                "application/json",
                Full::new(Bytes::from(echo.to_string())).boxed(),
            )
        }
    }
}

const STREAMS: &str = r#"
name: streams
agents: { label: streamer }
defaults: { http: block }
proxy: { idle_timeout: { slow.example: 200ms } }
rules:
  - id: api
    http: { host: api.payments.example }
    verdict: allow
    reason: the API
  - id: slow
    http: { host: slow.example }
    verdict: allow
    reason: a host with a short idle limit
  - id: mcp
    http: { host: mcp.search.example }
    verdict: allow
    reason: the MCP server
  - id: no-delete
    http: { host: mcp.search.example, method: DELETE, path: /forbidden }
    verdict: block
    reason: not this one
  - id: shell
    http: { host: mcp.search.example, mcp: { tool: run_shell } }
    verdict: block
    reason: no shell
  - id: search
    http: { host: mcp.search.example, mcp: { tool: search } }
    verdict: throttle
    throttle: { rate: 1, per: 1h }
    reason: metered
"#;

fn stream_config() -> ProxyConfig {
    let mut cfg = config();
    cfg.host_addresses
        .insert("slow.example".into(), vec![IpAddr::V4(Ipv4Addr::LOCALHOST)]);
    cfg
}

/// An HTTP/1 connection of the agent `me` to the proxy.
/// An event stream's body, read as it arrives.
struct Reader {
    body: hyper::body::Incoming,
    seen: String,
}

impl Reader {
    fn new(body: hyper::body::Incoming) -> Self {
        Self {
            body,
            seen: String::new(),
        }
    }

    /// Read the stream until it holds `what` (10 s at most); all it held so far.
    async fn until(&mut self, what: &str) -> String {
        let (body, seen) = (&mut self.body, &mut self.seen);
        tokio::time::timeout(Duration::from_secs(10), async {
            while !seen.contains(what) {
                let frame = body.frame().await.expect("the stream ended").unwrap();
                if let Some(d) = frame.data_ref() {
                    seen.push_str(&String::from_utf8_lossy(d));
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("never saw {what:?} on the stream; saw {:?}", self.seen));
        self.seen.clone()
    }
}

async fn open(h: &Harness, me: IpAddr) -> hyper::client::conn::http1::SendRequest<BoxBody> {
    let (tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(h.connect(me).await))
        .await
        .unwrap();
    tokio::spawn(conn);
    tx
}

fn request(method: &str, host: &str, path: &str, body: Option<Value>) -> Request<BoxBody> {
    let b = Request::builder()
        .method(method)
        .uri(path)
        .header("host", host);
    match body {
        Some(v) => b
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(v.to_string())).boxed())
            .unwrap(),
        None => b.body(Empty::new().boxed()).unwrap(),
    }
}

/// The whole body, or how far it got before it was cut.
async fn body_text(resp: Response<Incoming>) -> Result<String, String> {
    let mut body = resp.into_body();
    let mut text = String::new();
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(f) => {
                if let Some(d) = f.data_ref() {
                    text.push_str(&String::from_utf8_lossy(d));
                }
            }
            Err(_) => return Err(text),
        }
    }
    Ok(text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_streams_outlive_the_upstream_timeout_and_policies_limit_them_per_host() {
    let up = stream_upstream().await;
    let cfg = ProxyConfig {
        upstream_timeout: Duration::from_millis(300),
        stream_idle_timeout: Duration::from_secs(10),
        // The connection's own idle limit is shorter than the silence too.
        idle_timeout: Duration::from_millis(300),
        ..stream_config()
    };
    let h = start(cfg, parse(STREAMS), Limits::default()).await;
    let me = h.agent("agents/stream", Some("streamer"), Some(up.addr));
    // The Host names the port the connection goes to.
    let get =
        |host: &str, path: &str| request("GET", &format!("{host}:{}", up.addr.port()), path, None);

    // An event stream quiet for longer than the upstream timeout is relayed whole.
    let mut tx = open(&h, me).await;
    let resp = tx
        .send_request(get("api.payments.example", "/sse?gap=800"))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        body_text(resp).await.as_deref(),
        Ok("data: 1\n\ndata: 2\n\n")
    );
    // Any other body quiet that long is cut.
    let mut tx = open(&h, me).await;
    let resp = tx
        .send_request(get("api.payments.example", "/plain?gap=800"))
        .await
        .unwrap();
    assert_eq!(body_text(resp).await, Err("one\n".to_owned()));
    // A host whose policy limit is 200 ms: its event stream is cut too.
    let mut tx = open(&h, me).await;
    let resp = tx
        .send_request(get("slow.example", "/sse?gap=800"))
        .await
        .unwrap();
    assert_eq!(body_text(resp).await, Err("data: 1\n\n".to_owned()));
    h.assert_no_panics();
}

#[test]
fn idle_timeouts_are_validated_and_the_most_specific_host_wins() {
    let bad = "name: p\nagents: { label: x }\nproxy: { idle_timeout: { a.example: 10 parsecs, 'b c': 1m } }\n";
    let err = policy::parse(&[("p.yaml".into(), bad.into())])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("proxy.idle_timeout: bad duration unit in `10 parsecs`"),
        "{err}"
    );
    assert!(
        err.contains("proxy.idle_timeout: host `b c`: use `name.example` or `*.example`"),
        "{err}"
    );
    let set = parse(
        "name: a\nagents: { label: x }\nproxy: { idle_timeout: { '*': 1h, '*.example': 20m, 'mcp.example': 30m } }\n---\nname: b\nagents: { label: x }\nproxy: { idle_timeout: { 'MCP.example': 5m, '*.svc.example': 1m } }\n",
    );
    let engine = Engine::new(set, 1);
    let view = engine.agent(&AgentRef {
        name: "x".into(),
        cgroup: "x".into(),
        label: Some("x".into()),
        pod: None,
    });
    let m = |s: u64| Some(Duration::from_secs(60 * s));
    assert_eq!(view.idle_timeout("mcp.example"), m(5), "the shortest exact");
    assert_eq!(
        view.idle_timeout("a.svc.example"),
        m(1),
        "the longest suffix"
    );
    assert_eq!(view.idle_timeout("other.example"), m(20));
    assert_eq!(view.idle_timeout("elsewhere.org"), m(60));
    assert_eq!(
        engine
            .agent(&AgentRef {
                name: "y".into(),
                cgroup: "y".into(),
                label: Some("y".into()),
                pod: None,
            })
            .idle_timeout("mcp.example"),
        None
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodiless_get_and_delete_on_an_mcp_endpoint_meet_the_host_rules() {
    let up = stream_upstream().await;
    let h = start(stream_config(), parse(STREAMS), Limits::default()).await;
    let me = h.agent("agents/mcp-get", Some("streamer"), Some(up.addr));
    let host = &format!("mcp.search.example:{}", up.addr.port());
    let mut tx = open(&h, me).await;
    for method in ["GET", "DELETE"] {
        tx.ready().await.unwrap();
        let resp = tx
            .send_request(request(method, host, "/mcp", None))
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "{method}");
        let echo: Value = serde_json::from_str(&body_text(resp).await.unwrap()).unwrap();
        assert_eq!(echo["method"], method);
    }
    // Method and path rules still apply.
    tx.ready().await.unwrap();
    let resp = tx
        .send_request(request("DELETE", host, "/forbidden", None))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    // A POST with no body is still not JSON-RPC.
    let r = h
        .raw(
            me,
            b"POST /mcp HTTP/1.1\r\nHost: mcp.search.example\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        )
        .await;
    assert!(r.starts_with("HTTP/1.1 400"), "{r}");
    assert!(r.contains("-32700"), "{r}");
    h.assert_no_panics();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_sse_sessions_get_their_refusals_on_the_stream() {
    let up = stream_upstream().await;
    let h = start(stream_config(), parse(STREAMS), Limits::default()).await;
    let me = h.agent("agents/legacy", Some("streamer"), Some(up.addr));
    let host = &format!("mcp.search.example:{}", up.addr.port());
    let mut events = open(&h, me).await;
    let resp = events
        .send_request(request("GET", host, "/legacy", None))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let mut stream = Reader::new(resp.into_body());
    stream.until("session_id=s1").await;

    let mut posts = open(&h, me).await;
    let call = |id: u64, tool: &str| {
        json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
               "params": {"name": tool, "arguments": {}}})
    };
    let mut post = async |body: Value| {
        posts.ready().await.unwrap();
        let path = "/messages/?session_id=s1";
        posts
            .send_request(request("POST", host, path, Some(body)))
            .await
            .unwrap()
    };
    // Blocked: 202 to the POST, the JSON-RPC error on the stream.
    let resp = post(call(7, "run_shell")).await;
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    assert_eq!(resp.headers()["x-governance-rule"], "streams/shell");
    let text = stream.until("\"id\":7").await;
    let ev = text.rsplit("data: ").next().unwrap().trim();
    let err: Value = serde_json::from_str(ev).unwrap();
    assert_eq!(err["error"]["code"], -32001, "{err}");
    assert_eq!(err["error"]["data"]["rule"], "streams/shell");
    // Allowed: the server's own reply, on the stream as ever.
    let resp = post(call(8, "search")).await;
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    stream.until("\"id\":8").await;
    // Throttled: the same way as blocked.
    let resp = post(call(9, "search")).await;
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    let text = stream.until("\"id\":9").await;
    assert!(text.contains("-32002"), "{text}");
    // Another session's endpoint (or another agent) gets the refusal in the response.
    let other = request(
        "POST",
        host,
        "/messages/?session_id=other",
        Some(call(10, "run_shell")),
    );
    posts.ready().await.unwrap();
    let resp = posts.send_request(other).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(body_text(resp).await.unwrap().contains("-32001"));
    // The same session named at another path, where the SDK's server would take it too (it
    // routes by `session_id` under where it mounted the endpoint): refused, never forwarded,
    // however the parameter is spelled.
    for path in [
        "/messages/x?session_id=s1",
        "/messages?session_id=s1",
        "/messages/x?session%5Fid=s1",
        "/messages/?session_id=s1&also=1",
    ] {
        posts.ready().await.unwrap();
        let resp = posts
            .send_request(request("POST", host, path, Some(call(11, "run_shell"))))
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "{path}");
        let text = body_text(resp).await.unwrap();
        assert!(
            text.contains("-32600") && text.contains("/messages/?session_id=s1"),
            "{path}: {text}"
        );
    }
    assert!(!stream.seen.contains("\"id\":11"), "{}", stream.seen);
    // The session ends with its stream.
    // (A valid JSON-RPC notification: the proxy refuses anything else on an MCP endpoint.)
    let end = request(
        "POST",
        host,
        "/messages/?end",
        Some(json!({"jsonrpc": "2.0", "method": "notifications/end"})),
    );
    posts.ready().await.unwrap();
    posts.send_request(end).await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(f) = stream.body.frame().await {
            f.unwrap();
        }
    })
    .await
    .expect("the stream ended");
    drop(stream);
    until("the session to be forgotten", || {
        h.proxy.sessions.len() == 0
    })
    .await;
    h.assert_no_panics();
}

/// The MCP Python SDK finds a legacy session by `UUID(hex=session_id)`, which reads one session
/// under many spellings: any case, dashes, braces, `urn:uuid:`, and what Python's `int(_, 16)`
/// takes (blanks around the digits, `+`, `0x`, `_` between digits). Each names the live
/// session at another path (or in another spelling at its own): refused, never forwarded (red
/// team round 2). The announced endpoint is decided by its rules as ever, and another
/// session's id is not the session's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_sse_sessions_are_known_under_every_spelling_of_their_uuid() {
    let up = stream_upstream().await;
    let h = start(stream_config(), parse(STREAMS), Limits::default()).await;
    let me = h.agent("agents/legacy-uuid", Some("streamer"), Some(up.addr));
    let host = &format!("mcp.search.example:{}", up.addr.port());
    // Leading zeros, so that `0x`, `+`, a blank and `_` keep the 32 characters UUID needs.
    let id = "00c75454a1b24f4e9d3c0e5b6a7f8091";
    let dashed = "00c75454-a1b2-4f4e-9d3c-0e5b6a7f8091";
    let mut events = open(&h, me).await;
    let resp = events
        .send_request(request("GET", host, &format!("/legacy?session={id}"), None))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let mut stream = Reader::new(resp.into_body());
    stream.until(id).await;
    let announced = format!("/messages/?session_id={id}");

    let mut posts = open(&h, me).await;
    let call = |n: u64, tool: &str| {
        json!({"jsonrpc": "2.0", "id": n, "method": "tools/call",
               "params": {"name": tool, "arguments": {}}})
    };
    for spelled in [
        "00C75454A1B24F4E9D3C0E5B6A7F8091".to_owned(),
        dashed.to_owned(),
        dashed.to_uppercase(),
        format!("%7B{dashed}%7D"),
        format!("{{{dashed}}}"),
        format!("urn:uuid:{dashed}"),
        "0xc75454a1b24f4e9d3c0e5b6a7f8091".to_owned(),
        "%2B0c75454a1b24f4e9d3c0e5b6a7f8091".to_owned(),
        "%200c75454a1b24f4e9d3c0e5b6a7f8091".to_owned(),
        "0c75454a1b24f4e9d3c0e5b6a7f8091+".to_owned(),
        "0_c75454a1b24f4e9d3c0e5b6a7f8091".to_owned(),
        // Python's int() reads every script's decimal digits: a fullwidth 1 (U+FF11) and an
        // Arabic-Indic 7 (U+0667).
        "00c75454a1b24f4e9d3c0e5b6a7f809%EF%BC%91".to_owned(),
        "00c%D9%A75454a1b24f4e9d3c0e5b6a7f8091".to_owned(),
    ] {
        for path in ["/messages/x", "/messages/"] {
            let target = format!("{path}?session_id={spelled}");
            posts.ready().await.unwrap();
            let resp = posts
                .send_request(request("POST", host, &target, Some(call(11, "run_shell"))))
                .await
                .unwrap();
            assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "{target}");
            let text = body_text(resp).await.unwrap();
            assert!(
                text.contains("-32600") && text.contains(&announced),
                "{target}: {text}"
            );
        }
    }
    // Controls: the announced endpoint is decided by its rules (a blocked call's error on
    // the stream, an allowed one forwarded)...
    let mut post = async |target: &str, body: Value| {
        posts.ready().await.unwrap();
        posts
            .send_request(request("POST", host, target, Some(body)))
            .await
            .unwrap()
    };
    let resp = post(&announced, call(7, "run_shell")).await;
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    assert_eq!(resp.headers()["x-governance-rule"], "streams/shell");
    stream.until("\"id\":7").await;
    let resp = post(&announced, call(8, "search")).await;
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    stream.until("\"id\":8").await;
    // ...and another session's id, in any spelling, is not this session's.
    for other in [
        "00c75454a1b24f4e9d3c0e5b6a7f8092",
        "00c75454-a1b2-4f4e-9d3c-0e5b6a7f8092",
        "0xc75454a1b24f4e9d3c0e5b6a7f8092",
    ] {
        let resp = post(
            &format!("/messages/x?session_id={other}"),
            call(10, "run_shell"),
        )
        .await;
        assert_eq!(resp.status(), StatusCode::OK, "{other}");
        let text = body_text(resp).await.unwrap();
        assert!(text.contains("-32001"), "{other}: {text}");
    }
    assert!(!stream.seen.contains("\"id\":11"), "{}", stream.seen);
    assert!(!stream.seen.contains("\"id\":10"), "{}", stream.seen);
    h.assert_no_panics();
}
