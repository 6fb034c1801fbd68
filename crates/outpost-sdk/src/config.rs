//! What a client connects with: identity, hosts, endpoint, credential and options, built once and shared by
//! the client handles and the driver.

use outpost_core::{ConnectionString, DeviceId, Identity, ModuleId};

use crate::credentials::{Credential, IssuedToken};
use crate::error::ClientError;
use crate::link::Endpoint;
use crate::options::ClientOptions;
use crate::topics;

/// The MQTT port the device SDK dials.
const MQTT_PORT: u16 = 8883;

/// Everything needed to (re)connect, shared by the client and its driver.
pub(crate) struct Config {
    /// Whose connection this is.
    pub(crate) identity: Identity,
    /// The IoT Hub host name: the token's audience and the username's first part.
    pub(crate) hub_host: String,
    /// Where to connect (the gateway, or the hub).
    pub(crate) endpoint: Endpoint,
    /// The gateway, when the client connects through one (module method invocation needs it).
    pub(crate) gateway_host: Option<String>,
    /// How tokens are made.
    pub(crate) credential: Credential,
    /// The settings.
    pub(crate) options: ClientOptions,
}

impl Config {
    /// A fresh token.
    pub(crate) async fn token(&self) -> Result<IssuedToken, ClientError> {
        self.credential
            .issue(
                &self.hub_host,
                &self.identity,
                self.options.token_ttl,
                self.options.renew_after(),
            )
            .await
    }
}

/// The configuration of a client.
pub(crate) fn build(
    identity: Identity,
    hub_host: String,
    connect_host: String,
    connect_port: Option<u16>,
    gateway_host: Option<String>,
    credential: Credential,
    options: ClientOptions,
) -> Result<Config, ClientError> {
    let tls = crate::tls::client_config(options.ca_pem.as_deref())?;
    let keep_alive = u16::try_from(options.keep_alive.as_secs()).unwrap_or(u16::MAX);
    let endpoint = Endpoint {
        port: options.port.or(connect_port).unwrap_or(MQTT_PORT),
        host: connect_host,
        tls,
        client_id: identity.client_id(),
        username: topics::username(&hub_host, &identity, &options.user_agent()),
        keep_alive,
        connect_timeout: options.connect_timeout,
    };
    Ok(Config {
        identity,
        hub_host,
        endpoint,
        gateway_host,
        credential,
        options,
    })
}

/// The configuration of a device (`module` false) or module client from its connection string.
pub(crate) fn from_connection_string(
    connection_string: &str,
    options: ClientOptions,
    module: bool,
) -> Result<Config, ClientError> {
    let cs: ConnectionString = connection_string
        .parse()
        .map_err(|e| ClientError::Configuration(format!("connection string: {e}")))?;
    let device = cs.device_id.clone().ok_or_else(|| {
        ClientError::Configuration(
            "a service connection string (no DeviceId) cannot open a device or module client"
                .into(),
        )
    })?;
    let identity = match (&cs.module_id, module) {
        (Some(module), true) => Identity::module(device_id(&device)?, module_id(module)?),
        (None, false) => Identity::device(device_id(&device)?),
        (Some(module), false) => {
            return Err(ClientError::Configuration(format!(
                "the connection string names module {module}: open it with ModuleClient"
            )))
        }
        (None, true) => {
            return Err(ClientError::Configuration(
                "the connection string names no ModuleId: open it with DeviceClient".into(),
            ))
        }
    };
    let credential = match (&cs.shared_access_key, &cs.shared_access_signature) {
        (Some(key), _) => Credential::Key(key.clone()),
        (None, Some(token)) => Credential::Token(token.clone()),
        (None, None) => {
            return Err(ClientError::NotSupported(
                "X.509 authentication; give SharedAccessKey or SharedAccessSignature".into(),
            ))
        }
    };
    let hub_host = cs.host_and_port().0.to_owned();
    let (connect_host, connect_port) = if let Some(gateway) = &cs.gateway_host_name {
        split_port(gateway)
    } else {
        let (host, port) = cs.host_and_port();
        (host.to_owned(), port)
    };
    let gateway = cs.gateway_host_name.as_deref().map(|g| split_port(g).0);
    build(
        identity,
        hub_host,
        connect_host,
        connect_port,
        gateway,
        credential,
        options,
    )
}

/// `host:port` → (`host`, `Some(port)`), the rules of `HostName`.
pub(crate) fn split_port(host: &str) -> (String, Option<u16>) {
    let parsed = ConnectionString {
        host_name: host.to_owned(),
        ..ConnectionString::default()
    };
    let (host, port) = parsed.host_and_port();
    (host.to_owned(), port)
}

pub(crate) fn device_id(id: &str) -> Result<DeviceId, ClientError> {
    DeviceId::new(id).map_err(|e| ClientError::Configuration(format!("device id {id:?}: {e}")))
}

pub(crate) fn module_id(id: &str) -> Result<ModuleId, ClientError> {
    ModuleId::new(id).map_err(|e| ClientError::Configuration(format!("module id {id:?}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_port_in_a_host_name_is_split_off() {
        assert_eq!(
            split_port("edge.local:18883"),
            ("edge.local".into(), Some(18883))
        );
        assert_eq!(split_port("127.0.0.9"), ("127.0.0.9".into(), None));
    }
}
