//! Where the proxy's upstream connections are made from: the network namespace of the client
//! that asked for them.
//!
//! A client in the proxy's own namespace (an agent on the node) is served by upstream
//! connections made the ordinary way. A client in a network namespace of its own (a container,
//! a pod), served by the listener the daemon opened there (`daemon/netns.rs`), gets upstream
//! connections *made in that namespace*: a socket belongs to the namespace it was created in,
//! whatever thread later connects it, so a thread that stays in the agent's namespace
//! ([`serve_sockets`]) creates the sockets and the proxy connects them. An address then means
//! what it means to the agent: `127.0.0.1` is the pod's loopback, not the node's, and the
//! pod's routes, addresses and firewall (NetworkPolicy) apply. The proxy's upstream has no
//! more reach than the agent's own connect would have had.
//!
//! Failing closed: when the namespace's socket thread is gone, the connection fails (502 or a
//! closed tunnel); it is never made from the node instead.

use std::{
    future::Future,
    io,
    net::SocketAddr,
    os::fd::OwnedFd,
    pin::Pin,
    sync::{Arc, mpsc},
    task::{Context, Poll},
    time::Duration,
};

use hyper::Uri;
use hyper_util::{
    client::legacy::Client,
    rt::{TokioExecutor, TokioIo, TokioTimer},
};
use tokio::net::{TcpSocket, TcpStream};

use super::{Proxy, upstream::UpBody};

/// A request for a TCP socket (IPv6 if true), and where to answer it.
type Ask = (bool, tokio::sync::oneshot::Sender<io::Result<OwnedFd>>);

/// Asks a thread in a network namespace for TCP sockets made there. The thread ends when the
/// last `SocketMaker` (and so every [`Origin`] using it) is dropped.
#[derive(Clone)]
pub struct SocketMaker(mpsc::Sender<Ask>);

/// The requests a [`SocketMaker`] sends; served by [`serve_sockets`].
pub struct SocketRequests(mpsc::Receiver<Ask>);

/// A maker and the requests it will send.
pub fn socket_channel() -> (SocketMaker, SocketRequests) {
    let (tx, rx) = mpsc::channel();
    (SocketMaker(tx), SocketRequests(rx))
}

/// Serve socket requests on the calling thread, which is in the namespace the sockets are to
/// belong to, until every [`SocketMaker`] is gone. (Making a socket takes no capability.)
pub fn serve_sockets(requests: SocketRequests) {
    use nix::sys::socket::{AddressFamily, SockFlag, SockProtocol, SockType, socket};
    while let Ok((v6, reply)) = requests.0.recv() {
        let family = if v6 {
            AddressFamily::Inet6
        } else {
            AddressFamily::Inet
        };
        let made = socket(
            family,
            SockType::Stream,
            SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
            SockProtocol::Tcp,
        )
        .map_err(io::Error::from);
        let _ = reply.send(made);
    }
}

impl SocketMaker {
    /// A TCP connection to `addr` from the maker's namespace.
    pub async fn connect(&self, addr: SocketAddr) -> io::Result<TcpStream> {
        let gone = || {
            io::Error::other(
                "the agent's network namespace has no socket thread any more: not connected",
            )
        };
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.0.send((addr.is_ipv6(), tx)).map_err(|_| gone())?;
        let fd = rx.await.map_err(|_| gone())??;
        // Non-blocking already (SOCK_NONBLOCK), as tokio requires.
        let socket = TcpSocket::from_std_stream(std::net::TcpStream::from(fd));
        let stream = socket.connect(addr).await?;
        let _ = stream.set_nodelay(true);
        Ok(stream)
    }
}

/// Where a client's upstream connections come from: a network namespace other than the
/// proxy's (see the module documentation), with a connection pool of its own.
pub struct Origin {
    maker: SocketMaker,
    connect_timeout: Duration,
    /// Plain HTTP upstreams, pooled per namespace (a pooled connection belongs to the
    /// namespace it was made in).
    pub(super) client: Client<NetnsConnector, UpBody>,
}

impl Origin {
    /// A TCP connection to `addr` from this namespace, within the proxy's upstream connect
    /// timeout.
    pub async fn connect(&self, addr: SocketAddr) -> io::Result<TcpStream> {
        connect_within(&self.maker, addr, self.connect_timeout).await
    }
}

async fn connect_within(
    maker: &SocketMaker,
    addr: SocketAddr,
    timeout: Duration,
) -> io::Result<TcpStream> {
    let stream = tokio::time::timeout(timeout, maker.connect(addr))
        .await
        .unwrap_or_else(|_| {
            Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("connecting to {addr} timed out"),
            ))
        })?;
    // Not on the daemon's last descriptors (see `io::fd_in_reserve`).
    if super::io::fd_in_reserve(std::os::fd::AsRawFd::as_raw_fd(&stream)) {
        return Err(io::Error::other(
            "the daemon's open files are near its limit",
        ));
    }
    Ok(stream)
}

impl Proxy {
    /// The origin of the upstream connections of clients in the namespace `maker` makes
    /// sockets in.
    pub fn origin(&self, maker: SocketMaker) -> Arc<Origin> {
        let connector = NetnsConnector {
            maker: maker.clone(),
            timeout: self.cfg.upstream_connect_timeout,
        };
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(64)
            .set_host(false)
            .build(connector);
        Arc::new(Origin {
            maker,
            connect_timeout: self.cfg.upstream_connect_timeout,
            client,
        })
    }
}

/// The HTTP client's connector for an [`Origin`]: the URI's authority is an IP address and a
/// port (the proxy resolved the name; the pool never does), connected from the namespace.
#[derive(Clone)]
pub(super) struct NetnsConnector {
    maker: SocketMaker,
    timeout: Duration,
}

impl tower::Service<Uri> for NetnsConnector {
    type Response = TokioIo<TcpStream>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<TokioIo<TcpStream>>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let addr = upstream_addr(&uri)?;
            connect_within(&this.maker, addr, this.timeout)
                .await
                .map(TokioIo::new)
        })
    }
}

/// The address of an upstream URI the proxy built: `http://IP:PORT/...`.
fn upstream_addr(uri: &Uri) -> io::Result<SocketAddr> {
    if uri.scheme_str() != Some("http") {
        return Err(io::Error::other(format!("not an http:// upstream: {uri}")));
    }
    uri.authority()
        .and_then(|a| a.as_str().parse::<SocketAddr>().ok())
        .ok_or_else(|| io::Error::other(format!("the upstream is not an address: {uri}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_upstream_uri_is_an_address_never_a_name() {
        let addr = |s: &str| upstream_addr(&s.parse::<Uri>().unwrap()).ok();
        assert_eq!(
            addr("http://127.0.0.1:80/x"),
            Some("127.0.0.1:80".parse().unwrap())
        );
        assert_eq!(
            addr("http://[::1]:8080/"),
            Some("[::1]:8080".parse().unwrap())
        );
        assert_eq!(addr("http://example.com:80/"), None);
        assert_eq!(addr("https://127.0.0.1:443/"), None);
        assert_eq!(addr("http://127.0.0.1/"), None);
    }

    /// The sockets come from the maker's thread; a maker whose thread is gone connects
    /// nothing (never a socket of the caller's instead).
    #[tokio::test]
    async fn sockets_come_from_the_maker_s_thread_or_not_at_all() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let (maker, requests) = socket_channel();
        let thread = std::thread::spawn(move || serve_sockets(requests));
        let s = maker.connect(addr).await.unwrap();
        assert_eq!(s.peer_addr().unwrap(), addr);
        drop(s);
        let (gone, requests) = socket_channel();
        drop(requests);
        let err = gone.connect(addr).await.unwrap_err();
        assert!(err.to_string().contains("no socket thread"), "{err}");
        drop(maker);
        thread.join().unwrap();
    }
}
