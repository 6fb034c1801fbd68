//! The rollout of one deployment as a pure state machine, in the shape of `outpost-mqtt`'s session: a plain,
//! serializable struct (the persisted state), `handle(event, now) -> Vec<Action>`, no I/O and no clock. The
//! driver ([`super::driver`]) observes the devices' health, feeds events, stores the state and turns actions into
//! evaluations; the configurations evaluation asks [`Rollout::admits`] whether a device gets the deployment.

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};

use super::policy::RolloutPolicy;

/// Where a rollout stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Phase {
    /// Stored with its deployment, waves not computed yet: no device gets the deployment.
    Pending,
    /// A wave is released and watched.
    Rolling,
    /// Stopped by the operator; devices keep what they have until it is resumed.
    Paused,
    /// Every wave was good: the deployment applies as any other (devices that join later get it too).
    Completed,
    /// A wave failed and went back to its previous content.
    RolledBack,
    /// The operator aborted it; the current wave went back to its previous content.
    Aborted,
    /// A newer deployment took over the devices; the devices already given it keep it.
    Superseded,
}

impl Phase {
    /// Whether the rollout still changes.
    pub fn is_active(self) -> bool {
        matches!(self, Self::Pending | Self::Rolling | Self::Paused)
    }
}

/// Where one device of the rollout stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum DeviceState {
    /// Its wave is not released: it keeps what it had.
    Waiting,
    /// Given the deployment, not healthy for long enough yet (offline counts here until the wave timeout).
    Updating,
    /// Healthy for the whole healthy period.
    Healthy,
    /// Reported a failure, or was not healthy by the wave timeout.
    Failed,
    /// Given its previous content back.
    RolledBack,
    /// No longer targeted by the deployment; it no longer counts.
    Left,
}

/// What the hub last saw of a released device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    /// It runs the deployment: applied with status 200, every module running, the health query matched.
    Healthy,
    /// Not there yet (not applied yet, a module starting, the health query not matched, offline).
    NotYet(String),
    /// It reports a failure (a status other than 200, a module in backoff or failed).
    Failed(String),
}

/// What a device had before the rollout: its winning base deployment and layers.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Previous {
    /// The base deployment's id, if one applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<String>,
    /// The layered deployments' ids.
    #[serde(default)]
    pub layers: Vec<String>,
}

/// One device of the rollout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RolloutDevice {
    /// The wave it belongs to (0 first).
    pub wave: usize,
    /// Where it stands.
    pub state: DeviceState,
    /// Since when it has been healthy without a break.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthy_since: Option<DateTime<Utc>>,
    /// What it had before it got the deployment.
    pub previous: Previous,
    /// Why it failed (or what it last lacked).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// The events a rollout handles.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Start: the devices the deployment targets now, each with what it has before.
    Start(Vec<(String, Previous)>),
    /// What a released device's twins show.
    Observed(String, Health),
    /// The device no longer matches the deployment's target (or was deleted).
    Left(String),
    /// Time passed.
    Tick,
    /// The operator pauses it.
    Pause,
    /// The operator resumes it.
    Resume,
    /// The operator aborts it: the current wave goes back.
    Abort,
    /// A newer deployment targeting the same devices outranks it.
    Superseded(String),
}

/// What the driver must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Give the deployment to these devices (evaluate them: [`Rollout::admits`] now says yes).
    Give(Vec<String>),
    /// Give these devices back their previous content (evaluate them: [`Rollout::admits`] now says no).
    RollBack(Vec<String>),
    /// The rollout changed; store it.
    Store,
}

/// The persisted rollout of one deployment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Rollout {
    /// The deployment's (configuration's) id.
    pub deployment: String,
    /// Its policy, as stored with the deployment.
    pub policy: RolloutPolicy,
    /// Where it stands.
    pub phase: Phase,
    /// The current wave (the last released one).
    pub wave: usize,
    /// How many waves there are (computed at start).
    pub waves: usize,
    /// When the current wave was released (or resumed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wave_started: Option<DateTime<Utc>>,
    /// The devices targeted at start.
    pub devices: BTreeMap<String, RolloutDevice>,
    /// The newer deployment that superseded it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub superseded_by: Option<String>,
    /// Counts every change (so that a replica writing an older state is noticed).
    pub version: u64,
}

impl Rollout {
    /// A rollout stored with its deployment, not started.
    pub fn new(deployment: &str, policy: RolloutPolicy) -> Self {
        Self {
            deployment: deployment.to_owned(),
            policy,
            phase: Phase::Pending,
            wave: 0,
            waves: 0,
            wave_started: None,
            devices: BTreeMap::new(),
            superseded_by: None,
            version: 0,
        }
    }

    /// Whether `device` gets the deployment now (the evaluation leaves it out of the device's deployments when
    /// not): once completed, every targeted device; before, the devices of released waves that were not rolled
    /// back; never a device that left and came back during the rollout.
    pub fn admits(&self, device: &str) -> bool {
        let found = self.devices.get(device);
        match self.phase {
            Phase::Pending => false,
            Phase::Completed => found.is_none_or(|d| d.state != DeviceState::RolledBack),
            _ => found.is_some_and(|d| {
                matches!(
                    d.state,
                    DeviceState::Updating | DeviceState::Healthy | DeviceState::Failed
                )
            }),
        }
    }

    /// The devices of the rollout in `state`.
    pub fn in_state(&self, state: DeviceState) -> impl Iterator<Item = &str> {
        self.devices
            .iter()
            .filter(move |(_, d)| d.state == state)
            .map(|(id, _)| id.as_str())
    }

    /// Handles an event at `now`.
    pub fn handle(&mut self, event: Event, now: DateTime<Utc>) -> Vec<Action> {
        let mut actions = match (self.phase, event) {
            (Phase::Pending, Event::Start(targeted)) => self.start(targeted, now),
            (Phase::Rolling | Phase::Paused, Event::Observed(device, health)) => {
                self.observe(&device, health, now)
            }
            (phase, Event::Left(device)) if phase.is_active() => self.left(&device, now),
            (Phase::Rolling, Event::Tick) => self.tick(now),
            (Phase::Rolling, Event::Pause) => {
                self.phase = Phase::Paused;
                vec![Action::Store]
            }
            (Phase::Paused, Event::Resume) => {
                // The wave gets its whole timeout again: time spent paused is not the devices' fault.
                self.phase = Phase::Rolling;
                self.wave_started = Some(now);
                let mut actions = vec![Action::Store];
                actions.extend(self.tick(now));
                actions
            }
            (Phase::Rolling | Phase::Paused, Event::Abort) => {
                let back = self.roll_back_wave();
                self.phase = Phase::Aborted;
                vec![Action::RollBack(back), Action::Store]
            }
            (Phase::Pending, Event::Abort) => {
                self.phase = Phase::Aborted;
                vec![Action::Store]
            }
            (phase, Event::Superseded(by)) if phase.is_active() => {
                self.phase = Phase::Superseded;
                self.superseded_by = Some(by);
                vec![Action::Store]
            }
            _ => Vec::new(),
        };
        if actions.contains(&Action::Store) {
            self.version += 1;
        } else if !actions.is_empty() {
            self.version += 1;
            actions.push(Action::Store);
        }
        actions
    }

    fn start(&mut self, targeted: Vec<(String, Previous)>, now: DateTime<Utc>) -> Vec<Action> {
        let sizes = self.policy.wave_sizes(targeted.len());
        self.waves = sizes.len();
        let mut devices = targeted.into_iter();
        for (wave, size) in sizes.into_iter().enumerate() {
            for (device, previous) in devices.by_ref().take(size) {
                let entry = RolloutDevice {
                    wave,
                    state: DeviceState::Waiting,
                    healthy_since: None,
                    previous,
                    reason: None,
                };
                self.devices.insert(device, entry);
            }
        }
        if self.waves == 0 {
            // Nothing targeted: the deployment applies as any other to devices that join later.
            self.phase = Phase::Completed;
            return vec![Action::Store];
        }
        self.phase = Phase::Rolling;
        let mut actions = vec![self.release(0, now)];
        actions.push(Action::Store);
        actions
    }

    fn release(&mut self, wave: usize, now: DateTime<Utc>) -> Action {
        self.wave = wave;
        self.wave_started = Some(now);
        let mut given = Vec::new();
        for (id, device) in &mut self.devices {
            if device.wave == wave && device.state == DeviceState::Waiting {
                device.state = DeviceState::Updating;
                given.push(id.clone());
            }
        }
        Action::Give(given)
    }

    fn observe(&mut self, id: &str, health: Health, now: DateTime<Utc>) -> Vec<Action> {
        let Some(device) = self.devices.get_mut(id) else {
            return Vec::new();
        };
        // Only the current wave is judged; earlier waves were good when the next one was released.
        let judged = matches!(device.state, DeviceState::Updating | DeviceState::Healthy);
        if !judged || device.wave != self.wave {
            return Vec::new();
        }
        let before = device.clone();
        match health {
            Health::Healthy => {
                device.healthy_since.get_or_insert(now);
                device.reason = None;
            }
            Health::NotYet(reason) => {
                // A break (offline, a module restarting) starts the healthy period again.
                device.healthy_since = None;
                device.state = DeviceState::Updating;
                device.reason = Some(reason);
            }
            Health::Failed(reason) => {
                device.healthy_since = None;
                device.state = DeviceState::Failed;
                device.reason = Some(reason);
            }
        }
        let changed = *device != before;
        let mut actions = if self.phase == Phase::Rolling {
            self.tick(now)
        } else {
            Vec::new()
        };
        if changed && actions.is_empty() {
            actions.push(Action::Store);
        }
        actions
    }

    fn left(&mut self, id: &str, now: DateTime<Utc>) -> Vec<Action> {
        let Some(device) = self.devices.get_mut(id) else {
            return Vec::new();
        };
        if device.state == DeviceState::Left {
            return Vec::new();
        }
        device.state = DeviceState::Left;
        device.healthy_since = None;
        let mut actions = vec![Action::Store];
        if self.phase == Phase::Rolling {
            // Its wave may be good (or empty) without it now.
            actions.extend(self.tick(now));
        }
        actions
    }

    /// Judges the current wave: healthy devices, timeouts, failures past the tolerance, the next wave.
    fn tick(&mut self, now: DateTime<Utc>) -> Vec<Action> {
        let healthy_for = Duration::from_std(self.policy.healthy_for()).unwrap_or(Duration::MAX);
        let timeout = Duration::from_std(self.policy.wave_timeout()).unwrap_or(Duration::MAX);
        let timed_out = self
            .wave_started
            .is_some_and(|started| now >= started + timeout);
        let mut changed = false;
        for device in self.devices.values_mut().filter(|d| d.wave == self.wave) {
            if device.state != DeviceState::Updating {
                continue;
            }
            if device
                .healthy_since
                .is_some_and(|since| now >= since + healthy_for)
            {
                device.state = DeviceState::Healthy;
                device.reason = None;
                changed = true;
            } else if timed_out {
                device.state = DeviceState::Failed;
                let lacked = device.reason.take().unwrap_or_else(|| "no report".into());
                device.reason = Some(format!("not healthy within the wave timeout ({lacked})"));
                changed = true;
            }
        }
        let wave: Vec<&RolloutDevice> = self
            .devices
            .values()
            .filter(|d| d.wave == self.wave)
            .collect();
        let failed = wave
            .iter()
            .filter(|d| d.state == DeviceState::Failed)
            .count();
        if failed > self.policy.max_failures {
            let back = self.roll_back_wave();
            self.phase = Phase::RolledBack;
            return vec![Action::RollBack(back), Action::Store];
        }
        let settled = wave.iter().all(|d| {
            matches!(
                d.state,
                DeviceState::Healthy | DeviceState::Failed | DeviceState::Left
            )
        });
        if !settled {
            return if changed {
                vec![Action::Store]
            } else {
                Vec::new()
            };
        }
        if self.wave + 1 < self.waves {
            let mut actions = match self.release(self.wave + 1, now) {
                Action::Give(given) if given.is_empty() => vec![Action::Store],
                give => vec![give, Action::Store],
            };
            // A wave whose devices all left is good at once.
            actions.extend(self.tick(now));
            actions
        } else {
            self.phase = Phase::Completed;
            self.wave_started = None;
            vec![Action::Store]
        }
    }

    /// Marks every device of the current wave that got the deployment as rolled back; their ids.
    fn roll_back_wave(&mut self) -> Vec<String> {
        let mut back = Vec::new();
        for (id, device) in &mut self.devices {
            let given = matches!(
                device.state,
                DeviceState::Updating | DeviceState::Healthy | DeviceState::Failed
            );
            if device.wave == self.wave && given {
                if device.state != DeviceState::Failed {
                    device.reason = None;
                }
                device.state = DeviceState::RolledBack;
                device.healthy_since = None;
                back.push(id.clone());
            }
        }
        back
    }
}

#[cfg(test)]
#[path = "machine_tests.rs"]
mod tests;
