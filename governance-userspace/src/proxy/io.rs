//! Connection plumbing: what protocol a connection speaks, IO wrappers that track activity
//! (for the idle timeout) and follow HTTP/1 framing (what each raw request head said about its
//! length), and the panic-counting task spawner.

use std::{
    collections::VecDeque,
    future::Future,
    io,
    panic::AssertUnwindSafe,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};

use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf},
    net::TcpStream,
};

use super::framing::{Framer, RawHead};

/// The HTTP/2 connection preface.
pub const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// What a connection speaks, from its first bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    /// A TLS handshake record (first byte 0x16).
    Tls,
    Http1,
    /// HTTP/2 with prior knowledge (h2c).
    Http2,
}

/// Classify the first bytes; None until there are enough.
pub fn classify(bytes: &[u8]) -> Option<Proto> {
    match bytes.first()? {
        0x16 => Some(Proto::Tls),
        _ if bytes.len() >= H2_PREFACE.len() && bytes[..24] == *H2_PREFACE => Some(Proto::Http2),
        _ if H2_PREFACE.starts_with(bytes) => None,
        _ => Some(Proto::Http1),
    }
}

/// Peek (without consuming) until the protocol is known. The caller bounds it in time.
pub async fn sniff_tcp(stream: &TcpStream) -> io::Result<Proto> {
    let mut buf = [0u8; 24];
    loop {
        let n = stream.peek(&mut buf).await?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        if let Some(p) = classify(&buf[..n]) {
            return Ok(p);
        }
        // A partial HTTP/2 preface: wait for the rest (peek returns at once while data waits).
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Read until the protocol is known; returns it and the bytes read.
pub async fn sniff_read<I: AsyncRead + Unpin>(io: &mut I) -> io::Result<(Proto, Vec<u8>)> {
    let mut buf = Vec::with_capacity(64);
    loop {
        let mut chunk = [0u8; 4096];
        let n = io.read(&mut chunk).await?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(p) = classify(&buf) {
            return Ok((p, buf));
        }
    }
}

/// Bytes already read, then the rest of the stream.
pub struct Prefixed<I> {
    prefix: Vec<u8>,
    at: usize,
    inner: I,
}

impl<I> Prefixed<I> {
    pub fn new(prefix: Vec<u8>, inner: I) -> Self {
        Self {
            prefix,
            at: 0,
            inner,
        }
    }

    /// The bytes not replayed yet, and the stream.
    pub fn into_parts(self) -> (Vec<u8>, I) {
        let mut prefix = self.prefix;
        prefix.drain(..self.at);
        (prefix, self.inner)
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Prefixed<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.at < this.prefix.len() {
            let n = (this.prefix.len() - this.at).min(buf.remaining());
            buf.put_slice(&this.prefix[this.at..this.at + n]);
            this.at += n;
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Prefixed<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Any connection with an agent: TCP, a CONNECT tunnel, TLS.
pub trait ClientIo: AsyncRead + AsyncWrite + Send + Unpin {}

impl<T: AsyncRead + AsyncWrite + Send + Unpin> ClientIo for T {}

/// What a connection has been doing: for the idle timeout and the framing check.
#[derive(Debug)]
pub struct Activity {
    start: Instant,
    /// Milliseconds since `start` of the last byte read or written.
    last_ms: AtomicU64,
    /// Requests being handled (a held request is not idle).
    inflight: AtomicUsize,
    /// HTTP/1: what the raw bytes of each request head not yet handled said about its length
    /// (see [`super::framing`]), in order.
    heads: Mutex<VecDeque<RawHead>>,
    /// HTTP/1: the connection's raw bytes are followed.
    framed: AtomicBool,
}

impl Activity {
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
            inflight: AtomicUsize::new(0),
            heads: Mutex::new(VecDeque::new()),
            framed: AtomicBool::new(false),
        })
    }

    fn touch(&self) {
        let ms = self.start.elapsed().as_millis() as u64;
        // Only store when it moved: keeps the cache line quiet under load.
        if self.last_ms.load(Ordering::Relaxed) != ms {
            self.last_ms.store(ms, Ordering::Relaxed);
        }
    }

    /// When the connection was last active.
    pub fn last(&self) -> Instant {
        self.start + Duration::from_millis(self.last_ms.load(Ordering::Relaxed))
    }

    pub fn inflight(&self) -> usize {
        self.inflight.load(Ordering::Relaxed)
    }

    /// Count a request as in flight until the guard drops.
    pub fn busy(self: &Arc<Self>) -> Busy {
        self.inflight.fetch_add(1, Ordering::Relaxed);
        Busy(self.clone())
    }

    /// What the raw bytes of the next request head said about its length (called once per
    /// request, in order). None: the connection is not HTTP/1 (nothing followed). A lost
    /// framing gives a head marked `lost`.
    pub fn take_head(&self) -> Option<RawHead> {
        if !self.framed.load(Ordering::Relaxed) {
            return None;
        }
        let next = self
            .heads
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pop_front();
        Some(next.unwrap_or(RawHead {
            lost: true,
            ..RawHead::default()
        }))
    }

    fn push_head(&self, head: RawHead) {
        self.heads
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push_back(head);
    }
}

pub struct Busy(Arc<Activity>);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.inflight.fetch_sub(1, Ordering::Relaxed);
        self.0.touch();
    }
}

/// Watches an IO: records activity and, for HTTP/1, follows the framing of what is read
/// ([`Framer`]): hyper merges duplicate `Content-Length` lines and drops a `Content-Length`
/// that comes with `Transfer-Encoding` from the parsed headers, and the proxy refuses such
/// requests instead, so it needs what each raw head said.
pub struct Tracked<I> {
    inner: I,
    activity: Arc<Activity>,
    framer: Option<Framer>,
}

impl<I> Tracked<I> {
    pub fn new(inner: I, activity: Arc<Activity>, scan: bool) -> Self {
        if scan {
            activity.framed.store(true, Ordering::Relaxed);
        }
        Self {
            inner,
            activity,
            framer: scan.then(Framer::default),
        }
    }

    #[cfg(test)]
    fn scan(&mut self, bytes: &[u8]) {
        scan(self.framer.as_mut(), &self.activity, bytes);
    }
}

fn scan(framer: Option<&mut Framer>, activity: &Activity, bytes: &[u8]) {
    let Some(framer) = framer else {
        return;
    };
    framer.feed(bytes, &mut |h| activity.push_head(h));
}

impl<I: AsyncRead + Unpin> AsyncRead for Tracked<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        let r = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = r {
            let filled = &buf.filled()[before..];
            if !filled.is_empty() {
                this.activity.touch();
                scan(this.framer.as_mut(), &this.activity, filled);
            }
        }
        r
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Tracked<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = r
            && n > 0
        {
            self.activity.touch();
        }
        r
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = r
            && n > 0
        {
            self.activity.touch();
        }
        r
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A future whose panic is caught and counted instead of unwinding into the runtime.
pub struct CatchPanic<F> {
    fut: Pin<Box<F>>,
    panics: Arc<AtomicU64>,
}

impl<F: Future> Future for CatchPanic<F> {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = &mut *self;
        match std::panic::catch_unwind(AssertUnwindSafe(|| this.fut.as_mut().poll(cx))) {
            Ok(Poll::Ready(_)) => Poll::Ready(()),
            Ok(Poll::Pending) => Poll::Pending,
            Err(_) => {
                this.panics.fetch_add(1, Ordering::Relaxed);
                tracing::error!("a proxy task panicked; its connection was dropped");
                Poll::Ready(())
            }
        }
    }
}

/// Spawn a task whose panic is counted in `panics`.
pub fn spawn<F>(panics: &Arc<AtomicU64>, fut: F)
where
    F: Future + Send + 'static,
{
    tokio::spawn(CatchPanic {
        fut: Box::pin(fut),
        panics: panics.clone(),
    });
}

/// hyper's executor (HTTP/2 streams, upgrades): tokio tasks, panics counted.
#[derive(Clone)]
pub struct Exec(pub Arc<AtomicU64>);

impl<F> hyper::rt::Executor<F> for Exec
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, fut: F) {
        spawn(&self.0, fut);
    }
}

/// Is `fd` among the last descriptors the process may open (a quarter of its limit, at most
/// 1,024)? The proxy closes a connection it accepted or made on one at once: agents' connections
/// (and tunnels, which outlive their connection's budget) may take the daemon's descriptors, but
/// never its last ones, which finding new agent cgroups, the audit log and reloads need (red team
/// round 28: at EMFILE a new agent's cgroup could not be listed, and it ran ungoverned). The
/// kernel gives the lowest free number, so a connection there means the ones below are all
/// taken. The limit is read each time: `prlimit` may change it.
pub fn fd_in_reserve(fd: std::os::fd::RawFd) -> bool {
    use nix::sys::resource::{Resource, getrlimit};
    let Ok((soft, _)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return false;
    };
    let ceiling = soft.saturating_sub((soft / 4).min(1024));
    u64::try_from(fd).is_ok_and(|fd| fd >= ceiling)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_first_bytes() {
        assert_eq!(classify(b""), None);
        assert_eq!(classify(&[0x16, 3, 1]), Some(Proto::Tls));
        assert_eq!(classify(b"PRI * HT"), None);
        assert_eq!(classify(H2_PREFACE), Some(Proto::Http2));
        assert_eq!(classify(b"GET / HTTP/1.1\r\n"), Some(Proto::Http1));
        assert_eq!(classify(b"PRX"), Some(Proto::Http1));
    }

    #[test]
    fn hands_out_each_raw_head_in_order() {
        let a = Activity::new();
        assert_eq!(a.take_head(), None, "not followed: HTTP/2");
        let mut t = Tracked::new((), a.clone(), true);
        t.scan(b"GET / HTTP/1.1\r\nHost: x\r\n\r\nPOST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nConte");
        assert_eq!(a.take_head().map(|h| h.content_lengths), Some(0));
        t.scan(b"nt-LENGTH: 4\r\n\r\n0\r\n\r\n");
        let h = a.take_head().unwrap();
        assert_eq!(
            (h.content_lengths, h.transfer_encoding, h.lost),
            (1, true, false)
        );
        // Nothing more was read: a request hyper made of nothing is refused.
        assert!(a.take_head().unwrap().lost);
    }
}
