//! Restart policies and back-off, as Azure IoT Edge's agent applies them (AZURE-COMPAT §5.2).

use chrono::{DateTime, Duration, Utc};
use outpost_core::RestartPolicy;

use crate::runtime::InstanceStatus;

/// How the back-off grows and when a module is given up on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackOff {
    /// The cool-off unit: the wait before restart `n` is `unit × 2^n`, capped by `max`.
    pub unit: Duration,
    /// The longest cool-off.
    pub max: Duration,
    /// After this many restarts the module is reported failed and left alone.
    pub max_restarts: u32,
    /// A module that has run this long has its restart count reset.
    pub intensive_care: Duration,
}

impl Default for BackOff {
    fn default() -> Self {
        Self {
            unit: Duration::seconds(10),
            max: Duration::seconds(300),
            max_restarts: 20,
            intensive_care: Duration::minutes(10),
        }
    }
}

/// What the supervisor remembers of a module between looks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RestartRecord {
    /// Restarts since the module last ran long enough.
    pub restart_count: u32,
    /// When the supervisor last restarted it.
    pub last_restart: Option<DateTime<Utc>>,
}

/// What to do with an instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Nothing: it runs, or its policy leaves it as it is.
    Leave,
    /// Restart it now.
    Restart,
    /// It is due a restart once the cool-off ends (reported as `backoff`).
    Wait {
        /// When the cool-off ends.
        until: DateTime<Utc>,
    },
    /// It restarted too often: reported `failed`, left alone.
    GiveUp,
}

impl BackOff {
    /// The cool-off before the restart that follows `restart_count` earlier ones.
    pub fn cool_off(&self, restart_count: u32) -> Duration {
        let factor = 2_i32.checked_pow(restart_count.min(30)).unwrap_or(i32::MAX);
        self.unit
            .checked_mul(factor)
            .map_or(self.max, |d| d.min(self.max))
    }

    /// Decides for an instance that should be running, given its status and its last exit.
    pub fn decide(
        &self,
        policy: RestartPolicy,
        status: InstanceStatus,
        exited_at: Option<DateTime<Utc>>,
        record: &RestartRecord,
        now: DateTime<Utc>,
    ) -> Decision {
        // on-unhealthy also restarts a failed module: without health probes it behaves as on-failure.
        let due = match (status, policy) {
            (InstanceStatus::Running | InstanceStatus::Dead, _) | (_, RestartPolicy::Never) => {
                false
            }
            (InstanceStatus::Stopped, policy) => policy == RestartPolicy::Always,
            (InstanceStatus::Failed, _) => true,
        };
        if !due {
            return Decision::Leave;
        }
        if record.restart_count >= self.max_restarts {
            return Decision::GiveUp;
        }
        let since = exited_at.or(record.last_restart).unwrap_or(now);
        let until = since + self.cool_off(record.restart_count);
        if now >= until {
            Decision::Restart
        } else {
            Decision::Wait { until }
        }
    }

    /// Forgets past restarts of a module that has now run longer than the intensive-care time.
    pub fn settle(
        &self,
        record: &mut RestartRecord,
        started_at: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
    ) {
        if started_at.is_some_and(|started| now - started >= self.intensive_care) {
            *record = RestartRecord::default();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000 + seconds, 0).unwrap()
    }

    #[test]
    fn the_cool_off_doubles_from_ten_seconds_up_to_five_minutes() {
        let back_off = BackOff::default();
        let waits: Vec<i64> = (0..7).map(|n| back_off.cool_off(n).num_seconds()).collect();
        assert_eq!(waits, [10, 20, 40, 80, 160, 300, 300]);
        assert_eq!(back_off.cool_off(u32::MAX).num_seconds(), 300);
    }

    #[test]
    fn a_failed_module_waits_its_cool_off_then_restarts() {
        let back_off = BackOff::default();
        let record = RestartRecord {
            restart_count: 1,
            last_restart: None,
        };
        let decide = |now| {
            back_off.decide(
                RestartPolicy::OnFailure,
                InstanceStatus::Failed,
                Some(at(0)),
                &record,
                now,
            )
        };
        assert_eq!(decide(at(5)), Decision::Wait { until: at(20) });
        assert_eq!(decide(at(20)), Decision::Restart);
    }

    #[test]
    fn policies_decide_which_exits_restart() {
        let back_off = BackOff::default();
        let decide = |policy, status| {
            back_off.decide(
                policy,
                status,
                Some(at(0)),
                &RestartRecord::default(),
                at(60),
            )
        };
        assert_eq!(
            decide(RestartPolicy::Never, InstanceStatus::Failed),
            Decision::Leave
        );
        assert_eq!(
            decide(RestartPolicy::OnFailure, InstanceStatus::Stopped),
            Decision::Leave
        );
        assert_eq!(
            decide(RestartPolicy::OnFailure, InstanceStatus::Failed),
            Decision::Restart
        );
        assert_eq!(
            decide(RestartPolicy::OnUnhealthy, InstanceStatus::Failed),
            Decision::Restart
        );
        assert_eq!(
            decide(RestartPolicy::Always, InstanceStatus::Stopped),
            Decision::Restart
        );
        assert_eq!(
            decide(RestartPolicy::Always, InstanceStatus::Running),
            Decision::Leave
        );
        assert_eq!(
            decide(RestartPolicy::Always, InstanceStatus::Dead),
            Decision::Leave
        );
    }

    #[test]
    fn too_many_restarts_give_up() {
        let back_off = BackOff::default();
        let record = RestartRecord {
            restart_count: 20,
            last_restart: None,
        };
        let decision = back_off.decide(
            RestartPolicy::Always,
            InstanceStatus::Failed,
            Some(at(0)),
            &record,
            at(10_000),
        );
        assert_eq!(decision, Decision::GiveUp);
    }

    #[test]
    fn a_long_run_resets_the_restart_count() {
        let back_off = BackOff::default();
        let mut record = RestartRecord {
            restart_count: 5,
            last_restart: Some(at(0)),
        };
        back_off.settle(&mut record, Some(at(0)), at(599));
        assert_eq!(record.restart_count, 5);
        back_off.settle(&mut record, Some(at(0)), at(600));
        assert_eq!(record, RestartRecord::default());
    }
}
