//! The command line's side of the admin API: HTTP/1.1 over the running server's admin
//! socket (`<data_dir>/control.sock`). A command that finds no server there works on the
//! files instead (the offline fallback of each command).

use super::AdminError;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

/// The running server's admin socket, when one answers there.
pub fn connect(data_dir: &Path) -> Option<UnixStream> {
    UnixStream::connect(crate::queue::requests::socket_path(data_dir)).ok()
}

/// As [`connect`], or an error that says no server runs.
pub fn connect_or_fail(data_dir: &Path, why: &str) -> Result<UnixStream, AdminError> {
    let socket = crate::queue::requests::socket_path(data_dir);
    UnixStream::connect(&socket)
        .map_err(|e| AdminError::Server(format!("no running server answers on {} ({e}){why}", socket.display())))
}

/// One request: its status and body. `timeout` bounds each read of the answer.
pub fn call(
    mut s: UnixStream,
    method: &str,
    path: &str,
    body: Option<&[u8]>,
    timeout: Duration,
) -> Result<(u16, Vec<u8>), AdminError> {
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    let body = body.unwrap_or(b"");
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: ringmx\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes())?;
    s.write_all(body)?;
    let mut answer = Vec::new();
    s.read_to_end(&mut answer)?;
    let end = memchr::memmem::find(&answer, b"\r\n\r\n").ok_or_else(|| {
        AdminError::Server(format!("an answer that is not HTTP: {:?}", String::from_utf8_lossy(&answer)))
    })?;
    let head = String::from_utf8_lossy(&answer[..end]);
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).ok_or_else(|| {
        AdminError::Server(format!("an answer without a status: {:?}", head.lines().next().unwrap_or("")))
    })?;
    Ok((status, answer.split_off(end + 4)))
}

/// One request with a JSON body (none when `body` is `None`) and a JSON answer of type `A`.
/// Besides `A`'s own `error`, a status without a body of that type is an error.
pub fn json<A: serde::de::DeserializeOwned>(
    s: UnixStream,
    method: &str,
    path: &str,
    body: Option<&impl serde::Serialize>,
) -> Result<(u16, A), AdminError> {
    let body = body.map(|b| serde_json::to_vec(b)).transpose().map_err(|e| AdminError::Server(e.to_string()))?;
    let (status, answer) = call(s, method, path, body.as_deref(), Duration::from_secs(60))?;
    match serde_json::from_slice(&answer) {
        Ok(a) => Ok((status, a)),
        Err(e) => {
            let v: serde_json::Value = serde_json::from_slice(&answer).unwrap_or_default();
            Err(AdminError::Server(match v["error"].as_str() {
                Some(err) => err.to_string(),
                None => format!("unreadable answer from the server ({e}): {}", String::from_utf8_lossy(&answer)),
            }))
        }
    }
}

/// `path` with the query pairs, percent-encoded.
pub fn with_query(path: &str, pairs: &[(&str, String)]) -> String {
    let mut p = path.to_string();
    for (i, (k, v)) in pairs.iter().enumerate() {
        p.push(if i == 0 { '?' } else { '&' });
        p.push_str(k);
        p.push('=');
        p.push_str(&crate::rt::admin_http::encode(v));
    }
    p
}

/// A path segment, percent-encoded.
pub fn seg(s: &str) -> String {
    crate::rt::admin_http::encode(s)
}
