//! Delivery: messages out of the queue, to a mailbox here or to another SMTP server.
//!
//! # Layout
//!
//! - [`client`]: the sans-IO SMTP client (EHLO/HELO, PIPELINING, SIZE, 8BITMIME,
//!   SMTPUTF8, STARTTLS, AUTH, per-recipient results, RFC 5321 time-outs); its errors say
//!   whether they are permanent and whether they concern a recipient, the message or the
//!   connection.
//!
//! Errors say whether they are permanent (bounce) or transient (retry).

pub mod client;
