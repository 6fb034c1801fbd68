//! The agent's [`TwinLink`] over Outpost's own SDK: the agent is a module client of the hub, as its
//! `$edgeAgent` identity (created on first start if the hub does not have it yet). The same client receives
//! `$edgeAgent`'s direct methods, which [`MethodService`] answers for as long as the link lives.

use std::sync::Arc;

use async_trait::async_trait;
use outpost_core::ConnectionString;
use outpost_sdk::{ClientOptions, DesiredPatch, Incoming, ModuleClient};
use serde_json::Value;
use tokio::sync::Mutex;

use super::methods::MethodService;
use super::upstream::{TwinLink, TwinLinkError};
use super::Agent;

/// The `$edgeAgent` module client and its desired-properties stream.
struct SdkLink {
    client: ModuleClient,
    /// A tokio `Mutex`: `changed` holds it while it waits for the next patch.
    desired: Mutex<Incoming<DesiredPatch>>,
    /// The task answering direct methods; ended with the link.
    methods: tokio::task::AbortHandle,
}

impl Drop for SdkLink {
    fn drop(&mut self) {
        self.methods.abort();
    }
}

/// Connects to the hub as this device's `$edgeAgent`, and answers its direct methods with `methods`.
pub async fn connect(
    agent: Arc<Agent>,
    methods: Arc<MethodService>,
) -> Result<Box<dyn TwinLink>, TwinLinkError> {
    let credentials = agent.hub.ensure_module("$edgeAgent").await?;
    // The edge hub's identity exists from the first start too, as IoT Edge's runtime creates both.
    agent.hub.ensure_module("$edgeHub").await?;
    let connection = ConnectionString::module(
        &agent.device.hub_hostname,
        &agent.device.device_id,
        "$edgeAgent",
        &credentials.primary_key,
    );
    let ca =
        std::fs::read_to_string(&agent.config.hub_ca).map_err(|source| TwinLinkError::HubCa {
            path: agent.config.hub_ca.display().to_string(),
            source,
        })?;
    let options = ClientOptions {
        ca_pem: Some(ca),
        port: Some(agent.config.hub_mqtt_port),
        product_info: concat!("outpost-edge-agent/", env!("CARGO_PKG_VERSION")).to_owned(),
        ..ClientOptions::default()
    };
    let client = ModuleClient::from_connection_string(&connection.to_string(), options).await?;
    let desired = client.desired_properties().await?;
    let calls = client.direct_methods().await?;
    let methods = tokio::spawn(methods.serve(calls)).abort_handle();
    Ok(Box::new(SdkLink {
        client,
        desired: Mutex::new(desired),
        methods,
    }))
}

#[async_trait]
impl TwinLink for SdkLink {
    async fn desired(&self) -> Result<Value, TwinLinkError> {
        let twin = self.client.twin().await?;
        let mut desired = twin.desired;
        desired.insert("$version".into(), twin.desired_version.into());
        Ok(Value::Object(desired))
    }

    async fn changed(&self) -> Result<(), TwinLinkError> {
        self.desired
            .lock()
            .await
            .next()
            .await
            .map(drop)
            .ok_or(TwinLinkError::DesiredStreamEnded)
    }

    async fn reported(&self) -> Result<Value, TwinLinkError> {
        Ok(Value::Object(self.client.twin().await?.reported))
    }

    async fn report(&self, patch: &Value) -> Result<(), TwinLinkError> {
        self.client.patch_reported(patch.clone()).await?;
        Ok(())
    }
}
