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
    /// What the server says, each piece fed on its own after that many seconds.
    pieces: Vec<(u8, Say)>,
}

/// A server's words: mostly well-formed replies (so that the conversation gets past the
/// greeting and EHLO), sometimes anything, in pieces that split lines.
#[derive(Arbitrary, Debug)]
enum Say {
    Reply { code: Code, enhanced: Option<(u8, u8, u8)>, lines: Vec<Line>, split: u8 },
    Raw(Vec<u8>),
}

#[derive(Arbitrary, Debug)]
enum Code {
    Common(u8),
    Any(u16),
}

#[derive(Arbitrary, Debug)]
enum Line {
    Text(String),
    Keyword(u8, u32),
}

const CODES: [u16; 20] =
    [220, 250, 250, 250, 221, 235, 334, 354, 421, 450, 451, 452, 500, 501, 503, 530, 535, 550, 552, 554];
const KEYWORDS: [&str; 10] = [
    "PIPELINING",
    "SIZE",
    "8BITMIME",
    "SMTPUTF8",
    "DSN",
    "STARTTLS",
    "AUTH PLAIN LOGIN",
    "CHUNKING",
    "ENHANCEDSTATUSCODES",
    "AUTH=LOGIN",
];

fn render(say: &Say) -> (Vec<u8>, usize) {
    match say {
        Say::Raw(b) => (b.clone(), 0),
        Say::Reply { code, enhanced, lines, split } => {
            let code = match code {
                Code::Common(i) => CODES[*i as usize % CODES.len()],
                Code::Any(c) => *c % 1000,
            };
            let mut out = Vec::new();
            let n = lines.len().max(1);
            for i in 0..n {
                let sep = if i + 1 == n { ' ' } else { '-' };
                let text = match lines.get(i) {
                    Some(Line::Text(t)) => t.clone(),
                    Some(Line::Keyword(k, size)) => match KEYWORDS[*k as usize % KEYWORDS.len()] {
                        "SIZE" => format!("SIZE {size}"),
                        k => k.to_string(),
                    },
                    None => "ok".into(),
                };
                let enh = enhanced
                    .map(|(a, b, c)| format!("{}.{}.{} ", code / 100, b % 10, c % 10 + a % 2))
                    .unwrap_or_default();
                out.extend_from_slice(format!("{code:03}{sep}{enh}{text}\r\n").as_bytes());
            }
            (out, *split as usize)
        }
    }
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
    for (secs, say) in &input.pieces {
        now += Duration::from_secs(*secs as u64 % 400);
        c.handle_timeout(now);
        let (bytes, split) = render(say);
        let cut = if split == 0 { bytes.len() } else { split.min(bytes.len()) };
        c.handle_input(now, &bytes[..cut]);
        c.handle_input(now, &bytes[cut..]);
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
