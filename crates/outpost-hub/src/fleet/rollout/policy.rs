//! A deployment's rollout policy (Outpost's extension field `rollout` of a configuration): the waves, how long a
//! device must stay healthy, how long a wave may take, how many failures it tolerates, and an optional health
//! query. Everything that answers 400 before a configuration is stored is checked here.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::HubError;

/// The longest duration a policy accepts (a week), so that a typo does not park a rollout for years.
const MAX_SECS: u64 = 7 * 24 * 3600;

/// The most waves a policy may have.
const MAX_WAVES: usize = 32;

/// How a deployment rolls out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RolloutPolicy {
    /// Each wave's cumulative size: a device count (`"1"`) or a percentage of the targeted devices (`"10%"`).
    pub waves: Vec<String>,
    /// How long every device of a wave must stay healthy before the wave counts as good.
    #[serde(default = "default_healthy_for")]
    pub healthy_for_secs: u64,
    /// How long a wave may take before its devices that are not healthy count as failed.
    #[serde(default = "default_wave_timeout")]
    pub wave_timeout_secs: u64,
    /// How many failed devices a wave tolerates.
    #[serde(default)]
    pub max_failures: usize,
    /// A condition (query WHERE grammar) the device twin or one of its module twins must match to be healthy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_query: Option<String>,
}

fn default_healthy_for() -> u64 {
    60
}

fn default_wave_timeout() -> u64 {
    600
}

/// One wave's cumulative size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaveSize {
    /// This many devices in all (with the earlier waves).
    Count(usize),
    /// This percentage of the targeted devices in all, rounded up.
    Percent(u8),
}

impl WaveSize {
    /// Parses `"3"` or `"25%"`.
    pub fn parse(text: &str) -> Result<Self, HubError> {
        let text = text.trim();
        let invalid = || {
            HubError::ArgumentInvalid(format!(
                "rollout wave {text:?} is neither a device count nor a percentage (1% to 100%)"
            ))
        };
        if let Some(percent) = text.strip_suffix('%') {
            let percent: u8 = percent.trim().parse().map_err(|_| invalid())?;
            if !(1..=100).contains(&percent) {
                return Err(invalid());
            }
            return Ok(Self::Percent(percent));
        }
        let count: usize = text.parse().map_err(|_| invalid())?;
        if count == 0 {
            return Err(invalid());
        }
        Ok(Self::Count(count))
    }

    /// The cumulative number of devices this wave reaches out of `total`.
    fn reach(self, total: usize) -> usize {
        match self {
            Self::Count(count) => count.min(total),
            Self::Percent(percent) => (total * usize::from(percent)).div_ceil(100),
        }
    }
}

impl RolloutPolicy {
    /// Checks the policy: 1 to [`MAX_WAVES`] valid waves, positive durations of at most a week, a health query
    /// that parses.
    pub fn validate(&self) -> Result<(), HubError> {
        if self.waves.is_empty() || self.waves.len() > MAX_WAVES {
            return Err(HubError::ArgumentInvalid(format!(
                "a rollout has 1 to {MAX_WAVES} waves"
            )));
        }
        for wave in &self.waves {
            WaveSize::parse(wave)?;
        }
        for (name, secs) in [
            ("healthyForSecs", self.healthy_for_secs),
            ("waveTimeoutSecs", self.wave_timeout_secs),
        ] {
            if secs > MAX_SECS {
                return Err(HubError::ArgumentInvalid(format!(
                    "rollout {name} must be at most {MAX_SECS}"
                )));
            }
        }
        if self.wave_timeout_secs == 0 || self.wave_timeout_secs < self.healthy_for_secs {
            return Err(HubError::ArgumentInvalid(
                "rollout waveTimeoutSecs must be positive and at least healthyForSecs".into(),
            ));
        }
        if let Some(query) = &self.health_query {
            outpost_core::query::QueryCondition::parse(query).map_err(|e| {
                HubError::ArgumentInvalid(format!("rollout healthQuery is invalid: {e}"))
            })?;
        }
        Ok(())
    }

    /// How long a device must stay healthy.
    pub fn healthy_for(&self) -> Duration {
        Duration::from_secs(self.healthy_for_secs)
    }

    /// How long a wave may take.
    pub fn wave_timeout(&self) -> Duration {
        Duration::from_secs(self.wave_timeout_secs)
    }

    /// Splits `total` targeted devices into the waves' sizes (each at least one device while any are left; the
    /// last wave takes the rest, so that a rollout that completes reaches every device targeted at its start).
    pub fn wave_sizes(&self, total: usize) -> Vec<usize> {
        let mut sizes = Vec::new();
        let mut reached = 0;
        let waves: Vec<WaveSize> = self
            .waves
            .iter()
            .filter_map(|w| WaveSize::parse(w).ok())
            .collect();
        for (index, wave) in waves.iter().enumerate() {
            let last = index + 1 == waves.len();
            let reach = if last {
                total
            } else {
                wave.reach(total).max(reached + 1).min(total)
            };
            if reach > reached {
                sizes.push(reach - reached);
                reached = reach;
            }
        }
        sizes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(waves: &[&str]) -> RolloutPolicy {
        RolloutPolicy {
            waves: waves.iter().map(|w| (*w).to_owned()).collect(),
            healthy_for_secs: 60,
            wave_timeout_secs: 600,
            max_failures: 0,
            health_query: None,
        }
    }

    #[test]
    fn waves_of_counts_and_percentages_split_the_targeted_devices() {
        assert_eq!(policy(&["1", "10%", "100%"]).wave_sizes(50), [1, 4, 45]);
        assert_eq!(policy(&["1", "2", "100%"]).wave_sizes(5), [1, 1, 3]);
        assert_eq!(policy(&["1", "10%", "100%"]).wave_sizes(5), [1, 1, 3]);
    }

    #[test]
    fn the_last_wave_takes_every_device_left() {
        assert_eq!(policy(&["1", "50%"]).wave_sizes(4), [1, 3]);
        assert_eq!(policy(&["10"]).wave_sizes(3), [3]);
        assert_eq!(policy(&["1", "2"]).wave_sizes(0), Vec::<usize>::new());
    }

    #[test]
    fn invalid_waves_durations_and_health_queries_are_refused() {
        assert!(policy(&[]).validate().is_err());
        assert!(policy(&["0"]).validate().is_err());
        assert!(policy(&["101%"]).validate().is_err());
        assert!(policy(&["ten"]).validate().is_err());
        let mut bad = policy(&["1"]);
        bad.wave_timeout_secs = 10;
        assert!(bad.validate().is_err());
        let mut bad = policy(&["1"]);
        bad.health_query = Some("properties.reported.x = ".into());
        assert!(bad.validate().is_err());
        let mut good = policy(&["1", "10%", "100%"]);
        good.health_query = Some("properties.reported.selfTest = 'ok'".into());
        assert!(good.validate().is_ok());
    }
}
