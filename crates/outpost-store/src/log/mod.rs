//! The durable message log behind the edge hub's store-and-forward.
//!
//! Every accepted message is appended once ([`MessageLog::append`]) and the append resolves only after its
//! bytes are fsync'd, so an acknowledgement (PUBACK) sent after it survives `kill -9` and power loss. A
//! single writer thread batches whatever appends are waiting into one write, and a sync thread beside it makes
//! every written group waiting for it durable with one `fdatasync` (group commit): many publishers share each
//! fsync, none is acknowledged before its own bytes are durable, and the next group is written while the last
//! one's fsync runs. [`MessageLog::append_readable_first`] lets the endpoints read a group as soon as it is
//! written; the appender still hears that it is durable only after its fsync.
//!
//! # Endpoints: one persisted copy, one cursor per endpoint and priority
//! A [`Record`] lists its [`Target`]s: the endpoints its routes chose (`$upstream`, a module input), each
//! with that route's priority and expiry. The log stores the record once and indexes it in memory under
//! each target; [`MessageLog::endpoint`] gives an [`EndpointQueue`] that reads only its own records, lower
//! priority number first and FIFO within a priority (Azure's one queue per endpoint and priority), and whose
//! acknowledgements move only its own cursors. A slow or absent consumer holds back nobody else's reads; it
//! only keeps the segments it still needs on disk, which TTL and the quota bound.
//!
//! The alternative, one log per endpoint, would be simpler to clean up (each log drops its own consumed
//! prefix) but writes a message fanned out to n endpoints n times and fsyncs n files per group. The shared
//! log pays instead with an index rebuilt at open (every segment is read once) and with cleanup that waits
//! for the slowest endpoint of each segment.
//!
//! # On disk
//! A directory of segment files `{first_seq:020}.seg` (format and crash recovery in `segment.rs`, record
//! layout in `record.rs`), a `cursors` file rewritten atomically at each checkpoint (`cursor.rs`), and a
//! `LOCK` file held with `flock` so two processes never write the same log. At open, a torn tail of the last
//! segment (a group whose fsync never finished, so never acknowledged) is cut; a bad record in any earlier,
//! sealed segment is damage to acknowledged data and the open fails with [`LogError::Corrupt`] instead.
//!
//! # Acknowledgement durability
//! [`EndpointQueue::ack`] changes memory only; all cursors are persisted at each checkpoint (every
//! [`LogOptions::checkpoint_interval`] by a checkpoint thread beside the writer, so that appends never wait
//! behind the cursor file's fsyncs; on [`MessageLog::checkpoint`] and when the log closes, by the writer). A crash
//! in between makes an endpoint see its last acknowledged records again: at least once, never lost.
//!
//! # TTL, cleanup and the disk quota
//! An expired record is skipped when an endpoint reads it and counted as expired. At each checkpoint the
//! writer finishes expired records at the front of every lane, then deletes each sealed segment whose every
//! record is done for every endpoint, after the cursors that say so are durable.
//! When an append would push the segments past [`LogOptions::quota_bytes`], the writer first checkpoints
//! (which may free space), then applies [`FullPolicy`]: `RejectNew` fails the append with [`LogError::Full`]
//! (the publisher gets no PUBACK and retries; nothing acknowledged is ever dropped), `DropOldest` deletes the
//! oldest sealed segments and counts their undelivered records as dropped.

mod cursor;
mod endpoint;
mod error;
mod options;
mod queue;
mod recent;
mod record;
mod segment;
mod sync_queue;
mod writer;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_crash;
#[cfg(test)]
mod tests_faults;

use std::collections::{BTreeMap, VecDeque};
use std::fs::{self, File, OpenOptions};
use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{SystemTime, UNIX_EPOCH};

use foldhash::HashMap;
use tokio::sync::oneshot;

pub use endpoint::EndpointQueue;
pub use error::LogError;
pub use options::{FullPolicy, LogOptions};
pub use record::{Delivery, Record, Target, LOWEST_PRIORITY, MAX_ENDPOINT_NAME};

use queue::{EndpointIndex, Lane};
use recent::Recent;
use record::RecordView;
use segment::{Segment, Tail};
use writer::{Command, Writer};

/// Counters of one endpoint. Counts since the log was opened, except `queued` and `in_flight`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EndpointStats {
    /// Records not yet acknowledged, expired or dropped (in flight included).
    pub queued: u64,
    /// Records handed out and not yet acknowledged.
    pub in_flight: u64,
    /// Records acknowledged.
    pub delivered: u64,
    /// Records skipped because their TTL passed.
    pub expired: u64,
    /// Records lost to [`FullPolicy::DropOldest`].
    pub dropped: u64,
    /// Records finished by [`EndpointQueue::dead_letter`].
    pub dead_lettered: u64,
}

/// A snapshot of the log's counters. A record sent to n endpoints counts n times in the delivery counts.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LogStats {
    /// Records appended since open.
    pub appended: u64,
    /// Sum of the endpoints' `delivered`.
    pub delivered: u64,
    /// Sum of the endpoints' `expired`.
    pub expired: u64,
    /// Sum of the endpoints' `dropped`.
    pub dropped: u64,
    /// Sum of the endpoints' `dead_lettered`.
    pub dead_lettered: u64,
    /// Bytes of all segment files.
    pub bytes_on_disk: u64,
    /// Number of segment files.
    pub segments: usize,
    /// Bytes cut from a torn tail when the log was opened (records never acknowledged).
    pub truncated_at_open: u64,
    /// The sequence number the next record will get.
    pub next_seq: u64,
    /// Per endpoint.
    pub endpoints: BTreeMap<String, EndpointStats>,
}

/// A step before which tests can inject a failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum FaultPoint {
    SegmentWrite,
    SegmentSync,
    SegmentCreate,
    CursorWrite,
    CursorRename,
    SegmentRemove,
}

/// A test hook deciding whether a persistence step fails.
#[cfg(test)]
pub(crate) type FaultHook = Arc<dyn Fn(FaultPoint) -> io::Result<()> + Send + Sync>;

/// What the writer thread and the handles share.
pub(crate) struct Shared {
    dir: PathBuf,
    options: LogOptions,
    state: Mutex<State>,
    /// Held for a whole checkpoint (the cursor file and the deletions after it) and while the full policy drops
    /// a segment: the checkpoint thread and the writer both checkpoint, and `cursors.tmp` has one writer.
    checkpointing: Mutex<()>,
    /// Set by the writer after a failed write or fsync; appends fail from then on.
    poisoned: AtomicBool,
    #[cfg(test)]
    fault: Option<FaultHook>,
}

impl Shared {
    /// Locks the index. Held for index updates only, never across file I/O or an `.await`; a std `Mutex`
    /// because readers and the writer thread both take it briefly and the writer is not async.
    fn lock(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    /// Fails the step `point` if a test asked for it.
    #[cfg(test)]
    fn fault(&self, point: FaultPoint) -> io::Result<()> {
        self.fault.as_ref().map_or(Ok(()), |hook| hook(point))
    }

    #[cfg(not(test))]
    #[allow(clippy::unused_self, clippy::unnecessary_wraps)] // the test build's hook has this signature
    #[inline]
    fn fault(&self, _point: FaultPoint) -> io::Result<()> {
        Ok(())
    }
}

/// The in-memory index of the log.
pub(crate) struct State {
    /// Oldest first; the last one is the segment being written.
    segments: VecDeque<Segment>,
    endpoints: Endpoints,
    next_seq: u64,
    appended: u64,
    truncated_at_open: u64,
    /// A lane's cursor moved since the cursor file was last written.
    cursors_dirty: bool,
    /// While the writer commits a group: the first sequence number of the segment the group started in. That
    /// segment and every later one may hold bytes the index does not know yet, so no checkpoint deletes them.
    group_from: Option<u64>,
    /// The payloads written last, read without the disk.
    recent: Recent,
}

/// The endpoints' indexes, each at the position it was created at: none is ever removed, so an
/// [`EndpointQueue`] reaches its own by that position, without hashing its name for every call.
#[derive(Default)]
struct Endpoints {
    ids: HashMap<Arc<str>, usize>,
    all: Vec<(Arc<str>, EndpointIndex)>,
}

impl Endpoints {
    /// The position of the endpoint called `name`, created empty if needed.
    fn id(&mut self, name: &str) -> usize {
        if let Some(&id) = self.ids.get(name) {
            return id;
        }
        let name: Arc<str> = Arc::from(name);
        self.all.push((Arc::clone(&name), EndpointIndex::default()));
        self.ids.insert(name, self.all.len() - 1);
        self.all.len() - 1
    }

    fn iter(&self) -> impl Iterator<Item = (&str, &EndpointIndex)> {
        self.all.iter().map(|(name, endpoint)| (&**name, endpoint))
    }

    fn values_mut(&mut self) -> impl Iterator<Item = &mut EndpointIndex> {
        self.all.iter_mut().map(|(_, endpoint)| endpoint)
    }
}

impl State {
    /// The endpoint called `name`, created empty if needed.
    fn endpoint_mut(&mut self, name: &str) -> &mut EndpointIndex {
        let id = self.endpoints.id(name);
        self.endpoint_at(id)
    }

    /// The endpoint at position `id` (from [`Endpoints::id`]).
    fn endpoint_at(&mut self, id: usize) -> &mut EndpointIndex {
        &mut self.endpoints.all[id].1
    }

    /// Indexes a record found on disk at open: under each target whose cursor it is past, unless expired.
    fn index_recovered(&mut self, view: &RecordView<'_>, now_unix_ms: u64) {
        for target in &view.targets {
            let endpoint = self.endpoint_mut(target.endpoint);
            let lane = endpoint.lane(target.priority);
            if view.seq <= lane.acked_through {
                continue;
            }
            if target.expiry_unix_ms != 0 && target.expiry_unix_ms <= now_unix_ms {
                endpoint.expired += 1;
            } else {
                lane.push(view.seq, target.expiry_unix_ms, view.payload_len);
            }
        }
    }

    fn bytes_on_disk(&self) -> u64 {
        self.segments.iter().map(|s| s.bytes).sum()
    }

    /// The segment holding `seq`.
    fn segment_of(&self, seq: u64) -> Option<&Segment> {
        let index = self.segments.partition_point(|s| s.first_seq <= seq);
        self.segments.get(index.checked_sub(1)?)
    }
}

/// The handles' side of the log: the channel to the writer, which it closes and joins when dropped.
pub(crate) struct Inner {
    shared: Arc<Shared>,
    commands: Option<Sender<Command>>,
    writer: Option<JoinHandle<()>>,
    /// Held with `flock` for the life of the log.
    lock: File,
}

impl Inner {
    fn send(&self, command: Command) -> Result<(), LogError> {
        self.commands
            .as_ref()
            .ok_or(LogError::Closed)?
            .send(command)
            .map_err(|_| LogError::Closed)
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Closing the channel makes the writer checkpoint and exit; joining it means a reopen of the same
        // directory right after this sees every cursor and never races the old writer.
        drop(self.commands.take());
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
        // Unlocked explicitly rather than by closing: a child being spawned right now holds a copy of the
        // descriptor until its exec, and the lock would live on with that copy.
        let _ = rustix::fs::flock(&self.lock, rustix::fs::FlockOperation::Unlock);
    }
}

/// An append in progress from [`MessageLog::append_readable_first`]: readable first, durable later.
pub struct Appending {
    readable: Option<oneshot::Receiver<()>>,
    durable: Option<writer::Reply>,
    /// Refused before it reached the writer.
    failed: Option<LogError>,
}

impl Appending {
    /// Resolves once the records are written and indexed: the endpoints can read them. An error here means they
    /// were not written (the same error comes again from [`Appending::durable`]).
    pub async fn readable(&mut self) -> Result<(), LogError> {
        if let Some(error) = &self.failed {
            return Err(error.duplicate());
        }
        let Some(read) = self.readable.take() else {
            return Ok(());
        };
        if read.await.is_ok() {
            return Ok(());
        }
        // Dropped unanswered: the group failed before its write, and the durable answer says why.
        let durable = self.durable.take();
        let error = match durable {
            Some(reply) => match reply.await {
                Ok(Ok(_)) => return Ok(()),
                Ok(Err(error)) => error,
                Err(_) => LogError::Closed,
            },
            None => LogError::Closed,
        };
        self.failed = Some(error.duplicate());
        Err(error)
    }

    /// Resolves to the records' sequence numbers once they are fsync'd (as [`MessageLog::append`]).
    pub async fn durable(self) -> Result<Vec<u64>, LogError> {
        if let Some(error) = self.failed {
            return Err(error);
        }
        match self.durable {
            Some(reply) => reply.await.map_err(|_| LogError::Closed)?,
            None => Ok(Vec::new()),
        }
    }
}

/// A durable, segmented, group-committed message log with per-endpoint cursors. Cheap to clone.
///
/// The writer thread lives as long as any handle (this or an [`EndpointQueue`]); dropping the last one
/// checkpoints and joins it, which blocks for about one fsync.
#[derive(Clone)]
pub struct MessageLog {
    inner: Arc<Inner>,
}

impl MessageLog {
    /// Opens (or creates) the log in `dir`: recovers every segment, cuts a torn tail, rebuilds the index.
    pub fn open(dir: impl AsRef<Path>, options: LogOptions) -> Result<Self, LogError> {
        Self::open_inner(dir.as_ref(), options, |shared| shared)
    }

    /// Opens the log with a hook that can fail any persistence step.
    #[cfg(test)]
    pub(crate) fn open_with_faults(
        dir: impl AsRef<Path>,
        options: LogOptions,
        hook: FaultHook,
    ) -> Result<Self, LogError> {
        Self::open_inner(dir.as_ref(), options, |mut shared| {
            shared.fault = Some(hook);
            shared
        })
    }

    fn open_inner(
        dir: &Path,
        options: LogOptions,
        configure: impl FnOnce(Shared) -> Shared,
    ) -> Result<Self, LogError> {
        options.validate()?;
        fs::create_dir_all(dir)?;
        let lock = lock_dir(dir)?;
        let cursors = cursor::load(dir)?;
        let mut state = State {
            segments: VecDeque::new(),
            endpoints: Endpoints::default(),
            next_seq: 1,
            appended: 0,
            truncated_at_open: 0,
            cursors_dirty: false,
            group_from: None,
            recent: Recent::new(options.recent_bytes),
        };
        let mut max_acked = 0;
        for (name, lanes) in cursors {
            let endpoint = state.endpoint_mut(&name);
            for (priority, acked_through) in lanes {
                max_acked = max_acked.max(acked_through);
                endpoint
                    .lanes
                    .insert(priority, Lane::resuming(acked_through));
            }
        }

        let now = now_unix_ms();
        let firsts = segment::list(dir)?;
        let mut end = 1;
        for (i, &first) in firsts.iter().enumerate() {
            let path = dir.join(segment::file_name(first));
            if first < end {
                return Err(LogError::Corrupt {
                    path,
                    offset: 0,
                    reason: "segment overlaps the one before it",
                });
            }
            let tail = if i + 1 == firsts.len() {
                Tail::Truncate
            } else {
                Tail::Refuse
            };
            let recovered =
                segment::recover(&path, first, options.max_record_bytes, tail, |view| {
                    state.index_recovered(view, now);
                })?;
            end = recovered.segment.end_seq();
            state.truncated_at_open += recovered.truncated;
            state.segments.push_back(recovered.segment);
        }
        // Never reuse a sequence number a cursor has passed, even if segments went missing.
        state.next_seq = end.max(max_acked + 1);
        if state
            .segments
            .back()
            .is_none_or(|s| s.end_seq() != state.next_seq)
        {
            state
                .segments
                .push_back(segment::create(dir, state.next_seq)?);
        }

        let shared = Arc::new(configure(Shared {
            dir: dir.to_owned(),
            options,
            state: Mutex::new(state),
            checkpointing: Mutex::new(()),
            poisoned: AtomicBool::new(false),
            #[cfg(test)]
            fault: None,
        }));
        let (commands, receiver) = std::sync::mpsc::channel();
        let writer = Writer::new(Arc::clone(&shared), receiver)?;
        let writer = std::thread::Builder::new()
            .name("outpost-log-writer".into())
            .spawn(move || writer.run())?;
        Ok(Self {
            inner: Arc::new(Inner {
                shared,
                commands: Some(commands),
                writer: Some(writer),
                lock,
            }),
        })
    }

    /// Appends `records`; the future resolves to their sequence numbers once they are fsync'd.
    ///
    /// The request reaches the writer when `append` is called, not when the future is first polled, so
    /// appends issued one after another from one task are stored in that order. Until the future resolves
    /// `Ok`, nothing is promised: after an error the records may or may not be on disk, and a retry may
    /// store them twice (at least once).
    pub fn append(
        &self,
        records: Vec<Record>,
    ) -> impl Future<Output = Result<Vec<u64>, LogError>> + Send + 'static {
        let sent = self.send_append(records, None);
        async move {
            match sent? {
                Some(reply) => reply.await.map_err(|_| LogError::Closed)?,
                None => Ok(Vec::new()),
            }
        }
    }

    /// Appends `records` in two steps: [`Appending::readable`] resolves once they are written and the endpoints
    /// can read them (before the fsync), [`Appending::durable`] once they are fsync'd, as [`MessageLog::append`].
    ///
    /// What this buys is latency: a consumer gets a record while its group's fsync is still running, instead
    /// of one fsync later. It promises nothing more than `append` to the appender, who must still wait for
    /// `durable` before acknowledging its own sender. A record read before it is durable may be lost to a
    /// crash, but only one its sender was never acknowledged for, so the sender sends it again (at least
    /// once). A consumer's acknowledgement of such a record is safe too: reopening never reuses a sequence
    /// number a persisted cursor has passed.
    pub fn append_readable_first(&self, records: Vec<Record>) -> Appending {
        let (readable, read) = oneshot::channel();
        match self.send_append(records, Some(readable)) {
            Ok(Some(durable)) => Appending {
                readable: Some(read),
                durable: Some(durable),
                failed: None,
            },
            Ok(None) => Appending {
                readable: None,
                durable: None,
                failed: None,
            },
            Err(error) => Appending {
                readable: None,
                durable: None,
                failed: Some(error),
            },
        }
    }

    /// [`MessageLog::append`] for threads outside an async runtime (it panics inside one).
    pub fn append_blocking(&self, records: Vec<Record>) -> Result<Vec<u64>, LogError> {
        match self.send_append(records, None)? {
            Some(reply) => reply.blocking_recv().map_err(|_| LogError::Closed)?,
            None => Ok(Vec::new()),
        }
    }

    fn send_append(
        &self,
        records: Vec<Record>,
        readable: Option<oneshot::Sender<()>>,
    ) -> Result<Option<writer::Reply>, LogError> {
        if records.is_empty() {
            return Ok(None);
        }
        let max = self.inner.shared.options.max_record_bytes;
        if let Some(reason) = records.iter().find_map(|r| r.invalid_reason(max)) {
            return Err(LogError::InvalidRecord(reason));
        }
        if self
            .inner
            .shared
            .poisoned
            .load(std::sync::atomic::Ordering::Acquire)
        {
            return Err(LogError::Poisoned);
        }
        let (reply, receiver) = oneshot::channel();
        self.inner.send(Command::Append {
            records,
            readable,
            reply,
        })?;
        Ok(Some(receiver))
    }

    /// The queue of endpoint `name`: its records, in priority order, with its own cursors.
    pub fn endpoint(&self, name: &str) -> EndpointQueue {
        let (id, notify) = {
            let mut state = self.inner.shared.lock();
            let id = state.endpoints.id(name);
            (id, Arc::clone(&state.endpoint_at(id).notify))
        };
        EndpointQueue::new(Arc::clone(&self.inner), Arc::from(name), id, notify)
    }

    /// Persists every acknowledgement now and removes the segments no endpoint needs any more.
    pub fn checkpoint(&self) -> impl Future<Output = Result<(), LogError>> + Send + 'static {
        let (reply, receiver) = oneshot::channel();
        let sent = self.inner.send(Command::Checkpoint { reply });
        async move {
            sent?;
            receiver.await.map_err(|_| LogError::Closed)?
        }
    }

    /// [`MessageLog::checkpoint`] for threads outside an async runtime (it panics inside one).
    pub fn checkpoint_blocking(&self) -> Result<(), LogError> {
        let (reply, receiver) = oneshot::channel();
        self.inner.send(Command::Checkpoint { reply })?;
        receiver.blocking_recv().map_err(|_| LogError::Closed)?
    }

    /// The counters now.
    pub fn stats(&self) -> LogStats {
        let state = self.inner.shared.lock();
        let mut stats = LogStats {
            appended: state.appended,
            bytes_on_disk: state.bytes_on_disk(),
            segments: state.segments.len(),
            truncated_at_open: state.truncated_at_open,
            next_seq: state.next_seq,
            ..LogStats::default()
        };
        for (name, endpoint) in state.endpoints.iter() {
            stats.delivered += endpoint.delivered;
            stats.expired += endpoint.expired;
            stats.dropped += endpoint.dropped;
            stats.dead_lettered += endpoint.dead_lettered;
            stats.endpoints.insert(
                name.to_string(),
                EndpointStats {
                    queued: endpoint.queued(),
                    in_flight: endpoint.in_flight(),
                    delivered: endpoint.delivered,
                    expired: endpoint.expired,
                    dropped: endpoint.dropped,
                    dead_lettered: endpoint.dead_lettered,
                },
            );
        }
        stats
    }

    /// The directory the log lives in.
    pub fn dir(&self) -> &Path {
        &self.inner.shared.dir
    }
}

/// Locks `mutex`, going on after a panic in another holder: every update of the log's shared state leaves it
/// consistent before anything that can panic, so a poisoned lock is safe to take.
fn lock<T>(mutex: &std::sync::Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Takes the directory's `flock`, so a second writer fails at open instead of interleaving records.
fn lock_dir(dir: &Path) -> Result<File, LogError> {
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join("LOCK"))?;
    match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(file),
        Err(e) if e == rustix::io::Errno::WOULDBLOCK => Err(LogError::Locked(dir.to_owned())),
        Err(e) => Err(io::Error::from(e).into()),
    }
}

/// Wall-clock unix milliseconds, the unit of expiries.
pub(crate) fn now_unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
