//! The client: one type, [`Client`], whose identity kind is a type parameter. [`DeviceClient`] and
//! [`ModuleClient`] are that type for a device and for a module; everything a twin, telemetry and direct
//! methods need is written once for both, and only what IoT Hub gives one kind alone (cloud-to-device
//! messages for devices; outputs, inputs and method invocation for modules) is written for that kind, in
//! `device` and `module`.

mod device;
mod module;

use std::marker::PhantomData;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::{mpsc, watch};

use crate::config::{self, Config};
use crate::driver::{Driver, Sinks};
use crate::error::ClientError;
use crate::link::Link;
use crate::message::{Message, MAX_MESSAGE_BYTES};
use crate::methods::MethodCall;
use crate::options::ClientOptions;
use crate::requests::{Command, ConnectionStatus, Requester};
use crate::stream::Incoming;
use crate::topics::{self, Feature};
use crate::twin::{DesiredPatch, Twin};

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
///
/// Code written against `Client<K>` serves devices and modules alike:
///
/// ```no_run
/// use outpost_sdk::{kind::Kind, Client, ClientError, DeviceClient, ModuleClient};
///
/// async fn report_firmware<K: Kind>(client: &Client<K>) -> Result<(), ClientError> {
///     client.patch_reported(serde_json::json!({"firmware": "1.2.0"})).await?;
///     Ok(())
/// }
///
/// # async fn run(device: DeviceClient, module: ModuleClient) -> Result<(), ClientError> {
/// report_firmware(&device).await?;
/// report_firmware(&module).await?;
/// # Ok(()) }
/// ```
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

    /// Connects with a connection string.
    async fn from_parsed(
        connection_string: &str,
        options: ClientOptions,
    ) -> Result<Self, ClientError> {
        Self::open(config::from_connection_string(
            connection_string,
            options,
            K::MODULE,
        )?)
        .await
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
        let payload = message.body;
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

#[cfg(test)]
mod tests {
    use super::*;

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
