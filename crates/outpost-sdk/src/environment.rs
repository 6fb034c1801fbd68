//! What the edge runtime tells a module about itself (AZURE-COMPAT §6.1), read from the environment.
//!
//! Inside the runtime, seven `IOTEDGE_*` variables name the hub, the device, the module, the gateway and
//! the workload API. Outside it (local development), the Azure SDK's fallback applies: a connection string
//! in `EdgeHubConnectionString` and the gateway's CA in `EdgeModuleCACertificateFile`.

use std::path::PathBuf;

use crate::error::ClientError;

/// The variables `create_from_edge_environment` of azure-iot-device reads; all must be present.
pub const RUNTIME_VARIABLES: [&str; 7] = [
    "IOTEDGE_IOTHUBHOSTNAME",
    "IOTEDGE_DEVICEID",
    "IOTEDGE_MODULEID",
    "IOTEDGE_GATEWAYHOSTNAME",
    "IOTEDGE_MODULEGENERATIONID",
    "IOTEDGE_WORKLOADURI",
    "IOTEDGE_APIVERSION",
];

/// Where a module finds its identity and credentials.
///
/// ```
/// use std::collections::HashMap;
/// use outpost_sdk::EdgeEnvironment;
///
/// let vars: HashMap<&str, &str> = [
///     ("IOTEDGE_IOTHUBHOSTNAME", "hub.example"),
///     ("IOTEDGE_DEVICEID", "edge-1"),
///     ("IOTEDGE_MODULEID", "filter"),
///     ("IOTEDGE_GATEWAYHOSTNAME", "edge-1.local"),
///     ("IOTEDGE_MODULEGENERATIONID", "638000000000000000"),
///     ("IOTEDGE_WORKLOADURI", "unix:///var/run/iotedge/workload.sock"),
///     ("IOTEDGE_APIVERSION", "2022-08-03"),
/// ].into_iter().collect();
/// let environment = EdgeEnvironment::from_lookup(|name| vars.get(name).map(|v| v.to_string())).unwrap();
/// assert!(matches!(environment, EdgeEnvironment::Runtime { .. }));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EdgeEnvironment {
    /// Started by an edge runtime: sign through its workload API, connect to the gateway.
    Runtime {
        /// `IOTEDGE_IOTHUBHOSTNAME`: the hub's host name (the token audience).
        hub_host_name: String,
        /// `IOTEDGE_DEVICEID`.
        device_id: String,
        /// `IOTEDGE_MODULEID`.
        module_id: String,
        /// `IOTEDGE_GATEWAYHOSTNAME`: where to connect (the edge hub).
        gateway_host_name: String,
        /// `IOTEDGE_MODULEGENERATIONID`.
        generation_id: String,
        /// `IOTEDGE_WORKLOADURI` (`unix:///...`).
        workload_uri: String,
        /// `IOTEDGE_APIVERSION`: the workload API version.
        api_version: String,
    },
    /// Local development: a module connection string (usually with `GatewayHostName`) and a CA file.
    ConnectionString {
        /// `EdgeHubConnectionString`.
        connection_string: String,
        /// `EdgeModuleCACertificateFile`: the CA of the gateway's certificate, if given.
        ca_file: Option<PathBuf>,
    },
}

impl EdgeEnvironment {
    /// Reads the process environment.
    ///
    /// ```no_run
    /// let environment = outpost_sdk::EdgeEnvironment::from_env()?;
    /// # Ok::<(), outpost_sdk::ClientError>(())
    /// ```
    pub fn from_env() -> Result<Self, ClientError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads the variables through `lookup` (the environment of another process, a test...). Empty values
    /// count as absent.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ClientError> {
        let get = |name: &str| lookup(name).filter(|v| !v.is_empty());
        let runtime: Vec<Option<String>> = RUNTIME_VARIABLES.iter().map(|name| get(name)).collect();
        if let [Some(hub), Some(device), Some(module), Some(gateway), Some(generation), Some(workload), Some(api)] =
            &runtime[..]
        {
            return Ok(Self::Runtime {
                hub_host_name: hub.clone(),
                device_id: device.clone(),
                module_id: module.clone(),
                gateway_host_name: gateway.clone(),
                generation_id: generation.clone(),
                workload_uri: workload.clone(),
                api_version: api.clone(),
            });
        }
        if let Some(connection_string) = get("EdgeHubConnectionString") {
            return Ok(Self::ConnectionString {
                connection_string,
                ca_file: get("EdgeModuleCACertificateFile").map(PathBuf::from),
            });
        }
        let missing: Vec<&str> = RUNTIME_VARIABLES
            .iter()
            .zip(&runtime)
            .filter(|(_, value)| value.is_none())
            .map(|(name, _)| *name)
            .collect();
        Err(ClientError::Configuration(format!(
            "not started by an edge runtime ({} not set) and no EdgeHubConnectionString for local development",
            missing.join(", ")
        )))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn lookup(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |name| vars.get(name).cloned()
    }

    #[test]
    fn an_incomplete_runtime_environment_falls_back_to_the_connection_string() {
        let environment = EdgeEnvironment::from_lookup(lookup(&[
            ("IOTEDGE_DEVICEID", "d"),
            (
                "EdgeHubConnectionString",
                "HostName=h;DeviceId=d;ModuleId=m;SharedAccessKey=a2V5",
            ),
            ("EdgeModuleCACertificateFile", "/certs/ca.pem"),
        ]))
        .unwrap();
        assert_eq!(
            environment,
            EdgeEnvironment::ConnectionString {
                connection_string: "HostName=h;DeviceId=d;ModuleId=m;SharedAccessKey=a2V5".into(),
                ca_file: Some("/certs/ca.pem".into()),
            }
        );
    }

    #[test]
    fn with_neither_the_error_names_what_is_missing() {
        let error = EdgeEnvironment::from_lookup(lookup(&[("IOTEDGE_DEVICEID", "d")])).unwrap_err();
        let text = error.to_string();
        assert!(text.contains("IOTEDGE_WORKLOADURI"), "{text}");
        assert!(!text.contains("IOTEDGE_DEVICEID,"), "{text}");
        assert!(text.contains("EdgeHubConnectionString"), "{text}");
    }

    #[test]
    fn empty_values_count_as_absent() {
        let error = EdgeEnvironment::from_lookup(lookup(&[("EdgeHubConnectionString", "")]));
        assert!(matches!(error, Err(ClientError::Configuration(_))));
    }
}
