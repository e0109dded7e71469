//! Reading one message record back by its place: the queue's driver when a message is due,
//! `queue show` and `queue list` one message at a time. Segment files stay open between
//! reads (messages come in runs from the same segment), up to a bound.

use super::record::{RECORD_PREFIX_LEN, Record, decode_record};
use super::{Envelope, segment_path, shard_dir};
use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Segment files kept open at most.
const MAX_OPEN: usize = 64;
/// Bytes read at first: the record's prefix gives its length.
const FIRST_READ: u64 = 16 * 1024;

/// Reads message records from the spool at `spool`.
#[derive(Debug)]
pub struct RecordReader {
    spool: PathBuf,
    /// Open segment files, with their size.
    open: HashMap<(u8, u64), (File, u64)>,
}

impl RecordReader {
    pub fn new(spool: &Path) -> Self {
        RecordReader { spool: spool.to_path_buf(), open: HashMap::new() }
    }

    /// The envelope and content of the message record at `offset` in segment `seq` of
    /// `shard` (its length is read from its prefix, bounded by the file's end); the error
    /// names the file and the place.
    pub fn read(&mut self, shard: u8, seq: u64, offset: u64) -> Result<(Envelope, Vec<u8>), String> {
        let spool = &self.spool;
        let path = || segment_path(&shard_dir(spool, shard), seq);
        if !self.open.contains_key(&(shard, seq)) {
            if self.open.len() >= MAX_OPEN {
                self.open.clear();
            }
            let f = File::open(path()).map_err(|e| format!("{}: {e}", path().display()))?;
            let size = f.metadata().map_err(|e| format!("{}: {e}", path().display()))?.len();
            self.open.insert((shard, seq), (f, size));
        }
        let (f, size) = &self.open[&(shard, seq)];
        let at = |e: std::io::Error| format!("{} at {offset}: {e}", path().display());
        // Most records fit in a first read of FIRST_READ bytes; a longer one takes a second.
        let mut buf = vec![0u8; FIRST_READ.min(size.saturating_sub(offset)) as usize];
        f.read_exact_at(&mut buf, offset).map_err(at)?;
        let len = match buf.get(..RECORD_PREFIX_LEN) {
            Some(p) => RECORD_PREFIX_LEN as u64 + u32::from_le_bytes(p[..4].try_into().expect("4 bytes")) as u64,
            None => return Err(format!("{} at {offset}: past the end", path().display())),
        };
        if offset + len > *size {
            return Err(format!("{} at {offset}: a record of {len} bytes past the end", path().display()));
        }
        let have = buf.len() as u64;
        if len > have {
            buf.resize(len as usize, 0);
            f.read_exact_at(&mut buf[have as usize..], offset + have).map_err(at)?;
        }
        match decode_record(seq, &buf[..len as usize]) {
            Ok((Record::Message { envelope, content }, _)) => Ok((envelope, content.to_vec())),
            Ok(_) => Err(format!("{} at {offset}: not a message record", path().display())),
            Err(e) => Err(format!("{} at {offset}: {e}", path().display())),
        }
    }

    /// The file of segment `seq` of `shard`.
    pub fn path(&self, shard: u8, seq: u64) -> PathBuf {
        segment_path(&shard_dir(&self.spool, shard), seq)
    }

    /// A segment was retired: close it.
    pub fn forget(&mut self, shard: u8, seq: u64) {
        self.open.remove(&(shard, seq));
    }
}
