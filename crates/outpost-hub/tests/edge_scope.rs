//! The upstream link acts only for identities that exist in the edge device's scope, and an edge device declares
//! a bounded number of clients.

use outpost_core::edge_link::{LinkFeature, PresenceClient, UpstreamMessage};
use outpost_core::{DeviceId, Identity, Message, ModuleId};
use outpost_hub::edge_link::MAX_EDGE_CLIENTS;
use outpost_hub::identity::DeviceRecord;
use outpost_hub::registry::{DeviceSpec, ModuleSpec, Precondition};
use outpost_hub::{Hub, HubError};
use serde_json::json;

/// A hub with edge device `edge1` (modules `$edgeAgent`, `$edgeHub`, `filter`), its child `leaf`, and an
/// unrelated device `stranger` with a module `m`.
async fn hub_with_edge() -> (Hub, DeviceRecord) {
    let hub = Hub::in_memory("hub.test").unwrap();
    let create = |id: &str, iot_edge: bool, parent: Option<&str>| {
        let spec = DeviceSpec {
            device_id: id.into(),
            iot_edge,
            parent: parent.map(str::to_owned),
            ..DeviceSpec::default()
        };
        let hub = &hub;
        async move {
            hub.registry()
                .put_device(&spec, &Precondition::CreateOnly)
                .await
                .unwrap()
        }
    };
    let edge = create("edge1", true, None).await;
    create("leaf", false, Some("edge1")).await;
    create("stranger", false, None).await;
    for (device, module) in [("edge1", "filter"), ("stranger", "m")] {
        module_on(&hub, device, module).await;
    }
    (hub, edge)
}

async fn module_on(hub: &Hub, device: &str, module: &str) {
    hub.registry()
        .put_module(
            ModuleSpec {
                device_id: device.into(),
                module_id: module.into(),
                ..ModuleSpec::default()
            },
            &Precondition::CreateOnly,
        )
        .await
        .unwrap();
}

fn client(id: &str) -> PresenceClient {
    PresenceClient {
        id: id.into(),
        features: vec![LinkFeature::Methods],
    }
}

fn identity(client: &str) -> Identity {
    Identity::parse_client_id(client).unwrap()
}

fn message(client: &str) -> UpstreamMessage<'static> {
    UpstreamMessage {
        client: client.to_owned().into(),
        message: std::borrow::Cow::Owned(Message {
            body: bytes::Bytes::from_static(b"21.5"),
            ..Message::default()
        }),
    }
}

#[tokio::test]
async fn presence_with_ten_thousand_made_up_modules_is_refused_and_changes_nothing() {
    let (hub, edge) = hub_with_edge().await;
    hub.edge_presence(&edge, &[client("edge1/filter")])
        .await
        .unwrap();
    let made_up: Vec<PresenceClient> = (0..10_000)
        .map(|i| client(&format!("edge1/made-up-{i}")))
        .collect();
    let refused = hub.edge_presence(&edge, &made_up).await;
    assert!(
        matches!(&refused, Err(e @ HubError::ArgumentInvalid(_)) if e.status() == 400),
        "{refused:?}"
    );
    assert!(hub.connections().is_connected(&identity("edge1/filter")));
    assert!(!hub.connections().is_connected(&identity("edge1/made-up-0")));
}

#[tokio::test]
async fn presence_of_a_module_that_does_not_exist_is_refused_and_changes_nothing() {
    let (hub, edge) = hub_with_edge().await;
    hub.edge_presence(&edge, &[client("edge1/filter")])
        .await
        .unwrap();
    for foreign in ["edge1/ghost", "stranger", "stranger/m", "leaf/m", "nobody"] {
        let refused = hub
            .edge_presence(&edge, &[client("leaf"), client(foreign)])
            .await;
        assert!(
            matches!(refused, Err(HubError::Unauthorized(_))),
            "{foreign}: {refused:?}"
        );
    }
    assert!(hub.connections().is_connected(&identity("edge1/filter")));
    assert!(!hub.connections().is_connected(&identity("leaf")));
}

#[tokio::test]
async fn presence_of_the_cap_of_real_modules_is_accepted_and_replaced_by_client_id() {
    let (hub, edge) = hub_with_edge().await;
    // `$edgeAgent`, `$edgeHub`, `filter`, the edge device and `leaf` are five; the rest are modules.
    for i in 0..MAX_EDGE_CLIENTS - 5 {
        module_on(&hub, "edge1", &format!("m{i}")).await;
    }
    let mut all: Vec<PresenceClient> = (0..MAX_EDGE_CLIENTS - 5)
        .map(|i| client(&format!("edge1/m{i}")))
        .collect();
    for id in [
        "edge1/$edgeAgent",
        "edge1/$edgeHub",
        "edge1/filter",
        "edge1",
        "leaf",
    ] {
        all.push(client(id));
    }
    assert_eq!(all.len(), MAX_EDGE_CLIENTS);
    hub.edge_presence(&edge, &all).await.unwrap();
    assert!(all
        .iter()
        .all(|c| hub.connections().is_connected(&identity(&c.id))));

    let (kept, left) = all.split_at(MAX_EDGE_CLIENTS / 2);
    hub.edge_presence(&edge, kept).await.unwrap();
    assert!(kept
        .iter()
        .all(|c| hub.connections().is_connected(&identity(&c.id))));
    assert!(left
        .iter()
        .all(|c| !hub.connections().is_connected(&identity(&c.id))));

    let mut over = all.clone();
    over.push(client("edge1/filter"));
    assert!(matches!(
        hub.edge_presence(&edge, &over).await,
        Err(HubError::ArgumentInvalid(_))
    ));
}

#[tokio::test]
async fn telemetry_for_a_module_that_does_not_exist_is_refused_and_a_real_one_is_accepted() {
    let (hub, edge) = hub_with_edge().await;
    let before = hub.messaging().newest_event();
    for foreign in ["edge1/ghost", "stranger", "stranger/m", "leaf/m"] {
        let refused = hub
            .edge_messages(&edge, &[message("edge1/filter"), message(foreign)])
            .await;
        assert!(
            matches!(refused, Err(HubError::Unauthorized(_))),
            "{foreign}: {refused:?}"
        );
    }
    assert_eq!(
        hub.messaging().newest_event(),
        before,
        "a refused batch appends nothing"
    );
    let batch = [message("edge1/filter"), message("leaf"), message("edge1")];
    assert_eq!(hub.edge_messages(&edge, &batch).await.unwrap(), 3);
    let events = hub
        .messaging()
        .read_events(before, 10, std::time::Duration::ZERO)
        .await
        .unwrap();
    let senders: Vec<_> = events
        .iter()
        .map(|(_, e)| (e["deviceId"].clone(), e["moduleId"].clone()))
        .collect();
    assert_eq!(
        senders,
        [
            (json!("edge1"), json!("filter")),
            (json!("leaf"), json!(null)),
            (json!("edge1"), json!(null)),
        ]
    );
}

#[tokio::test]
async fn twin_calls_for_a_module_that_does_not_exist_are_refused_and_a_real_one_is_served() {
    let (hub, edge) = hub_with_edge().await;
    let patch = json!({"temperature": 21});
    for foreign in ["edge1/ghost", "stranger/m", "leaf/m"] {
        assert!(
            matches!(
                hub.edge_twin(&edge, foreign).await,
                Err(HubError::Unauthorized(_))
            ),
            "{foreign}"
        );
        assert!(
            matches!(
                hub.edge_reported(&edge, foreign, &patch).await,
                Err(HubError::Unauthorized(_))
            ),
            "{foreign}"
        );
    }
    hub.edge_twin(&edge, "edge1/filter").await.unwrap();
    hub.edge_reported(&edge, "edge1/filter", &patch)
        .await
        .unwrap();
    hub.edge_twin(&edge, "leaf").await.unwrap();
    let filter = Identity::module(
        DeviceId::new("edge1").unwrap(),
        ModuleId::new("filter").unwrap(),
    );
    assert!(hub.in_scope(&edge, &filter).await.unwrap());
    let ghost = Identity::module(
        DeviceId::new("edge1").unwrap(),
        ModuleId::new("ghost").unwrap(),
    );
    assert!(!hub.in_scope(&edge, &ghost).await.unwrap());
}
