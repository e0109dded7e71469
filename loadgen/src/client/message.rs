//! Envelopes and message content, rendered into the session's reused buffers.
//!
//! Generated messages are a few headers and body lines cut from a filler block made once,
//! so rendering costs a memcpy and a few formatted numbers, never an allocation once the
//! buffers have grown. No generated line starts with `.`, so DATA needs no dot-stuffing.
//! Replayed `.eml` files are normalised to CRLF and dot-stuffed once, at load time.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use crate::client::session::Outbound;
use crate::rng::Rng;

/// Largest generated message (lognormal tails are cut here).
pub const MAX_GENERATED_SIZE: u64 = 64 << 20;

#[derive(Debug, Clone, PartialEq)]
pub enum SizeDistribution {
    Fixed(u64),
    Uniform {
        lo: u64,
        hi: u64,
    },
    /// `exp(N(ln median, sigma²))`.
    LogNormal {
        median: u64,
        sigma: f64,
    },
}

impl SizeDistribution {
    pub fn sample(&self, rng: &mut Rng) -> u64 {
        let v = match *self {
            SizeDistribution::Fixed(n) => n,
            SizeDistribution::Uniform { lo, hi } => rng.range(lo, hi),
            SizeDistribution::LogNormal { median, sigma } => {
                ((median as f64).ln() + sigma * rng.normal()).exp().round() as u64
            }
        };
        v.min(MAX_GENERATED_SIZE)
    }
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MessageError {
    #[error("reading {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{0}: no .eml files")]
    NoEml(PathBuf),
}

/// One replayed message in both wire forms.
#[derive(Debug, Clone)]
struct Eml {
    /// CRLF lines, for BDAT.
    raw: Vec<u8>,
    /// CRLF lines, dot-stuffed (RFC 5321 §4.5.2), for DATA.
    stuffed: Vec<u8>,
}

#[derive(Debug, Clone)]
enum Content {
    Generated(SizeDistribution),
    Replay(std::sync::Arc<Vec<Eml>>),
}

/// Shared description of the messages of a run; each worker makes a [`MessageFactory`].
#[derive(Debug, Clone)]
pub struct MessageConfig {
    pub from: String,
    pub rcpt_domains: Vec<String>,
    pub recipients: usize,
    /// Distinct local parts `user0`…
    pub rcpt_users: u64,
    content: Content,
    pub seed: u64,
}

impl MessageConfig {
    pub fn generated(from: &str, rcpt_domains: Vec<String>, recipients: usize, size: SizeDistribution) -> Self {
        MessageConfig {
            from: from.to_string(),
            rcpt_domains,
            recipients: recipients.max(1),
            rcpt_users: 1000,
            content: Content::Generated(size),
            seed: 1,
        }
    }

    /// Replaces generated content with the `.eml` files of `dir` (sorted by name).
    pub fn replay_dir(mut self, dir: &Path) -> Result<Self, MessageError> {
        let read_err = |path: &Path, source| MessageError::Read { path: path.to_path_buf(), source };
        let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(|e| read_err(dir, e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x.eq_ignore_ascii_case("eml")))
            .collect();
        paths.sort();
        let mut emls = Vec::with_capacity(paths.len());
        for p in &paths {
            let bytes = std::fs::read(p).map_err(|e| read_err(p, e))?;
            emls.push(Eml::new(&bytes));
        }
        if emls.is_empty() {
            return Err(MessageError::NoEml(dir.to_path_buf()));
        }
        self.content = Content::Replay(std::sync::Arc::new(emls));
        Ok(self)
    }
}

impl Eml {
    fn new(bytes: &[u8]) -> Self {
        let mut raw = Vec::with_capacity(bytes.len() + bytes.len() / 32);
        let mut stuffed = Vec::with_capacity(raw.capacity());
        for line in bytes.split_inclusive(|&b| b == b'\n') {
            let body = line.strip_suffix(b"\n").unwrap_or(line);
            let body = body.strip_suffix(b"\r").unwrap_or(body);
            raw.extend_from_slice(body);
            raw.extend_from_slice(b"\r\n");
            if body.first() == Some(&b'.') {
                stuffed.push(b'.');
            }
            stuffed.extend_from_slice(body);
            stuffed.extend_from_slice(b"\r\n");
        }
        Eml { raw, stuffed }
    }
}

/// Filler lines: 76 visible characters and CRLF, none starting with `.`.
const LINE: usize = 78;
const FILLER_LINES: usize = 840; // ≈ 64 KiB

fn filler() -> Vec<u8> {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 ";
    let mut v = Vec::with_capacity(LINE * FILLER_LINES);
    for i in 0..FILLER_LINES {
        for j in 0..LINE - 2 {
            v.push(ALPHABET[(i * 7 + j * 13) % ALPHABET.len()]);
        }
        v.extend_from_slice(b"\r\n");
    }
    v
}

/// Renders messages for one worker thread.
#[derive(Debug)]
pub struct MessageFactory {
    cfg: MessageConfig,
    rng: Rng,
    filler: Vec<u8>,
    /// Worker id, part of each Message-ID.
    worker: usize,
    seq: u64,
    next_user: u64,
    next_eml: usize,
    scratch: String,
}

impl MessageFactory {
    pub fn new(cfg: MessageConfig, worker: usize) -> Self {
        let rng = Rng::new(cfg.seed.wrapping_mul(1_000_003).wrapping_add(worker as u64));
        MessageFactory {
            next_user: worker as u64 * 7919,
            cfg,
            rng,
            filler: filler(),
            worker,
            seq: 0,
            next_eml: worker,
            scratch: String::with_capacity(128),
        }
    }

    /// Fills `out` with the next message: the envelope, and content for DATA
    /// (dot-stuffed) or BDAT (raw).
    pub fn fill(&mut self, out: &mut Outbound, bdat: bool) {
        out.clear();
        self.seq += 1;
        out.from.push_str(&self.cfg.from);
        for _ in 0..self.cfg.recipients {
            let user = self.next_user % self.cfg.rcpt_users.max(1);
            let domain = &self.cfg.rcpt_domains[(self.next_user as usize) % self.cfg.rcpt_domains.len()];
            self.next_user += 1;
            self.scratch.clear();
            let _ = write!(self.scratch, "user{user}@{domain}");
            out.push_rcpt(&self.scratch);
        }
        match &self.cfg.content {
            Content::Replay(emls) => {
                let eml = &emls[self.next_eml % emls.len()];
                self.next_eml += 1;
                out.content.extend_from_slice(if bdat { &eml.raw } else { &eml.stuffed });
            }
            Content::Generated(dist) => {
                let size = dist.sample(&mut self.rng) as usize;
                self.render(out, size);
            }
        }
    }

    fn render(&mut self, out: &mut Outbound, size: usize) {
        let c = &mut out.content;
        let first_rcpt = &out.rcpts[..out.rcpt_ends[0]];
        let _ = write!(
            c,
            "From: <{}>\r\nTo: <{}>\r\nSubject: ringmx-loadgen {}.{}\r\nDate: Thu, 1 Jan 2026 00:00:00 +0000\r\n\
             Message-ID: <{}.{}.{}@loadgen.example.test>\r\nMIME-Version: 1.0\r\n\
             Content-Type: text/plain; charset=us-ascii\r\n\r\n",
            self.cfg.from, first_rcpt, self.worker, self.seq, self.cfg.seed, self.worker, self.seq
        );
        let mut left = size.saturating_sub(c.len());
        while left >= LINE {
            let take = (left / LINE * LINE).min(self.filler.len());
            c.extend_from_slice(&self.filler[..take]);
            left -= take;
        }
        if left >= 2 {
            c.extend_from_slice(&self.filler[..left - 2]);
            c.extend_from_slice(b"\r\n");
        } else if left == 1 || c.ends_with(b"\r\n\r\n") {
            // The body must end with a line of its own; one byte over the target is fine.
            c.extend_from_slice(b"x\r\n");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn factory(size: SizeDistribution, rcpts: usize) -> MessageFactory {
        MessageFactory::new(
            MessageConfig::generated("a@example.net", vec!["d1.test".into(), "d2.test".into()], rcpts, size),
            0,
        )
    }

    #[test]
    fn generated_messages_have_the_requested_size_and_are_safe_for_data() {
        for size in [0usize, 1, 300, 400, 401, 1024, 77_777, 200_000] {
            let mut f = factory(SizeDistribution::Fixed(size as u64), 1);
            let mut out = Outbound::default();
            f.fill(&mut out, false);
            let c = &out.content;
            if size > 300 {
                assert!(c.len() == size || c.len() == size + 2, "size {size}: got {}", c.len());
            }
            assert!(c.ends_with(b"\r\n"));
            assert!(!c.windows(3).any(|w| w == b"\n.\r" || w == b"\n.."), "no line starts with a dot");
            assert!(!c.contains(&b'\n') || c.windows(2).filter(|w| w[1] == b'\n').all(|w| w[0] == b'\r'));
        }
    }

    #[test]
    fn recipients_rotate_over_domains() {
        let mut f = factory(SizeDistribution::Fixed(100), 3);
        let mut out = Outbound::default();
        f.fill(&mut out, false);
        assert_eq!(out.rcpts, "user0@d1.testuser1@d2.testuser2@d1.test");
        assert_eq!(out.rcpt_ends, vec![13, 26, 39]);
    }

    #[test]
    fn eml_is_normalised_and_stuffed() {
        let e = Eml::new(b"Subject: x\n\n.leading dot\r\nend");
        assert_eq!(e.raw, b"Subject: x\r\n\r\n.leading dot\r\nend\r\n");
        assert_eq!(e.stuffed, b"Subject: x\r\n\r\n..leading dot\r\nend\r\n");
    }

    #[test]
    fn lognormal_median_is_close() {
        let d = SizeDistribution::LogNormal { median: 10_000, sigma: 1.0 };
        let mut rng = Rng::new(9);
        let mut v: Vec<u64> = (0..20_001).map(|_| d.sample(&mut rng)).collect();
        v.sort_unstable();
        let median = v[10_000] as f64;
        assert!((median / 10_000.0 - 1.0).abs() < 0.05, "median {median}");
    }
}
