//! How a log is sized and what it does when full.

use std::time::Duration;

use super::LogError;

/// What an append does when the disk quota would be exceeded.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum FullPolicy {
    /// Fail the append with [`LogError::Full`]: the sender is not acknowledged and retries later.
    #[default]
    RejectNew,
    /// Delete the oldest sealed segments, counting their undelivered records as dropped.
    DropOldest,
}

/// How a [`MessageLog`](super::MessageLog) sizes and maintains itself.
#[derive(Clone, Debug)]
pub struct LogOptions {
    /// A segment is sealed and a new one started once it reaches this size (a record is never split).
    pub segment_bytes: u64,
    /// Upper bound on the bytes of all segments (give or take the 8-byte header of a segment started by the
    /// append that reaches it).
    pub quota_bytes: u64,
    /// What happens when an append would pass `quota_bytes`.
    pub full_policy: FullPolicy,
    /// Largest encoded record accepted (payload plus about 30 bytes and the target names).
    pub max_record_bytes: usize,
    /// A group commit stops collecting appends once it holds this many bytes.
    pub max_group_bytes: usize,
    /// How often acknowledgements are persisted and consumed segments removed.
    pub checkpoint_interval: Duration,
    /// Payload bytes of the records written last kept in memory for endpoints reading close behind the writer
    /// (for at most a second); 0 reads every record from its segment.
    pub recent_bytes: usize,
}

impl Default for LogOptions {
    fn default() -> Self {
        Self {
            segment_bytes: 16 << 20,
            quota_bytes: 1 << 30,
            full_policy: FullPolicy::RejectNew,
            max_record_bytes: 4 << 20,
            max_group_bytes: 4 << 20,
            checkpoint_interval: Duration::from_secs(1),
            recent_bytes: 1 << 20,
        }
    }
}

impl LogOptions {
    pub(crate) fn validate(&self) -> Result<(), LogError> {
        let bad = |s: String| Err(LogError::InvalidOptions(s));
        if !(4096..=1 << 30).contains(&self.segment_bytes) {
            return bad(format!(
                "segment_bytes {} not in 4 KiB ..= 1 GiB",
                self.segment_bytes
            ));
        }
        if self.quota_bytes < 2 * self.segment_bytes {
            return bad(format!(
                "quota_bytes {} is less than two segments ({})",
                self.quota_bytes,
                2 * self.segment_bytes
            ));
        }
        // Offsets inside a segment are u32: the largest segment is segment_bytes plus one record.
        if !(64..=1 << 30).contains(&self.max_record_bytes) {
            return bad(format!(
                "max_record_bytes {} not in 64 ..= 1 GiB",
                self.max_record_bytes
            ));
        }
        if self.checkpoint_interval.is_zero() {
            return bad("checkpoint_interval is zero".into());
        }
        Ok(())
    }
}
