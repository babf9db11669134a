//! The kernel's record of agents' connections to the proxy: who is on the other end of an
//! accepted connection, and where it was going.

use super::*;

/// The kernel's record of agents' connections to the proxy, opened from its pin: the proxy
/// asks it who is on the other end of a connection it accepted.
pub struct ProxyConns {
    pub(super) map: HashMap<MapData, ConnKey, OrigDst>,
}

impl ProxyConns {
    pub fn open(pin_dir: &Path) -> Result<Self, KernelError> {
        let name = maps::PROXY_CONNS;
        let data = MapData::from_pin(pin_dir.join(pins::MAPS).join(name))
            .map_err(|source| KernelError::Map { name, source })?;
        let map = Map::from_map_data(data).map_err(|source| KernelError::Map { name, source })?;
        let map = HashMap::try_from(map).map_err(|source| KernelError::Map { name, source })?;
        Ok(Self { map })
    }

    /// Take (read and delete) the record of the connection whose client end is `peer` in the
    /// network namespace `netns` (its cookie, see [`netns_cookie`]). None: not an agent's
    /// connection (or its record was lost: the caller refuses it).
    pub fn take(&mut self, peer: SocketAddr, netns: u64) -> Option<OrigDst> {
        let family = match peer {
            SocketAddr::V4(_) => libc::AF_INET,
            SocketAddr::V6(a) if a.ip().to_ipv4_mapped().is_some() => libc::AF_INET,
            SocketAddr::V6(_) => libc::AF_INET6,
        } as u32;
        let addr = match peer {
            SocketAddr::V4(a) => a.ip().to_ipv6_mapped().octets(),
            SocketAddr::V6(a) => a.ip().octets(),
        };
        let key = ConnKey {
            addr,
            port: u32::from(peer.port()),
            family,
            netns,
        };
        let found = self.map.get(&key, 0).ok()?;
        let _ = self.map.remove(&key);
        Some(found)
    }
}

/// The cookie of the network namespace a socket belongs to (`SO_NETNS_COOKIE`, Linux 5.14),
/// the same number `bpf_get_netns_cookie` gives the programs.
pub fn netns_cookie(fd: std::os::fd::BorrowedFd<'_>) -> std::io::Result<u64> {
    use std::os::fd::AsRawFd as _;
    let mut cookie: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: a valid fd, and a buffer of the length given.
    let r = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_NETNS_COOKIE,
            (&raw mut cookie).cast(),
            &raw mut len,
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(cookie)
}

/// Mark a socket of the proxy's as its listener (`SO_PRIORITY`
/// [`governance_common::PROXY_LISTENER_PRIORITY`], which takes CAP_NET_ADMIN): the kernel sends
/// an agent's connect to the proxy's address only where the listener that would take it has
/// this mark, so that an agent given the proxy's port in a namespace (before the daemon's
/// listener, or while the daemon is away) receives nothing meant for the proxy. An unmarked
/// listener gets no agent connection.
pub fn mark_proxy_listener(fd: std::os::fd::BorrowedFd<'_>) -> std::io::Result<()> {
    use std::os::fd::AsRawFd as _;
    let priority = governance_common::PROXY_LISTENER_PRIORITY as libc::c_int;
    // SAFETY: a valid fd, and an int of the length given.
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PRIORITY,
            (&raw const priority).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}
