use super::*;
use crate::sink::replies::ReplySpec;

fn config() -> SinkConfig {
    SinkConfig::new("sink.test")
}

struct Harness {
    s: SinkSession,
    stats: SinkStats,
    now: Instant,
}

impl Harness {
    fn new(cfg: SinkConfig) -> Self {
        let mut stats = SinkStats::default();
        let now = Instant::now();
        let s = SinkSession::new(cfg.build(), now, 1, false, &mut stats);
        let mut h = Harness { s, stats, now };
        let banner = h.take();
        assert!(banner.starts_with("220 sink.test"), "{banner}");
        h
    }

    /// Everything due by `now` as text.
    fn take(&mut self) -> String {
        let out = self.s.poll_transmit(self.now).to_vec();
        self.s.transmitted(out.len());
        String::from_utf8(out).unwrap()
    }

    fn say(&mut self, input: &str) -> String {
        self.s.handle_input(self.now, input.as_bytes(), &mut self.stats);
        self.take()
    }

    fn codes(&mut self, input: &str) -> Vec<u16> {
        reply_codes(&self.say(input))
    }
}

/// The code of each final reply line.
fn reply_codes(out: &str) -> Vec<u16> {
    out.split("\r\n").filter(|l| l.len() >= 4 && l.as_bytes()[3] == b' ').map(|l| l[..3].parse().unwrap()).collect()
}

const SESSION: &str = "EHLO c.test\r\nMAIL FROM:<a@x.test> SIZE=20\r\nRCPT TO:<b@y.test>\r\nRCPT TO:<c@y.test>\r\nDATA\r\n\
Subject: hi\r\n\r\n..stuffed\r\nbody\r\n.\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nBDAT 6\r\nchunk1BDAT 3 LAST\r\nendRSET\r\nQUIT\r\n";

#[test]
fn a_pipelined_session_gets_every_reply_in_order() {
    let mut h = Harness::new(config());
    let out = h.say(SESSION);
    assert_eq!(reply_codes(&out), vec![250, 250, 250, 250, 354, 250, 250, 250, 250, 250, 250, 221]);
    assert!(out.contains("250-PIPELINING\r\n") && out.contains("250 CHUNKING\r\n"));
    assert!(out.contains("250-SIZE 104857600\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n250-ENHANCEDSTATUSCODES\r\n"));
    assert_eq!((h.stats.messages, h.stats.recipients), (2, 3));
    assert_eq!(h.stats.bytes, ("Subject: hi\r\n\r\n..stuffed\r\nbody\r\n".len() + 9) as u64);
    assert_eq!(h.s.poll_action(), Some(Action::Close));
}

#[test]
fn input_split_at_every_offset_gives_the_same_replies() {
    let mut whole = Harness::new(config());
    let expected = whole.say(SESSION);
    for cut in 1..SESSION.len() {
        let mut h = Harness::new(config());
        let mut out = h.say(&SESSION[..cut]);
        out += &h.say(&SESSION[cut..]);
        assert_eq!(out, expected, "split at {cut}");
        assert_eq!(h.stats.messages, 2);
    }
    // And byte by byte.
    let mut h = Harness::new(config());
    let out: String = SESSION.as_bytes().chunks(1).map(|b| h.say(std::str::from_utf8(b).unwrap())).collect();
    assert_eq!(out, expected);
}

#[test]
fn smuggling_sequences_do_not_end_data() {
    for fake in ["\n.\n", "\r.\r", "\n.\r\n", "\r\n.\n", "\r\n.\r"] {
        let mut h = Harness::new(config());
        h.say("EHLO c\r\nMAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nDATA\r\n");
        let out = h.say(&format!("line{fake}MAIL FROM:<evil@x>\r\n"));
        assert_eq!(out, "", "{fake:?} ended the data");
        assert_eq!(h.codes("\r\n.\r\n"), vec![250]);
        assert_eq!(h.stats.messages, 1);
    }
}

#[test]
fn an_empty_message_ends_at_the_first_dot() {
    let mut h = Harness::new(config());
    assert_eq!(h.codes("EHLO c\r\nMAIL FROM:<>\r\nRCPT TO:<b@y>\r\nDATA\r\n.\r\n"), vec![250, 250, 250, 354, 250]);
    assert_eq!((h.stats.messages, h.stats.bytes), (1, 0));
}

#[test]
fn sequence_errors_follow_rfc5321() {
    let mut h = Harness::new(config());
    assert_eq!(h.codes("MAIL FROM:<a@x>\r\n"), vec![503]);
    assert_eq!(h.codes("EHLO c\r\nRCPT TO:<b@y>\r\nDATA\r\n"), vec![250, 503, 503]);
    assert_eq!(h.codes("MAIL FROM:<a@x>\r\nMAIL FROM:<a@x>\r\nDATA\r\n"), vec![250, 503, 554]);
    // BDAT without a recipient still consumes its chunk (RFC 3030), then refuses.
    assert_eq!(h.codes("BDAT 4 LAST\r\nQUITNOOP\r\n"), vec![503, 250]);
    assert_eq!(h.codes("FOO\r\nBDAT x\r\nVRFY u\r\n"), vec![500, 501, 252]);
    assert_eq!(h.codes("MAIL FROM:<a@x> SIZE=999999999999\r\n"), vec![552]);
    assert_eq!(h.stats.messages, 0);
}

#[test]
fn an_over_long_line_is_refused_and_skipped() {
    let mut h = Harness::new(config());
    let long = "X".repeat(MAX_COMMAND_LINE + 10);
    assert_eq!(h.codes(&long), vec![500]);
    assert_eq!(h.codes("still the long line\r\nNOOP\r\n"), vec![250]);
}

#[test]
fn starttls_drops_pipelined_plaintext_and_resets() {
    let mut cfg = config();
    cfg.starttls = true;
    let mut h = Harness::new(cfg);
    assert!(h.say("EHLO c\r\n").contains("250 STARTTLS\r\n"));
    assert_eq!(h.codes("STARTTLS\r\nMAIL FROM:<injected@x>\r\n"), vec![220]);
    assert_eq!(h.s.poll_action(), Some(Action::StartTls));
    assert_eq!(h.s.poll_action(), None, "asked once");
    h.s.tls_started(&mut h.stats);
    assert_eq!(h.codes("MAIL FROM:<a@x>\r\n"), vec![503], "EHLO again first (RFC 3207 §4.2)");
    let ehlo = h.say("EHLO c\r\n");
    assert!(!ehlo.contains("STARTTLS"));
    assert_eq!(h.codes("STARTTLS\r\n"), vec![503]);
    assert_eq!(h.stats.tls_handshakes, 1);
}

#[test]
fn auth_plain_and_login() {
    let mut cfg = config();
    cfg.auth = Some(("user".into(), "pass".into()));
    let mut h = Harness::new(cfg.clone());
    assert!(h.say("EHLO c\r\n").contains("250 AUTH PLAIN LOGIN\r\n"));
    // \0user\0pass, then a wrong password.
    assert_eq!(h.codes("AUTH PLAIN AHVzZXIAcGFzcw==\r\n"), vec![235]);
    let mut h = Harness::new(cfg.clone());
    h.say("EHLO c\r\n");
    assert_eq!(h.codes("AUTH PLAIN AHVzZXIAd3Jvbmc=\r\n"), vec![535]);
    assert_eq!(h.codes("AUTH PLAIN\r\n"), vec![334]);
    assert_eq!(h.codes("AHVzZXIAcGFzcw==\r\n"), vec![235]);
    let mut h = Harness::new(cfg);
    h.say("EHLO c\r\n");
    assert_eq!(h.say("AUTH LOGIN\r\n"), "334 VXNlcm5hbWU6\r\n");
    assert_eq!(h.say("dXNlcg==\r\n"), "334 UGFzc3dvcmQ6\r\n");
    assert_eq!(h.codes("cGFzcw==\r\n"), vec![235]);
    assert_eq!(h.stats.auth_successes, 1);
}

#[test]
fn delayed_replies_are_held_in_order_until_due() {
    let mut cfg = config();
    cfg.delays[SinkPhase::DataEnd.index()] = Duration::from_millis(5);
    let mut h = Harness::new(cfg);
    let out = h.say("EHLO c\r\nMAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nDATA\r\nx\r\n.\r\nNOOP\r\n");
    assert_eq!(reply_codes(&out), vec![250, 250, 250, 354], "the 250 after the dot and the NOOP wait");
    let due = h.s.poll_timeout().expect("a held reply");
    assert_eq!(due - h.now, Duration::from_millis(5));
    h.now += Duration::from_millis(4);
    assert_eq!(h.take(), "");
    h.now += Duration::from_millis(1);
    assert_eq!(reply_codes(&h.take()), vec![250, 250]);
    assert_eq!(h.s.poll_timeout(), None);
}

#[test]
fn configured_replies_are_given() {
    let mut cfg = config();
    cfg.replies[SinkPhase::Rcpt.index()].push("450 4.2.1 busy@100%".parse::<ReplySpec>().unwrap()).unwrap();
    let mut h = Harness::new(cfg);
    assert_eq!(h.codes("EHLO c\r\nMAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nDATA\r\n"), vec![250, 250, 450, 554]);
    assert_eq!(h.stats.codes.count(450), 1);
}

#[test]
fn eod_scanner_matches_across_every_split() {
    let data = b"abc\r\n.\r\n";
    for cut in 0..=data.len() {
        let mut s = EodScanner::new();
        let r1 = s.find(&data[..cut]);
        let total = match r1 {
            Some(n) => n,
            None => cut + s.find(&data[cut..]).expect("terminator found"),
        };
        assert_eq!(total, data.len(), "cut {cut}");
    }
    assert_eq!(EodScanner::new().find(b".\r\n"), Some(3));
    assert_eq!(EodScanner::new().find(b"x.\r\n"), None);
}

/// A client that pipelines and does not read its replies: once `OUTPUT_PAUSE` bytes wait,
/// the sink holds the rest of the input and asks for no more; as the replies go, it goes
/// on, and every command is answered once.
#[test]
fn replies_push_back_on_a_client_that_does_not_read() {
    let mut h = Harness::new(config());
    let n = 4000;
    h.s.handle_input(h.now, "EHLO c.test\r\n".repeat(n).as_bytes(), &mut h.stats);
    let unsent = h.s.poll_transmit(h.now).len();
    assert!((OUTPUT_PAUSE..OUTPUT_PAUSE + 1024).contains(&unsent), "{unsent}");
    assert!(!h.s.wants_input());
    let mut replies = 0;
    loop {
        let out = h.take();
        replies += reply_codes(&out).len();
        if !h.s.resume(h.now, &mut h.stats) {
            break;
        }
    }
    replies += reply_codes(&h.take()).len();
    assert_eq!(replies, n);
    assert!(h.s.wants_input());
}
