//! Twins and deployments: reading twins, service updates of tags and desired properties (merge or replace, with
//! etags), device updates of reported properties, and deployment manifests written into module twins.

use std::sync::Arc;

use chrono::Utc;
use outpost_core::{DeploymentManifest, Identity, ModuleId, Twin, TwinError};
use outpost_mqtt::Outgoing;
use serde_json::{Map, Value};

use crate::connections::Connections;
use crate::error::HubError;
use crate::eventhub::{twin_change_body, EventHubState, TwinChanges, TwinOperation};
use crate::fleet::schedule::{Change, FleetSignal};
use crate::registry::{device_id, module_id, Precondition};
use crate::storage::Tables;
use crate::stream::Appended;
use crate::writer::Storage;

mod documents;
pub use documents::{DocumentKey, DOCUMENT_PAGE};

/// A service write to a twin: tags and/or desired properties.
#[derive(Debug, Clone, Default)]
pub struct TwinWrite {
    /// New tags (merged, or replacing all with `replace`).
    pub tags: Option<Value>,
    /// New desired properties (merged, or replacing all with `replace`).
    pub desired: Option<Value>,
    /// Replace instead of merge (PUT instead of PATCH).
    pub replace: bool,
}

impl TwinWrite {
    /// Reads the body of a twin PATCH or PUT: `{"tags":{..},"properties":{"desired":{..}}}`.
    pub fn from_body(body: &Value, replace: bool) -> Result<Self, HubError> {
        let object = body.as_object().ok_or_else(|| {
            HubError::ArgumentInvalid("the twin body must be a JSON object".into())
        })?;
        let mut write = Self {
            replace,
            ..Self::default()
        };
        if let Some(tags) = object.get("tags").filter(|t| !t.is_null()) {
            write.tags = Some(tags.clone());
        }
        if let Some(properties) = object.get("properties").filter(|p| !p.is_null()) {
            let properties = properties.as_object().ok_or_else(|| {
                HubError::ArgumentInvalid("twin properties must be a JSON object".into())
            })?;
            if properties.get("reported").is_some_and(|r| !r.is_null()) {
                return Err(HubError::ArgumentInvalid(
                    "reported properties can only be written by the device".into(),
                ));
            }
            if let Some(desired) = properties.get("desired").filter(|d| !d.is_null()) {
                write.desired = Some(desired.clone());
            }
        }
        Ok(write)
    }
}

/// A twin with the identity fields that its REST form shows.
pub struct TwinView {
    /// The twin.
    pub twin: Twin,
    /// The device.
    pub device: crate::identity::DeviceRecord,
    /// The module, for a module twin.
    pub module: Option<crate::identity::ModuleRecord>,
    /// Whether the twin's identity is connected now.
    pub connected: bool,
    /// The automatic configurations that target the twin (`{"ID": {"status": "Applied"}}`), if any.
    pub configurations: Option<Value>,
}

/// A twin as stored, with the records of its identity.
pub(crate) struct StoredTwin {
    twin: Twin,
    device: crate::identity::DeviceRecord,
    module: Option<crate::identity::ModuleRecord>,
    configurations: Option<Value>,
}

/// The `opType` of a service write.
fn operation(replace: bool) -> TwinOperation {
    if replace {
        TwinOperation::Replace
    } else {
        TwinOperation::Update
    }
}

fn twin_error(error: &TwinError) -> HubError {
    HubError::ArgumentInvalid(format!("the twin update was refused: {error}"))
}

/// The twins service: twins and deployments, stored through the storage handle with their twin change events;
/// desired changes are pushed to the identity's connection, here or through the replica that holds it.
#[derive(Clone)]
pub struct Twins {
    storage: Storage,
    connections: Connections,
    /// Where twin change events go, and whose readers wake once they commit.
    stream: Arc<EventHubState>,
    /// Told of the changes that can change what automatic configurations give a device.
    fleet: FleetSignal,
}

impl Twins {
    /// The twins over `storage`, pushing desired changes to `connections`, appending to `stream` and telling
    /// `fleet` of the changes that automatic configurations depend on.
    pub(crate) fn new(
        storage: Storage,
        connections: Connections,
        stream: Arc<EventHubState>,
        fleet: FleetSignal,
    ) -> Self {
        Self {
            storage,
            connections,
            stream,
            fleet,
        }
    }

    /// The storage handle the twins are kept in.
    pub(crate) fn storage(&self) -> &Storage {
        &self.storage
    }

    /// The connection table (and, with replicas, the other replicas' connections).
    pub(crate) fn connections(&self) -> &Connections {
        &self.connections
    }

    /// Wakes the readers of twin change events and pushes desired patches, once a transaction that made them
    /// committed.
    pub(crate) fn committed(&self, appended: &[Appended], notifications: Vec<(Identity, Value)>) {
        self.streamed(appended);
        for (identity, body) in notifications {
            self.notify_desired(&identity, body);
        }
    }

    /// The source of twin change events, to append them inside a transaction.
    pub(crate) fn twin_changes(&self) -> TwinChanges {
        self.stream.twin_changes()
    }

    /// Wakes the readers of the events `appended`; call after their transaction committed.
    fn streamed(&self, appended: &[Appended]) {
        self.stream
            .streamed(appended, self.connections.replicas().map(Arc::as_ref));
    }

    /// Reads the twin of a device (`module` `None`) or a module, with its identity.
    pub async fn twin(&self, device: &str, module: Option<&str>) -> Result<TwinView, HubError> {
        let identity = Identity {
            device: device_id(device)?,
            module: module.map(module_id).transpose()?,
        };
        let read = identity.clone();
        let stored = self
            .storage
            .read(move |tables| twin_for_update(tables, &read))
            .await?;
        Ok(self.view(&identity, stored).await)
    }

    /// The view of a twin read (or written) with its identity's records.
    async fn view(&self, identity: &Identity, stored: StoredTwin) -> TwinView {
        TwinView {
            twin: stored.twin,
            device: stored.device,
            module: stored.module,
            connected: self.connections.is_connected_anywhere(identity).await,
            configurations: stored.configurations,
        }
    }

    /// Applies a service write to a twin and notifies the connected device of desired changes.
    ///
    /// The write is group-committed by the storage writer; the answer and the device's notification come only
    /// after its commit is on disk.
    pub async fn write_twin(
        &self,
        device: &str,
        module: Option<&str>,
        write: &TwinWrite,
        precondition: &Precondition,
    ) -> Result<TwinView, HubError> {
        let identity = Identity {
            device: device_id(device)?,
            module: module.map(module_id).transpose()?,
        };
        let job = {
            let (identity, write, precondition) =
                (identity.clone(), write.clone(), precondition.clone());
            let changes = self.stream.twin_changes();
            move |tx: &mut dyn Tables| service_write(tx, &identity, &write, &precondition, &changes)
        };
        // The answer is the twin the job wrote, as committed: no second read.
        let (stored, notification, appended) = self.storage.write(job).await?;
        self.streamed(appended.as_slice());
        // Tags (and, for conditions that read them, desired properties) decide what configurations target.
        self.fleet
            .changed(Change::Device(identity.device.to_string()));
        if let Some(body) = notification {
            self.notify_desired(&identity, body);
        }
        Ok(self.view(&identity, stored).await)
    }

    /// Applies a reported patch from the device itself, group-committed by the storage writer; returns the new
    /// reported `$version` once it is on disk.
    pub async fn report(&self, identity: &Identity, patch: &Value) -> Result<u64, HubError> {
        let job = {
            let (identity, patch) = (identity.clone(), patch.clone());
            let changes = self.stream.twin_changes();
            move |tx: &mut dyn Tables| reported_write(tx, &identity, &patch, &changes)
        };
        let (version, appended) = self.storage.write(job).await?;
        self.streamed(appended.as_slice());
        self.fleet
            .changed(Change::Device(identity.device.to_string()));
        Ok(version)
    }

    /// The twin a device or module sees (`{"desired":..,"reported":..}`).
    pub async fn device_view(&self, identity: &Identity) -> Result<Value, HubError> {
        let identity = identity.clone();
        self.storage
            .read(move |tables| {
                let twin = tables
                    .twin(&identity.device, identity.module.as_ref())?
                    .ok_or_else(|| HubError::DeviceNotFound(identity.to_string()))?;
                Ok(twin.device_view())
            })
            .await
    }

    /// Applies a deployment manifest to an edge device: each entry of `modulesContent` replaces that module
    /// twin's desired properties. As in IoT Hub, the content for a module whose identity does not exist yet
    /// waits in the stored deployment and lands in its twin when the edge runtime creates the identity.
    pub async fn apply_configuration(&self, device: &str, content: &Value) -> Result<(), HubError> {
        let device_id = device_id(device)?;
        let manifest = DeploymentManifest::from_json(content)
            .map_err(|e| HubError::InvalidConfigurationContent(e.to_string()))?;
        let changes = self.stream.twin_changes();
        let (notifications, appended) = self
            .storage
            .write(move |tx| apply_manifest(tx, &device_id, &manifest, &changes))
            .await?;
        self.fleet.changed(Change::Device(device.to_owned()));
        self.streamed(&appended);
        for (identity, body) in notifications {
            self.notify_desired(&identity, body);
        }
        Ok(())
    }

    /// Pushes a desired patch to `identity`: on its connection here, or through the replica that holds it.
    pub(crate) fn notify_desired(&self, identity: &Identity, body: Value) {
        if self.connections.outbox(identity).is_some() {
            self.notify_desired_here(identity, body);
        } else if let Some(replicas) = self.connections.replicas() {
            replicas.tell(crate::replicas::Notice::Desired {
                client_id: identity.client_id(),
                body,
            });
        }
    }

    /// Pushes a desired patch to `identity`'s connection here, if it has one that listens.
    pub(crate) fn notify_desired_here(&self, identity: &Identity, body: Value) {
        if let Some(outbox) = self.connections.outbox(identity) {
            if outbox.subscribed(outpost_mqtt::Feature::DesiredPatches) {
                outbox.send(Outgoing::DesiredPatch { body });
            }
        }
    }
}

/// Applies a deployment manifest to an edge device inside the caller's transaction: each module twin's desired
/// properties are replaced, and the manifest is recorded for the modules whose identities come later. Returns
/// the desired notifications to push and the twin change events, once it commits.
pub(crate) fn apply_manifest(
    tx: &mut dyn Tables,
    device_id: &outpost_core::DeviceId,
    manifest: &DeploymentManifest,
    changes: &TwinChanges,
) -> Result<crate::fleet::evaluate::Written, HubError> {
    let device = device_id.as_str();
    let mut notifications = Vec::new();
    let mut appended = Vec::new();
    let record = tx
        .device(device_id)?
        .ok_or_else(|| HubError::DeviceNotFound(device.to_owned()))?;
    if !record.iot_edge {
        return Err(HubError::ArgumentInvalid(format!(
            "{device} is not an edge device"
        )));
    }
    // Validate every twin change first, so that a refused one leaves all twins as they were.
    let mut updates = Vec::new();
    for (name, desired) in &manifest.modules_content {
        let module = module_id(name)?;
        let existing = tx.twin(device_id, Some(&module))?;
        let exists = existing.is_some() && tx.module(device_id, &module)?.is_some();
        let mut twin = existing.unwrap_or_else(|| Twin::new(Utc::now()));
        let body = twin
            .replace_desired(desired, Utc::now())
            .map_err(|e| HubError::InvalidConfigurationContent(format!("module {name}: {e}")))?;
        if exists {
            updates.push((module, twin, body));
        }
    }
    for (module, twin, body) in updates {
        tx.put_twin(device_id, Some(&module), &twin)?;
        let identity = Identity::module(device_id.clone(), module);
        let change = twin_change_body(twin.version(), None, Some(&body), None);
        appended.extend(changes.append(tx, &identity, TwinOperation::Replace, &change)?);
        notifications.push((identity, body));
    }
    let normalized = serde_json::json!({"modulesContent": manifest.modules_content});
    tx.put_deployment(device_id, &normalized)?;
    Ok::<_, HubError>((notifications, appended))
}

/// Reads a twin (to change it) with its identity's records, refusing an identity that does not exist.
pub(crate) fn twin_for_update(
    tx: &mut dyn Tables,
    identity: &Identity,
) -> Result<StoredTwin, HubError> {
    let device = tx
        .device(&identity.device)?
        .ok_or_else(|| HubError::DeviceNotFound(identity.device.to_string()))?;
    let module = match &identity.module {
        Some(module) => Some(
            tx.module(&identity.device, module)?
                .ok_or_else(|| HubError::ModuleNotFound(module.to_string()))?,
        ),
        None => None,
    };
    let twin = tx
        .twin(&identity.device, identity.module.as_ref())?
        .unwrap_or_else(|| Twin::new(Utc::now()));
    let key = identity
        .module
        .as_ref()
        .map_or(crate::fleet::assign::DEVICE_TWIN, ModuleId::as_str);
    let configurations =
        crate::fleet::shown_configurations(tx.assignment(&identity.device)?.as_ref(), key);
    Ok(StoredTwin {
        twin,
        device,
        module,
        configurations,
    })
}

/// Applies a service write to the stored twin of `identity` with its twin change event, inside the caller's
/// transaction; returns the desired notification to push once it commits.
fn service_write(
    tx: &mut dyn Tables,
    identity: &Identity,
    write: &TwinWrite,
    precondition: &Precondition,
    changes: &TwinChanges,
) -> Result<(StoredTwin, Option<Value>, Option<Appended>), HubError> {
    let StoredTwin {
        twin,
        device,
        module,
        configurations,
    } = twin_for_update(tx, identity)?;
    if let Precondition::Etag(_) = precondition {
        precondition.check(&twin.etag())?;
    }
    let now = Utc::now();
    let mut updated = twin;
    if let Some(tags) = &write.tags {
        let result = if write.replace {
            updated.replace_tags(tags)
        } else {
            updated.patch_tags(tags)
        };
        result.map_err(|e| twin_error(&e))?;
    }
    let notification = match &write.desired {
        Some(desired) if write.replace => Some(
            updated
                .replace_desired(desired, now)
                .map_err(|e| twin_error(&e))?,
        ),
        Some(desired) => Some(
            updated
                .patch_desired(desired, now)
                .map_err(|e| twin_error(&e))?,
        ),
        None => None,
    };
    let twin = updated;
    tx.put_twin(&identity.device, identity.module.as_ref(), &twin)?;
    let tags = write.tags.as_ref().map(|patch| {
        if write.replace {
            Value::Object(twin.tags().clone())
        } else {
            patch.clone()
        }
    });
    let change = twin_change_body(twin.version(), tags.as_ref(), notification.as_ref(), None);
    let appended = changes.append(tx, identity, operation(write.replace), &change)?;
    let stored = StoredTwin {
        twin,
        device,
        module,
        configurations,
    };
    Ok((stored, notification, appended))
}

/// Applies a device's reported patch to the stored twin of `identity` with its twin change event, inside the
/// caller's transaction; returns the new reported `$version`.
fn reported_write(
    tx: &mut dyn Tables,
    identity: &Identity,
    patch: &Value,
    changes: &TwinChanges,
) -> Result<(u64, Option<Appended>), HubError> {
    let mut twin = twin_for_update(tx, identity)?.twin;
    let version = twin
        .patch_reported(patch, Utc::now())
        .map_err(|e| twin_error(&e))?;
    tx.put_twin(&identity.device, identity.module.as_ref(), &twin)?;
    let mut reported = patch.as_object().cloned().unwrap_or_default();
    reported.remove("$metadata");
    reported.insert("$version".into(), version.into());
    let change = twin_change_body(twin.version(), None, None, Some(&Value::Object(reported)));
    let appended = changes.append(tx, identity, TwinOperation::Update, &change)?;
    Ok((version, appended))
}

/// The REST JSON of a twin (`azure-iot-hub`'s `Twin` model).
pub fn twin_json(view: &TwinView) -> Value {
    let mut json = Map::new();
    json.insert("deviceId".into(), view.device.device_id.as_str().into());
    if let Some(module) = &view.module {
        json.insert("moduleId".into(), module.module_id.as_str().into());
    }
    json.insert("etag".into(), view.twin.etag().into());
    let device_etag = match &view.module {
        Some(m) => crate::identity::identity_etag(m.etag_counter),
        None => crate::identity::identity_etag(view.device.etag_counter),
    };
    json.insert("deviceEtag".into(), device_etag.into());
    json.insert("version".into(), view.twin.version().into());
    json.insert(
        "status".into(),
        serde_json::to_value(view.device.status).unwrap_or(Value::Null),
    );
    json.insert(
        "statusUpdateTime".into(),
        view.device.status_updated.to_rfc3339().into(),
    );
    json.insert(
        "connectionState".into(),
        if view.connected {
            "Connected"
        } else {
            "Disconnected"
        }
        .into(),
    );
    json.insert("lastActivityTime".into(), "0001-01-01T00:00:00Z".into());
    json.insert("cloudToDeviceMessageCount".into(), 0.into());
    json.insert("authenticationType".into(), "sas".into());
    json.insert(
        "x509Thumbprint".into(),
        serde_json::json!({"primaryThumbprint": null, "secondaryThumbprint": null}),
    );
    if view.module.is_none() {
        json.insert(
            "capabilities".into(),
            serde_json::json!({"iotEdge": view.device.iot_edge}),
        );
        if let Some(scope) = &view.device.device_scope {
            json.insert("deviceScope".into(), scope.clone().into());
        }
        json.insert(
            "parentScopes".into(),
            serde_json::to_value(&view.device.parent_scopes).unwrap_or_default(),
        );
    }
    json.insert("modelId".into(), "".into());
    json.insert("tags".into(), Value::Object(view.twin.tags().clone()));
    if let Some(configurations) = &view.configurations {
        json.insert("configurations".into(), configurations.clone());
    }
    json.insert("properties".into(), view.twin.properties_json());
    Value::Object(json)
}
