//! The hub's side of the MQTT device protocol: `outpost-mqtt`'s head calls these operations for every
//! connected device and module.

use async_trait::async_trait;
use outpost_core::{Identity, Message};
use outpost_mqtt::{ConnectRefusal, DeviceOperations, OperationError, Outbox};
use serde_json::Value;
use std::sync::Arc;

use crate::error::HubError;
use crate::metrics::{TwinOperation, TwinSource};
use crate::Hub;

/// [`Hub`] behind an `Arc`, as the protocol head holds it.
pub struct HubDevices(pub Arc<Hub>);

fn operation_error(error: &HubError) -> OperationError {
    OperationError {
        status: error.status(),
        message: error.to_string(),
    }
}

#[async_trait]
impl DeviceOperations for HubDevices {
    async fn authenticate(
        &self,
        identity: &Identity,
        _username: &str,
        password: Option<&[u8]>,
    ) -> Result<(), ConnectRefusal> {
        let password = password
            .and_then(|p| std::str::from_utf8(p).ok())
            .ok_or(ConnectRefusal::NotAuthorized)?;
        self.0
            .authenticate_identity(identity, password)
            .await
            .map_err(|error| {
                tracing::info!(%identity, %error, "connection refused");
                match error {
                    HubError::Storage(_) => ConnectRefusal::ServerUnavailable,
                    _ => ConnectRefusal::NotAuthorized,
                }
            })
    }

    async fn authenticate_certificate(
        &self,
        identity: &Identity,
        _username: &str,
        chain: &[rustls::pki_types::CertificateDer<'static>],
    ) -> Result<(), ConnectRefusal> {
        self.0
            .authenticate_certificate(identity, chain)
            .await
            .map_err(|error| {
                tracing::info!(%identity, %error, "X.509 connection refused");
                match error {
                    HubError::Storage(_) => ConnectRefusal::ServerUnavailable,
                    _ => ConnectRefusal::NotAuthorized,
                }
            })
    }

    async fn connected(&self, identity: &Identity, outbox: Outbox) {
        tracing::debug!(%identity, connection = outbox.connection(), "connected");
        if let Some(replicas) = self.0.connections().replicas() {
            // One connection per identity across the hub: the others close theirs.
            replicas.connected(&identity.client_id(), outbox.connection());
        }
        self.0
            .connections()
            .table()
            .connected(identity.client_id(), outbox);
        self.0.messaging().push_c2d(identity).await;
    }

    async fn disconnected(&self, identity: &Identity, connection: u64) {
        if self
            .0
            .connections()
            .table()
            .disconnected(&identity.client_id(), connection)
        {
            if let Some(replicas) = self.0.connections().replicas() {
                replicas.disconnected(&identity.client_id(), connection);
            }
        }
    }

    async fn get_twin(&self, identity: &Identity) -> Result<Value, OperationError> {
        let twin = self
            .0
            .twins()
            .device_view(identity)
            .await
            .map_err(|e| operation_error(&e))?;
        self.0
            .metrics()
            .twin(TwinOperation::Read, TwinSource::Device);
        Ok(twin)
    }

    async fn patch_reported(
        &self,
        identity: &Identity,
        patch: Value,
    ) -> Result<u64, OperationError> {
        let version = self
            .0
            .twins()
            .report(identity, &patch)
            .await
            .map_err(|e| operation_error(&e))?;
        self.0
            .metrics()
            .twin(TwinOperation::UpdateReported, TwinSource::Device);
        Ok(version)
    }

    async fn send_message(
        &self,
        identity: &Identity,
        message: Message,
    ) -> Result<(), OperationError> {
        self.0
            .messaging()
            .accept_telemetry(identity, &message)
            .await
            .map(drop)
            .map_err(|e| operation_error(&e))
    }

    async fn method_response(
        &self,
        identity: &Identity,
        connection: u64,
        rid: &str,
        status: i32,
        payload: Vec<u8>,
    ) {
        self.0
            .messaging()
            .method_answered(identity, connection, rid, status, payload);
    }

    async fn delivered(&self, identity: &Identity, _connection: u64, delivery_id: u64) {
        self.0.messaging().complete_c2d(identity, delivery_id).await;
    }

    async fn load_subscriptions(&self, client_id: &str) -> Vec<String> {
        let read = client_id.to_owned();
        self.0
            .storage
            .read(move |tables| tables.session(&read))
            .await
            .unwrap_or_else(|error: crate::store::StorageError| {
                tracing::warn!(client_id, %error, "could not load a persisted session");
                Vec::new()
            })
    }

    async fn save_subscriptions(&self, client_id: &str, filters: &[String]) {
        // Group-committed with the other writes waiting: many devices subscribing at once share fsyncs.
        let saved = {
            let (client_id, filters) = (client_id.to_owned(), filters.to_vec());
            self.0
                .storage
                .write(move |tables| tables.put_session(&client_id, &filters))
                .await
        };
        if let Err(error) = saved {
            tracing::warn!(client_id, %error, "could not persist a session");
        }
        if let Ok(identity) = Identity::parse_client_id(client_id) {
            self.0.messaging().push_c2d(&identity).await;
        }
    }
}
