//! A connection to a filter service (a policy server, a milter): TCP or a Unix socket,
//! with read and write time-outs.

use std::io::{Read, Write};
use std::time::Duration;

/// TCP or a Unix socket.
#[derive(Debug)]
pub enum ServiceStream {
    Tcp(std::net::TcpStream),
    Unix(std::os::unix::net::UnixStream),
}

impl ServiceStream {
    /// Connects to `address`: `HOST:PORT`, Postfix's `inet:PORT@HOST`, or a Unix socket
    /// (`unix:/path` or `/path`); every read and write then waits at most `timeout`.
    pub fn connect(address: &str, timeout: Duration) -> std::io::Result<ServiceStream> {
        let a = address.strip_prefix("unix:").unwrap_or(address);
        if a.starts_with('/') {
            let s = std::os::unix::net::UnixStream::connect(a)?;
            s.set_read_timeout(Some(timeout))?;
            s.set_write_timeout(Some(timeout))?;
            return Ok(ServiceStream::Unix(s));
        }
        let hp = match a.strip_prefix("inet:").and_then(|r| r.split_once('@')) {
            Some((port, host)) => format!("{host}:{port}"),
            None => a.to_string(),
        };
        let addr = std::net::ToSocketAddrs::to_socket_addrs(&hp)?
            .next()
            .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, "no address"))?;
        let s = std::net::TcpStream::connect_timeout(&addr, timeout)?;
        s.set_read_timeout(Some(timeout))?;
        s.set_write_timeout(Some(timeout))?;
        s.set_nodelay(true)?;
        Ok(ServiceStream::Tcp(s))
    }
}

impl ServiceStream {
    pub fn set_nonblocking(&self, on: bool) -> std::io::Result<()> {
        match self {
            ServiceStream::Tcp(s) => s.set_nonblocking(on),
            ServiceStream::Unix(s) => s.set_nonblocking(on),
        }
    }
}

impl Read for ServiceStream {
    fn read(&mut self, b: &mut [u8]) -> std::io::Result<usize> {
        match self {
            ServiceStream::Tcp(s) => s.read(b),
            ServiceStream::Unix(s) => s.read(b),
        }
    }
}

impl Write for ServiceStream {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        match self {
            ServiceStream::Tcp(s) => s.write(b),
            ServiceStream::Unix(s) => s.write(b),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
