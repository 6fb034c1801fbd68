//! Pacing: senders' acknowledgements held while a connected endpoint is too far behind.

use std::time::Duration;

use super::super::*;
use super::{route, Hub, MODULE};

/// A hub whose endpoints pace past a backlog of 3, with a window of 2.
fn paced(inputs: &[&str]) -> Hub {
    let mut hub = Hub::new(2, &[]);
    hub.state = EdgeHubState::new(2).with_pacing(3, 100, Duration::from_secs(10));
    hub.feed(Event::Routes(inputs.iter().map(|i| route(i)).collect()));
    hub
}

#[test]
fn a_sender_is_admitted_at_once_while_the_backlog_is_within_its_bound() {
    let mut hub = paced(&["in1"]);
    hub.connect(1, true);
    for seq in 1..=3 {
        hub.store(seq, &["in1"]);
    }
    assert_eq!(hub.admitted, [1, 2, 3]);
    assert_eq!(hub.state.paced(), 0);
}

#[test]
fn a_sender_faster_than_its_connected_subscriber_waits_until_the_backlog_falls_to_the_bound() {
    let mut hub = paced(&["in1"]);
    hub.connect(1, true);
    for seq in 1..=5 {
        hub.store(seq, &["in1"]);
    }
    // 4 and 5 make the backlog 4 and 5, over the bound of 3.
    assert_eq!(hub.admitted, [1, 2, 3]);
    assert_eq!(hub.state.paced(), 2);
    let pushed = hub.take_pushed();
    assert_eq!(Hub::seqs_to(&pushed, "in1"), [1, 2]);
    // One acknowledgement: backlog 4, still over.
    hub.ack(1, pushed[0].id);
    assert_eq!(hub.admitted, [1, 2, 3]);
    // Two: backlog 3, within the bound; both waiting senders go, in order.
    hub.ack(1, pushed[1].id);
    assert_eq!(hub.admitted, [1, 2, 3, 4, 5]);
    assert_eq!(hub.state.paced(), 0);
}

#[test]
fn an_offline_endpoint_stores_and_forwards_without_pacing() {
    let mut hub = paced(&["in1"]);
    for seq in 1..=50 {
        hub.store(seq, &["in1"]);
    }
    assert_eq!(hub.admitted.len(), 50);
    // Connected but not listening for inputs counts as away too.
    hub.connect(1, false);
    hub.store(51, &["in1"]);
    assert_eq!(hub.admitted.len(), 51);
}

#[test]
fn the_subscriber_leaving_lets_its_waiting_senders_go() {
    let mut hub = paced(&["in1"]);
    hub.connect(1, true);
    for seq in 1..=6 {
        hub.store(seq, &["in1"]);
    }
    assert_eq!(hub.state.paced(), 3);
    hub.feed(Event::Disconnected {
        client: MODULE.into(),
        connection: 1,
    });
    assert_eq!(hub.admitted, [1, 2, 3, 4, 5, 6]);
    assert_eq!(hub.state.paced(), 0);
}

#[test]
fn the_subscriber_unsubscribing_from_inputs_lets_its_waiting_senders_go() {
    let mut hub = paced(&["in1"]);
    hub.connect(1, true);
    for seq in 1..=5 {
        hub.store(seq, &["in1"]);
    }
    hub.feed(Event::Subscribed {
        client: MODULE.into(),
        connection: 1,
        features: 0,
    });
    assert_eq!(hub.admitted, [1, 2, 3, 4, 5]);
}

#[test]
fn a_held_acknowledgement_goes_after_the_longest_hold_even_if_nothing_is_acknowledged() {
    let mut hub = paced(&["in1"]);
    hub.connect(1, true);
    for seq in 1..=4 {
        hub.store(seq, &["in1"]);
    }
    assert_eq!(hub.admitted, [1, 2, 3]);
    let deadline = hub
        .state
        .next_deadline()
        .expect("a deadline for the held one");
    assert_eq!(deadline, hub.now + Duration::from_secs(10));
    hub.now += Duration::from_secs(9);
    hub.feed(Event::Tick);
    assert_eq!(hub.admitted, [1, 2, 3]);
    hub.now += Duration::from_secs(1);
    hub.feed(Event::Tick);
    assert_eq!(hub.admitted, [1, 2, 3, 4]);
    assert_eq!(hub.state.next_deadline(), None);
}

#[test]
fn past_the_most_held_a_sender_is_admitted_at_once() {
    let mut hub = Hub::new(2, &[]);
    hub.state = EdgeHubState::new(2).with_pacing(0, 2, Duration::from_secs(10));
    hub.feed(Event::Routes(vec![route("in1")]));
    hub.connect(1, true);
    for seq in 1..=5 {
        hub.store(seq, &["in1"]);
    }
    // Two held (the bound), the rest admitted.
    assert_eq!(hub.admitted, [3, 4, 5]);
    assert_eq!(hub.state.paced(), 2);
}

#[test]
fn a_message_for_two_endpoints_waits_for_the_slower_one() {
    let mut hub = paced(&["in1", "in2"]);
    hub.connect(1, true);
    for seq in 1..=4 {
        hub.store(seq, &["in1", "in2"]);
    }
    assert_eq!(hub.admitted, [1, 2, 3]);
    let pushed = hub.take_pushed();
    // in1 catches up; in2 is still over its bound: the sender keeps waiting, now on in2.
    for p in pushed.iter().filter(|p| p.input == "in1") {
        hub.ack(1, p.id);
    }
    assert_eq!(hub.admitted, [1, 2, 3]);
    let in2 = pushed.iter().find(|p| p.input == "in2").unwrap().id;
    hub.ack(1, in2);
    assert_eq!(hub.admitted, [1, 2, 3, 4]);
}

#[test]
fn the_backlog_is_taken_from_the_log_at_each_read() {
    // Records from before a restart count once a read reports them.
    let mut hub = paced(&[]);
    hub.queue("in1").waiting.extend(10..20);
    hub.connect(1, true);
    hub.feed(Event::Routes(vec![route("in1")]));
    // 10 queued in the log, over the bound of 3: a new sender waits.
    hub.store(20, &["in1"]);
    assert!(hub.admitted.is_empty());
}
