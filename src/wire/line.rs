//! Finding command lines in a read buffer.

/// A command line longer than the limit (RFC 5321 §4.5.3.1.4 sets 512 octets as the
/// minimum a server must accept; the limit is configurable).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("command line too long")]
pub struct LineError;

/// Returns the first complete line in `buf` without its line ending, and the number of
/// bytes it took (with the ending). `Ok(None)` means more bytes are needed.
///
/// Lines end in CRLF; a bare LF is tolerated in commands (as Postfix does), a CR before it is
/// stripped. A buffer holding more than `max` bytes without a line end is an error, and so is
/// a line longer than `max`.
pub fn next_line(buf: &[u8], max: usize) -> Result<Option<(&[u8], usize)>, LineError> {
    match memchr::memchr(b'\n', buf) {
        Some(i) => {
            let line = if i > 0 && buf[i - 1] == b'\r' { &buf[..i - 1] } else { &buf[..i] };
            if i + 1 > max {
                return Err(LineError);
            }
            Ok(Some((line, i + 1)))
        }
        None if buf.len() >= max => Err(LineError),
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines() {
        assert_eq!(next_line(b"NOOP\r\nQUIT\r\n", 512), Ok(Some((&b"NOOP"[..], 6))));
        assert_eq!(next_line(b"NOOP\nQUIT", 512), Ok(Some((&b"NOOP"[..], 5))));
        assert_eq!(next_line(b"NOO", 512), Ok(None));
        assert_eq!(next_line(b"\r\n", 512), Ok(Some((&b""[..], 2))));
        assert_eq!(next_line(&[b'x'; 600], 512), Err(LineError));
        let mut long = vec![b'x'; 600];
        long.extend_from_slice(b"\r\n");
        assert_eq!(next_line(&long, 512), Err(LineError));
    }
}
