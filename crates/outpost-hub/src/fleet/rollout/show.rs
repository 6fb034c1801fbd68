//! How a rollout shows in its configuration's REST JSON (`rollout`: the policy with its `state`) and in the
//! configuration's system metrics.

use serde_json::{json, Map, Value};

use super::machine::{DeviceState, Rollout};
use crate::fleet::configuration::Metrics;

/// Every device state, in the order they show.
const STATES: [(DeviceState, &str); 6] = [
    (DeviceState::Waiting, "waiting"),
    (DeviceState::Updating, "updating"),
    (DeviceState::Healthy, "healthy"),
    (DeviceState::Failed, "failed"),
    (DeviceState::RolledBack, "rolledBack"),
    (DeviceState::Left, "left"),
];

/// The `rollout` object of a configuration's REST JSON: the policy's fields and `state` (phase, wave, device
/// counts per state, the devices per state, and every failure with its reason).
pub fn rollout_json(rollout: &Rollout) -> Value {
    let mut shown = serde_json::to_value(&rollout.policy).unwrap_or_else(|_| json!({}));
    let mut counts = Map::new();
    let mut devices = Map::new();
    for (state, name) in STATES {
        let ids: Vec<&str> = rollout.in_state(state).collect();
        counts.insert(name.into(), json!(ids.len()));
        devices.insert(name.into(), json!(ids));
    }
    let failures: Map<String, Value> = rollout
        .devices
        .iter()
        .filter(|(_, d)| matches!(d.state, DeviceState::Failed | DeviceState::RolledBack))
        .filter_map(|(id, d)| Some((id.clone(), json!(d.reason.as_ref()?))))
        .collect();
    let previous: Map<String, Value> = rollout
        .devices
        .iter()
        .map(|(id, d)| (id.clone(), json!(d.previous)))
        .collect();
    let state = json!({
        "phase": rollout.phase,
        "wave": rollout.wave + 1,
        "waves": rollout.waves,
        "waveStarted": rollout.wave_started,
        "counts": counts,
        "devices": devices,
        "failures": failures,
        "previous": previous,
        "supersededBy": rollout.superseded_by,
    });
    if let Some(object) = shown.as_object_mut() {
        object.insert("state".into(), state);
    }
    shown
}

/// Adds the rollout's figures to the system metrics (`rolloutWave`, and `rollout<State>Count` per device
/// state), so that `systemMetrics` shows where it stands.
pub fn add_metrics(metrics: &mut Metrics, rollout: &Rollout) {
    metrics
        .results
        .insert("rolloutWave".into(), (rollout.wave + 1) as u64);
    for (state, name) in STATES {
        let mut key = String::from("rollout");
        let mut chars = name.chars();
        key.extend(chars.next().map(|c| c.to_ascii_uppercase()));
        key.extend(chars);
        key.push_str("Count");
        metrics
            .results
            .insert(key, rollout.in_state(state).count() as u64);
    }
}
