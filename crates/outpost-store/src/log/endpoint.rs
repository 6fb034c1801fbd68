//! One endpoint's view of the log: its records in delivery order, and its acknowledgements.

use std::sync::Arc;

use tokio::sync::Notify;

use super::queue::Limit;
use super::record::Delivery;
use super::{now_unix_ms, segment, Inner, LogError};

/// The queue of one endpoint over the shared log. Handles for the same name share one queue.
///
/// [`next_batch`](Self::next_batch) hands out records once; each stays in flight until
/// [`ack`](Self::ack)ed, or until [`rewind`](Self::rewind) (say, when the consumer reconnects) makes the
/// unacknowledged ones deliverable again. Records are read from the segment files with blocking `pread`s,
/// usually from the page cache; from async code that is as cheap as a short lock.
#[derive(Clone)]
pub struct EndpointQueue {
    log: Arc<Inner>,
    name: Arc<str>,
    /// Its index's position in the log's state.
    id: usize,
    notify: Arc<Notify>,
}

impl EndpointQueue {
    pub(crate) fn new(log: Arc<Inner>, name: Arc<str>, id: usize, notify: Arc<Notify>) -> Self {
        Self {
            log,
            name,
            id,
            notify,
        }
    }

    /// The endpoint's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Up to `max` records not yet handed out: lowest priority number first, FIFO within a priority,
    /// expired ones skipped (and counted). Empty when there is nothing to deliver.
    pub fn next_batch(&self, max: usize) -> Result<Vec<Delivery>, LogError> {
        self.take(Limit::records(max))
    }

    /// [`next_batch`](Self::next_batch) that also stops once the payloads handed out reach `max_bytes`: the
    /// last one may pass it, and one record is handed out however large (a consumer's memory in flight is
    /// bounded by its bytes plus one record).
    pub fn next_batch_within(
        &self,
        max: usize,
        max_bytes: usize,
    ) -> Result<Vec<Delivery>, LogError> {
        self.take(Limit {
            records: max,
            bytes: max_bytes,
        })
    }

    fn take(&self, limit: Limit) -> Result<Vec<Delivery>, LogError> {
        let now = now_unix_ms();
        let picks = {
            let mut state = self.log.shared.lock();
            let endpoint = state.endpoint_at(self.id);
            let expired_before = endpoint.expired;
            let taken = endpoint.take(limit, now);
            let mut picks = Vec::with_capacity(taken.len());
            for (seq, priority) in taken {
                let expiry = endpoint.lanes[&priority].expiry_of(seq).unwrap_or_default();
                picks.push((seq, priority, expiry));
            }
            if endpoint.expired != expired_before {
                state.cursors_dirty = true;
            }
            let mut located = Vec::with_capacity(picks.len());
            for (seq, priority, expiry) in picks {
                // Written last and still in memory: no read.
                if let Some(kept) = state.recent.get(seq) {
                    located.push((seq, priority, expiry, Source::Kept(kept)));
                    continue;
                }
                let segment = state
                    .segment_of(seq)
                    .ok_or_else(|| missing(&self.log, seq))?;
                let (offset, len) = segment.locate(seq).ok_or_else(|| missing(&self.log, seq))?;
                let on_disk = Source::Disk {
                    file: Arc::clone(&segment.file),
                    path: Arc::clone(&segment.path),
                    offset,
                    len,
                };
                located.push((seq, priority, expiry, on_disk));
            }
            located
        };
        // The files are read outside the lock; a segment deleted meanwhile stays readable through its handle.
        picks
            .into_iter()
            .map(|(seq, priority, expiry_unix_ms, source)| {
                let (enqueued_unix_ms, payload) = match source {
                    Source::Kept(kept) => kept,
                    Source::Disk {
                        file,
                        path,
                        offset,
                        len,
                    } => segment::read_record(&file, &path, offset, len, seq)?,
                };
                Ok(Delivery {
                    seq,
                    priority,
                    enqueued_unix_ms,
                    expiry_unix_ms,
                    payload,
                })
            })
            .collect()
    }

    /// Acknowledges a record handed out by `next_batch`; false if it was not in flight here. The cursor
    /// moves in memory now and on disk at the next checkpoint.
    pub fn ack(&self, seq: u64) -> bool {
        let mut state = self.log.shared.lock();
        let acked = state.endpoint_at(self.id).ack(seq);
        if acked {
            state.cursors_dirty = true;
        }
        acked
    }

    /// Finishes a record handed out by `next_batch` that its consumer refused for good (say, the hub refused
    /// that message by itself): it leaves the queue like an acknowledged one but counts as dead-lettered, not
    /// delivered. False if it was not in flight here.
    pub fn dead_letter(&self, seq: u64) -> bool {
        let mut state = self.log.shared.lock();
        let done = state.endpoint_at(self.id).dead_letter(seq);
        if done {
            state.cursors_dirty = true;
        }
        done
    }

    /// Makes every record handed out and not acknowledged deliverable again, in its original order.
    pub fn rewind(&self) {
        let mut state = self.log.shared.lock();
        for lane in state.endpoint_at(self.id).lanes.values_mut() {
            lane.rewind();
        }
        drop(state);
        self.notify.notify_one();
    }

    /// Whether `next_batch` may return something now (records that expire meanwhile are still skipped).
    pub fn has_pending(&self) -> bool {
        let mut state = self.log.shared.lock();
        state
            .endpoint_at(self.id)
            .lanes
            .values()
            .any(super::queue::Lane::has_pending)
    }

    /// Records of this endpoint not yet done: handed out and not acknowledged, or waiting (expired ones
    /// included until a read skips them).
    pub fn queued(&self) -> u64 {
        self.log.shared.lock().endpoint_at(self.id).queued()
    }

    /// Waits until `has_pending` is true.
    pub async fn ready(&self) {
        loop {
            // Registered before the check: an append published in between leaves a permit, not a lost wake-up.
            let notified = self.notify.notified();
            if self.has_pending() {
                return;
            }
            notified.await;
        }
    }
}

/// Where `next_batch` takes a record from.
enum Source {
    /// Still in memory: when it was enqueued, and its payload.
    Kept((u64, bytes::Bytes)),
    /// Read from its segment, outside the index's lock.
    Disk {
        file: Arc<std::fs::File>,
        path: Arc<std::path::Path>,
        offset: u64,
        len: usize,
    },
}

fn missing(log: &Inner, seq: u64) -> LogError {
    LogError::Corrupt {
        path: log.shared.dir.clone(),
        offset: seq,
        reason: "an indexed record is missing from the segments",
    }
}
