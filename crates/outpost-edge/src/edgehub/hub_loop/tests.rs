//! The task over a real message log and real outboxes.

use std::time::Duration;

use outpost_core::Message;
use outpost_mqtt::Inbox;
use outpost_store::log::{LogOptions, Record, Target};

use super::super::stored::Stored;

use super::*;

const MODULE: &str = "edge/m";

struct Harness {
    _dir: tempfile::TempDir,
    log: MessageLog,
    hub_loop: HubLoop,
}

impl Harness {
    async fn new(inputs: &[&str]) -> Self {
        Self::with_state(inputs, EdgeHubState::default()).await
    }

    async fn with_state(inputs: &[&str], state: EdgeHubState) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let log = MessageLog::open(dir.path().join("log"), LogOptions::default()).unwrap();
        let (hub_loop, _task) = HubLoop::start_with(log.clone(), EdgeMetrics::default(), state);
        let routes = inputs
            .iter()
            .map(|i| InputRoute {
                endpoint: endpoint(i),
                client: MODULE.into(),
                input: (*i).into(),
                topic: format!("{TOPICS}/{i}").into(),
            })
            .collect();
        hub_loop.routes(routes).await;
        Self {
            _dir: dir,
            log,
            hub_loop,
        }
    }

    /// Stores a message with body `body` for these inputs, as the router does, and tells the task.
    async fn store(&self, body: &str, inputs: &[&str]) {
        let payload = Stored {
            client: "edge/sender".into(),
            message: Message {
                body: body.as_bytes().to_vec().into(),
                ..Message::default()
            },
        }
        .encode();
        let mut record = Record::new(payload);
        record.targets = inputs.iter().map(|i| Target::new(endpoint(i))).collect();
        self.log.append(vec![record]).await.unwrap();
        self.hub_loop
            .stored(inputs.iter().map(|i| endpoint(i)).collect())
            .await;
    }

    async fn connect(&self, connection: u64) -> (Outbox, Inbox) {
        let (outbox, inbox) = Outbox::new(connection);
        outbox.set_features(Feature::Inputs.bit());
        self.hub_loop.connected(MODULE.into(), outbox.clone()).await;
        (outbox, inbox)
    }
}

fn endpoint(input: &str) -> Arc<str> {
    format!("{MODULE}/{input}").into()
}

/// The topics of the module's inputs, before the input's name.
const TOPICS: &str = "devices/edge/modules/m/inputs";

/// The next push: `(input, body, delivery id)`, the input read from the topic.
async fn next(inbox: &mut Inbox) -> (String, String, u64) {
    let pushed = tokio::time::timeout(Duration::from_secs(10), inbox.recv())
        .await
        .expect("a push")
        .unwrap()
        .unwrap();
    let Outgoing::Input {
        delivery_id,
        topic,
        body,
    } = pushed
    else {
        panic!("not an input: {pushed:?}");
    };
    let Some(rest) = topic.strip_prefix(TOPICS).and_then(|r| r.strip_prefix('/')) else {
        panic!("not an input's topic: {topic}");
    };
    let input = rest.split('/').next().unwrap_or(rest);
    (
        input.to_owned(),
        String::from_utf8(body.to_vec()).unwrap(),
        delivery_id,
    )
}

#[tokio::test]
async fn a_message_routed_to_two_inputs_of_a_module_is_pushed_to_each_once_in_order() {
    let harness = Harness::new(&["in1", "in2"]).await;
    let (_outbox, mut inbox) = harness.connect(1).await;
    for body in ["a", "b", "c"] {
        harness.store(body, &["in1", "in2"]).await;
    }
    let mut pushed = Vec::new();
    for _ in 0..6 {
        pushed.push(next(&mut inbox).await);
    }
    for input in ["in1", "in2"] {
        let bodies: Vec<&str> = pushed
            .iter()
            .filter(|(i, _, _)| i == input)
            .map(|(_, b, _)| b.as_str())
            .collect();
        assert_eq!(bodies, ["a", "b", "c"], "{input}");
    }
    for (_, _, id) in &pushed {
        harness.hub_loop.acked(MODULE.into(), 1, vec![*id]).await;
    }
    // All acknowledged: a new connection gets only what is new.
    harness.hub_loop.disconnected(MODULE.into(), 1).await;
    let (_outbox, mut inbox) = harness.connect(2).await;
    harness.store("d", &["in2"]).await;
    let (input, body, _) = next(&mut inbox).await;
    assert_eq!((input.as_str(), body.as_str()), ("in2", "d"));
    assert!(inbox.is_empty());
}

#[tokio::test]
async fn what_a_connection_left_unacknowledged_goes_again_in_order_on_the_next() {
    let harness = Harness::new(&["in1"]).await;
    let (_outbox, mut inbox) = harness.connect(1).await;
    for body in ["a", "b", "c"] {
        harness.store(body, &["in1"]).await;
    }
    let (_, first, id) = next(&mut inbox).await;
    assert_eq!(first, "a");
    harness.hub_loop.acked(MODULE.into(), 1, vec![id]).await;
    next(&mut inbox).await;
    next(&mut inbox).await;
    harness.hub_loop.disconnected(MODULE.into(), 1).await;

    let (_outbox, mut inbox) = harness.connect(2).await;
    // A late PUBACK of the old connection completes nothing.
    let (_, body, id) = next(&mut inbox).await;
    assert_eq!(body, "b");
    harness.hub_loop.acked(MODULE.into(), 1, vec![id]).await;
    assert_eq!(next(&mut inbox).await.1, "c");
    harness.hub_loop.disconnected(MODULE.into(), 2).await;
    let (_outbox, mut inbox) = harness.connect(3).await;
    assert_eq!(next(&mut inbox).await.1, "b");
    assert_eq!(next(&mut inbox).await.1, "c");
}

#[tokio::test]
async fn a_module_gets_its_inputs_once_it_subscribes() {
    let harness = Harness::new(&["in1"]).await;
    harness.store("a", &["in1"]).await;
    let (outbox, mut inbox) = Outbox::new(1);
    harness
        .hub_loop
        .connected(MODULE.into(), outbox.clone())
        .await;
    outbox.set_features(Feature::Inputs.bit());
    harness.hub_loop.subscribed(MODULE.into()).await;
    assert_eq!(next(&mut inbox).await.1, "a");
}

async fn listening_for_methods(harness: &Harness, connection: u64) -> Inbox {
    let (outbox, inbox) = Outbox::new(connection);
    outbox.set_features(Feature::Methods.bit());
    harness.hub_loop.connected(MODULE.into(), outbox).await;
    inbox
}

#[tokio::test]
async fn a_method_call_is_pushed_to_its_target_and_returns_the_answer_from_its_connection() {
    let harness = Harness::new(&[]).await;
    let mut inbox = listening_for_methods(&harness, 3).await;
    let hub_loop = harness.hub_loop.clone();
    let call = tokio::spawn(async move {
        hub_loop
            .call_method(
                MODULE.into(),
                "rid1".into(),
                "reboot".into(),
                b"{}".to_vec(),
                Duration::from_secs(30),
            )
            .await
    });
    let pushed = tokio::time::timeout(Duration::from_secs(10), inbox.recv())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(
        matches!(&pushed, Outgoing::MethodRequest { rid, method, .. } if rid == "rid1" && method == "reboot"),
        "{pushed:?}"
    );
    // A forged answer from another connection first: dropped, the call keeps waiting.
    harness
        .hub_loop
        .method_answered(MODULE.into(), 9, "rid1".into(), 500, b"forged".to_vec())
        .await;
    harness
        .hub_loop
        .method_answered(MODULE.into(), 3, "rid1".into(), 200, b"done".to_vec())
        .await;
    assert_eq!(
        call.await.unwrap(),
        MethodOutcome::Answered {
            status: 200,
            payload: b"done".to_vec()
        }
    );
}

#[tokio::test]
async fn a_method_call_nobody_answers_times_out_on_the_tasks_timer() {
    let harness = Harness::new(&[]).await;
    let _inbox = listening_for_methods(&harness, 3).await;
    let outcome = harness
        .hub_loop
        .call_method(
            MODULE.into(),
            "rid1".into(),
            "reboot".into(),
            Vec::new(),
            Duration::from_millis(100),
        )
        .await;
    assert_eq!(outcome, MethodOutcome::TimedOut);
    // The late answer finds no call.
    harness
        .hub_loop
        .method_answered(MODULE.into(), 3, "rid1".into(), 200, Vec::new())
        .await;
}

#[tokio::test]
async fn a_method_call_to_a_client_not_listening_is_refused_at_once() {
    let harness = Harness::new(&["in1"]).await;
    let (_outbox, _inbox) = harness.connect(1).await;
    let outcome = harness
        .hub_loop
        .call_method(
            MODULE.into(),
            "rid1".into(),
            "reboot".into(),
            Vec::new(),
            Duration::from_secs(30),
        )
        .await;
    assert_eq!(outcome, MethodOutcome::NotListening);
}

#[tokio::test]
async fn a_sender_waits_for_its_acknowledgement_while_the_listening_subscriber_is_too_far_behind() {
    let state = EdgeHubState::new(1).with_pacing(2, 100, Duration::from_secs(30));
    let harness = Harness::with_state(&["in1"], state).await;
    let (_outbox, mut inbox) = harness.connect(1).await;
    harness.store("a", &["in1"]).await;
    harness.store("b", &["in1"]).await;
    // The third makes the backlog 3, over the bound of 2: its sender waits.
    let third = harness.store("c", &["in1"]);
    tokio::pin!(third);
    assert!(
        tokio::time::timeout(Duration::from_millis(300), &mut third)
            .await
            .is_err(),
        "admitted while the subscriber is 3 behind"
    );
    let (_, body, id) = next(&mut inbox).await;
    assert_eq!(body, "a");
    harness.hub_loop.acked(MODULE.into(), 1, vec![id]).await;
    tokio::time::timeout(Duration::from_secs(10), third)
        .await
        .expect("admitted once the backlog is back to the bound");
}

#[tokio::test]
async fn a_sender_is_not_paced_while_the_subscriber_is_away() {
    let state = EdgeHubState::new(1).with_pacing(2, 100, Duration::from_secs(30));
    let harness = Harness::with_state(&["in1"], state).await;
    for body in ["a", "b", "c", "d", "e"] {
        tokio::time::timeout(Duration::from_secs(10), harness.store(body, &["in1"]))
            .await
            .expect("stored and admitted");
    }
    // All kept for it.
    let (_outbox, mut inbox) = harness.connect(1).await;
    assert_eq!(next(&mut inbox).await.1, "a");
}
