//! The CLI's side of the control API: HTTP/1.1 over the daemon's Unix socket (or TCP with a
//! bearer token, over TLS with `--api https://HOST:PORT`).

use std::path::PathBuf;

use anyhow::{Context as _, bail};
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::{Request, body::Incoming};
use hyper_util::rt::TokioIo;
use serde_json::Value;

/// Where the daemon's control API is.
#[derive(Clone, Debug, clap::Args)]
pub struct ApiArgs {
    /// The daemon's control socket.
    #[arg(
        long,
        global = true,
        env = "GOVERNANCE_SOCKET",
        default_value = DEFAULT_SOCKET
    )]
    pub socket: PathBuf,
    /// Use the daemon's TCP API at this address (host:port, or https://host:port when it
    /// serves TLS) instead of the socket; needs GOVERNANCE_TOKEN.
    #[arg(long, global = true, env = "GOVERNANCE_API")]
    pub api: Option<String>,
    /// Extra PEM roots that verify the TCP API's TLS certificate (besides the public roots).
    #[arg(long, global = true, env = "GOVERNANCE_API_CA")]
    pub api_ca: Option<PathBuf>,
    /// Bearer token for --api.
    #[arg(long, global = true, env = "GOVERNANCE_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

/// The default control socket.
pub const DEFAULT_SOCKET: &str = "/run/governance/governance.sock";

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

async fn connect(args: &ApiArgs) -> anyhow::Result<Sender> {
    let sender = match &args.api {
        Some(api) => {
            let (tls, addr) = match api.strip_prefix("https://") {
                Some(a) => (true, a.trim_end_matches('/')),
                None => (false, api.strip_prefix("http://").unwrap_or(api)),
            };
            let s = tokio::net::TcpStream::connect(addr)
                .await
                .with_context(|| format!("connecting to the daemon's API at {addr}"))?;
            if tls {
                let config = crate::proxy::tls::client_config(args.api_ca.as_deref())?;
                let host = addr
                    .rsplit_once(':')
                    .map_or(addr, |(h, _)| h)
                    .trim_start_matches('[')
                    .trim_end_matches(']');
                let name = rustls::pki_types::ServerName::try_from(host.to_owned())
                    .with_context(|| format!("--api {api}: `{host}` is not a server name"))?;
                let mut config = (*config).clone();
                config.alpn_protocols.clear();
                let s = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
                    .connect(name, s)
                    .await
                    .with_context(|| format!("TLS with the daemon's API at {addr}"))?;
                handshake(s).await?
            } else {
                handshake(s).await?
            }
        }
        None => {
            let s = tokio::net::UnixStream::connect(&args.socket)
                .await
                .with_context(|| {
                    format!(
                        "connecting to the daemon at {} (is `governance run` running? reading the socket needs root)",
                        args.socket.display()
                    )
                })?;
            verify_server(&s, &args.socket)?;
            handshake(s).await?
        }
    };
    Ok(sender)
}

/// The process behind the control socket must be the daemon, before anything is sent: a
/// process that took the socket's name (an agent, were the name free) would read the
/// administrator's requests (an approval) and answer in the daemon's place. It must run as root
/// and be a process the kernel programs protect from agents (its pid in their pinned
/// `PROTECTED` map, which only the daemon that loaded them writes and no agent may reach:
/// agents are refused bpf()); checked by `SO_PEERCRED`, whatever the socket's path.
fn verify_server(s: &tokio::net::UnixStream, socket: &std::path::Path) -> anyhow::Result<()> {
    let cred = s
        .peer_cred()
        .context("reading who serves the control socket (SO_PEERCRED)")?;
    let pid = cred.pid().filter(|p| *p > 0).map(|p| p as u32);
    let who = match pid {
        Some(pid) => {
            let comm = crate::procfs::read_to_string(format!("/proc/{pid}/comm"))
                .map(|c| c.trim_end().to_owned())
                .unwrap_or_default();
            let cgroup = crate::discovery::procs::cgroup_of(pid).unwrap_or_default();
            format!(
                "process {pid} ({comm}, cgroup {cgroup}, uid {})",
                cred.uid()
            )
        }
        None => format!(
            "a process not visible in this PID namespace (uid {})",
            cred.uid()
        ),
    };
    let refuse = |why: &str| {
        anyhow::anyhow!(
            "refusing the server at {}: {who} {why}. It may be an agent's own server put at the \
             socket's name to read what you send (an approval) and answer in the daemon's \
             place; nothing was sent. Check `ls -l {}` and which process listens there (`ss -xlp`)",
            socket.display(),
            socket.display()
        )
    };
    if cred.uid() != 0 {
        return Err(refuse("does not run as root, as the daemon does"));
    }
    let Some(pid) = pid else {
        return Err(refuse("cannot be checked"));
    };
    let extra = std::env::var_os("GOVERNANCE_PINS").map(PathBuf::from);
    match crate::kernel::protected_by_kernel(pid, extra.as_deref()) {
        Some(true) => Ok(()),
        Some(false) => Err(refuse(
            "is not the governance daemon: the kernel programs protect no such process",
        )),
        None => Err(refuse(
            "cannot be checked: no pinned governance programs were found below /sys/fs/bpf \
             (set GOVERNANCE_PINS to the daemon's --pins)",
        )),
    }
}

async fn handshake<S>(io: S) -> anyhow::Result<Sender>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .context("talking HTTP to the daemon")?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

/// Send a request; the response, or an error naming what the daemon said.
pub async fn request(
    args: &ApiArgs,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> anyhow::Result<hyper::Response<Incoming>> {
    let mut sender = connect(args).await?;
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "governance");
    if let Some(t) = &args.token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let body = match body {
        Some(v) => {
            req = req.header("content-type", "application/json");
            Full::new(Bytes::from(serde_json::to_vec(&v)?))
        }
        None => Full::new(Bytes::new()),
    };
    let resp = sender
        .send_request(req.body(body)?)
        .await
        .with_context(|| format!("{method} {path}"))?;
    if !resp.status().is_success() {
        let status = resp.status();
        let bytes = resp.into_body().collect().await?.to_bytes();
        let msg = serde_json::from_slice::<Value>(&bytes)
            .ok()
            .and_then(|v| v["error"].as_str().map(str::to_owned))
            .unwrap_or_else(|| String::from_utf8_lossy(&bytes).into_owned());
        bail!("{method} {path}: {status}: {msg}");
    }
    Ok(resp)
}

/// A JSON request and its JSON answer.
pub async fn call(
    args: &ApiArgs,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> anyhow::Result<Value> {
    let resp = request(args, method, path, body).await?;
    let bytes = resp.into_body().collect().await?.to_bytes();
    serde_json::from_slice(&bytes).with_context(|| format!("{method} {path}: not JSON"))
}

/// Stream the lines of a response body to `each` until it ends or `each` returns false.
pub async fn lines(
    resp: hyper::Response<Incoming>,
    mut each: impl FnMut(&[u8]) -> bool,
) -> anyhow::Result<()> {
    let mut body = resp.into_body();
    let mut buf: Vec<u8> = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.context("reading the event stream")?;
        let Some(data) = frame.data_ref() else {
            continue;
        };
        buf.extend_from_slice(data);
        while let Some(nl) = buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buf.drain(..=nl).collect();
            if !each(&line[..nl]) {
                return Ok(());
            }
        }
    }
    if !buf.is_empty() {
        each(&buf);
    }
    Ok(())
}
