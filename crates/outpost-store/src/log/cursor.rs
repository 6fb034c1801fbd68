//! The cursor file: for each endpoint and priority, the sequence number through which everything is done.
//!
//! It is small and rewritten whole at each checkpoint: written to `cursors.tmp`, fsync'd, renamed over
//! `cursors`, and the directory fsync'd, so a crash leaves either the old file or the new one, never a mix.
//!
//! ```text
//! magic   8 bytes  "OPCURS01"
//! count   u32 LE   number of endpoints
//! count × endpoint:
//!   name_len u16 LE, name (UTF-8), lanes u16 LE, lanes × (priority u32 LE, acked_through u64 LE)
//! crc     u32 LE   CRC-32 (IEEE) of everything before it
//! ```

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::Path;

use super::{LogError, Shared};

/// Name of the cursor file inside the log directory.
pub(crate) const CURSOR_FILE: &str = "cursors";
const TEMP_FILE: &str = "cursors.tmp";
const MAGIC: &[u8; 8] = b"OPCURS01";

/// Every endpoint's lane cursors: endpoint → priority → acked through.
pub(crate) type Cursors = BTreeMap<String, BTreeMap<u32, u64>>;

/// Encodes `cursors` in the file format.
fn encode(cursors: &Cursors) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + cursors.len() * 48);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(cursors.len() as u32).to_le_bytes());
    for (name, lanes) in cursors {
        out.extend_from_slice(&(name.len() as u16).to_le_bytes());
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(&(lanes.len() as u16).to_le_bytes());
        for (priority, acked) in lanes {
            out.extend_from_slice(&priority.to_le_bytes());
            out.extend_from_slice(&acked.to_le_bytes());
        }
    }
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// Decodes the file format; the error says what is wrong.
fn decode(bytes: &[u8]) -> Result<Cursors, &'static str> {
    let (content, crc) = bytes
        .split_last_chunk::<4>()
        .ok_or("cursor file too short")?;
    if crc32fast::hash(content) != u32::from_le_bytes(*crc) {
        return Err("cursor file checksum mismatch");
    }
    let rest = content.strip_prefix(MAGIC).ok_or("not a cursor file")?;
    let mut at = 0;
    let mut take = |n: usize| -> Result<&[u8], &'static str> {
        let slice = rest.get(at..at + n).ok_or("cursor file ends early")?;
        at += n;
        Ok(slice)
    };
    let count = u32::from_le_bytes(take(4)?.try_into().unwrap_or_default());
    let mut cursors = Cursors::new();
    for _ in 0..count {
        let len = u16::from_le_bytes(take(2)?.try_into().unwrap_or_default());
        let name = std::str::from_utf8(take(usize::from(len))?)
            .map_err(|_| "endpoint name is not UTF-8")?
            .to_owned();
        let lanes = u16::from_le_bytes(take(2)?.try_into().unwrap_or_default());
        let mut map = BTreeMap::new();
        for _ in 0..lanes {
            let priority = u32::from_le_bytes(take(4)?.try_into().unwrap_or_default());
            let acked = u64::from_le_bytes(take(8)?.try_into().unwrap_or_default());
            map.insert(priority, acked);
        }
        cursors.insert(name, map);
    }
    Ok(cursors)
}

/// Reads the cursor file of `dir`; none yet means nothing was ever acknowledged.
pub(crate) fn load(dir: &Path) -> Result<Cursors, LogError> {
    let path = dir.join(CURSOR_FILE);
    match fs::read(&path) {
        Ok(bytes) => decode(&bytes).map_err(|reason| LogError::Corrupt {
            path,
            offset: 0,
            reason,
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Cursors::new()),
        Err(e) => Err(e.into()),
    }
}

/// Replaces the cursor file atomically and durably.
pub(crate) fn store(shared: &Shared, cursors: &Cursors) -> io::Result<()> {
    let temp = shared.dir.join(TEMP_FILE);
    shared.fault(super::FaultPoint::CursorWrite)?;
    let mut file = File::create(&temp)?;
    file.write_all(&encode(cursors))?;
    file.sync_all()?;
    drop(file);
    shared.fault(super::FaultPoint::CursorRename)?;
    fs::rename(&temp, shared.dir.join(CURSOR_FILE))?;
    // The rename is only durable once the directory entry is.
    sync_dir(&shared.dir)
}

/// fsyncs a directory, making creations, renames and removals in it durable.
pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_through_the_file_format() {
        let mut cursors = Cursors::new();
        cursors.insert(
            "$upstream".into(),
            BTreeMap::from([(0, 5), (2_000_000_000, 9)]),
        );
        cursors.insert("edge1/filter/input1".into(), BTreeMap::from([(3, 1)]));
        assert_eq!(decode(&encode(&cursors)).unwrap(), cursors);
        assert_eq!(decode(&encode(&Cursors::new())).unwrap(), Cursors::new());
    }

    #[test]
    fn a_damaged_cursor_file_is_refused() {
        let mut cursors = Cursors::new();
        cursors.insert("a".into(), BTreeMap::from([(0, 5)]));
        let mut bytes = encode(&cursors);
        bytes[10] ^= 1;
        assert!(decode(&bytes).is_err());
        assert!(decode(&bytes[..3]).is_err());
    }
}
