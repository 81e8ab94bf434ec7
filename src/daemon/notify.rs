//! Telling a service manager that the daemon is ready: the `sd_notify` protocol, by
//! hand (one datagram on the unix socket named by `$NOTIFY_SOCKET`), so that
//! `Type=notify` systemd units work without linking libsystemd.
//!
//! Without `$NOTIFY_SOCKET` nothing happens. A name starting with `@` is an abstract
//! socket. Failures are logged, never fatal: the daemon runs the same either way.

use std::os::unix::net::UnixDatagram;

/// Sends `READY=1` (with our pid) if a service manager asked for it.
pub fn ready() {
    notify(&format!("READY=1\nMAINPID={}\n", std::process::id()));
}

/// Sends one notification message (`KEY=VALUE` lines) to `$NOTIFY_SOCKET`, if set.
pub fn notify(message: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    if let Err(e) = send(&path, message) {
        tracing::warn!(socket = ?path, error = %e, "could not notify the service manager");
    }
}

fn send(path: &std::ffi::OsStr, message: &str) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let sock = UnixDatagram::unbound()?;
    let bytes = path.as_bytes();
    if let Some(name) = bytes.strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
        sock.send_to_addr(message.as_bytes(), &addr)?;
    } else {
        sock.send_to(message.as_bytes(), std::path::Path::new(path))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_reaches_a_path_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let listener = UnixDatagram::bind(&path).unwrap();
        send(path.as_os_str(), "READY=1\n").unwrap();
        let mut buf = [0u8; 64];
        let n = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1\n");
    }
}
