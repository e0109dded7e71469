//! Delivery status notifications (RFC 3464, with the DSN extension of RFC 3461).
//!
//! [`build`] turns a message's envelope, its content and per-recipient outcomes into a
//! `multipart/report; report-type=delivery-status` message (RFC 6522) from `<>` to the
//! original sender, or into nothing: never for a null sender (RFC 5321 §6.1, §4.5.5), and
//! only for recipients whose `NOTIFY` asks for this kind of notice (RFC 3461 §4.1; without
//! NOTIFY: failures and delays). It is pure: time, boundary and Message-ID come in as
//! arguments, so the output is compared byte for byte with golden files.
//!
//! The three parts: a human-readable explanation; the `message/delivery-status` fields
//! (per message: Reporting-MTA, Original-Envelope-Id, Arrival-Date; per recipient:
//! Original-Recipient, Final-Recipient, Action, Status, Remote-MTA, Diagnostic-Code,
//! Last-Attempt-Date, Will-Retry-Until); the original message (`RET=FULL`) or only its
//! header (`RET=HDRS`). Without RET, failures return the whole message (up to
//! [`DsnConfig::return_limit`]) and other notices the header only.

use crate::spool::Envelope;
use crate::util::time::rfc5322;
use crate::wire::{Notify, Ret};
use serde::Deserialize;

/// What happened to a recipient (RFC 3464 §2.3.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Failed,
    Delayed,
    Delivered,
    /// Passed on to a system that does not send DSNs.
    Relayed,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Failed => "failed",
            Action::Delayed => "delayed",
            Action::Delivered => "delivered",
            Action::Relayed => "relayed",
        }
    }
}

/// Whether a recipient with this `NOTIFY` wants a notice about `action`: without NOTIFY,
/// failures and delays (RFC 3461 §4.1 leaves the default to the MTA; this is the common
/// one); `NEVER` never.
pub fn wants_notice(notify: Option<Notify>, action: Action) -> bool {
    let n = notify.unwrap_or(Notify { failure: true, delay: true, ..Default::default() });
    if n.never {
        return false;
    }
    match action {
        Action::Failed => n.failure,
        Action::Delayed => n.delay,
        Action::Delivered | Action::Relayed => n.success,
    }
}

/// One recipient's line in a report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecipientReport {
    /// Index into the envelope's recipients (for the address, NOTIFY and ORCPT).
    pub rcpt: usize,
    pub action: Action,
    /// RFC 3463 status code, e.g. `"5.1.1"`.
    pub status: String,
    /// The host that gave the reply (`Remote-MTA: dns; host`).
    pub remote_mta: Option<String>,
    /// The reply itself (`Diagnostic-Code: smtp; 550 5.1.1 …`), or our own words for a
    /// failure without one (`Diagnostic-Code: X-ringmx; connection refused`).
    pub diagnostic: Option<String>,
    /// Unix ms of the last attempt.
    pub last_attempt_ms: Option<u64>,
    /// Unix ms until which delivery is retried (delayed notices).
    pub will_retry_until_ms: Option<u64>,
}

/// `[delivery.dsn]`: non-delivery reports.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DsnConfig {
    /// Send non-delivery reports on permanent failure. Default true.
    #[serde(default = "yes")]
    pub bounces: bool,
    /// Largest original message returned whole; a bigger one comes back as its header
    /// only. Default 1048576 (1 MiB).
    #[serde(default = "default_return_limit")]
    pub return_limit: usize,
    /// The From of reports (SPEC §6, the sender address of notifications). Default
    /// `MAILER-DAEMON@<host name>`.
    #[serde(default)]
    pub sender: Option<String>,
}

fn yes() -> bool {
    true
}
fn default_return_limit() -> usize {
    1 << 20
}

impl Default for DsnConfig {
    fn default() -> Self {
        DsnConfig { bounces: true, return_limit: default_return_limit(), sender: None }
    }
}

/// Everything a report is made of; `now_ms`, `boundary` and `message_id` are inputs so
/// that the output is reproducible.
#[derive(Debug, Clone)]
pub struct DsnInput<'a> {
    /// Our host name (`Reporting-MTA`, the From address's domain).
    pub reporting_mta: &'a str,
    pub envelope: &'a Envelope,
    /// The original message as spooled.
    pub content: &'a [u8],
    pub reports: &'a [RecipientReport],
    pub now_ms: u64,
    pub boundary: &'a str,
    /// Without angle brackets.
    pub message_id: &'a str,
    pub config: DsnConfig,
}

/// A notification ready for the spool: envelope sender `<>`, one recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dsn {
    /// The original sender.
    pub to: String,
    /// The whole message, CRLF line endings.
    pub content: Vec<u8>,
}

/// The report, or `None` when nobody is to be told (null sender, NOTIFY, bounces off).
pub fn build(input: &DsnInput<'_>) -> Option<Dsn> {
    let env = input.envelope;
    if env.from.is_empty() {
        return None;
    }
    let reports: Vec<&RecipientReport> = input
        .reports
        .iter()
        .filter(|r| {
            let notify = env.rcpts.get(r.rcpt).and_then(|x| x.notify);
            wants_notice(notify, r.action) && (r.action != Action::Failed || input.config.bounces)
        })
        .collect();
    if reports.is_empty() {
        return None;
    }
    let failed = reports.iter().any(|r| r.action == Action::Failed);
    let delayed = reports.iter().any(|r| r.action == Action::Delayed);
    let subject = if failed {
        "Undelivered Mail Returned to Sender"
    } else if delayed {
        "Delayed Mail (still being retried)"
    } else {
        "Successful Mail Delivery Report"
    };
    let utf8 = env.smtputf8 || !env.from.is_ascii() || env.rcpts.iter().any(|r| !r.address.is_ascii());
    let b = input.boundary;
    let mut m = String::with_capacity(4096);
    let mta = input.reporting_mta;
    match &input.config.sender {
        Some(s) => m += &format!("From: Mail Delivery System <{}>\r\n", s.replace(['\r', '\n', '<', '>'], "")),
        None => m += &format!("From: Mail Delivery System <MAILER-DAEMON@{mta}>\r\n"),
    }
    m += &format!("To: <{}>\r\n", env.from);
    m += &format!("Subject: {subject}\r\n");
    m += &format!("Date: {}\r\n", rfc5322(input.now_ms / 1000));
    m += &format!("Message-ID: <{}>\r\n", input.message_id);
    m += "Auto-Submitted: auto-replied\r\n";
    m += "MIME-Version: 1.0\r\n";
    m += &format!("Content-Type: multipart/report; report-type=delivery-status;\r\n\tboundary=\"{b}\"\r\n");
    m += "\r\nThis is a MIME-encapsulated message.\r\n\r\n";

    // 1. For people.
    m += &format!("--{b}\r\n");
    m += "Content-Type: text/plain; charset=utf-8\r\n";
    m += "Content-Description: Notification\r\n";
    m += &format!("Content-Transfer-Encoding: {}\r\n\r\n", if utf8 { "8bit" } else { "7bit" });
    m += &format!("This is the mail system at {mta}.\r\n\r\n");
    if failed {
        m += "Your message could not be delivered to one or more recipients.\r\n";
        m += "It is attached below.\r\n";
    } else if delayed {
        m += "Your message has not been delivered to one or more recipients yet.\r\n";
        m += "Delivery will be tried again; you do not need to send it again.\r\n";
    } else if reports.iter().all(|r| r.action == Action::Relayed) {
        // RFC 3461 §5.2.2: passed to a system that will not report further.
        m += "Your message was passed on to the recipients' mail systems below, which\r\n";
        m += "do not send delivery notifications: this is the last report you will get.\r\n";
    } else {
        m += "Your message was delivered to the recipients below.\r\n";
    }
    for r in &reports {
        let addr = env.rcpts.get(r.rcpt).map_or("", |x| x.address.as_str());
        m += &format!("\r\n<{addr}>: {}", r.action.as_str());
        match (&r.diagnostic, &r.remote_mta) {
            (Some(d), Some(h)) => m += &format!(", {h} said:\r\n    {}\r\n", clip(d)),
            (Some(d), None) => m += &format!(":\r\n    {}\r\n", clip(d)),
            _ => m += &format!(" ({})\r\n", r.status),
        }
        if let Some(t) = r.will_retry_until_ms {
            m += &format!("    Retrying until {}.\r\n", rfc5322(t / 1000));
        }
    }
    m += "\r\n";

    // 2. For machines.
    m += &format!("--{b}\r\n");
    m += &format!("Content-Type: message/{}delivery-status\r\n", if utf8 { "global-" } else { "" });
    m += "Content-Description: Delivery report\r\n\r\n";
    m += &format!("Reporting-MTA: dns; {mta}\r\n");
    if let Some(envid) = &env.envid {
        m += &format!("Original-Envelope-Id: {}\r\n", clip(&xtext_decode(envid)));
    }
    m += &format!("Arrival-Date: {}\r\n", rfc5322(env.received_ms / 1000));
    for r in &reports {
        let rcpt = env.rcpts.get(r.rcpt);
        m += "\r\n";
        if let Some((kind, addr)) = rcpt.and_then(|x| x.orcpt.as_deref()).and_then(|o| o.split_once(';')) {
            let value = format!("{}; {}", kind.trim(), xtext_decode(addr.trim()));
            m += &format!("Original-Recipient: {}\r\n", clip(&value));
        }
        let addr = rcpt.map_or("", |x| x.address.as_str());
        m += &format!("Final-Recipient: {}; {addr}\r\n", if addr.is_ascii() { "rfc822" } else { "utf-8" });
        m += &format!("Action: {}\r\n", r.action.as_str());
        m += &format!("Status: {}\r\n", r.status);
        if let Some(h) = &r.remote_mta {
            m += &format!("Remote-MTA: dns; {h}\r\n");
        }
        if let Some(d) = &r.diagnostic {
            // An SMTP reply is of type smtp (RFC 3464 §2.3.6); our own words are not.
            let kind = if super::client::Response::parse(d).is_some() { "smtp" } else { "X-ringmx" };
            m += &format!("Diagnostic-Code: {kind}; {}\r\n", clip(d));
        }
        if let Some(t) = r.last_attempt_ms {
            m += &format!("Last-Attempt-Date: {}\r\n", rfc5322(t / 1000));
        }
        if let Some(t) = r.will_retry_until_ms {
            m += &format!("Will-Retry-Until: {}\r\n", rfc5322(t / 1000));
        }
    }
    m += "\r\n";

    // 3. The original, whole or its header.
    let full = match env.ret {
        Some(Ret::Full) => true,
        Some(Ret::Hdrs) => false,
        None => failed,
    } && input.content.len() <= input.config.return_limit;
    let mut out = m.into_bytes();
    let push = |out: &mut Vec<u8>, s: &str| out.extend_from_slice(s.as_bytes());
    push(&mut out, &format!("--{b}\r\n"));
    let original: &[u8] = if full { input.content } else { header_of(input.content) };
    let eight = !original.is_ascii();
    if full {
        push(&mut out, &format!("Content-Type: message/{}\r\n", if env.smtputf8 { "global" } else { "rfc822" }));
        push(&mut out, "Content-Description: Undelivered Message\r\n");
    } else {
        let t = if env.smtputf8 { "message/global-headers" } else { "text/rfc822-headers" };
        push(&mut out, &format!("Content-Type: {t}\r\n"));
        push(&mut out, "Content-Description: Message Headers\r\n");
    }
    if eight {
        push(&mut out, "Content-Transfer-Encoding: 8bit\r\n");
    }
    push(&mut out, "\r\n");
    out.extend_from_slice(original);
    if !original.ends_with(b"\r\n") {
        push(&mut out, "\r\n");
    }
    push(&mut out, &format!("\r\n--{b}--\r\n"));
    Some(Dsn { to: env.from.clone(), content: out })
}

/// The header section of a message, with its final CRLF but not the empty line.
fn header_of(content: &[u8]) -> &[u8] {
    match memchr::memmem::find(content, b"\r\n\r\n") {
        Some(i) => &content[..i + 2],
        None => content,
    }
}

/// A value from outside (a remote reply, a client's ENVID or ORCPT, whose xtext can encode
/// any byte) on one line of bounded length: control characters become spaces, so that it
/// can neither end its field nor start another (RFC 3461 §4.4 wants printable ASCII there).
fn clip(s: &str) -> String {
    let one: String = s.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    match one.char_indices().nth(900) {
        Some((i, _)) => format!("{}...", &one[..i]),
        None => one,
    }
}

/// Decodes xtext (RFC 3461 §4): `+XX` is the byte with hex value XX.
pub fn xtext_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'+'
            && i + 2 < b.len()
            && let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2]))
        {
            out.push(h << 4 | l);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'A'..=b'F' => Some(c - b'A' + 10),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    }
}

#[cfg(test)]
#[path = "dsn_tests.rs"]
mod tests;
