//! What the spool stores about a message besides its content: queue id and envelope.

use crate::wire::{Body, Notify, Ret};
use std::fmt;

/// A queue id: unique per message across shards and restarts.
///
/// Layout (most significant first): 32 bits of Unix seconds when it was minted, 8 bits of
/// shard, 24 bits of sequence within that second. Shown as 16 upper-case hex digits, so ids
/// sort by time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct QueueId(pub u64);

impl QueueId {
    pub fn shard(self) -> u8 {
        (self.0 >> 24) as u8
    }

    pub fn parse(s: &str) -> Option<QueueId> {
        if s.len() != 16 {
            return None;
        }
        u64::from_str_radix(s, 16).ok().map(QueueId)
    }
}

impl QueueId {
    /// The id as [`fmt::Display`] writes it, on the stack (a reply and a header of every
    /// message carry it).
    pub fn text(&self) -> crate::util::stack_str::StackStr<16> {
        crate::util::stack_str::hex16(self.0)
    }
}

impl fmt::Display for QueueId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016X}", self.0)
    }
}

/// Mints queue ids for one shard.
///
/// # Invariants
/// Ids are strictly increasing within a shard, also across restarts as long as the shard
/// is seeded with the largest id it recovered ([`IdGen::new`]).
#[derive(Debug)]
pub struct IdGen {
    shard: u8,
    last: u64,
}

impl IdGen {
    pub fn new(shard: u8, floor: QueueId) -> Self {
        IdGen { shard, last: floor.0 }
    }

    pub fn next(&mut self, unix_secs: u64) -> QueueId {
        let base = (unix_secs & 0xffff_ffff) << 32 | (self.shard as u64) << 24;
        let id = if base > self.last {
            base
        } else if (self.last & 0xff_ffff) < 0xff_ffff && ((self.last >> 24) & 0xff) as u8 == self.shard {
            self.last + 1
        } else {
            // Sequence space of this second used up (or the floor came from another shard):
            // borrow the next second.
            (((self.last >> 32) + 1) & 0xffff_ffff) << 32 | (self.shard as u64) << 24
        };
        self.last = id;
        QueueId(id)
    }
}

/// One recipient as accepted at RCPT time, with its DSN parameters (RFC 3461).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recipient {
    pub address: String,
    pub notify: Option<Notify>,
    /// `ORCPT` as sent (`addr-type;xtext`).
    pub orcpt: Option<String>,
}

/// A message to make durable: its envelope and its content as stored (our Received header,
/// then the message as received).
#[derive(Debug)]
pub struct NewMessage {
    pub envelope: Envelope,
    pub data: Vec<u8>,
}

/// The envelope of a spooled message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    pub id: QueueId,
    /// Unix time in milliseconds when the message was accepted.
    pub received_ms: u64,
    /// The reverse path; empty for the null sender `<>`.
    pub from: String,
    pub body: Option<Body>,
    pub smtputf8: bool,
    pub ret: Option<Ret>,
    pub envid: Option<String>,
    pub rcpts: Vec<Recipient>,
    /// RFC 4954 §5: who submitted the message, as an xtext-encoded mailbox, when an
    /// authenticated client told us (`AUTH=`) or is itself that submitter; relayed as
    /// `AUTH=` to a next hop we authenticate to.
    pub auth: Option<String>,
    /// Deliver every recipient through this host (`host` or `host:port`), as a script asked.
    pub route: Option<String>,
    /// Held in the queue until an operator releases it (`ringmx queue release`), for this
    /// reason (a milter's or a script's quarantine).
    pub quarantine: Option<String>,
}

impl Envelope {
    pub fn new(id: QueueId) -> Self {
        Envelope {
            id,
            received_ms: 0,
            from: String::new(),
            body: None,
            smtputf8: false,
            ret: None,
            envid: None,
            rcpts: Vec::new(),
            auth: None,
            route: None,
            quarantine: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_increase_and_carry_the_shard() {
        let mut g = IdGen::new(3, QueueId(0));
        let a = g.next(1_700_000_000);
        let b = g.next(1_700_000_000);
        let c = g.next(1_699_999_999); // clock stepped back
        let d = g.next(1_700_000_001);
        assert!(a < b && b < c && c < d);
        for id in [a, b, c, d] {
            assert_eq!(id.shard(), 3);
        }
        assert_eq!(QueueId::parse(&a.to_string()), Some(a));
        assert_eq!(a.to_string().len(), 16);
        // Seeded past "now" after a restart: still increasing.
        let mut g2 = IdGen::new(3, d);
        assert!(g2.next(1_700_000_000) > d);
        // Sequence exhaustion borrows the next second.
        let mut g3 = IdGen::new(1, QueueId((5u64 << 32) | (1 << 24) | 0xff_ffff));
        let e = g3.next(5);
        assert_eq!(e.0 >> 32, 6);
        assert_eq!(e.shard(), 1);
    }
}
