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
    pub fn as_str(&self) -> &str {
        // Only whole `&str`s and ASCII digits are ever pushed: always UTF-8.
        std::str::from_utf8(&self.buf[..self.len]).unwrap_or_default()
    }

    fn push_bytes(&mut self, b: &[u8]) {
        // Callers size `N` for what they push; past it the text stops growing rather than
        // panicking (a debug build says so).
        debug_assert!(self.len + b.len() <= N, "StackStr<{N}> overflow");
        let n = b.len().min(N - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&b[..n]);
        self.len += n;
    }

    /// Appends `s` whole, or nothing when it does not fit.
    pub fn push_str(&mut self, s: &str) {
        if self.len + s.len() <= N {
            self.push_bytes(s.as_bytes());
        } else {
            debug_assert!(false, "StackStr<{N}> overflow");
        }
    }

    /// Appends `v` in decimal.
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
pub fn dec(v: u64) -> StackStr<20> {
    let mut s = StackStr::default();
    s.push_dec(v);
    s
}

/// `v` as 16 upper-case hexadecimal digits.
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
    }
}
