//! The PROXY protocol (HAProxy, versions 1 and 2): the header a load balancer sends before
//! the client's first byte, naming the real client address.
//!
//! [`parse`] looks at the start of a buffer and answers: a complete header and its length,
//! `Ok(None)` when more bytes are needed (a normal result; call again with more), or an
//! error. It never reads past the header, so what follows stays for the SMTP session.
//! Whether a header is believed at all is the caller's business: only from configured load
//! balancers.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The v2 signature (proxy-protocol.txt §2.2).
pub const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// Longest v1 line, CRLF included (§2.1).
pub const V1_MAX: usize = 107;

/// A parsed header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProxyHeader {
    /// The client's address and port; `None` for `UNKNOWN`/`LOCAL` (health checks): the
    /// connection's own address applies.
    pub source: Option<SocketAddr>,
    pub destination: Option<SocketAddr>,
}

/// A header that is not valid PROXY protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProxyError {
    /// Neither the v1 `PROXY ` prefix nor the v2 signature.
    #[error("no PROXY protocol header")]
    Missing,
    /// A v1 line longer than 107 bytes or without CRLF.
    #[error("PROXY v1 line too long")]
    TooLong,
    /// A v1 line that does not follow the grammar.
    #[error("malformed PROXY v1 line")]
    BadV1,
    /// A v2 header with an unknown version, command or address block too short.
    #[error("malformed PROXY v2 header")]
    BadV2,
}

/// See the module documentation.
pub fn parse(buf: &[u8]) -> Result<Option<(ProxyHeader, usize)>, ProxyError> {
    let n = buf.len().min(V2_SIGNATURE.len());
    if buf[..n] == V2_SIGNATURE[..n] && !buf.is_empty() && buf[0] == b'\r' {
        return if buf.len() < 16 { Ok(None) } else { parse_v2(buf) };
    }
    let n = buf.len().min(6);
    if buf[..n] != b"PROXY "[..n] {
        return Err(ProxyError::Missing);
    }
    match memchr::memchr(b'\n', &buf[..buf.len().min(V1_MAX)]) {
        Some(i) => parse_v1(&buf[..i + 1]).map(|h| Some((h, i + 1))),
        None if buf.len() >= V1_MAX => Err(ProxyError::TooLong),
        None => Ok(None),
    }
}

fn parse_v1(line: &[u8]) -> Result<ProxyHeader, ProxyError> {
    let line = line.strip_suffix(b"\r\n").ok_or(ProxyError::BadV1)?;
    let line = std::str::from_utf8(line).map_err(|_| ProxyError::BadV1)?;
    let mut f = line.split(' ');
    f.next(); // "PROXY"
    let proto = f.next().ok_or(ProxyError::BadV1)?;
    if proto == "UNKNOWN" {
        return Ok(ProxyHeader { source: None, destination: None });
    }
    let (src, dst, sport, dport) = (f.next(), f.next(), f.next(), f.next());
    let (Some(src), Some(dst), Some(sport), Some(dport), None) = (src, dst, sport, dport, f.next()) else {
        return Err(ProxyError::BadV1);
    };
    let ip = |s: &str| -> Result<IpAddr, ProxyError> {
        match proto {
            "TCP4" => s.parse::<Ipv4Addr>().map(IpAddr::V4).map_err(|_| ProxyError::BadV1),
            "TCP6" => s.parse::<Ipv6Addr>().map(IpAddr::V6).map_err(|_| ProxyError::BadV1),
            _ => Err(ProxyError::BadV1),
        }
    };
    let port = |s: &str| -> Result<u16, ProxyError> {
        if s.is_empty() || (s.len() > 1 && s.starts_with('0')) {
            return Err(ProxyError::BadV1);
        }
        s.parse().map_err(|_| ProxyError::BadV1)
    };
    Ok(ProxyHeader {
        source: Some(SocketAddr::new(ip(src)?, port(sport)?)),
        destination: Some(SocketAddr::new(ip(dst)?, port(dport)?)),
    })
}

fn parse_v2(buf: &[u8]) -> Result<Option<(ProxyHeader, usize)>, ProxyError> {
    let ver_cmd = buf[12];
    let fam = buf[13];
    let len = u16::from_be_bytes([buf[14], buf[15]]) as usize;
    if ver_cmd >> 4 != 2 {
        return Err(ProxyError::BadV2);
    }
    let total = 16 + len;
    if buf.len() < total {
        return Ok(None);
    }
    let body = &buf[16..total];
    let none = ProxyHeader { source: None, destination: None };
    match ver_cmd & 0xf {
        0 => return Ok(Some((none, total))), // LOCAL
        1 => {}                              // PROXY
        _ => return Err(ProxyError::BadV2),
    }
    let header = match fam >> 4 {
        // AF_INET: 4 + 4 + 2 + 2.
        1 => {
            let b = body.get(..12).ok_or(ProxyError::BadV2)?;
            let ip = |i: usize| IpAddr::V4(Ipv4Addr::new(b[i], b[i + 1], b[i + 2], b[i + 3]));
            let port = |i: usize| u16::from_be_bytes([b[i], b[i + 1]]);
            ProxyHeader {
                source: Some(SocketAddr::new(ip(0), port(8))),
                destination: Some(SocketAddr::new(ip(4), port(10))),
            }
        }
        // AF_INET6: 16 + 16 + 2 + 2.
        2 => {
            let b = body.get(..36).ok_or(ProxyError::BadV2)?;
            let ip = |i: usize| IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(&b[i..i + 16]).unwrap_or_default()));
            let port = |i: usize| u16::from_be_bytes([b[i], b[i + 1]]);
            ProxyHeader {
                source: Some(SocketAddr::new(ip(0), port(32))),
                destination: Some(SocketAddr::new(ip(16), port(34))),
            }
        }
        // AF_UNSPEC, AF_UNIX: no client address to use.
        0 | 3 => none,
        _ => return Err(ProxyError::BadV2),
    };
    Ok(Some((header, total)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v2(cmd: u8, fam: u8, addr: &[u8], tail: &[u8]) -> Vec<u8> {
        let mut v = V2_SIGNATURE.to_vec();
        v.push(0x20 | cmd);
        v.push(fam);
        v.extend_from_slice(&((addr.len() + tail.len()) as u16).to_be_bytes());
        v.extend_from_slice(addr);
        v.extend_from_slice(tail);
        v
    }

    #[test]
    fn v1_lines() {
        let l = b"PROXY TCP4 192.0.2.9 198.51.100.1 40000 25\r\nEHLO x\r\n";
        let (h, used) = parse(l).unwrap().unwrap();
        assert_eq!(used, 44);
        assert_eq!(h.source, Some("192.0.2.9:40000".parse().unwrap()));
        assert_eq!(h.destination, Some("198.51.100.1:25".parse().unwrap()));
        let (h, _) = parse(b"PROXY TCP6 2001:db8::9 2001:db8::1 1 2\r\n").unwrap().unwrap();
        assert_eq!(h.source, Some("[2001:db8::9]:1".parse().unwrap()));
        assert_eq!(parse(b"PROXY UNKNOWN\r\n").unwrap().unwrap().0.source, None);
        assert_eq!(parse(b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n").unwrap().unwrap().0.source, None);
        for bad in [
            &b"PROXY TCP4 192.0.2.9 198.51.100.1 40000\r\n"[..],
            b"PROXY TCP4 2001:db8::1 198.51.100.1 1 2\r\n",
            b"PROXY TCP4 192.0.2.9 198.51.100.1 040000 25\r\n",
            b"PROXY TCP5 a b 1 2\r\n",
            b"PROXY TCP4 192.0.2.9 198.51.100.1 1 2\n",
        ] {
            assert_eq!(parse(bad), Err(ProxyError::BadV1), "{}", String::from_utf8_lossy(bad));
        }
        assert_eq!(parse(b"EHLO x\r\n"), Err(ProxyError::Missing));
        assert_eq!(parse(&[b'P'; 0]), Ok(None));
        let mut long = b"PROXY TCP4 ".to_vec();
        long.resize(200, b'1');
        assert_eq!(parse(&long), Err(ProxyError::TooLong));
    }

    #[test]
    fn v2_headers() {
        let addr4 = [192, 0, 2, 9, 198, 51, 100, 1, 0x9c, 0x40, 0, 25];
        let h = v2(1, 0x11, &addr4, &[1, 0, 1, 0]); // with a TLV after the addresses
        let (p, used) = parse(&h).unwrap().unwrap();
        assert_eq!(used, h.len());
        assert_eq!(p.source, Some("192.0.2.9:40000".parse().unwrap()));
        let mut addr6 = Vec::new();
        addr6.extend_from_slice(&"2001:db8::9".parse::<Ipv6Addr>().unwrap().octets());
        addr6.extend_from_slice(&"2001:db8::1".parse::<Ipv6Addr>().unwrap().octets());
        addr6.extend_from_slice(&[0, 7, 0, 25]);
        let (p, _) = parse(&v2(1, 0x21, &addr6, &[])).unwrap().unwrap();
        assert_eq!(p.source, Some("[2001:db8::9]:7".parse().unwrap()));
        assert_eq!(parse(&v2(0, 0, &[], &[])).unwrap().unwrap().0.source, None);
        assert_eq!(parse(&v2(1, 0x11, &addr4[..6], &[])), Err(ProxyError::BadV2));
        let mut bad_version = v2(1, 0x11, &addr4, &[]);
        bad_version[12] = 0x11;
        assert_eq!(parse(&bad_version), Err(ProxyError::BadV2));
    }

    /// Every prefix of a header asks for more bytes; the whole gives the same header.
    #[test]
    fn every_split_needs_more_then_parses() {
        let addr4 = [192, 0, 2, 9, 198, 51, 100, 1, 0x9c, 0x40, 0, 25];
        for h in [v2(1, 0x11, &addr4, &[]), b"PROXY TCP4 192.0.2.9 198.51.100.1 40000 25\r\n".to_vec()] {
            for cut in 0..h.len() {
                assert_eq!(parse(&h[..cut]), Ok(None), "cut {cut}");
            }
            let mut more = h.clone();
            more.extend_from_slice(b"EHLO x\r\n");
            assert_eq!(parse(&more).unwrap().unwrap().1, h.len());
        }
    }
}
