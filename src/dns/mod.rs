//! DNS: the questions sessions ask (DNSBL, PTR, sender domains) and delivery asks (MX,
//! addresses), and the one service that answers them, off the shards, with one cache.
//!
//! hickory-resolver needs a tokio reactor, which an io_uring shard does not run. The
//! [`service::DnsService`] is a thread with a current-thread tokio runtime; shards submit a
//! [`DnsQuery`] with a callback and get a [`DnsAnswer`] back through it (the runtime turns the
//! callback into a message to the shard). Answers are cached with their TTL bounded, and
//! negative answers are cached too.
//!
//! # Layout
//!
//! - `mod.rs`: [`DnsQuery`], [`DnsAnswer`], plain data the sans-IO session emits and takes.
//! - [`service`]: the resolver thread and its cache.

pub mod service;

pub use service::{Dns, DnsService, DnsSettings};

use std::net::{IpAddr, SocketAddr};

/// A question a session needs answered before it can go on.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum DnsQuery {
    /// DNSBL (RFC 5782): A records of `name` (the reversed client address under the zone),
    /// asked of `server` when one is given.
    Dnsbl { name: String, server: Option<SocketAddr> },
    /// The PTR records of a client address.
    Ptr(IpAddr),
    /// Can mail be sent back to this domain: MX, else A or AAAA (RFC 5321 §5.1)?
    MailDomain(String),
    /// Delivery: the MX records of a domain, each found as `PREFERENCE EXCHANGE` (the
    /// record's presentation form, RFC 1035 §5.1; a null MX, RFC 7505, is `0 .`).
    Mx(String),
    /// Delivery: a host's A and AAAA records.
    Addrs(String),
    /// The TXT records of a name, each record's strings joined (RFC 7208 §3.3 and RFC 7489
    /// §6.6.3 read them so): a list's question for its poster's DMARC policy.
    Txt(String),
}

/// The answer to a [`DnsQuery`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DnsAnswer {
    /// Records exist (their text: addresses, names).
    Found(Vec<String>),
    /// The name does not exist or has no such records (for [`DnsQuery::Mx`] and
    /// [`DnsQuery::Addrs`]: has no such records).
    NotFound,
    /// [`DnsQuery::Mx`] and [`DnsQuery::Addrs`]: the name does not exist (NXDOMAIN).
    NoSuchName,
    /// Time-out or server failure: the question could not be answered now.
    TempFail,
}
