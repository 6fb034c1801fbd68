//! Unit tests of the session state machine, one rule each.

use std::time::{Duration, Instant};

use outpost_core::{DeviceId, Identity, Message, ModuleId};
use serde_json::json;

use super::*;

fn device() -> Identity {
    Identity::device(DeviceId::new("devA").unwrap())
}

fn module() -> Identity {
    Identity::module(
        DeviceId::new("dev1").unwrap(),
        ModuleId::new("mod1").unwrap(),
    )
}

fn limits(max_inflight: u16) -> Limits {
    Limits {
        max_inflight,
        ..Limits::default()
    }
}

fn session(identity: Identity, clean: bool) -> Session {
    Session::new(identity, clean, 60, None, limits(8), Instant::now())
}

fn publish(topic: &str, qos: QoS, pkid: u16, payload: &[u8]) -> Packet {
    Packet::Publish(Publish::new(topic, qos, payload.to_vec()).with_pkid(pkid))
}

fn subscribe(s: &mut Session, filter: &str) {
    let packet = Packet::Subscribe(Subscribe {
        pkid: 1,
        filters: vec![(filter.into(), QoS::AtLeastOnce)],
    });
    s.handle(packet, Instant::now()).unwrap();
}

fn only_call(mut actions: Vec<Action>) -> Call {
    assert_eq!(actions.len(), 1, "expected one call, got {actions:?}");
    match actions.pop() {
        Some(Action::Call(call)) => call,
        other => panic!("expected a call, got {other:?}"),
    }
}

fn sent_publish(actions: &[Action]) -> Publish {
    match actions {
        [Action::Send(Packet::Publish(p))] => p.clone(),
        other => panic!("expected one publish, got {other:?}"),
    }
}

#[test]
fn pingreq_is_answered_with_pingresp() {
    let actions = session(device(), true)
        .handle(Packet::PingReq, Instant::now())
        .unwrap();
    assert_eq!(actions, vec![Action::Send(Packet::PingResp)]);
}

#[test]
fn disconnect_closes_without_error() {
    assert_eq!(
        session(device(), true).handle(Packet::Disconnect, Instant::now()),
        Ok(vec![Action::Close])
    );
}

#[test]
fn a_second_connect_is_a_protocol_violation() {
    let connect = Packet::Connect(Box::new(crate::packet::Connect::new("devA", 60, false)));
    assert_eq!(
        session(device(), true).handle(connect, Instant::now()),
        Err(SessionError::SecondConnect)
    );
}

#[test]
fn a_qos2_publish_closes_the_connection() {
    let packet = publish("devices/devA/messages/events/", QoS::ExactlyOnce, 1, b"x");
    assert!(matches!(
        session(device(), true).handle(packet, Instant::now()),
        Err(SessionError::QoS2NotSupported(_))
    ));
}

#[test]
fn a_publish_on_another_devices_topic_closes_the_connection() {
    let packet = publish("devices/other/messages/events/", QoS::AtLeastOnce, 1, b"x");
    let error = session(device(), true).handle(packet, Instant::now());
    assert!(matches!(
        error,
        Err(SessionError::Topic(TopicError::ForeignIdentity { .. }))
    ));
}

#[test]
fn a_server_only_packet_from_the_client_closes_the_connection() {
    let error = session(device(), true).handle(Packet::PingResp, Instant::now());
    assert_eq!(error, Err(SessionError::UnexpectedPacket("PINGRESP")));
}

#[test]
fn telemetry_is_acknowledged_only_after_the_backend_accepts_it() {
    let mut s = session(module(), true);
    let topic = "devices/dev1/modules/mod1/messages/events/%24.on=output1&alert=true";
    let call = only_call(
        s.handle(
            publish(topic, QoS::AtLeastOnce, 7, b"{\"temp\": 20}"),
            Instant::now(),
        )
        .unwrap(),
    );
    let Operation::SendMessage(message) = &call.operation else {
        panic!("{call:?}")
    };
    assert_eq!(&message.body[..], b"{\"temp\": 20}");
    assert_eq!(message.system["outputName"], "output1");
    assert_eq!(call.ack, Some(Packet::PubAck(PubAck { pkid: 7 })));
    assert_eq!(
        s.complete(Outcome::Message(Ok(())), call.ack),
        Ok(vec![Packet::PubAck(PubAck { pkid: 7 })])
    );
}

#[test]
fn telemetry_refused_by_the_backend_closes_without_puback() {
    let mut s = session(device(), true);
    let refused = Outcome::Message(Err(OperationError::new(503, "queue full")));
    let result = s.complete(refused, Some(Packet::PubAck(PubAck { pkid: 1 })));
    assert!(matches!(result, Err(SessionError::MessageRefused(_))));
}

#[test]
fn qos0_telemetry_has_no_ack() {
    let mut s = session(device(), true);
    let call = only_call(
        s.handle(
            publish("devices/devA/messages/events/", QoS::AtMostOnce, 0, b"x"),
            Instant::now(),
        )
        .unwrap(),
    );
    assert_eq!(call.ack, None);
}

#[test]
fn twin_get_is_answered_without_a_twin_response_subscription() {
    let mut s = session(device(), false);
    let call = only_call(
        s.handle(
            publish("$iothub/twin/GET/?$rid=r1", QoS::AtLeastOnce, 4, b" "),
            Instant::now(),
        )
        .unwrap(),
    );
    assert_eq!(call.operation, Operation::GetTwin { rid: "r1".into() });
    let twin = json!({"desired": {"threshold": 25, "$version": 4}, "reported": {"$version": 7}});
    let packets = s
        .complete(
            Outcome::Twin {
                rid: "r1".into(),
                result: Ok(twin.clone()),
            },
            call.ack,
        )
        .unwrap();
    assert_eq!(packets[0], Packet::PubAck(PubAck { pkid: 4 }));
    let Packet::Publish(response) = &packets[1] else {
        panic!()
    };
    assert_eq!(response.topic, "$iothub/twin/res/200/?$rid=r1");
    assert_eq!(response.qos, QoS::AtLeastOnce);
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&response.payload).unwrap(),
        twin
    );
}

#[test]
fn a_reported_patch_is_answered_with_204_and_the_new_version() {
    let mut s = session(module(), true);
    let packet = publish(
        "$iothub/twin/PATCH/properties/reported/?$rid=68c1",
        QoS::AtLeastOnce,
        3,
        br#"{"gone": null}"#,
    );
    let call = only_call(s.handle(packet, Instant::now()).unwrap());
    assert_eq!(
        call.operation,
        Operation::PatchReported {
            rid: "68c1".into(),
            patch: json!({"gone": null})
        }
    );
    let packets = s
        .complete(
            Outcome::Reported {
                rid: "68c1".into(),
                result: Ok(8),
            },
            None,
        )
        .unwrap();
    let Packet::Publish(response) = &packets[0] else {
        panic!()
    };
    assert_eq!(response.topic, "$iothub/twin/res/204/?$rid=68c1&$version=8");
    assert!(response.payload.is_empty());
}

#[test]
fn a_reported_patch_that_is_not_json_is_answered_400_in_turn() {
    let mut s = session(device(), true);
    let packet = publish(
        "$iothub/twin/PATCH/properties/reported/?$rid=x",
        QoS::AtLeastOnce,
        3,
        b"{nope",
    );
    let call = only_call(s.handle(packet, Instant::now()).unwrap());
    let Operation::Ready(outcome) = call.operation else {
        panic!()
    };
    let packets = s.complete(outcome, call.ack).unwrap();
    let Packet::Publish(response) = &packets[1] else {
        panic!()
    };
    assert_eq!(response.topic, "$iothub/twin/res/400/?$rid=x");
}

#[test]
fn a_twin_error_carries_its_status_in_the_topic() {
    let mut s = session(device(), true);
    let outcome = Outcome::Twin {
        rid: "r".into(),
        result: Err(OperationError::new(429, "throttled")),
    };
    let packets = s.complete(outcome, None).unwrap();
    let Packet::Publish(response) = &packets[0] else {
        panic!()
    };
    assert_eq!(response.topic, "$iothub/twin/res/429/?$rid=r");
}

#[test]
fn a_method_response_is_passed_to_the_backend() {
    let mut s = session(module(), true);
    let call = only_call(
        s.handle(
            publish(
                "$iothub/methods/res/200/?$rid=42",
                QoS::AtLeastOnce,
                5,
                b"{}",
            ),
            Instant::now(),
        )
        .unwrap(),
    );
    assert_eq!(
        call.operation,
        Operation::MethodResponse {
            rid: "42".into(),
            status: 200,
            payload: b"{}".to_vec()
        }
    );
}

#[test]
fn subscribe_grants_at_most_qos1() {
    let mut s = session(device(), true);
    let packet = Packet::Subscribe(Subscribe {
        pkid: 9,
        filters: vec![("$iothub/methods/POST/#".into(), QoS::ExactlyOnce)],
    });
    let actions = s.handle(packet, Instant::now()).unwrap();
    let expected = SubAck {
        pkid: 9,
        return_codes: vec![SubscribeReturnCode::Success(QoS::AtLeastOnce)],
    };
    assert_eq!(actions, vec![Action::Send(Packet::SubAck(expected))]);
    assert_eq!(s.features(), Feature::Methods.bit());
}

#[test]
fn a_persistent_session_saves_its_filters_before_the_suback() {
    let mut s = session(device(), false);
    let packet = Packet::Subscribe(Subscribe {
        pkid: 2,
        filters: vec![("$iothub/twin/res/#".into(), QoS::AtLeastOnce)],
    });
    let call = only_call(s.handle(packet, Instant::now()).unwrap());
    assert_eq!(
        call.operation,
        Operation::SaveSubscriptions(vec!["$iothub/twin/res/#".into()])
    );
    assert!(matches!(call.ack, Some(Packet::SubAck(_))));
}

#[test]
fn subscribing_to_an_unsupported_filter_closes_the_connection() {
    let packet = Packet::Subscribe(Subscribe {
        pkid: 2,
        filters: vec![("#".into(), QoS::AtLeastOnce)],
    });
    assert!(matches!(
        session(device(), true).handle(packet, Instant::now()),
        Err(SessionError::Topic(_))
    ));
}

#[test]
fn unsubscribe_removes_the_feature_and_is_acknowledged() {
    let mut s = session(device(), true);
    subscribe(&mut s, "$iothub/twin/PATCH/properties/desired/#");
    let actions = s.handle(
        Packet::Unsubscribe(Unsubscribe {
            pkid: 3,
            filters: vec!["$iothub/twin/PATCH/properties/desired/#".into()],
        }),
        Instant::now(),
    );
    assert_eq!(
        actions,
        Ok(vec![Action::Send(Packet::UnsubAck(UnsubAck { pkid: 3 }))])
    );
    assert_eq!(s.features(), 0);
}

#[test]
fn a_desired_patch_is_dropped_until_the_client_subscribes() {
    let mut s = session(device(), true);
    let body = json!({"threshold": 30, "$version": 5});
    assert_eq!(
        s.push(Outgoing::DesiredPatch { body: body.clone() }),
        Ok(vec![])
    );
    subscribe(&mut s, "$iothub/twin/PATCH/properties/desired/#");
    let patch = sent_publish(&s.push(Outgoing::DesiredPatch { body }).unwrap());
    assert_eq!(
        patch.topic,
        "$iothub/twin/PATCH/properties/desired/?$version=5"
    );
    assert_eq!((patch.qos, patch.pkid), (QoS::AtLeastOnce, 1));
}

#[test]
fn a_c2d_message_is_delivered_when_its_puback_arrives() {
    let mut s = session(device(), true);
    subscribe(&mut s, "devices/devA/messages/devicebound/#");
    let mut message = Message {
        body: bytes::Bytes::from_static(b"hello device"),
        ..Message::default()
    };
    message.system.insert("messageId".into(), "c2d-1".into());
    let sent = sent_publish(
        &s.push(Outgoing::CloudToDevice {
            delivery_id: 41,
            message,
        })
        .unwrap(),
    );
    assert_eq!(
        sent.topic,
        "devices/devA/messages/devicebound/%24.mid=c2d-1"
    );
    let actions = s
        .handle(Packet::PubAck(PubAck { pkid: sent.pkid }), Instant::now())
        .unwrap();
    assert_eq!(only_call(actions).operation, Operation::Delivered(41));
}

#[test]
fn an_input_message_goes_to_the_module_input_topic() {
    let mut s = session(module(), true);
    subscribe(&mut s, "devices/dev1/modules/mod1/inputs/#");
    let sent = sent_publish(
        &s.push(Outgoing::Input {
            delivery_id: 1,
            topic: crate::topic::input(&module(), "input1", ""),
            body: bytes::Bytes::from_static(b"{\"t\": 21}"),
        })
        .unwrap(),
    );
    assert_eq!(sent.topic, "devices/dev1/modules/mod1/inputs/input1");
    assert_eq!(sent.qos, QoS::AtLeastOnce);
}

#[test]
fn a_method_request_goes_at_qos0_to_a_subscribed_client() {
    let mut s = session(module(), true);
    let request = || Outgoing::MethodRequest {
        rid: "42".into(),
        method: "reboot".into(),
        payload: b"{\"delay\": 3}".to_vec(),
    };
    assert_eq!(s.push(request()), Ok(vec![]));
    subscribe(&mut s, "$iothub/methods/POST/#");
    let sent = sent_publish(&s.push(request()).unwrap());
    assert_eq!(
        (sent.topic.as_str(), sent.qos),
        ("$iothub/methods/POST/reboot/?$rid=42", QoS::AtMostOnce)
    );
}

#[test]
fn the_backend_can_close_the_connection() {
    assert_eq!(
        session(device(), true).push(Outgoing::Close),
        Err(SessionError::ClosedByBackend)
    );
}

#[test]
fn a_persistent_session_resumes_with_its_subscriptions_and_redelivers_unacked_publishes() {
    let mut s = session(device(), false);
    subscribe(&mut s, "devices/devA/messages/devicebound/#");
    subscribe(&mut s, "$iothub/twin/PATCH/properties/desired/#");
    let message = Message {
        body: bytes::Bytes::from_static(b"hi"),
        ..Message::default()
    };
    let first = sent_publish(
        &s.push(Outgoing::CloudToDevice {
            delivery_id: 1,
            message: message.clone(),
        })
        .unwrap(),
    );

    let stored = s.into_stored().expect("persistent sessions are stored");
    let mut resumed = Session::new(device(), false, 60, Some(stored), limits(8), Instant::now());
    assert_eq!(
        resumed.features(),
        Feature::CloudToDevice.bit() | Feature::DesiredPatches.bit()
    );
    let again = resumed.redeliveries();
    let redelivered = sent_publish(&again);
    assert_eq!((redelivered.pkid, redelivered.dup), (first.pkid, true));
    // The backend pushes the undelivered message again on connect: it is already on its way.
    assert_eq!(
        resumed.push(Outgoing::CloudToDevice {
            delivery_id: 1,
            message
        }),
        Ok(vec![])
    );
}

#[test]
fn a_clean_session_is_not_stored_and_ignores_a_stored_one() {
    let mut s = session(device(), false);
    subscribe(&mut s, "$iothub/methods/POST/#");
    let stored = s.into_stored();
    let clean = Session::new(device(), true, 60, stored, limits(8), Instant::now());
    assert_eq!(clean.features(), 0);
    assert!(clean.into_stored().is_none());
}

#[test]
fn a_session_rebuilt_from_saved_filters_keeps_only_valid_ones() {
    let filters = vec![
        "$iothub/methods/POST/#".to_owned(),
        "devices/other/messages/devicebound/#".to_owned(),
    ];
    let stored = StoredSession::from_filters(&device(), &filters, limits(8));
    assert_eq!(stored.filters(), vec!["$iothub/methods/POST/#".to_owned()]);
}

#[test]
fn the_keep_alive_deadline_is_one_and_a_half_periods_after_the_last_packet() {
    let start = Instant::now();
    let mut s = Session::new(device(), true, 60, None, limits(8), start);
    assert_eq!(s.deadline(), Some(start + Duration::from_secs(90)));
    let later = start + Duration::from_secs(30);
    s.handle(Packet::PingReq, later).unwrap();
    assert_eq!(s.deadline(), Some(later + Duration::from_secs(90)));
}

#[test]
fn keep_alive_zero_means_no_deadline() {
    assert_eq!(
        Session::new(device(), true, 0, None, limits(8), Instant::now()).deadline(),
        None
    );
}

#[test]
fn publishes_beyond_the_inflight_window_wait_for_a_puback() {
    let mut s = Session::new(device(), true, 60, None, limits(1), Instant::now());
    subscribe(&mut s, "devices/devA/messages/devicebound/#");
    let message = Message::default();
    let first = sent_publish(
        &s.push(Outgoing::CloudToDevice {
            delivery_id: 1,
            message: message.clone(),
        })
        .unwrap(),
    );
    assert_eq!(
        s.push(Outgoing::CloudToDevice {
            delivery_id: 2,
            message
        }),
        Ok(vec![])
    );
    let actions = s
        .handle(Packet::PubAck(PubAck { pkid: first.pkid }), Instant::now())
        .unwrap();
    assert!(matches!(&actions[0], Action::Send(Packet::Publish(p)) if p.pkid == 1));
    assert_eq!(
        actions[1],
        Action::Call(Call {
            operation: Operation::Delivered(1),
            ack: None
        })
    );
}

#[test]
fn a_client_that_acknowledges_nothing_is_closed_once_its_queue_is_full() {
    let limits = Limits {
        max_inflight: 2,
        max_queued: 3,
    };
    let mut s = Session::new(device(), true, 60, None, limits, Instant::now());
    subscribe(&mut s, "$iothub/twin/PATCH/properties/desired/#");
    let patch = || Outgoing::DesiredPatch {
        body: json!({"a": 1, "$version": 2}),
    };
    for _ in 0..5 {
        s.push(patch()).unwrap();
    }
    assert_eq!(
        s.push(patch()),
        Err(SessionError::Overflow("a desired patch"))
    );
}

#[test]
fn twin_responses_nobody_acknowledges_end_the_session_instead_of_piling_up() {
    let limits = Limits {
        max_inflight: 1,
        max_queued: 1,
    };
    let mut s = Session::new(device(), true, 60, None, limits, Instant::now());
    subscribe(&mut s, "$iothub/twin/res/#");
    let twin = |rid: &str| Outcome::Twin {
        rid: rid.into(),
        result: Ok(json!({"desired": {}, "reported": {}})),
    };
    s.complete(twin("1"), None).unwrap();
    s.complete(twin("2"), None).unwrap();
    assert_eq!(
        s.complete(twin("3"), None),
        Err(SessionError::Overflow("a twin response"))
    );
}

#[test]
fn a_delivery_past_the_queue_ends_the_session_and_is_not_held() {
    let limits = Limits {
        max_inflight: 1,
        max_queued: 0,
    };
    let mut s = Session::new(device(), true, 60, None, limits, Instant::now());
    subscribe(&mut s, "devices/devA/messages/devicebound/#");
    let c2d = |delivery_id| Outgoing::CloudToDevice {
        delivery_id,
        message: Message::default(),
    };
    s.push(c2d(1)).unwrap();
    assert_eq!(s.push(c2d(2)), Err(SessionError::Overflow("a message")));
}
