//! Spool tests on real files with real fsync.

use super::*;
use crate::spool::NewMessage;

fn request(id: u64, body: &str) -> NewMessage {
    let mut envelope = Envelope::new(QueueId(id));
    envelope.received_ms = 1_795_321_697_000 + id;
    envelope.from = "a@remote.example".into();
    envelope.rcpts.push(Recipient { address: format!("u{id}@example.test"), notify: None, orcpt: None });
    NewMessage { envelope, data: format!("Message-ID: <{id}@x>\r\n\r\n{body}\r\n").into_bytes() }
}

fn open_fresh(spool: &Path, seg: u64) -> ShardLog {
    ShardLog::open(&shard_dir(spool, 0), 0, seg, 1, None).unwrap()
}

fn reopen(spool: &Path, seg: u64) -> ShardLog {
    let r = recover(spool).unwrap();
    let t = r.tails[&0];
    ShardLog::open(&shard_dir(spool, 0), 0, seg, t.seq, Some(t.end)).unwrap()
}

#[test]
fn append_sync_recover() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open_fresh(dir.path(), 1 << 20);
    for i in 1..=10 {
        log.append(i, request(i, "hello"));
    }
    let done = log.flush_sync(true);
    assert_eq!(done.len(), 10);
    assert!(done.iter().all(|c| c.result.is_ok()));
    assert_eq!(log.stats().batches, 1, "one batch, one fdatasync");
    let r = recover(dir.path()).unwrap();
    assert_eq!(r.messages.len(), 10);
    assert_eq!(r.max_id, QueueId(10));
    let m = &r.messages[3];
    assert_eq!(m.envelope.rcpts[0].address, "u4@example.test");
    assert_eq!(m.read_content().unwrap(), b"Message-ID: <4@x>\r\n\r\nhello\r\n");
    assert_eq!(m.message_id.as_deref(), Some("<4@x>"));
    assert!(r.notes.is_empty(), "{:?}", r.notes);
}

/// A record cut short (the crash came before its fdatasync) is dropped by recovery, the
/// writer resumes over it, and nothing acknowledged is lost.
#[test]
fn torn_tail_is_cut_and_overwritten() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open_fresh(dir.path(), 1 << 20);
    for i in 1..=3 {
        log.append(i, request(i, "durable"));
    }
    log.flush_sync(true);
    let tail = recover(dir.path()).unwrap().tails[&0];
    drop(log);
    // Simulate a torn write of a fourth record: half of it reaches the file.
    let mut hdr = Vec::new();
    let req = request(4, "torn");
    record::encode_message_header(1, &req.envelope, &req.data, &mut hdr);
    let mut full = hdr.clone();
    full.extend_from_slice(&req.data);
    let path = segment_path(&shard_dir(dir.path(), 0), 1);
    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    for cut in [1, 8, 20, full.len() - 1] {
        f.write_all_at(&full[..cut], tail.end).unwrap();
        let r = recover(dir.path()).unwrap();
        assert_eq!(r.messages.len(), 3, "cut at {cut}");
        assert_eq!(r.tails[&0], tail);
        assert_eq!(r.notes.len(), 1, "{:?}", r.notes);
    }
    // The writer resumes at the tail; new records replace the torn bytes.
    let mut log = reopen(dir.path(), 1 << 20);
    log.append(5, request(5, "after restart"));
    assert!(log.flush_sync(true)[0].result.is_ok());
    let r = recover(dir.path()).unwrap();
    let ids: Vec<u64> = r.messages.iter().map(|m| m.envelope.id.0).collect();
    assert_eq!(ids, [1, 2, 3, 5]);
}

#[test]
fn rotation_across_segments() {
    let dir = tempfile::tempdir().unwrap();
    let body = "x".repeat(1000);
    let mut log = open_fresh(dir.path(), 8 * 1024);
    for i in 1..=40 {
        log.append(i, request(i, &body));
        if i % 3 == 0 {
            assert!(log.flush_sync(true).iter().all(|c| c.result.is_ok()));
        }
    }
    assert!(log.flush_sync(true).iter().all(|c| c.result.is_ok()));
    assert!(log.stats().segments_created >= 4);
    let r = recover(dir.path()).unwrap();
    assert_eq!(r.messages.len(), 40);
    assert!(r.messages.iter().all(|m| m.read_content().unwrap().ends_with(b"x\r\n")));
    // A message larger than a segment gets a segment of its own.
    let mut log = reopen(dir.path(), 8 * 1024);
    log.append(41, request(41, &"y".repeat(20_000)));
    assert!(log.flush_sync(true)[0].result.is_ok());
    assert_eq!(recover(dir.path()).unwrap().messages.len(), 41);
}

/// A failed batch tells every session of it to try again and moves nothing.
#[test]
fn failed_batch_fails_its_records_only() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open_fresh(dir.path(), 1 << 20);
    log.append(1, request(1, "one"));
    let end_before = {
        let b = log.begin_batch().ok().flatten().unwrap();
        b.offset
    };
    let done = log.finish_batch(Err(std::io::Error::from_raw_os_error(libc::EIO)));
    assert_eq!(done.len(), 1);
    let err = done[0].result.as_ref().unwrap_err();
    assert_eq!(err.smtp_reply().code, 451);
    assert_eq!(
        SpoolError::from_write(std::io::Error::from_raw_os_error(libc::ENOSPC), dir.path(), 0).smtp_reply().code,
        452
    );
    log.append(2, request(2, "two"));
    let b = log.begin_batch().ok().flatten().unwrap();
    assert_eq!(b.offset, end_before);
    let _ = log.finish_batch(Ok(()));
    assert_eq!(recover(dir.path()).unwrap().messages.len(), 0, "the batch was never written");
}

#[test]
fn marks_finish_messages() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open_fresh(dir.path(), 1 << 20);
    log.append(1, request(1, "a"));
    log.append(2, request(2, "b"));
    log.flush_sync(true);
    let tail = recover(dir.path()).unwrap().tails[&0];
    let mut b = Vec::new();
    record::encode_mark(
        1,
        &Mark {
            id: QueueId(1),
            rcpt: Some(0),
            status: MarkStatus::Delivered,
            attempts: 1,
            next_attempt_ms: 0,
            text: "250 ok".into(),
        },
        &mut b,
    );
    record::encode_mark(
        1,
        &Mark {
            id: QueueId(2),
            rcpt: Some(0),
            status: MarkStatus::Deferred,
            attempts: 1,
            next_attempt_ms: 9,
            text: "451".into(),
        },
        &mut b,
    );
    let path = segment_path(&shard_dir(dir.path(), 0), 1);
    std::fs::OpenOptions::new().write(true).open(&path).unwrap().write_all_at(&b, tail.end).unwrap();
    let r = recover(dir.path()).unwrap();
    assert_eq!(r.messages.len(), 1);
    assert_eq!(r.messages[0].envelope.id, QueueId(2));
    assert_eq!(r.finished, 1);
    assert_eq!(r.messages[0].marks[0].attempts, 1);
}

#[test]
fn header_values() {
    let head = b"Received: from x\r\n\tby y\r\nMessage-ID:\r\n <abc@d>\r\nSubject: s\r\n\r\nMessage-ID: <body@x>\r\n";
    assert_eq!(header_value(head, "Message-Id").as_deref(), Some("<abc@d>"));
    assert_eq!(header_value(head, "received").as_deref(), Some("from x by y"));
    assert_eq!(header_value(head, "To"), None);
}

/// A retired segment file becomes the shard's next segment: its blocks are reused, and the
/// records left over in it never come back (their CRCs are seeded with the old sequence),
/// not even as a torn tail in the notes.
#[test]
fn retired_segment_is_reused_without_resurrecting_its_records() {
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path();
    let mut log = open_fresh(spool, 64 << 10);
    for i in 1..=20 {
        log.append(i, request(i, &"old ".repeat(200)));
    }
    assert!(log.flush_sync(true).iter().all(|c| c.result.is_ok()));
    drop(log);
    retire_segment(spool, 0, 1).unwrap();
    sync_dir(spool, 0).unwrap();
    let free = shard_dir(spool, 0).join(format!("{:016x}.free", 1));
    assert!(free.exists());
    let mut log = ShardLog::open(&shard_dir(spool, 0), 0, 64 << 10, 2, None).unwrap();
    assert!(!free.exists(), "the free file was taken");
    log.append(21, request(21, "new"));
    assert!(log.flush_sync(true).iter().all(|c| c.result.is_ok()));
    let r = recover(spool).unwrap();
    assert_eq!(r.messages.iter().map(|m| m.envelope.id).collect::<Vec<_>>(), vec![QueueId(21)]);
    assert!(r.notes.is_empty(), "{:?}", r.notes);
    assert_eq!(r.tails[&0].seq, 2);
    // The writer resumes after the new record, over the stale ones.
    drop(log);
    let mut log = reopen(spool, 64 << 10);
    log.append(22, request(22, "newer"));
    log.flush_sync(true);
    let r = recover(spool).unwrap();
    assert_eq!(r.messages.len(), 2);
    assert!(r.notes.is_empty(), "{:?}", r.notes);
}

/// Ids are minted above every id named on disk, marks included: a mark left over from a
/// reclaimed message can never apply to a new message.
#[test]
fn max_id_counts_leftover_marks() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = ShardLog::open(&shard_dir(dir.path(), CONTROL_SHARD), CONTROL_SHARD, 1 << 20, 1, None).unwrap();
    let m = Mark {
        id: QueueId(99),
        rcpt: Some(0),
        status: MarkStatus::Delivered,
        attempts: 1,
        next_attempt_ms: 0,
        text: "250".into(),
    };
    log.append_mark(0, &m);
    log.flush_sync(true);
    let r = recover(dir.path()).unwrap();
    assert!(r.messages.is_empty());
    assert_eq!(r.max_id, QueueId(99));
}

/// A crash while a segment was being created leaves a `.tmp` file, never a `.seg` without
/// a header: recovery ignores it and the next open keeps it for reuse.
#[test]
fn half_created_segment_is_ignored_and_reused() {
    let dir = tempfile::tempdir().unwrap();
    let sd = shard_dir(dir.path(), 0);
    std::fs::create_dir_all(&sd).unwrap();
    std::fs::write(sd.join(format!("{:016x}.tmp", 1)), [0u8; 100]).unwrap();
    let r = recover(dir.path()).unwrap();
    assert!(r.tails.is_empty() && r.notes.is_empty());
    let mut log = ShardLog::open(&sd, 0, 64 << 10, 1, None).unwrap();
    log.append(1, request(1, "x"));
    log.flush_sync(true);
    let names: Vec<String> =
        std::fs::read_dir(&sd).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    assert_eq!(names, vec![format!("{:016x}.seg", 1)]);
    assert_eq!(recover(dir.path()).unwrap().messages.len(), 1);
}

/// The log asks for a spare once its active segment is half full, once per segment; the
/// spare is a written-through file of the segment size that the next rotation takes.
#[test]
fn spare_asked_at_half_and_taken_at_rotation() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let dir = tempfile::tempdir().unwrap();
    let sd = shard_dir(dir.path(), 0);
    let flag = std::sync::Arc::new(AtomicBool::new(false));
    let mut log = ShardLog::open(&sd, 0, 64 << 10, 1, None).unwrap();
    log.want_spares(flag.clone());
    let mut id = 0;
    let mut write = |log: &mut ShardLog, n: usize| {
        for _ in 0..n {
            id += 1;
            log.append(id, request(id, &"x".repeat(1000)));
            log.flush_sync(true);
        }
    };
    write(&mut log, 20);
    assert!(!flag.load(Ordering::Relaxed), "20 KiB of 64: not yet");
    write(&mut log, 20);
    assert!(flag.swap(false, Ordering::Relaxed), "past half");
    assert!(log::prepare_spare(&sd, 64 << 10, true).unwrap());
    assert!(!log::prepare_spare(&sd, 64 << 10, true).unwrap(), "one spare is enough");
    let spare: Vec<_> = std::fs::read_dir(&sd)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "free"))
        .collect();
    assert_eq!(spare.len(), 1);
    assert_eq!(std::fs::metadata(&spare[0]).unwrap().len(), 64 << 10);
    write(&mut log, 10);
    assert!(!flag.load(Ordering::Relaxed), "asked once per segment");
    // The rotation takes the spare, and the new segment asks again at its half.
    write(&mut log, 30);
    assert!(!spare[0].exists());
    assert_eq!(recover(dir.path()).unwrap().tails[&0].seq, 2);
    write(&mut log, 20);
    assert!(flag.load(Ordering::Relaxed));
    assert_eq!(recover(dir.path()).unwrap().messages.len(), 100);
}

/// The three replays agree: `recover` keeps whole messages, `recover_listing` places and
/// latest marks (the envelope read back one at a time), `recover_queue` what the queue
/// needs. A finished message is in none of them.
#[test]
fn the_replays_agree() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open_fresh(dir.path(), 1 << 20);
    for i in 1..=4 {
        log.append(i, request(i, "hello"));
    }
    let mark = |id, status, attempts, text: &str| Mark {
        id: QueueId(id),
        rcpt: Some(0),
        status,
        attempts,
        next_attempt_ms: if status == MarkStatus::Deferred { 1_795_400_000_000 } else { 0 },
        text: text.into(),
    };
    log.append_mark(0, &mark(1, MarkStatus::Deferred, 1, "451 4.3.0 first"));
    log.append_mark(0, &mark(1, MarkStatus::Deferred, 2, "451 4.3.0 second"));
    log.append_mark(0, &mark(2, MarkStatus::Delivered, 1, "250 ok"));
    log.append_mark(0, &mark(3, MarkStatus::Failed, 1, "550 no"));
    assert!(log.flush_sync(true).iter().all(|c| c.result.is_ok()));
    let whole = recover(dir.path()).unwrap();
    let listing = recover_listing(dir.path()).unwrap();
    let queue = recover_queue(dir.path()).unwrap();
    let ids = |v: Vec<QueueId>| v.into_iter().map(|i| i.0).collect::<Vec<_>>();
    assert_eq!(ids(whole.messages.iter().map(|m| m.envelope.id).collect()), [1, 4]);
    assert_eq!(ids(listing.messages.iter().map(|m| m.id).collect()), [1, 4]);
    assert_eq!(ids(queue.messages.iter().map(|m| m.id).collect()), [1, 4]);
    assert_eq!((whole.finished, listing.finished, queue.finished), (2, 2, 2));
    let mut reader = RecordReader::new(dir.path());
    for (w, l) in whole.messages.iter().zip(&listing.messages) {
        let loaded = l.load(&mut reader).unwrap();
        assert_eq!(loaded.envelope, w.envelope);
        assert_eq!((loaded.content_offset, loaded.content_len), (w.content_offset, w.content_len));
        assert_eq!(loaded.message_id, w.message_id);
        assert_eq!(loaded.read_content().unwrap(), w.read_content().unwrap());
        // Only the latest mark per recipient is kept: enough for every status shown.
        assert_eq!(loaded.latest_marks(), w.latest_marks());
        assert_eq!(loaded.attempts(), w.attempts());
    }
    let q1 = &queue.messages[0];
    assert_eq!((q1.attempts, q1.latest[0]), (2, Some((MarkStatus::Deferred, 1_795_400_000_000))));
}

/// Direct I/O: batches of every size (a block's worth, less, several blocks, a record
/// larger than a block) rewrite the block holding the log's end each time, cross into new
/// segments, and survive a reopen (the block head read back from the file); every record
/// comes back whole and in order.
#[test]
fn direct_io_batches_recover_whole() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open_fresh(dir.path(), 64 << 10);
    log.use_direct_io().expect("O_DIRECT on the test's file system");
    assert!(log.is_direct());
    let body = |i: u64| "x".repeat(((i * 997) % 9000) as usize);
    let mut id = 0;
    for batch in [1u64, 2, 5, 1, 17, 3, 40, 1, 9] {
        for _ in 0..batch {
            id += 1;
            log.append(id, request(id, &body(id)));
        }
        let done = log.flush_sync(true);
        assert_eq!(done.len() as u64, batch);
        assert!(done.iter().all(|c| c.result.is_ok()), "{:?}", done.iter().find(|c| c.result.is_err()));
    }
    assert!(log.stats().segments_created > 0, "crossed into new segments");
    drop(log);
    let mut log = reopen(dir.path(), 64 << 10);
    log.use_direct_io().unwrap();
    for _ in 0..7 {
        id += 1;
        log.append(id, request(id, &body(id)));
    }
    assert!(log.flush_sync(true).iter().all(|c| c.result.is_ok()));
    let r = recover(dir.path()).unwrap();
    assert!(r.notes.is_empty(), "{:?}", r.notes);
    assert_eq!(r.messages.len() as u64, id);
    let mut got: Vec<_> = r.messages.iter().map(|m| m.envelope.id.0).collect();
    got.sort_unstable();
    assert_eq!(got, (1..=id).collect::<Vec<_>>());
    for m in &r.messages {
        let i = m.envelope.id.0;
        assert_eq!(m.read_content().unwrap(), format!("Message-ID: <{i}@x>\r\n\r\n{}\r\n", body(i)).into_bytes());
    }
}

/// Direct I/O's torn final block: a batch that rewrote the block holding the log's end
/// reached the disk in part (whole sectors, some new, some old). The acknowledged records
/// in that block are intact either way (their bytes are the same in both); the new
/// record's part is cut by recovery, and the writer, reopened, writes that block again from
/// its start over the torn bytes.
#[test]
fn direct_io_survives_a_torn_final_block() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open_fresh(dir.path(), 1 << 20);
    log.use_direct_io().unwrap();
    for i in 1..=3 {
        log.append(i, request(i, &"durable ".repeat(40)));
    }
    assert!(log.flush_sync(true).iter().all(|c| c.result.is_ok()));
    let tail = recover(dir.path()).unwrap().tails[&0];
    drop(log);
    // What the fourth batch would have written from the block holding the end: the block's
    // head (unchanged), then record 4, then zeros.
    let path = segment_path(&shard_dir(dir.path(), 0), 1);
    let from = tail.end - tail.end % 512;
    let mut block = vec![0u8; (tail.end - from) as usize];
    std::fs::File::open(&path).unwrap().read_exact_at(&mut block, from).unwrap();
    let req = request(4, &"torn ".repeat(300));
    let mut rec = Vec::new();
    record::encode_message_header(1, &req.envelope, &req.data, &mut rec);
    rec.extend_from_slice(&req.data);
    block.extend_from_slice(&rec);
    block.resize(block.len().div_ceil(512) * 512, 0);
    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    // Only the first k sectors arrived (k = 1: the old block head again and the start of
    // record 4), then the first and the third only.
    for sectors in [vec![0], vec![0, 1], vec![0, 2]] {
        for s in sectors {
            let at = s * 512;
            if at < block.len() {
                f.write_all_at(&block[at..(at + 512).min(block.len())], from + at as u64).unwrap();
            }
        }
        let r = recover(dir.path()).unwrap();
        let mut ids: Vec<u64> = r.messages.iter().map(|m| m.envelope.id.0).collect();
        ids.sort_unstable();
        assert_eq!(ids, [1, 2, 3], "the acknowledged records, whole; the torn one cut");
        assert_eq!(r.tails[&0], tail);
        for m in &r.messages {
            assert_eq!(m.read_content().unwrap(), request(m.envelope.id.0, &"durable ".repeat(40)).data);
        }
    }
    let mut log = reopen(dir.path(), 1 << 20);
    log.use_direct_io().unwrap();
    log.append(5, request(5, "after restart"));
    assert!(log.flush_sync(true)[0].result.is_ok());
    let r = recover(dir.path()).unwrap();
    let mut ids: Vec<u64> = r.messages.iter().map(|m| m.envelope.id.0).collect();
    ids.sort_unstable();
    assert_eq!(ids, [1, 2, 3, 5]);
    assert!(r.notes.is_empty(), "the torn bytes were overwritten: {:?}", r.notes);
}
