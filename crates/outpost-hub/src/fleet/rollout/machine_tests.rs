//! Every transition of the rollout state machine, with `now` passed in.

use chrono::{DateTime, TimeZone, Utc};

use super::*;

fn at(secs: i64) -> DateTime<Utc> {
    Utc.timestamp_opt(1_800_000_000 + secs, 0).unwrap()
}

fn policy(waves: &[&str], max_failures: usize) -> RolloutPolicy {
    RolloutPolicy {
        waves: waves.iter().map(|w| (*w).to_owned()).collect(),
        healthy_for_secs: 10,
        wave_timeout_secs: 100,
        max_failures,
        health_query: None,
    }
}

fn previous(base: &str) -> Previous {
    Previous {
        base: Some(base.into()),
        layers: vec!["layer".into()],
    }
}

/// A rollout of `n` devices `d0..` over `waves`, started at 0.
fn started(n: usize, waves: &[&str], max_failures: usize) -> (Rollout, Vec<Action>) {
    let mut rollout = Rollout::new("new", policy(waves, max_failures));
    let targeted = (0..n).map(|i| (format!("d{i}"), previous("old"))).collect();
    let actions = rollout.handle(Event::Start(targeted), at(0));
    (rollout, actions)
}

fn ids(ids: &[&str]) -> Vec<String> {
    ids.iter().map(|i| (*i).to_owned()).collect()
}

fn state(rollout: &Rollout, device: &str) -> DeviceState {
    rollout.devices[device].state
}

/// Makes `devices` healthy at `from` and lets the healthy period pass.
fn healthy(rollout: &mut Rollout, devices: &[&str], from: i64) -> Vec<Action> {
    for device in devices {
        rollout.handle(Event::Observed((*device).into(), Health::Healthy), at(from));
    }
    rollout.handle(Event::Tick, at(from + 10))
}

#[test]
fn a_pending_rollout_admits_no_device() {
    let rollout = Rollout::new("new", policy(&["1"], 0));
    assert!(!rollout.admits("d0"));
    assert!(!rollout.admits("anyone"));
}

#[test]
fn starting_releases_only_the_first_wave() {
    let (rollout, actions) = started(5, &["1", "2", "100%"], 0);
    assert_eq!(actions, [Action::Give(ids(&["d0"])), Action::Store]);
    assert_eq!(rollout.phase, Phase::Rolling);
    assert_eq!(rollout.waves, 3);
    assert_eq!(state(&rollout, "d0"), DeviceState::Updating);
    assert!(rollout.admits("d0"));
    for waiting in ["d1", "d2", "d3", "d4"] {
        assert_eq!(state(&rollout, waiting), DeviceState::Waiting);
        assert!(!rollout.admits(waiting));
    }
    assert_eq!(rollout.devices["d3"].previous, previous("old"));
}

#[test]
fn starting_with_no_targeted_device_completes_at_once() {
    let (rollout, actions) = started(0, &["1", "100%"], 0);
    assert_eq!(actions, [Action::Store]);
    assert_eq!(rollout.phase, Phase::Completed);
    assert!(rollout.admits("joins-later"));
}

#[test]
fn a_device_healthy_for_the_whole_period_makes_its_wave_good_and_releases_the_next() {
    let (mut rollout, _) = started(5, &["1", "2", "100%"], 0);
    rollout.handle(Event::Observed("d0".into(), Health::Healthy), at(1));
    assert_eq!(rollout.handle(Event::Tick, at(10)), []);
    assert_eq!(state(&rollout, "d0"), DeviceState::Updating);
    let actions = rollout.handle(Event::Tick, at(11));
    assert_eq!(actions, [Action::Give(ids(&["d1"])), Action::Store]);
    assert_eq!(state(&rollout, "d0"), DeviceState::Healthy);
    assert_eq!(rollout.wave, 1);
    assert_eq!(rollout.wave_started, Some(at(11)));
}

#[test]
fn every_good_wave_releases_the_next_until_the_rollout_completes() {
    let (mut rollout, _) = started(5, &["1", "2", "100%"], 0);
    assert_eq!(
        healthy(&mut rollout, &["d0"], 1),
        [Action::Give(ids(&["d1"])), Action::Store]
    );
    assert_eq!(
        healthy(&mut rollout, &["d1"], 20),
        [Action::Give(ids(&["d2", "d3", "d4"])), Action::Store]
    );
    assert_eq!(
        healthy(&mut rollout, &["d2", "d3", "d4"], 40),
        [Action::Store]
    );
    assert_eq!(rollout.phase, Phase::Completed);
    assert!(rollout.admits("d4"));
    assert!(rollout.admits("joins-later"));
}

#[test]
fn a_break_in_health_starts_the_healthy_period_again() {
    let (mut rollout, _) = started(2, &["1", "100%"], 0);
    rollout.handle(Event::Observed("d0".into(), Health::Healthy), at(1));
    let actions = rollout.handle(
        Event::Observed("d0".into(), Health::NotYet("module a is stopped".into())),
        at(5),
    );
    assert_eq!(actions, [Action::Store]);
    rollout.handle(Event::Observed("d0".into(), Health::Healthy), at(6));
    assert_eq!(rollout.handle(Event::Tick, at(12)), []);
    assert_eq!(
        rollout.handle(Event::Tick, at(16)),
        [Action::Give(ids(&["d1"])), Action::Store]
    );
}

#[test]
fn a_reported_failure_rolls_the_wave_back_at_once() {
    let (mut rollout, _) = started(5, &["1", "2", "100%"], 0);
    let actions = rollout.handle(
        Event::Observed("d0".into(), Health::Failed("module bad is backoff".into())),
        at(3),
    );
    assert_eq!(actions, [Action::RollBack(ids(&["d0"])), Action::Store]);
    assert_eq!(rollout.phase, Phase::RolledBack);
    assert_eq!(state(&rollout, "d0"), DeviceState::RolledBack);
    assert_eq!(
        rollout.devices["d0"].reason.as_deref(),
        Some("module bad is backoff")
    );
    assert_eq!(rollout.devices["d0"].previous, previous("old"));
    for device in ["d0", "d1", "d2", "d3", "d4"] {
        assert!(!rollout.admits(device), "{device}");
    }
    assert_eq!(rollout.handle(Event::Tick, at(500)), []);
}

#[test]
fn failures_within_the_tolerance_let_the_wave_through() {
    let (mut rollout, _) = started(4, &["2", "100%"], 1);
    rollout.handle(
        Event::Observed("d0".into(), Health::Failed("status 400".into())),
        at(1),
    );
    assert_eq!(rollout.phase, Phase::Rolling);
    let actions = healthy(&mut rollout, &["d1"], 2);
    assert_eq!(actions, [Action::Give(ids(&["d2", "d3"])), Action::Store]);
    assert_eq!(state(&rollout, "d0"), DeviceState::Failed);
}

#[test]
fn a_rollback_puts_back_every_device_of_the_wave_healthy_ones_too() {
    let (mut rollout, _) = started(6, &["1", "100%"], 0);
    healthy(&mut rollout, &["d0"], 1);
    healthy(&mut rollout, &["d1", "d2"], 20);
    let actions = rollout.handle(
        Event::Observed("d3".into(), Health::Failed("status 500".into())),
        at(25),
    );
    assert_eq!(
        actions,
        [
            Action::RollBack(ids(&["d1", "d2", "d3", "d4", "d5"])),
            Action::Store
        ]
    );
    assert!(
        rollout.admits("d0"),
        "the good canary wave keeps the deployment"
    );
    assert!(!rollout.admits("d1"));
    assert_eq!(rollout.devices["d1"].reason, None);
}

#[test]
fn an_offline_device_counts_as_not_yet_healthy_until_the_wave_timeout() {
    let (mut rollout, _) = started(3, &["1", "100%"], 0);
    assert_eq!(rollout.handle(Event::Tick, at(99)), []);
    assert_eq!(state(&rollout, "d0"), DeviceState::Updating);
    let actions = rollout.handle(Event::Tick, at(100));
    assert_eq!(actions, [Action::RollBack(ids(&["d0"])), Action::Store]);
    assert_eq!(rollout.phase, Phase::RolledBack);
    assert_eq!(
        rollout.devices["d0"].reason.as_deref(),
        Some("not healthy within the wave timeout (no report)")
    );
}

#[test]
fn a_device_that_goes_offline_mid_wave_fails_at_the_timeout_with_what_it_lacked() {
    let (mut rollout, _) = started(3, &["1", "100%"], 0);
    rollout.handle(Event::Observed("d0".into(), Health::Healthy), at(1));
    rollout.handle(
        Event::Observed("d0".into(), Health::NotYet("offline".into())),
        at(5),
    );
    rollout.handle(Event::Tick, at(100));
    assert_eq!(
        rollout.devices["d0"].reason.as_deref(),
        Some("not healthy within the wave timeout (offline)")
    );
    assert_eq!(rollout.phase, Phase::RolledBack);
}

#[test]
fn a_device_leaving_the_target_mid_wave_no_longer_holds_its_wave() {
    let (mut rollout, _) = started(4, &["2", "100%"], 0);
    rollout.handle(Event::Observed("d0".into(), Health::Healthy), at(1));
    rollout.handle(Event::Tick, at(11));
    assert_eq!(state(&rollout, "d0"), DeviceState::Healthy);
    let actions = rollout.handle(Event::Left("d1".into()), at(12));
    assert_eq!(
        actions,
        [
            Action::Store,
            Action::Give(ids(&["d2", "d3"])),
            Action::Store
        ]
    );
    assert_eq!(state(&rollout, "d1"), DeviceState::Left);
    assert!(!rollout.admits("d1"));
}

#[test]
fn a_waiting_device_that_leaves_is_never_given_the_deployment() {
    let (mut rollout, _) = started(3, &["1", "100%"], 0);
    rollout.handle(Event::Left("d2".into()), at(2));
    let actions = healthy(&mut rollout, &["d0"], 3);
    assert_eq!(actions, [Action::Give(ids(&["d1"])), Action::Store]);
    assert_eq!(rollout.handle(Event::Left("d2".into()), at(4)), []);
}

#[test]
fn a_device_that_left_and_came_back_waits_for_completion() {
    let (mut rollout, _) = started(2, &["1", "100%"], 0);
    rollout.handle(Event::Left("d1".into()), at(1));
    assert!(!rollout.admits("d1"));
    healthy(&mut rollout, &["d0"], 2);
    assert_eq!(rollout.phase, Phase::Completed);
    assert!(rollout.admits("d1"));
}

#[test]
fn pausing_stops_judging_and_resuming_restarts_the_wave_timeout() {
    let (mut rollout, _) = started(2, &["1", "100%"], 0);
    assert_eq!(rollout.handle(Event::Pause, at(50)), [Action::Store]);
    assert_eq!(rollout.phase, Phase::Paused);
    assert_eq!(rollout.handle(Event::Tick, at(500)), []);
    assert!(
        rollout.admits("d0"),
        "a paused wave keeps what it was given"
    );
    assert_eq!(rollout.handle(Event::Pause, at(501)), []);
    assert_eq!(rollout.handle(Event::Resume, at(600)), [Action::Store]);
    assert_eq!(rollout.phase, Phase::Rolling);
    assert_eq!(rollout.handle(Event::Tick, at(699)), []);
    assert_eq!(
        rollout.handle(Event::Tick, at(700)),
        [Action::RollBack(ids(&["d0"])), Action::Store]
    );
}

#[test]
fn health_observed_while_paused_counts_once_resumed() {
    let (mut rollout, _) = started(2, &["1", "100%"], 0);
    rollout.handle(Event::Pause, at(1));
    rollout.handle(Event::Observed("d0".into(), Health::Healthy), at(2));
    let actions = rollout.handle(Event::Resume, at(20));
    assert_eq!(
        actions,
        [Action::Store, Action::Give(ids(&["d1"])), Action::Store]
    );
}

#[test]
fn aborting_rolls_the_current_wave_back_and_keeps_the_good_ones() {
    let (mut rollout, _) = started(3, &["1", "100%"], 0);
    healthy(&mut rollout, &["d0"], 1);
    let actions = rollout.handle(Event::Abort, at(20));
    assert_eq!(
        actions,
        [Action::RollBack(ids(&["d1", "d2"])), Action::Store]
    );
    assert_eq!(rollout.phase, Phase::Aborted);
    assert!(rollout.admits("d0"));
    assert!(!rollout.admits("d1"));
    assert_eq!(rollout.handle(Event::Resume, at(21)), []);
}

#[test]
fn aborting_a_paused_or_pending_rollout_stops_it() {
    let (mut rollout, _) = started(2, &["1", "100%"], 0);
    rollout.handle(Event::Pause, at(1));
    assert_eq!(
        rollout.handle(Event::Abort, at(2)),
        [Action::RollBack(ids(&["d0"])), Action::Store]
    );
    let mut pending = Rollout::new("new", policy(&["1"], 0));
    assert_eq!(pending.handle(Event::Abort, at(0)), [Action::Store]);
    assert_eq!(pending.phase, Phase::Aborted);
    assert_eq!(pending.handle(Event::Start(Vec::new()), at(1)), []);
}

#[test]
fn a_newer_deployment_supersedes_a_rollout_in_progress() {
    let (mut rollout, _) = started(3, &["1", "100%"], 0);
    let actions = rollout.handle(Event::Superseded("newer".into()), at(5));
    assert_eq!(actions, [Action::Store]);
    assert_eq!(rollout.phase, Phase::Superseded);
    assert_eq!(rollout.superseded_by.as_deref(), Some("newer"));
    assert!(
        rollout.admits("d0"),
        "the devices given it keep it under the newer one"
    );
    assert!(!rollout.admits("d1"));
    assert_eq!(rollout.handle(Event::Tick, at(500)), []);
    assert_eq!(
        rollout.handle(
            Event::Observed("d0".into(), Health::Failed("x".into())),
            at(501)
        ),
        []
    );
}

#[test]
fn a_finished_rollout_ignores_every_event() {
    let (mut rollout, _) = started(1, &["1"], 0);
    healthy(&mut rollout, &["d0"], 1);
    assert_eq!(rollout.phase, Phase::Completed);
    let version = rollout.version;
    for event in [
        Event::Tick,
        Event::Pause,
        Event::Resume,
        Event::Abort,
        Event::Left("d0".into()),
        Event::Superseded("x".into()),
        Event::Start(Vec::new()),
    ] {
        assert_eq!(rollout.handle(event, at(100)), []);
    }
    assert_eq!(rollout.version, version);
}

#[test]
fn health_of_devices_outside_the_current_wave_is_ignored() {
    let (mut rollout, _) = started(3, &["1", "100%"], 0);
    healthy(&mut rollout, &["d0"], 1);
    let failed = Health::Failed("late".into());
    assert_eq!(
        rollout.handle(Event::Observed("d0".into(), failed.clone()), at(15)),
        []
    );
    assert_eq!(
        rollout.handle(Event::Observed("unknown".into(), failed), at(15)),
        []
    );
    assert_eq!(state(&rollout, "d0"), DeviceState::Healthy);
}

#[test]
fn the_state_survives_a_round_trip_through_storage() {
    let (mut rollout, _) = started(5, &["1", "2", "100%"], 0);
    healthy(&mut rollout, &["d0"], 1);
    let text = serde_json::to_string(&rollout).unwrap();
    let restored: Rollout = serde_json::from_str(&text).unwrap();
    assert_eq!(restored, rollout);
}
