//! The I/O around the rollout state machine: observes the devices' health in their twins, feeds the machine
//! inside a write transaction, stores it, and has the configurations evaluation give or take the deployment.
//!
//! One process drives a rollout at a time: before each step the driver takes or renews a lease on the rollout's
//! row ([`LEASE`]), so on PostgreSQL one replica drives each rollout and another takes over once the lease
//! expires (the replica that stopped). Each step reads and writes the state in one transaction.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use chrono::{DateTime, Utc};
use outpost_core::query::QueryCondition;
use outpost_core::{DeviceId, ModuleId, Twin};
use serde_json::Value;

use super::machine::{Action, DeviceState, Event, Health, Phase, Previous, Rollout};
use crate::error::HubError;
use crate::fleet::assign::EDGE_AGENT;
use crate::fleet::configuration::Configuration;
use crate::fleet::evaluate::{document, Targeting};
use crate::storage::Tables;

/// How long a lease on driving a rollout lasts without renewal.
pub const LEASE: Duration = Duration::from_secs(10);

/// How often every active rollout is judged, whatever changed (wave timeouts and healthy periods end on time).
pub const TICK: Duration = Duration::from_secs(1);

/// Runs one step of the rollout of `id` in the caller's write transaction: every event the twins show (a device
/// not in `online` is not yet healthy, whatever it last reported), then `extra` (an operator's command), then a
/// tick. Returns the devices to evaluate again (given the deployment or
/// rolled back), or `None` when this process does not hold the lease.
pub(crate) fn step(
    tx: &mut dyn Tables,
    id: &str,
    owner: &str,
    online: &HashSet<String>,
    extra: Option<Event>,
    now: DateTime<Utc>,
) -> Result<Option<Vec<String>>, HubError> {
    let now_ms = now.timestamp_millis();
    let lease_ms = i64::try_from(LEASE.as_millis()).unwrap_or(i64::MAX);
    if !tx.claim_rollout(id, owner, now_ms, now_ms.saturating_add(lease_ms))? {
        return Ok(None);
    }
    let (Some(mut rollout), Some(configuration)) = (tx.rollout(id)?, tx.configuration(id)?) else {
        return Ok(Some(Vec::new()));
    };
    let version = rollout.version;
    let mut events = Vec::new();
    if rollout.phase.is_active() {
        events = observe(tx, &rollout, &configuration, online)?;
    }
    events.extend(extra);
    events.push(Event::Tick);
    let mut evaluate = Vec::new();
    for event in events {
        for action in rollout.handle(event, now) {
            match action {
                Action::Give(devices) | Action::RollBack(devices) => evaluate.extend(devices),
                Action::Store => {}
            }
        }
    }
    if rollout.version != version {
        tx.put_rollout(&rollout)?;
    }
    Ok(Some(evaluate))
}

/// The events the twins show for a rollout: its start (the devices targeted now and what they have), a newer
/// deployment over its devices, devices that left the target, and the health of the current wave's devices.
fn observe(
    tx: &mut dyn Tables,
    rollout: &Rollout,
    configuration: &Configuration,
    online: &HashSet<String>,
) -> Result<Vec<Event>, HubError> {
    let all = Targeting::parse_all(tx.configurations()?);
    let Some(own) = all
        .iter()
        .find(|t| t.configuration().id == configuration.id)
    else {
        return Ok(Vec::new());
    };
    let mut targeted = BTreeMap::new();
    let mut newer = None;
    for device in tx.devices()? {
        if !device.iot_edge {
            continue;
        }
        let twin = tx
            .twin(&device.device_id, None)?
            .unwrap_or_else(|| Twin::new(Utc::now()));
        let shown = document(&device, None, &twin);
        if !own.targets(&shown) {
            continue;
        }
        let previous = tx
            .assignment(&device.device_id)?
            .and_then(|a| a.edge)
            .map(|edge| Previous {
                base: Some(edge.base),
                layers: edge.layers,
            })
            .unwrap_or_default();
        newer = newer.or_else(|| {
            all.iter()
                .find(|targeting| {
                    let other = targeting.configuration();
                    other.id != configuration.id
                        && other.kind() == configuration.kind()
                        && other.rank() > configuration.rank()
                        && targeting.targets(&shown)
                })
                .map(|targeting| targeting.configuration().id.clone())
        });
        targeted.insert(device.device_id.as_str().to_owned(), previous);
    }
    let mut events = Vec::new();
    if let Some(by) = newer {
        events.push(Event::Superseded(by));
    }
    if rollout.phase == Phase::Pending {
        events.push(Event::Start(targeted.into_iter().collect()));
        return Ok(events);
    }
    let query = rollout
        .policy
        .health_query
        .as_deref()
        .and_then(|q| QueryCondition::parse(q).ok());
    for (id, device) in &rollout.devices {
        if device.state == DeviceState::Left {
            continue;
        }
        if !targeted.contains_key(id) {
            events.push(Event::Left(id.clone()));
            continue;
        }
        let judged = matches!(device.state, DeviceState::Updating | DeviceState::Healthy);
        if judged && device.wave == rollout.wave {
            let Ok(device_id) = DeviceId::new(id) else {
                continue;
            };
            let seen = if online.contains(id) {
                health(tx, &device_id, &configuration.id, query.as_ref())?
            } else {
                Health::NotYet("offline".into())
            };
            events.push(Event::Observed(id.clone(), seen));
        }
    }
    Ok(events)
}

/// A released device's health for deployment `id`: its `$edgeAgent` applied the deployment's desired version with
/// status 200, every module of it runs, and its device or a module twin matches the health query.
pub(crate) fn health(
    tx: &mut dyn Tables,
    device: &DeviceId,
    id: &str,
    query: Option<&QueryCondition>,
) -> Result<Health, HubError> {
    let edge = tx.assignment(device)?.and_then(|a| a.edge);
    let Some(edge) = edge.filter(|e| e.base == id || e.layers.iter().any(|l| l == id)) else {
        return Ok(Health::NotYet("the deployment is not applied yet".into()));
    };
    let Ok(agent) = ModuleId::new(EDGE_AGENT) else {
        return Ok(Health::NotYet("no $edgeAgent".into()));
    };
    let Some(twin) = tx.twin(device, Some(&agent))? else {
        return Ok(Health::NotYet("no $edgeAgent twin".into()));
    };
    let reported = twin.reported();
    if reported.get("lastDesiredVersion").and_then(Value::as_u64) != Some(twin.desired_version()) {
        return Ok(Health::NotYet(
            "$edgeAgent has not reported the deployment yet".into(),
        ));
    }
    let status = reported.get("lastDesiredStatus");
    let code = status.and_then(|s| s.get("code")).and_then(Value::as_u64);
    if code != Some(200) {
        let description = status
            .and_then(|s| s.get("description"))
            .and_then(Value::as_str)
            .unwrap_or_default();
        return Ok(Health::Failed(format!(
            "$edgeAgent reports status {} {description}",
            code.map_or_else(|| "none".into(), |c| c.to_string())
        )));
    }
    let modules = edge
        .modules_content
        .get(EDGE_AGENT)
        .and_then(|agent| agent.get("modules"))
        .and_then(Value::as_object)
        .map(|m| m.keys().cloned().collect::<Vec<_>>())
        .unwrap_or_default();
    for module in modules {
        let runtime = reported
            .get("modules")
            .and_then(|m| m.get(&module))
            .and_then(|m| m.get("runtimeStatus"))
            .and_then(Value::as_str)
            .unwrap_or("unknown");
        match runtime {
            "running" => {}
            "backoff" | "failed" => {
                return Ok(Health::Failed(format!("module {module} is {runtime}")));
            }
            other => return Ok(Health::NotYet(format!("module {module} is {other}"))),
        }
    }
    if let Some(query) = query {
        if !matches_query(tx, device, query)? {
            return Ok(Health::NotYet("the health query is not matched".into()));
        }
    }
    Ok(Health::Healthy)
}

/// Whether the device twin or one of its module twins matches the health query.
fn matches_query(
    tx: &mut dyn Tables,
    device: &DeviceId,
    query: &QueryCondition,
) -> Result<bool, HubError> {
    let Some(record) = tx.device(device)? else {
        return Ok(false);
    };
    if let Some(twin) = tx.twin(device, None)? {
        if query.matches(&document(&record, None, &twin)) {
            return Ok(true);
        }
    }
    for module in tx.modules(device)? {
        if let Some(twin) = tx.twin(device, Some(&module.module_id))? {
            if query.matches(&document(&record, Some(&module), &twin)) {
                return Ok(true);
            }
        }
    }
    Ok(false)
}

/// The devices whose health a step judges (the current wave's, of every active rollout) as client ids to ask the
/// connection table about: the device and its `$edgeAgent` (an edge link holds both).
pub(crate) fn judged_clients(rollouts: &[Rollout]) -> Vec<String> {
    rollouts
        .iter()
        .filter(|r| r.phase.is_active())
        .flat_map(|r| {
            r.devices
                .iter()
                .filter(move |(_, d)| d.wave == r.wave)
                .filter(|(_, d)| matches!(d.state, DeviceState::Updating | DeviceState::Healthy))
                .map(|(id, _)| id.clone())
        })
        .flat_map(|id| [format!("{id}/{EDGE_AGENT}"), id])
        .collect()
}

/// The device ids among `connected` client ids (`d` or `d/$edgeAgent`).
pub(crate) fn online_devices(connected: HashSet<String>) -> HashSet<String> {
    connected
        .into_iter()
        .map(|client| match client.split_once('/') {
            Some((device, _)) => device.to_owned(),
            None => client,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use chrono::Utc;

    use super::*;
    use crate::fleet::rollout::RolloutPolicy;

    #[test]
    fn only_the_current_waves_released_devices_are_asked_about_and_modules_count_as_their_device() {
        let policy = RolloutPolicy {
            waves: vec!["1".into(), "100%".into()],
            healthy_for_secs: 1,
            wave_timeout_secs: 10,
            max_failures: 0,
            health_query: None,
        };
        let mut rollout = Rollout::new("r", policy);
        let targeted = vec![
            ("a".into(), Previous::default()),
            ("b".into(), Previous::default()),
        ];
        rollout.handle(Event::Start(targeted), Utc::now());
        assert_eq!(judged_clients(&[rollout]), ["a/$edgeAgent", "a"]);
        let connected = HashSet::from(["a/$edgeAgent".to_owned(), "c".to_owned()]);
        assert_eq!(
            online_devices(connected),
            HashSet::from(["a".to_owned(), "c".to_owned()])
        );
    }
}
