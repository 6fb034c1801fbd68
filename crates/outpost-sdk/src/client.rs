//! The client: one type, [`Client`], whose identity kind is a type parameter. [`DeviceClient`] and
//! [`ModuleClient`] are that type for a device and for a module; everything a twin, telemetry and direct
//! methods need is written once for both, and only what IoT Hub gives one kind alone (cloud-to-device
//! messages for devices; outputs, inputs and method invocation for modules) is written for that kind.

use std::marker::PhantomData;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use outpost_core::{ConnectionString, DeviceId, Identity, ModuleId};
use serde_json::Value;
use tokio::sync::{mpsc, watch};

use crate::credentials::Credential;
use crate::driver::{Command, Config, ConnectionStatus, Driver, Requester, Sinks};
use crate::error::ClientError;
use crate::link::{Endpoint, Link};
use crate::message::{Message, MAX_MESSAGE_BYTES};
use crate::methods::{Invoker, MethodCall, MethodInvocation, MethodResult, MethodTarget};
use crate::options::ClientOptions;
use crate::stream::Incoming;
use crate::topics::{self, Feature};
use crate::twin::{DesiredPatch, Twin};
use crate::workload::WorkloadClient;
use crate::EdgeEnvironment;

/// The MQTT port the device SDK dials.
const MQTT_PORT: u16 = 8883;

/// The identity kinds a client can have.
pub mod kind {
    mod sealed {
        pub trait Sealed {}
    }

    /// A kind of identity: [`Device`] or [`Module`].
    pub trait Kind: sealed::Sealed + Send + Sync + 'static {
        /// Whether this kind is a module.
        const MODULE: bool;
    }

    /// The identity of a device (`{deviceId}`).
    #[derive(Debug, Clone, Copy)]
    pub struct Device;

    /// The identity of a module (`{deviceId}/{moduleId}`).
    #[derive(Debug, Clone, Copy)]
    pub struct Module;

    impl sealed::Sealed for Device {}
    impl sealed::Sealed for Module {}

    impl Kind for Device {
        const MODULE: bool = false;
    }

    impl Kind for Module {
        const MODULE: bool = true;
    }
}

use kind::Kind;

/// A client for a device.
pub type DeviceClient = Client<kind::Device>;

/// A client for a module.
pub type ModuleClient = Client<kind::Module>;

/// A connected client of a device or a module.
///
/// Clones share the connection; it closes when the last clone is dropped or [`close`](Self::close)d.
/// The connection is kept up by a background task: lost connections are reopened with back-off, the
/// token is renewed before it expires, operations not yet answered are sent again, and the twin is read
/// again so that the desired-properties stream misses nothing.
pub struct Client<K: Kind> {
    inner: Arc<Inner>,
    kind: PhantomData<fn() -> K>,
}

impl<K: Kind> Clone for Client<K> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
            kind: PhantomData,
        }
    }
}

impl<K: Kind> std::fmt::Debug for Client<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("identity", &self.inner.config.identity.to_string())
            .field("status", &*self.inner.status.borrow())
            .finish_non_exhaustive()
    }
}

/// What the clones of one client share.
struct Inner {
    requester: Requester,
    config: Arc<Config>,
    status: watch::Receiver<ConnectionStatus>,
    streams: Mutex<Streams>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.requester.close();
    }
}

/// The receiving ends of the pushes, until the application takes them.
struct Streams {
    desired: Option<mpsc::UnboundedReceiver<DesiredPatch>>,
    methods: Option<mpsc::UnboundedReceiver<MethodCall>>,
    cloud_to_device: Option<mpsc::UnboundedReceiver<Message>>,
    inputs: Option<mpsc::UnboundedReceiver<Message>>,
}

impl<K: Kind> Client<K> {
    /// Opens the first connection (its errors are returned: wrong key, unknown identity, unreachable host)
    /// and starts the task that keeps it.
    async fn open(config: Config) -> Result<Self, ClientError> {
        let config = Arc::new(config);
        let token = config.token().await?;
        // A new client starts a clean session, so that subscriptions of an earlier process with this
        // identity do not push it what it never asked for; its reconnections resume the session.
        let link = Link::open(&config.endpoint, &token.token, true).await?;
        tracing::info!(client = %config.identity, host = %config.endpoint.host, port = config.endpoint.port, "connected");

        let (commands_tx, commands) = mpsc::unbounded_channel();
        let fatal = Arc::new(OnceLock::new());
        let requester = Requester::new(
            commands_tx,
            config.options.operation_timeout,
            Arc::clone(&fatal),
        );
        let (desired_tx, desired) = mpsc::unbounded_channel();
        let (methods_tx, methods) = mpsc::unbounded_channel();
        let (c2d_tx, cloud_to_device) = mpsc::unbounded_channel();
        let (inputs_tx, inputs) = mpsc::unbounded_channel();
        let (status_tx, status) = watch::channel(ConnectionStatus::Connected);
        let driver = Driver::new(
            Arc::clone(&config),
            commands,
            requester.clone(),
            Sinks {
                desired: desired_tx,
                methods: methods_tx,
                cloud_to_device: c2d_tx,
                inputs: inputs_tx,
            },
            status_tx,
            fatal,
        );
        tokio::spawn(driver.run(link, token));
        Ok(Self {
            inner: Arc::new(Inner {
                requester,
                config,
                status,
                streams: Mutex::new(Streams {
                    desired: Some(desired),
                    methods: Some(methods),
                    cloud_to_device: Some(cloud_to_device),
                    inputs: Some(inputs),
                }),
            }),
            kind: PhantomData,
        })
    }

    /// Builds the configuration of a client from a connection string and connects.
    async fn from_parsed(
        connection_string: &str,
        options: ClientOptions,
    ) -> Result<Self, ClientError> {
        let cs: ConnectionString = connection_string
            .parse()
            .map_err(|e| ClientError::Configuration(format!("connection string: {e}")))?;
        let device = cs.device_id.clone().ok_or_else(|| {
            ClientError::Configuration(
                "a service connection string (no DeviceId) cannot open a device or module client"
                    .into(),
            )
        })?;
        let identity = match (&cs.module_id, K::MODULE) {
            (Some(module), true) => Identity::module(device_id(&device)?, module_id(module)?),
            (None, false) => Identity::device(device_id(&device)?),
            (Some(module), false) => {
                return Err(ClientError::Configuration(format!(
                    "the connection string names module {module}: open it with ModuleClient"
                )))
            }
            (None, true) => {
                return Err(ClientError::Configuration(
                    "the connection string names no ModuleId: open it with DeviceClient".into(),
                ))
            }
        };
        let credential = match (&cs.shared_access_key, &cs.shared_access_signature) {
            (Some(key), _) => Credential::Key(key.clone()),
            (None, Some(token)) => Credential::Token(token.clone()),
            (None, None) => {
                return Err(ClientError::NotSupported(
                    "X.509 authentication; give SharedAccessKey or SharedAccessSignature".into(),
                ))
            }
        };
        let hub_host = cs.host_and_port().0.to_owned();
        let (connect_host, connect_port) = if let Some(gateway) = &cs.gateway_host_name {
            split_port(gateway)
        } else {
            let (host, port) = cs.host_and_port();
            (host.to_owned(), port)
        };
        let gateway = cs.gateway_host_name.as_deref().map(|g| split_port(g).0);
        let config = config(
            identity,
            hub_host,
            connect_host,
            connect_port,
            gateway,
            credential,
            options,
        )?;
        Self::open(config).await
    }

    /// The device id.
    pub fn device_id(&self) -> &str {
        self.inner.config.identity.device.as_str()
    }

    /// Whether the client is connected now.
    pub fn status(&self) -> ConnectionStatus {
        *self.inner.status.borrow()
    }

    /// Why the client stopped: `None` while it runs, [`ClientError::Closed`] after [`close`](Self::close), or the
    /// error that stopped it (a reconnection refused as [`ClientError::Unauthorized`], say). The streams end
    /// when the client stops; this says why.
    ///
    /// ```no_run
    /// # async fn run(client: outpost_sdk::ModuleClient) -> Result<(), outpost_sdk::ClientError> {
    /// let mut inputs = client.inputs().await?;
    /// while let Some(message) = inputs.next().await { /* ... */ }
    /// Err(client.close_reason().unwrap_or(outpost_sdk::ClientError::Closed))
    /// # }
    /// ```
    pub fn close_reason(&self) -> Option<ClientError> {
        (self.status() == ConnectionStatus::Closed).then(|| self.inner.requester.stopped())
    }

    /// A receiver that sees every change of [`status`](Self::status).
    ///
    /// ```no_run
    /// # async fn run(client: outpost_sdk::DeviceClient) {
    /// use outpost_sdk::ConnectionStatus;
    /// let mut status = client.status_changes();
    /// while status.changed().await.is_ok() {
    ///     if *status.borrow() == ConnectionStatus::Disconnected {
    ///         eprintln!("lost the hub; reconnecting");
    ///     }
    /// }
    /// # }
    /// ```
    pub fn status_changes(&self) -> watch::Receiver<ConnectionStatus> {
        self.inner.status.clone()
    }

    /// Reads the twin (desired and reported properties with their versions).
    ///
    /// ```no_run
    /// # async fn run(client: outpost_sdk::DeviceClient) -> Result<(), outpost_sdk::ClientError> {
    /// let twin = client.twin().await?;
    /// println!("desired version {}: {:?}", twin.desired_version, twin.desired);
    /// # Ok(()) }
    /// ```
    pub async fn twin(&self) -> Result<Twin, ClientError> {
        let answer = self
            .inner
            .requester
            .request("twin read", |reply| Command::Twin { patch: None, reply })
            .await?;
        if answer.status != 200 {
            return Err(ClientError::from_status(
                answer.status,
                format!("twin read: {}", crate::error::error_message(&answer.body)),
            ));
        }
        let body: Value = serde_json::from_slice(&answer.body)
            .map_err(|e| ClientError::Protocol(format!("the twin is not JSON: {e}")))?;
        Twin::from_json(&body)
    }

    /// Patches the reported properties (`null` deletes a key); returns the new reported `$version` when
    /// the server says it (the hub does; edgeHub does not). A patch the hub refuses changes nothing and is
    /// [`ClientError::PatchRejected`].
    ///
    /// ```no_run
    /// # async fn run(client: outpost_sdk::ModuleClient) -> Result<(), outpost_sdk::ClientError> {
    /// client.patch_reported(serde_json::json!({"TemperatureThreshold": 25, "obsolete": null})).await?;
    /// # Ok(()) }
    /// ```
    pub async fn patch_reported(&self, patch: Value) -> Result<Option<u64>, ClientError> {
        if !patch.is_object() {
            return Err(ClientError::PatchRejected {
                status: 400,
                message: "a reported patch must be a JSON object".into(),
            });
        }
        let answer = self
            .inner
            .requester
            .request("reported patch", |reply| Command::Twin {
                patch: Some(patch),
                reply,
            })
            .await?;
        match answer.status {
            200..=299 => Ok(answer.version),
            400 | 413 => Err(ClientError::PatchRejected {
                status: answer.status,
                message: crate::error::error_message(&answer.body),
            }),
            status => Err(ClientError::from_status(
                status,
                format!(
                    "reported patch: {}",
                    crate::error::error_message(&answer.body)
                ),
            )),
        }
    }

    /// The stream of desired properties: first the whole desired document, then every change, each exactly
    /// once, including those made while the client was disconnected. It can be taken once.
    ///
    /// ```no_run
    /// # async fn run(client: outpost_sdk::ModuleClient) -> Result<(), outpost_sdk::ClientError> {
    /// let mut desired = client.desired_properties().await?;
    /// while let Some(patch) = desired.next().await {
    ///     if let Some(interval) = patch.get("SendInterval").and_then(|v| v.as_u64()) {
    ///         println!("send every {interval} s (desired version {})", patch.version);
    ///     }
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn desired_properties(&self) -> Result<Incoming<DesiredPatch>, ClientError> {
        self.take(Feature::DesiredPatches, |s| &mut s.desired).await
    }

    /// The stream of direct method calls to this client. It can be taken once.
    ///
    /// ```no_run
    /// # async fn run(client: outpost_sdk::DeviceClient) -> Result<(), outpost_sdk::ClientError> {
    /// let mut calls = client.direct_methods().await?;
    /// while let Some(call) = calls.next().await {
    ///     let answer = serde_json::json!({"echo": call.payload().clone()});
    ///     call.respond(200, answer).await?;
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn direct_methods(&self) -> Result<Incoming<MethodCall>, ClientError> {
        self.take(Feature::Methods, |s| &mut s.methods).await
    }

    /// Sends a telemetry message; returns once the server has accepted it (at least once: a message whose
    /// acknowledgement was lost with its connection is sent again).
    ///
    /// ```no_run
    /// # async fn run(client: outpost_sdk::DeviceClient) -> Result<(), outpost_sdk::ClientError> {
    /// use outpost_sdk::Message;
    /// let message = Message::json(&serde_json::json!({"temperature": 21.5})).with_property("unit", "C");
    /// client.send_telemetry(message).await?;
    /// # Ok(()) }
    /// ```
    pub async fn send_telemetry(&self, message: Message) -> Result<(), ClientError> {
        if message.body().len() > MAX_MESSAGE_BYTES {
            return Err(ClientError::MessageTooLarge {
                size: message.body().len(),
                limit: MAX_MESSAGE_BYTES,
            });
        }
        let message: outpost_core::Message = message.into();
        let topic = topics::telemetry(&self.inner.config.identity, &message);
        let payload = Bytes::from(message.body);
        self.inner
            .requester
            .request("telemetry", |reply| Command::Publish {
                topic,
                payload,
                reply,
            })
            .await
    }

    /// Disconnects and stops; clones of this client stop too. Waiting operations fail with
    /// [`ClientError::Closed`].
    ///
    /// ```no_run
    /// # async fn run(client: outpost_sdk::DeviceClient) {
    /// client.close().await;
    /// # }
    /// ```
    pub async fn close(self) {
        self.inner.requester.close();
        let mut status = self.inner.status.clone();
        let _ = tokio::time::timeout(
            Duration::from_secs(5),
            status.wait_for(|s| *s == ConnectionStatus::Closed),
        )
        .await;
    }

    /// Takes a stream out of the client and subscribes to its feature.
    async fn take<T>(
        &self,
        feature: Feature,
        slot: impl Fn(&mut Streams) -> &mut Option<mpsc::UnboundedReceiver<T>>,
    ) -> Result<Incoming<T>, ClientError> {
        let receiver = {
            let mut streams = self
                .inner
                .streams
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            slot(&mut streams)
                .take()
                .ok_or(ClientError::AlreadyTaken(feature.name()))?
        };
        let subscribed = self
            .inner
            .requester
            .request("subscribe", |reply| Command::Subscribe { feature, reply })
            .await;
        match subscribed {
            Ok(()) => Ok(Incoming::new(receiver)),
            Err(error) => {
                // Put it back, so that the application can try again.
                *slot(
                    &mut self
                        .inner
                        .streams
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner),
                ) = Some(receiver);
                Err(error)
            }
        }
    }
}

impl Client<kind::Device> {
    /// Connects a device with its connection string (`HostName=..;DeviceId=..;SharedAccessKey=..`, optionally
    /// `GatewayHostName=..` to connect through an edge device).
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), outpost_sdk::ClientError> {
    /// use outpost_sdk::{ClientOptions, DeviceClient};
    /// let options = ClientOptions {
    ///     ca_pem: Some(std::fs::read_to_string("outpost-data/ca.pem").unwrap()),
    ///     ..ClientOptions::default()
    /// };
    /// let client = DeviceClient::from_connection_string(
    ///     "HostName=hub.local;DeviceId=sensor-1;SharedAccessKey=c2VjcmV0LWtleS1vZi1zZW5zb3ItMQ==",
    ///     options,
    /// ).await?;
    /// # Ok(()) }
    /// ```
    pub async fn from_connection_string(
        connection_string: &str,
        options: ClientOptions,
    ) -> Result<Self, ClientError> {
        Self::from_parsed(connection_string, options).await
    }

    /// The stream of cloud-to-device messages. It can be taken once. A message is completed (removed from the
    /// hub's queue) when it reaches this stream.
    ///
    /// ```no_run
    /// # async fn run(client: outpost_sdk::DeviceClient) -> Result<(), outpost_sdk::ClientError> {
    /// let mut messages = client.cloud_to_device_messages().await?;
    /// while let Some(message) = messages.next().await {
    ///     println!("{:?} {:?}", message.body_str(), message.properties());
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn cloud_to_device_messages(&self) -> Result<Incoming<Message>, ClientError> {
        self.take(Feature::CloudToDevice, |s| &mut s.cloud_to_device)
            .await
    }
}

impl Client<kind::Module> {
    /// Connects a module with its connection string (`HostName=..;DeviceId=..;ModuleId=..;SharedAccessKey=..`,
    /// optionally `GatewayHostName=..` to connect through its edge hub).
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), outpost_sdk::ClientError> {
    /// use outpost_sdk::{ClientOptions, ModuleClient};
    /// let client = ModuleClient::from_connection_string(
    ///     "HostName=hub.local;DeviceId=edge-1;ModuleId=filter;SharedAccessKey=c2VjcmV0LWtleS1vZi1maWx0ZXI=",
    ///     ClientOptions { ca_pem: Some(std::fs::read_to_string("ca.pem").unwrap()), ..Default::default() },
    /// ).await?;
    /// # Ok(()) }
    /// ```
    pub async fn from_connection_string(
        connection_string: &str,
        options: ClientOptions,
    ) -> Result<Self, ClientError> {
        Self::from_parsed(connection_string, options).await
    }

    /// Connects the way a module started by the edge runtime does: from the `IOTEDGE_*` environment, with
    /// the trust bundle and token signatures of the workload API, to the gateway. Outside a runtime it
    /// falls back to `EdgeHubConnectionString` and `EdgeModuleCACertificateFile`, as the Azure SDK does.
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), outpost_sdk::ClientError> {
    /// let client = outpost_sdk::ModuleClient::from_environment().await?;
    /// # Ok(()) }
    /// ```
    pub async fn from_environment() -> Result<Self, ClientError> {
        Self::from_environment_with(ClientOptions::default()).await
    }

    /// [`from_environment`](Self::from_environment) with options (its `ca_pem`, when set, replaces the
    /// trust bundle and the CA file).
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), outpost_sdk::ClientError> {
    /// use outpost_sdk::{ClientOptions, ModuleClient};
    /// let options = ClientOptions { product_info: "filter/1.0".into(), ..ClientOptions::default() };
    /// let client = ModuleClient::from_environment_with(options).await?;
    /// # Ok(()) }
    /// ```
    pub async fn from_environment_with(options: ClientOptions) -> Result<Self, ClientError> {
        Self::from_edge_environment(EdgeEnvironment::from_env()?, options).await
    }

    /// Connects with an environment read elsewhere (see [`EdgeEnvironment::from_lookup`]).
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), outpost_sdk::ClientError> {
    /// use outpost_sdk::{ClientOptions, EdgeEnvironment, ModuleClient};
    /// let environment = EdgeEnvironment::ConnectionString {
    ///     connection_string: "HostName=hub.local;GatewayHostName=edge-1.local;DeviceId=edge-1;ModuleId=filter;SharedAccessKey=c2VjcmV0LWtleS1vZi1maWx0ZXI=".into(),
    ///     ca_file: Some("/certs/edge-ca.pem".into()),
    /// };
    /// let client = ModuleClient::from_edge_environment(environment, ClientOptions::default()).await?;
    /// # Ok(()) }
    /// ```
    pub async fn from_edge_environment(
        environment: EdgeEnvironment,
        mut options: ClientOptions,
    ) -> Result<Self, ClientError> {
        match environment {
            EdgeEnvironment::Runtime {
                hub_host_name,
                device_id: device,
                module_id: module,
                gateway_host_name,
                generation_id,
                workload_uri,
                api_version,
            } => {
                let workload = WorkloadClient::new(&workload_uri, &api_version)?;
                if options.ca_pem.is_none() {
                    options.ca_pem = Some(workload.trust_bundle().await?);
                }
                let identity = Identity::module(device_id(&device)?, module_id(&module)?);
                let (gateway, port) = split_port(&gateway_host_name);
                let credential = Credential::Workload {
                    client: workload,
                    generation_id,
                };
                let config = config(
                    identity,
                    hub_host_name,
                    gateway.clone(),
                    port,
                    Some(gateway),
                    credential,
                    options,
                )?;
                Self::open(config).await
            }
            EdgeEnvironment::ConnectionString {
                connection_string,
                ca_file,
            } => {
                if let (Some(path), None) = (&ca_file, &options.ca_pem) {
                    let pem = std::fs::read_to_string(path).map_err(|e| {
                        ClientError::Configuration(format!(
                            "EdgeModuleCACertificateFile {}: {e}",
                            path.display()
                        ))
                    })?;
                    options.ca_pem = Some(pem);
                }
                Self::from_connection_string(&connection_string, options).await
            }
        }
    }

    /// The module id.
    pub fn module_id(&self) -> &str {
        self.inner
            .config
            .identity
            .module
            .as_ref()
            .map_or("", ModuleId::as_str)
    }

    /// Sends a message to one of the module's outputs (routes of the edge hub take it from there).
    ///
    /// ```no_run
    /// # async fn run(client: outpost_sdk::ModuleClient) -> Result<(), outpost_sdk::ClientError> {
    /// client.send_output("output1", outpost_sdk::Message::new("alert")).await?;
    /// # Ok(()) }
    /// ```
    pub async fn send_output(&self, output: &str, message: Message) -> Result<(), ClientError> {
        self.send_telemetry(message.with_system_property("outputName", output))
            .await
    }

    /// The stream of messages routed to the module's inputs; [`Message::input_name`] says which. It can be
    /// taken once.
    ///
    /// ```no_run
    /// # async fn run(client: outpost_sdk::ModuleClient) -> Result<(), outpost_sdk::ClientError> {
    /// let mut inputs = client.inputs().await?;
    /// while let Some(message) = inputs.next().await {
    ///     if message.input_name() == Some("input1") {
    ///         client.send_output("output1", message).await?;
    ///     }
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn inputs(&self) -> Result<Incoming<Message>, ClientError> {
        self.take(Feature::Inputs, |s| &mut s.inputs).await
    }

    /// Calls a direct method on another module or a device through the gateway (edge hub), over HTTPS
    /// (AZURE-COMPAT §1.6). Needs a gateway: a module started by the edge runtime, or a connection string
    /// with `GatewayHostName`. Outpost's edge hub serves this endpoint; the hub alone does not.
    ///
    /// ```no_run
    /// # async fn run(client: outpost_sdk::ModuleClient) -> Result<(), outpost_sdk::ClientError> {
    /// use outpost_sdk::{MethodInvocation, MethodTarget};
    /// let result = client
    ///     .invoke_method(
    ///         MethodTarget::module("edge-1", "simulated-temperature-sensor"),
    ///         MethodInvocation::new("reset", serde_json::Value::Null),
    ///     )
    ///     .await?;
    /// println!("{} {}", result.status, result.payload);
    /// # Ok(()) }
    /// ```
    pub async fn invoke_method(
        &self,
        target: MethodTarget,
        invocation: MethodInvocation,
    ) -> Result<MethodResult, ClientError> {
        let config = &self.inner.config;
        let gateway = config.gateway_host.as_deref().ok_or_else(|| {
            ClientError::NotSupported(
                "invoking methods needs a gateway (IOTEDGE_GATEWAYHOSTNAME or GatewayHostName)"
                    .into(),
            )
        })?;
        let token = config.token().await?;
        let user_agent = config.options.user_agent();
        Invoker {
            gateway,
            port: config.options.https_port,
            tls: Arc::clone(&config.endpoint.tls),
            caller: &config.identity,
            token: &token.token,
            user_agent: &user_agent,
        }
        .invoke(&target, &invocation)
        .await
    }
}

/// The configuration of a client.
fn config(
    identity: Identity,
    hub_host: String,
    connect_host: String,
    connect_port: Option<u16>,
    gateway_host: Option<String>,
    credential: Credential,
    options: ClientOptions,
) -> Result<Config, ClientError> {
    let tls = crate::tls::client_config(options.ca_pem.as_deref())?;
    let keep_alive = u16::try_from(options.keep_alive.as_secs()).unwrap_or(u16::MAX);
    let endpoint = Endpoint {
        port: options.port.or(connect_port).unwrap_or(MQTT_PORT),
        host: connect_host,
        tls,
        client_id: identity.client_id(),
        username: topics::username(&hub_host, &identity, &options.user_agent()),
        keep_alive,
        connect_timeout: options.connect_timeout,
    };
    Ok(Config {
        identity,
        hub_host,
        endpoint,
        gateway_host,
        credential,
        options,
    })
}

/// `host:port` → (`host`, `Some(port)`), the rules of `HostName`.
fn split_port(host: &str) -> (String, Option<u16>) {
    let parsed = ConnectionString {
        host_name: host.to_owned(),
        ..ConnectionString::default()
    };
    let (host, port) = parsed.host_and_port();
    (host.to_owned(), port)
}

fn device_id(id: &str) -> Result<DeviceId, ClientError> {
    DeviceId::new(id).map_err(|e| ClientError::Configuration(format!("device id {id:?}: {e}")))
}

fn module_id(id: &str) -> Result<ModuleId, ClientError> {
    ModuleId::new(id).map_err(|e| ClientError::Configuration(format!("module id {id:?}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_port_in_a_host_name_is_split_off() {
        assert_eq!(
            split_port("edge.local:18883"),
            ("edge.local".into(), Some(18883))
        );
        assert_eq!(split_port("127.0.0.9"), ("127.0.0.9".into(), None));
    }

    #[tokio::test]
    async fn a_module_connection_string_cannot_open_a_device_client_and_the_reverse() {
        let module = "HostName=h;DeviceId=d;ModuleId=m;SharedAccessKey=a2V5a2V5a2V5a2V5a2V5a2V5";
        let error = DeviceClient::from_connection_string(module, ClientOptions::default())
            .await
            .unwrap_err();
        assert!(error.to_string().contains("ModuleClient"), "{error}");
        let device = "HostName=h;DeviceId=d;SharedAccessKey=a2V5a2V5a2V5a2V5a2V5a2V5";
        let error = ModuleClient::from_connection_string(device, ClientOptions::default())
            .await
            .unwrap_err();
        assert!(error.to_string().contains("DeviceClient"), "{error}");
    }

    #[tokio::test]
    async fn bad_connection_strings_fail_before_connecting() {
        for (cs, expected) in [
            ("HostName=h;DeviceId=d", "SharedAccessKey"),
            (
                "HostName=h;SharedAccessKeyName=p;SharedAccessKey=k",
                "service connection string",
            ),
            (
                "HostName=h;DeviceId=bad id;SharedAccessKey=a2V5",
                "device id",
            ),
            (
                "HostName=h;DeviceId=d;Bogus=1;SharedAccessKey=a2V5",
                "Bogus",
            ),
        ] {
            let error = DeviceClient::from_connection_string(cs, ClientOptions::default())
                .await
                .unwrap_err();
            assert!(
                matches!(error, ClientError::Configuration(_)),
                "{cs}: {error}"
            );
            assert!(error.to_string().contains(expected), "{cs}: {error}");
        }
        let error = DeviceClient::from_connection_string(
            "HostName=h;DeviceId=d;x509=true",
            ClientOptions::default(),
        )
        .await
        .unwrap_err();
        assert!(matches!(error, ClientError::NotSupported(_)), "{error}");
    }
}
