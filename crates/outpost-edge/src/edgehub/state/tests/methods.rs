//! Method calls: sent on the target's connection, answered only from it, bounded, ended by their deadline.

use std::time::{Duration, Instant};

use super::super::*;
use super::{INPUTS, METHODS, MODULE};

fn listening(state: &mut EdgeHubState, connection: u64, now: Instant) {
    state.handle(
        Event::Connected {
            client: MODULE.into(),
            connection,
            features: METHODS,
        },
        now,
    );
}

fn call(id: u64, rid: &str, timeout_secs: u64) -> Event {
    Event::MethodCalled(MethodCall {
        id,
        rid: rid.into(),
        target: MODULE.into(),
        method: "reboot".into(),
        payload: b"{}".to_vec(),
        timeout: Duration::from_secs(timeout_secs),
    })
}

fn answer(connection: u64, rid: &str, client: &str) -> Event {
    Event::MethodAnswered {
        client: client.into(),
        connection,
        rid: rid.into(),
        status: 200,
        payload: b"done".to_vec(),
    }
}

fn answered(id: u64) -> Action {
    Action::MethodDone {
        id,
        outcome: MethodOutcome::Answered {
            status: 200,
            payload: b"done".to_vec(),
        },
    }
}

#[test]
fn a_method_call_goes_out_on_the_targets_connection_and_its_answer_ends_it() {
    let mut state = EdgeHubState::default();
    let now = Instant::now();
    listening(&mut state, 4, now);
    assert_eq!(
        state.handle(call(1, "r1", 30), now),
        [Action::SendMethod {
            client: MODULE.into(),
            connection: 4,
            rid: "r1".into(),
            method: "reboot".into(),
            payload: b"{}".to_vec(),
        }]
    );
    assert_eq!(state.handle(answer(4, "r1", MODULE), now), [answered(1)]);
    assert_eq!(state.pending_methods(), 0);
    assert_eq!(state.next_deadline(), None);
    assert!(
        state.handle(answer(4, "r1", MODULE), now).is_empty(),
        "answered once"
    );
}

#[test]
fn a_method_call_to_a_client_not_listening_for_methods_ends_at_once() {
    let mut state = EdgeHubState::default();
    let now = Instant::now();
    let not_listening = [Action::MethodDone {
        id: 1,
        outcome: MethodOutcome::NotListening,
    }];
    assert_eq!(state.handle(call(1, "r1", 30), now), not_listening);
    state.handle(
        Event::Connected {
            client: MODULE.into(),
            connection: 1,
            features: INPUTS,
        },
        now,
    );
    assert_eq!(state.handle(call(1, "r1", 30), now), not_listening);
    assert_eq!(state.pending_methods(), 0);
}

#[test]
fn an_answer_from_another_client_or_another_connection_is_dropped_and_the_call_keeps_waiting() {
    let mut state = EdgeHubState::default();
    let now = Instant::now();
    listening(&mut state, 4, now);
    state.handle(call(1, "r1", 30), now);
    assert!(state.handle(answer(4, "r1", "edge/other"), now).is_empty());
    // The target again, on a new connection: the request went out on the old one.
    listening(&mut state, 5, now);
    assert!(state.handle(answer(5, "r1", MODULE), now).is_empty());
    assert_eq!(state.pending_methods(), 1);
    assert_eq!(state.handle(answer(4, "r1", MODULE), now), [answered(1)]);
}

#[test]
fn a_method_call_times_out_at_its_deadline_and_a_late_answer_is_dropped() {
    let mut state = EdgeHubState::default();
    let now = Instant::now();
    listening(&mut state, 4, now);
    state.handle(call(1, "r1", 5), now);
    state.handle(call(2, "r2", 30), now);
    assert_eq!(state.next_deadline(), Some(now + Duration::from_secs(5)));
    assert!(state
        .handle(Event::Tick, now + Duration::from_secs(4))
        .is_empty());
    assert_eq!(
        state.handle(Event::Tick, now + Duration::from_secs(5)),
        [Action::MethodDone {
            id: 1,
            outcome: MethodOutcome::TimedOut
        }]
    );
    assert_eq!(state.next_deadline(), Some(now + Duration::from_secs(30)));
    assert!(state.handle(answer(4, "r1", MODULE), now).is_empty());
    assert_eq!(state.handle(answer(4, "r2", MODULE), now), [answered(2)]);
}

#[test]
fn method_calls_are_bounded_and_a_request_id_waits_once() {
    let mut state = EdgeHubState::default().with_max_methods(2);
    let now = Instant::now();
    listening(&mut state, 4, now);
    state.handle(call(1, "r1", 30), now);
    assert_eq!(
        state.handle(call(2, "r1", 30), now),
        [Action::MethodDone {
            id: 2,
            outcome: MethodOutcome::DuplicateRequestId
        }]
    );
    state.handle(call(3, "r3", 30), now);
    assert_eq!(
        state.handle(call(4, "r4", 30), now),
        [Action::MethodDone {
            id: 4,
            outcome: MethodOutcome::TooManyCalls(2)
        }]
    );
    assert_eq!(state.pending_methods(), 2);
    // An answer makes room.
    state.handle(answer(4, "r1", MODULE), now);
    assert!(matches!(
        state.handle(call(5, "r5", 30), now)[..],
        [Action::SendMethod { .. }]
    ));
}
