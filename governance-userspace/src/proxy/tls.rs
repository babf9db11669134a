//! TLS in the proxy: host-level decisions from the SNI, splicing, and opt-in interception.
//!
//! # Without interception (the default)
//!
//! The proxy peeks at the agent's ClientHello without consuming it ([`peek_client_hello`]), takes
//! the server name (SNI) from it ([`parse_sni`]) and decides on that host. An allowed connection
//! is then spliced byte for byte to the upstream ([`splice`]): the TLS session is between the
//! agent and the real server, so the proxy sees only the host, never the method, path, headers
//! or body, and only host-level rules can apply. A ClientHello without SNI (a client connecting
//! to an IP address) leaves only the destination address to decide on. With Encrypted Client
//! Hello, the name seen is the outer, public one.
//!
//! The SNI is only what the client claims. Splice to an address the proxy resolved for that
//! host (or check that the original destination is one of them), or an agent can name an allowed
//! host while connecting anywhere. Likewise, a different HTTP `Host` inside the encrypted stream
//! (domain fronting) is invisible without interception.
//!
//! # Interception (opt-in per host)
//!
//! For the hosts a policy chooses, the proxy terminates the agent's TLS itself with a certificate
//! for that host, issued on demand by a per-node CA ([`NodeCa`], [`accept_intercepted`]), and
//! opens its own TLS connection to the upstream ([`client_config`], [`connect_upstream`]). It then
//! sees every request, so the full request-level decisions apply. Intercepted traffic is served
//! as HTTP/1.1 only (ALPN `http/1.1`): a client that insists on HTTP/2 (gRPC) fails the
//! handshake, so don't intercept such hosts. Upstream certificates are checked against the
//! Mozilla roots built into the daemon (webpki-roots) plus an optional PEM file of extra roots.
//!
//! # The node CA, and trusting it in an agent container
//!
//! The first time the proxy starts, the daemon creates two files in its CA directory: `ca.crt`,
//! the CA certificate (PEM, mode 0644), and `ca.key`, its private key (PEM, mode 0600). The CA is
//! ECDSA P-256, named `governance node CA <hostname>`, valid for 10 years, and may sign only leaf
//! certificates (path length 0). Later starts reuse both files. A missing, corrupt or mismatched
//! file is an error naming the file: a new CA is never generated silently, because agents trust
//! the old one. Keep `ca.key` secret: whoever holds it can impersonate any site to agents that
//! trust the CA. Leaf certificates live in memory only; each is valid from a day before it is
//! issued to 30 days after, and is reissued after 7 days.
//!
//! Agents whose hosts are intercepted must trust `ca.crt`. In a Debian or Ubuntu based image
//! (Alpine the same, with the `ca-certificates` package):
//!
//! ```text
//! cp ca.crt /usr/local/share/ca-certificates/governance-node-ca.crt
//! update-ca-certificates
//! ```
//!
//! On RHEL or Fedora, copy it to `/etc/pki/ca-trust/source/anchors/` and run `update-ca-trust`.
//! Some runtimes bring their own roots instead of the system's:
//!
//! - Python `requests` (certifi's roots): `REQUESTS_CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt`;
//!   `httpx` (certifi's too) and other OpenSSL users: `SSL_CERT_FILE=` the same bundle; `pip`:
//!   `PIP_CERT=` the same bundle.
//! - Node.js: `NODE_EXTRA_CA_CERTS=/path/to/ca.crt` (added to Node's own roots).
//! - Java: `keytool -importcert -cacerts -alias governance-node-ca -file ca.crt -noprompt`.
//!
//! `REQUESTS_CA_BUNDLE` and `SSL_CERT_FILE` replace the roots rather than add to them: point them
//! at the system bundle that includes the node CA (as above), not at `ca.crt` alone, or every
//! host that is spliced rather than intercepted fails verification.

use std::{
    collections::{HashMap, VecDeque},
    fmt, fs, io,
    net::{IpAddr, SocketAddr},
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, SanType,
};
use rustls::{
    ClientConfig, RootCertStore, ServerConfig,
    crypto::CryptoProvider,
    pki_types::{
        CertificateDer, DnsName, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, pem::PemObject,
    },
};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::TcpStream,
};
use tokio_rustls::{TlsAcceptor, TlsConnector, client, server};
use tracing::{debug, info, warn};

/// The most of a connection's first bytes that [`parse_sni`] looks at and [`peek_client_hello`]
/// peeks: a ClientHello that does not end within them is rejected.
pub const MAX_CLIENT_HELLO: usize = 16 * 1024;

/// How long a TLS handshake (and the TCP connect before an upstream one) may take.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The one application protocol offered and accepted on intercepted connections.
const ALPN_HTTP1: &[u8] = b"http/1.1";

/// How many hosts' leaf certificates [`NodeCa`] keeps; the oldest goes first.
const LEAF_CACHE_CAP: usize = 1024;
/// A cached leaf older than this is issued again (it stays valid 30 days).
const LEAF_REISSUE_AFTER: Duration = Duration::from_secs(7 * 24 * 3600);
const LEAF_VALID_BEFORE: time::Duration = time::Duration::days(1);
const LEAF_VALID_AFTER: time::Duration = time::Duration::days(30);
const CA_VALID_FOR: time::Duration = time::Duration::days(3650);

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("{}: {reason}", path.display())]
    BadFile { path: PathBuf, reason: String },
    #[error(
        "{} is not the key of {} (their public keys differ); restore the matching pair: agents \
         trust the certificate",
        key.display(),
        cert.display()
    )]
    Mismatch { cert: PathBuf, key: PathBuf },
    #[error(
        "{} is missing but {} exists; refusing to create a new CA that agents do not trust: \
         restore the missing file, or remove {} to start over with a new CA",
        missing.display(),
        present.display(),
        present.display()
    )]
    Incomplete { missing: PathBuf, present: PathBuf },
    #[error("generating the node CA: {0}")]
    GenerateCa(rcgen::Error),
    #[error("{0:?} is not a host name or IP address a certificate can be issued for")]
    InvalidHost(String),
    #[error("issuing a certificate for {host}: {source}")]
    Issue { host: String, source: rcgen::Error },
    #[error("TLS configuration for {what}: {source}")]
    Config { what: String, source: rustls::Error },
    #[error("connecting to {addr}: {source}")]
    Connect { addr: SocketAddr, source: io::Error },
    #[error("TLS handshake with upstream {host} ({addr}): {source}")]
    Upstream {
        host: String,
        addr: SocketAddr,
        source: io::Error,
    },
    #[error("TLS handshake with the agent for {host}: {source}")]
    Accept { host: String, source: io::Error },
}

// ---------------------------------------------------------------------------------------------
// ClientHello and SNI

/// What the first bytes of a connection say about its TLS server name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SniResult {
    /// The ClientHello is not complete yet.
    NeedMore,
    /// The server name: a valid DNS name, lowercased, without a trailing dot.
    Sni(String),
    /// A well-formed ClientHello without a server name (clients leave it out for IP addresses).
    NoSni,
    /// Not a TLS handshake at all (plain HTTP, SSH, SSLv2...).
    NotTls,
    /// Starts like TLS but is not a well-formed ClientHello, is larger than
    /// [`MAX_CLIENT_HELLO`], or names its server ambiguously or invalidly.
    Malformed(&'static str),
}

const CONTENT_HANDSHAKE: u8 = 22;
const HANDSHAKE_CLIENT_HELLO: u8 = 1;
const EXT_SERVER_NAME: u16 = 0;
const NAME_TYPE_HOST_NAME: u8 = 0;
const MAX_RECORD: usize = 1 << 14;

/// Reads the server name from the ClientHello at the start of `buf` (a connection's first bytes).
///
/// A ClientHello may be split over several handshake records; their fragments are joined, as
/// long as everything ends within the first [`MAX_CLIENT_HELLO`] bytes (real clients send it in
/// one record, well under that: about 2 KiB even with post-quantum key shares). Bytes past that
/// limit are never looked at. A prefix of a well-formed ClientHello gives
/// [`SniResult::NeedMore`]. Two server names (two `server_name` extensions, or two host names in
/// one) are [`SniResult::Malformed`]: the proxy and the server could pick different ones. An IP
/// address in the SNI (forbidden by RFC 6066) is malformed too.
pub fn parse_sni(buf: &[u8]) -> SniResult {
    match client_hello(&buf[..buf.len().min(MAX_CLIENT_HELLO)]) {
        Ok(r) => r,
        Err(why) => SniResult::Malformed(why),
    }
}

/// Joins the handshake fragments of the leading records and parses the ClientHello once whole.
fn client_hello(buf: &[u8]) -> Result<SniResult, &'static str> {
    const TOO_LARGE: &str = "ClientHello does not end within 16 KiB";
    let mut msg: Vec<u8> = Vec::new();
    let mut pos = 0;
    loop {
        // Record header: content type, legacy version (3, x), length.
        let header = match buf.get(pos..pos + 5) {
            Some(h) => h,
            None => {
                let have = &buf[pos..];
                if pos == 0 && !have.is_empty() && have[0] != CONTENT_HANDSHAKE
                    || pos == 0 && have.len() >= 2 && have[1] != 3
                {
                    return Ok(SniResult::NotTls);
                }
                if pos + 5 > MAX_CLIENT_HELLO {
                    return Err(TOO_LARGE);
                }
                return Ok(SniResult::NeedMore);
            }
        };
        if header[0] != CONTENT_HANDSHAKE || header[1] != 3 {
            if pos == 0 {
                return Ok(SniResult::NotTls);
            }
            return Err("ClientHello interrupted by a record that is not a handshake");
        }
        let len = usize::from(u16::from_be_bytes([header[3], header[4]]));
        if len == 0 || len > MAX_RECORD {
            return Err("bad TLS record length");
        }
        let end = pos + 5 + len;
        msg.extend_from_slice(&buf[pos + 5..end.min(buf.len())]);
        if let Some(&ty) = msg.first()
            && ty != HANDSHAKE_CLIENT_HELLO
        {
            return Err("first handshake message is not a ClientHello");
        }
        if let Some(h) = msg.get(1..4) {
            let total = 4 + (usize::from(h[0]) << 16 | usize::from(h[1]) << 8 | usize::from(h[2]));
            // Each record adds a 5-byte header: a larger hello cannot end within the limit.
            if total + 5 > MAX_CLIENT_HELLO {
                return Err(TOO_LARGE);
            }
            if let Some(body) = msg.get(4..total) {
                return client_hello_body(body);
            }
        }
        if end > buf.len() {
            return if end > MAX_CLIENT_HELLO {
                Err(TOO_LARGE)
            } else {
                Ok(SniResult::NeedMore)
            };
        }
        pos = end;
    }
}

/// A bounds-checked reader over a byte slice: every read that would pass the end is `None`.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if n > self.0.len() {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }
    /// A vector with a one-byte length prefix.
    fn vec8(&mut self) -> Option<&'a [u8]> {
        let n = self.u8()?;
        self.take(usize::from(n))
    }
    /// A vector with a two-byte length prefix.
    fn vec16(&mut self) -> Option<&'a [u8]> {
        let n = self.u16()?;
        self.take(usize::from(n))
    }
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// The ClientHello body (RFC 8446 4.1.2, RFC 5246 7.4.1.2), exactly as long as its header said.
fn client_hello_body(body: &[u8]) -> Result<SniResult, &'static str> {
    let mut r = Reader(body);
    let version = r.u16().ok_or("truncated legacy_version")?;
    if version >> 8 != 3 {
        return Err("ClientHello legacy_version is not TLS");
    }
    r.take(32).ok_or("truncated random")?;
    let session_id = r.vec8().ok_or("truncated session_id")?;
    if session_id.len() > 32 {
        return Err("session_id longer than 32 bytes");
    }
    let suites = r.vec16().ok_or("truncated cipher_suites")?;
    if suites.is_empty() || suites.len() % 2 != 0 {
        return Err("bad cipher_suites length");
    }
    let compression = r.vec8().ok_or("truncated compression_methods")?;
    if compression.is_empty() {
        return Err("no compression_methods");
    }
    if r.is_empty() {
        // A TLS 1.2 ClientHello may have no extensions at all.
        return Ok(SniResult::NoSni);
    }
    let mut extensions = Reader(r.vec16().ok_or("truncated extensions")?);
    if !r.is_empty() {
        return Err("bytes after the extensions");
    }
    let mut name = None;
    while !extensions.is_empty() {
        let ty = extensions.u16().ok_or("truncated extension type")?;
        let data = extensions.vec16().ok_or("truncated extension")?;
        if ty == EXT_SERVER_NAME {
            if name.is_some() {
                return Err("two server_name extensions");
            }
            name = Some(server_name(data)?);
        }
    }
    Ok(name.map_or(SniResult::NoSni, SniResult::Sni))
}

/// The server_name extension's data (RFC 6066 3): one host_name.
fn server_name(data: &[u8]) -> Result<String, &'static str> {
    let mut r = Reader(data);
    let mut list = Reader(r.vec16().ok_or("truncated server_name list")?);
    if !r.is_empty() {
        return Err("bytes after the server_name list");
    }
    let mut host = None;
    while !list.is_empty() {
        let ty = list.u8().ok_or("truncated server_name entry")?;
        let name = list.vec16().ok_or("truncated server_name entry")?;
        if ty == NAME_TYPE_HOST_NAME {
            if host.is_some() {
                return Err("two host names in server_name");
            }
            host = Some(name);
        }
    }
    let host = host.ok_or("server_name without a host name")?;
    let host = std::str::from_utf8(host).map_err(|_| "server name is not ASCII")?;
    // A trailing dot names the same host: drop it so that rules match.
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.parse::<IpAddr>().is_ok() {
        return Err("server name is an IP address");
    }
    if host.ends_with('.') || DnsName::try_from(host).is_err() {
        return Err("server name is not a valid DNS name");
    }
    Ok(host.to_ascii_lowercase())
}

/// Waits for the connection's ClientHello and reads its server name, leaving every byte in the
/// socket: the connection can then be spliced as it is, or handed to [`accept_intercepted`].
///
/// Looks at no more than [`MAX_CLIENT_HELLO`] bytes and waits no longer than `timeout` in all,
/// however slowly the client sends; a timeout is an [`io::ErrorKind::TimedOut`] error, and a
/// connection closed before sending anything is [`io::ErrorKind::UnexpectedEof`].
pub async fn peek_client_hello(stream: &TcpStream, timeout: Duration) -> io::Result<SniResult> {
    const FIRST_PAUSE: Duration = Duration::from_millis(1);
    const MAX_PAUSE: Duration = Duration::from_millis(50);
    let mut buf = vec![0u8; MAX_CLIENT_HELLO];
    let peeking = async {
        let mut pause = FIRST_PAUSE;
        let mut seen = 0;
        loop {
            let n = stream.peek(&mut buf).await?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "connection closed before its first byte",
                ));
            }
            match parse_sni(&buf[..n]) {
                SniResult::NeedMore if n < buf.len() => {}
                SniResult::NeedMore => return Ok(SniResult::Malformed("ClientHello too large")),
                done => return Ok(done),
            }
            // peek returns at once while any byte is queued, so wait before looking again,
            // longer each time nothing new came.
            pause = if n == seen {
                (pause * 2).min(MAX_PAUSE)
            } else {
                FIRST_PAUSE
            };
            seen = n;
            tokio::time::sleep(pause).await;
        }
    };
    tokio::time::timeout(timeout, peeking)
        .await
        .unwrap_or_else(|_| {
            Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no complete ClientHello within {timeout:?}"),
            ))
        })
}

// ---------------------------------------------------------------------------------------------
// Splicing

/// Copies bytes both ways between the agent and the upstream until both directions are closed.
/// When one side closes its sending half, the other side's sending half is shut down in turn
/// and the opposite direction goes on. Returns the bytes sent (agent → upstream, upstream →
/// agent). `client` is the agent's connection, or a CONNECT tunnel.
pub async fn splice<C>(mut client: C, mut upstream: TcpStream) -> io::Result<(u64, u64)>
where
    C: AsyncRead + AsyncWrite + Unpin,
{
    let (sent, received) = tokio::io::copy_bidirectional(&mut client, &mut upstream).await?;
    debug!(sent, received, "spliced connection closed");
    Ok((sent, received))
}

// ---------------------------------------------------------------------------------------------
// The node CA and leaf certificates

/// The per-node CA that issues certificates for intercepted hosts.
pub struct NodeCa {
    cert_path: PathBuf,
    cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
    provider: Arc<CryptoProvider>,
    leaves: Mutex<LeafCache>,
}

impl fmt::Debug for NodeCa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodeCa")
            .field("cert_path", &self.cert_path)
            .finish_non_exhaustive()
    }
}

/// Server configurations by host, the oldest evicted first.
struct LeafCache {
    cap: usize,
    by_host: HashMap<String, (Instant, Arc<ServerConfig>)>,
    /// Hosts in the order they were (re)issued.
    order: VecDeque<String>,
}

impl LeafCache {
    fn get(&self, host: &str) -> Option<Arc<ServerConfig>> {
        match self.by_host.get(host) {
            Some((issued, config)) if issued.elapsed() < LEAF_REISSUE_AFTER => Some(config.clone()),
            _ => None,
        }
    }

    fn insert(&mut self, host: String, config: Arc<ServerConfig>) {
        if self.by_host.contains_key(&host) {
            self.order.retain(|h| *h != host);
        }
        while self.order.len() >= self.cap {
            match self.order.pop_front() {
                Some(oldest) => self.by_host.remove(&oldest),
                None => break,
            };
        }
        self.by_host.insert(host.clone(), (Instant::now(), config));
        self.order.push_back(host);
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl NodeCa {
    /// Loads `ca.crt` and `ca.key` from `dir`, or creates them (and `dir`) if neither exists.
    pub fn load_or_create(dir: &Path) -> Result<NodeCa, TlsError> {
        let cert_path = dir.join("ca.crt");
        let key_path = dir.join("ca.key");
        let exists = |path: &Path| {
            path.try_exists().map_err(|source| TlsError::Io {
                path: path.to_owned(),
                source,
            })
        };
        let (cert_pem, issuer) = match (exists(&cert_path)?, exists(&key_path)?) {
            (true, true) => load(&cert_path, &key_path)?,
            (false, false) => create(dir, &cert_path, &key_path)?,
            (true, false) => {
                return Err(TlsError::Incomplete {
                    missing: key_path,
                    present: cert_path,
                });
            }
            (false, true) => {
                return Err(TlsError::Incomplete {
                    missing: cert_path,
                    present: key_path,
                });
            }
        };
        Ok(NodeCa {
            cert_path,
            cert_pem,
            issuer,
            provider: provider(),
            leaves: Mutex::new(LeafCache {
                cap: LEAF_CACHE_CAP,
                by_host: HashMap::new(),
                order: VecDeque::new(),
            }),
        })
    }

    /// The CA certificate, PEM: what agents must trust.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// Where the CA certificate is (`<dir>/ca.crt`).
    pub fn cert_path(&self) -> &Path {
        &self.cert_path
    }

    /// A server configuration presenting a certificate for `host` (a DNS name or an IP address)
    /// signed by this CA, offering ALPN `http/1.1` only. Issued on first use and cached.
    pub fn server_config_for(&self, host: &str) -> Result<Arc<ServerConfig>, TlsError> {
        let host = host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase();
        if let Some(config) = self.cache().get(&host) {
            return Ok(config);
        }
        // Issued outside the lock: two connections racing for a new host both sign, harmlessly.
        let config = Arc::new(self.issue(&host)?);
        self.cache().insert(host, config.clone());
        Ok(config)
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, LeafCache> {
        // The cache stays consistent at every step; a panic elsewhere does not spoil it.
        self.leaves.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn issue(&self, host: &str) -> Result<ServerConfig, TlsError> {
        let san = match host.parse::<IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => {
                if host.ends_with('.') || DnsName::try_from(host).is_err() {
                    return Err(TlsError::InvalidHost(host.to_owned()));
                }
                SanType::DnsName(
                    host.try_into()
                        .map_err(|_| TlsError::InvalidHost(host.to_owned()))?,
                )
            }
        };
        let issue_err = |source| TlsError::Issue {
            host: host.to_owned(),
            source,
        };
        let now = time::OffsetDateTime::now_utc();
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, host);
        params.subject_alt_names = vec![san];
        params.not_before = now - LEAF_VALID_BEFORE;
        params.not_after = now + LEAF_VALID_AFTER;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(issue_err)?;
        let cert = params.signed_by(&key, &self.issuer).map_err(issue_err)?;
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let config_err = |source| TlsError::Config {
            what: host.to_owned(),
            source,
        };
        let mut config = ServerConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(config_err)?
            .with_no_client_auth()
            .with_single_cert(vec![cert.der().clone()], key)
            .map_err(config_err)?;
        config.alpn_protocols = vec![ALPN_HTTP1.to_vec()];
        debug!(host, "issued an interception certificate");
        Ok(config)
    }
}

fn load(cert_path: &Path, key_path: &Path) -> Result<(String, Issuer<'static, KeyPair>), TlsError> {
    let read = |path: &Path| {
        fs::read_to_string(path).map_err(|source| TlsError::Io {
            path: path.to_owned(),
            source,
        })
    };
    let bad = |path: &Path, reason: String| TlsError::BadFile {
        path: path.to_owned(),
        reason,
    };
    let cert_pem = read(cert_path)?;
    let der = CertificateDer::from_pem_slice(cert_pem.as_bytes())
        .map_err(|e| bad(cert_path, format!("no PEM certificate: {e}")))?;
    let (_, x509) = x509_parser::parse_x509_certificate(&der)
        .map_err(|e| bad(cert_path, format!("not a valid X.509 certificate: {e}")))?;
    if !x509.is_ca() {
        return Err(bad(cert_path, "not a CA certificate".into()));
    }
    if x509.validity().time_to_expiration().is_none() {
        return Err(bad(
            cert_path,
            format!(
                "the CA is valid only from {} to {}",
                x509.validity().not_before,
                x509.validity().not_after
            ),
        ));
    }

    let key_pem = read(key_path)?;
    let key = KeyPair::from_pem(&key_pem)
        .map_err(|e| bad(key_path, format!("not a usable PEM private key: {e}")))?;
    if x509.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
        return Err(TlsError::Mismatch {
            cert: cert_path.to_owned(),
            key: key_path.to_owned(),
        });
    }
    match fs::metadata(key_path) {
        Ok(meta) if meta.permissions().mode() & 0o077 != 0 => warn!(
            path = %key_path.display(),
            mode = format_args!("{:o}", meta.permissions().mode() & 0o777),
            "the node CA key is readable by others than its owner"
        ),
        _ => {}
    }
    let issuer = Issuer::from_ca_cert_der(&der, key)
        .map_err(|e| bad(cert_path, format!("unusable as an issuer: {e}")))?;
    info!(path = %cert_path.display(), "loaded the node CA");
    Ok((cert_pem, issuer))
}

fn create(
    dir: &Path,
    cert_path: &Path,
    key_path: &Path,
) -> Result<(String, Issuer<'static, KeyPair>), TlsError> {
    fs::create_dir_all(dir).map_err(|source| TlsError::Io {
        path: dir.to_owned(),
        source,
    })?;
    let hostname = crate::procfs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_default();
    let hostname = if hostname.is_empty() {
        "(unknown host)".to_owned()
    } else {
        hostname
    };
    let now = time::OffsetDateTime::now_utc();
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, format!("governance node CA {hostname}"));
    params
        .distinguished_name
        .push(DnType::OrganizationName, "governance");
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.not_before = now - time::Duration::days(1);
    params.not_after = now + CA_VALID_FOR;
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(TlsError::GenerateCa)?;
    let cert = params.self_signed(&key).map_err(TlsError::GenerateCa)?;
    let cert_pem = cert.pem();
    // The key first: a crash between the two leaves a key without a certificate, which no agent
    // can have trusted yet.
    write_replacing(key_path, key.serialize_pem().as_bytes(), 0o600)?;
    write_replacing(cert_path, cert_pem.as_bytes(), 0o644)?;
    info!(path = %cert_path.display(), "created the node CA; agents that are intercepted must trust it");
    Ok((cert_pem, Issuer::new(params, key)))
}

/// Writes `path` whole, readable as `mode` says ([`crate::durable::replace`]).
fn write_replacing(path: &Path, contents: &[u8], mode: u32) -> Result<(), TlsError> {
    crate::durable::replace(path, mode, |w| w.write_all(contents)).map_err(|source| TlsError::Io {
        path: path.to_owned(),
        source,
    })
}

/// Terminates the agent's TLS on `client` (whose ClientHello is still unread, see
/// [`peek_client_hello`], or replayed, in a CONNECT tunnel) with this node's certificate for
/// `sni`. Takes at most [`HANDSHAKE_TIMEOUT`].
pub async fn accept_intercepted<C>(
    ca: &NodeCa,
    client: C,
    sni: &str,
) -> Result<server::TlsStream<C>, TlsError>
where
    C: AsyncRead + AsyncWrite + Unpin,
{
    let config = ca.server_config_for(sni)?;
    let accept = TlsAcceptor::from(config).accept(client);
    let result = match tokio::time::timeout(HANDSHAKE_TIMEOUT, accept).await {
        Ok(result) => result,
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "handshake timed out",
        )),
    };
    result.map_err(|source| TlsError::Accept {
        host: sni.to_owned(),
        source,
    })
}

// ---------------------------------------------------------------------------------------------
// The upstream side of intercepted connections

/// The TLS client configuration for upstreams: the Mozilla roots built into the daemon
/// (webpki-roots: the same on every node, nothing read at run time) plus, if given, every
/// certificate in the PEM file `extra_roots` (a corporate CA, a test upstream). ALPN `http/1.1`.
pub fn client_config(extra_roots: Option<&Path>) -> Result<Arc<ClientConfig>, TlsError> {
    let mut roots = RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    if let Some(path) = extra_roots {
        let bad = |reason: String| TlsError::BadFile {
            path: path.to_owned(),
            reason,
        };
        let certs = CertificateDer::pem_file_iter(path)
            .map_err(|e| bad(e.to_string()))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| bad(e.to_string()))?;
        if certs.is_empty() {
            return Err(bad("no PEM certificates".into()));
        }
        for cert in certs {
            roots
                .add(cert)
                .map_err(|e| bad(format!("not a usable root certificate: {e}")))?;
        }
    }
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|source| TlsError::Config {
            what: "upstream connections".into(),
            source,
        })?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![ALPN_HTTP1.to_vec()];
    Ok(Arc::new(config))
}

/// Connects to `addr` and makes a TLS connection to it, verifying it as `server_name` (a DNS
/// name or an IP address). Each step takes at most [`HANDSHAKE_TIMEOUT`].
pub async fn connect_upstream(
    config: &Arc<ClientConfig>,
    addr: SocketAddr,
    server_name: &str,
) -> Result<client::TlsStream<TcpStream>, TlsError> {
    connect_upstream_via(config, addr, server_name, TcpStream::connect(addr)).await
}

/// [`connect_upstream`] over the TCP connection `tcp` makes (to `addr`: from the client's
/// network namespace, say).
pub async fn connect_upstream_via(
    config: &Arc<ClientConfig>,
    addr: SocketAddr,
    server_name: &str,
    tcp: impl std::future::Future<Output = io::Result<TcpStream>>,
) -> Result<client::TlsStream<TcpStream>, TlsError> {
    let name = ServerName::try_from(server_name.to_owned())
        .map_err(|_| TlsError::InvalidHost(server_name.to_owned()))?;
    let timed_out = || io::Error::new(io::ErrorKind::TimedOut, "timed out");
    let tcp = tokio::time::timeout(HANDSHAKE_TIMEOUT, tcp)
        .await
        .unwrap_or_else(|_| Err(timed_out()))
        .map_err(|source| TlsError::Connect { addr, source })?;
    let connect = TlsConnector::from(config.clone()).connect(name, tcp);
    tokio::time::timeout(HANDSHAKE_TIMEOUT, connect)
        .await
        .unwrap_or_else(|_| Err(timed_out()))
        .map_err(|source| TlsError::Upstream {
            host: server_name.to_owned(),
            addr,
            source,
        })
}

#[cfg(test)]
#[path = "tls_tests.rs"]
mod tests;
