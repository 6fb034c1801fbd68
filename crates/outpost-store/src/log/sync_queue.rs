//! The hand-over from the writer to the sync thread: written groups waiting for their fsync, bounded by the
//! records they hold rather than by their number.
//!
//! The bound is what keeps a disk that stops answering from piling up appenders' replies: past it the writer waits
//! for the sync thread. Counting groups did not bound the right thing. Under a light load a group holds a message
//! or two, so a few dozen groups were a few milliseconds of traffic: a flush that stalled for longer (25–76 ms
//! seen on a virtual disk) stopped the writer, and with it the endpoints' reads, which follow the writes and not
//! the fsyncs, for every client at once. Counted in records, the writer runs as far ahead of a slow flush under a
//! light load as under a heavy one.

use std::sync::{Condvar, Mutex, PoisonError};

use super::lock;

/// Written groups on their way to the sync thread, each with the number of records it holds.
pub(crate) struct SyncQueue<T> {
    state: Mutex<Queued<T>>,
    changed: Condvar,
    /// Records written and not yet answered, past which [`SyncQueue::push`] waits.
    limit: usize,
}

struct Queued<T> {
    items: Vec<(T, usize)>,
    /// Records queued or taken and not yet answered.
    records: usize,
    /// The writer is done: nothing more is pushed.
    closed: bool,
    /// The sync side has stopped: nothing more is taken.
    gone: bool,
}

impl<T> SyncQueue<T> {
    pub fn new(limit: usize) -> Self {
        Self {
            state: Mutex::new(Queued {
                items: Vec::new(),
                records: 0,
                closed: false,
                gone: false,
            }),
            changed: Condvar::new(),
            limit,
        }
    }

    /// Queues `item`, which holds `records` records, first waiting while the records queued or being synced are at
    /// the limit (an item larger than the limit goes once nothing is ahead of it). Gives the item back if the
    /// sync side has gone.
    pub fn push(&self, item: T, records: usize) -> Result<(), T> {
        let mut state = lock(&self.state);
        while state.records >= self.limit && !state.gone {
            state = self
                .changed
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
        if state.gone {
            return Err(item);
        }
        state.records += records;
        state.items.push((item, records));
        self.changed.notify_all();
        Ok(())
    }

    /// Takes everything queued, oldest first, with the records it holds (to hand to [`SyncQueue::answered`]),
    /// waiting for something; `None` once the writer has closed the queue and it is empty.
    pub fn take(&self) -> Option<(Vec<T>, usize)> {
        let mut state = lock(&self.state);
        while state.items.is_empty() && !state.closed {
            state = self
                .changed
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
        if state.items.is_empty() {
            return None;
        }
        let mut records = 0;
        let items = state
            .items
            .drain(..)
            .map(|(item, n)| {
                records += n;
                item
            })
            .collect();
        Some((items, records))
    }

    /// Frees the room of `records` taken records: their appenders have been answered.
    pub fn answered(&self, records: usize) {
        let mut state = lock(&self.state);
        state.records = state.records.saturating_sub(records);
        self.changed.notify_all();
    }

    /// The writer is done: [`SyncQueue::take`] returns `None` once the queue is empty.
    pub fn close(&self) {
        lock(&self.state).closed = true;
        self.changed.notify_all();
    }

    /// The sync side has stopped (or failed to start): [`SyncQueue::push`] gives items back from now on, and a
    /// writer waiting for room is woken.
    pub fn gone(&self) {
        lock(&self.state).gone = true;
        self.changed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;

    #[test]
    fn the_sync_side_takes_everything_queued_oldest_first_with_its_records() {
        let queue = SyncQueue::new(100);
        queue.push("a", 2).unwrap();
        queue.push("b", 3).unwrap();
        assert_eq!(queue.take(), Some((vec!["a", "b"], 5)));
        queue.push("c", 1).unwrap();
        queue.close();
        assert_eq!(queue.take(), Some((vec!["c"], 1)));
        assert_eq!(queue.take(), None, "closed and empty");
    }

    /// Records taken but not yet answered still count: a sync thread stuck in its fsync holds its room.
    #[test]
    fn the_writer_waits_at_the_limit_of_records_until_some_are_answered() {
        let queue = Arc::new(SyncQueue::new(4));
        queue.push(1, 3).unwrap();
        let (_, taken) = queue.take().unwrap();
        // Under the limit: goes without waiting, even though it takes the count past it.
        queue.push(2, 2).unwrap();
        let (pushed, was_pushed) = std::sync::mpsc::channel();
        let writer = {
            let queue = Arc::clone(&queue);
            std::thread::spawn(move || {
                queue.push(3, 1).unwrap();
                pushed.send(()).unwrap();
            })
        };
        assert!(
            was_pushed.recv_timeout(Duration::from_millis(200)).is_err(),
            "5 records written and none answered: the writer must wait"
        );
        queue.answered(taken);
        was_pushed
            .recv_timeout(Duration::from_secs(10))
            .expect("room once the first 3 records were answered");
        writer.join().unwrap();
        assert_eq!(queue.take(), Some((vec![2, 3], 3)));
    }

    #[test]
    fn a_writer_waiting_for_room_gets_its_item_back_when_the_sync_side_goes() {
        let queue = Arc::new(SyncQueue::new(1));
        queue.push("held", 1).unwrap();
        let writer = {
            let queue = Arc::clone(&queue);
            std::thread::spawn(move || queue.push("next", 1))
        };
        std::thread::sleep(Duration::from_millis(50));
        queue.gone();
        assert_eq!(writer.join().unwrap(), Err("next"));
        assert_eq!(queue.push("after", 1), Err("after"));
    }
}
