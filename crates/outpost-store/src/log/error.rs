//! The log's one error type.

use std::io;
use std::path::PathBuf;

/// Errors of the message log.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// A file operation failed.
    #[error("message log I/O error: {0}")]
    Io(#[from] io::Error),
    /// A file holds bytes that cannot be what the log wrote; the log refuses to guess.
    #[error("message log corrupt: {} at offset {offset}: {reason}", path.display())]
    Corrupt {
        /// The damaged file.
        path: PathBuf,
        /// Where in it the damage starts.
        offset: u64,
        /// What is wrong.
        reason: &'static str,
    },
    /// The append would exceed the disk quota and the policy is [`FullPolicy::RejectNew`](super::FullPolicy::RejectNew) (or nothing is left
    /// to drop).
    #[error("message log full: {used} + {needed} bytes exceed the quota of {quota}")]
    Full {
        /// Bytes the segments use now.
        used: u64,
        /// Bytes the append needs.
        needed: u64,
        /// The configured quota.
        quota: u64,
    },
    /// The record cannot be stored as given.
    #[error("invalid record: {0}")]
    InvalidRecord(String),
    /// The options make no sense together.
    #[error("invalid message log options: {0}")]
    InvalidOptions(String),
    /// Another process (or another `MessageLog` in this one) has the directory open.
    #[error("message log {} is in use by another process", .0.display())]
    Locked(PathBuf),
    /// An earlier write or fsync failed; what reached the disk is unknown until the log is reopened.
    #[error("message log stopped after an I/O error; reopen it to recover")]
    Poisoned,
    /// The writer thread is gone.
    #[error("message log is closed")]
    Closed,
}

impl LogError {
    /// The same error for another waiter on it (`io::Error` is not `Clone`).
    pub(crate) fn duplicate(&self) -> Self {
        match self {
            Self::Io(e) => Self::Io(io::Error::new(e.kind(), e.to_string())),
            Self::Corrupt {
                path,
                offset,
                reason,
            } => Self::Corrupt {
                path: path.clone(),
                offset: *offset,
                reason,
            },
            &Self::Full {
                used,
                needed,
                quota,
            } => Self::Full {
                used,
                needed,
                quota,
            },
            Self::InvalidRecord(s) => Self::InvalidRecord(s.clone()),
            Self::InvalidOptions(s) => Self::InvalidOptions(s.clone()),
            Self::Locked(p) => Self::Locked(p.clone()),
            Self::Poisoned => Self::Poisoned,
            Self::Closed => Self::Closed,
        }
    }
}
