//! A TEST-ONLY gateway standing in for the edge hub, which is not built yet: `outpost-mqtt`'s real protocol
//! head on its own loopback address, with a backend that passes every operation to a real hub (so tokens,
//! twins, telemetry and methods are the hub's) and adds the one thing the hub cannot do, delivering
//! messages to module inputs: fed by the test, or by fixed routes from a module output to a module input.
//!
//! It is not the edge hub: no durable queue (inputs wait in memory for their module to subscribe), no
//! route language, no offline operation. It exists so that inputs, outputs-to-inputs and the
//! `GatewayHostName` path can be tested end to end today.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use outpost_core::{Identity, Message};
use outpost_hub::device_ops::HubDevices;
use outpost_hub::Hub;
use outpost_mqtt::{ConnectRefusal, DeviceOperations, Feature, OperationError, Outbox, Outgoing};
use tokio::sync::watch;

use super::free_loopback;

/// Delivery ids of input messages start here, far above the hub's cloud-to-device ids.
const INPUT_DELIVERY_BASE: u64 = 1 << 48;

/// A route `FROM /messages/modules/{from}/outputs/{output} INTO BrokeredEndpoint("/modules/{to}/inputs/{input}")`.
#[derive(Debug, Clone)]
struct Route {
    device: String,
    from_module: String,
    output: String,
    to_module: String,
    input: String,
}

#[derive(Default)]
struct State {
    outboxes: HashMap<String, Outbox>,
    /// Input messages waiting for their module to subscribe to inputs, by client id.
    pending: HashMap<String, Vec<(String, Message)>>,
    routes: Vec<Route>,
}

/// The backend of the test gateway.
struct GatewayDevices {
    hub: HubDevices,
    state: Arc<Mutex<State>>,
    next_delivery: AtomicU64,
}

impl GatewayDevices {
    fn flush(&self, client_id: &str) {
        let mut state = self.state.lock().unwrap();
        let Some(outbox) = state.outboxes.get(client_id).cloned() else {
            return;
        };
        if !outbox.subscribed(Feature::Inputs) {
            return;
        }
        for (input, message) in state.pending.remove(client_id).unwrap_or_default() {
            let delivery_id =
                INPUT_DELIVERY_BASE + self.next_delivery.fetch_add(1, Ordering::Relaxed);
            // A module's client id is `{device}/{module}`.
            let (device, module) = client_id.split_once('/').unwrap_or((client_id, ""));
            let prefix = outpost_mqtt::topic::input_prefix(device, module, &input);
            outbox.send(Outgoing::Input {
                delivery_id,
                topic: outpost_mqtt::topic::input_with_bag(&prefix, 0, |topic| {
                    message.push_property_bag(topic);
                }),
                body: message.body,
            });
        }
    }

    fn deliver(&self, client_id: &str, input: &str, message: Message) {
        self.state
            .lock()
            .unwrap()
            .pending
            .entry(client_id.to_owned())
            .or_default()
            .push((input.to_owned(), message));
        self.flush(client_id);
    }
}

#[async_trait]
impl DeviceOperations for GatewayDevices {
    async fn authenticate(
        &self,
        identity: &Identity,
        username: &str,
        password: Option<&[u8]>,
    ) -> Result<(), ConnectRefusal> {
        self.hub.authenticate(identity, username, password).await
    }

    async fn connected(&self, identity: &Identity, outbox: Outbox) {
        self.state
            .lock()
            .unwrap()
            .outboxes
            .insert(identity.client_id(), outbox.clone());
        self.hub.connected(identity, outbox).await;
        self.flush(&identity.client_id());
    }

    async fn disconnected(&self, identity: &Identity, connection: u64) {
        {
            let mut state = self.state.lock().unwrap();
            if state
                .outboxes
                .get(&identity.client_id())
                .is_some_and(|o| o.connection() == connection)
            {
                state.outboxes.remove(&identity.client_id());
            }
        }
        self.hub.disconnected(identity, connection).await;
    }

    async fn get_twin(&self, identity: &Identity) -> Result<serde_json::Value, OperationError> {
        self.hub.get_twin(identity).await
    }

    async fn patch_reported(
        &self,
        identity: &Identity,
        patch: serde_json::Value,
    ) -> Result<u64, OperationError> {
        self.hub.patch_reported(identity, patch).await
    }

    async fn send_message(
        &self,
        identity: &Identity,
        message: Message,
    ) -> Result<(), OperationError> {
        // Every message also goes to the hub's event stream (as a `$upstream` route would), so tests can
        // see outputs there.
        self.hub.send_message(identity, message.clone()).await?;
        let (Some(module), Some(output)) = (&identity.module, message.system.get("outputName"))
        else {
            return Ok(());
        };
        let targets: Vec<Route> = self
            .state
            .lock()
            .unwrap()
            .routes
            .iter()
            .filter(|r| {
                r.device == identity.device.as_str()
                    && r.from_module == module.as_str()
                    && &r.output == output
            })
            .cloned()
            .collect();
        for route in targets {
            let mut routed = message.clone();
            routed.system.remove("outputName");
            routed
                .system
                .insert("connectionDeviceId".into(), identity.device.to_string());
            routed
                .system
                .insert("connectionModuleId".into(), module.to_string());
            self.deliver(
                &format!("{}/{}", route.device, route.to_module),
                &route.input,
                routed,
            );
        }
        Ok(())
    }

    async fn method_response(
        &self,
        identity: &Identity,
        connection: u64,
        rid: &str,
        status: i32,
        payload: Vec<u8>,
    ) {
        self.hub
            .method_response(identity, connection, rid, status, payload)
            .await;
    }

    async fn delivered(&self, identity: &Identity, connection: u64, delivery_id: u64) {
        if delivery_id < INPUT_DELIVERY_BASE {
            self.hub.delivered(identity, connection, delivery_id).await;
        }
    }

    async fn load_subscriptions(&self, client_id: &str) -> Vec<String> {
        self.hub.load_subscriptions(client_id).await
    }

    async fn save_subscriptions(&self, client_id: &str, filters: &[String]) {
        self.hub.save_subscriptions(client_id, filters).await;
        self.flush(client_id);
    }
}

/// The test-only gateway, serving MQTT on its own loopback address, port 8883.
pub struct TestGateway {
    /// Its address, also its host name (`GatewayHostName`).
    pub ip: IpAddr,
    backend: Arc<GatewayDevices>,
    shutdown: watch::Sender<bool>,
}

impl TestGateway {
    /// Starts a gateway in front of `hub`, with a server certificate from the hub's CA in `data_dir`.
    pub async fn start(hub: Arc<Hub>, data_dir: &std::path::Path) -> Self {
        let ip = free_loopback();
        let ca =
            outpost_pki::CertificateAuthority::load_or_create(data_dir, "Outpost hub CA").unwrap();
        let tls = ca.server_tls_config(&ip.to_string()).unwrap();
        let listener = tokio::net::TcpListener::bind((ip, 8883)).await.unwrap();
        let backend = Arc::new(GatewayDevices {
            hub: HubDevices(hub),
            state: Arc::default(),
            next_delivery: AtomicU64::new(0),
        });
        let (shutdown, mut stopped) = watch::channel(false);
        let ops = Arc::clone(&backend);
        tokio::spawn(async move {
            let stop = async move {
                let _ = stopped.wait_for(|s| *s).await;
            };
            let config = outpost_mqtt::ServerConfig::new(tls);
            let _ = outpost_mqtt::serve(listener, config, ops, stop).await;
        });
        Self {
            ip,
            backend,
            shutdown,
        }
    }

    /// Delivers a message to a module's input (now, or once the module subscribes to its inputs).
    pub fn send_to_input(&self, device: &str, module: &str, input: &str, message: Message) {
        self.backend
            .deliver(&format!("{device}/{module}"), input, message);
    }

    /// Routes one module's output to another module's input.
    pub fn route(&self, device: &str, from: (&str, &str), to: (&str, &str)) {
        self.backend.state.lock().unwrap().routes.push(Route {
            device: device.into(),
            from_module: from.0.into(),
            output: from.1.into(),
            to_module: to.0.into(),
            input: to.1.into(),
        });
    }

    /// Whether a client is connected to the gateway and subscribed to `feature`.
    pub fn subscribed(&self, client_id: &str, feature: Feature) -> bool {
        self.backend
            .state
            .lock()
            .unwrap()
            .outboxes
            .get(client_id)
            .is_some_and(|o| o.subscribed(feature))
    }

    /// The id of a client's current connection to the gateway.
    pub fn connection(&self, client_id: &str) -> Option<u64> {
        self.backend
            .state
            .lock()
            .unwrap()
            .outboxes
            .get(client_id)
            .map(Outbox::connection)
    }

    /// Adds `GatewayHostName` to a connection string.
    pub fn connection_string(&self, connection_string: &str) -> String {
        format!("{connection_string};GatewayHostName={}", self.ip)
    }
}

impl Drop for TestGateway {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
    }
}
