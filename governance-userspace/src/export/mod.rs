//! Exporters: records leave the node. Each `--export URL` (and `--notify-webhook URL`) is a
//! pipeline subscriber ([`crate::pipeline::Publisher::subscribe`]) with its own bounded queue and
//! filter; a task takes what is queued in batches and sends them, retrying with backoff. What is
//! lost is counted: records its queue had no room for (the pipeline counts them, and tells the
//! exporter with a `subscriber.lost` record, which is exported too) and batches given up after
//! the last retry. Both are in `governance status` and in the metrics
//! (`governance_export_*_total{exporter}`). See docs/export-and-notify.md.
//!
//! | URL | what |
//! |---|---|
//! | `syslog+udp://HOST:PORT`, `syslog+tcp://…`, `syslog+tls://…` | RFC 5424; TCP and TLS with octet counting (RFC 6587) |
//! | `webhook+http://HOST:PORT/PATH`, `webhook+https://…` | a JSON array of records per batch, signed (`X-Governance-Signature`) |
//! | `otlp+http://HOST:PORT[/v1/logs]`, `otlp+https://…`, `otlp+grpc://HOST:PORT`, `otlp+grpcs://…` | OTLP logs, the record's fields as attributes |
//!
//! Query parameters: the filters of `governance events` (`agent`, `outcome`/`verdict`, `kind`,
//! `type`), `queue` (records, default 8192), `batch` (records per send, default 256),
//! `retries` (attempts after the first, default 5), `secret` (a file: the HMAC key of webhook
//! signatures), `ca` (a PEM file of extra roots for TLS), `name` (in status and metrics).

mod http;
mod notify;
mod otlp;
mod syslog;

#[cfg(test)]
pub(crate) mod tests;

use std::{
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use axum::http::Uri;
use serde::{Deserialize, Serialize};

use crate::{
    api::EventsQuery,
    events::Filter,
    metrics::Metrics,
    pipeline::{Delivered, Publisher},
};

pub use notify::slack_payload;

/// Why an exporter's configuration is refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("--export `{spec}`: {problem}")]
    Spec { spec: String, problem: String },
    #[error("{what} {path}: {problem}")]
    File {
        what: &'static str,
        path: PathBuf,
        problem: String,
    },
}

/// Why one send failed.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// Worth retrying: the connection, a timeout, a 5xx, 408 or 429.
    #[error("{0}")]
    Transient(String),
    /// Retrying would not help (the receiver refused the records: a 4xx).
    #[error("{0}")]
    Permanent(String),
}

/// Where and how one exporter sends.
#[derive(Clone, Debug)]
pub enum Sink {
    Syslog(syslog::Transport),
    Webhook(http::Target),
    OtlpHttp(http::Target),
    OtlpGrpc(otlp::GrpcTarget),
    /// Slack-compatible notifications of escalations (`--notify-webhook`).
    Notify(http::Target),
}

/// One configured exporter.
#[derive(Clone, Debug)]
pub struct Exporter {
    /// In status and metrics: `name=`, else the URL without its query.
    pub name: String,
    pub sink: Sink,
    pub filter: Filter,
    pub queue: usize,
    pub batch: usize,
    pub retries: u32,
}

/// The query parameters of an `--export` URL.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Options {
    agent: Option<String>,
    verdict: Option<String>,
    outcome: Option<String>,
    kind: Option<String>,
    #[serde(rename = "type")]
    ty: Option<String>,
    queue: Option<usize>,
    batch: Option<usize>,
    retries: Option<u32>,
    secret: Option<PathBuf>,
    ca: Option<PathBuf>,
    name: Option<String>,
}

pub const DEFAULT_QUEUE: usize = 8192;
pub const DEFAULT_BATCH: usize = 256;
pub const DEFAULT_RETRIES: u32 = 5;
/// The first retry waits this long; each next one twice as long, up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// How long one send may take (connect, write, answer).
pub const SEND_TIMEOUT: Duration = Duration::from_secs(10);

impl Exporter {
    /// Parse an `--export` URL (see the module doc).
    pub fn parse(spec: &str) -> Result<Self, ConfigError> {
        let bad = |problem: String| ConfigError::Spec {
            spec: spec.to_owned(),
            problem,
        };
        let (base, query) = spec.split_once('?').unwrap_or((spec, ""));
        let o: Options = serde_urlencoded::from_str(query).map_err(|e| {
            bad(format!(
                "{e} (parameters: agent, outcome, kind, type, queue, batch, retries, secret, ca, name)"
            ))
        })?;
        let (scheme, rest) = base
            .split_once("://")
            .ok_or_else(|| bad("expected SCHEME://HOST:PORT".into()))?;
        let ca = o.ca.clone();
        let secret = o.secret.as_deref().map(read_secret).transpose()?;
        let http = |url: String| -> Result<http::Target, ConfigError> {
            http::Target::new(&url, secret.clone(), ca.as_deref()).map_err(bad)
        };
        let no_path = |what: &str| -> Result<String, ConfigError> {
            let authority = rest.trim_end_matches('/');
            if authority.is_empty() || authority.contains('/') {
                return Err(bad(format!("{what}: expected HOST:PORT, without a path")));
            }
            Ok(authority.to_owned())
        };
        let sink = match scheme {
            "syslog+udp" => Sink::Syslog(syslog::Transport::Udp(no_path("syslog")?)),
            "syslog+tcp" => Sink::Syslog(syslog::Transport::Tcp(no_path("syslog")?)),
            "syslog+tls" => {
                let addr = no_path("syslog")?;
                let config = syslog::tls_config(ca.as_deref()).map_err(bad)?;
                Sink::Syslog(syslog::Transport::Tls(addr, config))
            }
            "webhook+http" | "webhook+https" => {
                Sink::Webhook(http(format!("{}://{rest}", &scheme[8..]))?)
            }
            "otlp+http" | "otlp+https" => {
                let mut url = format!("{}://{}", &scheme[5..], rest.trim_end_matches('/'));
                if !rest.trim_end_matches('/').contains('/') {
                    url.push_str("/v1/logs");
                }
                Sink::OtlpHttp(http(url)?)
            }
            "otlp+grpc" => Sink::OtlpGrpc(otlp::GrpcTarget::plain(&no_path("otlp+grpc")?)),
            "otlp+grpcs" => Sink::OtlpGrpc(
                otlp::GrpcTarget::tls(&no_path("otlp+grpcs")?, ca.as_deref()).map_err(bad)?,
            ),
            other => {
                return Err(bad(format!(
                    "unknown scheme `{other}`: syslog+udp, syslog+tcp, syslog+tls, webhook+http, \
                     webhook+https, otlp+http, otlp+https, otlp+grpc or otlp+grpcs"
                )));
            }
        };
        if secret.is_some() && !matches!(sink, Sink::Webhook(_)) {
            return Err(bad("`secret` is for webhook exporters".into()));
        }
        if ca.is_some() && matches!(&sink, Sink::OtlpGrpc(t) if t.tls.is_none()) {
            return Err(bad(
                "otlp+grpc is plain HTTP/2 (no TLS): no `ca` (otlp+grpcs is gRPC over TLS)".into(),
            ));
        }
        let filter = EventsQuery {
            agent: o.agent,
            verdict: o.verdict,
            outcome: o.outcome,
            kind: o.kind,
            ty: o.ty,
            ..Default::default()
        }
        .filter()
        .map_err(|e| bad(e.to_string()))?;
        let queue = o.queue.unwrap_or(DEFAULT_QUEUE);
        let batch = o.batch.unwrap_or(DEFAULT_BATCH);
        if queue == 0 || queue > crate::api::MAX_SUBSCRIBER_QUEUE || batch == 0 {
            return Err(bad(format!(
                "queue: 1 to {} records; batch: at least 1",
                crate::api::MAX_SUBSCRIBER_QUEUE
            )));
        }
        Ok(Exporter {
            name: o.name.unwrap_or_else(|| base.to_owned()),
            sink,
            filter,
            queue,
            batch,
            retries: o.retries.unwrap_or(DEFAULT_RETRIES),
        })
    }

    /// The `--notify-webhook` notifier: one Slack-compatible message per escalation
    /// (`approval.requested`), signed when `secret` is given.
    pub fn notifier(
        url: &str,
        secret: Option<&std::path::Path>,
        ca: Option<&std::path::Path>,
    ) -> Result<Self, ConfigError> {
        let secret = secret.map(read_secret).transpose()?;
        let target = http::Target::new(url, secret, ca).map_err(|problem| ConfigError::Spec {
            spec: url.to_owned(),
            problem,
        })?;
        Ok(Exporter {
            name: format!("notify {url}"),
            sink: Sink::Notify(target),
            filter: Filter {
                kinds: vec!["approval.requested".into()],
                ..Default::default()
            },
            queue: 1024,
            batch: 1,
            retries: DEFAULT_RETRIES,
        })
    }
}

/// The files `--export` URLs name under `key` (kept from agents by the daemon's built-in file
/// rules): `secret`, the HMAC keys of signatures; `ca`, the roots an exporter's TLS trusts.
pub fn files_named(specs: &[String], key: &str) -> Vec<PathBuf> {
    specs
        .iter()
        .filter_map(|s| {
            let (_, query) = s.split_once('?')?;
            serde_urlencoded::from_str::<Vec<(String, String)>>(query).ok()
        })
        .flatten()
        .filter(|(k, _)| k == key)
        .map(|(_, v)| PathBuf::from(v))
        .collect()
}

/// The HMAC key of webhook signatures: the file's content, without surrounding whitespace.
fn read_secret(path: &std::path::Path) -> Result<Vec<u8>, ConfigError> {
    let bad = |problem: String| ConfigError::File {
        what: "the webhook secret",
        path: path.to_owned(),
        problem,
    };
    let s = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
    let s = s.trim_ascii().to_vec();
    if s.is_empty() {
        return Err(bad("empty".into()));
    }
    Ok(s)
}

/// One exporter's counts, for `governance status`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ExporterView {
    pub name: String,
    /// Records sent and accepted.
    pub sent: u64,
    /// Records lost: the queue was full, or the last retry failed.
    pub lost: u64,
    /// Failed sends (retries included).
    pub failures: u64,
    /// The last failure, if the last send failed.
    pub last_error: Option<String>,
}

/// What a running exporter shares with the API.
#[derive(Debug, Default)]
pub struct Stats {
    name: String,
    sent: AtomicU64,
    dropped: AtomicU64,
    failures: AtomicU64,
    /// The queue's losses, counted by the pipeline.
    queue_lost: Arc<AtomicU64>,
    last_error: Mutex<Option<String>>,
}

impl Stats {
    pub fn view(&self) -> ExporterView {
        let queue_lost = self.queue_lost.load(Ordering::Relaxed);
        ExporterView {
            name: self.name.clone(),
            sent: self.sent.load(Ordering::Relaxed),
            lost: self.dropped.load(Ordering::Relaxed) + queue_lost,
            failures: self.failures.load(Ordering::Relaxed),
            last_error: self.last_error.lock().ok().and_then(|e| e.clone()),
        }
    }
}

/// The running exporters: their tasks and counts.
#[derive(Default)]
pub struct Running {
    pub stats: Vec<Arc<Stats>>,
    pub tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Running {
    pub fn views(&self) -> Vec<ExporterView> {
        self.stats.iter().map(|s| s.view()).collect()
    }
}

/// Subscribe every exporter and start its task. Each ends when the pipeline stops (after
/// sending what its queue still holds, each batch tried once more at most).
pub async fn start(
    exporters: Vec<Exporter>,
    publisher: &Publisher,
    metrics: &Arc<Metrics>,
) -> anyhow::Result<Running> {
    let mut running = Running::default();
    for e in exporters {
        let sub = publisher
            .subscribe(e.filter.clone(), e.queue)
            .await
            .ok_or_else(|| anyhow::anyhow!("the event pipeline stopped"))?;
        let stats = Arc::new(Stats {
            name: e.name.clone(),
            queue_lost: sub.lost.clone(),
            ..Default::default()
        });
        metrics.watch_exporter(stats.clone());
        running.stats.push(stats.clone());
        running.tasks.push(tokio::spawn(run(e, sub.rx, stats)));
    }
    Ok(running)
}

/// Take batches from the queue and send them, retrying each with backoff; ends when the
/// pipeline ends the subscription.
async fn run(e: Exporter, mut rx: tokio::sync::mpsc::Receiver<Delivered>, stats: Arc<Stats>) {
    let mut conn = Conn::default();
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while batch.len() < e.batch {
            match rx.try_recv() {
                Ok(d) => batch.push(d),
                Err(_) => break,
            }
        }
        // The stream's own first record says only that the subscription is registered.
        batch.retain(|d| d.record.kind != "stream.subscribed");
        if batch.is_empty() {
            continue;
        }
        let stopping = rx.is_closed();
        let mut backoff = FIRST_BACKOFF;
        let mut attempt = 0;
        loop {
            let result = tokio::time::timeout(SEND_TIMEOUT, send(&e.sink, &mut conn, &batch))
                .await
                .unwrap_or_else(|_| Err(SendError::Transient("timed out".into())));
            match result {
                Ok(()) => {
                    stats.sent.fetch_add(batch.len() as u64, Ordering::Relaxed);
                    if let Ok(mut l) = stats.last_error.lock() {
                        *l = None;
                    }
                    break;
                }
                Err(err) => {
                    conn = Conn::default();
                    stats.failures.fetch_add(1, Ordering::Relaxed);
                    let msg = err.to_string();
                    if let Ok(mut l) = stats.last_error.lock() {
                        *l = Some(msg.clone());
                    }
                    let give_up = matches!(err, SendError::Permanent(_))
                        || attempt >= e.retries
                        || (stopping && attempt >= 1);
                    if give_up {
                        tracing::warn!(
                            "exporter {}: {} records lost after {} attempts: {msg}",
                            e.name,
                            batch.len(),
                            attempt + 1
                        );
                        stats
                            .dropped
                            .fetch_add(batch.len() as u64, Ordering::Relaxed);
                        break;
                    }
                    tracing::debug!("exporter {}: retrying in {backoff:?}: {msg}", e.name);
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    attempt += 1;
                }
            }
        }
    }
}

/// A connection kept between batches (syslog over TCP or TLS, the gRPC channel).
#[derive(Default)]
struct Conn {
    stream: Option<syslog::Stream>,
    grpc: Option<otlp::GrpcClient>,
}

async fn send(sink: &Sink, conn: &mut Conn, batch: &[Delivered]) -> Result<(), SendError> {
    match sink {
        Sink::Syslog(t) => syslog::send(t, &mut conn.stream, batch).await,
        Sink::Webhook(t) => {
            let body = json_array(batch);
            t.post("application/json", body).await
        }
        Sink::OtlpHttp(t) => {
            let body = otlp::encode(batch);
            t.post("application/x-protobuf", body).await
        }
        Sink::OtlpGrpc(target) => otlp::send_grpc(target, &mut conn.grpc, batch).await,
        Sink::Notify(t) => {
            for d in batch {
                let body = serde_json::to_vec(&slack_payload(&d.record)).unwrap_or_default();
                t.post("application/json", body).await?;
            }
            Ok(())
        }
    }
}

/// The record as JSON, as the audit log and `governance events -o json` have it.
fn record_json(d: &Delivered) -> Vec<u8> {
    if d.json.is_empty() {
        serde_json::to_vec(&*d.record).unwrap_or_default()
    } else {
        d.json.to_vec()
    }
}

/// `[record,record,...]`.
fn json_array(batch: &[Delivered]) -> Vec<u8> {
    let mut out = vec![b'['];
    for (i, d) in batch.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(&record_json(d));
    }
    out.push(b']');
    out
}

/// `http://host:port/path` split for a request.
pub(crate) fn parse_uri(url: &str) -> Result<Uri, String> {
    let uri: Uri = url.parse().map_err(|e| format!("`{url}`: {e}"))?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        _ => return Err(format!("`{url}`: expected an http:// or https:// URL")),
    }
    if uri.host().is_none() {
        return Err(format!("`{url}`: no host"));
    }
    Ok(uri)
}
