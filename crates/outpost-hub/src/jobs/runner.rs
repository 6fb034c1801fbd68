//! The job runner's state: which jobs this replica runs, their devices still to do, the device operations in
//! flight. Events go in with `now`; actions for the driver ([`super::driver`]) come out. No I/O, no clock, no
//! locks: one task owns it, as `outpost-mqtt`'s session is owned by its connection.
//!
//! A job is claimed once it is due (its start time has come): the driver takes its lease in storage, selects
//! its devices (or, for a job another runner started and left, loads those not done) and answers
//! [`Event::Claimed`]. Its devices are then worked through with at most [`JobRunner::limit`] operations in
//! flight across all jobs; each finished operation is stored by the driver before it is reported here, so a
//! runner that starts again resumes with the devices not done. At the job's deadline (start plus
//! `maxExecutionTimeInSeconds`) the devices not done count as failed and the job completes, as IoT Hub's do.

use std::collections::{BTreeMap, HashSet, VecDeque};

use chrono::{DateTime, Utc};

use super::model::{DeviceJobStatistics, JobStatus};

/// A job that storage holds and that has not ended, as the runner needs to know it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActiveJob {
    /// The job's id.
    pub job_id: String,
    /// When it is due.
    pub start_time: DateTime<Utc>,
}

/// What happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The jobs storage holds that have not ended (the driver polls, and looks again at once after a local
    /// change). A job this runner runs that is missing from it ended elsewhere (it was cancelled).
    Stored(Vec<ActiveJob>),
    /// This replica holds the job's lease now: the devices not done yet and the counts so far.
    Claimed {
        /// The job.
        job_id: String,
        /// When it must have ended.
        deadline: DateTime<Utc>,
        /// Its devices not done yet, in order.
        pending: Vec<String>,
        /// Its counts so far (for a resumed job, those stored).
        statistics: DeviceJobStatistics,
    },
    /// The job could not be claimed: another replica holds it, or it ended meanwhile.
    NotClaimed {
        /// The job.
        job_id: String,
    },
    /// A device's operation finished, and its outcome is stored.
    DeviceDone {
        /// The job.
        job_id: String,
        /// The device.
        device_id: String,
        /// Whether it succeeded.
        succeeded: bool,
    },
    /// Time passed.
    Tick,
}

/// What the driver must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Take the due job's lease, select or load its devices, and answer [`Event::Claimed`] or
    /// [`Event::NotClaimed`].
    Claim {
        /// The job.
        job_id: String,
    },
    /// Run the job's operation on the device, store its outcome, then answer [`Event::DeviceDone`].
    Run {
        /// The job.
        job_id: String,
        /// The device.
        device_id: String,
    },
    /// Extend the leases of the jobs this runner holds.
    Renew {
        /// The jobs.
        job_ids: Vec<String>,
    },
    /// Store a job's counts (at most once a tick, while they change).
    Save {
        /// The job.
        job_id: String,
        /// Its counts.
        statistics: DeviceJobStatistics,
    },
    /// The job ended: store its status (unless it was cancelled meanwhile), end time and counts, and give up
    /// its lease.
    Finish {
        /// The job.
        job_id: String,
        /// How it ended.
        status: JobStatus,
        /// Its final counts.
        statistics: DeviceJobStatistics,
    },
}

/// One job this runner runs.
#[derive(Debug)]
struct RunningJob {
    deadline: DateTime<Utc>,
    pending: VecDeque<String>,
    running: HashSet<String>,
    statistics: DeviceJobStatistics,
    /// The counts changed since they were last saved.
    unsaved: bool,
}

/// The jobs this replica runs and the device operations it has in flight.
#[derive(Debug)]
pub struct JobRunner {
    limit: usize,
    jobs: BTreeMap<String, RunningJob>,
    /// Jobs whose claim the driver is performing.
    claiming: HashSet<String>,
    /// Device operations in flight, of every job (also of jobs dropped since: they still hold a place).
    in_flight: usize,
    /// The job whose device was started last.
    last_served: Option<String>,
}

impl JobRunner {
    /// A runner with at most `limit` device operations in flight (at least one).
    pub fn new(limit: usize) -> Self {
        Self {
            limit: limit.max(1),
            jobs: BTreeMap::new(),
            claiming: HashSet::new(),
            in_flight: 0,
            last_served: None,
        }
    }

    /// The most device operations in flight.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// The jobs this runner holds (to give up their leases when it stops).
    pub fn held(&self) -> Vec<String> {
        self.jobs.keys().cloned().collect()
    }

    /// Handles `event` at `now`.
    pub fn handle(&mut self, event: Event, now: DateTime<Utc>) -> Vec<Action> {
        let mut actions = Vec::new();
        match event {
            Event::Stored(active) => self.stored(active, now, &mut actions),
            Event::Claimed {
                job_id,
                deadline,
                pending,
                statistics,
            } => {
                self.claiming.remove(&job_id);
                let mut statistics = statistics;
                statistics.pending_count = pending.len() as u64;
                statistics.running_count = 0;
                self.jobs.insert(
                    job_id,
                    RunningJob {
                        deadline,
                        pending: pending.into(),
                        running: HashSet::new(),
                        statistics,
                        unsaved: true,
                    },
                );
            }
            Event::NotClaimed { job_id } => {
                self.claiming.remove(&job_id);
            }
            Event::DeviceDone {
                job_id,
                device_id,
                succeeded,
            } => {
                self.in_flight = self.in_flight.saturating_sub(1);
                if let Some(job) = self.jobs.get_mut(&job_id) {
                    if job.running.remove(&device_id) {
                        job.statistics.running_count -= 1;
                        if succeeded {
                            job.statistics.succeeded_count += 1;
                        } else {
                            job.statistics.failed_count += 1;
                        }
                        job.unsaved = true;
                    }
                }
            }
            Event::Tick => {
                for (job_id, job) in &mut self.jobs {
                    if job.unsaved {
                        job.unsaved = false;
                        actions.push(Action::Save {
                            job_id: job_id.clone(),
                            statistics: job.statistics,
                        });
                    }
                }
            }
        }
        self.expire(now, &mut actions);
        self.complete(&mut actions);
        self.dispatch(&mut actions);
        actions
    }

    /// Claims the due jobs not held here, drops those that ended elsewhere, and renews the leases of the rest.
    fn stored(&mut self, active: Vec<ActiveJob>, now: DateTime<Utc>, actions: &mut Vec<Action>) {
        let still: HashSet<&str> = active.iter().map(|j| j.job_id.as_str()).collect();
        let ended: Vec<String> = self
            .jobs
            .keys()
            .filter(|id| !still.contains(id.as_str()))
            .cloned()
            .collect();
        for job_id in ended {
            // Cancelled elsewhere: its last counts are kept; its operations in flight finish unreported.
            if let Some(job) = self.jobs.remove(&job_id) {
                actions.push(Action::Save {
                    job_id,
                    statistics: job.statistics,
                });
            }
        }
        if !self.jobs.is_empty() {
            actions.push(Action::Renew {
                job_ids: self.held(),
            });
        }
        for job in active {
            let due = job.start_time <= now;
            if due
                && !self.jobs.contains_key(&job.job_id)
                && self.claiming.insert(job.job_id.clone())
            {
                actions.push(Action::Claim { job_id: job.job_id });
            }
        }
    }

    /// Completes the jobs whose deadline passed: the devices not done count as failed.
    fn expire(&mut self, now: DateTime<Utc>, actions: &mut Vec<Action>) {
        let expired: Vec<String> = self
            .jobs
            .iter()
            .filter(|(_, job)| job.deadline <= now)
            .map(|(id, _)| id.clone())
            .collect();
        for job_id in expired {
            if let Some(job) = self.jobs.remove(&job_id) {
                let mut statistics = job.statistics;
                statistics.failed_count += statistics.pending_count + statistics.running_count;
                statistics.pending_count = 0;
                statistics.running_count = 0;
                actions.push(Action::Finish {
                    job_id,
                    status: JobStatus::Completed,
                    statistics,
                });
            }
        }
    }

    /// Completes the jobs with every device done.
    fn complete(&mut self, actions: &mut Vec<Action>) {
        let done: Vec<String> = self
            .jobs
            .iter()
            .filter(|(_, job)| job.pending.is_empty() && job.running.is_empty())
            .map(|(id, _)| id.clone())
            .collect();
        for job_id in done {
            if let Some(job) = self.jobs.remove(&job_id) {
                actions.push(Action::Finish {
                    job_id,
                    status: JobStatus::Completed,
                    statistics: job.statistics,
                });
            }
        }
    }

    /// Starts devices while there is room, each time of the job after the one served last, so that a large job
    /// does not hold back a small one.
    fn dispatch(&mut self, actions: &mut Vec<Action>) {
        use std::ops::Bound::{Excluded, Unbounded};
        while self.in_flight < self.limit {
            let after = self.last_served.clone().unwrap_or_default();
            let next = self
                .jobs
                .range::<String, _>((Excluded(&after), Unbounded))
                .chain(self.jobs.range::<String, _>(..=&after))
                .find(|(_, job)| !job.pending.is_empty())
                .map(|(id, _)| id.clone());
            let Some(job_id) = next else { break };
            let Some(job) = self.jobs.get_mut(&job_id) else {
                break;
            };
            let Some(device_id) = job.pending.pop_front() else {
                break;
            };
            job.running.insert(device_id.clone());
            job.statistics.pending_count -= 1;
            job.statistics.running_count += 1;
            job.unsaved = true;
            self.in_flight += 1;
            self.last_served = Some(job_id.clone());
            actions.push(Action::Run { job_id, device_id });
        }
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    fn at(seconds: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_800_000_000 + seconds, 0).unwrap()
    }

    fn active(id: &str, start: i64) -> ActiveJob {
        ActiveJob {
            job_id: id.into(),
            start_time: at(start),
        }
    }

    fn claimed(id: &str, deadline: i64, devices: &[&str]) -> Event {
        Event::Claimed {
            job_id: id.into(),
            deadline: at(deadline),
            pending: devices.iter().map(|d| (*d).to_owned()).collect(),
            statistics: DeviceJobStatistics {
                device_count: devices.len() as u64,
                ..DeviceJobStatistics::default()
            },
        }
    }

    fn done(id: &str, device: &str, succeeded: bool) -> Event {
        Event::DeviceDone {
            job_id: id.into(),
            device_id: device.into(),
            succeeded,
        }
    }

    fn runs(actions: &[Action]) -> Vec<String> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Run { device_id, .. } => Some(device_id.clone()),
                _ => None,
            })
            .collect()
    }

    fn finish(actions: &[Action]) -> Option<(JobStatus, DeviceJobStatistics)> {
        actions.iter().find_map(|a| match a {
            Action::Finish {
                status, statistics, ..
            } => Some((*status, *statistics)),
            _ => None,
        })
    }

    fn stats(devices: u64, succeeded: u64, failed: u64) -> DeviceJobStatistics {
        DeviceJobStatistics {
            device_count: devices,
            succeeded_count: succeeded,
            failed_count: failed,
            running_count: 0,
            pending_count: 0,
        }
    }

    #[test]
    fn a_job_is_claimed_only_once_its_start_time_has_come() {
        let mut runner = JobRunner::new(4);
        let actions = runner.handle(Event::Stored(vec![active("later", 10)]), at(0));
        assert!(actions.is_empty(), "{actions:?}");
        let actions = runner.handle(Event::Stored(vec![active("later", 10)]), at(10));
        assert_eq!(
            actions,
            vec![Action::Claim {
                job_id: "later".into()
            }]
        );
    }

    #[test]
    fn a_claim_in_progress_is_not_asked_for_again_and_a_refused_one_is_retried() {
        let mut runner = JobRunner::new(4);
        runner.handle(Event::Stored(vec![active("j", 0)]), at(0));
        let again = runner.handle(Event::Stored(vec![active("j", 0)]), at(1));
        assert!(again.is_empty(), "{again:?}");
        runner.handle(Event::NotClaimed { job_id: "j".into() }, at(1));
        let retried = runner.handle(Event::Stored(vec![active("j", 0)]), at(2));
        assert_eq!(retried, vec![Action::Claim { job_id: "j".into() }]);
    }

    #[test]
    fn a_claimed_job_runs_its_devices_within_the_limit_and_completes_with_their_outcomes() {
        let mut runner = JobRunner::new(2);
        let actions = runner.handle(claimed("j", 100, &["a", "b", "c"]), at(0));
        assert_eq!(runs(&actions), ["a", "b"]);
        let actions = runner.handle(done("j", "a", true), at(1));
        assert_eq!(runs(&actions), ["c"]);
        assert!(runner.handle(done("j", "b", false), at(1)).is_empty());
        let actions = runner.handle(done("j", "c", true), at(2));
        assert_eq!(
            finish(&actions),
            Some((JobStatus::Completed, stats(3, 2, 1)))
        );
        assert!(runner.held().is_empty());
    }

    #[test]
    fn a_job_without_devices_completes_at_once() {
        let mut runner = JobRunner::new(2);
        let actions = runner.handle(claimed("j", 100, &[]), at(0));
        assert_eq!(
            finish(&actions),
            Some((JobStatus::Completed, stats(0, 0, 0)))
        );
    }

    #[test]
    fn at_the_deadline_the_devices_not_done_count_as_failed() {
        let mut runner = JobRunner::new(1);
        runner.handle(claimed("j", 10, &["a", "b", "c"]), at(0));
        runner.handle(done("j", "a", true), at(1));
        assert!(finish(&runner.handle(Event::Tick, at(9))).is_none());
        let actions = runner.handle(Event::Tick, at(10));
        assert_eq!(
            finish(&actions),
            Some((JobStatus::Completed, stats(3, 1, 2)))
        );
        // The operation in flight at the deadline finishes later and changes nothing, but frees its place.
        assert!(runner.handle(done("j", "b", true), at(11)).is_empty());
        let actions = runner.handle(claimed("k", 100, &["x"]), at(12));
        assert_eq!(runs(&actions), ["x"]);
    }

    #[test]
    fn a_job_cancelled_elsewhere_is_dropped_with_its_counts_saved_and_runs_nothing_more() {
        let mut runner = JobRunner::new(1);
        runner.handle(claimed("j", 100, &["a", "b"]), at(0));
        let actions = runner.handle(Event::Stored(vec![]), at(1));
        assert!(
            matches!(&actions[..], [Action::Save { job_id, statistics }]
                if job_id == "j" && statistics.running_count == 1 && statistics.pending_count == 1),
            "{actions:?}"
        );
        let actions = runner.handle(done("j", "a", true), at(2));
        assert!(actions.is_empty(), "{actions:?}");
        assert!(runner.held().is_empty());
    }

    #[test]
    fn a_resumed_job_runs_only_the_devices_not_done_and_keeps_the_stored_counts() {
        let mut runner = JobRunner::new(8);
        let actions = runner.handle(
            Event::Claimed {
                job_id: "j".into(),
                deadline: at(100),
                pending: vec!["c".into()],
                statistics: DeviceJobStatistics {
                    device_count: 3,
                    succeeded_count: 1,
                    failed_count: 1,
                    running_count: 1,
                    pending_count: 0,
                },
            },
            at(0),
        );
        assert_eq!(runs(&actions), ["c"]);
        let actions = runner.handle(done("j", "c", true), at(1));
        assert_eq!(
            finish(&actions),
            Some((JobStatus::Completed, stats(3, 2, 1)))
        );
    }

    #[test]
    fn held_jobs_renew_their_leases_and_save_changed_counts_once_a_tick() {
        let mut runner = JobRunner::new(1);
        runner.handle(claimed("j", 100, &["a", "b"]), at(0));
        let actions = runner.handle(Event::Stored(vec![active("j", 0)]), at(1));
        assert_eq!(
            actions,
            vec![Action::Renew {
                job_ids: vec!["j".into()]
            }]
        );
        let saved = runner.handle(Event::Tick, at(1));
        assert!(matches!(&saved[..], [Action::Save { .. }]), "{saved:?}");
        assert!(runner.handle(Event::Tick, at(2)).is_empty());
    }

    #[test]
    fn the_limit_is_shared_by_every_job_in_turn() {
        let mut runner = JobRunner::new(2);
        let actions = runner.handle(claimed("big", 100, &["b1", "b2", "b3"]), at(0));
        assert_eq!(runs(&actions), ["b1", "b2"]);
        assert!(runs(&runner.handle(claimed("small", 100, &["s1"]), at(0))).is_empty());
        // The place b1 leaves goes to the small job, not to the big job's next device.
        assert_eq!(runs(&runner.handle(done("big", "b1", true), at(1))), ["s1"]);
        assert_eq!(
            runs(&runner.handle(done("small", "s1", true), at(1))),
            ["b3"]
        );
    }
}
