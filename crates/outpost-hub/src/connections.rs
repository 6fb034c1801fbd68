//! The hub's live device connections, as every service sees them: this replica's one
//! [`ConnectionTable`] (shared, not copied, by the registry, twins and messaging), and with replicas the others
//! that hold the rest ([`replicas`](crate::replicas)).

use std::collections::HashSet;
use std::sync::Arc;

use outpost_core::{DeviceId, Identity};
use outpost_mqtt::{ConnectionTable, Outbox};

use crate::replicas::{self, Replicas};

/// Where the hub's clients are connected: this replica's connection table, and the other replicas of the hub on
/// its database, when it has some. Cloning shares the one table.
#[derive(Clone, Default)]
pub struct Connections {
    /// This replica's live device connections by MQTT client id (`d` or `d/m`).
    table: Arc<ConnectionTable>,
    /// The other replicas of the hub, when it has some.
    replicas: Option<Arc<Replicas>>,
}

impl Connections {
    /// The same table, reaching the other `replicas` too.
    #[must_use]
    pub(crate) fn with_replicas(&self, replicas: Arc<Replicas>) -> Self {
        Self {
            table: self.table.clone(),
            replicas: Some(replicas),
        }
    }

    /// This replica's connection table.
    pub(crate) fn table(&self) -> &ConnectionTable {
        &self.table
    }

    /// The other replicas of the hub, when it has some.
    pub(crate) fn replicas(&self) -> Option<&Arc<Replicas>> {
        self.replicas.as_ref()
    }

    /// The outbox of a connected identity.
    pub(crate) fn outbox(&self, identity: &Identity) -> Option<Outbox> {
        self.table.get(&identity.client_id())
    }

    /// Whether an identity has a live connection to this replica.
    #[must_use]
    pub fn is_connected(&self, identity: &Identity) -> bool {
        self.table.contains(&identity.client_id())
    }

    /// Which of the given clients (`d` or `d/m`) have a live connection to any replica of the hub: this one's
    /// table, and with replicas the live replicas' records. A lost database counts as not connected elsewhere.
    pub async fn connected_clients(&self, client_ids: &[String]) -> HashSet<String> {
        let mut connected: HashSet<String> = client_ids
            .iter()
            .filter(|client_id| self.table.contains(client_id))
            .cloned()
            .collect();
        if let Some(replicas) = &self.replicas {
            let elsewhere: Vec<String> = client_ids
                .iter()
                .filter(|client_id| !connected.contains(*client_id))
                .cloned()
                .collect();
            if !elsewhere.is_empty() {
                match replicas.held_among(elsewhere).await {
                    Ok(held) => connected.extend(held),
                    Err(error) => {
                        tracing::warn!(%error, "cannot read which replicas hold connections");
                    }
                }
            }
        }
        connected
    }

    /// Whether an identity has a live connection to any replica of the hub.
    pub async fn is_connected_anywhere(&self, identity: &Identity) -> bool {
        let client_id = identity.client_id();
        !self
            .connected_clients(std::slice::from_ref(&client_id))
            .await
            .is_empty()
    }

    /// Forgets the connection `connection` of an identity, unless a newer one has replaced it.
    pub(crate) fn disconnected(&self, identity: &Identity, connection: u64) {
        self.table.disconnected(&identity.client_id(), connection);
    }

    /// Closes this replica's connection of `client_id`: the client connected through another replica.
    pub(crate) fn close_here(&self, client_id: &str) {
        if self.table.close(client_id) {
            tracing::debug!(client_id, "closing this replica's connection of the client");
        }
    }

    /// Closes the connection of one identity, on whichever replica holds it.
    pub(crate) fn disconnect(&self, identity: &Identity) {
        let client_id = identity.client_id();
        self.table.close(&client_id);
        if let Some(replicas) = &self.replicas {
            replicas.tell(replicas::Notice::Close {
                client_id,
                with_modules: false,
            });
        }
    }

    /// Closes the connections of a device and of all its modules, on whichever replicas hold them.
    pub(crate) fn disconnect_device(&self, device: &DeviceId) {
        self.table.close_device(device.as_str());
        if let Some(replicas) = &self.replicas {
            replicas.tell(replicas::Notice::Close {
                client_id: device.to_string(),
                with_modules: true,
            });
        }
    }
}
