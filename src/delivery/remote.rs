//! The remote-delivery driver: [`client::Client`](super::client::Client) over TCP and
//! rustls on tokio, with a connection pool.
//!
//! # TLS policy
//!
//! - `off`: STARTTLS is never used.
//! - `opportunistic` (default): STARTTLS when offered, and the certificate is **not**
//!   verified. Verification would not add security here — a sender that falls back to
//!   plaintext whenever TLS fails is no better off with a check an attacker can make fail —
//!   and most MX certificates do not match their MX name. It protects against passive
//!   eavesdropping only.
//! - `require`: STARTTLS must be offered and the certificate must verify against the web
//!   PKI roots (webpki-roots) or the configured CA file, for the host name connected to;
//!   otherwise the delivery is deferred (4.7.10 / 4.7.5).
//!
//! # Pool
//!
//! [`Pool::deliver`] takes a destination (host name for TLS and a socket address) and a
//! message. It reuses an idle connection to that destination when there is one (RSET, then
//! the next transaction), else connects (from the configured source address, within the
//! connect time-out). After the message, the connection goes back to the pool; idle
//! connections that have waited the idle time-out are closed with QUIT (and TLS
//! close_notify) by a periodic sweep ([`Pool::close_expired`]).
//! Semaphores bound the connections per destination and in all.

use super::client::{self, Client, ClientConfig, ClientTimeouts, Event, OutboundMessage, RcptResult, TlsPolicy};
use crate::util::units;
use serde::Deserialize;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// `[delivery.remote]`: outbound SMTP.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoteConfig {
    /// Name in EHLO. Default: the server's host name (set by the caller).
    #[serde(default)]
    pub ehlo_name: Option<String>,
    /// `off`, `opportunistic` or `require`. Default `opportunistic`.
    #[serde(default)]
    pub tls: TlsPolicy,
    /// PEM file of CAs trusted for `require`, instead of the web PKI roots. Default none.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Source address of outbound connections. Default: chosen by the system.
    #[serde(default)]
    pub source_address: Option<IpAddr>,
    /// TCP connect time-out. Default `"30s"`.
    #[serde(default = "default_connect_timeout", deserialize_with = "units::de_duration")]
    pub connect_timeout: Duration,
    /// Idle connections are closed (QUIT) after this long. Default `"30s"`.
    #[serde(default = "default_idle_timeout", deserialize_with = "units::de_duration")]
    pub idle_timeout: Duration,
    /// Connections to one destination at once. Default 5.
    #[serde(default = "default_per_destination")]
    pub max_per_destination: usize,
    /// Connections at once in all ("send threads"). Default 100.
    #[serde(default = "default_global")]
    pub max_connections: usize,
    /// Largest message sent; bigger ones fail with 5.3.4 before connecting. 0: no limit.
    /// Default 0.
    #[serde(default)]
    pub max_message_size: u64,
    /// RFC 5321 §4.5.3.2 time-outs.
    #[serde(default)]
    pub timeouts: ClientTimeouts,
}

fn default_connect_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_idle_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_per_destination() -> usize {
    5
}
fn default_global() -> usize {
    100
}

impl Default for RemoteConfig {
    fn default() -> Self {
        toml::from_str("").expect("defaults")
    }
}

/// Where a connection goes: the name (for TLS and logs) and the address.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Destination {
    pub host: String,
    pub addr: SocketAddr,
    /// Smart-host credentials, if any.
    pub auth: Option<client::Credentials>,
}

/// Why a delivery did not happen at all (before any per-recipient result).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RemoteError {
    /// The TCP connection could not be made.
    #[error("connect to {addr}: {what}")]
    Connect { addr: SocketAddr, what: String },
    /// The TLS configuration (CA file) is unusable.
    #[error("TLS configuration: {0}")]
    TlsConfig(String),
}

enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
    /// Between the two, while the handshake owns the socket.
    Gone,
}

impl Stream {
    async fn write_all(&mut self, b: &[u8]) -> std::io::Result<()> {
        match self {
            Stream::Plain(s) => s.write_all(b).await,
            Stream::Tls(s) => {
                s.write_all(b).await?;
                s.flush().await
            }
            Stream::Gone => Err(std::io::ErrorKind::NotConnected.into()),
        }
    }

    async fn read(&mut self, b: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read(b).await,
            Stream::Tls(s) => s.read(b).await,
            Stream::Gone => Err(std::io::ErrorKind::NotConnected.into()),
        }
    }
}

/// One live connection with its state machine.
struct Conn {
    client: Client,
    stream: Stream,
    dest: Destination,
    idle_since: Instant,
    _permits: (OwnedSemaphorePermit, OwnedSemaphorePermit),
}

/// What [`Pool::acquire`] found.
enum Acquired {
    Idle(Box<Conn>),
    Permits((OwnedSemaphorePermit, OwnedSemaphorePermit)),
}

/// Connections by destination, with limits. Cheap to clone; share it.
#[derive(Clone)]
pub struct Pool {
    inner: Arc<PoolInner>,
}

struct PoolInner {
    cfg: RemoteConfig,
    ehlo_name: String,
    verified: TlsConnector,
    unverified: TlsConnector,
    idle: Mutex<HashMap<Destination, Vec<Conn>>>,
    /// Told whenever a connection goes back to the pool: a delivery waiting for a permit
    /// may take it instead (the permits of idle connections are still held).
    idle_notify: tokio::sync::Notify,
    global: Arc<Semaphore>,
    per_dest: Mutex<HashMap<Destination, Arc<Semaphore>>>,
    /// Connections opened so far (for logs and tests).
    opened: std::sync::atomic::AtomicU64,
}

impl Pool {
    pub fn new(cfg: RemoteConfig, hostname: &str) -> Result<Pool, RemoteError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        match &cfg.ca_file {
            Some(path) => {
                let pem =
                    std::fs::read(path).map_err(|e| RemoteError::TlsConfig(format!("{}: {e}", path.display())))?;
                for cert in rustls::pki_types::pem::PemObject::pem_slice_iter(&pem) {
                    let cert: rustls::pki_types::CertificateDer<'static> =
                        cert.map_err(|e| RemoteError::TlsConfig(format!("{}: {e}", path.display())))?;
                    roots.add(cert).map_err(|e| RemoteError::TlsConfig(e.to_string()))?;
                }
            }
            None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        }
        let builder = || {
            rustls::ClientConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()
                .map_err(|e| RemoteError::TlsConfig(e.to_string()))
        };
        let verified = builder()?.with_root_certificates(roots).with_no_client_auth();
        let unverified = builder()?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerify(provider.clone())))
            .with_no_client_auth();
        let ehlo_name = cfg.ehlo_name.clone().unwrap_or_else(|| hostname.to_string());
        Ok(Pool {
            inner: Arc::new(PoolInner {
                global: Arc::new(Semaphore::new(cfg.max_connections.max(1))),
                cfg,
                ehlo_name,
                verified: TlsConnector::from(Arc::new(verified)),
                unverified: TlsConnector::from(Arc::new(unverified)),
                idle: Mutex::new(HashMap::new()),
                idle_notify: tokio::sync::Notify::new(),
                per_dest: Mutex::new(HashMap::new()),
                opened: Default::default(),
            }),
        })
    }

    /// Connections opened since the pool was made.
    pub fn connections_opened(&self) -> u64 {
        self.inner.opened.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Delivers one message to `dest`: one result per recipient, in order. A connection
    /// failure gives every recipient that error (the caller may try the next MX host).
    pub async fn deliver(&self, dest: &Destination, msg: Arc<OutboundMessage>) -> Result<Vec<RcptResult>, RemoteError> {
        self.deliver_to_peer(dest, msg).await.map(|(results, _)| results)
    }

    /// [`Pool::deliver`], also telling whether the server that took the message offers
    /// DSN (RFC 3461): if it does, reporting success is its business; if not, ours
    /// ("relayed").
    pub async fn deliver_to_peer(
        &self,
        dest: &Destination,
        msg: Arc<OutboundMessage>,
    ) -> Result<(Vec<RcptResult>, bool), RemoteError> {
        let max = self.inner.cfg.max_message_size;
        if max > 0 && msg.content.len() as u64 > max {
            let e = client::Error::TooBig { size: msg.content.len() as u64, max };
            return Ok((msg.rcpts.iter().map(|_| Err(e.clone())).collect(), false));
        }
        // A pooled connection may have been closed by the peer meanwhile: one retry on a
        // fresh connection when a reused one fails before any reply to the message.
        for attempt in 0..2 {
            let (mut conn, reused) = match self.acquire(dest).await {
                Acquired::Idle(c) => (*c, true),
                Acquired::Permits(p) => match self.connect(dest, p).await? {
                    Ok(c) => (c, false),
                    Err(e) => return Ok((msg.rcpts.iter().map(|_| Err(e.clone())).collect(), false)),
                },
            };
            conn.client.send(msg.clone(), Instant::now());
            let results = loop {
                match self.pump(&mut conn).await {
                    Event::Done(r) => break r,
                    Event::Closed(e) => {
                        let e = e.unwrap_or(client::Error::ConnectionLost { stage: client::Stage::Mail });
                        break msg.rcpts.iter().map(|_| Err(e.clone())).collect();
                    }
                    Event::Ready | Event::StartTls => {}
                }
            };
            let stale = reused
                && attempt == 0
                && results.iter().all(|r| {
                    matches!(
                        r,
                        Err(client::Error::ConnectionLost { stage: client::Stage::Rset })
                            | Err(client::Error::Rejected { stage: client::Stage::Rset, .. })
                    )
                });
            if stale {
                continue;
            }
            let peer_dsn = conn.client.extensions().dsn;
            // Wait for the Ready that follows Done, then park the connection.
            if !conn.client.is_closed()
                && let Some(Event::Ready) = conn.client.poll_event()
            {
                conn.idle_since = Instant::now();
                self.put_idle(conn);
            }
            return Ok((results, peer_dsn));
        }
        unreachable!("the loop returns on its second pass")
    }

    /// How long a connection may wait in the pool for its next message.
    pub fn idle_timeout(&self) -> Duration {
        self.inner.cfg.idle_timeout
    }

    /// Closes (QUIT) the idle connections that have waited the idle time-out; the delivery
    /// runtime calls this periodically, so that a peer never has to time us out.
    pub async fn close_expired(&self) {
        let now = Instant::now();
        let timeout = self.inner.cfg.idle_timeout;
        let expired: Vec<Conn> = {
            let mut idle = self.inner.idle.lock().unwrap();
            let mut out = Vec::new();
            for list in idle.values_mut() {
                let (old, keep): (Vec<Conn>, Vec<Conn>) = std::mem::take(list)
                    .into_iter()
                    .partition(|c| now.duration_since(c.idle_since) >= timeout || c.client.is_closed());
                *list = keep;
                out.extend(old);
            }
            idle.retain(|_, v| !v.is_empty());
            out
        };
        for c in expired {
            self.quit(c).await;
        }
    }

    /// Closes every idle connection (QUIT), e.g. at shutdown.
    pub async fn close_idle(&self) {
        let all: Vec<Conn> = self.inner.idle.lock().unwrap().drain().flat_map(|(_, v)| v).collect();
        for c in all {
            self.quit(c).await;
        }
    }

    fn take_idle(&self, dest: &Destination) -> Option<Conn> {
        let mut expired = Vec::new();
        let found = {
            let mut idle = self.inner.idle.lock().unwrap();
            let list = idle.get_mut(dest)?;
            let now = Instant::now();
            let mut found = None;
            while let Some(c) = list.pop() {
                if now.duration_since(c.idle_since) >= self.inner.cfg.idle_timeout || c.client.is_closed() {
                    expired.push(c);
                } else {
                    found = Some(c);
                    break;
                }
            }
            found
        };
        drop(expired); // dropping closes the sockets; no QUIT for connections this old
        found
    }

    fn put_idle(&self, conn: Conn) {
        self.inner.idle.lock().unwrap().entry(conn.dest.clone()).or_default().push(conn);
        self.inner.idle_notify.notify_waiters();
    }

    async fn quit(&self, mut conn: Conn) {
        conn.client.quit(Instant::now());
        for _ in 0..4 {
            if let Event::Closed(_) = self.pump(&mut conn).await {
                break;
            }
        }
        // Under TLS, close_notify before the socket goes (RFC 8446 §6.1).
        if let Stream::Tls(s) = &mut conn.stream {
            let _ = tokio::time::timeout(Duration::from_secs(1), s.shutdown()).await;
        }
    }

    /// Connects and runs the opening (greeting, EHLO, STARTTLS, AUTH) until Ready.
    /// The outer error: nothing was tried (limits, config); the inner: the connection failed.
    /// An idle connection to `dest`, or the permits to open one. Idle connections keep
    /// their permits, so a delivery waiting for a permit also watches the pool (else all the
    /// permits could sit with idle connections nobody takes); and when the global limit is
    /// reached, idle connections to other destinations are closed to make room.
    async fn acquire(&self, dest: &Destination) -> Acquired {
        let inner = &self.inner;
        let per = inner
            .per_dest
            .lock()
            .unwrap()
            .entry(dest.clone())
            .or_insert_with(|| Arc::new(Semaphore::new(inner.cfg.max_per_destination.max(1))))
            .clone();
        let p1 = loop {
            let notified = inner.idle_notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(c) = self.take_idle(dest) {
                return Acquired::Idle(Box::new(c));
            }
            tokio::select! {
                p = per.clone().acquire_owned() => break p.expect("never closed"),
                _ = &mut notified => continue,
            }
        };
        loop {
            tokio::select! {
                p = inner.global.clone().acquire_owned() => {
                    return Acquired::Permits((p1, p.expect("never closed")));
                }
                _ = tokio::time::sleep(Duration::from_millis(50)) => self.evict_one_other(dest),
            }
        }
    }

    /// Closes one idle connection to another destination, freeing its global permit.
    fn evict_one_other(&self, dest: &Destination) {
        let victim = {
            let mut idle = self.inner.idle.lock().unwrap();
            idle.iter_mut().filter(|(d, _)| *d != dest).find_map(|(_, v)| v.pop())
        };
        drop(victim);
    }

    async fn connect(
        &self,
        dest: &Destination,
        (p1, p2): (OwnedSemaphorePermit, OwnedSemaphorePermit),
    ) -> Result<Result<Conn, client::Error>, RemoteError> {
        let inner = &self.inner;
        let socket = if dest.addr.is_ipv4() { TcpSocket::new_v4() } else { TcpSocket::new_v6() }
            .map_err(|e| RemoteError::Connect { addr: dest.addr, what: e.to_string() })?;
        if let Some(src) = inner.cfg.source_address {
            socket
                .bind(SocketAddr::new(src, 0))
                .map_err(|e| RemoteError::Connect { addr: dest.addr, what: format!("bind {src}: {e}") })?;
        }
        let tcp = match tokio::time::timeout(inner.cfg.connect_timeout, socket.connect(dest.addr)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Err(RemoteError::Connect { addr: dest.addr, what: e.to_string() }),
            Err(_) => return Err(RemoteError::Connect { addr: dest.addr, what: "time-out".into() }),
        };
        let _ = tcp.set_nodelay(true);
        inner.opened.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let cfg = Arc::new(ClientConfig {
            ehlo_name: inner.ehlo_name.clone(),
            tls: inner.cfg.tls,
            auth: dest.auth.clone(),
            auth_without_tls: false,
            pipelining: true,
            timeouts: inner.cfg.timeouts,
        });
        let mut conn = Conn {
            client: Client::new(cfg, Instant::now()),
            stream: Stream::Plain(tcp),
            dest: dest.clone(),
            idle_since: Instant::now(),
            _permits: (p1, p2),
        };
        for _ in 0..8 {
            match self.pump(&mut conn).await {
                Event::Ready => return Ok(Ok(conn)),
                Event::Closed(e) => {
                    return Ok(Err(e.unwrap_or(client::Error::ConnectionLost { stage: client::Stage::Greeting })));
                }
                Event::StartTls => self.start_tls(&mut conn).await,
                Event::Done(_) => {}
            }
        }
        Ok(Err(client::Error::Protocol { stage: client::Stage::Greeting, what: "opening did not finish" }))
    }

    async fn start_tls(&self, conn: &mut Conn) {
        let connector =
            if self.inner.cfg.tls == TlsPolicy::Require { &self.inner.verified } else { &self.inner.unverified };
        let name = rustls::pki_types::ServerName::try_from(conn.dest.host.clone())
            .unwrap_or_else(|_| rustls::pki_types::ServerName::IpAddress(conn.dest.addr.ip().into()));
        let ok = match std::mem::replace(&mut conn.stream, Stream::Gone) {
            Stream::Plain(tcp) => {
                match tokio::time::timeout(self.inner.cfg.timeouts.command, connector.connect(name, tcp)).await {
                    Ok(Ok(tls)) => {
                        conn.stream = Stream::Tls(Box::new(tls));
                        true
                    }
                    _ => false,
                }
            }
            other => {
                conn.stream = other;
                false
            }
        };
        conn.client.tls_done(ok, Instant::now());
    }

    /// Moves bytes until the client has an event for us.
    async fn pump(&self, conn: &mut Conn) -> Event {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            if let Some(ev) = conn.client.poll_event() {
                if let Event::Closed(_) = ev {
                    // Send what is pending (a QUIT) before the socket goes.
                    while let Some(out) = conn.client.poll_transmit(Instant::now()) {
                        if conn.stream.write_all(&out).await.is_err() {
                            break;
                        }
                    }
                }
                return ev;
            }
            if conn.client.is_closed() {
                return Event::Closed(None);
            }
            if let Some(out) = conn.client.poll_transmit(Instant::now()) {
                if conn.stream.write_all(&out).await.is_err() {
                    conn.client.connection_lost();
                }
                continue;
            }
            let wait = conn.client.poll_timeout().map(|t| t.saturating_duration_since(Instant::now()));
            let read = match wait {
                Some(d) => tokio::time::timeout(d, conn.stream.read(&mut buf)).await.ok(),
                None => Some(conn.stream.read(&mut buf).await),
            };
            match read {
                None => conn.client.handle_timeout(Instant::now()),
                Some(Ok(0)) | Some(Err(_)) => conn.client.connection_lost(),
                Some(Ok(n)) => conn.client.handle_input(Instant::now(), &buf[..n]),
            }
        }
    }
}

/// Accepts any certificate: only for the opportunistic policy (see the module docs).
#[derive(Debug)]
struct NoVerify(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
