//! HTTP POSTs of the webhook, OTLP/HTTP and notification exporters: one connection per
//! request (HTTP/1.1, TLS by rustls for https), signed with HMAC-SHA256 when a secret is set.

use std::{path::Path, sync::Arc};

use axum::http::{Request, StatusCode, Uri, header};
use bytes::Bytes;
use hmac::{Hmac, Mac as _};
use http_body_util::{BodyExt as _, Full};
use hyper_util::rt::TokioIo;
use sha2::Sha256;
use tokio::io::{AsyncRead, AsyncWrite};

use super::SendError;

/// The signature header: `sha256=<hex of HMAC-SHA256(secret, body)>`.
pub const SIGNATURE_HEADER: &str = "x-governance-signature";

/// Where POSTs go.
#[derive(Clone)]
pub struct Target {
    uri: Uri,
    secret: Option<Vec<u8>>,
    /// For https.
    tls: Option<Arc<rustls::ClientConfig>>,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target")
            .field("uri", &self.uri)
            .field("signed", &self.secret.is_some())
            .finish()
    }
}

impl Target {
    pub fn new(url: &str, secret: Option<Vec<u8>>, ca: Option<&Path>) -> Result<Self, String> {
        let uri = super::parse_uri(url)?;
        let tls = if uri.scheme_str() == Some("https") {
            Some(crate::proxy::tls::client_config(ca).map_err(|e| e.to_string())?)
        } else {
            if ca.is_some() {
                return Err("`ca` is for https".into());
            }
            None
        };
        Ok(Target { uri, secret, tls })
    }

    /// POST `body`; Ok on a 2xx answer.
    pub async fn post(&self, content_type: &str, body: Vec<u8>) -> Result<(), SendError> {
        let transient = |e: String| SendError::Transient(format!("{}: {e}", self.uri));
        let host = self.uri.host().unwrap_or_default();
        let https = self.tls.is_some();
        let port = self.uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let host_bare = host.trim_start_matches('[').trim_end_matches(']');
        let tcp = tokio::net::TcpStream::connect((host_bare, port))
            .await
            .map_err(|e| transient(format!("connect: {e}")))?;
        let mut req = Request::post(
            self.uri
                .path_and_query()
                .map_or("/", |p| p.as_str())
                .to_owned(),
        )
        .header(
            header::HOST,
            self.uri.authority().map_or(host, |a| a.as_str()),
        )
        .header(header::CONTENT_TYPE, content_type)
        .header(
            header::USER_AGENT,
            concat!("governance/", env!("CARGO_PKG_VERSION")),
        );
        if let Some(secret) = &self.secret {
            req = req.header(SIGNATURE_HEADER, sign(secret, &body));
        }
        let req = req
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| SendError::Permanent(e.to_string()))?;
        let status = match &self.tls {
            Some(config) => {
                let name = rustls::pki_types::ServerName::try_from(host_bare.to_owned())
                    .map_err(|e| SendError::Permanent(format!("{host}: {e}")))?;
                let tls = tokio_rustls::TlsConnector::from(config.clone())
                    .connect(name, tcp)
                    .await
                    .map_err(|e| transient(format!("TLS: {e}")))?;
                exchange(tls, req).await
            }
            None => exchange(tcp, req).await,
        }
        .map_err(transient)?;
        if status.is_success() {
            Ok(())
        } else if status.is_server_error()
            || status == StatusCode::REQUEST_TIMEOUT
            || status == StatusCode::TOO_MANY_REQUESTS
        {
            Err(transient(format!("answered {status}")))
        } else {
            Err(SendError::Permanent(format!(
                "{}: answered {status}",
                self.uri
            )))
        }
    }
}

/// `sha256=<hex>` of HMAC-SHA256 over `body`.
pub fn sign(secret: &[u8], body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(body);
    let tag = mac.finalize().into_bytes();
    let mut out = String::with_capacity(7 + 64);
    out.push_str("sha256=");
    for b in tag {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

async fn exchange<S>(io: S, req: Request<Full<Bytes>>) -> Result<StatusCode, String>
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| e.to_string())?;
    let conn = tokio::spawn(conn);
    let resp = sender.send_request(req).await.map_err(|e| e.to_string());
    let out = match resp {
        Ok(resp) => {
            let status = resp.status();
            // Read the answer's body (bounded by the exporter's send timeout).
            let _ = resp.into_body().collect().await;
            Ok(status)
        }
        Err(e) => Err(e),
    };
    conn.abort();
    out
}
