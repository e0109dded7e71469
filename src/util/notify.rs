//! systemd's readiness protocol (`sd_notify(3)`): a datagram of `KEY=VALUE` lines to the
//! socket in `$NOTIFY_SOCKET` (a path, or `@name` in the abstract namespace). Nothing is
//! sent when the variable is unset (not run by systemd, or a unit of another `Type=`).

use std::os::unix::net::UnixDatagram;

/// Sends `state` (e.g. `READY=1\nMAINPID=123`); errors are logged, never fatal.
pub fn notify(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else { return };
    let r = UnixDatagram::unbound().and_then(|s| {
        let p = path.to_string_lossy();
        match p.strip_prefix('@') {
            Some(name) => {
                use std::os::linux::net::SocketAddrExt;
                let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
                s.send_to_addr(state.as_bytes(), &addr)
            }
            None => s.send_to(state.as_bytes(), &*p),
        }
    });
    if let Err(e) = r {
        log::warn!("sd_notify {:?}: {e}", path);
    }
}
