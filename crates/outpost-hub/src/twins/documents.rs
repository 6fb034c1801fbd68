//! The twin documents of the whole fleet, as queries, configurations and jobs read them.

use chrono::Utc;
use outpost_core::query::Collection;
use outpost_core::Twin;
use serde_json::Value;

use std::collections::HashMap;

use super::{twin_json, TwinView, Twins};
use crate::error::HubError;
use crate::fleet::assign::DEVICE_TWIN;
use crate::fleet::{shown_configurations, Assignment};
use crate::identity::{DeviceRecord, ModuleRecord};

/// One identity of a collection with its twin and the configurations that target it, as read.
type Row = (
    DeviceRecord,
    Option<ModuleRecord>,
    Option<Twin>,
    Option<Value>,
);

impl Twins {
    /// Every device twin document (or every module twin document) as [`twin_json`] makes it, ordered by device
    /// then module id, read in one consistent storage read; `connectionState` says whether each identity is
    /// connected to any replica now.
    ///
    /// This is the one input of fleet queries (`POST /devices/query`), configurations and jobs: they evaluate
    /// their conditions in memory over these documents.
    pub async fn documents(&self, collection: Collection) -> Result<Vec<Value>, HubError> {
        let modules = matches!(collection, Collection::Modules);
        let rows: Vec<Row> = self
            .storage
            .read(move |tables| {
                // What automatic configurations target, shown in the documents as IoT Hub does (metric queries
                // read `configurations.[[id]].status`).
                let assignments: HashMap<String, Assignment> =
                    tables.assignments()?.into_iter().collect();
                let shown = |device: &DeviceRecord, twin: &str| {
                    shown_configurations(assignments.get(device.device_id.as_str()), twin)
                };
                let rows = if modules {
                    tables
                        .module_twins()?
                        .into_iter()
                        .map(|(device, module, twin)| {
                            let configurations = shown(&device, module.module_id.as_str());
                            (device, Some(module), twin, configurations)
                        })
                        .collect()
                } else {
                    tables
                        .device_twins()?
                        .into_iter()
                        .map(|(device, twin)| {
                            let configurations = shown(&device, DEVICE_TWIN);
                            (device, None, twin, configurations)
                        })
                        .collect()
                };
                Ok::<_, HubError>(rows)
            })
            .await?;
        let client_ids: Vec<String> = rows
            .iter()
            .map(|(device, module, _, _)| match module {
                Some(module) => format!("{}/{}", device.device_id, module.module_id),
                None => device.device_id.to_string(),
            })
            .collect();
        let connected = self.connections.connected_clients(&client_ids).await;
        // A twin not stored yet reads as a new one, as `twin_for_update` does.
        let now = Utc::now();
        Ok(rows
            .into_iter()
            .zip(&client_ids)
            .map(|((device, module, twin, configurations), client_id)| {
                twin_json(&TwinView {
                    twin: twin.unwrap_or_else(|| Twin::new(now)),
                    device,
                    module,
                    connected: connected.contains(client_id),
                    configurations,
                })
            })
            .collect())
    }
}
