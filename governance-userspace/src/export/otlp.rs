//! OTLP logs (the official protocol types of `opentelemetry-proto`): over HTTP (protobuf,
//! POST /v1/logs) and gRPC (`LogsService/Export`, HTTP/2: plain for `otlp+grpc`, over TLS with
//! ALPN `h2` for `otlp+grpcs`, the server verified against the public roots and `ca`).
//!
//! One log record per event: `time_unix_nano` the record's time, `event_name` its kind, the
//! body its readable line (as `governance run` prints it), severity WARN for refused actions and
//! INFO otherwise, and every field of the record's JSON as an attribute named by its path
//! (`kind`, `outcome`, `agent.name`, `object.path`, `approval.id`, ...; lists as arrays). The
//! resource says `service.name` = `governance` and `host.name` = the node.

use opentelemetry_proto::tonic::{
    collector::logs::v1::{ExportLogsServiceRequest, logs_service_client::LogsServiceClient},
    common::v1::{AnyValue, ArrayValue, InstrumentationScope, KeyValue, any_value},
    logs::v1::{LogRecord, ResourceLogs, ScopeLogs},
    resource::v1::Resource,
};
use prost::Message as _;
use serde_json::Value;

use super::SendError;
use crate::{events::Record, pipeline::Delivered};

pub type GrpcClient = LogsServiceClient<tonic::transport::Channel>;

/// Where an `otlp+grpc` or `otlp+grpcs` exporter sends.
#[derive(Clone, Debug)]
pub struct GrpcTarget {
    /// `http://HOST:PORT` or `https://HOST:PORT`.
    pub endpoint: String,
    /// `otlp+grpcs`: the TLS client's settings.
    pub tls: Option<std::sync::Arc<rustls::ClientConfig>>,
}

impl GrpcTarget {
    pub fn plain(authority: &str) -> Self {
        Self {
            endpoint: format!("http://{authority}"),
            tls: None,
        }
    }

    /// gRPC over TLS, trusting the public roots and the PEM roots in `ca`.
    pub fn tls(authority: &str, ca: Option<&std::path::Path>) -> Result<Self, String> {
        let config = crate::proxy::tls::client_config(ca).map_err(|e| e.to_string())?;
        let mut config = (*config).clone();
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Self {
            endpoint: format!("https://{authority}"),
            tls: Some(std::sync::Arc::new(config)),
        })
    }

    async fn connect(&self) -> Result<tonic::transport::Channel, tonic::transport::Error> {
        let endpoint = tonic::transport::Endpoint::from_shared(self.endpoint.clone())?;
        let Some(tls) = self.tls.clone() else {
            return endpoint.connect().await;
        };
        // tonic is built without its TLS features: the TLS is ours (rustls, as the other
        // exporters'), under tonic's HTTP/2.
        let connector = tower::service_fn(move |uri: tonic::codegen::http::Uri| {
            let tls = tls.clone();
            async move {
                let host = uri
                    .host()
                    .unwrap_or_default()
                    .trim_start_matches('[')
                    .trim_end_matches(']')
                    .to_owned();
                let port = uri.port_u16().unwrap_or(443);
                let tcp = tokio::net::TcpStream::connect((host.as_str(), port)).await?;
                let name =
                    rustls::pki_types::ServerName::try_from(host).map_err(std::io::Error::other)?;
                let stream = tokio_rustls::TlsConnector::from(tls)
                    .connect(name, tcp)
                    .await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
            }
        });
        endpoint.connect_with_connector(connector).await
    }
}

/// An error with its causes (tonic's own says only "transport error").
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// OTLP severity numbers.
const SEVERITY_INFO: i32 = 9;
const SEVERITY_WARN: i32 = 13;

fn string(s: &str) -> AnyValue {
    AnyValue {
        value: Some(any_value::Value::StringValue(s.to_owned())),
    }
}

fn any(v: &Value) -> Option<AnyValue> {
    let value = match v {
        Value::Null => return None,
        Value::Bool(b) => any_value::Value::BoolValue(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => any_value::Value::IntValue(i),
            None => any_value::Value::DoubleValue(n.as_f64().unwrap_or_default()),
        },
        Value::String(s) => any_value::Value::StringValue(s.clone()),
        Value::Array(a) => any_value::Value::ArrayValue(ArrayValue {
            values: a.iter().filter_map(any).collect(),
        }),
        // Objects are flattened by the caller; inside arrays they are JSON text.
        Value::Object(_) => any_value::Value::StringValue(v.to_string()),
    };
    Some(AnyValue { value: Some(value) })
}

/// The record's JSON fields as attributes, nested objects as dotted paths.
fn flatten(prefix: &str, v: &Value, out: &mut Vec<KeyValue>) {
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&key, v, out);
            }
        }
        v => {
            if let Some(value) = any(v) {
                out.push(KeyValue {
                    key: prefix.to_owned(),
                    value: Some(value),
                    ..Default::default()
                });
            }
        }
    }
}

/// One event as an OTLP log record.
pub fn log_record(r: &Record, json: &[u8]) -> LogRecord {
    let mut attributes = Vec::new();
    if let Ok(v) = serde_json::from_slice::<Value>(json) {
        flatten("", &v, &mut attributes);
    }
    let time = crate::events::parse_rfc3339(&r.time)
        .and_then(|t| t.duration_since(std::time::SystemTime::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos() as u64);
    let (severity_number, severity_text) = if r.denied {
        (SEVERITY_WARN, "WARN")
    } else {
        (SEVERITY_INFO, "INFO")
    };
    LogRecord {
        time_unix_nano: time,
        observed_time_unix_nano: time,
        severity_number,
        severity_text: severity_text.into(),
        body: Some(string(&r.to_string())),
        attributes,
        event_name: r.kind.to_string(),
        ..Default::default()
    }
}

/// The export request of a batch.
pub fn request(batch: &[Delivered]) -> ExportLogsServiceRequest {
    let node = batch
        .first()
        .map(|d| d.record.node.clone())
        .unwrap_or_default();
    let kv = |k: &str, v: &str| KeyValue {
        key: k.into(),
        value: Some(string(v)),
        ..Default::default()
    };
    ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            resource: Some(Resource {
                attributes: vec![kv("service.name", "governance"), kv("host.name", &node)],
                ..Default::default()
            }),
            scope_logs: vec![ScopeLogs {
                scope: Some(InstrumentationScope {
                    name: "governance".into(),
                    version: env!("CARGO_PKG_VERSION").into(),
                    ..Default::default()
                }),
                log_records: batch
                    .iter()
                    .map(|d| log_record(&d.record, &super::record_json(d)))
                    .collect(),
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

/// The protobuf body of OTLP/HTTP.
pub fn encode(batch: &[Delivered]) -> Vec<u8> {
    request(batch).encode_to_vec()
}

pub async fn send_grpc(
    target: &GrpcTarget,
    client: &mut Option<GrpcClient>,
    batch: &[Delivered],
) -> Result<(), SendError> {
    let endpoint = &target.endpoint;
    if client.is_none() {
        let channel = target
            .connect()
            .await
            .map_err(|e| SendError::Transient(format!("{endpoint}: connect: {}", chain(&e))))?;
        *client = Some(LogsServiceClient::new(channel));
    }
    let Some(c) = client else { return Ok(()) };
    match c.export(request(batch)).await {
        Ok(_) => Ok(()),
        Err(s) => {
            use tonic::Code;
            let msg = format!("{endpoint}: {}: {}", s.code(), s.message());
            // The retryable codes of the OTLP specification.
            if matches!(
                s.code(),
                Code::Cancelled
                    | Code::DeadlineExceeded
                    | Code::ResourceExhausted
                    | Code::Aborted
                    | Code::OutOfRange
                    | Code::Unavailable
                    | Code::DataLoss
                    | Code::Unknown
                    | Code::Internal
            ) {
                Err(SendError::Transient(msg))
            } else {
                Err(SendError::Permanent(msg))
            }
        }
    }
}
