//! Registry operations: devices and modules, created, updated (with etags), read and deleted.

use chrono::Utc;
use outpost_core::{DeviceId, Identity, ModuleId, Twin};

use crate::connections::Connections;
use crate::error::HubError;
use crate::fleet::schedule::{Change, FleetSignal};
use crate::identity::{
    generate_generation_id, validate_key, AuthenticationType, Credentials, DeviceRecord,
    IdentityStatus, ModuleRecord,
};
use crate::storage::Tables;
use crate::writer::Storage;

/// What a caller asks a device to be (a create or an update).
#[derive(Debug, Clone, Default)]
pub struct DeviceSpec {
    /// Its id.
    pub device_id: String,
    /// Enabled unless `Some(Disabled)`.
    pub status: Option<IdentityStatus>,
    /// Why it has that status.
    pub status_reason: Option<String>,
    /// The primary key; empty or missing means generate one.
    pub primary_key: Option<String>,
    /// The secondary key; empty or missing means generate one.
    pub secondary_key: Option<String>,
    /// How it authenticates: `None` keeps what an existing identity has (a new one gets SAS).
    pub authentication: Option<AuthenticationType>,
    /// The primary X.509 thumbprint of a `SelfSigned` identity (required for one).
    pub primary_thumbprint: Option<String>,
    /// The secondary X.509 thumbprint of a `SelfSigned` identity.
    pub secondary_thumbprint: Option<String>,
    /// Whether it is an edge device.
    pub iot_edge: bool,
    /// The parent edge device's id, for a device behind an edge device.
    pub parent: Option<String>,
    /// The device scope as a caller gave it (azure-iot-hub style parenting).
    pub device_scope: Option<String>,
}

/// What a caller asks a module to be.
#[derive(Debug, Clone, Default)]
pub struct ModuleSpec {
    /// The device it belongs to.
    pub device_id: String,
    /// Its name.
    pub module_id: String,
    /// Who manages it.
    pub managed_by: Option<String>,
    /// The primary key; empty or missing means generate one.
    pub primary_key: Option<String>,
    /// The secondary key; empty or missing means generate one.
    pub secondary_key: Option<String>,
    /// How it authenticates: `None` keeps what an existing identity has (a new one gets SAS).
    pub authentication: Option<AuthenticationType>,
    /// The primary X.509 thumbprint of a `SelfSigned` identity (required for one).
    pub primary_thumbprint: Option<String>,
    /// The secondary X.509 thumbprint of a `SelfSigned` identity.
    pub secondary_thumbprint: Option<String>,
}

/// How a write is conditioned on the current etag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Precondition {
    /// No `If-Match`: create only; an existing identity is a conflict.
    CreateOnly,
    /// `If-Match: "*"`: any current version.
    Any,
    /// `If-Match: "<etag>"`: exactly that version.
    Etag(String),
}

impl Precondition {
    /// Reads an `If-Match` header value (quoted or not).
    pub fn from_if_match(value: Option<&str>) -> Self {
        match value.map(|v| v.trim().trim_matches('"')) {
            None => Self::CreateOnly,
            Some("*") => Self::Any,
            Some(etag) => Self::Etag(etag.to_owned()),
        }
    }

    /// Checks an existing identity's etag against this precondition.
    pub fn check(&self, current_etag: &str) -> Result<(), HubError> {
        match self {
            Self::Etag(etag) if etag != current_etag => Err(HubError::PreconditionFailed),
            _ => Ok(()),
        }
    }
}

pub(crate) fn device_id(raw: &str) -> Result<DeviceId, HubError> {
    DeviceId::new(raw)
        .map_err(|e| HubError::ArgumentInvalid(format!("invalid device id {raw:?}: {e}")))
}

pub(crate) fn module_id(raw: &str) -> Result<ModuleId, HubError> {
    ModuleId::new(raw)
        .map_err(|e| HubError::ArgumentInvalid(format!("invalid module id {raw:?}: {e}")))
}

/// The registry service: devices and modules, stored through the storage handle; a write that disables an
/// identity, rotates its keys or deletes it closes its connections, on whichever replica holds them.
#[derive(Clone)]
pub struct Registry {
    storage: Storage,
    connections: Connections,
    /// Told of new devices and modules, which automatic configurations may target.
    fleet: FleetSignal,
}

impl Registry {
    /// The registry over `storage`, closing connections in `connections`.
    pub(crate) fn new(storage: Storage, connections: Connections, fleet: FleetSignal) -> Self {
        Self {
            storage,
            connections,
            fleet,
        }
    }

    /// The storage handle the registry reads and writes through.
    pub(crate) fn storage(&self) -> &Storage {
        &self.storage
    }

    /// The connections the registry closes.
    pub(crate) fn connections(&self) -> &Connections {
        &self.connections
    }

    /// Creates or updates a device as `precondition` allows, group-committed by the storage writer.
    pub async fn put_device(
        &self,
        spec: &DeviceSpec,
        precondition: &Precondition,
    ) -> Result<DeviceRecord, HubError> {
        let id = device_id(&spec.device_id)?;
        for key in [&spec.primary_key, &spec.secondary_key]
            .into_iter()
            .flatten()
        {
            validate_key(key).map_err(HubError::ArgumentInvalid)?;
        }
        let x509 = requested_x509(
            spec.authentication,
            spec.primary_thumbprint.as_ref(),
            spec.secondary_thumbprint.as_ref(),
        )?;
        let (spec, precondition) = (spec.clone(), precondition.clone());
        let (record, rotated) = self
            .storage
            .write(move |tx| {
                let mut rotated = false;
                let parent_scope = match &spec.parent {
                    Some(parent) => {
                        let parent_id = device_id(parent)?;
                        let parent = tx
                            .device(&parent_id)?
                            .ok_or(HubError::DeviceNotFound(parent.clone()))?;
                        if !parent.iot_edge {
                            return Err(HubError::ArgumentInvalid(format!(
                                "parent {parent_id} is not an edge device"
                            )));
                        }
                        Some(parent.edge_scope())
                    }
                    None => None,
                };
                // A device created with an edge device's scope (azure-iot-hub's way of parenting) takes it as parent.
                let parent_scope = match (parent_scope, spec.device_scope.as_deref()) {
                    (None, Some(scope)) if !spec.iot_edge => {
                        edge_of_scope(tx, scope)?.map(|edge| edge.edge_scope())
                    }
                    (found, _) => found,
                };
                let existing = tx.device(&id)?;
                let record = match (existing, &precondition) {
                    (Some(_), Precondition::CreateOnly) => {
                        return Err(HubError::DeviceAlreadyExists(id.to_string()))
                    }
                    (None, Precondition::Etag(_)) => {
                        return Err(HubError::DeviceNotFound(id.to_string()))
                    }
                    (Some(mut current), _) => {
                        precondition
                            .check(&crate::identity::identity_etag(current.etag_counter))?;
                        let credentials_before = current.credentials.clone();
                        let status = spec.status.unwrap_or(current.status);
                        if status != current.status {
                            current.status_updated = Utc::now();
                        }
                        current.status = status;
                        current.status_reason.clone_from(&spec.status_reason);
                        update_credentials(
                            &mut current.credentials,
                            x509.clone(),
                            spec.authentication,
                            spec.primary_key.as_deref(),
                            spec.secondary_key.as_deref(),
                        );
                        current.iot_edge = spec.iot_edge;
                        apply_scopes(&mut current, &spec, parent_scope);
                        current.etag_counter += 1;
                        rotated = credentials_before != current.credentials;
                        current
                    }
                    (None, _) => {
                        let mut record = DeviceRecord {
                            device_id: id.clone(),
                            generation_id: generate_generation_id(),
                            etag_counter: 1,
                            status: spec.status.unwrap_or(IdentityStatus::Enabled),
                            status_reason: spec.status_reason.clone(),
                            status_updated: Utc::now(),
                            credentials: x509.clone().unwrap_or_else(|| {
                                Credentials::sas(
                                    spec.primary_key.as_deref(),
                                    spec.secondary_key.as_deref(),
                                )
                            }),
                            iot_edge: spec.iot_edge,
                            device_scope: None,
                            parent_scopes: Vec::new(),
                        };
                        apply_scopes(&mut record, &spec, parent_scope);
                        record
                    }
                };
                tx.put_device(&record)?;
                if tx.twin(&id, None)?.is_none() {
                    tx.put_twin(&id, None, &Twin::new(Utc::now()))?;
                }
                if record.iot_edge {
                    for system in ["$edgeAgent", "$edgeHub"] {
                        let module = ModuleId::new(system)
                            .map_err(|e| HubError::ArgumentInvalid(e.to_string()))?;
                        if tx.module(&id, &module)?.is_none() {
                            insert_module(
                                tx,
                                &id,
                                &module,
                                Some("IotEdge".into()),
                                Credentials::sas(None, None),
                            )?;
                        }
                    }
                }
                Ok::<_, HubError>((record, rotated))
            })
            .await?;
        self.fleet
            .changed(Change::Device(record.device_id.to_string()));
        if record.status == IdentityStatus::Disabled {
            self.connections.disconnect_device(&record.device_id);
        } else if rotated {
            // A connection authenticated with a key that no longer exists must not outlive it (IoT Hub
            // closes it too; the SDK reconnects with the new key).
            self.connections
                .disconnect(&Identity::device(record.device_id.clone()));
        }
        Ok(record)
    }

    /// Reads a device.
    pub async fn device(&self, id: &str) -> Result<DeviceRecord, HubError> {
        let id = device_id(id)?;
        self.storage
            .read(move |tables| {
                tables
                    .device(&id)?
                    .ok_or_else(|| HubError::DeviceNotFound(id.to_string()))
            })
            .await
    }

    /// Lists every device.
    pub async fn devices(&self) -> Result<Vec<DeviceRecord>, HubError> {
        Ok(self.storage.read(|tables| tables.devices()).await?)
    }

    /// Deletes a device with its modules and twins, and disconnects them.
    pub async fn delete_device(
        &self,
        id: &str,
        precondition: &Precondition,
    ) -> Result<(), HubError> {
        let id = device_id(id)?;
        let (deleted, precondition) = (id.clone(), precondition.clone());
        self.storage
            .write(move |tx| {
                let current = tx
                    .device(&deleted)?
                    .ok_or_else(|| HubError::DeviceNotFound(deleted.to_string()))?;
                precondition.check(&crate::identity::identity_etag(current.etag_counter))?;
                tx.delete_device(&deleted)?;
                Ok::<_, HubError>(())
            })
            .await?;
        self.connections.disconnect_device(&id);
        Ok(())
    }

    /// Creates or updates a module as `precondition` allows, group-committed by the storage writer; returns it and
    /// whether it was created.
    pub async fn put_module(
        &self,
        spec: ModuleSpec,
        precondition: &Precondition,
    ) -> Result<(ModuleRecord, bool), HubError> {
        let device = device_id(&spec.device_id)?;
        let module = module_id(&spec.module_id)?;
        for key in [&spec.primary_key, &spec.secondary_key]
            .into_iter()
            .flatten()
        {
            validate_key(key).map_err(HubError::ArgumentInvalid)?;
        }
        let x509 = requested_x509(
            spec.authentication,
            spec.primary_thumbprint.as_ref(),
            spec.secondary_thumbprint.as_ref(),
        )?;
        let precondition = precondition.clone();
        let (written_device, written_module) = (device.clone(), module.clone());
        let (result, rotated) = self
            .storage
            .write(move |tx| {
                let (device, module) = (written_device, written_module);
                let mut rotated = false;
                if tx.device(&device)?.is_none() {
                    return Err(HubError::DeviceNotFound(device.to_string()));
                }
                let result = match (tx.module(&device, &module)?, &precondition) {
                    (Some(_), Precondition::CreateOnly) => {
                        Err(HubError::ModuleAlreadyExists(module.to_string()))
                    }
                    (None, Precondition::Etag(_)) => {
                        Err(HubError::ModuleNotFound(module.to_string()))
                    }
                    (Some(mut current), _) => {
                        precondition
                            .check(&crate::identity::identity_etag(current.etag_counter))?;
                        let credentials_before = current.credentials.clone();
                        update_credentials(
                            &mut current.credentials,
                            x509,
                            spec.authentication,
                            spec.primary_key.as_deref(),
                            spec.secondary_key.as_deref(),
                        );
                        rotated = credentials_before != current.credentials;
                        if spec.managed_by.is_some() {
                            current.managed_by = spec.managed_by;
                        }
                        current.etag_counter += 1;
                        tx.put_module(&current)?;
                        Ok((current, false))
                    }
                    (None, _) => {
                        let credentials = x509.unwrap_or_else(|| {
                            Credentials::sas(
                                spec.primary_key.as_deref(),
                                spec.secondary_key.as_deref(),
                            )
                        });
                        let record =
                            insert_module(tx, &device, &module, spec.managed_by, credentials)?;
                        Ok((record, true))
                    }
                };
                result.map(|written| (written, rotated))
            })
            .await?;
        if result.1 {
            self.fleet.changed(Change::Device(device.to_string()));
        }
        if rotated {
            self.connections
                .disconnect(&Identity::module(device, module));
        }
        Ok(result)
    }

    /// Reads a module.
    pub async fn module(&self, device: &str, module: &str) -> Result<ModuleRecord, HubError> {
        let (device, module) = (device_id(device)?, module_id(module)?);
        self.storage
            .read(move |tables| {
                if tables.device(&device)?.is_none() {
                    return Err(HubError::DeviceNotFound(device.to_string()));
                }
                tables
                    .module(&device, &module)?
                    .ok_or_else(|| HubError::ModuleNotFound(module.to_string()))
            })
            .await
    }

    /// Lists the modules of a device.
    pub async fn modules(&self, device: &str) -> Result<Vec<ModuleRecord>, HubError> {
        let device = device_id(device)?;
        self.storage
            .read(move |tables| {
                if tables.device(&device)?.is_none() {
                    return Err(HubError::DeviceNotFound(device.to_string()));
                }
                Ok(tables.modules(&device)?)
            })
            .await
    }

    /// Deletes a module and its twin, and disconnects it.
    pub async fn delete_module(
        &self,
        device: &str,
        module: &str,
        precondition: &Precondition,
    ) -> Result<(), HubError> {
        let (device, module) = (device_id(device)?, module_id(module)?);
        let (deleted_device, deleted_module) = (device.clone(), module.clone());
        let precondition = precondition.clone();
        self.storage
            .write(move |tx| {
                let current = tx
                    .module(&deleted_device, &deleted_module)?
                    .ok_or_else(|| HubError::ModuleNotFound(deleted_module.to_string()))?;
                precondition.check(&crate::identity::identity_etag(current.etag_counter))?;
                tx.delete_module(&deleted_device, &deleted_module)?;
                Ok::<_, HubError>(())
            })
            .await?;
        self.connections
            .disconnect(&Identity::module(device, module));
        Ok(())
    }
}

/// The edge device whose scope is `scope` (`ms-azure-iot-edge://{id}-{generationId}`), if there is one.
fn edge_of_scope(tx: &mut dyn Tables, scope: &str) -> Result<Option<DeviceRecord>, HubError> {
    let Some((id, _generation)) = scope
        .strip_prefix("ms-azure-iot-edge://")
        .and_then(|rest| rest.rsplit_once('-'))
    else {
        return Ok(None);
    };
    let Ok(id) = DeviceId::new(id) else {
        return Ok(None);
    };
    Ok(tx
        .device(&id)?
        .filter(|edge| edge.iot_edge && edge.edge_scope() == scope))
}

fn apply_scopes(record: &mut DeviceRecord, spec: &DeviceSpec, parent_scope: Option<String>) {
    if record.iot_edge {
        record.device_scope = Some(record.edge_scope());
    } else if let Some(scope) = spec.device_scope.clone().filter(|s| !s.is_empty()) {
        record.device_scope = Some(scope);
    }
    if let Some(scope) = parent_scope {
        if !record.iot_edge {
            record.device_scope = Some(scope.clone());
        }
        record.parent_scopes = vec![scope];
    }
}

pub(crate) fn insert_module(
    tx: &mut dyn Tables,
    device: &DeviceId,
    module: &ModuleId,
    managed_by: Option<String>,
    credentials: Credentials,
) -> Result<ModuleRecord, HubError> {
    let record = ModuleRecord {
        device_id: device.clone(),
        module_id: module.clone(),
        generation_id: generate_generation_id(),
        etag_counter: 1,
        managed_by,
        credentials,
    };
    tx.put_module(&record)?;
    let mut twin = Twin::new(Utc::now());
    // The deployment may have named this module before its identity existed: its twin starts from that content.
    if let Some(desired) = tx
        .deployment(device)?
        .as_ref()
        .and_then(|manifest| manifest.get("modulesContent")?.get(module.as_str()))
    {
        twin.replace_desired(desired, Utc::now())
            .map_err(|e| HubError::InvalidConfigurationContent(format!("module {module}: {e}")))?;
    }
    tx.put_twin(device, Some(module), &twin)?;
    Ok(record)
}

/// What an update makes of an identity's credentials: X.509 credentials it asks for replace them; a switch to
/// SAS takes the given keys (or new ones); an X.509 identity updated without naming its authentication keeps
/// them; a SAS identity keeps each key the update leaves empty (an update is not a key rotation).
fn update_credentials(
    current: &mut Credentials,
    x509: Option<Credentials>,
    authentication: Option<AuthenticationType>,
    primary_key: Option<&str>,
    secondary_key: Option<&str>,
) {
    match (x509, authentication) {
        (Some(credentials), _) => *current = credentials,
        (None, Some(AuthenticationType::Sas)) if current.kind != AuthenticationType::Sas => {
            *current = Credentials::sas(primary_key, secondary_key);
        }
        (None, _) if current.kind != AuthenticationType::Sas => {}
        (None, _) => {
            if let Some(key) = primary_key.filter(|k| !k.is_empty()) {
                key.clone_into(&mut current.primary_key);
            }
            if let Some(key) = secondary_key.filter(|k| !k.is_empty()) {
                key.clone_into(&mut current.secondary_key);
            }
        }
    }
}

/// The X.509 credentials a create or an update asks for, checked before anything is stored: `SelfSigned` needs a
/// primary thumbprint and takes a secondary one, each 40 (SHA-1) or 64 (SHA-256) hexadecimal digits;
/// `CertificateAuthority` takes none. `None` for SAS or when no type is named.
fn requested_x509(
    kind: Option<AuthenticationType>,
    primary: Option<&String>,
    secondary: Option<&String>,
) -> Result<Option<Credentials>, HubError> {
    let given = |t: Option<&String>| t.filter(|t| !t.is_empty()).cloned();
    let (primary, secondary) = (given(primary), given(secondary));
    let check = |t: &Option<String>| -> Result<(), HubError> {
        if let Some(t) = t {
            outpost_pki::client_auth::parse_thumbprint(t)
                .map_err(|e| HubError::ArgumentInvalid(e.to_string()))?;
        }
        Ok(())
    };
    match kind {
        Some(AuthenticationType::SelfSigned) => {
            if primary.is_none() {
                return Err(HubError::ArgumentInvalid(
                    "a selfSigned identity needs x509Thumbprint.primaryThumbprint".into(),
                ));
            }
            check(&primary)?;
            check(&secondary)?;
            Ok(Some(Credentials::x509(
                AuthenticationType::SelfSigned,
                primary,
                secondary,
            )))
        }
        Some(AuthenticationType::CertificateAuthority) => {
            if primary.is_some() || secondary.is_some() {
                return Err(HubError::ArgumentInvalid(
                    "a certificateAuthority identity takes no thumbprints".into(),
                ));
            }
            Ok(Some(Credentials::x509(
                AuthenticationType::CertificateAuthority,
                None,
                None,
            )))
        }
        Some(AuthenticationType::None) => Err(HubError::ArgumentInvalid(
            "authentication type none is not supported; use sas, selfSigned or certificateAuthority"
                .into(),
        )),
        Some(AuthenticationType::Sas) | None => Ok(None),
    }
}
