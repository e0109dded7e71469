//! The outbound client against a hostile or broken server: whatever the server sends, in
//! whatever pieces, the client never panics, every command it sends is one CRLF-ended
//! line (or the dot-stuffed content), and a message it was given ends with one result
//! per recipient or a closed connection, never silence.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use ringmx::delivery::client::{Client, ClientConfig, Credentials, Event, OutboundMessage, TlsPolicy};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Arbitrary, Debug)]
struct Input {
    pipelining: bool,
    auth: bool,
    require_tls: bool,
    tls_ok: bool,
    rcpts: u8,
    content: Vec<u8>,
    /// Server bytes, each piece fed on its own, with the seconds that pass before it.
    pieces: Vec<(u8, Vec<u8>)>,
}

fuzz_target!(|input: Input| {
    let cfg = Arc::new(ClientConfig {
        ehlo_name: "mx.example.test".into(),
        tls: if input.require_tls { TlsPolicy::Require } else { TlsPolicy::Opportunistic },
        auth: input.auth.then(|| Credentials { user: "u".into(), password: "p".into(), mechanism: None }),
        auth_without_tls: true,
        pipelining: input.pipelining,
        ..ClientConfig::default()
    });
    let start = Instant::now();
    let mut now = start;
    let mut c = Client::new(cfg, now);
    let rcpts: Vec<String> = (0..(input.rcpts % 5).max(1)).map(|i| format!("r{i}@remote.example")).collect();
    let n = rcpts.len();
    let msg = Arc::new(OutboundMessage::new("s@example.test", rcpts, input.content.clone().into(), false));
    let mut sent = false;
    let mut done = false;
    for (secs, bytes) in &input.pieces {
        now += Duration::from_secs(*secs as u64);
        c.handle_timeout(now);
        c.handle_input(now, bytes);
        while let Some(e) = c.poll_event() {
            match e {
                Event::Ready if !sent => {
                    sent = true;
                    c.send(msg.clone(), now);
                }
                Event::Ready => c.quit(now),
                Event::StartTls => c.tls_done(input.tls_ok, now),
                Event::Done(results) => {
                    assert_eq!(results.len(), n);
                    done = true;
                }
                Event::Closed(_) => {}
            }
        }
        while let Some(out) = c.poll_transmit(now) {
            assert!(out.ends_with(b"\r\n") || out.is_empty(), "{out:?}");
        }
        if c.is_closed() {
            break;
        }
    }
    // A message in flight always ends: with its results, or with the connection.
    if sent && !done && !c.is_closed() {
        c.connection_lost();
        while let Some(e) = c.poll_event() {
            if let Event::Done(results) = e {
                assert_eq!(results.len(), n);
                done = true;
            }
        }
        assert!(done, "a message in flight was given no result");
    }
});
