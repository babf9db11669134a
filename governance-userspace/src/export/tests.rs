//! Exporters against real receivers: rsyslog (Debian's rsyslogd, started here with its own
//! configuration on loopback ports: UDP, TCP, and TLS through its gtls driver), an axum webhook
//! receiver, and OTLP receivers built from the official protocol definitions
//! (`opentelemetry-proto`: an axum route for OTLP/HTTP, a tonic server for gRPC).

use std::{
    net::SocketAddr,
    path::PathBuf,
    process::{Child, Command},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::{
    Router,
    body::Bytes,
    extract::State,
    http::{HeaderMap, StatusCode},
    routing::post,
};
use opentelemetry_proto::tonic::{
    collector::logs::v1::{
        ExportLogsServiceRequest, ExportLogsServiceResponse,
        logs_service_server::{LogsService, LogsServiceServer},
    },
    common::v1::any_value,
};
use prost::Message as _;
use serde_json::Value;

use super::*;
use crate::{
    events::{AgentInfo, ApprovalInfo, Object, Record, RecordType},
    pipeline,
};

/// Wait for `cond` with a deadline; panics with `what` when it does not come.
pub(crate) async fn wait_until<T>(what: &str, mut cond: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(v) = cond() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A pipeline without an audit log, and its metrics.
fn pipeline() -> (pipeline::Handles, Arc<Metrics>) {
    let metrics = Arc::new(Metrics::new());
    let h = pipeline::start(pipeline::Config {
        audit: None,
        cgroup_root: PathBuf::from("/nonexistent"),
        metrics: metrics.clone(),
        stdout: false,
    })
    .unwrap();
    (h, metrics)
}

fn decision(n: usize, kind: &str, outcome: &str) -> Record {
    Record {
        ty: RecordType::Decision,
        kind: kind.to_owned().into(),
        outcome: outcome.to_owned().into(),
        denied: outcome == "block",
        verdict: outcome.to_owned().into(),
        rule: "p/r".into(),
        reason: format!("reason \"{n}\""),
        agent: Some(
            AgentInfo {
                name: "bot".into(),
                ..Default::default()
            }
            .into(),
        ),
        object: Object {
            path: format!("/tmp/file-{n}"),
            ..Default::default()
        },
        ..Default::default()
    }
}

async fn start_one(spec: &str) -> (pipeline::Handles, Arc<Metrics>, Running) {
    let (h, metrics) = pipeline();
    let e = Exporter::parse(spec).unwrap();
    let running = start(vec![e], &h.publisher, &metrics).await.unwrap();
    (h, metrics, running)
}

#[test]
fn urls_parse_and_bad_ones_are_refused() {
    let e = Exporter::parse("syslog+tcp://127.0.0.1:5514?kind=exec,http&outcome=denied&queue=10")
        .unwrap();
    assert!(matches!(e.sink, Sink::Syslog(syslog::Transport::Tcp(ref a)) if a == "127.0.0.1:5514"));
    assert_eq!(e.filter.kinds, ["exec", "http"]);
    assert_eq!(e.filter.outcomes, ["denied"]);
    assert_eq!(
        (e.queue, e.batch, e.name.as_str()),
        (10, DEFAULT_BATCH, "syslog+tcp://127.0.0.1:5514")
    );
    let e = Exporter::parse("otlp+http://collector:4318").unwrap();
    assert!(
        matches!(e.sink, Sink::OtlpHttp(ref t) if format!("{t:?}").contains("http://collector:4318/v1/logs"))
    );
    let e = Exporter::parse("otlp+grpc://127.0.0.1:4317?type=decision&name=otel").unwrap();
    assert!(matches!(e.sink, Sink::OtlpGrpc(ref a) if a.endpoint == "http://127.0.0.1:4317"));
    assert_eq!(e.name, "otel");
    let e = Exporter::parse("otlp+grpcs://collector.example:4317").unwrap();
    assert!(matches!(e.sink, Sink::OtlpGrpc(ref a)
        if a.endpoint == "https://collector.example:4317" && a.tls.is_some()));
    for (bad, says) in [
        ("syslog://x:1", "unknown scheme"),
        ("syslog+tcp://x:1/path", "without a path"),
        ("syslog+udp://x:1?color=red", "unknown field"),
        ("syslog+udp://x:1?type=weird", "type `weird`"),
        ("syslog+udp://x:1?queue=0", "queue"),
        ("syslog+udp://x:1?secret=/etc/hostname", "for webhook"),
        (
            "webhook+http://h/p?secret=/nonexistent/secret",
            "/nonexistent/secret",
        ),
        ("webhook+ftp://h/p", "unknown scheme"),
        (
            "otlp+grpc://h:1?ca=/etc/hostname",
            "otlp+grpcs is gRPC over TLS",
        ),
        (
            "otlp+grpcs://h:1?ca=/nonexistent/ca.pem",
            "/nonexistent/ca.pem",
        ),
        ("127.0.0.1:514", "SCHEME://"),
    ] {
        let e = Exporter::parse(bad).unwrap_err().to_string();
        assert!(e.contains(says), "{bad}: {e}");
    }
}

#[test]
fn secret_and_trust_files_are_found_for_protection() {
    let specs = [
        "webhook+https://h/p?kind=exec&secret=/etc/governance/hook.key".to_owned(),
        "syslog+udp://h:1".to_owned(),
        "webhook+http://h/p?secret=%2Fetc%2Fother.key".to_owned(),
        "syslog+tls://h:1?ca=/etc/governance/syslog-ca.pem".to_owned(),
    ];
    assert_eq!(
        files_named(&specs, "secret"),
        [
            PathBuf::from("/etc/governance/hook.key"),
            PathBuf::from("/etc/other.key")
        ]
    );
    assert_eq!(
        files_named(&specs, "ca"),
        [PathBuf::from("/etc/governance/syslog-ca.pem")]
    );
}

// Syslog: a real rsyslogd.

/// rsyslogd in the foreground with a configuration of its own, writing what it receives to
/// `out` (one line per message: severity, app name, msgid, structured data, message).
struct Rsyslog {
    child: Child,
    out: PathBuf,
    udp: u16,
    tcp: u16,
    tls: u16,
    ca: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Rsyslog {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A free loopback port (the listener is closed again: rsyslog binds it next).
fn free_port(udp: bool) -> u16 {
    if udp {
        std::net::UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    } else {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }
}

/// A CA and a server certificate for 127.0.0.1 (rcgen), as `d`/ca.pem, cert.pem, key.pem.
fn test_certificates(d: &std::path::Path) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    std::fs::write(d.join("ca.pem"), ca.pem()).unwrap();
    std::fs::write(d.join("cert.pem"), cert.pem()).unwrap();
    std::fs::write(d.join("key.pem"), key.serialize_pem()).unwrap();
}

fn rsyslogd() -> Rsyslog {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // For the gtls driver.
    test_certificates(d);
    let (udp, tcp, tls) = (free_port(true), free_port(false), free_port(false));
    let out = d.join("out.log");
    let conf = format!(
        r#"global(workDirectory="{d}" maxMessageSize="64k"
       defaultNetstreamDriverCAFile="{d}/ca.pem"
       defaultNetstreamDriverCertFile="{d}/cert.pem"
       defaultNetstreamDriverKeyFile="{d}/key.pem")
module(load="imudp")
module(load="imtcp" maxSessions="16")
input(type="imudp" address="127.0.0.1" port="{udp}")
input(type="imtcp" address="127.0.0.1" port="{tcp}" supportOctetCountedFraming="on")
input(type="imtcp" address="127.0.0.1" port="{tls}" streamDriver.name="gtls"
      streamDriver.mode="1" streamDriver.authMode="anon")
template(name="line" type="string"
         string="%syslogseverity% %app-name% %msgid% %structured-data% %msg%\n")
action(type="omfile" file="{out}" template="line")
"#,
        d = d.display(),
        out = out.display()
    );
    std::fs::write(d.join("rsyslog.conf"), conf).unwrap();
    let child = Command::new("rsyslogd")
        .args(["-n", "-f"])
        .arg(d.join("rsyslog.conf"))
        .arg("-i")
        .arg(d.join("rsyslog.pid"))
        .stdout(std::process::Stdio::null())
        // Its complaints (the readiness probe's bare connects to the TLS port) go to a file.
        .stderr(std::fs::File::create(d.join("rsyslogd.stderr")).unwrap())
        .spawn()
        .expect("rsyslogd (Debian package rsyslog; `cargo xtask setup` installs it)");
    Rsyslog {
        child,
        out,
        udp,
        tcp,
        tls,
        ca: d.join("ca.pem"),
        _dir: dir,
    }
}

impl Rsyslog {
    fn lines(&self) -> Vec<String> {
        std::fs::read_to_string(&self.out)
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// Whether rsyslogd listens on its TCP ports yet.
    async fn wait_listening(&self) {
        let (tcp, tls) = (self.tcp, self.tls);
        wait_until("rsyslogd listening", || {
            (std::net::TcpStream::connect(("127.0.0.1", tcp)).is_ok()
                && std::net::TcpStream::connect(("127.0.0.1", tls)).is_ok())
            .then_some(())
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn syslog_reaches_rsyslog_over_udp_tcp_and_tls() {
    let rs = rsyslogd();
    rs.wait_listening().await;
    let (h, _metrics) = pipeline();
    let specs = [
        format!("syslog+udp://127.0.0.1:{}?name=udp", rs.udp),
        format!("syslog+tcp://127.0.0.1:{}?name=tcp", rs.tcp),
        format!(
            "syslog+tls://127.0.0.1:{}?name=tls&ca={}",
            rs.tls,
            rs.ca.display()
        ),
        // The control: a filter that leaves every record out.
        format!("syslog+tcp://127.0.0.1:{}?name=none&kind=connect", rs.tcp),
    ];
    let exporters = specs.iter().map(|s| Exporter::parse(s).unwrap()).collect();
    let running = start(exporters, &h.publisher, &Metrics::new().into())
        .await
        .unwrap();
    let n = 20;
    h.publisher
        .publish_batch((0..n).map(|i| decision(i, "exec", "block")).collect());
    // Every record over each of the three transports; the filtered exporter sends none.
    let lines = wait_until("60 lines in rsyslog's file", || {
        let l = rs.lines();
        (l.len() >= 3 * n).then_some(l)
    })
    .await;
    assert_eq!(lines.len(), 3 * n, "{lines:#?}");
    for i in 0..n {
        let path = format!("/tmp/file-{i}");
        let these: Vec<&String> = lines
            .iter()
            .filter(|l| l.contains(&format!("\"{path}\"")))
            .collect();
        assert_eq!(these.len(), 3, "{path}: {lines:#?}");
        for l in these {
            // severity 4 (warning: refused), app name, msgid = kind, structured data, JSON.
            assert!(
                l.starts_with("4 governance exec [governance@32473 id=\""),
                "{l}"
            );
            assert!(
                l.contains("outcome=\"block\" agent=\"bot\" rule=\"p/r\"]"),
                "{l}"
            );
            let json = &l[l.find("] {").unwrap() + 2..];
            let r: Record = serde_json::from_str(json).unwrap();
            assert_eq!(r.object.path, path);
            assert_eq!(r.reason, format!("reason \"{i}\""));
        }
    }
    // rsyslog can write a line before the exporter that sent it has counted it: wait for the
    // counts themselves.
    let want = |name: &str| if name == "none" { 0 } else { n as u64 };
    let views = wait_until("every exporter's counts", || {
        let views = running.views();
        views
            .iter()
            .all(|v| (v.sent, v.lost, v.failures) == (want(&v.name), 0, 0))
            .then_some(views)
    })
    .await;
    for v in &views {
        assert_eq!((v.sent, v.lost, v.failures), (want(&v.name), 0, 0), "{v:?}");
    }
    h.publisher.stop();
}

// Webhook: an axum receiver.

#[derive(Default)]
pub(crate) struct Received {
    /// (signature header, body) of each request.
    pub requests: Vec<(Option<String>, Bytes)>,
    /// Answers to give first (then 200).
    answers: Vec<StatusCode>,
}

pub(crate) type Shared = Arc<Mutex<Received>>;

async fn receiver(router: Router) -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(l, router).await });
    addr
}

async fn hook(State(s): State<Shared>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let mut s = s.lock().unwrap();
    let sig = headers
        .get("x-governance-signature")
        .map(|v| v.to_str().unwrap().to_owned());
    s.requests.push((sig, body));
    if s.answers.is_empty() {
        StatusCode::OK
    } else {
        s.answers.remove(0)
    }
}

pub(crate) async fn webhook_receiver(answers: Vec<StatusCode>) -> (SocketAddr, Shared) {
    let shared = Shared::default();
    shared.lock().unwrap().answers = answers;
    let addr = receiver(
        Router::new()
            .route("/hook", post(hook))
            .with_state(shared.clone()),
    )
    .await;
    (addr, shared)
}

/// The signature as the receiver checks it: HMAC-SHA256 over the body, in constant time.
fn verify(secret: &[u8], body: &[u8], header: &str) -> bool {
    use hmac::Mac as _;
    let hex = header.strip_prefix("sha256=").unwrap();
    let tag: Vec<u8> = (0..hex.len() / 2)
        .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap())
        .collect();
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret).unwrap();
    mac.update(body);
    mac.verify_slice(&tag).is_ok()
}

#[tokio::test]
async fn webhook_posts_signed_batches_and_retries() {
    // The first answer is a 503: the batch is sent again.
    let (addr, seen) = webhook_receiver(vec![StatusCode::SERVICE_UNAVAILABLE]).await;
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "s3cret\n").unwrap();
    let (h, metrics, running) = start_one(&format!(
        "webhook+http://{addr}/hook?secret={}&name=hook&batch=100",
        secret.display()
    ))
    .await;
    let n = 10;
    h.publisher
        .publish_batch((0..n).map(|i| decision(i, "exec", "block")).collect());
    let got = wait_until("every record accepted", || {
        let s = seen.lock().unwrap();
        let ok = s.requests[s.requests.len().min(1)..]
            .iter()
            .map(|(_, b)| serde_json::from_slice::<Vec<Value>>(b).unwrap().len())
            .sum::<usize>();
        (ok == n).then(|| s.requests.clone())
    })
    .await;
    assert!(got.len() >= 2, "the first answer was a 503: {got:?}");
    assert_eq!(got[0].1, got[1].1, "the same batch again");
    for (sig, body) in &got {
        let sig = sig.as_deref().expect("signed");
        assert!(verify(b"s3cret", body, sig), "{sig}");
        // The control: another key does not verify.
        assert!(!verify(b"other", body, sig));
        let records: Vec<Record> = serde_json::from_slice(body).unwrap();
        assert!(
            records
                .iter()
                .all(|r| r.kind == "exec" && r.agent.as_ref().unwrap().name == "bot")
        );
    }
    let v = &running.views()[0];
    assert_eq!((v.sent, v.lost, v.failures), (n as u64, 0, 1), "{v:?}");
    let m = metrics.render();
    assert!(
        m.contains("governance_export_records_total{exporter=\"hook\"} 10"),
        "{m}"
    );
    assert!(
        m.contains("governance_export_failures_total{exporter=\"hook\"} 1"),
        "{m}"
    );
    h.publisher.stop();
}

#[tokio::test]
async fn webhook_losses_are_counted() {
    // A 400 is not retried: the batch is lost, and counted.
    let (addr, seen) = webhook_receiver(vec![StatusCode::BAD_REQUEST]).await;
    let (h, metrics, running) =
        start_one(&format!("webhook+http://{addr}/hook?name=hook&batch=1")).await;
    h.publisher.publish(decision(0, "exec", "block"));
    h.publisher.publish(decision(1, "exec", "block"));
    wait_until("two requests", || {
        (seen.lock().unwrap().requests.len() == 2).then_some(())
    })
    .await;
    let v = wait_until("the loss counted", || {
        let v = running.views().remove(0);
        (v.lost == 1 && v.sent == 1).then_some(v)
    })
    .await;
    assert!(v.last_error.is_none(), "the last send succeeded: {v:?}");
    let m = metrics.render();
    assert!(
        m.contains("governance_export_lost_total{exporter=\"hook\"} 1"),
        "{m}"
    );

    // A receiver that never answers: the exporter waits for it, its queue (2 records) fills,
    // and the rest are lost, counted by the pipeline.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = silent.local_addr().unwrap();
    let (h2, _m2, running) = start_one(&format!(
        "webhook+http://{addr}/hook?queue=2&batch=1&retries=0"
    ))
    .await;
    let (conn_tx, mut conn_rx) = tokio::sync::mpsc::channel(8);
    tokio::spawn(async move {
        while let Ok((s, _)) = silent.accept().await {
            let _ = conn_tx.send(s).await;
        }
    });
    h2.publisher.publish(decision(0, "exec", "block"));
    // The first record is being sent (its connection accepted): the queue is empty again.
    let _held = conn_rx.recv().await.unwrap();
    h2.publisher
        .publish_batch((1..11).map(|i| decision(i, "exec", "block")).collect());
    let p = h2.publisher.clone();
    tokio::task::spawn_blocking(move || p.flush())
        .await
        .unwrap();
    let v = running.views().remove(0);
    assert_eq!(v.lost, 8, "10 records, a queue of 2: {v:?}");
    h.publisher.stop();
    h2.publisher.stop();
}

// OTLP: receivers from the official protocol definitions.

type Requests = Arc<Mutex<Vec<ExportLogsServiceRequest>>>;

async fn otlp_http(State(s): State<Requests>, headers: HeaderMap, body: Bytes) -> StatusCode {
    assert_eq!(headers["content-type"], "application/x-protobuf");
    match ExportLogsServiceRequest::decode(body) {
        Ok(r) => {
            s.lock().unwrap().push(r);
            StatusCode::OK
        }
        Err(_) => StatusCode::BAD_REQUEST,
    }
}

struct Collector(Requests);

#[tonic::async_trait]
impl LogsService for Collector {
    async fn export(
        &self,
        req: tonic::Request<ExportLogsServiceRequest>,
    ) -> Result<tonic::Response<ExportLogsServiceResponse>, tonic::Status> {
        self.0.lock().unwrap().push(req.into_inner());
        Ok(tonic::Response::new(ExportLogsServiceResponse::default()))
    }
}

/// Every log record received: (event name, body, attributes as strings).
#[allow(clippy::type_complexity)]
fn logs(reqs: &Requests) -> Vec<(String, String, Vec<(String, String)>)> {
    let mut out = Vec::new();
    for req in reqs.lock().unwrap().iter() {
        for rl in &req.resource_logs {
            let res = rl.resource.as_ref().unwrap();
            assert!(res.attributes.iter().any(|kv| kv.key == "service.name"));
            for sl in &rl.scope_logs {
                for l in &sl.log_records {
                    let body = match l.body.as_ref().and_then(|b| b.value.as_ref()) {
                        Some(any_value::Value::StringValue(s)) => s.clone(),
                        other => panic!("{other:?}"),
                    };
                    let attrs = l
                        .attributes
                        .iter()
                        .map(|kv| {
                            let v = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                                Some(any_value::Value::StringValue(s)) => s.clone(),
                                Some(any_value::Value::IntValue(i)) => i.to_string(),
                                Some(any_value::Value::BoolValue(b)) => b.to_string(),
                                other => format!("{other:?}"),
                            };
                            (kv.key.clone(), v)
                        })
                        .collect();
                    assert!(l.time_unix_nano > 0);
                    out.push((l.event_name.clone(), body, attrs));
                }
            }
        }
    }
    out
}

fn check_logs(reqs: &Requests, n: usize) {
    let logs = logs(reqs);
    assert_eq!(logs.len(), n);
    for (i, (name, body, attrs)) in logs.iter().enumerate() {
        assert_eq!(name, "http");
        assert!(body.contains("BLOCK"), "{body}");
        let get = |k: &str| {
            attrs
                .iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(get("kind"), Some("http"));
        assert_eq!(get("outcome"), Some("block"));
        assert_eq!(get("denied"), Some("true"));
        assert_eq!(get("agent.name"), Some("bot"));
        assert_eq!(get("object.path"), Some(format!("/tmp/file-{i}").as_str()));
        assert_eq!(get("type"), Some("decision"));
    }
}

#[tokio::test]
async fn otlp_logs_over_http_and_grpc() {
    let http_seen = Requests::default();
    let addr = receiver(
        Router::new()
            .route("/v1/logs", post(otlp_http))
            .with_state(http_seen.clone()),
    )
    .await;
    let grpc_seen = Requests::default();
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let grpc_addr = l.local_addr().unwrap();
    let svc = LogsServiceServer::new(Collector(grpc_seen.clone()));
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(svc)
            .serve_with_incoming(tokio_stream_of(l)),
    );
    let (h, metrics) = pipeline();
    let exporters = vec![
        Exporter::parse(&format!("otlp+http://{addr}?kind=http")).unwrap(),
        Exporter::parse(&format!("otlp+grpc://{grpc_addr}?kind=http")).unwrap(),
    ];
    let running = start(exporters, &h.publisher, &metrics).await.unwrap();
    let n = 5;
    // The filter's control: an exec record is exported by neither.
    h.publisher.publish(decision(99, "exec", "block"));
    h.publisher
        .publish_batch((0..n).map(|i| decision(i, "http", "block")).collect());
    wait_until("both receivers have every record", || {
        let count = |r: &Requests| logs(r).len();
        (count(&http_seen) == n && count(&grpc_seen) == n).then_some(())
    })
    .await;
    check_logs(&http_seen, n);
    check_logs(&grpc_seen, n);
    for v in running.views() {
        assert_eq!((v.sent, v.lost), (n as u64, 0), "{v:?}");
    }
    h.publisher.stop();
}

/// OTLP over gRPC with TLS (`otlp+grpcs`), against the same receiver served over TLS (rustls,
/// ALPN h2) with a certificate of a CA of the test's: the exporter given the CA (`ca=`)
/// delivers every record; the control, the same exporter without it, trusts only the public
/// roots and refuses the server, so its records are lost and counted, none delivered.
#[tokio::test]
async fn otlp_logs_over_grpc_with_tls() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    test_certificates(d);
    use rustls::pki_types::pem::PemObject as _;
    let pem = |f: &str| std::fs::read(d.join(f)).unwrap();
    let certs = rustls::pki_types::CertificateDer::pem_slice_iter(&pem("cert.pem"))
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(&pem("key.pem")).unwrap();
    let mut server = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .unwrap();
    server.alpn_protocols = vec![b"h2".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));

    let seen = Requests::default();
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    // The handshakes that fail (the control's) are skipped, not ended the server with.
    let incoming = futures_util::stream::unfold((l, acceptor), |(l, acceptor)| async move {
        loop {
            let Ok((tcp, _)) = l.accept().await else {
                continue;
            };
            if let Ok(tls) = acceptor.accept(tcp).await {
                return Some((Ok::<_, std::io::Error>(TlsConn(tls)), (l, acceptor)));
            }
        }
    });
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(LogsServiceServer::new(Collector(seen.clone())))
            .serve_with_incoming(incoming),
    );

    let (h, metrics) = pipeline();
    let ca = d.join("ca.pem");
    let exporters = vec![
        Exporter::parse(&format!(
            "otlp+grpcs://{addr}?kind=http&name=trusted&ca={}",
            ca.display()
        ))
        .unwrap(),
        Exporter::parse(&format!(
            "otlp+grpcs://{addr}?kind=http&name=untrusted&retries=0"
        ))
        .unwrap(),
    ];
    let running = start(exporters, &h.publisher, &metrics).await.unwrap();
    let n = 5;
    h.publisher.publish(decision(99, "exec", "block"));
    h.publisher
        .publish_batch((0..n).map(|i| decision(i, "http", "block")).collect());
    let view = |name: &str| {
        running
            .views()
            .into_iter()
            .find(|v| v.name == name)
            .unwrap()
    };
    wait_until(
        "the trusted exporter delivers, the untrusted one loses",
        || {
            let (t, u) = (view("trusted"), view("untrusted"));
            (logs(&seen).len() == n && t.sent == n as u64 && u.lost == n as u64).then_some(())
        },
    )
    .await;
    check_logs(&seen, n);
    assert_eq!(view("trusted").lost, 0);
    assert_eq!(view("untrusted").sent, 0);
    h.publisher.stop();
}

/// A server TLS connection as tonic's server takes it.
struct TlsConn(tokio_rustls::server::TlsStream<tokio::net::TcpStream>);

impl tonic::transport::server::Connected for TlsConn {
    type ConnectInfo = ();
    fn connect_info(&self) {}
}

impl tokio::io::AsyncRead for TlsConn {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for TlsConn {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }
    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }
    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }
}

/// The accepted connections of `l` as tonic's incoming stream.
fn tokio_stream_of(
    l: tokio::net::TcpListener,
) -> impl futures_util::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    futures_util::stream::unfold(l, |l| async move {
        let c = l.accept().await.map(|(s, _)| s);
        Some((c, l))
    })
}

// Notifications.

#[tokio::test]
async fn escalations_are_notified_in_slack_form() {
    let (addr, seen) = webhook_receiver(vec![]).await;
    let (h, metrics) = pipeline();
    let n = Exporter::notifier(&format!("http://{addr}/hook"), None, None).unwrap();
    let _running = start(vec![n], &h.publisher, &metrics).await.unwrap();
    // Only approval requests are notified: the decision and the approval's settling are not.
    h.publisher.publish(decision(0, "exec", "escalate"));
    h.publisher
        .publish(approval("approval.requested", "pending"));
    h.publisher
        .publish(approval("approval.approved", "approved"));
    h.publisher
        .publish(approval("approval.requested", "pending"));
    let got = wait_until("two notifications", || {
        let s = seen.lock().unwrap();
        (s.requests.len() == 2).then(|| s.requests.clone())
    })
    .await;
    let p: Value = serde_json::from_slice(&got[0].1).unwrap();
    check_notification(&p, "ab12cd34", "bot", "/tmp/secret");
    h.publisher.stop();
}

fn approval(kind: &str, state: &str) -> Record {
    Record {
        ty: RecordType::Approval,
        kind: kind.to_owned().into(),
        rule: "p/ask".into(),
        reason: "needs a human".into(),
        agent: Some(
            AgentInfo {
                name: "bot".into(),
                ..Default::default()
            }
            .into(),
        ),
        object: Object {
            path: "/tmp/secret".into(),
            ..Default::default()
        },
        approval: Some(
            ApprovalInfo {
                id: "ab12cd34".into(),
                state: state.into(),
                deadline: "2026-01-01T00:00:00Z".into(),
                ..Default::default()
            }
            .into(),
        ),
        message: "file request for bot".into(),
        ..Default::default()
    }
}

/// A Slack-compatible notification of approval `id`: `text` and `blocks`, and the commands.
pub(crate) fn check_notification(p: &Value, id: &str, agent: &str, object: &str) {
    let text = p["text"].as_str().unwrap();
    assert!(
        text.contains(id) && text.contains(agent) && text.contains(object),
        "{text}"
    );
    assert!(
        text.contains(&format!("governance approve {id} --as NAME")),
        "{text}"
    );
    assert!(
        text.contains(&format!("governance deny {id} --reason")),
        "{text}"
    );
    let blocks = p["blocks"].as_array().unwrap();
    assert!(blocks.iter().all(|b| b["type"] == "section"), "{p}");
    let all = serde_json::to_string(blocks).unwrap();
    assert!(
        all.contains(id) && all.contains("Deadline") && all.contains("Reason"),
        "{all}"
    );
    assert_eq!(p["approval"]["id"], id);
    assert!(!p["approval"]["deadline"].as_str().unwrap().is_empty());
}
