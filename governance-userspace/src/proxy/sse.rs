//! Legacy MCP SSE sessions (the SDK's SSE transport, protocol 2024-11-05).
//!
//! The client opens an event stream with `GET /sse`; the server's first event, `endpoint`,
//! names where the client POSTs its JSON-RPC messages (`/messages/?session_id=...`). Each POST
//! is answered `202 Accepted`, and the reply to it comes later as a `message` event on the
//! stream. A refusal in the POST's own response would never be read (the SDK's client does not
//! read the bodies of its POSTs, and waits on the stream for the reply), so the proxy delivers a
//! refusal of a session's call the way the server would have answered: as a `message` event on
//! that session's stream, with a 202 to the POST.
//!
//! A session is the agent, the host, and the endpoint's path and query, learnt from the
//! `endpoint` event of an event stream the proxy is relaying to that agent; it ends with the
//! stream. Events are added only between the upstream's events, never inside one.

use std::{
    collections::HashMap,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
};

use bytes::Bytes;
use hyper::{
    Uri,
    body::{Body as HttpBody, Frame, SizeHint},
};
use tokio::sync::mpsc;

use super::upstream::{Body, BoxError};

/// How much of a stream's start is read for its `endpoint` event.
const SCAN_MAX: usize = 8 << 10;
/// Refusals waiting to be sent on one stream.
const QUEUE: usize = 64;

/// (agent, host, endpoint path, endpoint query).
type Key = (String, String, String, Option<String>);

/// The live sessions, shared by the proxy's connections.
#[derive(Default)]
pub struct Sessions {
    map: Mutex<HashMap<Key, mpsc::Sender<Bytes>>>,
}

impl Sessions {
    /// Send `message` (a JSON-RPC message) as a `message` event on the stream of the agent's
    /// session whose endpoint is `path` `?query` on `host`. False when there is no such live
    /// session (or its queue is full): the caller answers the POST itself.
    pub fn deliver(
        &self,
        agent: &str,
        host: &str,
        path: &str,
        query: Option<&str>,
        message: &[u8],
    ) -> bool {
        let key = (
            agent.to_owned(),
            host.to_owned(),
            path.to_owned(),
            query.map(str::to_owned),
        );
        let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        let Some(tx) = map.get(&key) else {
            return false;
        };
        tx.try_send(event(message)).is_ok()
    }

    /// The endpoint (path and query) of the agent's live session on `host` that a POST to
    /// `path` `?query` names by its `session_id` parameter, when the POST is not to that
    /// endpoint. The MCP SDK's server takes a session's messages at any path under where it
    /// mounted them (`/messages/x?session_id=...` is `/messages/?session_id=...`'s session), so
    /// rules on the announced path would not see such a POST: the caller refuses it.
    pub fn misrouted(
        &self,
        agent: &str,
        host: &str,
        path: &str,
        query: Option<&str>,
    ) -> Option<String> {
        let query_text = query?;
        // Cheap first, as for method overrides: `session_id` spelled plainly or with escapes.
        if !(query_text.contains('%') || query_text.contains("session_id")) {
            return None;
        }
        let session_ids = |q: &str| -> Vec<SessionId> {
            super::canonical::query_pairs(q)
                .filter(|(k, _)| k == "session_id")
                .map(|(_, v)| SessionId::of(v))
                .collect()
        };
        let named = session_ids(query_text);
        if named.is_empty() {
            return None;
        }
        let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.keys()
            .filter(|(a, h, _, _)| a == agent && h == host)
            .find(|(_, _, p, q)| {
                let theirs = q.as_deref().map_or(Vec::new(), session_ids);
                named.iter().any(|n| n.names(&theirs))
                    && (p.as_str() != path || q.as_deref() != query)
            })
            .map(|(_, _, p, q)| match q {
                Some(q) => format!("{p}?{q}"),
                None => p.clone(),
            })
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.map.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

/// A session named by a `session_id` parameter, as the server that reads it names it: the MCP
/// Python SDK takes `UUID(hex=session_id)`, which reads one session under many spellings
/// (any case, dashes, braces, `urn:uuid:`, and what Python's `int(_, 16)` accepts: blanks
/// around the digits, a `+`, `0x`, `_` between digits). Other text stays as it is. Text that is
/// not ASCII cannot be told from a live session (`int` also reads every script's decimal
/// digits, `７` and `٧` for `7`), and names them all.
#[derive(Debug, PartialEq, Eq)]
enum SessionId {
    Uuid(u128),
    Text(String),
    Unreadable,
}

impl SessionId {
    /// Whether a POST naming `self` may reach the session a stream announced as `theirs`.
    fn names(&self, theirs: &[SessionId]) -> bool {
        *self == SessionId::Unreadable && !theirs.is_empty() || theirs.contains(self)
    }

    fn of(v: String) -> Self {
        if !v.is_ascii() {
            return Self::Unreadable;
        }
        let hex = v.replace("urn:", "").replace("uuid:", "");
        let hex = hex.trim_matches(['{', '}']).replace('-', "");
        if hex.chars().count() != 32 {
            return Self::Text(v);
        }
        let t = hex.trim();
        let t = t.strip_prefix('+').unwrap_or(t);
        let t = t
            .strip_prefix("0x")
            .or_else(|| t.strip_prefix("0X"))
            .unwrap_or(t);
        let digits: String = t.chars().filter(|&c| c != '_').collect();
        match u128::from_str_radix(&digits, 16) {
            Ok(n) if !digits.starts_with('+') => Self::Uuid(n),
            _ => Self::Text(v),
        }
    }
}

/// A `message` event carrying `data` (one line: JSON has no raw newlines).
fn event(data: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(data.len() + 24);
    out.extend_from_slice(b"event: message\r\ndata: ");
    out.extend(data.iter().copied().filter(|b| *b != b'\n' && *b != b'\r'));
    out.extend_from_slice(b"\r\n\r\n");
    Bytes::from(out)
}

/// An event stream relayed to an agent from a host where it has MCP rules: watched for its
/// `endpoint` event, and carrying the refusals of that session's calls.
pub struct SessionBody {
    inner: Body,
    sessions: Arc<Sessions>,
    agent: String,
    host: String,
    /// The GET's path (a relative endpoint is resolved against it).
    base: String,
    /// The stream's start, until its `endpoint` event is found (None after, or past
    /// [`SCAN_MAX`]).
    scan: Option<Vec<u8>>,
    registered: Option<Key>,
    tx: mpsc::Sender<Bytes>,
    rx: mpsc::Receiver<Bytes>,
    /// The last bytes relayed, to tell whether the stream is between events.
    tail: Vec<u8>,
    ended: bool,
}

impl SessionBody {
    pub fn new(inner: Body, sessions: Arc<Sessions>, agent: &str, host: &str, path: &str) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
        Self {
            inner,
            sessions,
            agent: agent.to_owned(),
            host: host.to_owned(),
            base: path.to_owned(),
            scan: Some(Vec::new()),
            registered: None,
            tx,
            rx,
            tail: Vec::new(),
            ended: false,
        }
    }

    /// Between two events: nothing relayed yet is part of an unfinished one.
    fn between_events(&self) -> bool {
        let t = &self.tail;
        t.ends_with(b"\n\n") || t.ends_with(b"\r\n\r\n") || t.ends_with(b"\r\r")
    }

    fn relayed(&mut self, data: &Bytes) {
        self.tail
            .extend_from_slice(&data[data.len().saturating_sub(4)..]);
        let cut = self.tail.len().saturating_sub(4);
        self.tail.drain(..cut);
        let Some(scan) = &mut self.scan else { return };
        scan.extend_from_slice(data);
        if let Some(endpoint) = endpoint_event(scan) {
            self.scan = None;
            if let Some((path, query)) = resolve(&self.base, &endpoint) {
                let key = (self.agent.clone(), self.host.clone(), path, query);
                let mut map = self.sessions.map.lock().unwrap_or_else(|p| p.into_inner());
                map.insert(key.clone(), self.tx.clone());
                self.registered = Some(key);
            }
        } else if scan.len() > SCAN_MAX {
            self.scan = None;
        }
    }

    pub fn is_end_stream(&self) -> bool {
        self.ended
    }

    pub fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }

    pub fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if this.ended {
            return Poll::Ready(None);
        }
        if this.registered.is_some()
            && this.between_events()
            && let Poll::Ready(Some(ev)) = this.rx.poll_recv(cx)
        {
            return Poll::Ready(Some(Ok(Frame::data(ev))));
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let data = data.clone();
                    this.relayed(&data);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(None) => {
                this.ended = true;
                Poll::Ready(None)
            }
            other => other,
        }
    }
}

impl Drop for SessionBody {
    fn drop(&mut self) {
        let Some(key) = self.registered.take() else {
            return;
        };
        let mut map = self.sessions.map.lock().unwrap_or_else(|p| p.into_inner());
        // A newer stream may have announced the same endpoint since: leave its entry.
        if map.get(&key).is_some_and(|tx| tx.same_channel(&self.tx)) {
            map.remove(&key);
        }
    }
}

/// The data of the first complete `endpoint` event in `stream` (the SSE wire format: lines
/// ending in CRLF, LF or CR; an event ends at a blank line).
fn endpoint_event(stream: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(stream)
        .replace("\r\n", "\n")
        .replace('\r', "\n");
    // The last piece may be an event still arriving.
    let mut events: Vec<&str> = text.split("\n\n").collect();
    events.pop();
    for ev in events {
        let mut name = "message";
        let mut data: Vec<&str> = Vec::new();
        for line in ev.lines() {
            let (field, value) = line.split_once(':').unwrap_or((line, ""));
            let value = value.strip_prefix(' ').unwrap_or(value);
            match field {
                "event" => name = value,
                "data" => data.push(value),
                _ => {}
            }
        }
        if name == "endpoint" && !data.is_empty() {
            return Some(data.join("\n"));
        }
    }
    None
}

/// The path and query an endpoint names: absolute (`http://host/messages?x`), absolute-path
/// (`/messages?x`), or relative to the stream's own path `base`.
fn resolve(base: &str, endpoint: &str) -> Option<(String, Option<String>)> {
    let endpoint = endpoint.trim();
    let joined;
    let target = if endpoint.starts_with("http://") || endpoint.starts_with("https://") {
        let uri: Uri = endpoint.parse().ok()?;
        joined = uri.path_and_query()?.as_str().to_owned();
        joined.as_str()
    } else if endpoint.starts_with('/') {
        endpoint
    } else {
        let dir = &base[..base.rfind('/').map_or(0, |i| i + 1)];
        joined = format!("{}{endpoint}", if dir.is_empty() { "/" } else { dir });
        joined.as_str()
    };
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q.to_owned())),
        None => (target, None),
    };
    Some((path.to_owned(), query))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_endpoint_event_in_any_line_ending() {
        assert_eq!(
            endpoint_event(b"event: endpoint\r\ndata: /messages/?session_id=ab\r\n\r\n"),
            Some("/messages/?session_id=ab".into())
        );
        assert_eq!(
            endpoint_event(b": ping\n\nevent:endpoint\ndata:/m?x=1\n\n"),
            Some("/m?x=1".into())
        );
        // Not complete yet, or another event.
        assert_eq!(endpoint_event(b"event: endpoint\ndata: /m\n"), None);
        assert_eq!(endpoint_event(b"event: message\ndata: {}\n\n"), None);
    }

    #[test]
    fn endpoints_resolve_like_urls() {
        let r = |base, e| resolve(base, e).unwrap();
        assert_eq!(
            r("/sse", "/messages/?session_id=1"),
            ("/messages/".into(), Some("session_id=1".into()))
        );
        assert_eq!(
            r("/sse", "http://mcp.example:8000/messages?s=2"),
            ("/messages".into(), Some("s=2".into()))
        );
        assert_eq!(r("/v1/sse", "messages"), ("/v1/messages".into(), None));
    }

    #[test]
    fn refusals_are_events() {
        assert_eq!(
            &event(b"{\"id\":1}\n")[..],
            b"event: message\r\ndata: {\"id\":1}\r\n\r\n"
        );
    }
}
