//! A fixed workload through the edge hub's data path, for counting instructions per message:
//! `valgrind --tool=callgrind target/release/examples/edge_hot_path N [BYTES]` at two values of N, then
//! (instructions(N2) - instructions(N1)) / (N2 - N1) is the cost of one message without the start-up (or
//! `perf stat -e cycles`, which also counts what copies cost in memory traffic).
//!
//! One module (`sensor`) sends messages of BYTES bytes (default 100) on output `out1` with a message id and an application
//! property; the routes take them to `filter/input1` and to `$upstream`. Each message is accepted by the
//! router (route matching, encoding, a durable append), told to the task that owns the edge hub's state, read
//! back, pushed to `filter`'s outbox and acknowledged, one after the other; the upstream copy is read and
//! acknowledged as the link does. No sockets: the MQTT head's framing is not counted.

use outpost_core::{DeviceId, Identity, Message, ModuleId};
use outpost_edge::edgehub::hub_loop::HubLoop;
use outpost_edge::edgehub::router::Router;
use outpost_edge::metrics::EdgeMetrics;
use outpost_mqtt::{Feature, Outbox, Outgoing};
use outpost_store::log::{LogOptions, MessageLog};

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(10_000);
    let bytes: usize = std::env::args()
        .nth(2)
        .and_then(|a| a.parse().ok())
        .unwrap_or(100);
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime")
        .block_on(run(n, bytes));
}

async fn run(n: usize, bytes: usize) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let log = MessageLog::open(dir.path().join("log"), LogOptions::default()).expect("the log");
    let router = Router::new("edge1", log.clone());
    router
        .configure(&serde_json::json!({
            "schemaVersion": "1.1",
            "routes": {
                "toFilter": "FROM /messages/modules/sensor/outputs/out1 INTO BrokeredEndpoint(\"/modules/filter/inputs/input1\")",
                "up": "FROM /messages/modules/filter/* INTO $upstream",
                "all": "FROM /messages/* WHERE alert = 'yes' INTO $upstream",
            },
            "storeAndForwardConfiguration": {"timeToLiveSecs": 7200},
        }))
        .expect("routes");
    let (hub_loop, _task) = HubLoop::start(log, EdgeMetrics::default());
    hub_loop.routes(router.input_routes()).await;
    let (outbox, mut inbox) = Outbox::new(1);
    outbox.set_features(Feature::Inputs.bit());
    hub_loop.connected("edge1/filter".into(), outbox).await;
    let sensor = Identity::module(
        DeviceId::new("edge1").expect("id"),
        ModuleId::new("sensor").expect("id"),
    );
    let mut bodies = 0;
    for i in 0..n {
        let mut message = Message {
            body: vec![b'x'; bytes].into(),
            ..Message::default()
        };
        message.system.insert("outputName".into(), "out1".into());
        message.system.insert("messageId".into(), format!("{i:08}"));
        message.properties.insert(
            "alert".into(),
            Some(if i % 2 == 0 { "yes" } else { "no" }.into()),
        );
        let mut accepted = router.accept(&sensor, vec![message]).await.expect("stored");
        hub_loop.stored(std::mem::take(&mut accepted.inputs)).await;
        accepted.durable().await.expect("durable");
        let Some(Ok(Outgoing::Input {
            delivery_id, body, ..
        })) = inbox.recv().await
        else {
            panic!("no input pushed");
        };
        bodies += body.len();
        hub_loop
            .acked("edge1/filter".into(), 1, vec![delivery_id])
            .await;
        let up = router.upstream_batch(10);
        router.upstream_sent(up.into_iter().map(|(seq, _, _)| seq).collect());
    }
    assert_eq!(bodies, n * bytes);
    println!("{n} messages through the edge hub");
}
