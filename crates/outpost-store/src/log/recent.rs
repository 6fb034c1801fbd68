//! The payloads of the records written last, kept in memory so that an endpoint reading close behind the writer
//! (the usual case: a subscriber that keeps up) gets them without a `pread`, a buffer of its own and a CRC
//! check per record. The same bytes the writer put on disk, shared rather than copied (`Bytes`).
//!
//! Bounded twice: by bytes ([`LogOptions::recent_bytes`](super::LogOptions), oldest out first when a new
//! group pushes past it) and by age (what is older than [`MAX_AGE_MS`] goes at the next checkpoint, so an idle
//! log holds none of it). A record not found here is read from its segment as before.

use std::collections::VecDeque;

use bytes::Bytes;

/// Records kept longer than this are let go at the next checkpoint: a reader this far behind reads the disk.
pub(crate) const MAX_AGE_MS: u64 = 1_000;

/// One record kept in memory.
struct Kept {
    seq: u64,
    enqueued_unix_ms: u64,
    payload: Bytes,
}

/// The records written last, by increasing sequence number (dense: a group's records are pushed in order).
#[derive(Default)]
pub(crate) struct Recent {
    kept: VecDeque<Kept>,
    bytes: usize,
    max_bytes: usize,
}

impl Recent {
    pub(crate) fn new(max_bytes: usize) -> Self {
        Self {
            kept: VecDeque::new(),
            bytes: 0,
            max_bytes,
        }
    }

    /// Keeps a record just published, letting the oldest go past the byte bound (a payload over the bound on its
    /// own is not kept).
    pub(crate) fn push(&mut self, seq: u64, enqueued_unix_ms: u64, payload: Bytes) {
        if payload.len() > self.max_bytes {
            return self.clear();
        }
        if self.kept.back().is_some_and(|last| last.seq + 1 != seq) {
            // Not dense (a group was refused in between): start again rather than search a sparse run.
            self.clear();
        }
        self.bytes += payload.len();
        self.kept.push_back(Kept {
            seq,
            enqueued_unix_ms,
            payload,
        });
        while self.bytes > self.max_bytes {
            self.pop_front();
        }
    }

    /// The payload of `seq` and when it was enqueued, if it is kept.
    pub(crate) fn get(&self, seq: u64) -> Option<(u64, Bytes)> {
        let first = self.kept.front()?.seq;
        let index = usize::try_from(seq.checked_sub(first)?).ok()?;
        let kept = self.kept.get(index)?;
        debug_assert_eq!(kept.seq, seq);
        Some((kept.enqueued_unix_ms, kept.payload.clone()))
    }

    /// Lets go of what every endpoint is done with (before `floor`, the first record any lane still needs)
    /// and of what was enqueued before `older_than_unix_ms`.
    pub(crate) fn trim(&mut self, floor: u64, older_than_unix_ms: u64) {
        while self
            .kept
            .front()
            .is_some_and(|k| k.seq < floor || k.enqueued_unix_ms < older_than_unix_ms)
        {
            self.pop_front();
        }
        if self.kept.is_empty() {
            // An idle log gives the queue's memory back too.
            self.kept = VecDeque::new();
        }
    }

    fn clear(&mut self) {
        self.kept.clear();
        self.bytes = 0;
    }

    fn pop_front(&mut self) {
        if let Some(kept) = self.kept.pop_front() {
            self.bytes -= kept.payload.len();
        }
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.kept.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload(n: usize) -> Bytes {
        Bytes::from(vec![7u8; n])
    }

    #[test]
    fn the_newest_records_are_kept_within_the_byte_bound() {
        let mut recent = Recent::new(250);
        for seq in 1..=5 {
            recent.push(seq, 10, payload(100));
        }
        assert_eq!(recent.len(), 2);
        assert!(recent.get(3).is_none());
        assert_eq!(recent.get(4).map(|(_, p)| p.len()), Some(100));
        assert_eq!(recent.get(5).map(|(at, _)| at), Some(10));
        assert!(recent.get(6).is_none());
    }

    #[test]
    fn a_gap_in_sequence_numbers_starts_again() {
        let mut recent = Recent::new(1000);
        recent.push(1, 0, payload(10));
        recent.push(3, 0, payload(10));
        assert!(recent.get(1).is_none());
        assert!(recent.get(3).is_some());
    }

    #[test]
    fn trimming_lets_go_of_consumed_and_old_records() {
        let mut recent = Recent::new(1000);
        for seq in 1..=4 {
            recent.push(seq, seq * 100, payload(10));
        }
        recent.trim(2, 0);
        assert!(recent.get(1).is_none());
        assert!(recent.get(2).is_some());
        recent.trim(0, 350);
        assert_eq!(recent.len(), 1);
        recent.trim(u64::MAX, 0);
        assert_eq!(recent.len(), 0);
        assert_eq!(recent.kept.capacity(), 0);
    }

    #[test]
    fn a_payload_over_the_bound_is_not_kept() {
        let mut recent = Recent::new(50);
        recent.push(1, 0, payload(10));
        recent.push(2, 0, payload(60));
        assert_eq!(recent.len(), 0);
        recent.push(3, 0, payload(10));
        assert!(recent.get(3).is_some());
    }
}
