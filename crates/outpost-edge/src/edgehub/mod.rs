//! The edge hub: the gateway through which this device's modules and the devices behind it reach the hub.
//!
//! Clients speak the IoT Hub MQTT protocol to `outpost-mqtt`'s protocol head (the same head the hub uses),
//! which calls this module's [`DeviceOperations`]: identities are checked against those cached on the device
//! ([`auth`]); every accepted message is stored once in the durable log and routed by the `$edgeHub` routes
//! ([`router`]); twins are read through to the hub when it answers and served from the cache when it does not,
//! reported patches queue durably ([`store`]); and one upstream [`link`] carries everything to the hub.
//! [`sync`] runs the link's loops; [`methods`] serves the module-to-module method API over HTTPS, on the port
//! that also carries MQTT over WebSocket to the same protocol head.

pub mod auth;
pub mod free_space;
pub mod hub_loop;
pub mod link;
pub mod methods;
pub mod router;
pub mod state;
pub mod store;
pub mod stored;
pub mod sync;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use outpost_core::twin::merge;
use outpost_core::{Identity, Message, Twin};
use outpost_mqtt::{
    ConnectRefusal, ConnectionTable, DeviceOperations, Feature, OperationError, Outbox, Outgoing,
    PartlyAccepted,
};
use serde_json::{json, Map, Value};
use tokio::sync::{watch, Notify};

use crate::config::{DeviceCredentials, EdgeConfig};
use crate::identities::IdentityCache;
use crate::lock;
use auth::{check_token, scoped_identities, ScopeRefreshGate, ScopedIdentity};
use hub_loop::HubLoop;
use link::Link;
use router::Router;
use store::EdgeStore;

/// C2D delivery ids carry this bit, so that a PUBACK tells them apart from input deliveries (whose ids name
/// the endpoint and the log sequence, see [`state`]).
const C2D_DELIVERY: u64 = 1 << 63;

/// The edge hub's state, shared by the gateway, the link loops and the method API.
pub struct EdgeHub {
    /// The daemon's settings.
    pub config: EdgeConfig,
    /// This edge device.
    pub device: DeviceCredentials,
    /// Cached twins, queued reported patches, sessions, scope.
    pub store: EdgeStore,
    /// Module identities the agent created (known before the next scope refresh).
    pub identities: Arc<IdentityCache>,
    /// The routes and the durable log.
    pub router: Router,
    /// The upstream link.
    pub link: Link,
    /// Whether the hub answered the last call. Changed only through [`went_online`](Self::went_online) and
    /// [`went_offline`](Self::went_offline), which tell the state; read with [`is_online`](Self::is_online),
    /// and waited for by the link's loops (none of them polls it).
    online: watch::Sender<bool>,
    /// Held while a change of `online` is told to the state, so that the state learns the changes in order.
    /// A tokio `Mutex`: held across the send.
    link_change: tokio::sync::Mutex<()>,
    /// Connected clients by client id. A std `Mutex`: held to insert, remove or clone, never across `.await`.
    pub connections: ConnectionTable,
    /// Signalled when a reported patch is queued (the link's reported-patch loop waits on it; a permit is kept
    /// while the loop is busy).
    reported_queued: Notify,
    /// The task that owns the edge hub's state: clients, input endpoints, deliveries in flight, and method
    /// calls waiting for their answer (local and forwarded from the hub).
    hub_loop: HubLoop,
    /// Refuses new messages while the disk of the message log is low.
    pub free_space: free_space::FreeSpaceGuard,
    /// What the edge hub and the agent count (records nothing unless `[metrics] listen` is set).
    pub metrics: crate::metrics::EdgeMetrics,
    /// The scope as last cached.
    scope: Mutex<Vec<ScopedIdentity>>,
    /// The hub's CA certificates, from the cached scope (X.509 `certificateAuthority` clients).
    ca_certificates: Mutex<Vec<rustls::pki_types::CertificateDer<'static>>>,
    /// When unknown clients last made the edge hub refresh the scope.
    unknown_client_refresh: Mutex<ScopeRefreshGate>,
}

fn now_unix() -> u64 {
    chrono::Utc::now().timestamp().max(0) as u64
}

/// Merges a desired patch from the hub into a cached twin view `{"desired":..,"reported":..}`, with core's merge
/// (the keys that stay keep their order, as on the hub).
fn merge_desired(view: &mut Value, patch: &Map<String, Value>) {
    if let Some(desired) = view.get_mut("desired").and_then(Value::as_object_mut) {
        merge(desired, patch);
    }
}

/// Why the edge hub cannot start.
#[derive(Debug, thiserror::Error)]
pub enum EdgeHubError {
    /// The settings.
    #[error(transparent)]
    Settings(#[from] crate::config::SettingsError),
    /// The upstream link cannot be set up.
    #[error("the upstream link: {0}")]
    Link(#[from] link::LinkError),
    /// The metrics cannot be set up.
    #[error("the edge hub's metrics: {0}")]
    Metrics(#[from] crate::metrics::MetricsSetupError),
    /// The store of twins, sessions and scope.
    #[error("the edge hub's store: {0}")]
    Store(#[from] store::EdgeStoreError),
    /// Its directory cannot be created.
    #[error("cannot create {path}: {source}")]
    CreateDir {
        /// The directory.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The message log cannot be opened.
    #[error("cannot open the message log: {0}")]
    Log(#[from] outpost_store::log::LogError),
    /// The server certificate cannot be presented.
    #[error("the edge hub's TLS settings: {0}")]
    Tls(#[from] outpost_pki::PkiError),
    /// A listener cannot be bound.
    #[error("the edge hub cannot listen on {address}: {source}")]
    Listen {
        /// The address and port.
        address: String,
        /// Why.
        source: std::io::Error,
    },
}

impl EdgeHub {
    /// Builds the edge hub over its store and log.
    pub fn new(
        config: EdgeConfig,
        identities: Arc<IdentityCache>,
        store: EdgeStore,
        router: Router,
    ) -> Result<Self, EdgeHubError> {
        let device = config.device()?;
        let link = Link::new(&config)?;
        let metrics = crate::metrics::EdgeMetrics::new(&config)?;
        let stored = store.scope()?;
        let scope = stored.as_ref().map(scoped_identities).unwrap_or_default();
        let ca_certificates = stored
            .as_ref()
            .map(auth::scope_ca_certificates)
            .unwrap_or_default();
        // Ends when the hub is dropped, with the last sender of its channel.
        let (hub_loop, _task) = HubLoop::start(router.log().clone(), metrics.clone());
        let free_space = free_space::FreeSpaceGuard::new(
            config.data_dir.join("edgehub").join("log"),
            config.disk.min_free_mib.saturating_mul(1 << 20),
        );
        Ok(Self {
            free_space,
            config,
            device,
            store,
            identities,
            router,
            link,
            online: watch::Sender::new(false),
            link_change: tokio::sync::Mutex::new(()),
            connections: ConnectionTable::default(),
            reported_queued: Notify::new(),
            hub_loop,
            metrics,
            scope: Mutex::new(scope),
            ca_certificates: Mutex::new(ca_certificates),
            unknown_client_refresh: Mutex::new(ScopeRefreshGate::default()),
        })
    }

    /// Replaces the cached scope (from the hub).
    /// Replaces the cached scope (from the hub) and closes the connections of clients whose keys changed, who
    /// were disabled or who left the scope: a session must not outlive the credentials it was opened with.
    pub fn set_scope(&self, scope: &Value) {
        if let Err(error) = self.store.put_scope(scope) {
            tracing::warn!(%error, "cannot persist the device scope");
        }
        *lock(&self.ca_certificates) = auth::scope_ca_certificates(scope);
        let fresh: HashMap<String, ScopedIdentity> = scoped_identities(scope)
            .into_iter()
            .map(|s| (s.client.clone(), s))
            .collect();
        let previous =
            std::mem::replace(&mut *lock(&self.scope), fresh.values().cloned().collect());
        for old in previous {
            if fresh.get(&old.client) == Some(&old) {
                continue;
            }
            if let Some(outbox) = self.outbox(&old.client) {
                tracing::info!(client = %old.client, "credentials changed at the hub: closing its connection");
                outbox.send(Outgoing::Close);
            }
        }
    }

    /// The keys of a client in scope: the scope from the hub, or a module the agent just created.
    fn scoped(&self, identity: &Identity) -> Option<ScopedIdentity> {
        let client = identity.client_id();
        if let Some(found) = lock(&self.scope).iter().find(|s| s.client == client) {
            return Some(found.clone());
        }
        let module = identity
            .module
            .as_ref()
            .filter(|_| identity.device.as_str() == self.device.device_id)?;
        let credentials = self.identities.get(module.as_str())?;
        Some(ScopedIdentity {
            client,
            keys: [credentials.primary_key, credentials.secondary_key]
                .into_iter()
                .filter(|k| !k.is_empty())
                .collect(),
            enabled: true,
            x509: None,
        })
    }

    /// Checks the client certificate chain of a client of this edge hub (MQTT without a password), against the
    /// cached scope and the hub's CA certificates cached with it, so that it works offline.
    pub fn authenticate_certificate(
        &self,
        identity: &Identity,
        chain: &[rustls::pki_types::CertificateDer<'static>],
    ) -> Result<(), auth::AuthError> {
        let cas = lock(&self.ca_certificates).clone();
        auth::check_certificate(
            identity,
            chain,
            self.scoped(identity).as_ref(),
            &cas,
            outpost_pki::unix_now(),
        )
    }

    /// Checks a token of a client of this edge hub (MQTT password or HTTPS `Authorization`).
    pub fn authenticate(&self, identity: &Identity, token: &str) -> Result<(), auth::AuthError> {
        let hosts = [
            self.device.hub_hostname.as_str(),
            self.config.hostname.as_str(),
        ];
        check_token(
            identity,
            token,
            self.scoped(identity).as_ref(),
            &hosts,
            now_unix(),
        )
    }

    /// Whether the upstream link is up (the hub answered the last call).
    pub fn is_online(&self) -> bool {
        *self.online.borrow()
    }

    /// Returns once the upstream link is up (at once if it is).
    pub async fn until_online(&self) {
        let mut online = self.online.subscribe();
        // The sender lives as long as `self`.
        let _ = online.wait_for(|up| *up).await;
    }

    /// Returns once the upstream link is down (at once if it is).
    pub async fn until_offline(&self) {
        let mut online = self.online.subscribe();
        let _ = online.wait_for(|up| !*up).await;
    }

    /// The hub answered: the link is up (the state then declares presence).
    pub async fn went_online(&self) {
        let _in_order = self.link_change.lock().await;
        if !self.online.send_replace(true) {
            self.hub_loop.link(true).await;
        }
    }

    /// The hub did not answer: the link is down until the connectivity loop reaches it again. Whether it was up.
    pub async fn went_offline(&self) -> bool {
        let _in_order = self.link_change.lock().await;
        if !self.online.send_replace(false) {
            return false;
        }
        self.metrics.went_offline();
        self.hub_loop.link(false).await;
        true
    }

    /// `clients` as the hub is told them: with the edge hub's own identity, which listens for its desired
    /// properties (the routes).
    fn with_own_identity(&self, mut clients: state::Presence) -> state::Presence {
        clients.push((
            format!("{}/$edgeHub", self.device.device_id),
            vec!["desired"],
        ));
        clients.sort();
        clients
    }

    /// The outbox of a connected client.
    pub fn outbox(&self, client: &str) -> Option<Outbox> {
        self.connections.get(client)
    }

    /// Who is connected and what each listens for (for the hub's presence and `$edgeHub` reports).
    pub fn presence(&self) -> state::Presence {
        let clients = self
            .connections
            .map(|id, outbox| {
                (!outbox.is_closed()).then(|| {
                    (
                        id.to_owned(),
                        state::feature_names(|f| outbox.subscribed(f)),
                    )
                })
            })
            .into_iter()
            .flatten()
            .collect();
        self.with_own_identity(clients)
    }

    /// The twin of a client: from the hub when it answers (refreshing the cache), else the cached copy.
    pub async fn twin(&self, client: &str) -> Result<Value, OperationError> {
        if self.is_online() {
            match self.link.twin(client).await {
                Ok(view) => {
                    if let Err(error) = self.store.put_twin(client, &view) {
                        tracing::warn!(client, %error, "cannot cache a twin");
                    }
                    return Ok(view);
                }
                Err(link::LinkError::Refused { status, message }) => {
                    return Err(OperationError::new(status, message))
                }
                Err(error) => {
                    tracing::info!(client, %error, "hub unreachable: serving the cached twin");
                    self.went_offline().await;
                }
            }
        }
        match self.store.twin(client) {
            Ok(Some(view)) => Ok(view),
            Ok(None) => Err(OperationError::new(
                503,
                "the hub is unreachable and this twin was never cached",
            )),
            Err(error) => Err(OperationError::new(500, error.to_string())),
        }
    }

    /// Applies a reported patch locally (cache) and queues it for the hub; returns the local reported version.
    pub fn patch_reported_locally(
        &self,
        client: &str,
        patch: &Value,
    ) -> Result<u64, OperationError> {
        let Value::Object(patch_map) = patch else {
            return Err(OperationError::new(
                400,
                "a reported patch must be a JSON object",
            ));
        };
        // The limits are the hub's: refuse here what the hub would refuse, so the queue holds only good patches.
        Twin::new(chrono::Utc::now())
            .patch_reported(patch, chrono::Utc::now())
            .map_err(|e| OperationError::new(400, e.to_string()))?;
        let mut view =
            self.store.twin(client).ok().flatten().unwrap_or_else(
                || json!({"desired": {"$version": 1}, "reported": {"$version": 1}}),
            );
        let reported = view
            .get_mut("reported")
            .and_then(Value::as_object_mut)
            .ok_or_else(|| OperationError::new(500, "corrupt cached twin"))?;
        let version = reported
            .get("$version")
            .and_then(Value::as_u64)
            .unwrap_or(1)
            + 1;
        merge(reported, patch_map);
        reported.insert("$version".into(), version.into());
        self.store
            .queue_reported(client, patch, &view)
            .map_err(|e| OperationError::new(500, e.to_string()))?;
        self.reported_queued.notify_one();
        Ok(version)
    }

    /// Pushes a desired change from the hub to a connected client (and into the cache).
    pub fn desired_changed(&self, client: &str, body: &Value) {
        if let (Ok(Some(mut view)), Value::Object(patch)) = (self.store.twin(client), body) {
            merge_desired(&mut view, patch);
            let _ = self.store.put_twin(client, &view);
        }
        if let Some(outbox) = self.outbox(client) {
            if outbox.subscribed(Feature::DesiredPatches) {
                outbox.send(Outgoing::DesiredPatch { body: body.clone() });
            }
        }
    }
}

impl EdgeHub {
    /// Runs an authentication `check`; when it fails because the identity is not in the cached scope (a device or
    /// module created since the last refresh), refreshes the scope from the hub and checks again, if the hub
    /// answers and no unknown client made it ask in the last few seconds.
    async fn refreshing_scope_for_unknown(
        &self,
        check: impl Fn(&Self) -> Result<(), auth::AuthError>,
    ) -> Result<(), auth::AuthError> {
        let result = check(self);
        if matches!(result, Err(auth::AuthError::NotInScope(_)))
            && self.is_online()
            && lock(&self.unknown_client_refresh).admit(std::time::Instant::now())
        {
            if let Ok(scope) = self.link.scope().await {
                self.set_scope(&scope);
                return check(self);
            }
        }
        result
    }
}

/// [`EdgeHub`] behind an `Arc`, as the protocol head holds it.
pub struct EdgeDevices(pub Arc<EdgeHub>);

impl EdgeDevices {
    /// Stores messages of one client through the routes, hands them to the inputs they go to (delivered while
    /// the fsync runs) and returns once they are durable: only then may their PUBACKs go.
    async fn store(
        &self,
        identity: &Identity,
        messages: Vec<Message>,
    ) -> Result<(), OperationError> {
        // Copied for the metrics only when they are recorded: this runs per message.
        let outputs: Option<Vec<Option<String>>> = self.0.metrics.is_enabled().then(|| {
            messages
                .iter()
                .map(|m| m.system.get("outputName").cloned())
                .collect()
        });
        let mut accepted = self
            .0
            .router
            .accept(identity, messages)
            .await
            .map_err(|e| OperationError::new(503, e.to_string()))?;
        self.0
            .hub_loop
            .stored(std::mem::take(&mut accepted.inputs))
            .await;
        accepted
            .durable()
            .await
            .map_err(|e| OperationError::new(503, e.to_string()))?;
        for output in outputs.into_iter().flatten() {
            self.0
                .metrics
                .message_received(&identity.client_id(), output.as_deref());
        }
        Ok(())
    }
}

#[async_trait]
impl DeviceOperations for EdgeDevices {
    async fn authenticate(
        &self,
        identity: &Identity,
        _username: &str,
        password: Option<&[u8]>,
    ) -> Result<(), ConnectRefusal> {
        let token = password
            .and_then(|p| std::str::from_utf8(p).ok())
            .ok_or(ConnectRefusal::NotAuthorized)?;
        self.0
            .refreshing_scope_for_unknown(|hub| hub.authenticate(identity, token))
            .await
            .map_err(|error| {
                tracing::info!(%identity, %error, "edge hub connection refused");
                ConnectRefusal::NotAuthorized
            })
    }

    async fn authenticate_certificate(
        &self,
        identity: &Identity,
        _username: &str,
        chain: &[rustls::pki_types::CertificateDer<'static>],
    ) -> Result<(), ConnectRefusal> {
        self.0
            .refreshing_scope_for_unknown(|hub| hub.authenticate_certificate(identity, chain))
            .await
            .map_err(|error| {
                tracing::info!(%identity, %error, "edge hub X.509 connection refused");
                ConnectRefusal::NotAuthorized
            })
    }

    async fn connected(&self, identity: &Identity, outbox: Outbox) {
        tracing::info!(%identity, "client connected to the edge hub");
        self.0
            .connections
            .connected(identity.client_id(), outbox.clone());
        self.0
            .hub_loop
            .connected(identity.client_id(), outbox)
            .await;
    }

    async fn disconnected(&self, identity: &Identity, connection: u64) {
        self.0
            .connections
            .disconnected(&identity.client_id(), connection);
        self.0
            .hub_loop
            .disconnected(identity.client_id(), connection)
            .await;
    }

    async fn get_twin(&self, identity: &Identity) -> Result<Value, OperationError> {
        let twin = self.0.twin(&identity.client_id()).await?;
        self.0.metrics.get_twin(&identity.client_id());
        Ok(twin)
    }

    async fn patch_reported(
        &self,
        identity: &Identity,
        patch: Value,
    ) -> Result<u64, OperationError> {
        let version = self
            .0
            .patch_reported_locally(&identity.client_id(), &patch)?;
        self.0.metrics.reported_properties(&identity.client_id());
        Ok(version)
    }

    async fn send_message(
        &self,
        identity: &Identity,
        message: Message,
    ) -> Result<(), OperationError> {
        self.send_messages(identity, vec![message])
            .await
            .map_err(|refused| refused.error)
    }

    async fn send_messages(
        &self,
        identity: &Identity,
        mut messages: Vec<Message>,
    ) -> Result<(), PartlyAccepted> {
        let refused = refuse_oversized(identity, &mut messages);
        // As the `reject` quota policy: no PUBACK, the sender sends again later (the guard logs the change).
        if !self.0.free_space.admits(std::time::Instant::now()) {
            return Err(PartlyAccepted {
                accepted: 0,
                error: OperationError::new(
                    503,
                    "the edge device's disk is low: new messages are refused until there is room",
                ),
            });
        }
        if !messages.is_empty() {
            self.store(identity, messages)
                .await
                .map_err(|error| PartlyAccepted { accepted: 0, error })?;
        }
        refused.map_or(Ok(()), Err)
    }

    async fn method_response(
        &self,
        identity: &Identity,
        connection: u64,
        rid: &str,
        status: i32,
        payload: Vec<u8>,
    ) {
        // Local calls and calls forwarded from the hub wait in the same state (see `methods::forward`); it
        // drops and logs an answer that is not from the target on the connection the request went out on.
        self.0
            .hub_loop
            .method_answered(
                identity.client_id(),
                connection,
                rid.to_owned(),
                status,
                payload,
            )
            .await;
    }

    async fn delivered(&self, identity: &Identity, connection: u64, delivery_id: u64) {
        self.delivered_batch(identity, connection, vec![delivery_id])
            .await;
    }

    async fn delivered_batch(
        &self,
        identity: &Identity,
        connection: u64,
        mut delivery_ids: Vec<u64>,
    ) {
        // The C2D messages are completed at the hub in one request, the inputs' deliveries in one event.
        let c2d: Vec<u64> = delivery_ids
            .iter()
            .filter(|id| *id & C2D_DELIVERY != 0)
            .map(|id| id & !C2D_DELIVERY)
            .collect();
        if !c2d.is_empty() {
            if let Err(error) = self.0.link.delivered(&identity.client_id(), &c2d).await {
                tracing::warn!(%identity, %error, "cannot complete C2D messages at the hub");
            }
        }
        delivery_ids.retain(|id| id & C2D_DELIVERY == 0);
        if !delivery_ids.is_empty() {
            self.0
                .hub_loop
                .acked(identity.client_id(), connection, delivery_ids)
                .await;
        }
    }

    async fn load_subscriptions(&self, client_id: &str) -> Vec<String> {
        self.0.store.session(client_id).unwrap_or_default()
    }

    async fn save_subscriptions(&self, client_id: &str, filters: &[String]) {
        if let Err(error) = self.0.store.put_session(client_id, filters) {
            tracing::warn!(client_id, %error, "cannot persist a session");
        }
    }

    async fn subscriptions_changed(&self, identity: &Identity, _connection: u64) {
        self.0.hub_loop.subscribed(identity.client_id()).await;
    }
}

/// IoT Hub's limit, which the hub applies to every message of a batch: refused here, before the PUBACK, the
/// sender learns of it (its connection closes); accepted, it could only be dead-lettered later. Cuts `messages`
/// before the first one over the limit and says why it is refused.
fn refuse_oversized(identity: &Identity, messages: &mut Vec<Message>) -> Option<PartlyAccepted> {
    let at = messages
        .iter()
        .position(|m| m.body.len() > outpost_sdk::MAX_MESSAGE_BYTES)?;
    let bytes = messages[at].body.len();
    tracing::warn!(%identity, bytes, limit = outpost_sdk::MAX_MESSAGE_BYTES,
        "refused a message over IoT Hub's 256 KB limit: no PUBACK, the connection closes");
    messages.truncate(at);
    Some(PartlyAccepted {
        accepted: at,
        error: OperationError::new(
            413,
            format!(
                "a message of {bytes} bytes is over IoT Hub's limit of {} bytes",
                outpost_sdk::MAX_MESSAGE_BYTES
            ),
        ),
    })
}

/// Marks a C2D delivery id.
pub fn c2d_delivery(id: u64) -> u64 {
    id | C2D_DELIVERY
}

/// Issues the edge hub's server certificate from the edge CA: named `hostname`, the listen `addresses` and
/// `localhost`, valid for `[certificates] server_cert_lifetime`, its chain written to `pki/edge-hub.pem`.
pub fn server_certificate(
    config: &EdgeConfig,
    ca: &outpost_pki::CertificateAuthority,
    addresses: &[std::net::IpAddr],
    now: i64,
) -> Result<outpost_pki::ServerCertificate, outpost_pki::PkiError> {
    let names: Vec<String> = addresses.iter().map(ToString::to_string).collect();
    let others: Vec<&str> = names
        .iter()
        .map(String::as_str)
        .filter(|n| *n != config.hostname)
        .chain(["localhost"])
        .collect();
    outpost_pki::ServerCertificate::issue(
        ca,
        "edge hub server",
        &config.hostname,
        &others,
        config.certificates.server_cert_lifetime,
        config.data_dir.join("pki").join(SERVER_CERTIFICATE_FILE),
        now,
    )
}

/// The edge hub's server certificate chain in the edge's `pki/` directory (what `outpost edge check` reads).
pub const SERVER_CERTIFICATE_FILE: &str = "edge-hub.pem";

/// Starts the edge hub: its store and log, the routes last known, the link loops, and the MQTT and HTTPS
/// listeners on `addresses` (the configured listen address, and the Docker network's gateway when there is one).
pub async fn start(
    config: &EdgeConfig,
    identities: Arc<IdentityCache>,
    server_certificate: &outpost_pki::ServerCertificate,
    addresses: &[std::net::IpAddr],
) -> Result<Arc<EdgeHub>, EdgeHubError> {
    let dir = config.data_dir.join("edgehub");
    std::fs::create_dir_all(&dir).map_err(|source| EdgeHubError::CreateDir {
        path: dir.display().to_string(),
        source,
    })?;
    let store = EdgeStore::open(&dir.join("edgehub.sqlite"))?;
    let log = outpost_store::log::MessageLog::open(dir.join("log"), config.store.log_options())?;
    let listen = |port: u16, address: std::net::IpAddr| {
        move |source| EdgeHubError::Listen {
            address: format!("{address}:{port}"),
            source,
        }
    };
    let device = config.device()?;
    let router = Router::new(&device.device_id, log);
    let hub = Arc::new(EdgeHub::new(config.clone(), identities, store, router)?);
    router::refresh_configuration(&hub).await;
    sync::start(&hub);

    // Every listener presents the certificate as renewed (the daemon's renewal task swaps it).
    let tls = server_certificate.tls_config()?;
    // The MQTT listeners alone ask for an optional client certificate (downstream devices and modules with X.509).
    let mqtt_tls = server_certificate.tls_config_requesting_client_certificates()?;
    for address in addresses {
        let mqtt = tokio::net::TcpListener::bind((*address, config.edge_mqtt_port))
            .await
            .map_err(listen(config.edge_mqtt_port, *address))?;
        let devices = Arc::new(EdgeDevices(hub.clone()));
        let mut server = outpost_mqtt::ServerConfig::new(mqtt_tls.clone());
        // A module's session lets its endpoint's whole window of input messages be in flight.
        server.session.max_inflight = u16::try_from(state::INPUT_WINDOW).unwrap_or(u16::MAX);
        let max_packet_size = server.max_packet_size;
        // MQTT over WebSocket: the HTTPS listener upgrades, the MQTT server serves (under its cap).
        let (websockets, handed) = outpost_mqtt::server::handoff();
        tokio::spawn(async move {
            let served = outpost_mqtt::server::serve_with_handoff(
                mqtt,
                server,
                devices,
                handed,
                std::future::pending(),
            );
            if let Err(error) = served.await {
                tracing::error!(%error, "the edge hub's MQTT listener stopped");
            }
        });
        let https = tokio::net::TcpListener::bind((*address, config.edge_https_port))
            .await
            .map_err(listen(config.edge_https_port, *address))?;
        let mut https_tls = (*tls).clone();
        https_tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        tokio::spawn(methods::serve(
            hub.clone(),
            https,
            tokio_rustls::TlsAcceptor::from(Arc::new(https_tls)),
            outpost_https::websocket::mqtt_over_websocket(websockets, max_packet_size),
        ));
        tracing::info!(%address, mqtt = config.edge_mqtt_port, https = config.edge_https_port, "edge hub listening");
    }
    Ok(hub)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_is_cut_before_its_first_message_over_iot_hubs_limit() {
        let identity = Identity::device(outpost_core::DeviceId::new("leaf").unwrap());
        let sized = |bytes: usize| Message {
            body: vec![b'x'; bytes].into(),
            ..Message::default()
        };
        let limit = outpost_sdk::MAX_MESSAGE_BYTES;
        let mut messages = vec![sized(10), sized(limit), sized(limit + 1), sized(10)];
        let refused = refuse_oversized(&identity, &mut messages).expect("one is over the limit");
        assert_eq!(refused.accepted, 2);
        assert_eq!(refused.error.status, 413);
        assert_eq!(
            messages.iter().map(|m| m.body.len()).collect::<Vec<_>>(),
            [10, limit]
        );

        let mut messages = vec![sized(10), sized(limit)];
        assert_eq!(refuse_oversized(&identity, &mut messages), None);
        assert_eq!(messages.len(), 2);
    }

    #[test]
    fn a_desired_patch_keeps_the_order_of_the_cached_twins_keys() {
        let mut view = json!({
            "desired": {"first": 1, "second": 2, "third": 3, "$version": 4},
            "reported": {"$version": 1},
        });
        let patch = json!({"first": null, "fourth": 4, "$version": 5});
        merge_desired(&mut view, patch.as_object().unwrap());
        // A swap-remove would have moved `$version` into `first`'s place.
        assert_eq!(
            serde_json::to_string(&view["desired"]).unwrap(),
            r#"{"second":2,"third":3,"$version":5,"fourth":4}"#
        );
    }
}
