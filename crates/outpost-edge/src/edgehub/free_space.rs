//! The free-space guard: when the file system holding the message log has less free space than `min_free_mib`,
//! the edge hub refuses new messages as the `reject` quota policy does (the sender gets no PUBACK and sends
//! again later), so that a disk filled by something else (logs, images, another program) cannot make the log
//! fail half-way through a write or starve the rest of the device.
//!
//! The reading (`statvfs`) is cached for [`READING_TTL`]: a busy edge hub accepts thousands of messages a
//! second, and one syscall a second is enough to notice a disk filling up.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a reading of the free space is trusted.
pub const READING_TTL: Duration = Duration::from_secs(1);

/// A file system's space, as an unprivileged process may use it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiskSpace {
    /// Bytes free for unprivileged users (`f_bavail`: root's reserve excluded).
    pub free_bytes: u64,
    /// The file system's size.
    pub total_bytes: u64,
}

/// The space of the file system holding `path`.
pub fn disk_space(path: &Path) -> io::Result<DiskSpace> {
    let stats = rustix::fs::statvfs(path).map_err(io::Error::from)?;
    Ok(DiskSpace {
        free_bytes: stats.f_bavail.saturating_mul(stats.f_frsize),
        total_bytes: stats.f_blocks.saturating_mul(stats.f_frsize),
    })
}

/// What the guard last saw, for `outpost edge stats`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FreeSpaceStatus {
    /// The last reading (`None` before the first, or when the file system could not be read).
    pub space: Option<DiskSpace>,
    /// The threshold (0: the guard is off).
    pub min_free_bytes: u64,
    /// Whether new messages are being refused.
    pub refusing: bool,
}

/// Refuses new messages while the disk of the message log is low.
pub struct FreeSpaceGuard {
    path: PathBuf,
    min_free_bytes: u64,
    read: fn(&Path) -> io::Result<DiskSpace>,
    /// A std `Mutex`: held for a comparison (and once a second a syscall), never across `.await`.
    last: Mutex<Last>,
}

#[derive(Default)]
struct Last {
    at: Option<Instant>,
    status: Option<DiskSpace>,
    refusing: bool,
}

impl FreeSpaceGuard {
    /// A guard over the file system of `path` that refuses below `min_free_bytes` (0 turns it off).
    pub fn new(path: PathBuf, min_free_bytes: u64) -> Self {
        Self::with_reader(path, min_free_bytes, disk_space)
    }

    /// A guard reading the free space with `read` (tests give a fake).
    pub fn with_reader(
        path: PathBuf,
        min_free_bytes: u64,
        read: fn(&Path) -> io::Result<DiskSpace>,
    ) -> Self {
        Self {
            path,
            min_free_bytes,
            read,
            last: Mutex::new(Last::default()),
        }
    }

    /// Whether a new message may be stored at `now`. Reads the disk when the last reading is older than
    /// [`READING_TTL`]; a disk that cannot be read admits (the log's own errors then speak).
    pub fn admits(&self, now: Instant) -> bool {
        if self.min_free_bytes == 0 {
            return true;
        }
        let mut last = self
            .last
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if last
            .at
            .is_none_or(|at| now.duration_since(at) >= READING_TTL)
        {
            last.at = Some(now);
            match (self.read)(&self.path) {
                Ok(space) => {
                    let refusing = space.free_bytes < self.min_free_bytes;
                    if refusing && !last.refusing {
                        tracing::warn!(path = %self.path.display(), free_mib = space.free_bytes >> 20,
                            min_free_mib = self.min_free_bytes >> 20,
                            "the disk of the message log is low: refusing new messages (no PUBACK) until there is room");
                    } else if !refusing && last.refusing {
                        tracing::info!(path = %self.path.display(), free_mib = space.free_bytes >> 20,
                            "the disk of the message log has room again: accepting messages");
                    }
                    last.status = Some(space);
                    last.refusing = refusing;
                }
                Err(error) => {
                    tracing::debug!(path = %self.path.display(), %error, "cannot read the free space");
                    last.status = None;
                    last.refusing = false;
                }
            }
        }
        !last.refusing
    }

    /// The last reading, refreshed first when it is stale.
    pub fn status(&self, now: Instant) -> FreeSpaceStatus {
        self.admits(now);
        let last = self
            .last
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        FreeSpaceStatus {
            space: last.status,
            min_free_bytes: self.min_free_bytes,
            refusing: last.refusing,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

    use super::*;

    // Fakes are plain functions (the guard keeps a `fn`), so their state is static: one pair per test. They
    // return a `Result` because the guard's reader does.
    static FREE_A: AtomicU64 = AtomicU64::new(0);
    static READS_A: AtomicUsize = AtomicUsize::new(0);
    #[allow(clippy::unnecessary_wraps)]
    fn fake_a(_: &Path) -> io::Result<DiskSpace> {
        READS_A.fetch_add(1, Ordering::SeqCst);
        Ok(DiskSpace {
            free_bytes: FREE_A.load(Ordering::SeqCst),
            total_bytes: 1 << 40,
        })
    }

    static FREE_B: AtomicU64 = AtomicU64::new(0);
    #[allow(clippy::unnecessary_wraps)]
    fn fake_b(_: &Path) -> io::Result<DiskSpace> {
        Ok(DiskSpace {
            free_bytes: FREE_B.load(Ordering::SeqCst),
            total_bytes: 1 << 40,
        })
    }

    fn failing(_: &Path) -> io::Result<DiskSpace> {
        Err(io::Error::other("no such file system"))
    }

    const MIB: u64 = 1 << 20;

    #[test]
    fn messages_are_refused_below_the_threshold_and_admitted_again_above_it() {
        let guard = FreeSpaceGuard::with_reader(PathBuf::from("/log"), 256 * MIB, fake_b);
        let start = Instant::now();
        FREE_B.store(300 * MIB, Ordering::SeqCst);
        assert!(guard.admits(start));
        FREE_B.store(255 * MIB, Ordering::SeqCst);
        let later = start + READING_TTL;
        assert!(!guard.admits(later));
        let status = guard.status(later);
        assert!(status.refusing);
        assert_eq!(status.space.unwrap().free_bytes, 255 * MIB);
        FREE_B.store(256 * MIB, Ordering::SeqCst);
        assert!(guard.admits(later + READING_TTL));
    }

    #[test]
    fn the_disk_is_read_at_most_once_a_reading_ttl() {
        let guard = FreeSpaceGuard::with_reader(PathBuf::from("/log"), MIB, fake_a);
        FREE_A.store(0, Ordering::SeqCst);
        let start = Instant::now();
        for i in 0..1000 {
            assert!(!guard.admits(start + Duration::from_micros(i)));
        }
        assert_eq!(READS_A.load(Ordering::SeqCst), 1);
        // A disk freed meanwhile is noticed at the next reading.
        FREE_A.store(2 * MIB, Ordering::SeqCst);
        assert!(!guard.admits(start + READING_TTL / 2));
        assert!(guard.admits(start + READING_TTL));
        assert_eq!(READS_A.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn a_zero_threshold_turns_the_guard_off_and_an_unreadable_disk_admits() {
        let off = FreeSpaceGuard::with_reader(PathBuf::from("/log"), 0, failing);
        assert!(off.admits(Instant::now()));
        let unreadable = FreeSpaceGuard::with_reader(PathBuf::from("/log"), MIB, failing);
        assert!(unreadable.admits(Instant::now()));
        assert_eq!(unreadable.status(Instant::now()).space, None);
    }

    #[test]
    fn the_real_file_system_reads() {
        let dir = tempfile::tempdir().unwrap();
        let space = disk_space(dir.path()).unwrap();
        assert!(space.total_bytes > 0 && space.free_bytes <= space.total_bytes);
    }
}
