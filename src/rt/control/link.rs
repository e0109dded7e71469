//! What the shards, the delivery runtime and the control socket send the control
//! thread, and the shards' end of that channel. Kept apart from the control side itself so
//! that its senders depend on the messages, not on the queue's code.

use crate::queue::actions::Outcome;
use crate::queue::requests::{QueueAnswer, QueueRequest};
use crate::spool::{Envelope, Location};
use std::sync::mpsc::{SyncSender, TrySendError};

/// A message a shard made durable.
#[derive(Debug)]
pub struct Accepted {
    pub shard: u8,
    pub envelope: Envelope,
    pub location: Location,
}

/// What reaches the control thread.
#[derive(Debug)]
pub enum ControlMsg {
    /// A shard made these messages durable (one loop turn's worth: one wake-up).
    Accepted(Vec<Accepted>),
    /// The delivery runtime finished a job (remote SMTP, LMTP).
    Outcome(Outcome),
    /// An operator's `ringmx queue retry|delete|bounce`; the answer goes back on the sender.
    Queue(QueueRequest, std::sync::mpsc::Sender<QueueAnswer>),
    /// Messages the list thread wants queued outside a message's outcome (an approved post,
    /// a digest); `true` goes back once they are durable.
    Drafts(Vec<crate::queue::actions::Draft>, std::sync::mpsc::Sender<bool>),
    /// Read the quota usage of every mailbox again (`postoffice reset-quota`); the number of
    /// mailboxes read goes back.
    RefreshUsage(std::sync::mpsc::Sender<usize>),
    /// `ringmx queue suspend|resume|suspended` (operation, domains); the answer goes back.
    Destinations(String, Vec<String>, std::sync::mpsc::Sender<crate::queue::requests::DestinationsAnswer>),
    /// Nothing to do but look at the stop flag now (the server is stopping), rather than
    /// at the end of an idle wait.
    Wake,
}

/// A shard's end of the channel. Messages of a loop turn are handed over together at the
/// end of the turn: one wake-up of the control thread per turn, not per message.
pub struct ControlLink {
    tx: SyncSender<ControlMsg>,
    backlog: Vec<Accepted>,
}

impl ControlLink {
    pub fn new(tx: SyncSender<ControlMsg>) -> Self {
        ControlLink { tx, backlog: Vec::new() }
    }

    /// Queues a message for the end of the turn.
    pub fn send(&mut self, a: Accepted) {
        self.backlog.push(a);
    }

    /// Hands over what the turn produced, without blocking; a full channel keeps it for
    /// the next turn.
    pub fn flush(&mut self) {
        if self.backlog.is_empty() {
            return;
        }
        match self.tx.try_send(ControlMsg::Accepted(std::mem::take(&mut self.backlog))) {
            Ok(()) => {}
            Err(TrySendError::Full(ControlMsg::Accepted(v))) => self.backlog = v,
            Err(TrySendError::Full(_)) => {}
            // The control side is gone (shutting down): the spool has the messages.
            Err(TrySendError::Disconnected(_)) => {}
        }
    }
}

/// Channel capacity: a few seconds of peak intake.
pub const CHANNEL_CAPACITY: usize = 65_536;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spool::QueueId;

    fn accepted(n: u64) -> Accepted {
        Accepted {
            shard: 0,
            envelope: Envelope::new(QueueId(n)),
            location: Location { seq: 1, record_offset: n, content_offset: n, content_len: 1 },
        }
    }

    fn ids(m: ControlMsg) -> Vec<u64> {
        match m {
            ControlMsg::Accepted(v) => v.iter().map(|a| a.envelope.id.0).collect(),
            _ => panic!("not an Accepted"),
        }
    }

    /// A turn's messages go over together; a full channel keeps them (and what the next
    /// turns add) until there is room, in order; a closed one drops them (the spool has them).
    #[test]
    fn a_full_channel_keeps_the_backlog_in_order() {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let mut link = ControlLink::new(tx);
        link.flush();
        assert!(rx.try_recv().is_err(), "nothing to send, nothing sent");
        link.send(accepted(1));
        link.send(accepted(2));
        link.flush();
        link.send(accepted(3));
        link.flush(); // full: kept
        link.send(accepted(4));
        link.flush(); // still full
        assert_eq!(ids(rx.try_recv().unwrap()), [1, 2]);
        link.flush();
        assert_eq!(ids(rx.try_recv().unwrap()), [3, 4]);
        assert!(rx.try_recv().is_err());
        drop(rx);
        link.send(accepted(5));
        link.flush();
        assert!(link.backlog.is_empty(), "the control side is gone: nothing is kept");
    }
}
