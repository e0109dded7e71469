//! Criterion benchmarks of the hot path's pure parts: the command parser, the DATA scanner
//! (GB/s on a 1 MiB body with dot-stuffed lines) and a whole session transaction in memory.
//!
//! Run: `cargo bench --bench wire`.

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use ringmx::directory::{Directory, DirectoryData};
use ringmx::session::{Action, Session, SessionConfig};
use ringmx::spool::{IdGen, QueueId};
use ringmx::util::time::Now;
use ringmx::wire::{BareLinePolicy, DataScanner, parse_command};
use std::cell::RefCell;
use std::hint::black_box;
use std::rc::Rc;
use std::sync::Arc;

const COMMANDS: &[&[u8]] = &[
    b"EHLO client.example.org",
    b"MAIL FROM:<sender.name@example.org> SIZE=10240 BODY=8BITMIME",
    b"RCPT TO:<recipient@example.test> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;recipient@example.test",
    b"RCPT TO:<\"quoted local\"@example.test>",
    b"DATA",
    b"BDAT 65536 LAST",
    b"RSET",
    b"QUIT",
];

/// A 1 MiB body of 76-byte lines, one line in eight starting with a dot (stuffed).
fn body_1mib() -> Vec<u8> {
    let mut b = Vec::with_capacity(1 << 20);
    let mut i = 0;
    while b.len() < (1 << 20) - 80 {
        if i % 8 == 0 {
            b.extend_from_slice(b"..");
        }
        b.extend_from_slice(&[b'a' + (i % 26) as u8; 72]);
        b.extend_from_slice(b"\r\n");
        i += 1;
    }
    b.extend_from_slice(b".\r\n");
    b
}

fn parser(c: &mut Criterion) {
    let mut g = c.benchmark_group("parser");
    g.throughput(Throughput::Elements(COMMANDS.len() as u64));
    g.bench_function("command_mix", |b| {
        b.iter(|| {
            for cmd in COMMANDS {
                black_box(parse_command(black_box(cmd)).ok());
            }
        })
    });
    g.finish();
}

fn data_scanner(c: &mut Criterion) {
    let body = body_1mib();
    let mut g = c.benchmark_group("data_scanner");
    g.throughput(Throughput::Bytes(body.len() as u64));
    let mut out = Vec::with_capacity(body.len());
    g.bench_function("1MiB_dot_stuffed_whole", |b| {
        b.iter(|| {
            out.clear();
            let mut s = DataScanner::new(BareLinePolicy::Reject);
            black_box(s.feed(black_box(&body), &mut out));
        })
    });
    // In 16 KiB reads, as the io_uring driver's provided buffers deliver it.
    g.bench_function("1MiB_dot_stuffed_16KiB_reads", |b| {
        b.iter(|| {
            out.clear();
            let mut s = DataScanner::new(BareLinePolicy::Reject);
            for chunk in body.chunks(16 * 1024) {
                black_box(s.feed(chunk, &mut out));
            }
        })
    });
    g.finish();
}

fn session(c: &mut Criterion) {
    let cfg = Arc::new(SessionConfig {
        hostname: "mx.example.test".into(),
        local_domains: ["example.test".to_string()].into_iter().collect(),
        ..SessionConfig::default()
    });
    let ids = Rc::new(RefCell::new(IdGen::new(0, QueueId(0))));
    let dir = Arc::new(Directory::build(DirectoryData::default()).unwrap());
    let mut msg = b"MAIL FROM:<a@remote.example>\r\nRCPT TO:<b@example.test>\r\nDATA\r\n".to_vec();
    let body = vec![b'x'; 1000];
    msg.extend_from_slice(&body);
    msg.extend_from_slice(b"\r\n.\r\n");
    let mut g = c.benchmark_group("session");
    g.throughput(Throughput::Elements(1));
    g.bench_function("pipelined_1KiB_transaction", |b| {
        b.iter_batched_ref(
            || {
                let now = Now::system();
                let mut s =
                    Session::new(cfg.clone(), ids.clone(), dir.clone(), "192.0.2.1:1".parse().unwrap(), None, now, 0);
                s.handle_input(now, b"EHLO c\r\n");
                s.output().clear();
                (s, now)
            },
            |(s, now)| {
                s.handle_input(*now, &msg);
                while let Some(a) = s.poll_action() {
                    if let Action::Spool(req) = a {
                        let id = req.envelope.id;
                        s.spool_done(*now, Ok(id), req.data);
                    }
                }
                s.output().clear();
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

criterion_group!(benches, parser, data_scanner, session);
criterion_main!(benches);
