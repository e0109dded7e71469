//! Where every queued message is, written at a clean stop: `<spool>/queue.idx`, so that
//! `queue show ID` on a stopped server finds a message in a few reads whatever the queue
//! size, instead of replaying the spool.
//!
//! # Format
//!
//! A 16-byte header (`RINGMXQI`, version, entry count, all little-endian) and one 17-byte
//! entry per queued message, sorted by queue id: id (8), segment sequence (4), offset in
//! the segment (4), shard (1). A lookup is a binary search with positioned reads.
//!
//! # When it is true
//!
//! The control thread writes it as its last act (temporary file, sync, rename, directory
//! sync): it lists exactly the queue at that moment. Anything that changes the queue
//! afterwards removes it first, durably: the server at start, before it serves
//! ([`remove`]), and an offline `queue delete`. A server killed never wrote one, so after a
//! crash the commands replay the spool as before. A lookup also checks what it read: the
//! record at the place must decode and carry the id.

use super::QueueId;
use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

const FILE: &str = "queue.idx";
const MAGIC: &[u8; 8] = b"RINGMXQI";
const VERSION: u32 = 1;
const HEADER: u64 = 16;
const ENTRY: u64 = 17;

/// A queued message's record: shard, segment and offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Place {
    pub id: QueueId,
    pub shard: u8,
    pub seq: u64,
    pub offset: u64,
}

fn path(spool: &Path) -> PathBuf {
    spool.join(FILE)
}

fn sync_dir(spool: &Path) -> io::Result<()> {
    File::open(spool)?.sync_all()
}

/// Writes the snapshot of `places` (sorted here), replacing any earlier one.
pub fn write(spool: &Path, places: &mut [Place]) -> io::Result<()> {
    places.sort_unstable_by_key(|p| p.id);
    let tmp = spool.join(format!("{FILE}.tmp"));
    let mut w = io::BufWriter::with_capacity(1 << 20, File::create(&tmp)?);
    w.write_all(MAGIC)?;
    w.write_all(&VERSION.to_le_bytes())?;
    w.write_all(&(places.len() as u32).to_le_bytes())?;
    for p in places.iter() {
        let seq = u32::try_from(p.seq).map_err(|_| io::Error::other("segment sequence past 2^32"))?;
        let offset = u32::try_from(p.offset).map_err(|_| io::Error::other("offset past 4 GiB"))?;
        w.write_all(&p.id.0.to_le_bytes())?;
        w.write_all(&seq.to_le_bytes())?;
        w.write_all(&offset.to_le_bytes())?;
        w.write_all(&[p.shard])?;
    }
    let f = w.into_inner().map_err(|e| e.into_error())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path(spool))?;
    sync_dir(spool)
}

/// Removes the snapshot, durably: the queue is about to change.
pub fn remove(spool: &Path) -> io::Result<()> {
    match std::fs::remove_file(path(spool)) {
        Ok(()) => sync_dir(spool),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Looks `id` up: `None` when there is no usable snapshot (the caller replays the spool),
/// `Some(None)` when the queue at the stop did not hold it.
pub fn find(spool: &Path, id: QueueId) -> io::Result<Option<Option<Place>>> {
    let f = match File::open(path(spool)) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut h = [0u8; HEADER as usize];
    if f.read_exact_at(&mut h, 0).is_err() || &h[..8] != MAGIC || h[8..12] != VERSION.to_le_bytes() {
        return Ok(None);
    }
    let n = u32::from_le_bytes(h[12..16].try_into().expect("4 bytes")) as u64;
    if f.metadata()?.len() != HEADER + n * ENTRY {
        return Ok(None);
    }
    let entry = |i: u64| -> io::Result<Place> {
        let mut e = [0u8; ENTRY as usize];
        f.read_exact_at(&mut e, HEADER + i * ENTRY)?;
        Ok(Place {
            id: QueueId(u64::from_le_bytes(e[0..8].try_into().expect("8 bytes"))),
            seq: u32::from_le_bytes(e[8..12].try_into().expect("4 bytes")) as u64,
            offset: u32::from_le_bytes(e[12..16].try_into().expect("4 bytes")) as u64,
            shard: e[16],
        })
    };
    let (mut lo, mut hi) = (0, n);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        let p = entry(mid)?;
        match p.id.cmp(&id) {
            std::cmp::Ordering::Equal => return Ok(Some(Some(p))),
            std::cmp::Ordering::Less => lo = mid + 1,
            std::cmp::Ordering::Greater => hi = mid,
        }
    }
    Ok(Some(None))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn place(id: u64) -> Place {
        Place { id: QueueId(id), shard: (id % 3) as u8, seq: id / 10, offset: id * 100 }
    }

    #[test]
    fn written_sorted_and_found_by_binary_search() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(find(dir.path(), QueueId(5)).unwrap(), None, "no snapshot");
        let mut places: Vec<Place> = (1..=1000).rev().map(|i| place(i * 2)).collect();
        write(dir.path(), &mut places).unwrap();
        for id in [2, 4, 1000, 1998, 2000] {
            assert_eq!(find(dir.path(), QueueId(id)).unwrap(), Some(Some(place(id))), "{id}");
        }
        for id in [0, 1, 999, 2001] {
            assert_eq!(find(dir.path(), QueueId(id)).unwrap(), Some(None), "{id}");
        }
        write(dir.path(), &mut []).unwrap();
        assert_eq!(find(dir.path(), QueueId(2)).unwrap(), Some(None), "an empty queue");
        remove(dir.path()).unwrap();
        remove(dir.path()).unwrap();
        assert_eq!(find(dir.path(), QueueId(2)).unwrap(), None);
    }

    #[test]
    fn a_damaged_snapshot_is_not_used() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), &mut [place(7), place(9)]).unwrap();
        let p = path(dir.path());
        let full = std::fs::read(&p).unwrap();
        std::fs::write(&p, &full[..full.len() - 1]).unwrap();
        assert_eq!(find(dir.path(), QueueId(7)).unwrap(), None, "cut short");
        let mut other = full.clone();
        other[0] = b'X';
        std::fs::write(&p, &other).unwrap();
        assert_eq!(find(dir.path(), QueueId(7)).unwrap(), None, "not ours");
    }
}
