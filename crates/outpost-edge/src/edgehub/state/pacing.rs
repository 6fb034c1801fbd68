//! Pacing: the acknowledgements of senders held while an endpoint they wrote to has a large backlog and its
//! client is connected and listening, so that a publisher faster than its subscriber slows to the
//! subscriber's pace instead of filling the log. The state decides which endpoints are over their bound;
//! this holds the admissions waiting on each, in order.
//!
//! Bounded: at most `max_held` admissions wait in all (past that, a stored message is admitted at once: the log
//! and its quota still bound what accumulates); none waits longer than `max_hold` (a subscriber that does not
//! acknowledge must not make its senders time out and send again).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use foldhash::{HashMap, HashMapExt as _};

/// Records of a connected endpoint, not yet acknowledged, past which its senders' acknowledgements wait: three
/// input windows ([`super::INPUT_WINDOW`]), so that a subscriber always has the next window queued, and the
/// time a message waits in a backlog stays a few milliseconds at tens of thousands per second.
pub const PACED_BACKLOG: usize = 3 * super::INPUT_WINDOW;
/// Admissions held at once, at most.
pub const MAX_HELD: usize = 10_000;
/// The longest an admission is held.
pub const MAX_HOLD: Duration = Duration::from_secs(10);

/// A stored message whose sender waits for its acknowledgement.
#[derive(Debug)]
pub(super) struct Held {
    pub admission: u64,
    pub since: Instant,
    /// The indexes of the endpoints it was stored for.
    pub endpoints: Vec<usize>,
}

/// The admissions held, by the endpoint each waits on.
#[derive(Debug)]
pub(super) struct Pacing {
    pub backlog: usize,
    max_held: usize,
    max_hold: Duration,
    waiting: HashMap<usize, VecDeque<Held>>,
    count: usize,
}

impl Pacing {
    pub fn new(backlog: usize, max_held: usize, max_hold: Duration) -> Self {
        Self {
            backlog,
            max_held,
            max_hold,
            waiting: HashMap::new(),
            count: 0,
        }
    }

    /// Holds `held` until endpoint `index` is released; gives it back when too many are held already.
    pub fn hold(&mut self, held: Held, index: usize) -> Result<(), Held> {
        if self.count >= self.max_held {
            return Err(held);
        }
        self.count += 1;
        self.waiting.entry(index).or_default().push_back(held);
        Ok(())
    }

    /// Everything held on endpoint `index`, in order.
    pub fn take(&mut self, index: usize) -> VecDeque<Held> {
        let taken = self.waiting.remove(&index).unwrap_or_default();
        self.count -= taken.len();
        taken
    }

    /// The admissions held since `max_hold` before `now` or longer, in order per endpoint.
    pub fn expire(&mut self, now: Instant) -> Vec<u64> {
        let mut expired = Vec::new();
        for queue in self.waiting.values_mut() {
            while queue
                .front()
                .is_some_and(|h| h.since + self.max_hold <= now)
            {
                if let Some(held) = queue.pop_front() {
                    expired.push(held.admission);
                }
            }
        }
        self.waiting.retain(|_, queue| !queue.is_empty());
        self.count -= expired.len();
        expired
    }

    /// When the oldest held admission is let go in any case.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.waiting
            .values()
            .filter_map(|queue| queue.front())
            .map(|h| h.since + self.max_hold)
            .min()
    }

    /// How many admissions are held.
    pub fn len(&self) -> usize {
        self.count
    }
}
