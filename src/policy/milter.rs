//! Milter client: the Sendmail milter protocol (version 6, as Postfix speaks it), so that
//! rspamd, OpenDKIM, ClamAV's milter and the like judge and change mail as they do behind
//! Postfix (`[[milter]]`).
//!
//! # When
//!
//! As Postfix asks them, off the shards: at MAIL a [`Conversation`] opens (negotiation,
//! connect, HELO, MAIL: a refusal refuses the MAIL), at each RCPT our checks accepted the
//! recipient goes to it (a refusal refuses that recipient only), and at the end of the
//! content DATA, the header fields, end of headers, the body and end of message (the
//! message's verdict, with its changes). Between steps the conversation keeps its
//! connection and no thread waits; each step runs on one of the milter's worker threads.
//! The steps the milter asked to skip (`SMFIP_NO*`) and the replies it said it would not
//! send (`SMFIP_NR_*`) are honoured, with the macros Postfix sends (`j`, `{daemon_name}`,
//! `_`, `{client_addr}`, `{tls_version}`, `{cipher}`, `i`, `{auth_authen}`, `{mail_addr}`,
//! `{rcpt_addr}`). Milters run in order; at each step a verdict other than continue/accept
//! ends the chain. The session waits for the verdicts as it waits for a DNS answer. A
//! transaction that ends early (RSET, a new MAIL, a closed session) aborts its
//! conversations.
//!
//! # Verdicts and changes
//!
//! accept, continue: go on; reject: 550 5.7.1; tempfail: 451 4.7.1; reply code: the
//! milter's reply; discard: the message is accepted and dropped. At the end of the message a
//! milter may add, insert and change (or delete) header fields, replace the body, change
//! the sender, add and delete recipients, or quarantine the message: [`apply`] changes the
//! message before it is spooled, the session the envelope.
//!
//! # Failures
//!
//! A milter that cannot be reached, does not answer within its `timeout` or breaks the
//! protocol gives its `default_action`: `tempfail` (451 4.7.1) or `accept`.

use crate::wire::Reply;
use std::io::{Read as _, Write as _};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

const VERSION: u32 = 6;
// Actions we let a milter take (SMFIF_*).
const ACTIONS: u32 = 0x01 | 0x02 | 0x04 | 0x08 | 0x10 | 0x20 | 0x40 | 0x80;
// Protocol steps and replies a milter may ask us to leave out (SMFIP_*), all of them.
const PROTOCOL: u32 = 0x001F_FFFF;
const NOCONNECT: u32 = 0x1;
const NOHELO: u32 = 0x2;
const NOMAIL: u32 = 0x4;
const NORCPT: u32 = 0x8;
const NOBODY: u32 = 0x10;
const NOHDRS: u32 = 0x20;
const NOEOH: u32 = 0x40;
const NR_HDR: u32 = 0x80;
const NODATA: u32 = 0x200;
/// SMFIP_HDR_LEADSPC: header values travel with their leading white space, both ways.
const LEADSPC: u32 = 0x10_0000;
const NR_CONN: u32 = 0x1000;
const NR_HELO: u32 = 0x2000;
const NR_MAIL: u32 = 0x4000;
const NR_RCPT: u32 = 0x8000;
const NR_DATA: u32 = 0x10000;
const NR_EOH: u32 = 0x40000;
const NR_BODY: u32 = 0x80000;

/// Largest packet accepted from a milter (a replaced body comes in chunks).
const MAX_PACKET: usize = 1 << 20;
/// Body chunk size (the protocol's limit).
const CHUNK: usize = 65_535;

/// What the milter is told about the message and its session.
#[derive(Debug, Clone, Default)]
pub struct Request {
    pub hostname: String,
    pub client_ip: Option<IpAddr>,
    pub client_port: u16,
    pub client_name: String,
    pub helo: String,
    pub from: String,
    pub mail_args: Vec<String>,
    pub queue_id: String,
    pub auth: Option<String>,
    pub tls: Option<(String, String)>,
    /// The message as it will be stored (our Received header first).
    pub message: Vec<u8>,
}

/// A change a milter asked for at the end of the message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    AddHeader(String, String),
    /// At this position among the header fields (0: first).
    InsertHeader(usize, String, String),
    /// The `index`th (from 1) field of that name: a new value, or deleted when empty.
    ChangeHeader(usize, String, String),
    ReplaceBody(Vec<u8>),
    ChangeFrom(String),
    AddRcpt(String),
    DeleteRcpt(String),
    Quarantine(String),
}

/// Every milter's verdict together.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Go on, with these changes (none: nothing to change).
    Accept(Vec<Change>),
    /// Accept the message and drop it.
    Discard,
    /// Refuse the message with this reply.
    Refuse(Reply),
}

/// A milter's `default_action`: the same choice as a policy service's.
pub use super::delegation::DefaultAction;

/// `[[milter]]`, as the client needs it.
#[derive(Debug, Clone)]
pub struct MilterSettings {
    /// `HOST:PORT`, `inet:PORT@HOST`, or a Unix socket path (`unix:` optional).
    pub address: String,
    pub timeout: Duration,
    pub default_action: DefaultAction,
}

fn failure_reply() -> Reply {
    Reply::new(451, "4.7.1", "Service unavailable, try again later")
}

use super::service_stream::ServiceStream;

/// A connection to a milter: packets are gathered and written together when an answer is
/// awaited (steps without an answer, and macros, cost no system call of their own), and
/// read through a buffer.
struct Stream {
    r: std::io::BufReader<ServiceStream>,
    out: Vec<u8>,
}

impl Stream {
    fn connect(address: &str, timeout: Duration) -> std::io::Result<Stream> {
        let s = ServiceStream::connect(address, timeout)?;
        Ok(Stream { r: std::io::BufReader::with_capacity(16 * 1024, s), out: Vec::with_capacity(16 * 1024) })
    }

    fn flush_out(&mut self) -> std::io::Result<()> {
        if !self.out.is_empty() {
            self.r.get_mut().write_all(&self.out)?;
            self.out.clear();
        }
        Ok(())
    }
}

fn send(s: &mut Stream, cmd: u8, data: &[u8]) -> std::io::Result<()> {
    s.out.extend_from_slice(&(data.len() as u32 + 1).to_be_bytes());
    s.out.push(cmd);
    s.out.extend_from_slice(data);
    // A large body goes out in pieces.
    if s.out.len() >= 256 * 1024 { s.flush_out() } else { Ok(()) }
}

fn recv(s: &mut Stream, deadline: Instant) -> std::io::Result<(u8, Vec<u8>)> {
    if Instant::now() >= deadline {
        return Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer in time"));
    }
    s.flush_out()?;
    let s = &mut s.r;
    let mut len = [0u8; 4];
    s.read_exact(&mut len)?;
    let len = u32::from_be_bytes(len) as usize;
    if len == 0 || len > MAX_PACKET {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, format!("packet of {len} bytes")));
    }
    let mut p = vec![0u8; len];
    s.read_exact(&mut p)?;
    Ok((p[0], p.split_off(1)))
}

/// NUL-terminated strings of a packet.
fn strings(data: &[u8]) -> Vec<String> {
    data.split(|&b| b == 0).map(|s| String::from_utf8_lossy(s).into_owned()).collect()
}

fn cstr(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(s.as_bytes());
    out.push(0);
}

/// The milter's answer to a step that expects one.
enum Step {
    Continue,
    Accept,
    Done(Verdict),
    Skip,
}

/// Reads answers until a decisive one (progress packets keep the wait going).
fn answer(s: &mut Stream, deadline: Instant, changes: &mut Vec<Change>) -> std::io::Result<Step> {
    loop {
        let (cmd, data) = recv(s, deadline)?;
        let st = strings(&data);
        let idx = |d: &[u8]| d.get(..4).map_or(0, |b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize);
        match cmd {
            b'c' => return Ok(Step::Continue),
            b'a' => return Ok(Step::Accept),
            b's' => return Ok(Step::Skip),
            b'p' => continue,
            b'd' => return Ok(Step::Done(Verdict::Discard)),
            b'r' => return Ok(Step::Done(Verdict::Refuse(Reply::new(550, "5.7.1", "Command rejected")))),
            b't' => return Ok(Step::Done(Verdict::Refuse(failure_reply()))),
            b'y' => return Ok(Step::Done(Verdict::Refuse(reply_code(st.first().map_or("", |s| s.as_str()))))),
            b'h' => changes.push(Change::AddHeader(
                st.first().cloned().unwrap_or_default(),
                st.get(1).cloned().unwrap_or_default(),
            )),
            b'i' | b'm' => {
                let rest = strings(data.get(4..).unwrap_or(&[]));
                let (name, value) =
                    (rest.first().cloned().unwrap_or_default(), rest.get(1).cloned().unwrap_or_default());
                changes.push(if cmd == b'i' {
                    Change::InsertHeader(idx(&data), name, value)
                } else {
                    Change::ChangeHeader(idx(&data), name, value)
                });
            }
            b'b' => match changes.iter_mut().rev().find_map(|c| match c {
                Change::ReplaceBody(b) => Some(b),
                _ => None,
            }) {
                Some(b) => b.extend_from_slice(&data),
                None => changes.push(Change::ReplaceBody(data)),
            },
            b'e' => changes.push(Change::ChangeFrom(st.first().cloned().unwrap_or_default())),
            b'+' | b'2' => changes.push(Change::AddRcpt(st.first().cloned().unwrap_or_default())),
            b'-' => changes.push(Change::DeleteRcpt(st.first().cloned().unwrap_or_default())),
            b'q' => changes.push(Change::Quarantine(st.first().cloned().unwrap_or_default())),
            b'l' => {}
            other => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("unexpected milter reply {:?}", other as char),
                ));
            }
        }
    }
}

/// `550 5.7.1 text` as a milter writes it (a multi-line reply keeps its last line).
fn reply_code(s: &str) -> Reply {
    let line = s.lines().last().unwrap_or(s).trim();
    let parsed: Option<u16> = line.get(..3).and_then(|c| c.parse().ok()).filter(|c| (400..600).contains(c));
    let code = parsed.unwrap_or(550);
    // Without a code, the whole line is the text.
    let rest = if parsed.is_some() { line.get(4..).unwrap_or("").trim() } else { line };
    let class = if code >= 500 { '5' } else { '4' };
    let (status, text) = match rest.split_once(' ') {
        Some((st, t)) if st.starts_with(class) && st.split('.').count() == 3 => (st, t),
        _ => ("", rest),
    };
    // The enhanced status codes milters use (RFC 3463; the reply keeps a static one).
    const KNOWN: [&str; 22] = [
        "5.7.1", "5.7.0", "4.7.1", "4.7.0", "5.6.0", "4.3.0", "5.2.0", "4.2.0", "5.1.1", "5.1.0", "5.1.8", "5.2.1",
        "5.2.2", "5.3.4", "5.7.23", "5.7.25", "5.7.26", "4.2.1", "4.2.2", "4.7.25", "5.5.0", "4.4.0",
    ];
    let status = KNOWN.iter().find(|k| **k == status).copied().unwrap_or(if class == '5' { "5.7.1" } else { "4.7.1" });
    Reply::new(code, status, if text.is_empty() { "Rejected" } else { text }.to_string())
}

/// The header fields of `msg` (name, and the value as written after the colon: its leading
/// white space and folding kept, CRLF as LF) and where the body starts.
pub fn split_message(msg: &[u8]) -> (Vec<(String, String)>, usize) {
    let mut fields: Vec<(String, String)> = Vec::new();
    let mut pos = 0;
    while pos < msg.len() {
        let end = msg[pos..].iter().position(|&b| b == b'\n').map_or(msg.len(), |i| pos + i + 1);
        let line = &msg[pos..end];
        let text = line.strip_suffix(b"\n").unwrap_or(line);
        let text = text.strip_suffix(b"\r").unwrap_or(text);
        if text.is_empty() {
            return (fields, end);
        }
        if (text[0] == b' ' || text[0] == b'\t') && !fields.is_empty() {
            let v = &mut fields.last_mut().expect("checked").1;
            v.push('\n');
            v.push_str(&String::from_utf8_lossy(text));
        } else if let Some(colon) = text.iter().position(|&b| b == b':') {
            let name = String::from_utf8_lossy(&text[..colon]).into_owned();
            let value = String::from_utf8_lossy(&text[colon + 1..]);
            fields.push((name, value.into_owned()));
        } else {
            // Not a header field: the body starts here.
            return (fields, pos);
        }
        pos = end;
    }
    (fields, msg.len())
}

/// The message with `changes` applied (headers and body); sender and recipient changes
/// are the caller's.
pub fn apply(msg: &[u8], changes: &[Change]) -> Vec<u8> {
    let (mut fields, body_at) = split_message(msg);
    let mut body = msg[body_at..].to_vec();
    let had_separator = body_at > 0 && msg[..body_at].ends_with(b"\n") && {
        let h = &msg[..body_at];
        h.ends_with(b"\r\n\r\n") || h.ends_with(b"\n\n")
    };
    for c in changes {
        match c {
            Change::AddHeader(n, v) => fields.push((n.clone(), v.clone())),
            Change::InsertHeader(i, n, v) => fields.insert((*i).min(fields.len()), (n.clone(), v.clone())),
            Change::ChangeHeader(i, n, v) => {
                let at = fields
                    .iter()
                    .enumerate()
                    .filter(|(_, f)| f.0.eq_ignore_ascii_case(n))
                    .nth(i.saturating_sub(1))
                    .map(|(k, _)| k);
                match (at, v.is_empty()) {
                    (Some(k), true) => {
                        fields.remove(k);
                    }
                    (Some(k), false) => fields[k].1 = v.clone(),
                    (None, false) => fields.push((n.clone(), v.clone())),
                    (None, true) => {}
                }
            }
            Change::ReplaceBody(b) => body = b.clone(),
            _ => {}
        }
    }
    let mut out = Vec::with_capacity(msg.len() + 256);
    for (n, v) in &fields {
        out.extend_from_slice(n.as_bytes());
        out.push(b':');
        // Folded lines come back with CRLF.
        out.extend_from_slice(v.replace("\r\n", "\n").replace('\n', "\r\n").as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if had_separator || !body.is_empty() {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(&body);
    out
}

/// A milter's answer to a step before the content (connect, HELO, MAIL, RCPT).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StepVerdict {
    /// Go on (or the milter accepted the message: it is asked nothing more).
    Continue,
    /// Refuse the command with this reply: at MAIL the transaction, at RCPT this recipient.
    Refuse(Reply),
    /// Accept the message and drop it.
    Discard,
}

/// One milter's conversation about one transaction, opened at MAIL and kept (with its
/// connection) between the steps; no thread waits on it in between. Dropped before its end
/// (RSET, a refused MAIL, a closed session), it tells the milter to abort and quit.
pub struct Conversation {
    c: Stream,
    /// The steps and replies the milter left out (`SMFIP_*`).
    proto: u32,
    timeout: Duration,
    changes: Vec<Change>,
    /// The milter accepted the message: nothing more is sent but the quit.
    accepted: bool,
    /// The conversation reached its end (the quit is sent).
    finished: bool,
}

impl std::fmt::Debug for Conversation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conversation").field("accepted", &self.accepted).finish_non_exhaustive()
    }
}

impl Drop for Conversation {
    fn drop(&mut self) {
        if !self.finished {
            // SMFIC_ABORT and SMFIC_QUIT, without waiting: a milter also takes the end of the
            // connection as an abort.
            let _ = self.c.r.get_mut().set_nonblocking(true);
            let _ = send(&mut self.c, b'A', &[])
                .and_then(|_| send(&mut self.c, b'Q', &[]))
                .and_then(|_| self.c.flush_out());
        }
    }
}

impl Conversation {
    fn macros(&mut self, step: u8, pairs: &[(&str, String)]) -> std::io::Result<()> {
        let mut d = vec![step];
        for (k, v) in pairs {
            cstr(&mut d, k);
            cstr(&mut d, v);
        }
        send(&mut self.c, b'D', &d)
    }

    /// Sends a step unless the milter asked to skip it, and waits for its answer unless it
    /// said it would not give one; `Some` when the answer decides.
    fn step(&mut self, no: u32, nr: u32, cmd: u8, data: &[u8]) -> std::io::Result<Option<Verdict>> {
        if self.accepted || self.proto & no != 0 {
            return Ok(None);
        }
        send(&mut self.c, cmd, data)?;
        if self.proto & nr != 0 {
            return Ok(None);
        }
        let deadline = Instant::now() + self.timeout;
        match answer(&mut self.c, deadline, &mut self.changes)? {
            Step::Continue | Step::Skip => Ok(None),
            Step::Accept => {
                self.accepted = true;
                Ok(None)
            }
            Step::Done(v) => Ok(Some(v)),
        }
    }

    fn to_step(v: Option<Verdict>) -> StepVerdict {
        match v {
            None | Some(Verdict::Accept(_)) => StepVerdict::Continue,
            Some(Verdict::Discard) => StepVerdict::Discard,
            Some(Verdict::Refuse(r)) => StepVerdict::Refuse(r),
        }
    }

    /// Opens the conversation at MAIL: option negotiation, the connection, HELO and MAIL
    /// with Postfix's macros. A refusal of the connection or HELO refuses the MAIL.
    pub fn open(s: &MilterSettings, req: &Request) -> std::io::Result<(Conversation, StepVerdict)> {
        let deadline = Instant::now() + s.timeout;
        let c = Stream::connect(&s.address, s.timeout)?;
        let mut conv =
            Conversation { c, proto: 0, timeout: s.timeout, changes: Vec::new(), accepted: false, finished: false };
        let mut neg = Vec::with_capacity(12);
        neg.extend_from_slice(&VERSION.to_be_bytes());
        neg.extend_from_slice(&ACTIONS.to_be_bytes());
        neg.extend_from_slice(&PROTOCOL.to_be_bytes());
        send(&mut conv.c, b'O', &neg)?;
        let (cmd, data) = recv(&mut conv.c, deadline)?;
        if cmd != b'O' || data.len() < 12 {
            return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "no option negotiation"));
        }
        conv.proto = u32::from_be_bytes([data[8], data[9], data[10], data[11]]);
        let ip = req.client_ip.map(|i| i.to_string()).unwrap_or_default();
        conv.macros(
            b'C',
            &[
                ("j", req.hostname.clone()),
                ("{daemon_name}", "ringmx".into()),
                ("_", format!("{} [{ip}]", req.client_name)),
                ("{client_addr}", ip.clone()),
            ],
        )?;
        let mut conn = Vec::new();
        cstr(&mut conn, &req.client_name);
        match req.client_ip {
            Some(IpAddr::V4(_)) => conn.push(b'4'),
            Some(IpAddr::V6(_)) => conn.push(b'6'),
            None => conn.push(b'U'),
        }
        conn.extend_from_slice(&req.client_port.to_be_bytes());
        cstr(&mut conn, &ip);
        if let Some(v) = conv.step(NOCONNECT, NR_CONN, b'C', &conn)? {
            return Ok((conv, Conversation::to_step(Some(v))));
        }
        let (tv, ci) = req.tls.clone().unwrap_or_default();
        conv.macros(b'H', &[("{tls_version}", tv), ("{cipher}", ci)])?;
        let mut helo = Vec::new();
        cstr(&mut helo, &req.helo);
        if let Some(v) = conv.step(NOHELO, NR_HELO, b'H', &helo)? {
            return Ok((conv, Conversation::to_step(Some(v))));
        }
        conv.macros(
            b'M',
            &[
                ("i", req.queue_id.clone()),
                ("{auth_authen}", req.auth.clone().unwrap_or_default()),
                ("{mail_addr}", req.from.clone()),
            ],
        )?;
        let mut mail = Vec::new();
        cstr(&mut mail, &format!("<{}>", req.from));
        for a in &req.mail_args {
            cstr(&mut mail, a);
        }
        let v = conv.step(NOMAIL, NR_MAIL, b'M', &mail)?;
        Ok((conv, Conversation::to_step(v)))
    }

    /// A recipient our checks accepted: the milter's verdict on it.
    pub fn rcpt(&mut self, address: &str) -> std::io::Result<StepVerdict> {
        self.macros(b'R', &[("{rcpt_addr}", address.to_string())])?;
        let mut rcpt = Vec::new();
        cstr(&mut rcpt, &format!("<{address}>"));
        let v = self.step(NORCPT, NR_RCPT, b'R', &rcpt)?;
        Ok(Conversation::to_step(v))
    }

    /// The content: DATA, the header fields, end of headers, the body, end of message; the
    /// verdict with the changes asked for. The conversation ends (quit).
    pub fn content(&mut self, req: &Request) -> std::io::Result<Verdict> {
        let v = self.content_steps(req);
        self.finished = true;
        let _ = send(&mut self.c, b'Q', &[]).and_then(|_| self.c.flush_out());
        v
    }

    fn content_steps(&mut self, req: &Request) -> std::io::Result<Verdict> {
        if self.accepted {
            return Ok(Verdict::Accept(Vec::new()));
        }
        if let Some(v) = self.step(NODATA, NR_DATA, b'T', &[])? {
            return Ok(v);
        }
        let (fields, body_at) = split_message(&req.message);
        let leadspc = self.proto & LEADSPC != 0;
        for (n, v) in &fields {
            let mut h = Vec::new();
            cstr(&mut h, n);
            // Without SMFIP_HDR_LEADSPC, the value without the space after the colon, as
            // Postfix sends it.
            cstr(&mut h, if leadspc { v } else { v.strip_prefix(' ').unwrap_or(v) });
            if let Some(v) = self.step(NOHDRS, NR_HDR, b'L', &h)? {
                return Ok(v);
            }
        }
        if let Some(v) = self.step(NOEOH, NR_EOH, b'N', &[])? {
            return Ok(v);
        }
        if self.proto & NOBODY == 0 && !self.accepted {
            let deadline = Instant::now() + self.timeout;
            for chunk in req.message[body_at..].chunks(CHUNK) {
                send(&mut self.c, b'B', chunk)?;
                if self.proto & NR_BODY == 0 {
                    match answer(&mut self.c, deadline, &mut self.changes)? {
                        Step::Continue => {}
                        Step::Skip => break,
                        Step::Accept => return Ok(Verdict::Accept(Vec::new())),
                        Step::Done(v) => return Ok(v),
                    }
                }
            }
        }
        if self.accepted {
            return Ok(Verdict::Accept(Vec::new()));
        }
        self.macros(b'E', &[("i", req.queue_id.clone())])?;
        send(&mut self.c, b'E', &[])?;
        // Header values as they go after `name:` in the message: exactly as the milter wrote
        // them with SMFIP_HDR_LEADSPC (OpenDKIM asks for it: its DKIM-Signature covers those
        // bytes), else after a space, as Postfix writes them.
        let deadline = Instant::now() + self.timeout;
        match answer(&mut self.c, deadline, &mut self.changes)? {
            Step::Continue | Step::Accept | Step::Skip => {
                let mut changes = std::mem::take(&mut self.changes);
                for ch in &mut changes {
                    match ch {
                        Change::AddHeader(_, v) | Change::InsertHeader(_, _, v) | Change::ChangeHeader(_, _, v)
                            if !leadspc && !v.is_empty() =>
                        {
                            v.insert(0, ' ')
                        }
                        _ => {}
                    }
                }
                Ok(Verdict::Accept(changes))
            }
            Step::Done(v) => Ok(v),
        }
    }
}

/// What a failed conversation gives: the milter's `default_action`.
pub fn default_verdict(s: &MilterSettings) -> Verdict {
    match s.default_action {
        DefaultAction::Tempfail => Verdict::Refuse(failure_reply()),
        DefaultAction::Accept => Verdict::Accept(Vec::new()),
    }
}

/// The same for a step before the content.
pub fn default_step(s: &MilterSettings) -> StepVerdict {
    match s.default_action {
        DefaultAction::Tempfail => StepVerdict::Refuse(failure_reply()),
        DefaultAction::Accept => StepVerdict::Continue,
    }
}

type Job = Box<dyn FnOnce() + Send>;

/// A milter: its worker threads, which run the steps of conversations (each blocking on the
/// milter's socket for at most its `timeout`).
pub struct Milter {
    pub settings: MilterSettings,
    tx: Mutex<mpsc::Sender<Job>>,
}

impl std::fmt::Debug for Milter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Milter").field("address", &self.settings.address).finish_non_exhaustive()
    }
}

impl Milter {
    pub fn start(settings: MilterSettings, threads: usize) -> std::io::Result<Milter> {
        let (tx, rx) = mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..threads.max(1) {
            let rx = rx.clone();
            std::thread::Builder::new().name(format!("milter-{i}")).spawn(move || {
                loop {
                    let job = rx.lock().unwrap_or_else(|e| e.into_inner()).recv();
                    let Ok(job) = job else { return };
                    job();
                }
            })?;
        }
        Ok(Milter { settings, tx: Mutex::new(tx) })
    }

    fn run(&self, job: Job) {
        let sent = self.tx.lock().unwrap_or_else(|e| e.into_inner()).send(job);
        if let Err(mpsc::SendError(job)) = sent {
            // The workers are gone (the server is stopping): run it here.
            job();
        }
    }

    /// MAIL: opens a conversation; `done` gets it (none when the milter could not be
    /// reached: then the default action's verdict) and the verdict.
    pub fn open(self: &Arc<Self>, req: Arc<Request>, done: Box<dyn FnOnce(Option<Conversation>, StepVerdict) + Send>) {
        let m = self.clone();
        self.run(Box::new(move || match Conversation::open(&m.settings, &req) {
            Ok((c, v)) => done(Some(c), v),
            Err(e) => {
                log::warn!("milter {}: {e}: default action", m.settings.address);
                done(None, default_step(&m.settings))
            }
        }));
    }

    /// RCPT: a recipient's verdict; the conversation comes back unless it failed.
    pub fn rcpt(
        self: &Arc<Self>,
        mut c: Conversation,
        address: String,
        done: Box<dyn FnOnce(Option<Conversation>, StepVerdict) + Send>,
    ) {
        let m = self.clone();
        self.run(Box::new(move || match c.rcpt(&address) {
            Ok(v) => done(Some(c), v),
            Err(e) => {
                log::warn!("milter {}: {e}: default action", m.settings.address);
                done(None, default_step(&m.settings))
            }
        }));
    }

    /// The end of the content: the message's verdict; the conversation ends.
    pub fn content(self: &Arc<Self>, mut c: Conversation, req: Arc<Request>, done: Box<dyn FnOnce(Verdict) + Send>) {
        let m = self.clone();
        self.run(Box::new(move || {
            let v = c.content(&req).unwrap_or_else(|e| {
                log::warn!("milter {}: {e}: default action", m.settings.address);
                default_verdict(&m.settings)
            });
            drop(c);
            done(v)
        }));
    }

    /// Ends conversations that will not reach their end (RSET, a closed session) off the
    /// caller's thread.
    pub fn abort(&self, c: Conversation) {
        self.run(Box::new(move || drop(c)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_fields_with_folding_and_the_body() {
        let m = b"Received: from a\r\n\tby b\r\nSubject: hi\r\n\r\nbody\r\n";
        let (f, at) = split_message(m);
        assert_eq!(f, [("Received".to_string(), " from a\n\tby b".to_string()), ("Subject".into(), " hi".into())]);
        assert_eq!(&m[at..], b"body\r\n");
    }

    #[test]
    fn changes_on_headers_and_body() {
        let m = b"Received: x\r\nSubject: a\r\nX-Spam: old\r\nX-Spam: older\r\n\r\nbody\r\n";
        let out = apply(
            m,
            &[
                // Values as the conversation leaves them: what goes after the colon.
                Change::AddHeader("X-Added".into(), " 1".into()),
                Change::InsertHeader(0, "DKIM-Signature".into(), " v=1;\n\tb=xyz".into()),
                Change::ChangeHeader(2, "x-spam".into(), String::new()),
                Change::ChangeHeader(1, "Subject".into(), "\tb".into()),
                Change::ReplaceBody(b"new body\r\n".to_vec()),
            ],
        );
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "DKIM-Signature: v=1;\r\n\tb=xyz\r\nReceived: x\r\nSubject:\tb\r\nX-Spam: old\r\nX-Added: 1\r\n\r\nnew body\r\n"
        );
    }

    #[test]
    fn reply_codes_as_milters_write_them() {
        assert_eq!(reply_code("554 5.7.1 Gtube pattern"), Reply::new(554, "5.7.1", "Gtube pattern"));
        assert_eq!(reply_code("451 4.7.1 Try again later"), Reply::new(451, "4.7.1", "Try again later"));
        assert_eq!(reply_code("550 no"), Reply::new(550, "5.7.1", "no"));
        assert_eq!(reply_code("550 5.1.1 No such user"), Reply::new(550, "5.1.1", "No such user"));
        assert_eq!(reply_code("550 5.9.9 odd"), Reply::new(550, "5.7.1", "odd"), "an unknown status");
        assert_eq!(reply_code("garbage"), Reply::new(550, "5.7.1", "garbage"));
        assert_eq!(reply_code(""), Reply::new(550, "5.7.1", "Rejected"));
    }
}
