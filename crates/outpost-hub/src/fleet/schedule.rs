//! When to evaluate automatic configurations: a plain state machine, fed changes and ticks, that answers which
//! devices to evaluate. A burst of changes costs one evaluation (they are gathered for [`DEBOUNCE`] after the
//! first), and every device is evaluated again every [`RESYNC`] whatever happened, which catches the changes
//! made through another replica (see [`crate::fleet`]).

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

/// How long changes are gathered after the first before they are evaluated.
pub const DEBOUNCE: Duration = Duration::from_millis(250);

/// How often every device is evaluated again.
pub const RESYNC: Duration = Duration::from_secs(30);

/// The most devices a batch names: past it, the batch becomes "every device" (one full evaluation costs the
/// same as many single ones and keeps the batch bounded).
pub const MAX_PENDING_DEVICES: usize = 1024;

/// What changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Something that can change what every device gets (a configuration was put or deleted).
    Everything,
    /// One device (created, its tags or reported properties changed, a manual deployment applied).
    Device(String),
}

/// The devices to evaluate.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Batch {
    /// Every device.
    pub all: bool,
    /// These devices (empty when `all`).
    pub devices: BTreeSet<String>,
}

impl Batch {
    /// Adds a change, turning into "every device" past [`MAX_PENDING_DEVICES`].
    fn add(&mut self, change: Change) {
        match change {
            _ if self.all => {}
            Change::Everything => self.everything(),
            Change::Device(device) => {
                self.devices.insert(device);
                if self.devices.len() > MAX_PENDING_DEVICES {
                    self.everything();
                }
            }
        }
    }

    fn everything(&mut self) {
        self.all = true;
        self.devices.clear();
    }

    /// Whether there is nothing to evaluate.
    pub fn is_empty(&self) -> bool {
        !self.all && self.devices.is_empty()
    }
}

/// What the evaluation task is told to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Evaluate these devices now.
    Evaluate(Batch),
}

/// What the evaluation task is fed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Something changed.
    Changed(Change),
    /// Time passed (the task wakes at [`Schedule::next_wake`]).
    Tick,
}

/// The schedule of evaluations: changes gathered since the first, and when the next full one is due.
#[derive(Debug)]
pub struct Schedule {
    pending: Batch,
    /// When the gathered changes are due, once there are some.
    due: Option<Instant>,
    /// When every device is evaluated again.
    resync: Instant,
}

impl Schedule {
    /// A schedule whose first full evaluation is due at once (at start-up, nothing says the twins are current).
    pub fn new(now: Instant) -> Self {
        Self {
            pending: Batch::default(),
            due: None,
            resync: now,
        }
    }

    /// Handles an event at `now`.
    pub fn handle(&mut self, event: Event, now: Instant) -> Vec<Action> {
        match event {
            Event::Changed(change) => {
                self.pending.add(change);
                self.due.get_or_insert(now + DEBOUNCE);
                Vec::new()
            }
            Event::Tick => {
                let mut batch = Batch::default();
                if self.due.is_some_and(|due| due <= now) {
                    self.due = None;
                    batch = std::mem::take(&mut self.pending);
                }
                if self.resync <= now {
                    batch.everything();
                }
                if batch.all {
                    self.resync = now + RESYNC;
                }
                if batch.is_empty() {
                    Vec::new()
                } else {
                    vec![Action::Evaluate(batch)]
                }
            }
        }
    }

    /// When the task should tick next.
    pub fn next_wake(&self) -> Instant {
        self.due.map_or(self.resync, |due| due.min(self.resync))
    }
}

/// Where the services tell the evaluation task what changed: a bounded batch behind a lock, and a wake-up.
#[derive(Clone, Default)]
pub struct FleetSignal {
    inner: Arc<SignalInner>,
}

#[derive(Default)]
struct SignalInner {
    // A std Mutex: held only to add to or take the batch, never across an await.
    changes: Mutex<Batch>,
    wake: Notify,
    /// Wakes the rollout driver: a device's reported properties may have made a wave good or failed.
    rollouts: Notify,
}

impl FleetSignal {
    /// Tells the evaluation task that something changed.
    pub fn changed(&self, change: Change) {
        if let Ok(mut changes) = self.inner.changes.lock() {
            changes.add(change);
        }
        self.inner.wake.notify_one();
        self.inner.rollouts.notify_one();
    }

    /// Waits until something changed since the rollout driver last woke.
    pub async fn rollout_changes(&self) {
        self.inner.rollouts.notified().await;
    }

    /// Waits for a change and takes the changes gathered.
    pub async fn next(&self) -> Batch {
        loop {
            if let Some(batch) = self.take() {
                return batch;
            }
            self.inner.wake.notified().await;
        }
    }

    fn take(&self) -> Option<Batch> {
        let mut changes = self.inner.changes.lock().ok()?;
        (!changes.is_empty()).then(|| std::mem::take(&mut *changes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn evaluated(actions: &[Action]) -> Vec<Batch> {
        actions
            .iter()
            .map(|Action::Evaluate(batch)| batch.clone())
            .collect()
    }

    #[test]
    fn a_burst_of_changes_costs_one_evaluation() {
        let start = Instant::now();
        let mut schedule = Schedule::new(start);
        assert!(evaluated(&schedule.handle(Event::Tick, start))[0].all);
        for (i, device) in ["a", "b", "a"].into_iter().enumerate() {
            let at = start + Duration::from_millis(10 * i as u64);
            schedule.handle(Event::Changed(Change::Device(device.into())), at);
        }
        assert_eq!(schedule.next_wake(), start + DEBOUNCE);
        assert!(schedule
            .handle(Event::Tick, start + DEBOUNCE / 2)
            .is_empty());
        let batches = evaluated(&schedule.handle(Event::Tick, start + DEBOUNCE));
        assert_eq!(batches.len(), 1);
        assert_eq!(batches[0].devices, BTreeSet::from(["a".into(), "b".into()]));
        assert!(schedule
            .handle(Event::Tick, start + DEBOUNCE * 2)
            .is_empty());
    }

    #[test]
    fn every_device_is_evaluated_again_after_the_resync_period() {
        let start = Instant::now();
        let mut schedule = Schedule::new(start);
        schedule.handle(Event::Tick, start);
        assert_eq!(schedule.next_wake(), start + RESYNC);
        let batches = evaluated(&schedule.handle(Event::Tick, start + RESYNC));
        assert!(batches[0].all);
    }

    #[test]
    fn too_many_devices_become_one_full_evaluation() {
        let start = Instant::now();
        let mut schedule = Schedule::new(start);
        schedule.handle(Event::Tick, start);
        for i in 0..=MAX_PENDING_DEVICES {
            schedule.handle(Event::Changed(Change::Device(format!("d{i}"))), start);
        }
        let batches = evaluated(&schedule.handle(Event::Tick, start + DEBOUNCE));
        assert!(batches[0].all);
        assert!(batches[0].devices.is_empty());
    }
}
