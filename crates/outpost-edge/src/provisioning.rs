//! The edge device provisions itself (`[provisioning] source = "dps"`): on first start it registers with the
//! provisioning service ([`outpost_sdk::provisioning`]), keeps what it was assigned in
//! `{data_dir}/provisioning.json` (its user's only: it holds the key) and connects to the assigned hub; later
//! starts read that file and need no provisioning service, so they work offline. Settings that name another
//! scope, registration or key register again.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::{EdgeConfig, ProvisioningConfig};
use outpost_sdk::provisioning::{register_with_symmetric_key, ProvisioningError};

/// The file the assignment is kept in.
const PROVISIONED_FILE: &str = "provisioning.json";
/// The longest wait between two attempts while the provisioning service cannot be reached.
const MAX_BACKOFF: Duration = Duration::from_mins(1);

/// Why the device could not get an identity.
#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    /// The service refused (a wrong key, a disabled enrollment...): trying again would not help.
    #[error(transparent)]
    Refused(#[from] ProvisioningError),
    /// The assignment cannot be stored or read.
    #[error("cannot keep the assignment in {path}: {source}")]
    Store {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
}

/// What the device was assigned, as kept in the data directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Provisioned {
    /// The ID scope it registered in.
    pub id_scope: String,
    /// Its registration id.
    pub registration_id: String,
    /// The hub it was assigned to.
    pub assigned_hub: String,
    /// Its device id there.
    pub device_id: String,
    /// The key it registered with, which is its device key in the hub.
    pub key: String,
}

impl Provisioned {
    /// Whether this assignment was made with these settings.
    fn made_with(&self, settings: &ProvisioningConfig) -> bool {
        self.id_scope == settings.id_scope
            && self.registration_id == settings.attestation.registration_id
            && self.key == settings.attestation.symmetric_key.key()
    }

    /// The device connection string of the assignment.
    pub fn connection_string(&self) -> String {
        outpost_core::ConnectionString::device(&self.assigned_hub, &self.device_id, &self.key)
            .to_string()
    }
}

fn provisioned_path(config: &EdgeConfig) -> PathBuf {
    config.data_dir.join(PROVISIONED_FILE)
}

/// The assignment kept from an earlier start, if any.
pub fn stored(config: &EdgeConfig) -> Option<Provisioned> {
    let text = std::fs::read(provisioned_path(config)).ok()?;
    serde_json::from_slice(&text).ok()
}

fn store(path: &Path, provisioned: &Provisioned) -> Result<(), ProvisionError> {
    let failed = |source| ProvisionError::Store {
        path: path.display().to_string(),
        source,
    };
    if let Some(dir) = path.parent() {
        outpost_store::host::private_dir(dir).map_err(failed)?;
    }
    let bytes = serde_json::to_vec_pretty(provisioned).unwrap_or_default();
    outpost_store::host::write_atomically(path, &bytes, 0o600).map_err(failed)
}

/// `config` with the connection string of the assignment stored by an earlier start, when it provisions itself
/// and has one (what `outpost edge check` looks at without registering).
pub fn with_stored_assignment(mut config: EdgeConfig) -> EdgeConfig {
    if config.connection_string.is_none() {
        if let Some(settings) = &config.provisioning {
            if let Some(kept) = stored(&config).filter(|kept| kept.made_with(settings)) {
                config.connection_string = Some(kept.connection_string());
            }
        }
    }
    config
}

/// Gives `config` its connection string: as written, from the stored assignment, or by registering (retried
/// with back-off while the service cannot be reached; a refusal is an error at once).
pub async fn provision(mut config: EdgeConfig) -> Result<EdgeConfig, ProvisionError> {
    let Some(settings) = config.provisioning.clone() else {
        return Ok(config);
    };
    if config.connection_string.is_some() {
        return Ok(config);
    }
    if let Some(kept) = stored(&config).filter(|kept| kept.made_with(&settings)) {
        tracing::info!(hub = %kept.assigned_hub, device = %kept.device_id, "provisioned earlier; using the stored assignment");
        config.connection_string = Some(kept.connection_string());
        return Ok(config);
    }
    let ca_pem = std::fs::read_to_string(&config.hub_ca).ok();
    let mut backoff = Duration::from_secs(1);
    let state = loop {
        let attempt = register_with_symmetric_key(
            settings.host(),
            settings.mqtt_port,
            ca_pem.as_deref(),
            &settings.id_scope,
            &settings.attestation.registration_id,
            settings.attestation.symmetric_key.key(),
        )
        .await;
        match attempt {
            Ok(state) => break state,
            Err(error @ (ProvisioningError::Unreachable(_) | ProvisioningError::Timeout)) => {
                tracing::warn!(%error, retry_in = ?backoff, "cannot provision yet");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
            Err(refused) => return Err(refused.into()),
        }
    };
    let provisioned = Provisioned {
        id_scope: settings.id_scope.clone(),
        registration_id: settings.attestation.registration_id.clone(),
        assigned_hub: state.assigned_hub,
        device_id: state.device_id,
        key: settings.attestation.symmetric_key.key().to_owned(),
    };
    store(&provisioned_path(&config), &provisioned)?;
    tracing::info!(hub = %provisioned.assigned_hub, device = %provisioned.device_id, substatus = %state.substatus, "provisioned");
    config.connection_string = Some(provisioned.connection_string());
    Ok(config)
}
