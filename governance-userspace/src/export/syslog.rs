//! Syslog (RFC 5424) over UDP (one datagram per record), TCP and TLS (octet-counting framing,
//! RFC 6587 section 3.4.1: `LEN SP MSG`).
//!
//! `<PRI>1 TIMESTAMP HOSTNAME governance PID KIND [governance@32473 id=… type=… outcome=…
//! agent=… rule=…] JSON`: facility 13 (log audit); severity 4 (warning) for refused actions,
//! 5 (notice) for escalations and approvals, 6 (informational) otherwise. The message is the
//! record as JSON, as the audit log holds it. 32473 is the enterprise number RFC 5612 reserves
//! for examples (governance has none of its own).

use std::sync::Arc;

use tokio::{
    io::{AsyncRead, AsyncWrite, AsyncWriteExt as _},
    net::{TcpStream, UdpSocket},
};

use super::SendError;
use crate::{events::Record, pipeline::Delivered};

#[derive(Clone)]
pub enum Transport {
    Udp(String),
    Tcp(String),
    Tls(String, Arc<rustls::ClientConfig>),
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Transport::Udp(a) => write!(f, "udp {a}"),
            Transport::Tcp(a) => write!(f, "tcp {a}"),
            Transport::Tls(a, _) => write!(f, "tls {a}"),
        }
    }
}

/// The TLS client configuration: the public roots plus `ca`, no ALPN.
pub fn tls_config(ca: Option<&std::path::Path>) -> Result<Arc<rustls::ClientConfig>, String> {
    let config = crate::proxy::tls::client_config(ca).map_err(|e| e.to_string())?;
    let mut config = (*config).clone();
    config.alpn_protocols.clear();
    Ok(Arc::new(config))
}

/// A kept connection: TCP or TLS, or a UDP socket.
pub enum Stream {
    Udp(UdpSocket),
    Stream(Box<dyn Io>),
}

pub trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

const FACILITY: u8 = 13;

/// The RFC 5424 message of one record.
pub fn format(r: &Record, json: &[u8]) -> Vec<u8> {
    let severity = if r.denied {
        4
    } else if r.outcome == "escalate" || r.ty == crate::events::RecordType::Approval {
        5
    } else {
        6
    };
    let mut out = format!(
        "<{}>1 {} {} governance {} {} [governance@32473",
        FACILITY * 8 + severity,
        timestamp(&r.time),
        header_field(&r.node, 255),
        std::process::id(),
        header_field(&r.kind, 32),
    );
    let mut param = |name: &str, value: &str| {
        if !value.is_empty() {
            out.push_str(&format!(" {name}=\"{}\"", sd_escape(value)));
        }
    };
    param("id", &r.id);
    param("type", r.ty.as_str());
    param("outcome", &r.outcome);
    param("agent", r.agent.as_ref().map_or("", |a| a.name.as_str()));
    param("rule", &r.rule);
    param(
        "approval",
        r.approval.as_ref().map_or("", |a| a.id.as_str()),
    );
    out.push_str("] ");
    let mut out = out.into_bytes();
    out.extend_from_slice(json);
    out
}

/// The most a syslog datagram carries: a UDP datagram's payload over IPv6 (65,527 bytes), less
/// a margin for IP options.
const MAX_DATAGRAM: usize = 65_000;
/// What ends a message cut to fit a datagram.
const CUT: &[u8] = b" [truncated]";

/// `msg` cut to fit one datagram: its header and structured data (id, type, outcome, agent,
/// rule) whole, its JSON cut and marked (red team round 32: a record past 64 KiB, such as an
/// exec with a long command line, failed the send with EMSGSIZE, and with it the whole batch,
/// resent and then dropped: the records after it never reached the collector).
fn datagram(mut msg: Vec<u8>) -> Vec<u8> {
    if msg.len() > MAX_DATAGRAM {
        let mut end = MAX_DATAGRAM - CUT.len();
        // At a character's start, so that the message stays UTF-8.
        while end > 0 && (msg[end] & 0xc0) == 0x80 {
            end -= 1;
        }
        msg.truncate(end);
        msg.extend_from_slice(CUT);
    }
    msg
}

/// RFC 5424 TIMESTAMP: at most six digits of fraction (the records have nine).
fn timestamp(t: &str) -> String {
    if t.is_empty() {
        return "-".into();
    }
    match (t.find('.'), t.rfind(['Z', '+', '-'])) {
        (Some(dot), Some(zone)) if zone > dot && zone - dot > 7 => {
            format!("{}{}", &t[..dot + 7], &t[zone..])
        }
        _ => t.to_owned(),
    }
}

/// A header field: printable US-ASCII without spaces, at most `max` characters; `-` if empty.
fn header_field(s: &str, max: usize) -> String {
    let v: String = s
        .chars()
        .map(|c| if c.is_ascii_graphic() { c } else { '_' })
        .take(max)
        .collect();
    if v.is_empty() { "-".into() } else { v }
}

/// PARAM-VALUE: `"`, `\` and `]` escaped with a backslash.
fn sd_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '"' | '\\' | ']') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

pub async fn send(
    t: &Transport,
    conn: &mut Option<Stream>,
    batch: &[Delivered],
) -> Result<(), SendError> {
    let transient =
        |what: &str, e: std::io::Error| SendError::Transient(format!("{t:?}: {what}: {e}"));
    if conn.is_none() {
        *conn = Some(match t {
            Transport::Udp(addr) => {
                let target = tokio::net::lookup_host(addr)
                    .await
                    .map_err(|e| transient("resolve", e))?
                    .next()
                    .ok_or_else(|| SendError::Transient(format!("{addr}: no address")))?;
                let local: std::net::SocketAddr = if target.is_ipv4() {
                    ([0, 0, 0, 0], 0).into()
                } else {
                    (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
                };
                let s = UdpSocket::bind(local)
                    .await
                    .map_err(|e| transient("bind", e))?;
                s.connect(target)
                    .await
                    .map_err(|e| transient("connect", e))?;
                Stream::Udp(s)
            }
            Transport::Tcp(addr) => Stream::Stream(Box::new(
                TcpStream::connect(addr.as_str())
                    .await
                    .map_err(|e| transient("connect", e))?,
            )),
            Transport::Tls(addr, config) => {
                let tcp = TcpStream::connect(addr.as_str())
                    .await
                    .map_err(|e| transient("connect", e))?;
                let host = addr
                    .rsplit_once(':')
                    .map_or(addr.as_str(), |(h, _)| h)
                    .trim_start_matches('[')
                    .trim_end_matches(']');
                let name = rustls::pki_types::ServerName::try_from(host.to_owned())
                    .map_err(|e| SendError::Permanent(format!("{host}: {e}")))?;
                let tls = tokio_rustls::TlsConnector::from(config.clone())
                    .connect(name, tcp)
                    .await
                    .map_err(|e| transient("TLS handshake", e))?;
                Stream::Stream(Box::new(tls))
            }
        });
    }
    let Some(conn) = conn else { return Ok(()) };
    match conn {
        Stream::Udp(s) => {
            for d in batch {
                let msg = datagram(format(&d.record, &super::record_json(d)));
                s.send(&msg).await.map_err(|e| transient("send", e))?;
            }
        }
        Stream::Stream(s) => {
            let mut out = Vec::new();
            for d in batch {
                let msg = format(&d.record, &super::record_json(d));
                out.extend_from_slice(format!("{} ", msg.len()).as_bytes());
                out.extend_from_slice(&msg);
            }
            s.write_all(&out).await.map_err(|e| transient("write", e))?;
            s.flush().await.map_err(|e| transient("flush", e))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_past_a_datagram_is_cut_to_fit_one() {
        let r = Record {
            id: "n-00000007".into(),
            kind: "exec".into(),
            ..Default::default()
        };
        let json = format!("{{\"argv\":[\"{}é\"]}}", "A".repeat(69_999));
        let msg = datagram(format(&r, json.as_bytes()));
        assert!(msg.len() <= MAX_DATAGRAM, "{}", msg.len());
        let text = String::from_utf8(msg).expect("still UTF-8");
        assert!(text.contains("id=\"n-00000007\"") && text.ends_with(" [truncated]"));
        let small = format(&r, b"{}");
        assert_eq!(datagram(small.clone()), small);
    }

    #[test]
    fn timestamps_have_six_fraction_digits_at_most() {
        assert_eq!(
            timestamp("2026-11-30T07:29:08.123456789Z"),
            "2026-11-30T07:29:08.123456Z"
        );
        assert_eq!(timestamp("2026-11-30T07:29:08Z"), "2026-11-30T07:29:08Z");
        assert_eq!(timestamp(""), "-");
    }

    #[test]
    fn structured_data_is_escaped() {
        let r = Record {
            kind: "exec".into(),
            rule: "p/\"odd]\\".into(),
            node: "host name".into(),
            time: "2026-11-30T07:29:08.123456789Z".into(),
            denied: true,
            outcome: "block".into(),
            ..Default::default()
        };
        let m = String::from_utf8(format(&r, b"{}")).unwrap();
        assert!(
            m.starts_with("<108>1 2026-11-30T07:29:08.123456Z host_name governance "),
            "{m}"
        );
        assert!(m.contains(" exec [governance@32473 type=\"decision\" outcome=\"block\" rule=\"p/\\\"odd\\]\\\\\"] {}"), "{m}");
    }
}
