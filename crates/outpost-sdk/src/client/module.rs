//! What only a module client does: connect from the edge runtime's environment, send to outputs, receive
//! from inputs, invoke methods through the gateway.

use std::sync::Arc;

use outpost_core::{Identity, ModuleId};

use super::{kind, Client};
use crate::config::{self, device_id, module_id, split_port};
use crate::credentials::Credential;
use crate::error::ClientError;
use crate::message::Message;
use crate::methods::{Invoker, MethodInvocation, MethodResult, MethodTarget};
use crate::options::ClientOptions;
use crate::stream::Incoming;
use crate::topics::Feature;
use crate::workload::WorkloadClient;
use crate::EdgeEnvironment;

impl Client<kind::Module> {
    /// Connects a module with its connection string (`HostName=..;DeviceId=..;ModuleId=..;SharedAccessKey=..`,
    /// optionally `GatewayHostName=..` to connect through its edge hub).
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), outpost_sdk::ClientError> {
    /// use outpost_sdk::{ClientOptions, ModuleClient};
    /// let client = ModuleClient::from_connection_string(
    ///     "HostName=hub.local;DeviceId=edge-1;ModuleId=filter;SharedAccessKey=c2VjcmV0LWtleS1vZi1maWx0ZXI=",
    ///     ClientOptions { ca_pem: Some(std::fs::read_to_string("ca.pem").unwrap()), ..Default::default() },
    /// ).await?;
    /// # Ok(()) }
    /// ```
    pub async fn from_connection_string(
        connection_string: &str,
        options: ClientOptions,
    ) -> Result<Self, ClientError> {
        Self::from_parsed(connection_string, options).await
    }

    /// Connects the way a module started by the edge runtime does: from the `IOTEDGE_*` environment, with
    /// the trust bundle and token signatures of the workload API, to the gateway. Outside a runtime it
    /// falls back to `EdgeHubConnectionString` and `EdgeModuleCACertificateFile`, as the Azure SDK does.
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), outpost_sdk::ClientError> {
    /// let client = outpost_sdk::ModuleClient::from_environment().await?;
    /// # Ok(()) }
    /// ```
    pub async fn from_environment() -> Result<Self, ClientError> {
        Self::from_environment_with(ClientOptions::default()).await
    }

    /// [`from_environment`](Self::from_environment) with options (its `ca_pem`, when set, replaces the
    /// trust bundle and the CA file).
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), outpost_sdk::ClientError> {
    /// use outpost_sdk::{ClientOptions, ModuleClient};
    /// let options = ClientOptions { product_info: "filter/1.0".into(), ..ClientOptions::default() };
    /// let client = ModuleClient::from_environment_with(options).await?;
    /// # Ok(()) }
    /// ```
    pub async fn from_environment_with(options: ClientOptions) -> Result<Self, ClientError> {
        Self::from_edge_environment(EdgeEnvironment::from_env()?, options).await
    }

    /// Connects with an environment read elsewhere (see [`EdgeEnvironment::from_lookup`]).
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), outpost_sdk::ClientError> {
    /// use outpost_sdk::{ClientOptions, EdgeEnvironment, ModuleClient};
    /// let environment = EdgeEnvironment::ConnectionString {
    ///     connection_string: "HostName=hub.local;GatewayHostName=edge-1.local;DeviceId=edge-1;ModuleId=filter;SharedAccessKey=c2VjcmV0LWtleS1vZi1maWx0ZXI=".into(),
    ///     ca_file: Some("/certs/edge-ca.pem".into()),
    /// };
    /// let client = ModuleClient::from_edge_environment(environment, ClientOptions::default()).await?;
    /// # Ok(()) }
    /// ```
    pub async fn from_edge_environment(
        environment: EdgeEnvironment,
        mut options: ClientOptions,
    ) -> Result<Self, ClientError> {
        match environment {
            EdgeEnvironment::Runtime {
                hub_host_name,
                device_id: device,
                module_id: module,
                gateway_host_name,
                generation_id,
                workload_uri,
                api_version,
            } => {
                let workload = WorkloadClient::new(&workload_uri, &api_version)?;
                if options.ca_pem.is_none() {
                    options.ca_pem = Some(workload.trust_bundle().await?);
                }
                let identity = Identity::module(device_id(&device)?, module_id(&module)?);
                let (gateway, port) = split_port(&gateway_host_name);
                let credential = Credential::Workload {
                    client: workload,
                    generation_id,
                };
                let config = config::build(
                    identity,
                    hub_host_name,
                    gateway.clone(),
                    port,
                    Some(gateway),
                    credential,
                    options,
                )?;
                Self::open(config).await
            }
            EdgeEnvironment::ConnectionString {
                connection_string,
                ca_file,
            } => {
                if let (Some(path), None) = (&ca_file, &options.ca_pem) {
                    let pem = std::fs::read_to_string(path).map_err(|e| {
                        ClientError::Configuration(format!(
                            "EdgeModuleCACertificateFile {}: {e}",
                            path.display()
                        ))
                    })?;
                    options.ca_pem = Some(pem);
                }
                Self::from_connection_string(&connection_string, options).await
            }
        }
    }

    /// The module id.
    pub fn module_id(&self) -> &str {
        self.inner
            .config
            .identity
            .module
            .as_ref()
            .map_or("", ModuleId::as_str)
    }

    /// Sends a message to one of the module's outputs (routes of the edge hub take it from there).
    ///
    /// ```no_run
    /// # async fn run(client: outpost_sdk::ModuleClient) -> Result<(), outpost_sdk::ClientError> {
    /// client.send_output("output1", outpost_sdk::Message::new("alert")).await?;
    /// # Ok(()) }
    /// ```
    pub async fn send_output(&self, output: &str, message: Message) -> Result<(), ClientError> {
        self.send_telemetry(message.with_system_property("outputName", output))
            .await
    }

    /// The stream of messages routed to the module's inputs; [`Message::input_name`] says which. It can be
    /// taken once.
    ///
    /// ```no_run
    /// # async fn run(client: outpost_sdk::ModuleClient) -> Result<(), outpost_sdk::ClientError> {
    /// let mut inputs = client.inputs().await?;
    /// while let Some(message) = inputs.next().await {
    ///     if message.input_name() == Some("input1") {
    ///         client.send_output("output1", message).await?;
    ///     }
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn inputs(&self) -> Result<Incoming<Message>, ClientError> {
        self.take(Feature::Inputs, |s| &mut s.inputs).await
    }

    /// Calls a direct method on another module or a device through the gateway (edge hub), over HTTPS
    /// (AZURE-COMPAT §1.6). Needs a gateway: a module started by the edge runtime, or a connection string
    /// with `GatewayHostName`. Outpost's edge hub serves this endpoint; the hub alone does not.
    ///
    /// ```no_run
    /// # async fn run(client: outpost_sdk::ModuleClient) -> Result<(), outpost_sdk::ClientError> {
    /// use outpost_sdk::{MethodInvocation, MethodTarget};
    /// let result = client
    ///     .invoke_method(
    ///         MethodTarget::module("edge-1", "simulated-temperature-sensor"),
    ///         MethodInvocation::new("reset", serde_json::Value::Null),
    ///     )
    ///     .await?;
    /// println!("{} {}", result.status, result.payload);
    /// # Ok(()) }
    /// ```
    pub async fn invoke_method(
        &self,
        target: MethodTarget,
        invocation: MethodInvocation,
    ) -> Result<MethodResult, ClientError> {
        let config = &self.inner.config;
        let gateway = config.gateway_host.as_deref().ok_or_else(|| {
            ClientError::NotSupported(
                "invoking methods needs a gateway (IOTEDGE_GATEWAYHOSTNAME or GatewayHostName)"
                    .into(),
            )
        })?;
        let token = config.token().await?;
        let user_agent = config.options.user_agent();
        Invoker {
            gateway,
            port: config.options.https_port,
            tls: Arc::clone(&config.endpoint.tls),
            caller: &config.identity,
            token: &token.token,
            user_agent: &user_agent,
        }
        .invoke(&target, &invocation)
        .await
    }
}
