//! The spool's group commit on real files with real fdatasync: one batch of eight 2 KiB
//! records, written with one `pwritev`-sized write and synced with one `fdatasync`:
//!
//! - `fallocated`: into a file preallocated with `fallocate` (unwritten extents: each sync
//!   also commits their conversion to "written", a journal transaction on ext4);
//! - `written`: into a file whose blocks were written before (zeros, or an earlier segment);
//! - `shard_log`: through [`ShardLog`] itself (append + `flush_sync`), in a segment as the
//!   spool creates them.
//!
//! This is the measurement behind writing segments through and reusing retired ones
//! (docs/decisions/005-segment-reuse.md).
//!
//! Run: `cargo bench --bench spool` (files go under `$RINGMX_BENCH_DIR`, default the system
//! temporary directory: point it at the disk the spool will live on).

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use ringmx::spool::NewMessage;
use ringmx::spool::{Envelope, QueueId, Recipient, ShardLog, shard_dir};
use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;

/// Large enough that a whole run stays in one file (no rotation in the measurement).
const SIZE: u64 = 1 << 30;
const BATCH: u64 = 8;
const RECORD: usize = 2048;

fn request(id: u64) -> NewMessage {
    let mut envelope = Envelope::new(QueueId(id));
    envelope.from = "sender@example.org".into();
    envelope.rcpts.push(Recipient { address: "rcpt@example.test".into(), notify: None, orcpt: None });
    NewMessage { envelope, data: vec![b'x'; RECORD] }
}

fn raw_file(dir: &std::path::Path, written: bool) -> File {
    let f = OpenOptions::new().read(true).write(true).create(true).truncate(true).open(dir.join("f")).unwrap();
    if written {
        let zeros = vec![0u8; 1 << 20];
        for i in 0..SIZE >> 20 {
            f.write_all_at(&zeros, i << 20).unwrap();
        }
    } else {
        // SAFETY: fallocate(2) takes no memory; `f` is the open file created above.
        assert_eq!(unsafe { libc::fallocate(f.as_raw_fd(), 0, 0, SIZE as libc::off_t) }, 0);
    }
    f.sync_all().unwrap();
    f
}

fn group_commit(c: &mut Criterion) {
    let base = std::env::var_os("RINGMX_BENCH_DIR").map(std::path::PathBuf::from).unwrap_or_else(std::env::temp_dir);
    let mut g = c.benchmark_group("spool_batch_fdatasync");
    g.throughput(Throughput::Elements(BATCH));
    g.sample_size(30);
    let batch = vec![b'r'; RECORD * BATCH as usize];
    for (name, written) in [("fallocated", false), ("written", true)] {
        let dir = tempfile::tempdir_in(&base).unwrap();
        let f = raw_file(dir.path(), written);
        let mut at = 0u64;
        g.bench_function(name, |b| {
            b.iter(|| {
                f.write_all_at(&batch, at).unwrap();
                f.sync_data().unwrap();
                at = (at + batch.len() as u64) % (SIZE - batch.len() as u64);
            })
        });
    }
    let dir = tempfile::tempdir_in(&base).unwrap();
    let mut log = ShardLog::open(&shard_dir(dir.path(), 0), 0, SIZE, 1, None).unwrap();
    let mut id = 0;
    g.bench_function("shard_log", |b| {
        b.iter(|| {
            for _ in 0..BATCH {
                id += 1;
                log.append(id, request(id));
            }
            assert!(log.flush_sync(true).iter().all(|c| c.result.is_ok()));
        })
    });
    g.finish();
}

criterion_group!(benches, group_commit);
criterion_main!(benches);
