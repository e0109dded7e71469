//! Short text on the stack: the numbers, ids and dates of the hot path's replies and
//! headers, made without `format!` (no allocation, no formatting machinery).

/// At most `N` bytes of ASCII text, built in place.
#[derive(Clone, Copy)]
pub struct StackStr<const N: usize> {
    buf: [u8; N],
    len: usize,
}

impl<const N: usize> Default for StackStr<N> {
    fn default() -> Self {
        StackStr { buf: [0; N], len: 0 }
    }
}

impl<const N: usize> std::fmt::Debug for StackStr<N> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.as_str().fmt(f)
    }
}

const HEX: &[u8; 16] = b"0123456789ABCDEF";

impl<const N: usize> StackStr<N> {
    #[inline]
    pub fn as_str(&self) -> &str {
        // SAFETY: `buf[..len]` is a concatenation of whole UTF-8 strings and ASCII digits
        // (`push_bytes` appends all of its argument or nothing, and is given only those),
        // so it is UTF-8; checking it again cost the log writer 5% of its time.
        unsafe { std::str::from_utf8_unchecked(&self.buf[..self.len]) }
    }

    /// Appends `b` whole, or nothing when it does not fit: callers size `N` for what they
    /// push (a debug build says when they did not), and a cut would break a character.
    #[inline]
    fn push_bytes(&mut self, b: &[u8]) {
        debug_assert!(self.len + b.len() <= N, "StackStr<{N}> overflow");
        if let Some(dst) = self.buf.get_mut(self.len..self.len + b.len()) {
            dst.copy_from_slice(b);
            self.len += b.len();
        }
    }

    /// Appends `s` whole, or nothing when it does not fit.
    #[inline]
    pub fn push_str(&mut self, s: &str) {
        self.push_bytes(s.as_bytes());
    }

    /// Appends `v` in decimal.
    #[inline]
    pub fn push_dec(&mut self, mut v: u64) {
        let mut d = [0u8; 20];
        let mut i = d.len();
        loop {
            i -= 1;
            d[i] = b'0' + (v % 10) as u8;
            v /= 10;
            if v == 0 {
                break;
            }
        }
        self.push_bytes(&d[i..]);
    }

    /// Appends `v` (below 100) as two digits.
    pub fn push_dec2(&mut self, v: u64) {
        self.push_bytes(&[b'0' + (v / 10 % 10) as u8, b'0' + (v % 10) as u8]);
    }

    /// Appends `v` as 16 upper-case hexadecimal digits (as `{:016X}`: a queue or session id).
    pub fn push_hex16(&mut self, v: u64) {
        let mut d = [0u8; 16];
        for (i, b) in d.iter_mut().enumerate() {
            *b = HEX[((v >> (60 - 4 * i)) & 0xF) as usize];
        }
        self.push_bytes(&d);
    }
}

/// `v` in decimal.
#[inline]
pub fn dec(v: u64) -> StackStr<20> {
    let mut s = StackStr::default();
    s.push_dec(v);
    s
}

/// `v` as 16 upper-case hexadecimal digits.
#[inline]
pub fn hex16(v: u64) -> StackStr<16> {
    let mut s = StackStr::default();
    s.push_hex16(v);
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn as_format_would_write_them() {
        for v in [0, 7, 10, 99, 1000, 4_294_967_296, u64::MAX] {
            assert_eq!(dec(v).as_str(), v.to_string());
            assert_eq!(hex16(v).as_str(), format!("{v:016X}"));
        }
        let mut s = StackStr::<8>::default();
        s.push_dec2(5);
        s.push_str(":");
        s.push_dec2(42);
        assert_eq!(s.as_str(), "05:42");
        let mut t = StackStr::<4>::default();
        t.push_str("ab");
        if !cfg!(debug_assertions) {
            t.push_str("\u{e9}\u{e9}x");
            assert_eq!(t.as_str(), "ab", "what does not fit is not cut");
        }
    }
}
