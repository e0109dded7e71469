//! The writer side of one shard's log: segments, batching and group commit.
//!
//! The shard appends finished messages with [`ShardLog::append`]; nothing is written yet.
//! Once per loop turn the driver asks for a [`Batch`] ([`ShardLog::begin_batch`]): every
//! queued record, as one vectored write at the end of the active segment, to be followed by
//! one `fdatasync`. Only one batch is in flight at a time; what is appended meanwhile waits
//! for the next, which is how records gather into a group commit. When the sync completes,
//! [`ShardLog::finish_batch`] hands back each record's token and result: the session may
//! say 250 only then.
//!
//! The driver does the I/O (io_uring: linked `WRITEV` + `FSYNC(DATASYNC)`); the
//! [`ShardLog::flush_sync`] path does it with plain syscalls for the epoll driver and for
//! tools.
//!
//! # Direct I/O (`[spool] direct_io`)
//!
//! With [`ShardLog::use_direct_io`], a batch is instead one write through a second
//! descriptor of the segment opened with `O_DIRECT`, flagged `RWF_DSYNC`: the block layer
//! completes it durably (a FUA write where the device has FUA, a write and a cache flush
//! where it has not), with no `fdatasync`, no page-cache copy and, under io_uring, no
//! io-wq worker. Such a write must start and end on the device's block boundaries
//! ([`Direct::align`]), so the batch is staged in an aligned buffer: first the bytes of the
//! block that holds the log's end (the last batch's tail, kept in memory, written again,
//! unchanged), then the records and the end mark, then zeros up to the next boundary,
//! which the next batch overwrites. Rewriting a block with the same leading bytes cannot
//! damage them however the write is torn: a sector holds either its old or its new
//! content, and both begin alike. The price is bandwidth, not space: up to one block of
//! earlier records written again per batch, and the padding.
//!
//! Each batch is followed, in the same write, by eight zero bytes (a record length of 0:
//! the end of the log), which the next batch overwrites. A segment file that held an
//! earlier segment's records therefore still ends cleanly at its last batch.
//!
//! # Segment files
//!
//! A new segment is prepared under a temporary name (`<seq>.tmp`: header written and
//! synced) and renamed into place, so a `<seq>.seg` always has a valid header, whatever the
//! moment of a crash. When the shard's directory holds a spare file (`*.free`: a retired
//! segment left by [`super::retire_segment`], or one written ahead by [`prepare_spare`]),
//! that file is used; else a new file is written through with zeros. Either way every block
//! is already written, so the `fdatasync` after each batch flushes data, never an extent
//! conversion (which doubles its cost on ext4: docs/decisions/005-segment-reuse.md). Stale
//! records in a reused file never check: every record's CRC is seeded with the sequence of
//! the segment it was written for.

use super::envelope::Envelope;
use super::envelope::QueueId;
use super::record::{Mark, SEGMENT_HEADER_LEN, SegmentHeader, encode_mark, encode_message_header};
use super::{SpoolError, segment_path};
use crate::spool::NewMessage;
use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// Records per batch at most (one vectored write takes at most `IOV_MAX` = 1024 slices,
/// two per record and one for the end marker).
const MAX_BATCH: usize = 511;

/// Written after every batch: a record length of 0, the end of the log.
static END_MARK: [u8; 8] = [0; 8];

/// Counters for the group-commit figures.
#[derive(Debug, Clone, Copy, Default)]
pub struct LogStats {
    /// Batches written (each followed by one `fdatasync` when syncing is on).
    pub batches: u64,
    /// Message records made durable.
    pub records: u64,
    pub bytes: u64,
    /// Bytes the batches wrote: `bytes` plus the end marks, and with direct I/O the block
    /// heads written again and the padding.
    pub written: u64,
    pub segments_created: u64,
}

struct Queued {
    token: u64,
    /// The segment sequence the header's CRC was computed for.
    sealed: u64,
    id: QueueId,
    /// The message's envelope, handed back on completion (none for a mark).
    envelope: Option<Envelope>,
    /// The record's prefix and envelope (a message) or the whole record (a mark).
    header: Vec<u8>,
    /// A message's content; empty for a mark.
    data: Vec<u8>,
}

/// A write in flight: `iov` points into the records it owns (or, with direct I/O, into its
/// staging buffer), which do not move until [`ShardLog::finish_batch`].
pub struct Batch {
    pub fd: i32,
    pub offset: u64,
    /// Bytes written, end-of-log marker (and, with direct I/O, the rewritten block head and
    /// the padding) included.
    pub len: u64,
    /// A direct write: issue it with `RWF_DSYNC` (when syncing), and no `fdatasync`.
    pub direct: bool,
    /// Where the first record goes (`offset` but for direct I/O's rewritten block head).
    start: u64,
    /// Bytes of records: how far the end of the log moves once the batch is durable.
    records_len: u64,
    iov: Vec<libc::iovec>,
    entries: Vec<Queued>,
    /// Direct I/O's staging buffer, given back when the batch ends.
    staged: Option<AlignedBuf>,
}

// SAFETY: the iovec pointers point into the heap buffers of the `entries` this batch owns
// (moving the batch does not move them) or at the immutable static END_MARK; nothing else
// refers to them, so the batch can go to another thread with its buffers.
unsafe impl Send for Batch {}

impl Batch {
    /// The slices to write, as the kernel wants them.
    pub fn iovecs(&self) -> &[libc::iovec] {
        &self.iov
    }
}

/// The outcome of one appended record.
#[derive(Debug)]
pub struct Completion {
    pub token: u64,
    pub result: Result<Stored, SpoolError>,
    /// The request's data vector, given back for reuse.
    pub data: Vec<u8>,
}

/// A record made durable.
#[derive(Debug)]
pub struct Stored {
    pub id: QueueId,
    /// A message's envelope (none for a mark).
    pub envelope: Option<Envelope>,
    pub location: Location,
}

/// Where a record lies: segment `seq` of the writer's shard, the record from
/// `record_offset`, a message's content at its end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Location {
    pub seq: u64,
    pub record_offset: u64,
    pub content_offset: u64,
    pub content_len: u64,
}

impl Location {
    /// The whole record's length.
    pub fn record_len(&self) -> u64 {
        self.content_offset + self.content_len - self.record_offset
    }
}

/// Memory aligned for direct I/O: whole pages of 4 KiB.
#[derive(Clone, Copy)]
#[repr(C, align(4096))]
struct Page([u8; PAGE]);

const PAGE: usize = 4096;

/// A growable buffer of [`Page`]s.
#[derive(Default)]
struct AlignedBuf {
    pages: Vec<Page>,
}

impl AlignedBuf {
    /// The first `len` bytes (the buffer grows to hold them).
    fn bytes_mut(&mut self, len: usize) -> &mut [u8] {
        let need = len.div_ceil(PAGE);
        if self.pages.len() < need {
            self.pages.resize(need, Page([0; PAGE]));
        }
        // SAFETY: `Page` is `repr(C)` around a `[u8; PAGE]`, so the Vec's buffer is
        // `pages.len() * PAGE` initialized bytes with no padding; `len <= pages.len() * PAGE`
        // after the resize, and the slice borrows `self` mutably for its lifetime.
        unsafe { std::slice::from_raw_parts_mut(self.pages.as_mut_ptr().cast::<u8>(), len) }
    }
}

/// Direct I/O's state: see the module documentation.
struct Direct {
    /// The active segment, opened again with `O_DIRECT` (writes only).
    file: File,
    /// The boundary every direct write starts and ends on (the file system's
    /// `STATX_DIOALIGN` offset alignment; at least 512, at most [`PAGE`]).
    align: u64,
    /// The active segment's bytes from the start of the block holding its end up to the
    /// end; `None` until read from the file (after opening or rotation).
    tail: Option<Vec<u8>>,
    /// Reused from batch to batch.
    buf: Option<AlignedBuf>,
}

struct Segment {
    file: File,
    seq: u64,
    /// Where the next record goes.
    end: u64,
    /// Preallocated size.
    size: u64,
}

/// One shard's log writer; see the module documentation.
pub struct ShardLog {
    dir: PathBuf,
    shard: u8,
    segment_size: u64,
    active: Segment,
    queue: Vec<Queued>,
    inflight: Option<Batch>,
    stats: LogStats,
    /// Spare header buffers.
    spare: Vec<Vec<u8>>,
    /// Raised once the active segment is half full, for whoever prepares the next one
    /// ([`prepare_spare`]); see [`ShardLog::want_spares`].
    spare_wanted: Option<Arc<AtomicBool>>,
    /// The flag was raised for the active segment.
    spare_asked: bool,
    /// Batches go as direct writes ([`ShardLog::use_direct_io`]).
    direct: Option<Direct>,
}

impl ShardLog {
    /// Opens the shard's log for appending at `tail` (segment `seq`, byte offset), or starts
    /// a new segment `seq` when `tail` is `None`. Recovery ([`super::recover`]) finds `tail`.
    pub fn open(dir: &Path, shard: u8, segment_size: u64, seq: u64, tail: Option<u64>) -> Result<Self, SpoolError> {
        let dir = dir.to_path_buf();
        std::fs::create_dir_all(&dir).map_err(|e| SpoolError::io("create directory", &dir, 0, e))?;
        // A segment whose creation a crash cut short was never used: keep its file for reuse.
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for p in entries.filter_map(|e| e.ok()).map(|e| e.path()) {
                if p.extension().is_some_and(|x| x == "tmp") {
                    let _ = std::fs::rename(&p, p.with_extension(FREE_EXT));
                }
            }
        }
        let active = match tail {
            Some(end) => {
                let path = segment_path(&dir, seq);
                let file = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(&path)
                    .map_err(|e| SpoolError::io("open segment", &path, 0, e))?;
                let size = file.metadata().map_err(|e| SpoolError::io("stat segment", &path, 0, e))?.len();
                // Whatever follows the last good record (a torn write) is marked as the end,
                // so that it is not reported again; the next batch overwrites it anyway.
                if end + END_MARK.len() as u64 <= size {
                    file.write_all_at(&END_MARK, end).map_err(|e| SpoolError::from_write(e, &path, end))?;
                }
                Segment { file, seq, end, size }
            }
            // Batches are not yet direct (`use_direct_io` comes after): through the cache.
            None => create_segment(&dir, shard, seq, segment_size, false)?,
        };
        Ok(ShardLog {
            dir,
            shard,
            segment_size,
            active,
            queue: Vec::new(),
            inflight: None,
            stats: LogStats::default(),
            spare: Vec::new(),
            spare_wanted: None,
            spare_asked: false,
            direct: None,
        })
    }

    /// Writes batches with direct I/O from now on (see the module documentation). Fails,
    /// leaving the log as it was, where the file system refuses `O_DIRECT` (tmpfs) or wants
    /// an alignment over 4 KiB.
    pub fn use_direct_io(&mut self) -> std::io::Result<()> {
        let path = segment_path(&self.dir, self.active.seq);
        let (file, align) = open_direct(&path)?;
        self.direct = Some(Direct { file, align, tail: None, buf: None });
        Ok(())
    }

    /// True when batches go as direct writes.
    pub fn is_direct(&self) -> bool {
        self.direct.is_some()
    }

    pub fn stats(&self) -> LogStats {
        self.stats
    }

    /// Raise `flag` when the active segment is half full, so that a spare for the next one
    /// can be written in time, off the shard.
    pub fn want_spares(&mut self, flag: Arc<AtomicBool>) {
        self.spare_wanted = Some(flag);
    }

    /// Queues a message; its outcome comes from [`ShardLog::finish_batch`] with `token`.
    pub fn append(&mut self, token: u64, req: NewMessage) {
        let mut header = self.spare.pop().unwrap_or_default();
        // The segment sequence is filled in when the batch is placed; encode with the
        // active one now and again if a rotation moves it.
        encode_message_header(self.active.seq, &req.envelope, &req.data, &mut header);
        let id = req.envelope.id;
        self.queue.push(Queued {
            token,
            sealed: self.active.seq,
            id,
            envelope: Some(req.envelope),
            header,
            data: req.data,
        });
    }

    /// Queues a state mark; it is durable when its completion comes back.
    pub fn append_mark(&mut self, token: u64, mark: &Mark) {
        let mut header = self.spare.pop().unwrap_or_default();
        header.clear();
        encode_mark(self.active.seq, mark, &mut header);
        self.queue.push(Queued {
            token,
            sealed: self.active.seq,
            id: mark.id,
            envelope: None,
            header,
            data: Vec::new(),
        });
    }

    /// The directory of this log's segments.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// True when records wait for a batch and none is in flight.
    pub fn wants_batch(&self) -> bool {
        self.inflight.is_none() && !self.queue.is_empty()
    }

    /// Bytes of the batch in flight, if any.
    pub fn inflight_len(&self) -> Option<u64> {
        self.inflight.as_ref().map(|b| b.len)
    }

    /// Takes the queued records into a batch at the end of the active segment, moving to a
    /// new segment first when they do not fit. Returns `None` when a batch is already in
    /// flight or nothing waits. On error (e.g. the disk is full when creating a segment) the
    /// queued records fail and are returned as completions.
    pub fn begin_batch(&mut self) -> Result<Option<&Batch>, Vec<Completion>> {
        if !self.wants_batch() {
            return Ok(None);
        }
        let first = rec_len(&self.queue[0]);
        if self.active.end + first > self.active.size && self.active.end > SEGMENT_HEADER_LEN as u64 {
            let seq = self.active.seq + 1;
            // Whole pages, so that direct I/O's padded writes stay inside the file.
            let size = self.segment_size.max(first + SEGMENT_HEADER_LEN as u64).next_multiple_of(PAGE as u64);
            let created = create_segment(&self.dir, self.shard, seq, size, self.direct.is_some()).and_then(|seg| {
                if let Some(d) = self.direct.as_mut() {
                    let path = segment_path(&self.dir, seq);
                    d.file = open_direct(&path).map_err(|e| SpoolError::io("open segment (O_DIRECT)", &path, 0, e))?.0;
                    d.tail = None;
                }
                Ok(seg)
            });
            match created {
                Ok(seg) => {
                    self.active = seg;
                    self.stats.segments_created += 1;
                    self.spare_asked = false;
                }
                Err(e) => {
                    let q = std::mem::take(&mut self.queue);
                    return Err(q
                        .into_iter()
                        .map(|r| Completion { token: r.token, result: Err(e.clone()), data: r.data })
                        .collect());
                }
            }
        }
        let seq = self.active.seq;
        let room = self.active.size.saturating_sub(self.active.end).max(first);
        let mut len = 0u64;
        let mut n = 0;
        for r in &self.queue {
            let l = rec_len(r);
            if n == MAX_BATCH || len + l > room {
                break;
            }
            len += l;
            n += 1;
        }
        let mut entries: Vec<Queued> = self.queue.drain(..n).collect();
        let mut iov = Vec::with_capacity(n * 2 + 1);
        for e in &mut entries {
            // Re-seal if the record was encoded for another segment.
            if e.sealed != seq {
                reseal(seq, e);
            }
            iov.push(libc::iovec { iov_base: e.header.as_ptr() as *mut _, iov_len: e.header.len() });
            if !e.data.is_empty() {
                iov.push(libc::iovec { iov_base: e.data.as_ptr() as *mut _, iov_len: e.data.len() });
            }
        }
        let records_len = len;
        let end_mark = self.active.end + len + END_MARK.len() as u64 <= self.active.size;
        if end_mark {
            iov.push(libc::iovec { iov_base: END_MARK.as_ptr() as *mut _, iov_len: END_MARK.len() });
            len += END_MARK.len() as u64;
        }
        let start = self.active.end;
        if self.direct.is_some() {
            return match self.stage_direct(entries, records_len, end_mark) {
                Ok(()) => Ok(self.inflight.as_ref()),
                Err((e, entries)) => Err(entries
                    .into_iter()
                    .map(|r| Completion { token: r.token, result: Err(e.clone()), data: r.data })
                    .collect()),
            };
        }
        self.inflight = Some(Batch {
            fd: self.active.file.as_raw_fd(),
            offset: start,
            len,
            direct: false,
            start,
            records_len,
            iov,
            entries,
            staged: None,
        });
        Ok(self.inflight.as_ref())
    }

    /// Direct I/O's batch: the block head, the records and the end mark copied into the
    /// aligned buffer, padded to the alignment.
    fn stage_direct(
        &mut self,
        entries: Vec<Queued>,
        records_len: u64,
        end_mark: bool,
    ) -> Result<(), (SpoolError, Vec<Queued>)> {
        let end = self.active.end;
        let d = self.direct.as_mut().expect("direct I/O on");
        let from = end - end % d.align;
        if d.tail.is_none() {
            let mut head = vec![0u8; (end - from) as usize];
            if let Err(e) = self.active.file.read_exact_at(&mut head, from) {
                return Err((
                    SpoolError::io("read segment", &segment_path(&self.dir, self.active.seq), from, e),
                    entries,
                ));
            }
            d.tail = Some(head);
        }
        let head = d.tail.as_deref().unwrap_or_default();
        let used = head.len() as u64 + records_len + if end_mark { END_MARK.len() as u64 } else { 0 };
        let padded = used.div_ceil(d.align) * d.align;
        let mut buf = d.buf.take().unwrap_or_default();
        let bytes = buf.bytes_mut(padded as usize);
        let mut at = 0;
        let mut put = |b: &[u8]| {
            bytes[at..at + b.len()].copy_from_slice(b);
            at += b.len();
        };
        put(head);
        for e in &entries {
            put(&e.header);
            put(&e.data);
        }
        if end_mark {
            put(&END_MARK);
        }
        bytes[at..].fill(0);
        let iov = vec![libc::iovec { iov_base: bytes.as_mut_ptr().cast(), iov_len: padded as usize }];
        self.inflight = Some(Batch {
            fd: d.file.as_raw_fd(),
            offset: from,
            len: padded,
            direct: true,
            start: end,
            records_len,
            iov,
            entries,
            staged: Some(buf),
        });
        Ok(())
    }

    /// The batch's write and sync finished with `result`. Returns one completion per record.
    pub fn finish_batch(&mut self, result: std::io::Result<()>) -> Vec<Completion> {
        let Some(mut batch) = self.inflight.take() else { return Vec::new() };
        let ok = result.is_ok();
        if let (Some(d), Some(mut buf)) = (self.direct.as_mut(), batch.staged.take()) {
            // The new end's block head, for the next batch (on failure the old one stands).
            if ok {
                let new_end = batch.start + batch.records_len;
                let from = (new_end - new_end % d.align - batch.offset) as usize;
                let to = (new_end - batch.offset) as usize;
                let tail = d.tail.get_or_insert_with(Vec::new);
                tail.clear();
                tail.extend_from_slice(&buf.bytes_mut(to)[from..]);
            }
            d.buf = Some(buf);
        }
        if ok {
            self.active.end += batch.records_len;
            if !self.spare_asked
                && self.active.end > self.active.size / 2
                && let Some(flag) = &self.spare_wanted
            {
                self.spare_asked = true;
                flag.store(true, Ordering::Relaxed);
            }
            self.stats.batches += 1;
            self.stats.records += batch.entries.len() as u64;
            self.stats.bytes += batch.records_len;
            self.stats.written += batch.len;
        }
        // On failure the end does not move: the next batch overwrites whatever part of this
        // one reached the file, and no session was told 250 for it.
        let err =
            result.err().map(|e| SpoolError::from_write(e, &segment_path(&self.dir, self.active.seq), batch.offset));
        let mut out = Vec::with_capacity(batch.entries.len());
        let mut offset = batch.start;
        for e in batch.entries {
            let location = Location {
                seq: e.sealed,
                record_offset: offset,
                content_offset: offset + e.header.len() as u64,
                content_len: e.data.len() as u64,
            };
            offset += (e.header.len() + e.data.len()) as u64;
            let mut header = e.header;
            header.clear();
            if self.spare.len() < 64 {
                self.spare.push(header);
            }
            out.push(Completion {
                token: e.token,
                result: match &err {
                    None => Ok(Stored { id: e.id, envelope: e.envelope, location }),
                    Some(err) => Err(err.clone()),
                },
                data: e.data,
            });
        }
        out
    }

    /// Writes everything queued with plain syscalls, and syncs it when `sync`; returns the
    /// completions.
    pub fn flush_sync(&mut self, sync: bool) -> Vec<Completion> {
        let mut done = Vec::new();
        while self.wants_batch() {
            match self.begin_batch() {
                Ok(Some(batch)) if batch.direct => {
                    let flags = if sync { libc::RWF_DSYNC } else { 0 };
                    let res = write_all_vectored_at(batch.fd, batch.iovecs(), batch.offset, batch.len, flags);
                    done.extend(self.finish_batch(res));
                }
                Ok(Some(batch)) => {
                    let res = write_all_vectored_at(batch.fd, batch.iovecs(), batch.offset, batch.len, 0)
                        .and_then(|_| if sync { fdatasync(batch.fd) } else { Ok(()) });
                    done.extend(self.finish_batch(res));
                }
                Ok(None) => break,
                Err(failed) => done.extend(failed),
            }
        }
        done
    }
}

fn rec_len(r: &Queued) -> u64 {
    (r.header.len() + r.data.len()) as u64
}

fn reseal(seq: u64, e: &mut Queued) {
    let crc = crc32c::crc32c_append(crc32c::crc32c(&seq.to_le_bytes()), &e.header[8..]);
    let crc = crc32c::crc32c_append(crc, &e.data);
    e.header[4..8].copy_from_slice(&crc.to_le_bytes());
    e.sealed = seq;
}

/// Creates segment `seq`: from a retired file of this directory when there is one, else a
/// new preallocated file; header written and synced under a temporary name, then renamed
/// into place and the directory synced, so that the segment exists, whole, before any
/// record in it is acknowledged.
fn create_segment(dir: &Path, shard: u8, seq: u64, size: u64, direct: bool) -> Result<Segment, SpoolError> {
    let path = segment_path(dir, seq);
    let tmp = path.with_extension("tmp");
    let reused = take_free(dir).and_then(|free| std::fs::rename(&free, &tmp).ok());
    let file = match reused {
        Some(()) => OpenOptions::new().read(true).write(true).open(&tmp),
        None => OpenOptions::new().read(true).write(true).create(true).truncate(true).mode(0o600).open(&tmp),
    }
    .map_err(|e| SpoolError::io("create segment", &tmp, 0, e))?;
    let fail = |e: std::io::Error| {
        let _ = std::fs::remove_file(&tmp);
        SpoolError::from_write(e, &path, 0)
    };
    // Written through once (zeros), so that appends neither change the file size nor
    // convert unwritten extents: each fdatasync then flushes data only. A reused file
    // keeps its size and its written blocks.
    let have = file.metadata().map_err(fail)?.len();
    if have < size {
        fill_zeros(&file, direct.then_some(tmp.as_path()), have, size).map_err(fail)?;
    }
    let created_ms = crate::util::time::Now::system().unix_ms;
    let mut head = [0u8; SEGMENT_HEADER_LEN + END_MARK.len()];
    head[..SEGMENT_HEADER_LEN].copy_from_slice(&SegmentHeader { shard: shard as u32, seq, created_ms }.encode());
    file.write_all_at(&head, 0).map_err(fail)?;
    file.sync_all().map_err(fail)?;
    std::fs::rename(&tmp, &path).map_err(fail)?;
    File::open(dir).and_then(|d| d.sync_all()).map_err(|e| SpoolError::io("sync directory", dir, 0, e))?;
    Ok(Segment { file, seq, end: SEGMENT_HEADER_LEN as u64, size: have.max(size) })
}

/// Writes zeros over `from..to` of `file` (the blocks become written, not just allocated).
///
/// With `direct` (the file's path, given when batches go by direct I/O: `[spool]
/// direct_io = false` keeps every write of the spool buffered) the aligned part goes by
/// direct I/O, the path opened again with `O_DIRECT`, where the file system takes it: the device is sent zeros from one buffer, instead of a whole segment
/// copied into the page cache, written back by a kernel worker and left there to be
/// evicted (buffered, 3 µs of the machine's CPU per message a 64 MiB segment holds, more
/// than the shard's own work on a message). The ragged ends, and every byte where direct
/// I/O is refused (tmpfs), are written through the page cache as before.
fn fill_zeros(file: &File, direct: Option<&Path>, from: u64, to: u64) -> std::io::Result<()> {
    const CHUNK: usize = 1 << 20;
    let zeros = vec![0u8; CHUNK + PAGE];
    // A page-aligned window of the buffer: direct I/O wants its memory aligned too.
    let zeros = &zeros[zeros.as_ptr().align_offset(PAGE)..][..CHUNK];
    let mut direct = direct.and_then(|p| open_direct(p).ok());
    let mut at = from;
    while at < to {
        let n = ((to - at) as usize).min(CHUNK);
        if let Some((d, align)) = &direct {
            let align = *align as usize;
            let whole = n - n % align;
            if at.is_multiple_of(align as u64) && whole > 0 {
                match d.write_all_at(&zeros[..whole], at) {
                    Ok(()) => {
                        at += whole as u64;
                        continue;
                    }
                    // Refused after all (EINVAL): the rest through the page cache.
                    Err(e) if e.kind() == std::io::ErrorKind::InvalidInput => direct = None,
                    Err(e) => return Err(e),
                }
            }
        }
        // Up to the next aligned offset (a ragged start), or the ragged end.
        let n = match &direct {
            Some((_, align)) => n.min((*align - at % *align) as usize),
            None => n,
        };
        file.write_all_at(&zeros[..n], at)?;
        at += n as u64;
    }
    Ok(())
}

/// Prepares a spare segment file in `dir` when it has none: `size` bytes of zeros, synced,
/// then named `*.free`, for the shard's next segment. Returns whether it made one. Run off
/// the shards (it writes a whole segment), when the shard's log asks
/// ([`ShardLog::want_spares`]), so that its next rotation finds a spare ready.
pub fn prepare_spare(dir: &Path, size: u64, direct: bool) -> std::io::Result<bool> {
    if take_free(dir).is_some() || !dir.exists() {
        return Ok(false);
    }
    let stamp = crate::util::time::Now::system().unix_ms;
    let tmp = dir.join(format!("spare-{stamp}.tmp"));
    let r = (|| {
        let file = OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)?;
        fill_zeros(&file, direct.then_some(tmp.as_path()), 0, size)?;
        file.sync_data()?;
        std::fs::rename(&tmp, tmp.with_extension(FREE_EXT))
    })();
    if r.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    r.map(|()| true)
}

/// A retired segment file of `dir`, if any.
fn take_free(dir: &Path) -> Option<PathBuf> {
    std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == FREE_EXT))
}

/// The extension of a retired segment file, kept for reuse.
pub(crate) const FREE_EXT: &str = "free";

/// Opens `path` again for direct writes; the alignment its file system wants.
fn open_direct(path: &Path) -> std::io::Result<(File, u64)> {
    let file = OpenOptions::new().write(true).custom_flags(libc::O_DIRECT).open(path)?;
    let align = dio_align(&file).unwrap_or(PAGE as u64);
    if align == 0 || align > PAGE as u64 || !align.is_power_of_two() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::Unsupported,
            format!("direct I/O alignment {align} (this log handles 512 to {PAGE})"),
        ));
    }
    Ok((file, align.max(512)))
}

/// The offset alignment direct I/O on `file` needs (`statx` `STATX_DIOALIGN`, Linux 6.1);
/// `None` when the kernel or file system does not say.
fn dio_align(file: &File) -> Option<u64> {
    let mut stx = std::mem::MaybeUninit::<libc::statx>::zeroed();
    // SAFETY: statx writes at most one `struct statx` into `stx`, a live, zeroed local; the
    // path is the empty C string with AT_EMPTY_PATH, so it reads `file`'s descriptor only.
    let r = unsafe {
        libc::statx(file.as_raw_fd(), c"".as_ptr(), libc::AT_EMPTY_PATH, libc::STATX_DIOALIGN, stx.as_mut_ptr())
    };
    if r != 0 {
        return None;
    }
    // SAFETY: zero-initialized and filled by a successful statx: every field is an integer.
    let stx = unsafe { stx.assume_init() };
    (stx.stx_mask & libc::STATX_DIOALIGN != 0 && stx.stx_dio_offset_align != 0)
        .then_some(stx.stx_dio_offset_align.max(stx.stx_dio_mem_align) as u64)
}

fn write_all_vectored_at(fd: i32, iov: &[libc::iovec], offset: u64, len: u64, flags: i32) -> std::io::Result<()> {
    // SAFETY: pwritev2 only reads: `iov` is a live slice (at most 2 * MAX_BATCH + 1 = 1023 <= IOV_MAX entries, so the
    // count fits in i32), and each entry points at a header or data Vec owned by the caller's Batch, at its staging
    // buffer, or at the static END_MARK, all borrowed for the call; `fd` is the active segment's file, open while the
    // ShardLog lives.
    let r = unsafe { libc::pwritev2(fd, iov.as_ptr(), iov.len() as i32, offset as libc::off_t, flags) };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    if r as u64 != len {
        // Short writes on a regular file mean trouble (space, quota): fail the batch.
        return Err(std::io::Error::new(std::io::ErrorKind::WriteZero, "short write to segment"));
    }
    Ok(())
}

fn fdatasync(fd: i32) -> std::io::Result<()> {
    // SAFETY: fdatasync(2) takes no pointers; `fd` is the active segment's descriptor (`batch.fd`), whose File the
    // ShardLog keeps open across the call.
    if unsafe { libc::fdatasync(fd) } != 0 { Err(std::io::Error::last_os_error()) } else { Ok(()) }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Zeros from a ragged start to a ragged end, what was before left alone: by direct
    /// I/O in the middle where the file system takes it (ext4 under the temporary
    /// directory), through the page cache where it does not (tmpfs).
    #[test]
    fn fill_zeros_with_ragged_ends_on_both_kinds_of_file_system() {
        let dirs = [Some(tempfile::tempdir().unwrap()), tempfile::tempdir_in("/dev/shm").ok()];
        for dir in dirs.iter().flatten() {
            let path = dir.path().join("seg");
            std::fs::write(&path, vec![0xA5u8; 1000]).unwrap();
            let file = OpenOptions::new().read(true).write(true).open(&path).unwrap();
            let to = 3 * (1 << 20) + 5 * PAGE as u64 + 77;
            fill_zeros(&file, Some(&path), 1000, to).unwrap();
            let back = std::fs::read(&path).unwrap();
            assert_eq!(back.len() as u64, to, "{}", path.display());
            assert!(back[..1000].iter().all(|&b| b == 0xA5), "the bytes before are kept");
            assert!(back[1000..].iter().all(|&b| b == 0), "zeros to the end");
        }
    }
}
