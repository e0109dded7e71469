//! Reply encoding (RFC 5321 §4.2) with enhanced status codes (RFC 2034, RFC 3463).

use std::borrow::Cow;

/// One SMTP reply: a code, an enhanced status code (empty for the greeting and the like),
/// and text. Text with `\n` becomes a multi-line reply (§4.2.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    /// RFC 3463 `class.subject.detail`, e.g. `"2.1.0"`; empty when none applies.
    pub status: &'static str,
    pub text: Cow<'static, str>,
}

impl Reply {
    pub fn new(code: u16, status: &'static str, text: impl Into<Cow<'static, str>>) -> Self {
        Reply { code, status, text: text.into() }
    }

    /// Appends the encoded reply to `out`.
    pub fn write(&self, out: &mut Vec<u8>) {
        write_reply(out, self.code, self.status, &self.text);
    }

    /// True for 4xx and 5xx.
    pub fn is_error(&self) -> bool {
        self.code >= 400
    }
}

impl std::fmt::Display for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.status.is_empty() {
            write!(f, "{} {}", self.code, self.text)
        } else {
            write!(f, "{} {} {}", self.code, self.status, self.text)
        }
    }
}

/// Appends a reply of `lines`, each line the concatenation of its parts: the replies of
/// every session (the greeting, EHLO, QUIT, a queue id) without a string made for them.
/// A part's CR and LF are dropped: a part never ends its line.
pub fn write_reply_lines(out: &mut Vec<u8>, code: u16, status: &str, lines: &[&[&str]]) {
    debug_assert!((200..600).contains(&code));
    let digits = [b'0' + (code / 100) as u8, b'0' + (code / 10 % 10) as u8, b'0' + (code % 10) as u8];
    for (i, parts) in lines.iter().enumerate() {
        out.extend_from_slice(&digits);
        out.push(if i + 1 < lines.len() { b'-' } else { b' ' });
        if !status.is_empty() {
            out.extend_from_slice(status.as_bytes());
            out.push(b' ');
        }
        for p in *parts {
            if p.bytes().any(|b| b == b'\r' || b == b'\n') {
                out.extend(p.bytes().filter(|&b| b != b'\r' && b != b'\n'));
            } else {
                out.extend_from_slice(p.as_bytes());
            }
        }
        out.extend_from_slice(b"\r\n");
    }
}

/// Appends `code[-| ]status text CRLF` for each line of `text`.
pub fn write_reply(out: &mut Vec<u8>, code: u16, status: &str, text: &str) {
    debug_assert!((200..600).contains(&code));
    let digits = [b'0' + (code / 100) as u8, b'0' + (code / 10 % 10) as u8, b'0' + (code % 10) as u8];
    let mut lines = text.split('\n').peekable();
    while let Some(line) = lines.next() {
        out.extend_from_slice(&digits);
        out.push(if lines.peek().is_some() { b'-' } else { b' ' });
        if !status.is_empty() {
            out.extend_from_slice(status.as_bytes());
            out.push(b' ');
        }
        // A reply line never carries a bare CR: it would end the line early for the peer.
        out.extend(line.bytes().filter(|&b| b != b'\r'));
        out.extend_from_slice(b"\r\n");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_and_multi_line() {
        let mut out = Vec::new();
        write_reply(&mut out, 250, "2.1.0", "Ok");
        assert_eq!(out, b"250 2.1.0 Ok\r\n");
        out.clear();
        write_reply(&mut out, 250, "", "mx.example\nPIPELINING\nSIZE 10240000");
        assert_eq!(out, b"250-mx.example\r\n250-PIPELINING\r\n250 SIZE 10240000\r\n");
        out.clear();
        Reply::new(554, "5.7.1", "Access denied").write(&mut out);
        let mut parts = Vec::new();
        write_reply_lines(&mut parts, 250, "", &[&["mx.example"], &["PIPELINING"], &["SIZE ", "10240000"]]);
        assert_eq!(parts, b"250-mx.example\r\n250-PIPELINING\r\n250 SIZE 10240000\r\n");
        parts.clear();
        write_reply_lines(&mut parts, 221, "2.0.0", &[&["mx\r\n.example", " Bye"]]);
        assert_eq!(parts, b"221 2.0.0 mx.example Bye\r\n", "a part never ends its line");
        assert_eq!(out, b"554 5.7.1 Access denied\r\n");
        assert_eq!(Reply::new(220, "", "ready").to_string(), "220 ready");
    }
}
