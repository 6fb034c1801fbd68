//! Routing and store-and-forward: every accepted message is stored once in the durable log, addressed to the
//! endpoints its `$edgeHub` routes choose (`$upstream`, module inputs), each with its priority and expiry;
//! each endpoint reads the log with its own cursor.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, RwLock};

use bytes::BytesMut;
use tokio::sync::Notify;

use outpost_core::route::{MessageSource, Route, Sink};
use outpost_core::{EdgeHubDesired, Identity, Message};
use outpost_store::log::{Appending, EndpointQueue, LogError, MessageLog, Record, Target};
use serde_json::{json, Value};

use super::state::InputRoute;
use super::stored::{self, Stored};
use super::EdgeHub;
use crate::lock;

/// Why a `$edgeHub` configuration is refused (reported as its `lastDesiredStatus` 400).
#[derive(Debug, thiserror::Error)]
pub enum RoutesError {
    /// The desired properties are not an `$edgeHub` configuration.
    #[error(transparent)]
    Desired(#[from] outpost_core::ManifestError),
    /// A route does not parse.
    #[error("route {name}: {source}")]
    Route {
        /// The route's name.
        name: String,
        /// Why.
        source: outpost_core::RouteError,
    },
}
/// The endpoint of the cloud.
pub const UPSTREAM: &str = "$upstream";

/// One route in force.
struct ActiveRoute {
    route: Route,
    /// The name of its sink's endpoint in the log, made once rather than for every message.
    endpoint: Arc<str>,
    priority: u32,
    /// 0: the store-and-forward TTL.
    ttl_secs: u64,
}

/// The routes in force.
#[derive(Default)]
struct RouteTable {
    routes: Vec<(String, ActiveRoute)>,
    default_ttl_secs: u64,
    /// Some route has a condition, which may read the system properties the edge hub sets on a message: only
    /// then are they set in the message before its routes are matched (otherwise they go straight into its
    /// record).
    conditions: bool,
}

/// What a record takes besides its body, for the size of the buffer a batch's records are encoded into (an
/// estimate: `stored::encode_into` reserves what each needs).
const RECORD_ALLOWANCE: usize = 256;

/// The most a batch's records share of one buffer.
const SHARED_RECORDS_BYTES: usize = 64 << 10;

impl RouteTable {
    /// The endpoints the routes choose for `message` from `origin`, each once, with its route's priority and
    /// expiry (`now` plus the route's TTL, or the default; 0 for none).
    fn targets(&self, origin: &Origin, message: &Message, now: u64) -> Vec<Target> {
        let mut targets: Vec<Target> = Vec::new();
        for (_, active) in &self.routes {
            if !active
                .route
                .matches_at(&origin.path, &origin.source, message)
            {
                continue;
            }
            if targets.iter().any(|t| t.endpoint == active.endpoint) {
                continue;
            }
            let ttl = if active.ttl_secs == 0 {
                self.default_ttl_secs
            } else {
                active.ttl_secs
            };
            let expiry = if ttl == 0 { 0 } else { now + ttl * 1000 };
            targets.push(Target {
                endpoint: active.endpoint.clone(),
                priority: active.priority,
                expiry_unix_ms: expiry,
            });
        }
        targets
    }
}

/// Where a message entered, as routes match it: made once for the messages of a batch that one sender sent on
/// one output (the usual batch), not once per message.
struct Origin {
    output: Option<String>,
    source: MessageSource,
    path: String,
    /// The targets of this origin's messages, once made, when the routes in force have no condition.
    targets: Option<Arc<[Target]>>,
}

impl Origin {
    fn of(module: Option<&str>, message: &Message, last: Option<Self>) -> Self {
        let output = message.system.get("outputName");
        match last {
            Some(last) if last.output.as_ref() == output => last,
            _ => {
                let source = MessageSource::from_sender(module, output.map(String::as_str));
                Self {
                    output: output.cloned(),
                    path: source.path(),
                    source,
                    targets: None,
                }
            }
        }
    }
}

/// Messages the router stored: readable by their endpoints, durable once [`Accepted::durable`] says so.
pub struct Accepted {
    /// The module input endpoints they were stored for, each once (`$upstream` left out).
    pub inputs: Vec<Arc<str>>,
    /// None when no route took any.
    append: Option<Appending>,
}

impl Accepted {
    /// Resolves once the messages are fsync'd: their sender's PUBACKs may go.
    pub async fn durable(self) -> Result<(), LogError> {
        match self.append {
            Some(append) => append.durable().await.map(drop),
            None => Ok(()),
        }
    }
}

/// The router and its log.
pub struct Router {
    device_id: String,
    log: MessageLog,
    upstream: EndpointQueue,
    /// A std `RwLock`: swapped whole when the routes change, read for every message.
    table: RwLock<Arc<RouteTable>>,
    /// Clients last reported in `$edgeHub`'s `clients`.
    reported_clients: Mutex<BTreeMap<String, bool>>,
    /// Held by [`refresh_configuration`] from its read of the twin to the routes' installation: the link's
    /// catch-up and a pushed change may refresh at once, and the older read must not be installed last. A
    /// tokio `Mutex`: held across the twin read.
    refreshing: tokio::sync::Mutex<()>,
    /// Signalled when a message is stored for `$upstream` (a permit is kept while the link's loop is busy, so
    /// no message waits for its next look).
    upstream_stored: Notify,
}

fn now_ms() -> u64 {
    chrono::Utc::now().timestamp_millis().max(0) as u64
}

impl Router {
    /// A router over `log` with no routes yet (until the `$edgeHub` desired properties are read).
    pub fn new(device_id: &str, log: MessageLog) -> Self {
        let upstream = log.endpoint(UPSTREAM);
        Self {
            device_id: device_id.to_owned(),
            log,
            upstream,
            table: RwLock::new(Arc::new(RouteTable {
                routes: Vec::new(),
                default_ttl_secs: 7200,
                conditions: false,
            })),
            reported_clients: Mutex::new(BTreeMap::new()),
            upstream_stored: Notify::new(),
            refreshing: tokio::sync::Mutex::new(()),
        }
    }

    /// The log (for its counters).
    pub fn log(&self) -> &MessageLog {
        &self.log
    }

    /// Parses and installs the routes of the `$edgeHub` desired properties; on error the old routes stay.
    pub fn configure(&self, desired: &Value) -> Result<usize, RoutesError> {
        let config = EdgeHubDesired::from_desired(desired)?;
        let mut routes = Vec::new();
        for (name, spec) in &config.routes {
            let route = Route::parse(&spec.route).map_err(|source| RoutesError::Route {
                name: name.clone(),
                source,
            })?;
            let endpoint = match &route.sink {
                Sink::Upstream => Arc::from(UPSTREAM),
                Sink::ModuleInput { module, input } => {
                    self.endpoint_name(module.as_str(), input).into()
                }
            };
            routes.push((
                name.clone(),
                ActiveRoute {
                    endpoint,
                    route,
                    priority: spec.priority,
                    ttl_secs: spec.time_to_live_secs,
                },
            ));
        }
        let count = routes.len();
        let table = RouteTable {
            conditions: routes.iter().any(|(_, r)| r.route.condition.is_some()),
            routes,
            default_ttl_secs: config.store_and_forward_ttl_secs,
        };
        *self
            .table
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(table);
        Ok(count)
    }

    fn endpoint_name(&self, module: &str, input: &str) -> String {
        format!("{}/{module}/{input}", self.device_id)
    }

    /// The module inputs the routes in force feed.
    pub fn input_routes(&self) -> Vec<InputRoute> {
        let table = self
            .table
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let mut inputs: Vec<InputRoute> = Vec::new();
        for (_, active) in &table.routes {
            if let Sink::ModuleInput { module, input } = &active.route.sink {
                let endpoint: Arc<str> = self.endpoint_name(module.as_str(), input).into();
                if inputs.iter().all(|i| i.endpoint != endpoint) {
                    inputs.push(InputRoute {
                        endpoint,
                        client: format!("{}/{module}", self.device_id).into(),
                        input: input.as_str().into(),
                        topic: outpost_mqtt::topic::input_prefix(
                            self.device_id.as_str(),
                            module.as_str(),
                            input,
                        )
                        .into(),
                    });
                }
            }
        }
        inputs
    }

    /// Stores messages (of one sender, in its order) for the endpoints their routes choose, in one append;
    /// returns once the endpoints can read them, with the module input endpoints they were stored for and the
    /// append, which says when they are durable (only then may the sender's PUBACKs go). A message no route
    /// takes is accepted and dropped, as IoT Edge does.
    pub async fn accept(
        &self,
        identity: &Identity,
        messages: Vec<Message>,
    ) -> Result<Accepted, LogError> {
        let table = self
            .table
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let now = now_ms();
        // One time for the messages read together: they arrived together.
        let mut enqueued: Option<String> = None;
        let client = identity.client_id();
        let module = identity.module.as_ref().map(outpost_core::ModuleId::as_str);
        let mut records = Vec::with_capacity(messages.len());
        // The records of the batch, one after the other in one buffer that each is split off (up to 64 KiB: past
        // it, `encode_into` starts another).
        let mut encoded = BytesMut::with_capacity(
            messages
                .iter()
                .map(|m| m.body.len() + RECORD_ALLOWANCE)
                .sum::<usize>()
                .min(SHARED_RECORDS_BYTES),
        );
        let mut inputs: Vec<Arc<str>> = Vec::new();
        let mut upstream = false;
        let mut origin: Option<Origin> = None;
        let device = identity.device.as_str();
        for mut message in messages {
            // What the edge hub says of the message, over anything its sender said: who sent it and when it
            // arrived (unless it says so already).
            let mut stamped = [("connectionDeviceId", device), ("", ""), ("", "")];
            let mut count = 1;
            if let Some(module) = module {
                stamped[count] = ("connectionModuleId", module);
                count += 1;
            }
            if !message.system.contains_key("enqueuedTime") {
                let time = enqueued.get_or_insert_with(|| chrono::Utc::now().to_rfc3339());
                stamped[count] = ("enqueuedTime", time.as_str());
                count += 1;
            }
            let mut stamped = &stamped[..count];
            if table.conditions {
                for (name, value) in stamped {
                    message
                        .system
                        .insert((*name).to_owned(), (*value).to_owned());
                }
                stamped = &[];
            }
            let mut from = Origin::of(module, &message, origin.take());
            // Without conditions a message's targets depend only on where it came from.
            let targets = if let Some(targets) = &from.targets {
                Arc::clone(targets)
            } else {
                let targets: Arc<[Target]> = table.targets(&from, &message, now).into();
                for target in &*targets {
                    if &*target.endpoint == UPSTREAM {
                        upstream = true;
                    } else if !inputs.contains(&target.endpoint) {
                        inputs.push(target.endpoint.clone());
                    }
                }
                if !table.conditions {
                    from.targets = Some(Arc::clone(&targets));
                }
                targets
            };
            origin = Some(from);
            if targets.is_empty() {
                tracing::debug!(%identity, "no route takes this message");
                continue;
            }
            stored::encode_into(&mut encoded, &client, &message, stamped);
            records.push(Record::routed(encoded.split().freeze(), targets));
        }
        if records.is_empty() {
            return Ok(Accepted {
                inputs: Vec::new(),
                append: None,
            });
        }
        let mut append = self.log.append_readable_first(records);
        append.readable().await?;
        if upstream {
            self.upstream_stored.notify_one();
        }
        Ok(Accepted {
            inputs,
            append: Some(append),
        })
    }

    /// Returns once a message was stored for `$upstream` since the last return, or after `at_most`.
    pub async fn upstream_stored(&self, at_most: std::time::Duration) {
        let _ = tokio::time::timeout(at_most, self.upstream_stored.notified()).await;
    }

    /// The next messages for the hub, oldest (and most urgent) first: `(seq, sender, message)`.
    pub fn upstream_batch(&self, max: usize) -> Vec<(u64, String, Message)> {
        match self.upstream.next_batch(max) {
            Ok(deliveries) => deliveries
                .into_iter()
                .filter_map(|d| match Stored::decode(&d.payload) {
                    Ok(stored) => Some((d.seq, stored.client, stored.message)),
                    Err(error) => {
                        // Reading it again would not make it decode: it leaves the queue, counted.
                        tracing::error!(seq = d.seq, %error, "a stored upstream message does not decode: dead-lettered");
                        self.upstream.dead_letter(d.seq);
                        None
                    }
                })
                .collect(),
            Err(error) => {
                tracing::error!(%error, "cannot read the upstream queue");
                Vec::new()
            }
        }
    }

    /// The hub stored these.
    pub fn upstream_sent(&self, seqs: Vec<u64>) {
        for seq in seqs {
            self.upstream.ack(seq);
        }
    }

    /// The hub refused this one message by itself: it leaves the queue counted as dead-lettered, not
    /// delivered (the caller counts it durably and logs the reason).
    pub fn upstream_dead_letter(&self, seq: u64) {
        self.upstream.dead_letter(seq);
    }

    /// The hub did not answer: the batch goes again, in order.
    pub fn upstream_retry(&self) {
        self.upstream.rewind();
    }
}

/// Reads the `$edgeHub` desired properties (from the hub, or the cache while offline), applies the routes and
/// reports the outcome in `$edgeHub`'s reported properties.
pub async fn refresh_configuration(hub: &EdgeHub) {
    let _refreshing = hub.router.refreshing.lock().await;
    let client = format!("{}/$edgeHub", hub.device.device_id);
    let Ok(view) = hub.twin(&client).await else {
        return tracing::info!("no $edgeHub configuration yet: no routes");
    };
    let mut desired = view.get("desired").cloned().unwrap_or(Value::Null);
    let version = desired.get("$version").and_then(Value::as_u64).unwrap_or(0);
    if let Some(object) = desired.as_object_mut() {
        object.remove("$version");
        object.remove("$metadata");
        if object.is_empty() {
            return;
        }
    }
    let status = match hub.router.configure(&desired) {
        Ok(count) => {
            tracing::info!(routes = count, version, "routes in force");
            hub.hub_loop.routes(hub.router.input_routes()).await;
            json!({"code": 200, "description": ""})
        }
        Err(error) => {
            tracing::warn!(%error, version, "refused the $edgeHub configuration; the previous routes stay in force");
            json!({"code": 400, "description": error.to_string()})
        }
    };
    let report = json!({"schemaVersion": "1.0", "lastDesiredVersion": version, "lastDesiredStatus": status,
                        "version": {"version": env!("CARGO_PKG_VERSION")}});
    if let Err(error) = hub.patch_reported_locally(&client, &report) {
        tracing::warn!(%error, "cannot report the $edgeHub status");
    }
}

/// The key of a client in `$edgeHub`'s `clients` (AZURE-COMPAT §5.4).
fn client_key(client: &str) -> String {
    client
        .replace('.', "%2E")
        .replace('$', "%24")
        .replace(' ', "%20")
}

/// Reports the connection status of the edge hub's clients in `$edgeHub`'s reported properties: modules that
/// leave stay as `Disconnected`, leaf devices that leave are removed.
pub fn report_clients(hub: &EdgeHub, presence: &[(String, Vec<&'static str>)]) {
    let now = chrono::Utc::now().to_rfc3339();
    let connected: BTreeMap<String, bool> = presence
        .iter()
        .filter(|(id, _)| !id.ends_with("/$edgeHub"))
        .map(|(id, _)| (id.clone(), id.contains('/')))
        .collect();
    let mut previous = lock(&hub.router.reported_clients);
    let mut clients = serde_json::Map::new();
    for (id, is_module) in previous.iter() {
        if !connected.contains_key(id) {
            let value = if *is_module {
                json!({"status": "Disconnected", "lastDisconnectedTimeUtc": now})
            } else {
                Value::Null
            };
            clients.insert(client_key(id), value);
        }
    }
    for id in connected.keys() {
        if !previous.contains_key(id) {
            clients.insert(
                client_key(id),
                json!({"status": "Connected", "lastConnectedTimeUtc": now}),
            );
        }
    }
    *previous = connected;
    drop(previous);
    if clients.is_empty() {
        return;
    }
    let client = format!("{}/$edgeHub", hub.device.device_id);
    if let Err(error) = hub.patch_reported_locally(&client, &json!({"clients": clients})) {
        tracing::warn!(%error, "cannot report the edge hub's clients");
    }
}

#[cfg(test)]
mod tests;
