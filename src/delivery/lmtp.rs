//! An LMTP client (RFC 2033): hand a message to a mailbox server such as Dovecot.
//!
//! # Layout
//!
//! - [`LmtpClient`]: the sans-IO state machine. Bytes from the server go in
//!   ([`LmtpClient::handle_input`]), bytes to send come out ([`LmtpClient::poll_transmit`]).
//!   It sends LHLO, then MAIL, every RCPT and DATA in one flight when the server offers
//!   PIPELINING (RFC 2920), one at a time otherwise; after the final dot it reads one reply
//!   per accepted recipient, in RCPT order (RFC 2033 §4.2).
//! - [`deliver`]: the driver on the delivery runtime (tokio), over TCP or a Unix socket,
//!   with time-outs.
//!
//! The result is per recipient: `Ok(())` or an [`LmtpFailure`] that says whether it is
//! permanent (5xx: bounce) or not (4xx, or the connection failed: retry).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Longest reply line accepted (RFC 5321 §4.5.3.1.5 says 512; servers send longer texts).
const MAX_LINE: usize = 4096;

/// One reply from the server: its code and text (the lines of a multi-line reply joined
/// with `\n`, enhanced status code included).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LmtpReply {
    pub code: u16,
    pub text: String,
}

impl std::fmt::Display for LmtpReply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.code, self.text)
    }
}

/// Why one recipient was not delivered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LmtpFailure {
    pub reply: LmtpReply,
    /// 5xx: bounce; 4xx or a broken connection: retry.
    pub permanent: bool,
}

impl LmtpFailure {
    fn from_reply(reply: LmtpReply) -> Self {
        LmtpFailure { permanent: reply.code >= 500, reply }
    }
}

/// Errors of the LMTP conversation itself.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LmtpError {
    /// A reply line that is not `ddd[ -]text`.
    #[error("malformed reply line {0:?}")]
    MalformedReply(String),
    /// A reply line longer than the limit.
    #[error("reply line longer than {MAX_LINE} bytes")]
    LineTooLong,
    /// Connecting, reading or writing failed (time-outs included).
    #[error("{op}: {source}")]
    Io { op: &'static str, source: std::io::Error },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    Greeting,
    Lhlo,
    Mail,
    Rcpt(usize),
    Data,
    /// The final reply for the `n`th accepted recipient.
    Final(usize),
}

/// One LMTP transaction as a state machine. See the module documentation.
#[derive(Debug)]
pub struct LmtpClient<'a> {
    lhlo: String,
    from: String,
    rcpts: &'a [String],
    content: &'a [u8],
    out: Vec<u8>,
    input: Vec<u8>,
    /// Lines of the reply being read.
    lines: Vec<String>,
    /// Replies awaited, in order.
    expect: VecDeque<Expect>,
    /// Commands not yet sent (without PIPELINING, one is sent per reply).
    queued: VecDeque<Vec<u8>>,
    pipelining: bool,
    /// Indexes into `rcpts` of the accepted recipients, in RCPT order.
    accepted: Vec<usize>,
    results: Vec<Option<Result<(), LmtpFailure>>>,
    done: bool,
}

impl<'a> LmtpClient<'a> {
    /// A transaction from `from` (empty for `<>`) to `rcpts`; `content` is the message with
    /// CRLF line ends, not dot-stuffed.
    pub fn new(lhlo_name: &str, from: &str, rcpts: &'a [String], content: &'a [u8]) -> Self {
        LmtpClient {
            lhlo: lhlo_name.to_string(),
            from: from.to_string(),
            rcpts,
            content,
            out: Vec::new(),
            input: Vec::new(),
            lines: Vec::new(),
            expect: VecDeque::from([Expect::Greeting]),
            queued: VecDeque::new(),
            pipelining: false,
            accepted: Vec::new(),
            results: vec![None; rcpts.len()],
            done: rcpts.is_empty(),
        }
    }

    /// Bytes to send, if any.
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        if self.out.is_empty() { None } else { Some(std::mem::take(&mut self.out)) }
    }

    /// True once every recipient has its result (QUIT may still be in the output).
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// The result of each recipient, in the order given; `None` for those still waiting.
    pub fn results(&self) -> &[Option<Result<(), LmtpFailure>>] {
        &self.results
    }

    /// The connection broke or timed out: every recipient without a result fails,
    /// transiently, with `why`.
    pub fn fail_remaining(&mut self, why: &str) {
        let reply = LmtpReply { code: 451, text: format!("4.4.2 {why}") };
        for r in self.results.iter_mut().filter(|r| r.is_none()) {
            *r = Some(Err(LmtpFailure { reply: reply.clone(), permanent: false }));
        }
        self.done = true;
    }

    /// Feeds bytes from the server.
    pub fn handle_input(&mut self, data: &[u8]) -> Result<(), LmtpError> {
        self.input.extend_from_slice(data);
        while let Some(nl) = memchr::memchr(b'\n', &self.input) {
            let line: Vec<u8> = self.input.drain(..=nl).collect();
            let line = String::from_utf8_lossy(&line).trim_end_matches(['\r', '\n']).to_string();
            let b = line.as_bytes();
            if b.len() < 3 || !b[..3].iter().all(u8::is_ascii_digit) || (b.len() > 3 && b[3] != b' ' && b[3] != b'-') {
                return Err(LmtpError::MalformedReply(line));
            }
            let last = b.len() == 3 || b[3] == b' ';
            self.lines.push(line);
            if last {
                let code = self.lines[0][..3].parse().unwrap_or(0);
                let text = self.lines.iter().map(|l| l.get(4..).unwrap_or("")).collect::<Vec<_>>().join("\n");
                self.lines.clear();
                self.reply(LmtpReply { code, text });
            }
        }
        if self.input.len() > MAX_LINE {
            return Err(LmtpError::LineTooLong);
        }
        Ok(())
    }

    fn send(&mut self, cmd: Vec<u8>, expect: Expect) {
        self.expect.push_back(expect);
        // Sent now unless, without PIPELINING, an earlier command is still unanswered.
        if self.pipelining || self.expect.len() - self.queued.len() == 1 {
            self.out.extend_from_slice(&cmd);
        } else {
            self.queued.push_back(cmd);
        }
    }

    fn finish(&mut self) {
        self.expect.clear();
        self.queued.clear();
        self.out.extend_from_slice(b"QUIT\r\n");
        self.done = true;
    }

    fn fail_all(&mut self, reply: &LmtpReply) {
        for r in self.results.iter_mut().filter(|r| r.is_none()) {
            *r = Some(Err(LmtpFailure::from_reply(reply.clone())));
        }
    }

    fn reply(&mut self, reply: LmtpReply) {
        let Some(expect) = self.expect.pop_front() else { return };
        self.handle_reply(expect, reply);
        // Without PIPELINING, the next command goes once every earlier one is answered.
        if !self.pipelining
            && !self.done
            && self.expect.len() == self.queued.len()
            && let Some(next) = self.queued.pop_front()
        {
            self.out.extend_from_slice(&next);
        }
    }

    fn handle_reply(&mut self, expect: Expect, reply: LmtpReply) {
        let ok = (200..300).contains(&reply.code);
        match expect {
            Expect::Greeting if reply.code == 220 => {
                self.send(format!("LHLO {}\r\n", self.lhlo).into_bytes(), Expect::Lhlo)
            }
            Expect::Lhlo if ok => {
                self.pipelining = reply.text.lines().any(|l| l.trim().eq_ignore_ascii_case("PIPELINING"));
                let eight_bit = self.content.iter().any(|&b| b >= 0x80)
                    && reply.text.lines().any(|l| l.trim().eq_ignore_ascii_case("8BITMIME"));
                let body = if eight_bit { " BODY=8BITMIME" } else { "" };
                self.send(format!("MAIL FROM:<{}>{body}\r\n", self.from).into_bytes(), Expect::Mail);
                for i in 0..self.rcpts.len() {
                    self.send(format!("RCPT TO:<{}>\r\n", self.rcpts[i]).into_bytes(), Expect::Rcpt(i));
                }
                self.send(b"DATA\r\n".to_vec(), Expect::Data);
            }
            Expect::Greeting | Expect::Lhlo | Expect::Mail if !ok => {
                self.fail_all(&reply);
                self.finish();
            }
            Expect::Mail => {}
            Expect::Rcpt(i) => {
                if ok {
                    self.accepted.push(i);
                } else {
                    self.results[i] = Some(Err(LmtpFailure::from_reply(reply)));
                }
                // Without PIPELINING, DATA is not worth sending when nobody was accepted.
                if !self.pipelining && i + 1 == self.rcpts.len() && self.accepted.is_empty() {
                    self.finish();
                }
            }
            Expect::Data if reply.code == 354 => {
                dot_stuff(self.content, &mut self.out);
                self.expect.extend((0..self.accepted.len()).map(Expect::Final));
                if self.accepted.is_empty() {
                    self.finish();
                }
            }
            Expect::Data => {
                self.fail_all(&reply);
                self.finish();
            }
            Expect::Final(n) => {
                let i = self.accepted[n];
                self.results[i] = Some(if ok { Ok(()) } else { Err(LmtpFailure::from_reply(reply)) });
                if n + 1 == self.accepted.len() {
                    self.finish();
                }
            }
            Expect::Greeting | Expect::Lhlo => unreachable!("handled above"),
        }
    }
}

/// Appends `content` dot-stuffed (RFC 5321 §4.5.2), with a final CRLF if it lacks one, and
/// the end-of-data line.
fn dot_stuff(content: &[u8], out: &mut Vec<u8>) {
    let mut at_line_start = true;
    for &b in content {
        if at_line_start && b == b'.' {
            out.push(b'.');
        }
        out.push(b);
        at_line_start = b == b'\n';
    }
    if !content.is_empty() && !content.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b".\r\n");
}

/// Where the LMTP server listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LmtpEndpoint {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl LmtpEndpoint {
    /// `host:port` (an IP address and port) or `unix:/path/to/socket`.
    pub fn parse(s: &str) -> Result<Self, String> {
        match s.strip_prefix("unix:") {
            Some(path) if path.starts_with('/') => Ok(LmtpEndpoint::Unix(PathBuf::from(path))),
            Some(_) => Err(format!("{s:?}: the socket path must be absolute")),
            None => {
                s.parse().map(LmtpEndpoint::Tcp).map_err(|_| format!("{s:?} is neither ADDRESS:PORT nor unix:/PATH"))
            }
        }
    }
}

/// `[delivery.lmtp]`: mailboxes delivered to an LMTP server (Dovecot, Cyrus) instead of
/// Maildirs.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LmtpConfig {
    /// `ADDRESS:PORT` or `unix:/PATH`. Default none: every mailbox is a Maildir.
    #[serde(default)]
    pub server: Option<String>,
    /// Directory domains whose mailboxes go to the LMTP server. Default empty: all of them.
    #[serde(default)]
    pub domains: Vec<String>,
    /// Each read and write with the server is bounded by this. Default `"30s"`.
    #[serde(default = "default_lmtp_timeout", deserialize_with = "crate::util::units::de_duration")]
    pub timeout: Duration,
}

fn default_lmtp_timeout() -> Duration {
    Duration::from_secs(30)
}

impl Default for LmtpConfig {
    fn default() -> Self {
        LmtpConfig { server: None, domains: Vec::new(), timeout: default_lmtp_timeout() }
    }
}

/// The LMTP route as the router uses it.
#[derive(Debug, Clone)]
pub struct LmtpRoute {
    pub endpoint: LmtpEndpoint,
    /// Lower case; empty: every directory domain.
    pub domains: Vec<String>,
    pub timeout: Duration,
}

impl LmtpRoute {
    /// The route of a valid configuration, if one is set.
    pub fn from_config(c: &LmtpConfig) -> Option<Self> {
        let endpoint = LmtpEndpoint::parse(c.server.as_deref()?).ok()?;
        Some(LmtpRoute {
            endpoint,
            domains: c.domains.iter().map(|d| d.to_ascii_lowercase()).collect(),
            timeout: c.timeout,
        })
    }

    /// True when mail for a mailbox reached as `address` goes over LMTP.
    pub fn applies_to(&self, address: &str) -> bool {
        let domain = address.rsplit_once('@').map_or("", |(_, d)| d);
        self.domains.is_empty() || self.domains.iter().any(|d| d.eq_ignore_ascii_case(domain))
    }
}

/// Delivers one message on the delivery runtime, each connect, read and write bounded by
/// `timeout`. A failure to connect is an error; a connection that breaks later fails the
/// recipients still waiting, transiently, and the others keep their results.
pub async fn deliver(
    endpoint: &LmtpEndpoint,
    lhlo_name: &str,
    from: &str,
    rcpts: &[String],
    content: &[u8],
    timeout: Duration,
) -> Result<Vec<Result<(), LmtpFailure>>, LmtpError> {
    let io = |op| move |source| LmtpError::Io { op, source };
    let client = LmtpClient::new(lhlo_name, from, rcpts, content);
    match endpoint {
        LmtpEndpoint::Tcp(addr) => {
            let s = bounded(timeout, tokio::net::TcpStream::connect(addr)).await.map_err(io("connect"))?;
            s.set_nodelay(true).map_err(io("set nodelay"))?;
            Ok(converse(s, client, timeout).await)
        }
        LmtpEndpoint::Unix(path) => {
            let s = bounded(timeout, tokio::net::UnixStream::connect(path)).await.map_err(io("connect"))?;
            Ok(converse(s, client, timeout).await)
        }
    }
}

/// An I/O future that fails with `TimedOut` after `timeout`.
async fn bounded<T>(timeout: Duration, f: impl Future<Output = std::io::Result<T>>) -> std::io::Result<T> {
    tokio::time::timeout(timeout, f).await.unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()))
}

/// Runs the transaction over a connected stream; every recipient has a result at the end.
async fn converse<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    mut client: LmtpClient<'_>,
    timeout: Duration,
) -> Vec<Result<(), LmtpFailure>> {
    let mut buf = vec![0u8; 8192];
    while !client.is_done() {
        if let Some(out) = client.poll_transmit()
            && let Err(e) = bounded(timeout, stream.write_all(&out)).await
        {
            client.fail_remaining(&format!("write: {e}"));
            break;
        }
        match bounded(timeout, stream.read(&mut buf)).await {
            Ok(0) => client.fail_remaining("connection closed by the LMTP server"),
            Ok(n) => {
                if let Err(e) = client.handle_input(&buf[..n]) {
                    client.fail_remaining(&e.to_string());
                }
            }
            Err(e) => client.fail_remaining(&format!("read: {e}")),
        }
    }
    // QUIT, best effort: every result is already known.
    if let Some(out) = client.poll_transmit() {
        let _ = bounded(timeout, stream.write_all(&out)).await;
    }
    client.results.into_iter().map(|r| r.expect("every recipient has a result when done")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rcpts(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    /// A pipelined transaction fed the server's bytes split at every offset.
    #[test]
    fn pipelined_with_per_recipient_replies_at_every_split() {
        let to = rcpts(&["a@x.test", "b@x.test", "c@x.test"]);
        let server: &[u8] = b"220 lmtp ready\r\n250-lmtp\r\n250-PIPELINING\r\n250 ENHANCEDSTATUSCODES\r\n\
            250 2.1.0 ok\r\n250 2.1.5 ok\r\n550 5.1.1 no such user\r\n250 2.1.5 ok\r\n354 go\r\n\
            250 2.0.0 a saved\r\n452 4.2.2 c over quota\r\n221 bye\r\n";
        for split in 0..server.len() {
            let mut c = LmtpClient::new("mx.test", "s@y.test", &to, b"Subject: x\r\n\r\n.hidden\r\nend");
            let mut sent = Vec::new();
            for part in [&server[..split], &server[split..]] {
                c.handle_input(part).unwrap();
                while let Some(o) = c.poll_transmit() {
                    sent.extend(o);
                }
            }
            assert_eq!(
                String::from_utf8(sent).unwrap(),
                "LHLO mx.test\r\nMAIL FROM:<s@y.test>\r\nRCPT TO:<a@x.test>\r\nRCPT TO:<b@x.test>\r\n\
                 RCPT TO:<c@x.test>\r\nDATA\r\nSubject: x\r\n\r\n..hidden\r\nend\r\n.\r\nQUIT\r\n",
                "split at {split}"
            );
            assert!(c.is_done());
            let r = c.results();
            assert_eq!(r[0], Some(Ok(())));
            let b = r[1].clone().unwrap().unwrap_err();
            assert!(b.permanent && b.reply.code == 550 && b.reply.text == "5.1.1 no such user");
            let cc = r[2].clone().unwrap().unwrap_err();
            assert!(!cc.permanent && cc.reply.code == 452);
        }
    }

    #[test]
    fn without_pipelining_one_command_per_reply() {
        let to = rcpts(&["a@x.test"]);
        let mut c = LmtpClient::new("mx.test", "", &to, b"x\r\n");
        let mut step = |input: &[u8]| {
            c.handle_input(input).unwrap();
            String::from_utf8(c.poll_transmit().unwrap_or_default()).unwrap()
        };
        assert_eq!(step(b"220 hi\r\n"), "LHLO mx.test\r\n");
        assert_eq!(step(b"250 lmtp\r\n"), "MAIL FROM:<>\r\n");
        assert_eq!(step(b"250 ok\r\n"), "RCPT TO:<a@x.test>\r\n");
        assert_eq!(step(b"250 ok\r\n"), "DATA\r\n");
        assert_eq!(step(b"354 go\r\n"), "x\r\n.\r\n");
        assert_eq!(step(b"250 saved\r\n"), "QUIT\r\n");
        assert_eq!(c.results(), [Some(Ok(()))]);
    }

    #[test]
    fn refusals_and_broken_replies() {
        let to = rcpts(&["a@x.test", "b@x.test"]);
        // Greeting refused: every recipient fails with it.
        let mut c = LmtpClient::new("mx.test", "", &to, b"x");
        c.handle_input(b"554 5.3.2 go away\r\n").unwrap();
        assert!(c.is_done());
        assert!(c.results().iter().all(|r| matches!(r, Some(Err(f)) if f.permanent && f.reply.code == 554)));
        // No recipient accepted (no PIPELINING): no DATA.
        let mut c = LmtpClient::new("mx.test", "", &to, b"x");
        c.handle_input(b"220 hi\r\n250 lmtp\r\n250 ok\r\n450 4.2.1 busy\r\n550 5.1.1 unknown\r\n").unwrap();
        let sent = String::from_utf8(std::iter::from_fn(|| c.poll_transmit()).flatten().collect()).unwrap();
        assert!(!sent.contains("DATA") && sent.ends_with("QUIT\r\n"), "{sent}");
        assert!(matches!(&c.results()[0], Some(Err(f)) if !f.permanent));
        // Garbage and a broken connection.
        let mut c = LmtpClient::new("mx.test", "", &to, b"x");
        assert!(matches!(c.handle_input(b"hello\r\n"), Err(LmtpError::MalformedReply(_))));
        c.fail_remaining("closed");
        assert!(c.results().iter().all(|r| matches!(r, Some(Err(f)) if !f.permanent && f.reply.code == 451)));
    }

    #[test]
    fn dot_stuffing() {
        let mut out = Vec::new();
        dot_stuff(b".a\r\nb\r\n..c\r\n.\r\n", &mut out);
        assert_eq!(out, b"..a\r\nb\r\n...c\r\n..\r\n.\r\n");
        out.clear();
        dot_stuff(b"", &mut out);
        assert_eq!(out, b".\r\n");
    }
}
