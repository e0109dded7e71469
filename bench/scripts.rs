//! Criterion benchmarks of `[scripts]`: one call of a hook that does nothing on a shard's
//! Lua state, at MAIL, RCPT and the end of the content (header fields parsed for the
//! script): the price of the context and the call.
//!
//! Run: `cargo bench --bench scripts`.

use criterion::{Criterion, criterion_group, criterion_main};
use ringmx::policy::script::{Context, Hook, ScriptHost, Scripts, settings};
use std::hint::black_box;

const SCRIPT: &str = r#"
function connect(ctx) end
function ehlo(ctx) end
function mail(ctx) end
function rcpt(ctx) end
function data(ctx) end
"#;

const MESSAGE: &[u8] = b"From: Alice <alice@example.org>\r\nTo: bob@example.test\r\nSubject: benchmark\r\n\
Date: Thu, 3 Dec 2026 12:00:00 +0000\r\nMessage-ID: <1@example.org>\r\nMIME-Version: 1.0\r\n\
Content-Type: text/plain; charset=utf-8\r\n\r\nhello\r\n";

fn host(dir: &std::path::Path) -> ScriptHost {
    let path = dir.join("bench.lua");
    std::fs::write(&path, SCRIPT).unwrap();
    ScriptHost::new(Scripts::load(settings(&path)).unwrap()).unwrap()
}

fn cx(message: Option<&'static [u8]>) -> Context<'static> {
    Context {
        session: 7,
        client_ip: "192.0.2.7".into(),
        client_port: 40000,
        server_ip: "127.0.0.1".into(),
        server_port: 25,
        helo: Some("client.example.org"),
        esmtp: true,
        sender: Some("alice@example.org"),
        recipient: Some("bob@example.test"),
        recipients: vec!["bob@example.test"],
        message,
        size: message.map_or(0, |m| m.len() as u64),
        ..Context::default()
    }
}

fn hooks(c: &mut Criterion) {
    let dir = std::env::temp_dir().join(format!("ringmx-bench-scripts-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut h = host(&dir);
    let plain = cx(None);
    let with_message = cx(Some(MESSAGE));
    c.bench_function("script no-op mail", |b| b.iter(|| black_box(h.run(Hook::Mail, black_box(&plain)))));
    c.bench_function("script no-op rcpt", |b| b.iter(|| black_box(h.run(Hook::Rcpt, black_box(&plain)))));
    c.bench_function("script no-op data (7 header fields)", |b| {
        b.iter(|| black_box(h.run(Hook::Data, black_box(&with_message))))
    });
    let _ = std::fs::remove_dir_all(&dir);
}

criterion_group!(benches, hooks);
criterion_main!(benches);
