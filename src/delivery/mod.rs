//! Delivery: messages out of the queue, to a mailbox here or to another SMTP server.
//!
//! # Layout
//!
//! - [`maildir`]: delivery into a Maildir (unique names, `tmp/` → `new/` with fsyncs) with
//!   Maildir++ quota accounting in `maildirsize`, as Dovecot and Courier keep it, and
//!   [`maildir::UsageCache`], the in-memory usage the RCPT check reads.
//! - [`autoreply`]: automatic replies (RFC 3834): who gets one, what it says, once per
//!   sender per period.
//! - [`lmtp`]: an LMTP client (RFC 2033): a sans-IO state machine with one result per
//!   recipient, and a small blocking driver over TCP or a Unix socket.
//! - [`client`]: the sans-IO SMTP client (EHLO/HELO, PIPELINING, SIZE, 8BITMIME,
//!   SMTPUTF8, STARTTLS, AUTH, per-recipient results, RFC 5321 time-outs); its errors say
//!   whether they are permanent and whether they concern a recipient, the message or the
//!   connection.
//! - [`dsn`]: delivery status notifications (RFC 3464 multipart/report), pure.
//! - [`mx`]: routing (smart host or MX, pure) and the MX plan (RFC 5321 §5.1, null MX
//!   RFC 7505, A/AAAA fallback) over hickory-resolver.
//! - [`remote`]: the driver: the client over TCP and rustls on tokio, a connection pool
//!   with idle time-out, per-destination and global concurrency limits.
//!
//! Errors say whether they are permanent (bounce) or transient (retry).

pub mod autoreply;
pub mod client;
pub mod dsn;
pub mod event;
pub mod lmtp;
pub mod maildir;
pub mod mx;
pub mod remote;
