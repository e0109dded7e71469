//! Message content framing for DATA (RFC 5321 §4.1.1.4 and §4.5.2).
//!
//! [`DataScanner`] finds the end-of-data sequence `CRLF . CRLF`, removes dot-stuffing
//! (§4.5.2) and copies the content out in long runs. It is resumable: input may be split at
//! any byte. It starts as if a CRLF had just been seen, so `.CRLF` right after the 354 reply
//! is an empty message.
//!
//! Only `CRLF . CRLF` ends the content. `LF . LF`, `CR . CR`, `LF . CRLF` and friends never
//! do: accepting them is what makes SMTP smuggling possible, where a receiver and a
//! forwarder disagree on where a message ends. A bare CR or LF in the content is refused by
//! default ([`BareLinePolicy::Reject`]): the scanner keeps reading to the real end and then
//! reports it, and the session refuses the message whole, as Postfix's
//! `smtpd_forbid_bare_newline` does.

/// What to do with a CR or LF that is not part of a CRLF pair (RFC 5321 §2.3.8).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BareLinePolicy {
    /// Read to the end of the content, then refuse the message (554 5.5.2).
    #[default]
    Reject,
    /// Keep the bytes as they are.
    Allow,
}

/// Result of one [`DataScanner::feed`] call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataProgress {
    /// Input bytes used; the rest (after the end of data) belongs to the next command.
    pub consumed: usize,
    pub status: DataStatus,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataStatus {
    /// The end of data has not been seen: feed more.
    NeedMore,
    /// `CRLF . CRLF` was consumed; the content is complete.
    Done,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Inside a line.
    Mid,
    /// The last content byte was a CR (already copied out).
    SawCr,
    /// Just after a CRLF (or at the start).
    LineStart,
    /// After CRLF ".": a stuffed dot or the start of the terminator; the dot is dropped.
    Dot,
    /// After CRLF "." CR: the CR is held back until we know it is not the terminator.
    DotCr,
}

/// Resumable DATA content scanner; see the module documentation.
#[derive(Debug, Clone)]
pub struct DataScanner {
    state: State,
    policy: BareLinePolicy,
    bare: bool,
    discard: bool,
}

impl DataScanner {
    pub fn new(policy: BareLinePolicy) -> Self {
        DataScanner { state: State::LineStart, policy, bare: false, discard: false }
    }

    /// Starts a new message.
    pub fn reset(&mut self) {
        self.state = State::LineStart;
        self.bare = false;
        self.discard = false;
    }

    /// From now on, scan for the end but copy nothing (the message is refused anyway, e.g.
    /// for its size).
    pub fn set_discard(&mut self) {
        self.discard = true;
    }

    /// True once a bare CR or LF was seen in this message.
    pub fn saw_bare_line_ending(&self) -> bool {
        self.bare
    }

    fn bare_seen(&mut self) {
        self.bare = true;
        if self.policy == BareLinePolicy::Reject {
            self.discard = true;
        }
    }

    /// Scans `input`, appending the unstuffed content to `out` (unless discarding).
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> DataProgress {
        let len = input.len();
        let mut i = 0;
        // Start of the input range not yet copied to `out`.
        let mut run = 0;
        loop {
            match self.state {
                State::Mid => match memchr::memchr2(b'\r', b'\n', &input[i..]) {
                    None => break,
                    Some(k) => {
                        let p = i + k;
                        if input[p] == b'\n' {
                            self.bare_seen();
                            i = p + 1;
                        } else if p + 1 == len {
                            self.state = State::SawCr;
                            break;
                        } else if input[p + 1] == b'\n' {
                            i = p + 2;
                            self.state = State::LineStart;
                        } else {
                            self.bare_seen();
                            i = p + 1;
                        }
                    }
                },
                State::SawCr => {
                    if i == len {
                        break;
                    }
                    if input[i] == b'\n' {
                        i += 1;
                        self.state = State::LineStart;
                    } else {
                        self.bare_seen();
                        self.state = State::Mid;
                    }
                }
                State::LineStart => {
                    if i == len {
                        break;
                    }
                    if input[i] == b'.' {
                        self.copy(&input[run..i], out);
                        i += 1;
                        run = i;
                        self.state = State::Dot;
                    } else {
                        self.state = State::Mid;
                    }
                }
                State::Dot => {
                    if i == len {
                        break;
                    }
                    if input[i] == b'\r' {
                        // Held back: `run` stays at the CR so that it is copied only if it
                        // turns out not to be the terminator.
                        i += 1;
                        self.state = State::DotCr;
                    } else {
                        self.state = State::Mid;
                    }
                }
                State::DotCr => {
                    if i == len {
                        break;
                    }
                    if input[i] == b'\n' {
                        // CRLF "." CRLF: the end. Nothing of ".CRLF" is content.
                        self.copy(&input[run..i.saturating_sub(1).max(run)], out);
                        self.state = State::LineStart;
                        return DataProgress { consumed: i + 1, status: DataStatus::Done };
                    }
                    // CRLF "." CR x: a bare CR. If the CR came in an earlier input it was
                    // held back and is not in this input's run.
                    if i == 0 {
                        self.copy(b"\r", out);
                    }
                    self.bare_seen();
                    self.state = State::Mid;
                }
            }
        }
        // Copy what remains, except a CR held back after a line-start dot.
        let end = if self.state == State::DotCr && len > run { len - 1 } else { len };
        if end > run {
            self.copy(&input[run..end], out);
        }
        DataProgress { consumed: len, status: DataStatus::NeedMore }
    }

    #[inline]
    fn copy(&self, bytes: &[u8], out: &mut Vec<u8>) {
        if !self.discard {
            out.extend_from_slice(bytes);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `input` in pieces split at `cuts`, returning (content, consumed, done, bare).
    fn scan(input: &[u8], cuts: &[usize], policy: BareLinePolicy) -> (Vec<u8>, usize, bool, bool) {
        let mut s = DataScanner::new(policy);
        let mut out = Vec::new();
        let mut start = 0;
        let mut bounds: Vec<usize> = cuts.to_vec();
        bounds.push(input.len());
        for &end in &bounds {
            let p = s.feed(&input[start..end], &mut out);
            if p.status == DataStatus::Done {
                return finish(out, start + p.consumed, true, &s, policy);
            }
            assert_eq!(p.consumed, end - start);
            start = end;
        }
        finish(out, start, false, &s, policy)
    }

    /// Under `Reject` the content of a refused message is unspecified: drop it.
    fn finish(
        mut out: Vec<u8>,
        consumed: usize,
        done: bool,
        s: &DataScanner,
        policy: BareLinePolicy,
    ) -> (Vec<u8>, usize, bool, bool) {
        if policy == BareLinePolicy::Reject && s.saw_bare_line_ending() {
            out.clear();
        }
        (out, consumed, done, s.saw_bare_line_ending())
    }

    fn content(input: &[u8]) -> (Vec<u8>, usize, bool, bool) {
        scan(input, &[], BareLinePolicy::Allow)
    }

    #[test]
    fn table() {
        let cases: &[(&[u8], &[u8], bool, usize)] = &[
            // (input, content, done, consumed)
            (b".\r\n", b"", true, 3),
            (b"a\r\n.\r\n", b"a\r\n", true, 6),
            (b"a\r\n.\r\nMAIL", b"a\r\n", true, 6),
            (b"..a\r\n.\r\n", b".a\r\n", true, 8),
            (b"a\r\n..\r\n.\r\n", b"a\r\n.\r\n", true, 10),
            (b"a\r\n...\r\n.\r\n", b"a\r\n..\r\n", true, 11),
            (b"a.b\r\n.\r\n", b"a.b\r\n", true, 8),
            (b"a\r\n", b"a\r\n", false, 3),
            (b"Subject: x\r\n\r\nbody\r\n.\r\n", b"Subject: x\r\n\r\nbody\r\n", true, 23),
        ];
        for (input, want, done, consumed) in cases {
            let (out, c, d, bare) = content(input);
            assert_eq!((&out[..], d, c), (&want[..], *done, *consumed), "{:?}", String::from_utf8_lossy(input));
            assert!(!bare);
        }
    }

    /// SMTP smuggling: none of these end the content, and each is a bare line ending.
    #[test]
    fn smuggling_inputs_never_end_data() {
        for input in [
            &b"a\n.\nMAIL FROM:<x@y>\r\n"[..],
            b"a\r.\rMAIL FROM:<x@y>\r\n",
            b"a\n.\r\nMAIL FROM:<x@y>\r\n",
            b"a\r\n.\nMAIL FROM:<x@y>\r\n",
            b"a\r\n.\rMAIL FROM:<x@y>\r\n",
            b"a\r.\r\nMAIL FROM:<x@y>\r\n",
        ] {
            for policy in [BareLinePolicy::Reject, BareLinePolicy::Allow] {
                let (_, _, done, bare) = scan(input, &[], policy);
                assert!(!done, "{:?} ended data", String::from_utf8_lossy(input));
                assert!(bare, "{:?} not flagged", String::from_utf8_lossy(input));
            }
            // And once the real terminator comes, the message ends there.
            let mut full = input.to_vec();
            full.extend_from_slice(b"\r\n.\r\n");
            let (_, c, done, _) = content(&full);
            assert!(done);
            assert_eq!(c, full.len());
        }
    }

    #[test]
    fn allow_keeps_bare_bytes_verbatim() {
        let (out, _, done, bare) = content(b"a\nb\rc\r\n.\rx\r\n.\r\n");
        assert!(done && bare);
        assert_eq!(out, b"a\nb\rc\r\n\rx\r\n");
    }

    #[test]
    fn reject_stops_copying() {
        let mut s = DataScanner::new(BareLinePolicy::Reject);
        let mut out = Vec::new();
        assert_eq!(s.feed(b"ok\r\nbad\nmore", &mut out).status, DataStatus::NeedMore);
        let before = out.len();
        assert_eq!(s.feed(b" and more\r\n.\r\n", &mut out).status, DataStatus::Done);
        assert!(s.saw_bare_line_ending());
        assert_eq!(out.len(), before);
    }

    #[test]
    fn discard_copies_nothing() {
        let mut s = DataScanner::new(BareLinePolicy::Reject);
        s.set_discard();
        let mut out = Vec::new();
        let p = s.feed(b"hello\r\n.\r\n", &mut out);
        assert_eq!(p.status, DataStatus::Done);
        assert!(out.is_empty());
    }

    /// Every input split at every offset (and at every pair of offsets) gives the same result
    /// as the whole input.
    #[test]
    fn every_split_gives_the_same_result() {
        let inputs: &[&[u8]] = &[
            b".\r\n",
            b"a\r\n.\r\ntail",
            b"..x\r\n..\r\n.y\r\n\r\n.\r\n",
            b"a\r\n.\rb\r\n.\r\n",
            b"a\n.\nb\r.\rc\r\n.\r\n",
            b"line\r\n.\r\n",
            b"\r\n\r\n..\r\n.\r\nQUIT\r\n",
        ];
        for input in inputs {
            for policy in [BareLinePolicy::Reject, BareLinePolicy::Allow] {
                let whole = scan(input, &[], policy);
                for a in 0..=input.len() {
                    assert_eq!(scan(input, &[a], policy), whole, "{:?} cut at {a}", String::from_utf8_lossy(input));
                    for b in a..=input.len() {
                        assert_eq!(
                            scan(input, &[a, b], policy),
                            whole,
                            "{:?} cut at {a},{b}",
                            String::from_utf8_lossy(input)
                        );
                    }
                }
                // One byte at a time.
                let cuts: Vec<usize> = (1..input.len()).collect();
                assert_eq!(scan(input, &cuts, policy), whole);
            }
        }
    }

    /// A model of the scanner written the slow, obvious way, checked on generated inputs.
    #[test]
    fn matches_reference_model() {
        fn reference(input: &[u8]) -> (Vec<u8>, Option<usize>, bool) {
            let mut out = Vec::new();
            let mut bare = false;
            let mut i = 0;
            let mut line_start = true;
            while i < input.len() {
                if line_start && input[i..].starts_with(b".\r\n") {
                    return (out, Some(i + 3), bare);
                }
                if line_start && &input[i..] == b".\r" {
                    // Could still become the terminator: held back.
                    return (out, None, bare);
                }
                if line_start && input[i] == b'.' {
                    i += 1;
                    line_start = false;
                    continue;
                }
                line_start = false;
                if input[i..].starts_with(b"\r\n") {
                    out.extend_from_slice(b"\r\n");
                    i += 2;
                    line_start = true;
                    continue;
                }
                // A CR at the very end may yet be followed by LF: not known to be bare.
                if input[i] == b'\n' || (input[i] == b'\r' && i + 1 < input.len()) {
                    bare = true;
                }
                out.push(input[i]);
                i += 1;
            }
            (out, None, bare)
        }
        // Deterministic pseudo-random inputs over a small alphabet rich in CR, LF and dots.
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let alphabet = b"\r\n.a";
        for _ in 0..20_000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let n = (seed % 12) as usize;
            let input: Vec<u8> = (0..n).map(|k| alphabet[((seed >> (k * 2 + 8)) & 3) as usize]).collect();
            let (want, end, bare) = reference(&input);
            let (out, consumed, done, got_bare) = content(&input);
            assert_eq!(done, end.is_some(), "{input:?}");
            assert_eq!(out, want, "{input:?}");
            assert_eq!(got_bare, bare, "{input:?}");
            if let Some(e) = end {
                assert_eq!(consumed, e, "{input:?}");
            }
        }
    }
}
