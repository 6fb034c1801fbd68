//! The twin documents of the whole fleet, as queries, configurations and jobs read them.

use chrono::Utc;
use outpost_core::query::{Collection, Narrowing};
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

/// Where a document stands in the order of [`Twins::documents_after`]: its device id, and its module id for a
/// module twin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DocumentKey {
    /// The device id.
    pub device: String,
    /// The module id, for a module twin.
    pub module: Option<String>,
}

impl DocumentKey {
    /// The key of a document [`Twins::documents_after`] returned (`None` if it lacks its `deviceId`).
    pub fn of(document: &Value) -> Option<Self> {
        Some(Self {
            device: document.get("deviceId")?.as_str()?.to_owned(),
            module: document
                .get("moduleId")
                .and_then(Value::as_str)
                .map(str::to_owned),
        })
    }
}

/// Documents read at a time by the services that go over the whole fleet (configuration metrics, job
/// selection, aggregate queries): what they hold at once is one page, whatever the fleet's size.
pub const DOCUMENT_PAGE: usize = 1000;

impl Twins {
    /// Every device twin document (or every module twin document) as [`twin_json`] makes it, ordered by device
    /// then module id, read in one consistent storage read; `connectionState` says whether each identity is
    /// connected to any replica now.
    ///
    /// All at once: for tests and small fleets. The services read pages ([`Twins::documents_after`],
    /// [`Twins::each_document`]).
    pub async fn documents(&self, collection: Collection) -> Result<Vec<Value>, HubError> {
        self.documents_after(collection, None, usize::MAX, &Narrowing::default())
            .await
    }

    /// Up to `limit` documents of [`Twins::documents`], from the first after `after`, among those that satisfy
    /// `narrowing` (found through the storage's index, see [`crate::storage::index`]): a page of the fleet, so
    /// that a paged query reads each document once over all its pages. The caller still evaluates its whole
    /// condition on each document; a narrowing only skips documents it could not match.
    pub async fn documents_after(
        &self,
        collection: Collection,
        after: Option<DocumentKey>,
        limit: usize,
        narrowing: &Narrowing,
    ) -> Result<Vec<Value>, HubError> {
        let modules = matches!(collection, Collection::Modules);
        let narrowing = crate::storage::index::applied(narrowing.clone());
        let rows: Vec<Row> = self
            .storage
            .read(move |tables| {
                let rows: Vec<(DeviceRecord, Option<ModuleRecord>, Option<Twin>)> = if modules {
                    tables
                        .module_twins(
                            after
                                .as_ref()
                                .map(|k| (k.device.as_str(), k.module.as_deref().unwrap_or(""))),
                            limit,
                            &narrowing,
                        )?
                        .into_iter()
                        .map(|(device, module, twin)| (device, Some(module), twin))
                        .collect()
                } else {
                    tables
                        .device_twins(after.as_ref().map(|k| k.device.as_str()), limit, &narrowing)?
                        .into_iter()
                        .map(|(device, twin)| (device, None, twin))
                        .collect()
                };
                // What automatic configurations target, shown in the documents as IoT Hub does (metric queries
                // read `configurations.[[id]].status`): read for the page's devices only.
                let mut assignments: HashMap<String, Option<Assignment>> = HashMap::new();
                let mut shown = Vec::with_capacity(rows.len());
                for (device, module, twin) in rows {
                    let id = device.device_id.as_str().to_owned();
                    let assignment = if let Some(found) = assignments.get(&id) {
                        found.clone()
                    } else {
                        let found = tables.assignment(&device.device_id)?;
                        assignments.insert(id, found.clone());
                        found
                    };
                    let twin_key = module
                        .as_ref()
                        .map_or(DEVICE_TWIN, |m| m.module_id.as_str());
                    let configurations = shown_configurations(assignment.as_ref(), twin_key);
                    shown.push((device, module, twin, configurations));
                }
                Ok::<_, HubError>(shown)
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

impl Twins {
    /// Calls `visit` with every document of `collection` that `narrowing` lets through, a [`DOCUMENT_PAGE`] at a time in
    /// id order (so that at most one page is held at once); stops early when `visit` returns false.
    pub async fn each_document(
        &self,
        collection: Collection,
        narrowing: &Narrowing,
        mut visit: impl FnMut(&Value) -> bool,
    ) -> Result<(), HubError> {
        let mut after = None;
        loop {
            let page = self
                .documents_after(collection, after, DOCUMENT_PAGE, narrowing)
                .await?;
            for document in &page {
                if !visit(document) {
                    return Ok(());
                }
            }
            if page.len() < DOCUMENT_PAGE {
                return Ok(());
            }
            after = page.last().and_then(DocumentKey::of);
            if after.is_none() {
                return Ok(());
            }
        }
    }
}
