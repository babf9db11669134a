//! Connection plumbing: what protocol a connection speaks, IO wrappers that track activity
//! (for the idle timeout) and watch for a smuggled `Content-Length`, and the panic-counting
//! task spawner.

use std::{
    future::Future,
    io,
    panic::AssertUnwindSafe,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};

use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf},
    net::TcpStream,
};

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
    /// A raw `Content-Length:` header line went by since the last request was taken.
    saw_content_length: AtomicBool,
}

impl Activity {
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
            inflight: AtomicUsize::new(0),
            saw_content_length: AtomicBool::new(false),
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

    /// Whether a raw `Content-Length` line was read since the last call.
    pub fn take_saw_content_length(&self) -> bool {
        self.saw_content_length.swap(false, Ordering::Relaxed)
    }
}

pub struct Busy(Arc<Activity>);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.inflight.fetch_sub(1, Ordering::Relaxed);
        self.0.touch();
    }
}

/// Watches an IO: records activity and, for HTTP/1, scans what is read for a
/// `\ncontent-length:` line (case-insensitive), because hyper drops a `Content-Length` that
/// comes with `Transfer-Encoding` from the parsed headers, and the proxy refuses such a
/// request instead. The scan may also see a body's bytes; a false alarm only refuses a
/// chunked request whose neighbour's body contains such a line.
pub struct Tracked<I> {
    inner: I,
    activity: Arc<Activity>,
    scan: bool,
    /// Characters of `PATTERN` matched so far (carried across reads).
    matched: usize,
}

const PATTERN: &[u8] = b"\ncontent-length:";

impl<I> Tracked<I> {
    pub fn new(inner: I, activity: Arc<Activity>, scan: bool) -> Self {
        Self {
            inner,
            activity,
            scan,
            matched: 0,
        }
    }

    #[cfg(test)]
    fn scan(&mut self, bytes: &[u8]) {
        scan(&mut self.matched, &self.activity, bytes);
    }
}

fn scan(matched: &mut usize, activity: &Activity, bytes: &[u8]) {
    let mut m = *matched;
    for &b in bytes {
        let b = b.to_ascii_lowercase();
        if b == PATTERN[m] {
            m += 1;
            if m == PATTERN.len() {
                activity.saw_content_length.store(true, Ordering::Relaxed);
                m = 0;
            }
        } else {
            m = usize::from(b == b'\n');
        }
    }
    *matched = m;
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
                if this.scan {
                    scan(&mut this.matched, &this.activity, filled);
                }
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
    fn finds_content_length_lines_across_reads() {
        let a = Activity::new();
        let mut t = Tracked::new((), a.clone(), true);
        t.scan(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nConte");
        assert!(!a.take_saw_content_length());
        t.scan(b"nt-LENGTH: 4\r\n\r\n");
        assert!(a.take_saw_content_length());
        assert!(!a.take_saw_content_length());
        t.scan(b"x-content-length: 1\r\n");
        assert!(!a.take_saw_content_length());
    }
}
