//! Segment files: `{first_seq:020}.seg`, an 8-byte header (`OPSEG001`) then records back to back (layout in
//! `record.rs`). Sequence numbers are dense inside a segment, so a record's offset is found by its index.
//!
//! Recovery at open reads every segment. The last one is where a crash can leave a torn tail: bytes written by
//! a group commit whose fsync never finished, so nobody was told they were durable. At its first record that
//! is short, fails its checksum or has the wrong sequence number, the file is cut and the rest dropped.
//! Every other segment was fsync'd whole before the next one was created, so a bad record there is damage
//! to acknowledged data, not a crash: the log refuses to open ([`LogError::Corrupt`]) rather than drop
//! it silently. Damage inside the last segment cannot be told from a torn tail and is cut like one.
//!
//! The writer extends the segment it appends to with zeros ahead of its records (see `PREALLOCATE` in
//! `writer.rs`) and cuts them when it seals the segment or closes the log. After a crash the last segment can
//! end in them: zeros from the first bad record to the end of the file are that space, cut without a warning
//! and not counted as a torn tail.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;

use super::record::{self, RecordView, MIN_BODY, PREFIX};
use super::LogError;

/// The header every segment starts with.
pub(crate) const HEADER: &[u8; 8] = b"OPSEG001";
const HEADER_LEN: u64 = HEADER.len() as u64;

/// One segment as the log keeps it in memory.
#[derive(Debug)]
pub(crate) struct Segment {
    /// Sequence number of its first record (also in its name).
    pub first_seq: u64,
    pub path: Arc<Path>,
    /// Shared by the writer (`pwrite`) and readers (`pread`); neither uses the file position.
    pub file: Arc<File>,
    /// Offset of each published record, by `seq - first_seq`.
    pub offsets: Vec<u32>,
    /// Bytes of the header and the published records.
    pub bytes: u64,
}

impl Segment {
    /// One past the last published sequence number.
    pub fn end_seq(&self) -> u64 {
        self.first_seq + self.offsets.len() as u64
    }

    /// Where record `seq` lies: `(offset, len)`, if this segment holds it.
    pub fn locate(&self, seq: u64) -> Option<(u64, usize)> {
        let index = usize::try_from(seq.checked_sub(self.first_seq)?).ok()?;
        let start = u64::from(*self.offsets.get(index)?);
        let end = self
            .offsets
            .get(index + 1)
            .map_or(self.bytes, |&next| u64::from(next));
        Some((start, (end - start) as usize))
    }
}

/// The file name of the segment starting at `first_seq`.
pub(crate) fn file_name(first_seq: u64) -> String {
    format!("{first_seq:020}.seg")
}

/// The first sequence numbers of the segments in `dir`, ascending. Other files are not the log's business.
pub(crate) fn list(dir: &Path) -> io::Result<Vec<u64>> {
    let mut firsts = Vec::new();
    for entry in fs::read_dir(dir)? {
        let name = entry?.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(first) = name
            .strip_suffix(".seg")
            .filter(|stem| stem.len() == 20 && stem.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|stem| stem.parse::<u64>().ok())
        {
            firsts.push(first);
        }
    }
    firsts.sort_unstable();
    Ok(firsts)
}

/// Creates an empty segment starting at `first_seq` and makes it durable, directory entry included.
pub(crate) fn create(dir: &Path, first_seq: u64) -> io::Result<Segment> {
    let path = dir.join(file_name(first_seq));
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)?;
    file.write_all_at(HEADER, 0)?;
    file.sync_all()?;
    super::cursor::sync_dir(dir)?;
    Ok(Segment {
        first_seq,
        path: path.into(),
        file: Arc::new(file),
        offsets: Vec::new(),
        bytes: HEADER_LEN,
    })
}

/// Reads one record's bytes and checks them; used by endpoints reading the log.
pub(crate) fn read_record(
    file: &File,
    path: &Path,
    offset: u64,
    len: usize,
    seq: u64,
) -> Result<(u64, Bytes), LogError> {
    // Read into the vector's spare capacity (exactly `len`: `with_capacity` allocates what it is asked for),
    // without zeroing it first.
    let mut buf = Vec::with_capacity(len);
    while buf.len() < len {
        let at = offset + buf.len() as u64;
        match rustix::io::pread(file, rustix::buffer::spare_capacity(&mut buf), at) {
            Ok(0) => return Err(io::Error::from(io::ErrorKind::UnexpectedEof).into()),
            Ok(_) | Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(io::Error::from(e).into()),
        }
    }
    let corrupt = |reason| LogError::Corrupt {
        path: path.to_owned(),
        offset,
        reason,
    };
    let prefix: [u8; PREFIX] = buf
        .get(..PREFIX)
        .and_then(|p| p.try_into().ok())
        .ok_or_else(|| corrupt("record shorter than its prefix"))?;
    let (body_len, crc) = record::parse_prefix(prefix);
    if body_len as usize + PREFIX != len {
        return Err(corrupt("record length does not match the index"));
    }
    let view = record::decode_body(&buf[PREFIX..], crc).map_err(corrupt)?;
    if view.seq != seq {
        return Err(corrupt("record has an unexpected sequence number"));
    }
    let (enqueued, payload_at) = (view.enqueued_unix_ms, PREFIX + view.payload_at);
    Ok((enqueued, Bytes::from(buf).slice(payload_at..)))
}

/// Whether a damaged record may be cut (the last segment) or means corruption (any other).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Tail {
    /// Cut the file at the first bad record.
    Truncate,
    /// Refuse to open at the first bad record.
    Refuse,
}

/// What recovery did to one segment.
#[derive(Debug)]
pub(crate) struct Recovered {
    pub segment: Segment,
    /// Bytes cut from a torn tail.
    pub truncated: u64,
}

/// Reads a segment from disk, calling `on_record` for each valid record in order, and cuts or refuses a
/// damaged one as `tail` says.
pub(crate) fn recover(
    path: &Path,
    first_seq: u64,
    max_record_bytes: usize,
    tail: Tail,
    mut on_record: impl FnMut(&RecordView<'_>),
) -> Result<Recovered, LogError> {
    let file = OpenOptions::new().read(true).write(true).open(path)?;
    let file_len = file.metadata()?.len();
    let corrupt = |offset, reason| LogError::Corrupt {
        path: path.to_owned(),
        offset,
        reason,
    };

    let mut header = [0; HEADER.len()];
    let header_ok = file_len >= HEADER_LEN && {
        file.read_exact_at(&mut header, 0)?;
        &header == HEADER
    };
    if !header_ok {
        if tail == Tail::Refuse || file_len > HEADER_LEN {
            return Err(corrupt(0, "not a segment file"));
        }
        // A crash while the segment was being created: it never held a record.
        file.set_len(0)?;
        file.write_all_at(HEADER, 0)?;
        file.sync_all()?;
        return Ok(Recovered {
            segment: Segment {
                first_seq,
                path: path.into(),
                file: Arc::new(file),
                offsets: Vec::new(),
                bytes: HEADER_LEN,
            },
            truncated: file_len,
        });
    }

    let mut reader = BufReader::with_capacity(1 << 16, &file);
    io::copy(&mut (&mut reader).take(HEADER_LEN), &mut io::sink())?;
    let mut offsets = Vec::new();
    let mut at = HEADER_LEN;
    let mut body = Vec::new();
    let bad = loop {
        if at == file_len {
            break None;
        }
        let expected_seq = first_seq + offsets.len() as u64;
        let mut prefix = [0; PREFIX];
        if file_len - at < PREFIX as u64 {
            break Some("record prefix cut short");
        }
        reader.read_exact(&mut prefix)?;
        let (len, crc) = record::parse_prefix(prefix);
        let len = len as usize;
        if len < MIN_BODY || len + PREFIX > max_record_bytes {
            break Some("record length out of range");
        }
        if file_len - at - (PREFIX as u64) < len as u64 {
            break Some("record body cut short");
        }
        body.resize(len, 0);
        reader.read_exact(&mut body)?;
        let view = match record::decode_body(&body, crc) {
            Ok(view) => view,
            Err(reason) => break Some(reason),
        };
        if view.seq != expected_seq {
            break Some("record has an unexpected sequence number");
        }
        on_record(&view);
        offsets.push(u32::try_from(at).map_err(|_| corrupt(at, "segment too large"))?);
        at += (PREFIX + len) as u64;
    };

    let mut truncated = 0;
    if bad.is_some() && tail == Tail::Truncate && zeros_from(&file, at, file_len)? {
        // The space the writer extended the segment with ahead of its records: nothing was written there.
        tracing::debug!(path = %path.display(), offset = at, "cutting the zeros past the last record");
        file.set_len(at)?;
        file.sync_all()?;
    } else if let Some(reason) = bad {
        if tail == Tail::Refuse {
            return Err(corrupt(at, reason));
        }
        tracing::warn!(
            path = %path.display(),
            offset = at,
            dropped_bytes = file_len - at,
            reason,
            "cutting the torn tail of the message log (never acknowledged)"
        );
        file.set_len(at)?;
        file.sync_all()?;
        truncated = file_len - at;
    }
    Ok(Recovered {
        segment: Segment {
            first_seq,
            path: path.into(),
            file: Arc::new(file),
            offsets,
            bytes: at,
        },
        truncated,
    })
}

/// Whether every byte of `file` from `at` to `end` is zero.
fn zeros_from(file: &File, mut at: u64, end: u64) -> io::Result<bool> {
    let mut buf = vec![0; 64 << 10];
    while at < end {
        // At most 64 KiB: fits usize.
        #[allow(clippy::cast_possible_truncation)]
        let n = (end - at).min(buf.len() as u64) as usize;
        file.read_exact_at(&mut buf[..n], at)?;
        if buf[..n].iter().any(|&b| b != 0) {
            return Ok(false);
        }
        at += n as u64;
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::record::Record;
    use std::path::PathBuf;

    fn write_records(dir: &Path, first_seq: u64, n: u64) -> (PathBuf, Vec<u64>) {
        let segment = create(dir, first_seq).unwrap();
        let mut buf = Vec::new();
        let mut ends = Vec::new();
        for i in 0..n {
            Record::to("e", vec![i as u8; 10]).encode(first_seq + i, 0, &mut buf);
            ends.push(HEADER_LEN + buf.len() as u64);
        }
        segment.file.write_all_at(&buf, HEADER_LEN).unwrap();
        (segment.path.to_path_buf(), ends)
    }

    #[test]
    fn segment_names_sort_by_first_sequence_number() {
        let dir = tempfile::tempdir().unwrap();
        for first in [100, 7, 1_000_000] {
            create(dir.path(), first).unwrap();
        }
        fs::write(dir.path().join("cursors"), b"x").unwrap();
        assert_eq!(list(dir.path()).unwrap(), vec![7, 100, 1_000_000]);
    }

    #[test]
    fn a_short_last_record_is_cut_and_the_rest_kept() {
        let dir = tempfile::tempdir().unwrap();
        let (path, ends) = write_records(dir.path(), 5, 3);
        let file = OpenOptions::new().write(true).open(&path).unwrap();
        file.set_len(ends[2] - 3).unwrap();
        let mut seen = Vec::new();
        let recovered = recover(&path, 5, 1 << 20, Tail::Truncate, |v| seen.push(v.seq)).unwrap();
        assert_eq!(seen, vec![5, 6]);
        assert_eq!(recovered.segment.end_seq(), 7);
        assert_eq!(fs::metadata(&path).unwrap().len(), ends[1]);
        assert_eq!(recovered.truncated, ends[2] - 3 - ends[1]);
    }

    #[test]
    fn a_bad_record_in_a_sealed_segment_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (path, ends) = write_records(dir.path(), 1, 3);
        let mut bytes = fs::read(&path).unwrap();
        bytes[ends[0] as usize + 12] ^= 0xff;
        fs::write(&path, bytes).unwrap();
        let err = recover(&path, 1, 1 << 20, Tail::Refuse, |_| {}).unwrap_err();
        assert!(
            matches!(err, LogError::Corrupt { offset, .. } if offset == ends[0]),
            "{err}"
        );
    }

    #[test]
    fn a_segment_whose_creation_was_cut_short_starts_empty() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(file_name(9));
        fs::write(&path, b"OPS").unwrap();
        let recovered = recover(&path, 9, 1 << 20, Tail::Truncate, |_| {}).unwrap();
        assert_eq!(recovered.segment.end_seq(), 9);
        assert_eq!(fs::read(&path).unwrap(), HEADER);
    }

    #[test]
    fn a_located_record_reads_back_with_its_payload() {
        let dir = tempfile::tempdir().unwrap();
        let (path, _) = write_records(dir.path(), 3, 4);
        let recovered = recover(&path, 3, 1 << 20, Tail::Refuse, |_| {}).unwrap();
        let segment = recovered.segment;
        let (offset, len) = segment.locate(5).unwrap();
        let (_, payload) = read_record(&segment.file, &path, offset, len, 5).unwrap();
        assert_eq!(&payload[..], &[2; 10]);
        assert!(segment.locate(7).is_none());
        assert!(segment.locate(2).is_none());
        assert!(read_record(&segment.file, &path, offset, len, 6).is_err());
    }
}
