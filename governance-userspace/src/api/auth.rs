//! Who may use the TCP API: bearer tokens, each with a user name (`--api-tokens FILE`, or the
//! one token of `--api-token-file`, user `api-token`), compared in constant time; and TLS for
//! the listener (`--api-tls-cert`, `--api-tls-key`).
//!
//! Tokens are compared as SHA-256 digests with `subtle`: the time taken depends neither on
//! where a wrong token first differs nor on its length, and every configured token is compared
//! (no early exit on a match).

use std::{net::SocketAddr, path::Path, sync::Arc, time::Duration};

use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, server::TlsStream};

/// The user of a request's token, put in the request's extensions by the token check.
#[derive(Clone, Debug)]
pub struct ApiUser(pub String);

/// The TCP API's tokens: (user, SHA-256 of the token).
#[derive(Clone, Debug, Default)]
pub struct Tokens(Vec<(String, [u8; 32])>);

/// Why a token file is refused.
#[derive(Debug, thiserror::Error)]
#[error("API tokens {path}: {problem}")]
pub struct TokenError {
    pub path: std::path::PathBuf,
    pub problem: String,
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

impl Tokens {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Add `token` for `user`.
    pub fn add(&mut self, user: &str, token: &str) {
        self.0.push((user.to_owned(), digest(token)));
    }

    /// The one token of `--api-token-file` (its whole content, trimmed), user `api-token`.
    pub fn load_single(path: &Path) -> Result<Self, TokenError> {
        let bad = |problem: String| TokenError {
            path: path.to_owned(),
            problem,
        };
        let t = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
        let t = t.trim();
        if t.is_empty() {
            return Err(bad("empty".into()));
        }
        let mut out = Tokens::default();
        out.add("api-token", t);
        Ok(out)
    }

    /// `--api-tokens FILE`: a YAML mapping, one `name: token` line per user.
    pub fn load(path: &Path) -> Result<Self, TokenError> {
        let bad = |problem: String| TokenError {
            path: path.to_owned(),
            problem,
        };
        let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
        let map: std::collections::BTreeMap<String, String> = serde_norway::from_str(&text)
            .map_err(|e| bad(format!("expected `name: token` lines: {e}")))?;
        let mut out = Tokens::default();
        let mut seen = std::collections::HashSet::new();
        for (user, token) in &map {
            let (user, token) = (user.trim(), token.trim());
            if user.is_empty() || token.is_empty() {
                return Err(bad(format!("user `{user}`: an empty name or token")));
            }
            if token.len() < 16 {
                return Err(bad(format!(
                    "user `{user}`: the token is shorter than 16 characters"
                )));
            }
            if !seen.insert(digest(token)) {
                return Err(bad(format!(
                    "user `{user}`: the same token as another user (a token names one user)"
                )));
            }
            out.add(user, token);
        }
        if out.is_empty() {
            return Err(bad("no tokens".into()));
        }
        Ok(out)
    }

    /// Merge another set (both flags given).
    pub fn extend(&mut self, other: Tokens) {
        self.0.extend(other.0);
    }

    /// The user whose token `given` is, compared in constant time against every token.
    pub fn user(&self, given: &str) -> Option<&str> {
        let d = digest(given);
        let mut found = None;
        for (user, want) in &self.0 {
            if bool::from(want.ct_eq(&d)) {
                found = Some(user.as_str());
            }
        }
        found
    }
}

/// How long a client may take for its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The server configuration of `--api-tls-cert` and `--api-tls-key` (PEM).
pub fn tls_config(cert: &Path, key: &Path) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    use anyhow::Context as _;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _};
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(|i| i.collect::<Result<Vec<_>, _>>())
        .map_err(|e| anyhow::anyhow!("--api-tls-cert {}: {e}", cert.display()))?;
    if certs.is_empty() {
        anyhow::bail!("--api-tls-cert {}: no PEM certificates", cert.display());
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| anyhow::anyhow!("--api-tls-key {}: {e}", key.display()))?;
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .context("TLS for the API")?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .context("--api-tls-cert and --api-tls-key do not make a usable pair")?;
    Ok(Arc::new(config))
}

/// A TCP listener whose connections are TLS: handshakes run in tasks of their own (a slow
/// client holds up nobody), and the finished ones are accepted.
pub struct TlsListener {
    rx: tokio::sync::mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TlsListener {
    pub fn new(l: TcpListener, config: Arc<rustls::ServerConfig>) -> std::io::Result<Self> {
        let local = l.local_addr()?;
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let acceptor = TlsAcceptor::from(config);
        let task = tokio::spawn(async move {
            loop {
                let (tcp, peer) = match l.accept().await {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!("API on {local}: accept: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let (acceptor, tx) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(tls)) => {
                            let _ = tx.send((tls, peer)).await;
                        }
                        Ok(Err(e)) => tracing::debug!("API on {local}: TLS from {peer}: {e}"),
                        Err(_) => tracing::debug!("API on {local}: TLS from {peer}: timed out"),
                    }
                });
            }
        });
        Ok(TlsListener { rx, local, task })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(c) => c,
            // The accepting task is gone: nothing more will come.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_name_their_users() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("tokens");
        std::fs::write(
            &f,
            "alice: alice-token-0123456789\nbob: \"bob-token-0123456789\"\n",
        )
        .unwrap();
        let t = Tokens::load(&f).unwrap();
        assert_eq!(t.user("alice-token-0123456789"), Some("alice"));
        assert_eq!(t.user("bob-token-0123456789"), Some("bob"));
        // Controls: a prefix, a longer token, another's, nothing.
        for wrong in [
            "alice-token-012345678",
            "alice-token-0123456789x",
            "bob",
            "",
        ] {
            assert_eq!(t.user(wrong), None, "{wrong}");
        }
        for (bad, says) in [
            ("alice: short\n", "shorter than 16"),
            (
                "a: same-token-0123456789\nb: same-token-0123456789\n",
                "same token",
            ),
            ("- just a list\n", "name: token"),
            ("", "no tokens"),
            ("alice: \"\"\n", "empty"),
        ] {
            std::fs::write(&f, bad).unwrap();
            let e = Tokens::load(&f).unwrap_err().to_string();
            assert!(e.contains(says), "{bad}: {e}");
        }
        std::fs::write(&f, "  single-token \n").unwrap();
        assert_eq!(
            Tokens::load_single(&f).unwrap().user("single-token"),
            Some("api-token")
        );
    }
}
