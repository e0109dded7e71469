//! The on-disk format of segments and records.
//!
//! # Layout
//!
//! A segment file starts with a 64-byte header:
//!
//! ```text
//! 0..8    magic "RINGMXSG"
//! 8..12   format version (u32 LE) = 1
//! 12..16  shard (u32 LE)
//! 16..24  segment sequence number (u64 LE)
//! 24..32  creation time, Unix ms (u64 LE)
//! 32..36  CRC32C of bytes 0..32
//! 36..64  zero
//! ```
//!
//! Records follow back to back:
//!
//! ```text
//! 0..4    n = length of what follows the 8-byte prefix (u32 LE), never 0
//! 4..8    CRC32C over (segment sequence as u64 LE) ++ the n bytes
//! 8       kind: 1 message, 2 recipient state mark
//! 9..8+n  body of that kind
//! ```
//!
//! Seeding each record's CRC with the segment's sequence number means that a record left
//! over from an earlier use of the same file never passes as a record of this one, so
//! segment files can be preallocated and reused. The space after the last record is zero
//! (preallocated) or stale; replay stops at the first record that does not check.
//!
//! Message body: id u64, received Unix ms u64, flags u8 (bit 0 SMTPUTF8, bits 1-2 BODY,
//! bits 3-4 RET, bit 5 AUTH present), from (u16 length + bytes), envid (u16 + bytes), the
//! AUTH= mailbox (u16 + bytes, only with bit 5), recipient count u16, each recipient
//! (address u16 + bytes, notify u8, orcpt u16 + bytes), then the content length u32 and
//! the content.
//!
//! Mark body: id u64, recipient index u16 (0xffff: every recipient), status u8, attempts
//! u16, next attempt Unix ms u64, text (u16 + bytes).

use super::envelope::{Envelope, QueueId, Recipient};
use crate::wire::{Body, Notify, Ret};

pub const MAGIC: &[u8; 8] = b"RINGMXSG";
pub const VERSION: u32 = 1;
pub const SEGMENT_HEADER_LEN: usize = 64;
pub const RECORD_PREFIX_LEN: usize = 8;

pub const KIND_MESSAGE: u8 = 1;
pub const KIND_MARK: u8 = 2;

/// Decoding failures; replay treats any of them as the end of the valid log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// Fewer bytes than the structure needs.
    #[error("truncated")]
    Truncated,
    /// The segment header's magic, version or checksum is wrong.
    #[error("bad segment header")]
    BadHeader,
    /// The record's checksum does not match (torn write or stale data).
    #[error("checksum mismatch")]
    BadChecksum,
    /// A length-0 record: preallocated space, the end of the log.
    #[error("end of log")]
    End,
    /// A record of a kind we do not know.
    #[error("unknown record kind {0}")]
    UnknownKind(u8),
    /// A field holds a value outside its domain.
    #[error("bad field {0}")]
    BadField(&'static str),
}

/// A segment header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentHeader {
    pub shard: u32,
    pub seq: u64,
    pub created_ms: u64,
}

impl SegmentHeader {
    pub fn encode(&self) -> [u8; SEGMENT_HEADER_LEN] {
        let mut h = [0u8; SEGMENT_HEADER_LEN];
        h[0..8].copy_from_slice(MAGIC);
        h[8..12].copy_from_slice(&VERSION.to_le_bytes());
        h[12..16].copy_from_slice(&self.shard.to_le_bytes());
        h[16..24].copy_from_slice(&self.seq.to_le_bytes());
        h[24..32].copy_from_slice(&self.created_ms.to_le_bytes());
        let crc = crc32c::crc32c(&h[0..32]);
        h[32..36].copy_from_slice(&crc.to_le_bytes());
        h
    }

    pub fn decode(b: &[u8]) -> Result<Self, DecodeError> {
        if b.len() < SEGMENT_HEADER_LEN {
            return Err(DecodeError::Truncated);
        }
        if &b[0..8] != MAGIC
            || u32::from_le_bytes(b[8..12].try_into().unwrap()) != VERSION
            || crc32c::crc32c(&b[0..32]) != u32::from_le_bytes(b[32..36].try_into().unwrap())
        {
            return Err(DecodeError::BadHeader);
        }
        Ok(SegmentHeader {
            shard: u32::from_le_bytes(b[12..16].try_into().unwrap()),
            seq: u64::from_le_bytes(b[16..24].try_into().unwrap()),
            created_ms: u64::from_le_bytes(b[24..32].try_into().unwrap()),
        })
    }
}

/// Per-recipient state written after the message (by delivery).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MarkStatus {
    Delivered = 1,
    Deferred = 2,
    Failed = 3,
    /// Removed by an operator.
    Deleted = 4,
}

impl MarkStatus {
    fn from_u8(v: u8) -> Result<Self, DecodeError> {
        Ok(match v {
            1 => MarkStatus::Delivered,
            2 => MarkStatus::Deferred,
            3 => MarkStatus::Failed,
            4 => MarkStatus::Deleted,
            _ => return Err(DecodeError::BadField("mark status")),
        })
    }

    /// True when the recipient needs no more work.
    pub fn is_final(self) -> bool {
        !matches!(self, MarkStatus::Deferred)
    }
}

/// `next_attempt_ms` of a recipient an operator put on hold (`ringmx queue hold`): never
/// due until a later mark (the release) says otherwise.
pub const HOLD_MS: u64 = u64::MAX;

/// A state mark for one recipient (or all, `rcpt == None`) of a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mark {
    pub id: QueueId,
    pub rcpt: Option<u16>,
    pub status: MarkStatus,
    pub attempts: u16,
    pub next_attempt_ms: u64,
    pub text: String,
}

impl Mark {
    /// An operator's hold of this recipient (or of all): deferred until released.
    pub fn is_hold(&self) -> bool {
        self.status == MarkStatus::Deferred && self.next_attempt_ms == HOLD_MS
    }
}

/// One decoded record; a message's content stays in the buffer it was read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record<'a> {
    Message { envelope: Envelope, content: &'a [u8] },
    Mark(Mark),
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    let b = &s.as_bytes()[..s.len().min(u16::MAX as usize)];
    out.extend_from_slice(&(b.len() as u16).to_le_bytes());
    out.extend_from_slice(b);
}

/// Encodes the prefix, kind and envelope of a message record whose content (of
/// `content.len()` bytes) follows in a separate buffer; returns the record header. The CRC
/// covers both.
pub fn encode_message_header(seq: u64, env: &Envelope, content: &[u8], out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(&[0u8; RECORD_PREFIX_LEN]);
    out.push(KIND_MESSAGE);
    out.extend_from_slice(&env.id.0.to_le_bytes());
    out.extend_from_slice(&env.received_ms.to_le_bytes());
    let body = match env.body {
        None => 0,
        Some(Body::SevenBit) => 1,
        Some(Body::EightBitMime) => 2,
        Some(Body::BinaryMime) => 3,
    };
    let ret = match env.ret {
        None => 0,
        Some(Ret::Full) => 1,
        Some(Ret::Hdrs) => 2,
    };
    let has_auth = env.auth.is_some() as u8;
    let (has_route, held) = (env.route.is_some() as u8, env.quarantine.is_some() as u8);
    out.push(env.smtputf8 as u8 | body << 1 | ret << 3 | has_auth << 5 | has_route << 6 | held << 7);
    put_str(out, &env.from);
    put_str(out, env.envid.as_deref().unwrap_or(""));
    for s in [&env.auth, &env.route, &env.quarantine].into_iter().flatten() {
        put_str(out, s);
    }
    out.extend_from_slice(&(env.rcpts.len() as u16).to_le_bytes());
    for r in &env.rcpts {
        put_str(out, &r.address);
        out.push(r.notify.map_or(0, |n| n.to_bits() | 0x80));
        put_str(out, r.orcpt.as_deref().unwrap_or(""));
    }
    out.extend_from_slice(&(content.len() as u32).to_le_bytes());
    let n = (out.len() - RECORD_PREFIX_LEN + content.len()) as u32;
    out[0..4].copy_from_slice(&n.to_le_bytes());
    let crc = crc32c::crc32c_append(crc32c::crc32c(&seq.to_le_bytes()), &out[RECORD_PREFIX_LEN..]);
    let crc = crc32c::crc32c_append(crc, content);
    out[4..8].copy_from_slice(&crc.to_le_bytes());
}

/// Encodes a complete mark record.
pub fn encode_mark(seq: u64, m: &Mark, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&[0u8; RECORD_PREFIX_LEN]);
    out.push(KIND_MARK);
    out.extend_from_slice(&m.id.0.to_le_bytes());
    out.extend_from_slice(&m.rcpt.unwrap_or(u16::MAX).to_le_bytes());
    out.push(m.status as u8);
    out.extend_from_slice(&m.attempts.to_le_bytes());
    out.extend_from_slice(&m.next_attempt_ms.to_le_bytes());
    put_str(out, &m.text);
    let n = (out.len() - start - RECORD_PREFIX_LEN) as u32;
    out[start..start + 4].copy_from_slice(&n.to_le_bytes());
    let crc = crc32c::crc32c_append(crc32c::crc32c(&seq.to_le_bytes()), &out[start + RECORD_PREFIX_LEN..]);
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

struct Reader<'a> {
    b: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.b.len()).ok_or(DecodeError::Truncated)?;
        let s = &self.b[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, DecodeError> {
        Ok(u16::from_le_bytes(self.take(2)?.try_into().unwrap()))
    }
    fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().unwrap()))
    }
    fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().unwrap()))
    }
    fn string(&mut self, what: &'static str) -> Result<String, DecodeError> {
        let n = self.u16()? as usize;
        let s = self.take(n)?;
        String::from_utf8(s.to_vec()).map_err(|_| DecodeError::BadField(what))
    }
}

/// Decodes the record at the start of `b` (a segment with sequence `seq`); returns it and
/// its total length.
pub fn decode_record(seq: u64, b: &[u8]) -> Result<(Record<'_>, usize), DecodeError> {
    if b.len() < RECORD_PREFIX_LEN {
        return Err(DecodeError::Truncated);
    }
    let n = u32::from_le_bytes(b[0..4].try_into().unwrap()) as usize;
    if n == 0 {
        return Err(DecodeError::End);
    }
    let total = RECORD_PREFIX_LEN + n;
    if b.len() < total {
        return Err(DecodeError::Truncated);
    }
    let crc = u32::from_le_bytes(b[4..8].try_into().unwrap());
    let payload = &b[RECORD_PREFIX_LEN..total];
    if crc32c::crc32c_append(crc32c::crc32c(&seq.to_le_bytes()), payload) != crc {
        return Err(DecodeError::BadChecksum);
    }
    let mut r = Reader { b: payload, pos: 0 };
    let rec = match r.u8()? {
        KIND_MESSAGE => {
            let mut env = Envelope::new(QueueId(r.u64()?));
            env.received_ms = r.u64()?;
            let flags = r.u8()?;
            env.smtputf8 = flags & 1 != 0;
            env.body = match (flags >> 1) & 3 {
                0 => None,
                1 => Some(Body::SevenBit),
                2 => Some(Body::EightBitMime),
                _ => Some(Body::BinaryMime),
            };
            env.ret = match (flags >> 3) & 3 {
                0 => None,
                1 => Some(Ret::Full),
                2 => Some(Ret::Hdrs),
                _ => return Err(DecodeError::BadField("ret")),
            };
            env.from = r.string("from")?;
            let envid = r.string("envid")?;
            env.envid = (!envid.is_empty()).then_some(envid);
            if flags & 0x20 != 0 {
                env.auth = Some(r.string("auth")?);
            }
            if flags & 0x40 != 0 {
                env.route = Some(r.string("route")?);
            }
            if flags & 0x80 != 0 {
                env.quarantine = Some(r.string("quarantine")?);
            }
            let count = r.u16()?;
            for _ in 0..count {
                let address = r.string("recipient")?;
                let notify = r.u8()?;
                let orcpt = r.string("orcpt")?;
                env.rcpts.push(Recipient {
                    address,
                    notify: (notify & 0x80 != 0).then(|| Notify::from_bits(notify & 0x7f)),
                    orcpt: (!orcpt.is_empty()).then_some(orcpt),
                });
            }
            let len = r.u32()? as usize;
            let content = r.take(len)?;
            if r.pos != payload.len() {
                return Err(DecodeError::BadField("message length"));
            }
            Record::Message { envelope: env, content }
        }
        KIND_MARK => {
            let id = QueueId(r.u64()?);
            let rcpt = r.u16()?;
            let status = MarkStatus::from_u8(r.u8()?)?;
            let attempts = r.u16()?;
            let next_attempt_ms = r.u64()?;
            let text = r.string("mark text")?;
            Record::Mark(Mark { id, rcpt: (rcpt != u16::MAX).then_some(rcpt), status, attempts, next_attempt_ms, text })
        }
        k => return Err(DecodeError::UnknownKind(k)),
    };
    Ok((rec, total))
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn sample_envelope() -> Envelope {
        let mut e = Envelope::new(QueueId(0x1234_5678_9abc_def0));
        e.received_ms = 1_795_321_697_123;
        e.from = "alice@remote.example".into();
        e.body = Some(Body::EightBitMime);
        e.smtputf8 = true;
        e.ret = Some(Ret::Hdrs);
        e.envid = Some("QQ314159".into());
        e.rcpts = vec![
            Recipient { address: "bob@example.test".into(), notify: None, orcpt: None },
            Recipient {
                address: "jörg@example.test".into(),
                notify: Some(Notify { success: true, failure: true, ..Default::default() }),
                orcpt: Some("rfc822;j+C3+B6rg@example.test".into()),
            },
        ];
        e
    }

    #[test]
    fn message_round_trip() {
        let env = sample_envelope();
        let content = b"Subject: x\r\n\r\nbody\r\n";
        let mut rec = Vec::new();
        encode_message_header(7, &env, content, &mut rec);
        rec.extend_from_slice(content);
        let (r, len) = decode_record(7, &rec).unwrap();
        assert_eq!(len, rec.len());
        assert_eq!(r, Record::Message { envelope: env.clone(), content: &content[..] });
        // With the AUTH= mailbox (RFC 4954 §5) too; records without it read as before.
        let with_auth = Envelope { auth: Some("alice+2Bx@remote.example".into()), ..env };
        let mut rec2 = Vec::new();
        encode_message_header(7, &with_auth, content, &mut rec2);
        rec2.extend_from_slice(content);
        assert_eq!(
            decode_record(7, &rec2).unwrap().0,
            Record::Message { envelope: with_auth.clone(), content: &content[..] }
        );
        // A script's route and a quarantine reason, alone and together.
        for (route, quarantine) in [(Some("relay.example:2525"), None), (None, Some("phish")), (Some("h"), Some("q"))] {
            let e = Envelope {
                route: route.map(str::to_string),
                quarantine: quarantine.map(str::to_string),
                ..with_auth.clone()
            };
            let mut rec3 = Vec::new();
            encode_message_header(7, &e, content, &mut rec3);
            rec3.extend_from_slice(content);
            assert_eq!(decode_record(7, &rec3).unwrap().0, Record::Message { envelope: e, content: &content[..] });
        }
        // The same bytes are not a record of another segment.
        assert_eq!(decode_record(8, &rec).unwrap_err(), DecodeError::BadChecksum);
        // Every truncation and every flipped byte is detected.
        for cut in 0..rec.len() {
            assert!(decode_record(7, &rec[..cut]).is_err(), "cut {cut}");
        }
        for i in 0..rec.len() {
            let mut bad = rec.clone();
            bad[i] ^= 0x40;
            assert!(decode_record(7, &bad).is_err(), "flip {i}");
        }
    }

    #[test]
    fn mark_round_trip_and_end() {
        let m = Mark {
            id: QueueId(9),
            rcpt: Some(1),
            status: MarkStatus::Deferred,
            attempts: 3,
            next_attempt_ms: 42,
            text: "451 4.3.0 try later".into(),
        };
        let mut b = Vec::new();
        encode_mark(1, &m, &mut b);
        let len = b.len();
        b.extend_from_slice(&[0u8; 16]);
        let (r, l) = decode_record(1, &b).unwrap();
        assert_eq!((r, l), (Record::Mark(m), len));
        assert_eq!(decode_record(1, &b[len..]).unwrap_err(), DecodeError::End);
    }

    #[test]
    fn segment_header() {
        let h = SegmentHeader { shard: 2, seq: 77, created_ms: 5 };
        let b = h.encode();
        assert_eq!(SegmentHeader::decode(&b), Ok(h));
        let mut bad = b;
        bad[20] ^= 1;
        assert_eq!(SegmentHeader::decode(&bad), Err(DecodeError::BadHeader));
    }
}
