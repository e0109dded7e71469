//! Reclaiming the spool: which segments hold nothing that is still needed.
//!
//! A message is *finished* once every recipient has a durable final mark, or the message as
//! a whole has one. A *sealed* segment (its shard already writes to a newer one) whose
//! messages are all finished can go. The control log's segments also hold marks, and the
//! marks of a message still on disk are what keep it finished (or keep its retry state)
//! across a restart; so before a control segment goes, the latest marks of every such
//! message are copied forward into the active control segment.
//!
//! The bookkeeping here is pure: the control thread tells it what became durable, asks for
//! a [`Plan`], and carries it out in the order that keeps every restart correct:
//!
//! 1. the copied marks are made durable;
//! 2. the message segments are retired, and their directories synced (a message must never
//!    come back after the marks that finished it are gone);
//! 3. the control segments are retired;
//! 4. [`Reclaimer::retired`].
//!
//! A segment kept only by a few unfinished messages (deferred for days, or held) is
//! compacted: the control thread copies those messages into its own log
//! ([`Reclaimer::compaction_candidates`]); once the copies are durable the old segment holds
//! nothing needed and goes like the others. Replay reads the control log last, so a copy
//! replaces the original of the same id.

use super::CONTROL_SHARD;
use super::envelope::QueueId;
use super::record::Mark;
use crate::util::slab::{Keyed, KeyedSlab};
use std::collections::{BTreeMap, HashMap, HashSet};

/// A sealed control segment goes only when at most one in this many of its marks would be
/// copied forward. Retiring one full of latest marks would only move them into the next
/// segment, fill it, and do it again: a large deferred queue keeps about one segment of
/// latest marks, and that segment stays until retries or deliveries supersede them.
const CONTROL_COPY_FRACTION: usize = 4;
/// Up to this many marks are copied whatever the fraction: too few to fill a segment.
const CONTROL_COPY_ANYWAY: usize = 64;

/// A sealed control segment kept by at most this many unfinished messages is compacted.
const CONTROL_COMPACT_MESSAGES: usize = 64;

/// A segment: shard and sequence.
pub type SegmentKey = (u8, u64);

/// A recipient's latest mark as kept here: the control segment it is in, with [`FINAL`]
/// set when its status is final; 0: no mark yet. The mark itself is read back from that
/// segment if it must be copied forward ([`CopyMark::Latest`]).
type Latest = u32;
const FINAL: u32 = 1 << 31;

/// What is known of one message on disk: 20 bytes, 4-byte aligned (segment sequences are
/// kept in 31 or 32 bits: two billion segments of at least 64 KiB per shard directory).
#[derive(Debug, Default)]
#[repr(C, packed(4))]
struct Msg {
    id: QueueId,
    seq: u32,
    /// Unfinished: with one recipient, its latest mark; with more, 1 + the index of their
    /// latest marks in [`Reclaimer::many`] (0: no mark yet). Finished: the oldest control
    /// segment holding a mark that finishes it (0: none, it had no recipient).
    latest: u32,
    /// Unfinished: the recipient count. Finished: how many segments after `latest` the
    /// newest one holding a mark that finishes it is ([`SPAN_ANY`]: any number).
    n: u16,
    shard: u8,
    finished: bool,
}

/// A finishing span too long to count: every later segment counts (copying a final mark
/// too many is harmless).
const SPAN_ANY: u16 = u16::MAX;

impl Msg {
    fn seg(&self) -> SegmentKey {
        (self.shard, self.seq as u64)
    }

    fn rcpts(&self) -> u16 {
        debug_assert!(!self.finished, "a finished message keeps its finishing span instead");
        self.n
    }

    /// Finished: the oldest and newest control segment holding a mark that finishes it.
    fn finished_by(&self) -> (u64, u64) {
        let first = self.latest as u64;
        (first, if self.n == SPAN_ANY { u64::MAX } else { first + self.n as u64 })
    }

    /// Finishes it by marks in control segments `first..=last`.
    fn finish(&mut self, (first, last): (u32, u32)) {
        self.finished = true;
        self.latest = first;
        self.n = u16::try_from(last.saturating_sub(first)).unwrap_or(SPAN_ANY);
    }
}

impl Keyed for Msg {
    fn key(&self) -> u64 {
        self.id.0
    }
}

/// A segment sequence as [`Msg`] keeps it.
fn seq32(seq: u64) -> u32 {
    u32::try_from(seq).unwrap_or(u32::MAX)
}

/// A control segment sequence as a [`Latest`] keeps it.
fn seq31(seq: u64) -> u32 {
    seq.min((FINAL - 1) as u64) as u32
}

#[derive(Debug, Default)]
struct Seg {
    /// Messages stored in this segment (copies elsewhere included).
    stored: usize,
    /// How many of them are not finished (and still live here).
    live: usize,
    /// Control segments: marks stored here, and how many of them are still the latest of a
    /// recipient of an unfinished message (what retiring the segment would copy).
    marks: usize,
    latest: usize,
}

/// A mark to copy forward before its control segment goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CopyMark {
    /// The last mark of recipient `rcpt` of message `id` in control segment `from`, copied
    /// as it is (the caller reads it back: its text is not kept in memory).
    Latest { id: QueueId, rcpt: u16, from: u64 },
    /// One final mark for a finished message still on disk.
    Final(QueueId),
}

/// What can go now, and what must be copied first.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Marks to append (and make durable) before anything is retired.
    pub copies: Vec<CopyMark>,
    /// Sealed message segments of the ingress shards with nothing unfinished.
    pub messages: Vec<SegmentKey>,
    /// Sealed control segments with nothing unfinished; retired last.
    pub control: Vec<u64>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.messages.is_empty() && self.control.is_empty()
    }
}

/// See the module documentation.
#[derive(Debug, Default)]
pub struct Reclaimer {
    /// Every message on disk, finished or not, until its segment is retired.
    msgs: KeyedSlab<Msg>,
    /// The latest marks of unfinished messages with more than one recipient, and the
    /// vacant places in it.
    many: Vec<Box<[Latest]>>,
    many_free: Vec<u32>,
    segs: BTreeMap<SegmentKey, Seg>,
    /// The newest segment seen per shard: the one it appends to.
    active: HashMap<u8, u64>,
    /// Something finished or a shard moved on since the last plan.
    dirty: bool,
}

impl Reclaimer {
    pub fn new() -> Self {
        Reclaimer::default()
    }

    /// Segment `seq` of `shard` exists (it may hold nothing yet).
    pub fn segment_seen(&mut self, shard: u8, seq: u64) {
        self.segs.entry((shard, seq)).or_default();
        let a = self.active.entry(shard).or_insert(seq);
        if seq > *a {
            *a = seq;
            self.dirty = true;
        }
    }

    /// A message with `rcpts` recipients is durable in segment `seq` of `shard`.
    pub fn message_stored(&mut self, shard: u8, seq: u64, id: QueueId, rcpts: usize) {
        self.segment_seen(shard, seq);
        // A copy of a message already known (compaction): it lives here from now on.
        if let Some(m) = self.msgs.get_mut(id.0) {
            let old = m.seg();
            (m.shard, m.seq) = (shard, seq32(seq));
            let finished = m.finished;
            if !finished && let Some(o) = self.segs.get_mut(&old) {
                o.live = o.live.saturating_sub(1);
            }
            let seg = self.segs.entry((shard, seq)).or_default();
            seg.stored += 1;
            if !finished {
                seg.live += 1;
            }
            self.dirty = true;
            return;
        }
        let seg = self.segs.entry((shard, seq)).or_default();
        seg.stored += 1;
        let finished = rcpts == 0;
        if !finished {
            seg.live += 1;
        }
        let n = if finished { 0 } else { rcpts.min(u16::MAX as usize) as u16 };
        self.msgs.insert(Msg { id, seq: seq32(seq), n, shard, finished, ..Msg::default() });
    }

    /// A state mark is durable in segment `seq` of the control log.
    pub fn mark_stored(&mut self, seq: u64, mark: &Mark) {
        self.segment_seen(CONTROL_SHARD, seq);
        // A mark of a message already reclaimed is left over: nothing to keep.
        let Some(msg) = self.msgs.get_mut(mark.id.0) else { return };
        if let Some(seg) = self.segs.get_mut(&(CONTROL_SHARD, seq)) {
            seg.marks += 1;
        }
        let whole_final = mark.rcpt.is_none() && mark.status.is_final();
        if msg.finished {
            // A whole-message final mark (a copy forward, or an operator's) finishes it on
            // its own: only its segment matters from now on.
            if whole_final {
                msg.finish((seq31(seq), seq31(seq)));
            }
            return;
        }
        // Where the marks that finish it are, should this mark finish it.
        let mut finished_by = (seq31(seq), seq31(seq));
        let finishes = match mark.rcpt {
            None => whole_final,
            Some(i) if i < msg.rcpts() => {
                if msg.rcpts() > 1 && msg.latest == 0 {
                    let marks = vec![0; msg.rcpts() as usize].into_boxed_slice();
                    msg.latest = 1 + match self.many_free.pop() {
                        Some(k) => {
                            self.many[k as usize] = marks;
                            k
                        }
                        None => {
                            self.many.push(marks);
                            (self.many.len() - 1) as u32
                        }
                    };
                }
                let slot: &mut Latest = if msg.rcpts() == 1 {
                    &mut msg.latest
                } else {
                    &mut self.many[msg.latest as usize - 1][i as usize]
                };
                let prev = *slot;
                *slot = seq31(seq) | if mark.status.is_final() { FINAL } else { 0 };
                if prev != 0
                    && let Some(s) = self.segs.get_mut(&(CONTROL_SHARD, (prev & !FINAL) as u64))
                {
                    s.latest -= 1;
                    self.dirty = true;
                }
                if let Some(s) = self.segs.get_mut(&(CONTROL_SHARD, seq)) {
                    s.latest += 1;
                }
                let latest = latest_of(&self.many, msg);
                let all_final = latest.iter().all(|l| l & FINAL != 0);
                if all_final {
                    let segs = latest.iter().map(|l| l & !FINAL);
                    finished_by = (segs.clone().min().unwrap_or(0), segs.max().unwrap_or(0));
                }
                all_final
            }
            Some(_) => false,
        };
        if finishes {
            for &l in latest_of(&self.many, msg) {
                if l != 0
                    && let Some(s) = self.segs.get_mut(&(CONTROL_SHARD, (l & !FINAL) as u64))
                {
                    s.latest -= 1;
                }
            }
            if msg.rcpts() > 1 && msg.latest != 0 {
                let k = msg.latest - 1;
                self.many[k as usize] = Box::new([]);
                self.many_free.push(k);
            }
            msg.finish(finished_by);
            if let Some(seg) = self.segs.get_mut(&msg.seg()) {
                seg.live -= 1;
            }
            self.dirty = true;
        }
    }

    /// True when [`Reclaimer::plan`] may find something new.
    pub fn dirty(&self) -> bool {
        self.dirty
    }

    /// Messages known (on disk, finished or not).
    pub fn messages(&self) -> usize {
        self.msgs.len()
    }

    /// What can be retired now; see the module documentation for the order.
    pub fn plan(&mut self) -> Plan {
        self.dirty = false;
        let mut plan = Plan::default();
        let mut retiring: HashSet<SegmentKey> = HashSet::new();
        for (&(shard, seq), seg) in &self.segs {
            let sealed = self.active.get(&shard).is_some_and(|&a| seq < a);
            let copies_too_many = seg.latest > CONTROL_COPY_ANYWAY && seg.latest * CONTROL_COPY_FRACTION > seg.marks;
            if !sealed || seg.live > 0 || copies_too_many {
                continue;
            }
            retiring.insert((shard, seq));
            if shard == CONTROL_SHARD {
                plan.control.push(seq);
            } else {
                plan.messages.push((shard, seq));
            }
        }
        // Before a control segment goes, the marks there that still matter are copied: the
        // latest of each recipient of an unfinished message, one final mark for a finished
        // message still on disk (not gone with a segment retired now). Which control
        // segments finish a finished message is known by range only (the oldest and newest
        // holding a mark that finishes it): copying a final mark too many is harmless. Rare
        // (once per control segment), so a walk over every message is fine.
        if let (Some(&lo), Some(&hi)) = (plan.control.iter().min(), plan.control.iter().max()) {
            let mut ids: Vec<QueueId> = self
                .msgs
                .iter()
                .filter(|m| {
                    let marks_there = if m.finished {
                        let (first, last) = m.finished_by();
                        first != 0 && first <= hi && last >= lo
                    } else {
                        latest_of(&self.many, m)
                            .iter()
                            .any(|&l| l != 0 && retiring.contains(&(CONTROL_SHARD, (l & !FINAL) as u64)))
                    };
                    marks_there && !retiring.contains(&m.seg())
                })
                .map(|m| m.id)
                .collect();
            ids.sort();
            for id in ids {
                let Some(msg) = self.msgs.get(id.0) else { continue };
                if msg.finished {
                    plan.copies.push(CopyMark::Final(id));
                    continue;
                }
                for (i, &l) in latest_of(&self.many, msg).iter().enumerate() {
                    let from = (l & !FINAL) as u64;
                    if l != 0 && retiring.contains(&(CONTROL_SHARD, from)) {
                        plan.copies.push(CopyMark::Latest { id, rcpt: i as u16, from });
                    }
                }
            }
        }
        plan
    }

    /// The plan was carried out: forget what it retired (a walk over every message: once
    /// per segment retired).
    pub fn retired(&mut self, plan: &Plan) {
        let keys: HashSet<SegmentKey> =
            plan.messages.iter().copied().chain(plan.control.iter().map(|&s| (CONTROL_SHARD, s))).collect();
        let mut gone = false;
        for key in &keys {
            gone |= self.segs.remove(key).is_some();
        }
        if !gone {
            return;
        }
        let ids: Vec<u64> = self.msgs.iter().filter(|m| keys.contains(&m.seg())).map(|m| m.id.0).collect();
        for id in ids {
            if let Some(m) = self.msgs.remove(id)
                && !m.finished
                && m.rcpts() > 1
                && m.latest != 0
            {
                // Not expected (a segment goes once its messages are finished), but then
                // their place is free again.
                self.many[m.latest as usize - 1] = Box::new([]);
                self.many_free.push(m.latest - 1);
            }
        }
    }

    /// Sealed segments kept only by a few unfinished messages (at most one in
    /// `1 / fraction` of what they hold; in the control log, at most
    /// `CONTROL_COMPACT_MESSAGES`, since its segments are mostly marks): copying those messages forward
    /// ([`Reclaimer::message_stored`] with the copy's place) lets the segment go. Returns
    /// each such segment with its unfinished messages (a walk over every message when there
    /// is one: the caller does not ask at every turn).
    pub fn compaction_candidates(&self, fraction: usize) -> Vec<(SegmentKey, Vec<QueueId>)> {
        let mut out: BTreeMap<SegmentKey, Vec<QueueId>> = BTreeMap::new();
        for (&key, seg) in &self.segs {
            let sealed = self.active.get(&key.0).is_some_and(|&a| key.1 < a);
            // A control segment is mostly marks: its few messages (generated ones, copies)
            // are worth copying whatever their share of its messages.
            let few =
                seg.live * fraction <= seg.stored || (key.0 == CONTROL_SHARD && seg.live <= CONTROL_COMPACT_MESSAGES);
            if sealed && seg.live > 0 && few {
                out.insert(key, Vec::new());
            }
        }
        if out.is_empty() {
            return Vec::new();
        }
        for m in self.msgs.iter().filter(|m| !m.finished) {
            if let Some(ids) = out.get_mut(&m.seg()) {
                ids.push(m.id);
            }
        }
        out.into_iter()
            .map(|(k, mut ids)| {
                ids.sort();
                (k, ids)
            })
            .collect()
    }
}

/// The latest marks of a message's recipients (none yet: empty).
fn latest_of<'a>(many: &'a [Box<[Latest]>], m: &'a Msg) -> &'a [Latest] {
    debug_assert!(!m.finished, "a finished message keeps where it was finished instead");
    match (m.rcpts(), m.latest) {
        (1, _) => std::slice::from_ref(&m.latest),
        (_, 0) => &[],
        (_, k) => &many[k as usize - 1],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spool::MarkStatus;

    fn mark(id: u64, rcpt: Option<u16>, status: MarkStatus) -> Mark {
        Mark { id: QueueId(id), rcpt, status, attempts: 1, next_attempt_ms: 0, text: String::new() }
    }

    #[test]
    fn only_sealed_segments_with_every_message_finished_go() {
        let mut r = Reclaimer::new();
        r.message_stored(0, 1, QueueId(1), 2);
        r.message_stored(0, 1, QueueId(2), 1);
        r.mark_stored(1, &mark(1, Some(0), MarkStatus::Delivered));
        r.mark_stored(1, &mark(2, Some(0), MarkStatus::Failed));
        // Segment 1 is still the active one of shard 0.
        assert!(r.plan().is_empty());
        r.message_stored(0, 2, QueueId(3), 1);
        // Message 1 has one recipient without a final mark.
        assert!(r.plan().messages.is_empty());
        r.mark_stored(1, &mark(1, Some(1), MarkStatus::Deferred));
        assert!(r.plan().messages.is_empty());
        r.mark_stored(1, &mark(1, Some(1), MarkStatus::Delivered));
        let p = r.plan();
        assert_eq!(p.messages, vec![(0, 1)]);
        // The control segment 1 is active: nothing to copy or retire there.
        assert!(p.control.is_empty() && p.copies.is_empty());
        r.retired(&p);
        assert_eq!(r.messages(), 1);
        assert!(r.plan().is_empty());
    }

    #[test]
    fn what_is_kept_per_message_is_small() {
        assert!(std::mem::size_of::<Msg>() <= 20, "{}", std::mem::size_of::<Msg>());
    }

    #[test]
    fn a_whole_message_final_mark_finishes_it() {
        let mut r = Reclaimer::new();
        r.message_stored(3, 7, QueueId(9), 3);
        r.message_stored(3, 8, QueueId(10), 1);
        r.mark_stored(1, &mark(9, None, MarkStatus::Deleted));
        assert_eq!(r.plan().messages, vec![(3, 7)]);
    }

    /// A control segment goes only after the marks of messages still on disk are copied:
    /// the latest per recipient for an unfinished one, one final mark for a finished one.
    #[test]
    fn control_segment_marks_are_copied_forward() {
        let mut r = Reclaimer::new();
        // Message 1 (segment 0/1) finished, but pinned by message 2 in the same segment.
        r.message_stored(0, 1, QueueId(1), 1);
        r.message_stored(0, 1, QueueId(2), 2);
        r.mark_stored(1, &mark(1, Some(0), MarkStatus::Delivered));
        r.mark_stored(1, &mark(2, Some(0), MarkStatus::Deferred));
        r.mark_stored(1, &mark(2, Some(0), MarkStatus::Delivered));
        r.mark_stored(1, &mark(2, Some(1), MarkStatus::Deferred));
        // Message 3 lives in segment 0/2 and is finished by a mark in control segment 1.
        r.message_stored(0, 2, QueueId(3), 1);
        r.mark_stored(1, &mark(3, Some(0), MarkStatus::Delivered));
        // The control log moves on: segment 1 is sealed.
        r.segment_seen(CONTROL_SHARD, 2);
        let p = r.plan();
        assert!(p.messages.is_empty(), "0/1 has message 2 unfinished; 0/2 is active");
        assert_eq!(p.control, vec![1]);
        let want = [
            CopyMark::Final(QueueId(1)),
            CopyMark::Latest { id: QueueId(2), rcpt: 0, from: 1 },
            CopyMark::Latest { id: QueueId(2), rcpt: 1, from: 1 },
            CopyMark::Final(QueueId(3)),
        ];
        assert_eq!(p.copies, want, "a recipient's latest mark is read back from segment 1");
        // The copies land in control segment 2; segment 1 is retired.
        for m in [
            mark(1, None, MarkStatus::Delivered),
            mark(2, Some(0), MarkStatus::Delivered),
            mark(2, Some(1), MarkStatus::Deferred),
            mark(3, None, MarkStatus::Delivered),
        ] {
            r.mark_stored(2, &m);
        }
        r.retired(&p);
        r.segment_seen(CONTROL_SHARD, 3);
        r.mark_stored(2, &mark(2, Some(1), MarkStatus::Delivered));
        r.message_stored(0, 3, QueueId(4), 1);
        let p = r.plan();
        assert_eq!(p.messages, vec![(0, 1), (0, 2)]);
        // Every message with marks in control segment 2 is gone with its segment.
        assert_eq!(p.control, vec![2]);
        assert!(p.copies.is_empty(), "{p:?}");
    }

    /// A long-deferred message keeps its segment until it is copied forward; then the
    /// segment goes and the message lives on in the copy.
    #[test]
    fn compaction_moves_the_last_unfinished_messages() {
        let mut r = Reclaimer::new();
        for id in 1..=20 {
            r.message_stored(0, 1, QueueId(id), 1);
        }
        r.message_stored(0, 2, QueueId(21), 1);
        for id in 2..=20 {
            r.mark_stored(1, &mark(id, Some(0), MarkStatus::Delivered));
        }
        r.mark_stored(1, &mark(1, Some(0), MarkStatus::Deferred));
        assert!(r.plan().messages.is_empty(), "message 1 keeps segment 0/1");
        assert_eq!(r.compaction_candidates(10), vec![((0, 1), vec![QueueId(1)])]);
        assert!(r.compaction_candidates(30).is_empty(), "1 in 20 is more than 1 in 30");
        // The copy is durable in control segment 3.
        r.message_stored(CONTROL_SHARD, 3, QueueId(1), 1);
        let p = r.plan();
        assert_eq!(p.messages, vec![(0, 1)]);
        r.retired(&p);
        assert_eq!(r.messages(), 2, "message 1 (the copy) and message 21");
        // Its later marks finish it where it now lives.
        r.segment_seen(CONTROL_SHARD, 4);
        r.mark_stored(4, &mark(1, Some(0), MarkStatus::Delivered));
        assert!(r.plan().control.contains(&3));
    }

    /// A control segment is mostly marks: its one unfinished message is copied forward even
    /// though it is all the messages the segment holds.
    #[test]
    fn a_control_segment_with_a_few_messages_is_compacted() {
        let mut r = Reclaimer::new();
        r.message_stored(CONTROL_SHARD, 1, QueueId(5), 1);
        r.mark_stored(1, &mark(5, Some(0), MarkStatus::Deferred));
        assert!(r.compaction_candidates(10).is_empty(), "segment 1 is the active one");
        r.segment_seen(CONTROL_SHARD, 2);
        assert_eq!(r.compaction_candidates(10), vec![((CONTROL_SHARD, 1), vec![QueueId(5)])]);
        r.message_stored(CONTROL_SHARD, 2, QueueId(5), 1);
        let p = r.plan();
        assert_eq!(p.control, vec![1]);
        assert_eq!(p.copies, [CopyMark::Latest { id: QueueId(5), rcpt: 0, from: 1 }], "its deferral, from segment 1");
    }

    /// A control segment whose marks are mostly still the latest of their recipients stays:
    /// retiring it would copy them all into the next segment, and again when that one is
    /// sealed. Once retries supersede most of them, it goes and the rest are copied.
    #[test]
    fn a_control_segment_of_latest_marks_is_not_churned() {
        let mut r = Reclaimer::new();
        let n = 4 * CONTROL_COPY_ANYWAY as u64;
        for id in 1..=n {
            r.message_stored(0, 1, QueueId(id), 1);
            r.mark_stored(1, &mark(id, Some(0), MarkStatus::Deferred));
        }
        r.segment_seen(CONTROL_SHARD, 2);
        assert!(r.plan().control.is_empty(), "every mark in it is still the latest");
        // Retried: all but 10 deferred again (marks in segment 2).
        for id in 11..=n {
            r.mark_stored(2, &mark(id, Some(0), MarkStatus::Deferred));
        }
        let p = r.plan();
        assert_eq!(p.control, vec![1]);
        let ids: Vec<u64> = p
            .copies
            .iter()
            .map(|c| match c {
                CopyMark::Latest { id, .. } | CopyMark::Final(id) => id.0,
            })
            .collect();
        assert_eq!(ids, (1..=10).collect::<Vec<_>>(), "only the ten still latest there");
    }

    #[test]
    fn a_generated_message_pins_its_control_segment() {
        let mut r = Reclaimer::new();
        r.message_stored(CONTROL_SHARD, 1, QueueId(5), 1);
        r.segment_seen(CONTROL_SHARD, 2);
        assert!(r.plan().control.is_empty());
        r.mark_stored(2, &mark(5, Some(0), MarkStatus::Delivered));
        assert_eq!(r.plan().control, vec![1]);
    }

    #[test]
    fn leftover_marks_of_reclaimed_messages_are_ignored() {
        let mut r = Reclaimer::new();
        r.mark_stored(1, &mark(77, Some(0), MarkStatus::Delivered));
        r.segment_seen(CONTROL_SHARD, 2);
        // Control segment 1 holds nothing but a leftover: it goes, with nothing to copy.
        let p = r.plan();
        assert_eq!((p.control, p.copies), (vec![1], vec![]));
    }

    /// The latest marks of a message with several recipients live aside, and their place is
    /// reused once it is finished.
    #[test]
    fn several_recipients_latest_marks_are_kept_aside_and_reused() {
        let mut r = Reclaimer::new();
        r.message_stored(0, 1, QueueId(1), 3);
        r.message_stored(0, 1, QueueId(2), 2);
        r.mark_stored(1, &mark(1, Some(2), MarkStatus::Deferred));
        r.mark_stored(1, &mark(2, Some(0), MarkStatus::Deferred));
        assert_eq!(r.many.len(), 2);
        for i in 0..3 {
            r.mark_stored(1, &mark(1, Some(i), MarkStatus::Delivered));
        }
        r.mark_stored(1, &mark(1, Some(7), MarkStatus::Deferred)); // no such recipient
        assert_eq!(r.many_free, [0], "message 1 finished: its place is free");
        r.message_stored(0, 1, QueueId(3), 4);
        r.mark_stored(1, &mark(3, Some(3), MarkStatus::Failed));
        assert_eq!((r.many.len(), r.many_free.len(), r.many[0].len()), (2, 0, 4));
        r.segment_seen(0, 2);
        assert!(r.plan().messages.is_empty(), "messages 2 and 3 are unfinished");
        r.mark_stored(1, &mark(2, Some(1), MarkStatus::Delivered));
        r.mark_stored(1, &mark(2, Some(0), MarkStatus::Delivered));
        for i in 0..3 {
            r.mark_stored(1, &mark(3, Some(i), MarkStatus::Failed));
        }
        let p = r.plan();
        assert_eq!(p.messages, vec![(0, 1)]);
        r.retired(&p);
        assert_eq!((r.messages(), r.many_free.len()), (0, 2), "both places free, none freed twice");
    }

    /// A finished message still on disk needs a final mark copied only when a segment
    /// holding a mark that finishes it goes, not one holding only marks it outgrew.
    #[test]
    fn only_the_marks_that_finish_a_message_are_kept_for_it() {
        let mut r = Reclaimer::new();
        r.message_stored(0, 1, QueueId(1), 1);
        r.message_stored(0, 1, QueueId(2), 1); // unfinished: keeps segment 0/1
        r.message_stored(0, 2, QueueId(3), 1);
        r.mark_stored(1, &mark(1, Some(0), MarkStatus::Deferred));
        r.mark_stored(2, &mark(1, Some(0), MarkStatus::Delivered));
        let p = r.plan();
        assert_eq!((p.control.clone(), p.copies.clone()), (vec![1], vec![]), "segment 1 holds an outgrown deferral");
        r.retired(&p);
        r.mark_stored(3, &mark(2, Some(0), MarkStatus::Deferred));
        let p = r.plan();
        assert_eq!((p.control.clone(), p.copies.clone()), (vec![2], vec![CopyMark::Final(QueueId(1))]));
        // The copy lands in segment 3, which alone finishes message 1 from now on.
        r.mark_stored(3, &mark(1, None, MarkStatus::Delivered));
        r.retired(&p);
        r.segment_seen(CONTROL_SHARD, 4);
        r.mark_stored(4, &mark(2, Some(0), MarkStatus::Deferred));
        let p = r.plan();
        assert_eq!(p.control, vec![3]);
        assert_eq!(p.copies, vec![CopyMark::Final(QueueId(1))]);
    }
}
