//! A recipient's delivery status and its spool form ([`Mark`]).
//!
//! The spool keeps a log of marks per message; a recipient's status is its latest mark
//! (or the latest message-wide mark, `rcpt == None`, when that is newer). Converting both
//! ways keeps attempt counts and next-attempt times across a restart.

use crate::spool::{Mark, MarkStatus, QueueId};

/// Where one recipient of a queued message stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    /// Not attempted yet (no mark).
    Pending,
    /// Failed temporarily; the next attempt is due at `next_ms` (Unix ms).
    Deferred { attempts: u16, next_ms: u64, last_reply: String },
    /// Accepted by the next hop (or stored locally), with its reply.
    Delivered { attempts: u16, reply: String },
    /// Failed for good (permanent reply, or the retries ran out), with the reason.
    Failed { attempts: u16, reply: String },
    /// Removed by an operator: no more work, no notice.
    Deleted,
}

impl Status {
    /// Attempts made so far.
    pub fn attempts(&self) -> u16 {
        match self {
            Status::Pending | Status::Deleted => 0,
            Status::Deferred { attempts, .. }
            | Status::Delivered { attempts, .. }
            | Status::Failed { attempts, .. } => *attempts,
        }
    }

    /// The word `queue list` shows.
    pub fn name(&self) -> &'static str {
        match self {
            Status::Pending => "queued",
            Status::Deferred { .. } => "deferred",
            Status::Delivered { .. } => "delivered",
            Status::Failed { .. } => "failed",
            Status::Deleted => "deleted",
        }
    }

    /// The next attempt (Unix ms) of a deferred recipient.
    pub fn next_attempt_ms(&self) -> Option<u64> {
        match self {
            Status::Deferred { next_ms, .. } => Some(*next_ms),
            _ => None,
        }
    }

    /// The last reply or error of a recipient not delivered.
    pub fn last_error(&self) -> Option<&str> {
        match self {
            Status::Deferred { last_reply: r, .. } | Status::Failed { reply: r, .. } => Some(r),
            _ => None,
        }
    }

    /// True when the recipient needs no more work.
    pub fn is_final(&self) -> bool {
        !matches!(self, Status::Pending | Status::Deferred { .. })
    }

    /// The mark that records this status for recipient `rcpt` (None: every recipient) of
    /// message `id`; `Pending` is the absence of a mark.
    pub fn to_mark(&self, id: QueueId, rcpt: Option<u16>) -> Option<Mark> {
        let (status, attempts, next_attempt_ms, text) = match self {
            Status::Pending => return None,
            Status::Deferred { attempts, next_ms, last_reply } => {
                (MarkStatus::Deferred, *attempts, *next_ms, last_reply.clone())
            }
            Status::Delivered { attempts, reply } => (MarkStatus::Delivered, *attempts, 0, reply.clone()),
            Status::Failed { attempts, reply } => (MarkStatus::Failed, *attempts, 0, reply.clone()),
            Status::Deleted => (MarkStatus::Deleted, 0, 0, String::new()),
        };
        Some(Mark { id, rcpt, status, attempts, next_attempt_ms, text })
    }

    /// The status a mark records.
    pub fn from_mark(m: &Mark) -> Status {
        match m.status {
            MarkStatus::Deferred => {
                Status::Deferred { attempts: m.attempts, next_ms: m.next_attempt_ms, last_reply: m.text.clone() }
            }
            MarkStatus::Delivered => Status::Delivered { attempts: m.attempts, reply: m.text.clone() },
            MarkStatus::Failed => Status::Failed { attempts: m.attempts, reply: m.text.clone() },
            MarkStatus::Deleted => Status::Deleted,
        }
    }

    /// Recipient `rcpt`'s status from a message's marks, oldest first: the newest mark that
    /// names it or every recipient.
    pub fn from_marks(marks: &[Mark], rcpt: u16) -> Status {
        marks.iter().rev().find(|m| m.rcpt.is_none_or(|r| r == rcpt)).map_or(Status::Pending, Status::from_mark)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_marks() {
        let id = QueueId(0xAB);
        let cases = [
            Status::Deferred { attempts: 3, next_ms: 1_795_000_000_123, last_reply: "451 4.3.0 try later".into() },
            Status::Delivered { attempts: 1, reply: "250 2.0.0 queued as X".into() },
            Status::Failed { attempts: 7, reply: "550 5.1.1 no such user".into() },
            Status::Deleted,
        ];
        for s in cases {
            let m = s.to_mark(id, Some(2)).unwrap();
            assert_eq!((m.id, m.rcpt), (id, Some(2)));
            assert_eq!(Status::from_mark(&m), s);
            // And through the record encoding the spool writes.
            let mut b = Vec::new();
            crate::spool::record::encode_mark(5, &m, &mut b);
            let (rec, _) = crate::spool::record::decode_record(5, &b).unwrap();
            let crate::spool::record::Record::Mark(back) = rec else { panic!("not a mark") };
            assert_eq!(Status::from_mark(&back), s);
        }
        assert_eq!(Status::Pending.to_mark(id, Some(0)), None);
    }

    #[test]
    fn latest_mark_wins_and_message_wide_marks_apply() {
        let id = QueueId(1);
        let d1 = Status::Deferred { attempts: 1, next_ms: 10, last_reply: "451 a".into() };
        let d2 = Status::Deferred { attempts: 2, next_ms: 20, last_reply: "451 b".into() };
        let ok = Status::Delivered { attempts: 2, reply: "250 ok".into() };
        let marks =
            vec![d1.to_mark(id, Some(0)).unwrap(), d2.to_mark(id, Some(0)).unwrap(), ok.to_mark(id, Some(1)).unwrap()];
        assert_eq!(Status::from_marks(&marks, 0), d2);
        assert_eq!(Status::from_marks(&marks, 1), ok);
        assert_eq!(Status::from_marks(&marks, 2), Status::Pending);
        assert_eq!(Status::from_marks(&marks, 0).attempts(), 2);
        let mut marks = marks;
        marks.push(Status::Deleted.to_mark(id, None).unwrap());
        assert_eq!(Status::from_marks(&marks, 0), Status::Deleted);
        assert!(Status::from_marks(&marks, 2).is_final());
    }
}
