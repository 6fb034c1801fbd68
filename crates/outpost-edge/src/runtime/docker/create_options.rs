//! The Docker create body of a module: the deployment's `createOptions` with what Outpost adds merged in (the
//! module environment, the workload socket bind, the gateway host entry, the edge network, a bounded json-file
//! log unless `createOptions` chooses its own, the image and the labels), everything else of `createOptions`
//! kept as written.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use bollard::container::Config;
use serde_json::{Map, Value};

use crate::runtime::{InstanceSpec, LogRotation};

/// Where the module's workload socket appears inside its container (AZURE-COMPAT §6.1).
pub const WORKLOAD_SOCKET_IN_CONTAINER: &str = "/var/run/iotedge/workload.sock";

/// Builds the create body of `spec`'s container, attached to `network` (unless `createOptions` chooses a
/// network mode), resolving the gateway host name to `gateway_ip`, its log bounded by `logs` (unless
/// `createOptions` sets a `HostConfig.LogConfig`).
pub(super) fn container_body(
    spec: &InstanceSpec,
    network: &str,
    gateway_ip: IpAddr,
    labels: &BTreeMap<String, String>,
    logs: LogRotation,
) -> Result<Config<String>, CreateOptionsError> {
    let mut body = match spec.create_options.as_deref().map(str::trim) {
        None | Some("") => Map::new(),
        Some(text) => match serde_json::from_str::<Value>(text) {
            Ok(Value::Object(map)) => map,
            Ok(_) => return Err(CreateOptionsError::NotAJsonObject),
            Err(e) => return Err(CreateOptionsError::NotJson(e)),
        },
    };

    // Env: the deployment's createOptions win over the module environment for the same name.
    let mut env = take_strings(&mut body, "Env", "Env")?;
    let set: BTreeSet<String> = env
        .iter()
        .map(|e| e.split('=').next().unwrap_or_default().to_owned())
        .collect();
    env.extend(
        spec.env
            .iter()
            .filter(|(k, _)| !set.contains(*k))
            .map(|(k, v)| format!("{k}={v}")),
    );
    body.insert("Env".into(), env.into());

    let host_config = body
        .entry("HostConfig")
        .or_insert_with(|| Value::Object(Map::new()));
    let Value::Object(host_config) = host_config else {
        return Err(CreateOptionsError::NotAnObject("createOptions HostConfig"));
    };
    let mut binds = take_strings(host_config, "Binds", "HostConfig.Binds")?;
    binds.push(format!(
        "{}:{WORKLOAD_SOCKET_IN_CONTAINER}",
        spec.workload_socket.display()
    ));
    host_config.insert("Binds".into(), binds.into());
    let mut extra_hosts = take_strings(host_config, "ExtraHosts", "HostConfig.ExtraHosts")?;
    extra_hosts.push(format!("{}:{gateway_ip}", spec.gateway_hostname));
    host_config.insert("ExtraHosts".into(), extra_hosts.into());
    let has_network_mode = host_config
        .get("NetworkMode")
        .and_then(Value::as_str)
        .is_some_and(|m| !m.is_empty());
    if !has_network_mode {
        host_config.insert("NetworkMode".into(), network.into());
    }
    // Docker's default json-file log grows without bound: the disk of a device fills with one chatty module.
    if host_config.get("LogConfig").is_none_or(Value::is_null) {
        host_config.insert("LogConfig".into(), json_file_log(logs));
    }

    let labels_value = body
        .entry("Labels")
        .or_insert_with(|| Value::Object(Map::new()));
    let Value::Object(all_labels) = labels_value else {
        return Err(CreateOptionsError::NotAnObject("createOptions Labels"));
    };
    for (k, v) in labels {
        all_labels.insert(k.clone(), v.clone().into());
    }
    body.insert("Image".into(), spec.image.clone().into());

    serde_json::from_value(Value::Object(body)).map_err(CreateOptionsError::DoesNotFit)
}

/// Why a module's `createOptions` cannot make a Docker create body.
#[derive(Debug, thiserror::Error)]
pub enum CreateOptionsError {
    /// Not JSON.
    #[error("createOptions is not valid JSON: {0}")]
    NotJson(#[source] serde_json::Error),
    /// It is JSON, but not an object.
    #[error("createOptions is not a JSON object")]
    NotAJsonObject,
    /// A part of it that must be an object is not one.
    #[error("{0} is not an object")]
    NotAnObject(&'static str),
    /// A list of strings is something else.
    #[error("createOptions {0} is not a list: {1}")]
    NotAList(&'static str, Value),
    /// A list of strings holds something else.
    #[error("createOptions {0} holds a non-string: {1}")]
    NotAString(&'static str, Value),
    /// The whole is not what Docker's create API takes.
    #[error("createOptions does not fit a Docker create body: {0}")]
    DoesNotFit(#[source] serde_json::Error),
}

/// A `HostConfig.LogConfig` for Docker's json-file driver rotating by `logs` (sizes in Docker's units).
fn json_file_log(logs: LogRotation) -> Value {
    let kib = logs.max_bytes.div_ceil(1024).max(1);
    let max_size = if kib.is_multiple_of(1024) {
        format!("{}m", kib / 1024)
    } else {
        format!("{kib}k")
    };
    serde_json::json!({
        "Type": "json-file",
        "Config": {"max-size": max_size, "max-file": logs.max_files.max(1).to_string()},
    })
}

/// Removes `key` from `map` as a list of strings (empty when absent or null).
fn take_strings(
    map: &mut Map<String, Value>,
    key: &str,
    what: &'static str,
) -> Result<Vec<String>, CreateOptionsError> {
    match map.remove(key) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(items)) => items
            .into_iter()
            .map(|v| match v {
                Value::String(s) => Ok(s),
                other => Err(CreateOptionsError::NotAString(what, other)),
            })
            .collect(),
        Some(other) => Err(CreateOptionsError::NotAList(what, other)),
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    fn spec(create_options: Option<&str>) -> InstanceSpec {
        InstanceSpec {
            name: "filter".into(),
            image: "127.0.0.1:5000/filter:1.0".into(),
            executable: None,
            args: vec![],
            create_options: create_options.map(str::to_owned),
            env: BTreeMap::from([("A".into(), "ours".into()), ("B".into(), "ours".into())]),
            workload_socket: PathBuf::from("/var/lib/outpost/mnt/filter.sock"),
            gateway_hostname: "edge.local".into(),
            digest: "abc".into(),
        }
    }

    fn body(create_options: Option<&str>) -> Result<Value, CreateOptionsError> {
        let labels = BTreeMap::from([("net.outpost.module".to_owned(), "filter".to_owned())]);
        let config = container_body(
            &spec(create_options),
            "outpost",
            "172.18.0.1".parse().unwrap(),
            &labels,
            LogRotation::default(),
        )?;
        Ok(serde_json::to_value(config).unwrap())
    }

    #[test]
    fn no_create_options_gives_the_environment_mounts_network_image_and_labels() {
        let b = body(None).unwrap();
        assert_eq!(b["Env"], serde_json::json!(["A=ours", "B=ours"]));
        assert_eq!(
            b["HostConfig"]["Binds"],
            serde_json::json!(["/var/lib/outpost/mnt/filter.sock:/var/run/iotedge/workload.sock"])
        );
        assert_eq!(
            b["HostConfig"]["ExtraHosts"],
            serde_json::json!(["edge.local:172.18.0.1"])
        );
        assert_eq!(b["HostConfig"]["NetworkMode"], "outpost");
        assert_eq!(b["Image"], "127.0.0.1:5000/filter:1.0");
        assert_eq!(b["Labels"]["net.outpost.module"], "filter");
    }

    #[test]
    fn create_options_env_wins_over_the_module_environment_for_the_same_name() {
        let b = body(Some(r#"{"Env":["B=theirs","C=theirs"]}"#)).unwrap();
        assert_eq!(
            b["Env"],
            serde_json::json!(["B=theirs", "C=theirs", "A=ours"])
        );
    }

    #[test]
    fn binds_and_extra_hosts_are_appended_and_the_rest_is_kept() {
        let b = body(Some(
            r#"{"Cmd":["run","--fast"],"Entrypoint":["/app"],"ExposedPorts":{"80/tcp":{}},
                "HostConfig":{"Binds":["/data:/data"],"ExtraHosts":["db:10.0.0.5"],
                "PortBindings":{"80/tcp":[{"HostPort":"8080"}]},"Privileged":true}}"#,
        ))
        .unwrap();
        assert_eq!(b["Cmd"], serde_json::json!(["run", "--fast"]));
        assert_eq!(b["Entrypoint"], serde_json::json!(["/app"]));
        assert_eq!(b["ExposedPorts"], serde_json::json!({"80/tcp": {}}));
        assert_eq!(b["HostConfig"]["Binds"][0], "/data:/data");
        assert_eq!(
            b["HostConfig"]["Binds"][1],
            "/var/lib/outpost/mnt/filter.sock:/var/run/iotedge/workload.sock"
        );
        assert_eq!(
            b["HostConfig"]["ExtraHosts"],
            serde_json::json!(["db:10.0.0.5", "edge.local:172.18.0.1"])
        );
        assert_eq!(
            b["HostConfig"]["PortBindings"]["80/tcp"][0]["HostPort"],
            "8080"
        );
        assert_eq!(b["HostConfig"]["Privileged"], true);
    }

    #[test]
    fn the_log_is_bounded_json_file_by_default() {
        let b = body(None).unwrap();
        assert_eq!(
            b["HostConfig"]["LogConfig"],
            serde_json::json!({"Type": "json-file", "Config": {"max-size": "10m", "max-file": "3"}})
        );
        let small = LogRotation {
            max_bytes: 64 << 10,
            max_files: 2,
        };
        assert_eq!(
            json_file_log(small),
            serde_json::json!({"Type": "json-file", "Config": {"max-size": "64k", "max-file": "2"}})
        );
    }

    #[test]
    fn a_log_config_from_create_options_is_kept_whole() {
        let b = body(Some(
            r#"{"HostConfig":{"LogConfig":{"Type":"local","Config":{"max-size":"1m"}}}}"#,
        ))
        .unwrap();
        assert_eq!(
            b["HostConfig"]["LogConfig"],
            serde_json::json!({"Type": "local", "Config": {"max-size": "1m"}})
        );
    }

    #[test]
    fn a_network_mode_from_create_options_is_kept() {
        let b = body(Some(r#"{"HostConfig":{"NetworkMode":"host"}}"#)).unwrap();
        assert_eq!(b["HostConfig"]["NetworkMode"], "host");
    }

    #[test]
    fn the_image_and_outpost_labels_override_create_options_but_other_labels_stay() {
        let b = body(Some(
            r#"{"Image":"other","Labels":{"net.outpost.module":"forged","team":"a"}}"#,
        ))
        .unwrap();
        assert_eq!(b["Image"], "127.0.0.1:5000/filter:1.0");
        assert_eq!(b["Labels"]["net.outpost.module"], "filter");
        assert_eq!(b["Labels"]["team"], "a");
    }

    #[test]
    fn invalid_create_options_are_refused_with_the_reason() {
        assert!(body(Some("{not json"))
            .unwrap_err()
            .to_string()
            .contains("not valid JSON"));
        assert!(matches!(
            body(Some("[1]")),
            Err(CreateOptionsError::NotAJsonObject)
        ));
        assert!(matches!(
            body(Some(r#"{"HostConfig":[]}"#)),
            Err(CreateOptionsError::NotAnObject("createOptions HostConfig"))
        ));
        assert!(body(Some(r#"{"Env":"A=1"}"#))
            .unwrap_err()
            .to_string()
            .contains("Env is not a list"));
        assert!(body(Some(r#"{"HostConfig":{"Binds":[1]}}"#))
            .unwrap_err()
            .to_string()
            .contains("non-string"));
        assert!(body(Some(r#"{"Cmd":"not a list"}"#))
            .unwrap_err()
            .to_string()
            .contains("does not fit"));
    }

    #[test]
    fn empty_create_options_count_as_none() {
        assert_eq!(body(Some("  ")).unwrap(), body(None).unwrap());
    }
}
