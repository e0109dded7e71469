//! Spool upkeep on the control thread: segments that hold nothing unfinished are retired
//! (see [`crate::spool::reclaim`] for the order that keeps a restart correct), and the few
//! unfinished messages of mostly finished sealed segments are copied forward so that those
//! segments can go too.

use super::{Control, TOKEN_MOVE};
use crate::spool::{CONTROL_SHARD, CopyMark, Mark, MarkStatus, NewMessage, QueueId};
use std::collections::{HashMap, HashSet};

/// Compaction copies the unfinished messages of a sealed segment when they are at most one
/// in this many of what it holds.
const COMPACT_FRACTION: usize = 10;
/// Bytes copied by compaction per loop turn at most.
const COMPACT_BUDGET: u64 = 8 << 20;
/// A message due sooner than this is left where it is (it is likely to finish first).
const COMPACT_MIN_WAIT_MS: u64 = 60_000;
/// Looking for compaction candidates walks every queued message: at most this often.
const COMPACT_EVERY_MS: u64 = 1_000;

impl Control {
    /// Retires the segments that hold nothing unfinished, in the order that keeps a restart
    /// correct (see [`crate::spool::reclaim`]): marks still needed copied and made durable,
    /// then message segments (directories synced), then control segments.
    pub(super) fn reclaim(&mut self, now: u64) {
        if self.reclaimer.dirty() {
            let plan = self.reclaimer.plan();
            if !plan.is_empty() {
                self.retire(now, plan);
            }
            self.compact_pending = true;
        }
        // Looking for candidates walks every message: at most once a COMPACT_EVERY_MS (the
        // loop turns at least once a MAX_WAIT).
        if self.compact_pending && now >= self.compact_after {
            self.compact_pending = false;
            self.compact_after = now + COMPACT_EVERY_MS;
            self.compact(now);
        }
    }

    /// Copies the few unfinished messages of mostly finished sealed segments into the control
    /// log (see [`crate::spool::reclaim`]); once the copies are durable the segments go at
    /// the next [`Control::reclaim`]. Only messages waiting a while in the queue are copied:
    /// a segment with a message about to be tried, or being tried, waits.
    fn compact(&mut self, now: u64) {
        let mut budget = COMPACT_BUDGET;
        let mut copied = 0;
        for (_, ids) in self.reclaimer.compaction_candidates(COMPACT_FRACTION) {
            if !ids.iter().all(|id| self.manager.is_idle_until(*id, now + COMPACT_MIN_WAIT_MS)) {
                continue;
            }
            for id in ids {
                let Some(at) = self.manager.location(id) else { continue };
                match self.segments.read(at.shard(), at.seq(), at.offset()) {
                    Ok((envelope, data)) => {
                        budget = budget.saturating_sub(data.len() as u64);
                        copied += 1;
                        self.log.append(TOKEN_MOVE, NewMessage { envelope, data });
                    }
                    Err(e) => log::warn!("control: {id}: reading for compaction: {e}"),
                }
            }
            if budget == 0 {
                break;
            }
        }
        if copied > 0 {
            self.flush_log(now);
            log::debug!("control: {copied} message(s) copied forward out of mostly finished segments");
        }
    }

    /// Carries out a reclaim plan.
    fn retire(&mut self, now: u64, plan: crate::spool::Plan) {
        let copies = plan.copies.len();
        // The latest marks to copy, read back from the segments about to go.
        let mut wanted: HashMap<u64, HashSet<(QueueId, u16)>> = HashMap::new();
        for c in &plan.copies {
            if let CopyMark::Latest { id, rcpt, from } = *c {
                wanted.entry(from).or_default().insert((id, rcpt));
            }
        }
        let mut found = HashMap::new();
        for (seq, pairs) in wanted {
            match crate::spool::last_marks(&self.cfg.spool, seq, &pairs) {
                Ok(marks) if marks.len() == pairs.len() => found.extend(marks),
                Ok(marks) => {
                    let missing = pairs.iter().find(|p| !marks.contains_key(p));
                    log::error!("control: spool reclaim put off: control segment {seq} lacks the mark of {missing:?}");
                    return;
                }
                Err(e) => {
                    log::error!("control: spool reclaim put off: {e}");
                    return;
                }
            }
        }
        for c in &plan.copies {
            let mark = match *c {
                CopyMark::Latest { id, rcpt, .. } => found.remove(&(id, rcpt)).expect("every latest mark was found"),
                CopyMark::Final(id) => Mark {
                    id,
                    rcpt: None,
                    status: MarkStatus::Delivered,
                    attempts: 0,
                    next_attempt_ms: 0,
                    text: "final (marks compacted)".into(),
                },
            };
            self.append_mark(mark);
        }
        if !self.flush_log(now) {
            log::error!("control: spool reclaim put off: copied marks are not durable");
            return;
        }
        let spool = self.cfg.spool.clone();
        let mut retired = crate::spool::Plan::default();
        let mut dirs: Vec<u8> = Vec::new();
        for &(shard, seq) in &plan.messages {
            match crate::spool::retire_segment(&spool, shard, seq) {
                Ok(()) => {
                    retired.messages.push((shard, seq));
                    if !dirs.contains(&shard) {
                        dirs.push(shard);
                    }
                }
                Err(e) => log::warn!("control: retiring a spool segment: {e}"),
            }
        }
        for shard in dirs {
            if let Err(e) = crate::spool::sync_dir(&spool, shard) {
                // Not known durable: keep the control segments (their marks) for now.
                log::error!("control: {e}; spool reclaim put off");
                self.reclaimer.retired(&retired);
                return;
            }
        }
        let mut control_done = false;
        for &seq in &plan.control {
            match crate::spool::retire_segment(&spool, CONTROL_SHARD, seq) {
                Ok(()) => {
                    retired.control.push(seq);
                    control_done = true;
                }
                Err(e) => log::warn!("control: retiring a spool segment: {e}"),
            }
        }
        if control_done && let Err(e) = crate::spool::sync_dir(&spool, CONTROL_SHARD) {
            log::warn!("control: {e}");
        }
        let keys = retired.messages.iter().copied().chain(retired.control.iter().map(|&s| (CONTROL_SHARD, s)));
        for (shard, seq) in keys {
            self.segments.forget(shard, seq);
        }
        let n = retired.messages.len() + retired.control.len();
        self.reclaimed += n as u64;
        log::debug!("control: {n} spool segment(s) retired, {copies} mark(s) copied forward");
        self.reclaimer.retired(&retired);
        if copies > 0 {
            // Copying marks forward reads a whole control segment and builds a batch as
            // large: give that back.
            crate::util::mem::release_free_memory();
        }
    }
}
