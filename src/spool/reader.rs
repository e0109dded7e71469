//! Reading one message record back by its place: the queue's driver when a message is due,
//! `queue show` and `queue list` one message at a time. Segment files stay open between
//! reads (messages come in runs from the same segment), up to a bound.

use super::record::{Record, decode_record};
use super::{Envelope, segment_path, shard_dir};
use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Segment files kept open at most.
const MAX_OPEN: usize = 64;

/// Reads message records from the spool at `spool`.
#[derive(Debug)]
pub struct RecordReader {
    spool: PathBuf,
    open: HashMap<(u8, u64), File>,
}

impl RecordReader {
    pub fn new(spool: &Path) -> Self {
        RecordReader { spool: spool.to_path_buf(), open: HashMap::new() }
    }

    /// The envelope and content of the message record of `len` bytes at `offset` in
    /// segment `seq` of `shard`; the error names the file and the place.
    pub fn read(&mut self, shard: u8, seq: u64, offset: u64, len: u64) -> Result<(Envelope, Vec<u8>), String> {
        let spool = &self.spool;
        let path = || segment_path(&shard_dir(spool, shard), seq);
        if !self.open.contains_key(&(shard, seq)) {
            if self.open.len() >= MAX_OPEN {
                self.open.clear();
            }
            let f = File::open(path()).map_err(|e| format!("{}: {e}", path().display()))?;
            self.open.insert((shard, seq), f);
        }
        let mut buf = vec![0u8; len as usize];
        self.open[&(shard, seq)]
            .read_exact_at(&mut buf, offset)
            .map_err(|e| format!("{} at {offset}: {e}", path().display()))?;
        match decode_record(seq, &buf) {
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
