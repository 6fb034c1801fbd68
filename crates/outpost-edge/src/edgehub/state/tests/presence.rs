//! Link up and down, and the presence declared while it is up.

use std::time::Instant;

use outpost_mqtt::Feature;

use super::super::*;
use super::{INPUTS, METHODS};

#[test]
fn the_feature_bits_of_these_tests_are_the_mqtt_heads() {
    assert_eq!(INPUTS, Feature::Inputs.bit());
    assert_eq!(METHODS, Feature::Methods.bit());
}

fn connect_as(
    state: &mut EdgeHubState,
    client: &str,
    connection: u64,
    features: u8,
) -> Vec<Action> {
    state.handle(
        Event::Connected {
            client: client.into(),
            connection,
            features,
        },
        Instant::now(),
    )
}

fn declared(actions: &[Action]) -> Vec<&Presence> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::DeclarePresence(p) => Some(p),
            _ => None,
        })
        .collect()
}

#[test]
fn presence_is_declared_when_the_link_comes_up_and_when_it_changes_while_up() {
    let mut state = EdgeHubState::default();
    let now = Instant::now();
    assert!(
        declared(&connect_as(&mut state, "edge/b", 1, METHODS)).is_empty(),
        "link down"
    );
    let up = state.handle(Event::LinkUp, now);
    assert_eq!(
        declared(&up),
        [&vec![("edge/b".to_owned(), vec!["methods"])]]
    );
    let more = connect_as(
        &mut state,
        "edge/a",
        2,
        INPUTS | Feature::DesiredPatches.bit(),
    );
    assert_eq!(
        declared(&more),
        [&vec![
            ("edge/a".to_owned(), vec!["desired", "inputs"]),
            ("edge/b".to_owned(), vec!["methods"]),
        ]]
    );
    // The same subscriptions again, a stale disconnect, or a message stored: nothing new to declare.
    let same = state.handle(
        Event::Subscribed {
            client: "edge/b".into(),
            connection: 1,
            features: METHODS,
        },
        now,
    );
    assert!(declared(&same).is_empty());
    let stale = state.handle(
        Event::Disconnected {
            client: "edge/b".into(),
            connection: 9,
        },
        now,
    );
    assert!(declared(&stale).is_empty());
    let gone = state.handle(
        Event::Disconnected {
            client: "edge/b".into(),
            connection: 1,
        },
        now,
    );
    assert_eq!(
        declared(&gone),
        [&vec![("edge/a".to_owned(), vec!["desired", "inputs"])]]
    );
}

#[test]
fn after_the_link_went_down_and_up_presence_is_declared_again_even_unchanged() {
    let mut state = EdgeHubState::default();
    let now = Instant::now();
    connect_as(&mut state, "edge/a", 1, 0);
    assert_eq!(declared(&state.handle(Event::LinkUp, now)).len(), 1);
    assert!(declared(&state.handle(Event::LinkUp, now)).is_empty());
    assert!(state.handle(Event::LinkDown, now).is_empty());
    assert!(declared(&connect_as(&mut state, "edge/a", 2, 0)).is_empty());
    assert_eq!(
        declared(&state.handle(Event::LinkUp, now)),
        [&vec![("edge/a".to_owned(), Vec::<&str>::new())]]
    );
}
