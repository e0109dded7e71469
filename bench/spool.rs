//! The spool's group commit on real files with real fdatasync: one batch of eight 2 KiB
//! messages, written and synced, into a freshly preallocated segment (each sync also
//! converts the extents it wrote from "unwritten") and into a reused one (blocks already
//! written: the sync flushes data only). This is the measurement behind keeping retired
//! segments as `*.free` files (docs/decisions/005-segment-reuse.md).
//!
//! Run: `cargo bench --bench spool` (the spool goes under `$RINGMX_BENCH_DIR`, default the
//! system temporary directory: point it at the disk the spool will live on).

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use ringmx::session::SpoolRequest;
use ringmx::spool::{Envelope, QueueId, Recipient, ShardLog, retire_segment, shard_dir, sync_dir};
use std::path::Path;

/// Large enough that a whole run stays in one segment (no rotation in the measurement).
const SEGMENT: u64 = 1 << 30;
const BATCH: u64 = 8;

fn request(id: u64) -> SpoolRequest {
    let mut envelope = Envelope::new(QueueId(id));
    envelope.from = "sender@example.org".into();
    envelope.rcpts.push(Recipient { address: "rcpt@example.test".into(), notify: None, orcpt: None });
    SpoolRequest { envelope, data: vec![b'x'; 2048] }
}

/// A log in `spool` whose first segment is either fresh or a retired, fully written file.
fn log(spool: &Path, reused: bool) -> ShardLog {
    let dir = shard_dir(spool, 0);
    if reused {
        let mut first = ShardLog::open(&dir, 0, SEGMENT, 1, None).unwrap();
        // Fill the whole segment once, as a long-running server would have.
        let mut id = 0;
        while id * 2200 < SEGMENT - (1 << 20) {
            for _ in 0..64 {
                id += 1;
                first.append(id, request(id));
            }
            first.flush_sync(false);
        }
        first.flush_sync(true);
        drop(first);
        retire_segment(spool, 0, 1).unwrap();
        sync_dir(spool, 0).unwrap();
    }
    ShardLog::open(&dir, 0, SEGMENT, 2, None).unwrap()
}

fn group_commit(c: &mut Criterion) {
    let base = std::env::var_os("RINGMX_BENCH_DIR").map(std::path::PathBuf::from).unwrap_or_else(std::env::temp_dir);
    let mut g = c.benchmark_group("spool_batch_fdatasync");
    g.throughput(Throughput::Elements(BATCH));
    g.sample_size(30);
    for (name, reused) in [("fresh_segment", false), ("reused_segment", true)] {
        let dir = tempfile::tempdir_in(&base).unwrap();
        let mut log = log(dir.path(), reused);
        let mut id = 1 << 40;
        g.bench_function(name, |b| {
            b.iter(|| {
                for _ in 0..BATCH {
                    id += 1;
                    log.append(id, request(id));
                }
                assert!(log.flush_sync(true).iter().all(|c| c.result.is_ok()));
            })
        });
    }
    g.finish();
}

criterion_group!(benches, group_commit);
criterion_main!(benches);
