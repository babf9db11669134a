//! systemd's readiness protocol (`Type=notify`): one datagram to `$NOTIFY_SOCKET` saying
//! `READY=1` once the first generation enforces and the control API listens, `STOPPING=1` when
//! the daemon stops. Without `$NOTIFY_SOCKET` (not started by systemd) nothing is sent. A
//! datagram that cannot be sent is logged, never fatal: the daemon enforces either way.

use std::os::unix::net::{SocketAddr, UnixDatagram};

/// Send `state` (`READY=1\nSTATUS=…`) to `$NOTIFY_SOCKET`, if it is set.
pub fn notify(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    if let Err(e) = send(&path, state) {
        tracing::warn!(
            "could not tell systemd `{}` through NOTIFY_SOCKET={}: {e}",
            state.lines().next().unwrap_or_default(),
            path.to_string_lossy()
        );
    }
}

fn send(path: &std::ffi::OsStr, state: &str) -> std::io::Result<()> {
    use std::os::{linux::net::SocketAddrExt as _, unix::ffi::OsStrExt as _};
    let bytes = path.as_bytes();
    // `@name`: a socket in the abstract namespace.
    let addr = match bytes.strip_prefix(b"@") {
        Some(name) => SocketAddr::from_abstract_name(name)?,
        None => SocketAddr::from_pathname(path)?,
    };
    let socket = UnixDatagram::unbound()?;
    socket.send_to_addr(state.as_bytes(), &addr)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sends_to_a_path_and_to_an_abstract_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let listener = UnixDatagram::bind(&path).unwrap();
        send(path.as_os_str(), "READY=1\nSTATUS=ok").unwrap();
        let mut buf = [0u8; 64];
        let n = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1\nSTATUS=ok");

        use std::os::linux::net::SocketAddrExt as _;
        let name = format!("governance-notify-test-{}", std::process::id());
        let abs = UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(&name).unwrap()).unwrap();
        send(std::ffi::OsStr::new(&format!("@{name}")), "STOPPING=1").unwrap();
        let n = abs.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"STOPPING=1");

        // Nobody listening: an error, which `notify` logs.
        drop(listener);
        assert!(send(path.as_os_str(), "READY=1").is_err());
    }
}
