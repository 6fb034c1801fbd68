//! The writer thread: the only code that writes segments and the cursor file.
//!
//! It takes whatever commands are waiting (up to `max_group_bytes` of appends), encodes every record into one
//! buffer (payloads of [`COPY_BELOW`] bytes or more stay in their own buffers), writes it with one `pwrite` (or
//! `pwritev`) and publishes the records to the index (endpoints read them from the page cache from then on),
//! then hands the group to the sync thread and takes the next one. The sync thread makes every group waiting
//! for it durable with one `fdatasync` (group commit) and only then answers their appenders: nothing is
//! acknowledged before its fsync, and no reader nor the next group's write waits for one (an fsync takes 0.1 ms
//! here at the median and 3–6 ms at the tail). Dedicated OS threads rather than tokio tasks: fsync blocks for
//! milliseconds, and the log must work (and close) without a runtime.
//!
//! After a failed write or fsync the writer stops accepting appends ([`LogError::Poisoned`]): once fsync has
//! failed, Linux may have dropped the dirty pages and a retried fsync can succeed without them, so only a
//! reopen, which reads back what is really on disk, can tell what survived. The sync thread syncs the active
//! segment through an open file description of its own: Linux reports a writeback error once per description,
//! so on the writer's, the sync thread's `fdatasync` could return success after the writer's own (sealing a
//! segment) had reported, and consumed, the error for pages of a group the sync thread was about to answer.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, IoSlice};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::{oneshot, Notify};

use super::cursor::{self, Cursors};
use super::queue::Outcome;
use super::record::{Record, Target};
use super::segment::{self, Segment, HEADER};
use super::sync_queue::SyncQueue;
use super::{lock, now_unix_ms, FaultPoint, FullPolicy, LogError, Shared, State};

/// Where an append's answer arrives.
pub(crate) type Reply = oneshot::Receiver<Result<Vec<u64>, LogError>>;

/// Where the writer (or the sync thread) sends an append's answer.
type Answer = oneshot::Sender<Result<Vec<u64>, LogError>>;

/// What the handles ask of the writer.
pub(crate) enum Command {
    /// Persist these records, then answer with their sequence numbers; `readable` is told as soon as the
    /// endpoints can read them (written, not yet fsync'd).
    Append {
        records: Vec<Record>,
        readable: Option<oneshot::Sender<()>>,
        reply: Answer,
    },
    /// Persist the cursors and remove consumed segments now.
    Checkpoint {
        reply: oneshot::Sender<Result<(), LogError>>,
    },
}

/// An append waiting in the current group.
struct Pending {
    records: Vec<Record>,
    readable: Option<oneshot::Sender<()>>,
    reply: Answer,
}

/// A record encoded in the current group, to publish once the group is durable.
struct Placed {
    seq: u64,
    segment_first_seq: u64,
    offset: u32,
    len: u64,
    targets: Arc<[Target]>,
    /// Kept in memory once published (see `recent.rs`): the same bytes, not a copy.
    payload: Bytes,
}

/// A written and published group waiting for its fsync: the segment its last bytes went to (a group that started
/// a new segment synced the one before at the roll), as the sync thread opened it, and the appenders to answer
/// once it is durable.
struct Written {
    file: Arc<File>,
    replies: Vec<(Answer, Vec<u64>)>,
}

/// Payloads from this size on are written from the buffer they arrived in (`pwritev`) rather than copied into the
/// group's buffer: a 4 KB message's copy was 9 % of the edge daemon's CPU at maximum load, the writer's thread
/// half of it. Below it, one more slice per record costs more than the copy.
const COPY_BELOW: usize = 1024;

/// Slices per `pwritev` (Linux's `IOV_MAX`).
const MAX_SLICES: usize = 1024;

/// Records written and not yet answered at most; past that the writer waits for the sync thread, so a disk whose
/// fsync stalls slows the appenders down instead of piling up their replies (see `sync_queue.rs`). At 10,000
/// messages a second, a flush may stall for 1.6 s before the endpoints' reads wait for it.
pub(crate) const SYNC_QUEUE_RECORDS: usize = 1 << 14;

/// The segment file is extended with written zeros this much at a time, ahead of the records. An `fdatasync` of a
/// file that grew must commit the new size through the filesystem's journal; one of blocks already written
/// flushes only the data: 0.09 ms against 0.15–0.2 here (ext4, 4–40 KB groups), and under load the fsync is
/// most of the time a PUBACK waits. `fallocate` does not do: its unwritten extents are converted, in the
/// journal, when first written. The zeros past the records are cut when the segment is sealed or the log
/// closes, and recovery tells them from a torn tail.
const PREALLOCATE: u64 = 1 << 20;

/// Zeros to extend a segment with, a slice at a time.
static ZEROS: [u8; 64 << 10] = [0; 64 << 10];

/// The segment being appended to.
struct Active {
    first_seq: u64,
    file: Arc<File>,
    /// The same segment, opened again for the sync thread (see the module's doc).
    sync_file: Arc<File>,
    /// Bytes written to the file (the group buffer lands here next).
    len: u64,
    /// The file's size: zeros from `len` to here.
    allocated: u64,
}

/// The writer thread's state.
pub(crate) struct Writer {
    shared: Arc<Shared>,
    commands: Receiver<Command>,
    next_seq: u64,
    active: Active,
    /// The current group not yet written: the records' prefixes and headers, and the payloads under
    /// [`COPY_BELOW`] bytes.
    buf: Vec<u8>,
    /// The larger payloads, written from their own buffers: each goes where `buf` is that long (its position in
    /// the group's bytes is its offset in `buf` plus the payloads before it).
    payloads: Vec<(usize, Bytes)>,
    /// Bytes of the current group not yet written: `buf` and `payloads` together.
    pending: u64,
    /// Bytes of the current group (written or buffered) that the index does not count yet.
    unpublished: u64,
    /// To the sync thread; `None` if it could not start or has gone, and the writer syncs each group itself.
    to_sync: Option<Arc<SyncQueue<Written>>>,
    /// Whether an fsync failed when the writer synced a group itself.
    syncs: Syncs,
}

impl Writer {
    pub fn new(shared: Arc<Shared>, commands: Receiver<Command>) -> io::Result<Self> {
        let (next_seq, active) = {
            let state = shared.lock();
            let last = state
                .segments
                .back()
                .expect("open always leaves a segment to write");
            // Recovery cut the last segment at its last record.
            let active = Active {
                first_seq: last.first_seq,
                file: Arc::clone(&last.file),
                sync_file: open_for_sync(&last.path)?,
                len: last.bytes,
                allocated: last.bytes,
            };
            (state.next_seq, active)
        };
        Ok(Self {
            shared,
            commands,
            next_seq,
            active,
            buf: Vec::new(),
            payloads: Vec::new(),
            pending: 0,
            unpublished: 0,
            to_sync: None,
            syncs: Syncs::default(),
        })
    }

    /// Serves commands until every handle is gone, then checkpoints a last time. The periodic checkpoints run
    /// on a thread of their own: the cursor file costs two fsyncs and the deletions a third, and appends
    /// waiting behind them would be late by as much.
    pub fn run(mut self) {
        let max_group = self.shared.options.max_group_bytes;
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let checkpointer = {
            let shared = Arc::clone(&self.shared);
            std::thread::Builder::new()
                .name("outpost-log-checkpoint".into())
                .spawn(move || checkpoint_every(&shared, &stopped))
        };
        if let Err(e) = &checkpointer {
            tracing::warn!(error = %e, "cannot start the message log's checkpoint thread; checkpoints wait for the next close");
        }
        let to_sync = Arc::new(SyncQueue::new(SYNC_QUEUE_RECORDS));
        let syncer = {
            let shared = Arc::clone(&self.shared);
            let written = Arc::clone(&to_sync);
            std::thread::Builder::new()
                .name("outpost-log-sync".into())
                .spawn(move || Syncs::default().serve(&shared, &written))
        };
        match &syncer {
            Ok(_) => self.to_sync = Some(to_sync),
            Err(e) => {
                tracing::warn!(error = %e, "cannot start the message log's sync thread; the writer syncs each group itself");
            }
        }
        loop {
            let mut appends = Vec::new();
            let mut checkpoints = Vec::new();
            let Ok(first) = self.commands.recv() else {
                break;
            };
            let mut bytes = 0;
            let mut next = Some(first);
            while let Some(command) = next.take() {
                match command {
                    Command::Append {
                        records,
                        readable,
                        reply,
                    } => {
                        bytes += records.iter().map(Record::encoded_len).sum::<usize>();
                        appends.push(Pending {
                            records,
                            readable,
                            reply,
                        });
                    }
                    Command::Checkpoint { reply } => checkpoints.push(reply),
                }
                if bytes < max_group {
                    next = self.commands.try_recv().ok();
                }
            }
            if !appends.is_empty() {
                self.commit(appends);
            }
            if !checkpoints.is_empty() {
                let result = checkpoint(&self.shared, self.active.first_seq);
                if let Err(e) = &result {
                    tracing::warn!(error = %e, "message log checkpoint failed; acknowledgements stay in memory");
                }
                for reply in checkpoints {
                    let _ = reply.send(result.as_ref().copied().map_err(LogError::duplicate));
                }
            }
        }
        // Every group answered before the last checkpoint and the close.
        if let Some(to_sync) = self.to_sync.take() {
            to_sync.close();
        }
        if let Ok(syncer) = syncer {
            let _ = syncer.join();
        }
        drop(stop);
        if let Ok(checkpointer) = checkpointer {
            let _ = checkpointer.join();
        }
        if let Err(e) = checkpoint(&self.shared, self.active.first_seq) {
            tracing::warn!(error = %e, "message log: last checkpoint before closing failed");
        }
        if !self.shared.poisoned.load(Ordering::Acquire) {
            if let Err(e) = self.trim() {
                tracing::warn!(error = %e, "message log: cannot cut the zeros past its last record; the next open will");
            }
        }
    }

    /// Writes one group, publishes it to the index (the endpoints may read it from then on) and hands it to the
    /// sync thread, which answers its appenders once it is durable.
    fn commit(&mut self, appends: Vec<Pending>) {
        if self.shared.poisoned.load(Ordering::Acquire) {
            for pending in appends {
                let _ = pending.reply.send(Err(LogError::Poisoned));
            }
            return;
        }
        // Segments from this one on may hold bytes of this group that the index does not know: never delete them.
        let protect_from = self.active.first_seq;
        self.shared.lock().group_from = Some(protect_from);
        let group_start = (self.active.first_seq, self.active.len);
        let enqueued = now_unix_ms();
        let mut placed = Vec::new();
        let mut accepted = Vec::new();
        let mut failure = None;
        let mut checkpointed = false;
        for Pending {
            records,
            readable,
            reply,
        } in appends
        {
            if failure.is_some() {
                accepted.push((reply, readable, Vec::new()));
                continue;
            }
            let needed = records.iter().map(|r| r.encoded_len() as u64).sum();
            if let Err(e) = self.make_room(needed, protect_from, &mut checkpointed) {
                let _ = reply.send(Err(e));
                continue;
            }
            let mut seqs = Vec::with_capacity(records.len());
            for record in records {
                if let Err(e) = self.place(record, enqueued, &mut placed, &mut seqs) {
                    failure = Some(e);
                    break;
                }
            }
            accepted.push((reply, readable, seqs));
        }
        if failure.is_none() && !placed.is_empty() {
            failure = self.write_buffer().err();
        }
        if let Some(error) = failure {
            self.shared.poisoned.store(true, Ordering::Release);
            tracing::error!(%error, "message log write failed; appends refused until it is reopened");
            // Tidy, not needed for correctness: unacknowledged bytes left behind would only be delivered as
            // duplicates after a reopen.
            if self.active.first_seq == group_start.0
                && self.active.file.set_len(group_start.1).is_ok()
            {
                self.active.allocated = group_start.1;
            }
            let error = LogError::from(error);
            for (reply, _, _) in accepted {
                let _ = reply.send(Err(error.duplicate()));
            }
            self.shared.lock().group_from = None;
            return;
        }
        // Written: readable from the page cache. A crash before the fsync loses only records whose appenders
        // never heard `Ok`, and reopening never reuses a sequence number a cursor has passed.
        self.publish(placed, enqueued);
        let mut replies = Vec::with_capacity(accepted.len());
        let mut records = 0;
        for (reply, readable, seqs) in accepted {
            records += seqs.len();
            if let Some(readable) = readable {
                let _ = readable.send(());
            }
            replies.push((reply, seqs));
        }
        let group = Written {
            file: Arc::clone(&self.active.sync_file),
            replies,
        };
        let group = match &self.to_sync {
            Some(to_sync) => match to_sync.push(group, records.max(1)) {
                Ok(()) => return,
                Err(group) => group,
            },
            None => group,
        };
        self.syncs.answer(&self.shared, vec![group]);
    }

    /// Encodes one record into the group, starting a new segment first if this one is full.
    fn place(
        &mut self,
        record: Record,
        enqueued: u64,
        placed: &mut Vec<Placed>,
        seqs: &mut Vec<u64>,
    ) -> io::Result<()> {
        let len = record.encoded_len() as u64;
        let at = self.active.len + self.pending;
        if at > HEADER.len() as u64 && at + len > self.shared.options.segment_bytes {
            self.roll()?;
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        let offset = self.active.len + self.pending;
        record.encode_head(seq, enqueued, &mut self.buf);
        let Record { payload, targets } = record;
        if payload.len() < COPY_BELOW {
            self.buf.extend_from_slice(&payload);
        } else {
            self.payloads.push((self.buf.len(), payload.clone()));
        }
        self.pending += len;
        self.unpublished += len;
        placed.push(Placed {
            seq,
            segment_first_seq: self.active.first_seq,
            // Fits: a segment is at most segment_bytes (≤ 1 GiB) plus one record (≤ 1 GiB).
            offset: offset as u32,
            len,
            targets,
            payload,
        });
        seqs.push(seq);
        Ok(())
    }

    /// Writes the current group at the end of the active segment: one `pwrite`, or one `pwritev` of the
    /// headers and the payloads in their own buffers.
    fn write_buffer(&mut self) -> io::Result<()> {
        if self.pending == 0 {
            return Ok(());
        }
        self.shared.fault(FaultPoint::SegmentWrite)?;
        self.preallocate(self.active.len + self.pending)?;
        if self.payloads.is_empty() {
            self.active.file.write_all_at(&self.buf, self.active.len)?;
        } else {
            let mut slices = Vec::with_capacity(2 * self.payloads.len() + 1);
            let mut from = 0;
            for (at, payload) in &self.payloads {
                if *at > from {
                    slices.push(IoSlice::new(&self.buf[from..*at]));
                }
                slices.push(IoSlice::new(payload));
                from = *at;
            }
            if from < self.buf.len() {
                slices.push(IoSlice::new(&self.buf[from..]));
            }
            write_all_vectored_at(&self.active.file, &mut slices, self.active.len)?;
        }
        self.active.len += self.pending;
        self.buf.clear();
        self.payloads.clear();
        self.pending = 0;
        Ok(())
    }

    /// Extends the active segment with zeros, [`PREALLOCATE`] bytes at a time, so that it holds `end` bytes (a
    /// segment is not extended past `segment_bytes` but for the record that ends it). The zeros take disk as
    /// records do: they never go past what the quota leaves once the current group is counted.
    fn preallocate(&mut self, end: u64) -> io::Result<()> {
        if end <= self.active.allocated {
            return Ok(());
        }
        let used = self.shared.lock().bytes_on_disk() + self.unpublished;
        let headroom = self.shared.options.quota_bytes.saturating_sub(used);
        let to = (self.active.allocated + PREALLOCATE)
            .min(self.shared.options.segment_bytes)
            .min(end.saturating_add(headroom))
            .max(end);
        let mut at = self.active.allocated;
        while at < to {
            // At most 64 KiB: fits usize.
            #[allow(clippy::cast_possible_truncation)]
            let n = (to - at).min(ZEROS.len() as u64) as usize;
            self.active.file.write_all_at(&ZEROS[..n], at)?;
            at += n as u64;
        }
        self.active.allocated = to;
        Ok(())
    }

    /// Cuts the zeros past the active segment's last record and makes the segment durable as it is.
    fn trim(&mut self) -> io::Result<()> {
        if self.active.allocated > self.active.len {
            self.active.file.set_len(self.active.len)?;
            self.active.allocated = self.active.len;
        }
        sync(&self.shared, &self.active.file)
    }

    /// Seals the active segment (durably, its zeros cut) and starts the next one at `next_seq`.
    fn roll(&mut self) -> io::Result<()> {
        self.write_buffer()?;
        self.trim()?;
        self.shared.fault(FaultPoint::SegmentCreate)?;
        let segment = segment::create(&self.shared.dir, self.next_seq)?;
        self.active = Active {
            first_seq: segment.first_seq,
            file: Arc::clone(&segment.file),
            sync_file: open_for_sync(&segment.path)?,
            len: segment.bytes,
            allocated: segment.bytes,
        };
        self.shared.lock().segments.push_back(segment);
        Ok(())
    }

    /// Makes the written records of a group visible to the endpoints, lifts the group's protection of its
    /// segments, and wakes the endpoints waiting.
    fn publish(&mut self, placed: Vec<Placed>, enqueued: u64) {
        let mut wake: Vec<Arc<Notify>> = Vec::new();
        let mut state = self.shared.lock();
        let count = placed.len() as u64;
        // The endpoints' positions of the last target list seen: the records of one batch share their list.
        let mut last: Option<(Arc<[Target]>, Vec<usize>)> = None;
        for p in placed {
            let segment = state
                .segments
                .iter_mut()
                .rev()
                .find(|s| s.first_seq == p.segment_first_seq)
                .expect("the segments of the current group are never removed");
            segment.offsets.push(p.offset);
            segment.bytes = u64::from(p.offset) + p.len;
            let payload_len = p.payload.len();
            state.recent.push(p.seq, enqueued, p.payload);
            let ids = match &last {
                Some((targets, ids)) if Arc::ptr_eq(targets, &p.targets) => ids,
                _ => {
                    let ids = p
                        .targets
                        .iter()
                        .map(|t| state.endpoints.id(&t.endpoint))
                        .collect();
                    &last.insert((Arc::clone(&p.targets), ids)).1
                }
            };
            for (target, &id) in p.targets.iter().zip(ids) {
                let endpoint = state.endpoint_at(id);
                endpoint
                    .lane(target.priority)
                    .push(p.seq, target.expiry_unix_ms, payload_len);
                if !wake.iter().any(|n| Arc::ptr_eq(n, &endpoint.notify)) {
                    wake.push(Arc::clone(&endpoint.notify));
                }
            }
        }
        state.next_seq = self.next_seq;
        state.appended += count;
        // Published: the index knows every byte on disk again, and checkpoints may delete any consumed segment.
        state.group_from = None;
        drop(state);
        self.unpublished = 0;
        for notify in wake {
            notify.notify_one();
        }
    }

    /// Ensures `needed` more bytes fit the quota, by checkpointing and then by the full policy.
    fn make_room(
        &mut self,
        needed: u64,
        protect_from: u64,
        checkpointed: &mut bool,
    ) -> Result<(), LogError> {
        let quota = self.shared.options.quota_bytes;
        let used = |w: &Self| w.shared.lock().bytes_on_disk() + w.unpublished;
        if used(self) + needed <= quota {
            return Ok(());
        }
        // Consumed or expired segments may be waiting for the next periodic checkpoint; once per group.
        if !*checkpointed {
            *checkpointed = true;
            checkpoint(&self.shared, protect_from)?;
            if used(self) + needed <= quota {
                return Ok(());
            }
        }
        if self.shared.options.full_policy == FullPolicy::DropOldest {
            while self.drop_oldest(protect_from)? {
                if used(self) + needed <= quota {
                    return Ok(());
                }
            }
        }
        Err(LogError::Full {
            used: used(self),
            needed,
            quota,
        })
    }

    /// Deletes the oldest segment before `protect_from`, whatever it holds; false if there is none.
    fn drop_oldest(&mut self, protect_from: u64) -> Result<bool, LogError> {
        let _no_checkpoint_meanwhile = lock(&self.shared.checkpointing);
        let segment = {
            let mut state = self.shared.lock();
            if state
                .segments
                .front()
                .is_none_or(|s| s.first_seq >= protect_from)
            {
                return Ok(false);
            }
            let segment = state.segments.pop_front().expect("checked above");
            let last = segment.end_seq().saturating_sub(1);
            let mut dropped = 0;
            for endpoint in state.endpoints.values_mut() {
                let mut outcome = Outcome::default();
                for lane in endpoint.lanes.values_mut() {
                    outcome.dropped += lane.purge_through(last).dropped;
                }
                dropped += outcome.dropped;
                endpoint.count(outcome);
            }
            state.cursors_dirty = true;
            tracing::warn!(
                segment = %segment.path.display(),
                dropped,
                "message log over quota: dropping its oldest segment"
            );
            segment
        };
        remove_segments(&self.shared, &[segment])?;
        Ok(true)
    }
}

/// The sync side of the group commit: whether an fsync has failed, after which nothing is acknowledged (Linux
/// may have dropped the dirty pages, and a later fsync can succeed without them).
#[derive(Default)]
struct Syncs {
    failed: bool,
}

impl Syncs {
    /// Syncs and answers written groups until the writer closes the queue, every group waiting at once. However
    /// it ends, the writer hears that it has gone (and syncs for itself).
    fn serve(mut self, shared: &Shared, written: &SyncQueue<Written>) {
        struct Gone<'a>(&'a SyncQueue<Written>);
        impl Drop for Gone<'_> {
            fn drop(&mut self) {
                self.0.gone();
            }
        }
        let _gone = Gone(written);
        while let Some((groups, records)) = written.take() {
            self.answer(shared, groups);
            written.answered(records);
        }
    }

    /// Makes `groups` durable, oldest first, with one `fdatasync` per segment they end in, and answers them.
    fn answer(&mut self, shared: &Shared, groups: Vec<Written>) {
        let mut groups = groups.into_iter().peekable();
        while let Some(group) = groups.next() {
            let mut same_file = vec![group];
            while let Some(next) = groups.next_if(|g| Arc::ptr_eq(&g.file, &same_file[0].file)) {
                same_file.push(next);
            }
            let result = if self.failed {
                Err(LogError::Poisoned)
            } else {
                sync(shared, &same_file[0].file).map_err(|error| {
                    self.failed = true;
                    shared.poisoned.store(true, Ordering::Release);
                    tracing::error!(%error, "message log fsync failed; appends refused until it is reopened");
                    LogError::from(error)
                })
            };
            for Written { replies, .. } in same_file {
                for (reply, seqs) in replies {
                    let _ = reply.send(result.as_ref().map(|()| seqs).map_err(LogError::duplicate));
                }
            }
        }
    }
}

/// Writes every byte of `slices` at `offset`, `MAX_SLICES` at a time, going on after a short write.
fn write_all_vectored_at(
    file: &File,
    mut slices: &mut [IoSlice<'_>],
    mut offset: u64,
) -> io::Result<()> {
    while !slices.is_empty() {
        let at_most = slices.len().min(MAX_SLICES);
        let written = match rustix::io::pwritev(file, &slices[..at_most], offset) {
            Ok(written) => written,
            // As `write_all_at`: an interrupted call is made again.
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        };
        if written == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        offset += written as u64;
        IoSlice::advance_slices(&mut slices, written);
    }
    Ok(())
}

/// Opens the segment at `path` again, for the sync thread (read-only: `fdatasync` flushes a file's pages
/// whatever description it is called on).
fn open_for_sync(path: &Path) -> io::Result<Arc<File>> {
    File::open(path).map(Arc::new)
}

/// fdatasync: the data and the file size, which is all a reader needs; mtime can wait.
fn sync(shared: &Shared, file: &File) -> io::Result<()> {
    shared.fault(FaultPoint::SegmentSync)?;
    file.sync_data()
}

/// Checkpoints every `interval` until `stop`'s sender is dropped (the writer is closing: it checkpoints a last
/// time itself).
fn checkpoint_every(shared: &Shared, stop: &Receiver<()>) {
    let interval = shared.options.checkpoint_interval;
    while let Err(RecvTimeoutError::Timeout) = stop.recv_timeout(interval) {
        if let Err(e) = checkpoint(shared, u64::MAX) {
            tracing::warn!(error = %e, "message log checkpoint failed; acknowledgements stay in memory");
        }
    }
}

/// Persists the cursors if they moved, then deletes the sealed segments that no lane needs any more, before
/// `protect_from`, the segment being written and the segment where a group being committed started. The
/// deletion follows the cursor file, so a crash between them only leaves a segment that reopening will find
/// fully consumed.
fn checkpoint(shared: &Shared, protect_from: u64) -> Result<(), LogError> {
    let _one_at_a_time = lock(&shared.checkpointing);
    let now = now_unix_ms();
    let (snapshot, floor) = {
        let mut state = shared.lock();
        let mut floor = u64::MAX;
        let mut expired = 0;
        for endpoint in state.endpoints.values_mut() {
            let mut outcome = Outcome::default();
            for lane in endpoint.lanes.values_mut() {
                outcome.expired += lane.purge_expired_front(now).expired;
                if let Some(first) = lane.first_needed() {
                    floor = floor.min(first);
                }
            }
            expired += outcome.expired;
            endpoint.count(outcome);
        }
        // Finishing expired records moves cursors.
        state.cursors_dirty |= expired > 0;
        state
            .recent
            .trim(floor, now.saturating_sub(super::recent::MAX_AGE_MS));
        let snapshot = if state.cursors_dirty {
            state.cursors_dirty = false;
            Some(snapshot(&state))
        } else {
            None
        };
        (snapshot, floor)
    };
    if let Some(cursors) = snapshot {
        if let Err(e) = cursor::store(shared, &cursors) {
            shared.lock().cursors_dirty = true;
            return Err(e.into());
        }
    }
    let removable = {
        let mut state = shared.lock();
        let protect_from = state
            .segments
            .back()
            .map_or(protect_from, |active| active.first_seq.min(protect_from))
            .min(state.group_from.unwrap_or(u64::MAX));
        let mut removable = Vec::new();
        while state
            .segments
            .front()
            .is_some_and(|s| s.first_seq < protect_from && s.end_seq() <= floor)
        {
            removable.extend(state.segments.pop_front());
        }
        removable
    };
    remove_segments(shared, &removable)
}

/// Deletes segment files the index has already let go of.
fn remove_segments(shared: &Shared, segments: &[Segment]) -> Result<(), LogError> {
    if segments.is_empty() {
        return Ok(());
    }
    for segment in segments {
        shared.fault(FaultPoint::SegmentRemove)?;
        fs::remove_file(&segment.path)?;
    }
    cursor::sync_dir(&shared.dir)?;
    Ok(())
}

/// The cursors to persist. A lane with nothing left whose cursor is older than every segment is left out:
/// reading it back as 0 finds the same records, none, so forgotten endpoints do not pile up in the file.
fn snapshot(state: &State) -> Cursors {
    let first_on_disk = state
        .segments
        .front()
        .map_or(state.next_seq, |s| s.first_seq);
    let mut cursors = Cursors::new();
    for (name, endpoint) in state.endpoints.iter() {
        let lanes: BTreeMap<u32, u64> = endpoint
            .lanes
            .iter()
            .filter(|(_, lane)| {
                lane.first_needed().is_some() || lane.acked_through >= first_on_disk
            })
            .map(|(&priority, lane)| (priority, lane.acked_through))
            .collect();
        if !lanes.is_empty() {
            cursors.insert(name.to_string(), lanes);
        }
    }
    cursors
}
