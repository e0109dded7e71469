//! The SMTP wire format: commands in, replies out, message content framing.
//!
//! # Layout
//!
//! - [`command`]: the zero-copy command parser. A [`Command`] borrows the line it was parsed
//!   from; nothing is allocated per command.
//! - [`reply`]: the reply encoder (RFC 5321 §4.2, enhanced status codes of RFC 3463).
//! - [`data`]: [`DataScanner`], which finds the end of a DATA body (`CRLF.CRLF`), removes
//!   dot-stuffing and refuses bare CR or LF (SMTP smuggling), resumable across reads.
//! - [`line`]: finding command lines in a read buffer.
//! - [`proxy`]: the PROXY protocol v1/v2 header a load balancer sends first.
//!
//! Nothing here does I/O, reads a clock or allocates on the common path.

pub mod command;
pub mod data;
pub mod line;
pub mod proxy;
pub mod reply;

pub use command::{Body, Command, CommandError, MailParams, Mailbox, Notify, Path, RcptParams, Ret, parse_command};
pub use data::{BareLinePolicy, DataProgress, DataScanner, DataStatus};
pub use line::{LineError, next_line};
pub use proxy::{ProxyError, ProxyHeader};
pub use reply::{Reply, write_reply, write_reply_lines};
