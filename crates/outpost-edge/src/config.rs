//! The edge daemon's settings (`outpost edge run --config FILE`), a TOML file in the spirit of Azure IoT Edge's
//! `config.toml`. Documented in docs/operations.md.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use outpost_core::{ConnectionString, ConnectionStringError};
use serde::{Deserialize, Serialize};

/// Errors in the settings file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML or misses a setting.
    #[error("invalid settings in {path}: {reason}")]
    Invalid {
        /// The file.
        path: String,
        /// What is wrong.
        #[source]
        reason: SettingsError,
    },
}

/// What is wrong with settings text.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// Not valid TOML, an unknown setting, or a value of the wrong type.
    #[error(transparent)]
    Toml(#[from] toml::de::Error),
    /// The connection string does not parse.
    #[error("connection_string: {0}")]
    ConnectionString(#[from] ConnectionStringError),
    /// The connection string names no device.
    #[error("connection_string has no DeviceId")]
    NoDeviceId,
    /// The connection string has no key.
    #[error("connection_string has no SharedAccessKey")]
    NoSharedAccessKey,
    /// The connection string says `x509=true` and no certificate is configured.
    #[error("connection_string has x509=true, which needs [provisioning.attestation] method = \"x509\" with identity_cert and identity_pk")]
    NoCertificate,
    /// The connection string is a module's.
    #[error("connection_string must be the edge device's, not a module's")]
    ModuleConnectionString,
    /// `hostname` is empty.
    #[error("hostname must not be empty")]
    EmptyHostname,
    /// A setting that must be at least 1 is 0.
    #[error("{0} must be at least 1")]
    Zero(&'static str),
    /// Neither `connection_string` nor `[provisioning]`, or both.
    #[error("give either connection_string or a [provisioning] section, not {0}")]
    Identity(&'static str),
    /// `[provisioning]` is incomplete or wrong.
    #[error("provisioning: {0}")]
    Provisioning(String),
    /// The device has not been provisioned yet (`[provisioning]` without a stored assignment).
    #[error("the device is not provisioned yet")]
    NotProvisioned,
}

/// The edge daemon's settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EdgeConfig {
    /// The edge device's connection string (`HostName=..;DeviceId=..;SharedAccessKey=..`); absent when the
    /// device provisions itself (`[provisioning]`), which then fills it in at start from what it was assigned.
    #[serde(default)]
    pub connection_string: Option<String>,
    /// How the device gets its identity when there is no connection string: `source = "dps"` registers with a
    /// provisioning service on first start (see [`crate::provisioning`]).
    #[serde(default)]
    pub provisioning: Option<ProvisioningConfig>,
    /// The CA certificate (PEM) the hub's TLS certificate chains to.
    pub hub_ca: PathBuf,
    /// The hub's HTTPS port (443 unless the hub serves elsewhere).
    #[serde(default = "default_https_port")]
    pub hub_https_port: u16,
    /// The hub's MQTT port (8883).
    #[serde(default = "default_mqtt_port")]
    pub hub_mqtt_port: u16,
    /// Where the daemon keeps its state: the last-known-good deployment, identities, sockets, logs.
    pub data_dir: PathBuf,
    /// The name modules and downstream devices use for this edge device (`IOTEDGE_GATEWAYHOSTNAME`).
    pub hostname: String,
    /// The address the edge hub listens on for processes on this device.
    #[serde(default = "default_listen")]
    pub listen_address: IpAddr,
    /// The edge hub's MQTT port (modules and downstream devices dial 8883).
    #[serde(default = "default_mqtt_port")]
    pub edge_mqtt_port: u16,
    /// The edge hub's HTTPS port (the module-to-module method API; the Azure SDK dials 443).
    #[serde(default = "default_https_port")]
    pub edge_https_port: u16,
    /// Store-and-forward settings.
    #[serde(default)]
    pub store: StoreConfig,
    /// The module runtime.
    pub runtime: RuntimeConfig,
    /// Prometheus metrics (`[metrics] listen = "ADDR:9600"`): off unless set.
    #[serde(default)]
    pub metrics: MetricsConfig,
    /// Uploads of logs and support bundles (`$edgeAgent`'s `UploadModuleLogs`, `UploadSupportBundle`).
    #[serde(default)]
    pub upload: UploadConfig,
    /// The file these settings were read from (set by [`EdgeConfig::load`]; the support bundle includes it,
    /// redacted, and runs `outpost edge check` on it).
    #[serde(skip)]
    pub source: Option<PathBuf>,
    /// The disk budget: module logs, image garbage collection, the free-space guard.
    #[serde(default)]
    pub disk: DiskConfig,
    /// The lifetimes of the certificates the daemon makes.
    #[serde(default)]
    pub certificates: CertificatesConfig,
}

/// `[provisioning]`: registration with a Device Provisioning Service (named as in aziot's `config.toml`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProvisioningConfig {
    /// `"dps"`: the only source there is besides `connection_string`.
    pub source: String,
    /// The provisioning host (aziot's `global_endpoint`): a host name, or a URL whose host is taken.
    pub global_endpoint: String,
    /// The port the provisioning service's MQTT listens on (8883).
    #[serde(default = "default_mqtt_port")]
    pub mqtt_port: u16,
    /// The ID scope.
    pub id_scope: String,
    /// How the device proves its registration.
    pub attestation: AttestationConfig,
}

/// `[provisioning.attestation]`: how the device proves its registration, by aziot's `method`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "method")]
pub enum AttestationConfig {
    /// `method = "symmetric_key"`.
    #[serde(rename = "symmetric_key")]
    SymmetricKey(SymmetricKeyAttestation),
    /// `method = "x509"`.
    #[serde(rename = "x509")]
    X509(X509Attestation),
}

/// `[provisioning.attestation] method = "symmetric_key"`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SymmetricKeyAttestation {
    /// The registration id.
    pub registration_id: String,
    /// The device's key (for a group member: the key derived from the group key and the registration id):
    /// `"base64"` or aziot's `{ value = "base64" }`.
    pub symmetric_key: SymmetricKeySetting,
}

/// `[provisioning.attestation] method = "x509"`: the device's certificate, which is also how it authenticates to
/// the hub it is assigned (REST and the upstream link with the certificate, no key).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct X509Attestation {
    /// The registration id; by default the certificate's common name (what DPS requires of it anyway).
    #[serde(default)]
    pub registration_id: Option<String>,
    /// The device's certificate chain, leaf first (PEM): a path, or aziot's `file:///path` URI.
    #[serde(deserialize_with = "file_setting")]
    pub identity_cert: PathBuf,
    /// The leaf's private key (PEM): a path, or aziot's `file:///path` URI.
    #[serde(deserialize_with = "file_setting")]
    pub identity_pk: PathBuf,
}

impl X509Attestation {
    /// The certificate and key files.
    pub fn files(&self) -> CertificateFiles {
        CertificateFiles {
            cert: self.identity_cert.clone(),
            key: self.identity_pk.clone(),
        }
    }
}

/// Reads a file setting: a path, or a `file://` URI (aziot writes `identity_cert = "file:///var/secrets/x.pem"`).
fn file_setting<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<PathBuf, D::Error> {
    let text = String::deserialize(deserializer)?;
    let path = match text.strip_prefix("file://") {
        Some(uri) => outpost_core::quote::unquote(uri).map_err(serde::de::Error::custom)?,
        None => text,
    };
    if path.is_empty() {
        return Err(serde::de::Error::custom("a file path must not be empty"));
    }
    Ok(PathBuf::from(path))
}

/// A symmetric key as text, or as aziot's `{ value = ".." }`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum SymmetricKeySetting {
    /// The base64 key.
    Text(String),
    /// `{ value = "base64" }`.
    Value {
        /// The base64 key.
        value: String,
    },
}

impl SymmetricKeySetting {
    /// The base64 key.
    pub fn key(&self) -> &str {
        match self {
            Self::Text(key) | Self::Value { value: key } => key,
        }
    }
}

impl ProvisioningConfig {
    /// The provisioning host: `global_endpoint` without scheme, port or path.
    pub fn host(&self) -> &str {
        let endpoint = self.global_endpoint.trim();
        let endpoint = endpoint
            .split_once("://")
            .map_or(endpoint, |(_, rest)| rest);
        let endpoint = endpoint.split('/').next().unwrap_or(endpoint);
        endpoint
            .rsplit_once(':')
            .filter(|(_, port)| port.parse::<u16>().is_ok())
            .map_or(endpoint, |(host, _)| host)
    }

    fn check(&self) -> Result<(), SettingsError> {
        let refuse = |why: String| Err(SettingsError::Provisioning(why));
        if self.source != "dps" {
            return refuse(format!(
                "source {:?} is not supported (\"dps\")",
                self.source
            ));
        }
        if self.host().is_empty() {
            return refuse("global_endpoint names no host".into());
        }
        if self.id_scope.is_empty() {
            return refuse("id_scope must not be empty".into());
        }
        match &self.attestation {
            AttestationConfig::SymmetricKey(attestation) => {
                outpost_core::provisioning::validate_registration_id(&attestation.registration_id)
                    .map_err(|e| SettingsError::Provisioning(e.to_string()))?;
                if outpost_core::sign(attestation.symmetric_key.key(), b"probe").is_err() {
                    return refuse("attestation.symmetric_key is not a base64 key".into());
                }
            }
            AttestationConfig::X509(attestation) => {
                if let Some(registration_id) = &attestation.registration_id {
                    outpost_core::provisioning::validate_registration_id(registration_id)
                        .map_err(|e| SettingsError::Provisioning(e.to_string()))?;
                }
            }
        }
        Ok(())
    }
}

/// How long the edge's certificates are valid (`"365d"`, `"90d"`, `"30s"`); each is renewed at 80 % of its
/// life without a restart (docs/operations.md, "Certificates that renew themselves").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertificatesConfig {
    /// A new edge CA (365 days). The old one stays in the trust bundle until it expires.
    #[serde(default = "default_ca_lifetime", deserialize_with = "lifetime")]
    pub ca_lifetime: std::time::Duration,
    /// The edge hub's server certificate (90 days).
    #[serde(default = "default_server_lifetime", deserialize_with = "lifetime")]
    pub server_cert_lifetime: std::time::Duration,
    /// The module server certificates the workload API issues (30 days); modules ask again before the
    /// `expiration` they were given.
    #[serde(default = "default_workload_lifetime", deserialize_with = "lifetime")]
    pub workload_cert_lifetime: std::time::Duration,
}

impl Default for CertificatesConfig {
    fn default() -> Self {
        Self {
            ca_lifetime: default_ca_lifetime(),
            server_cert_lifetime: default_server_lifetime(),
            workload_cert_lifetime: default_workload_lifetime(),
        }
    }
}

fn default_ca_lifetime() -> std::time::Duration {
    outpost_pki::DEFAULT_CA_LIFETIME
}
fn default_server_lifetime() -> std::time::Duration {
    outpost_pki::DEFAULT_SERVER_LIFETIME
}
fn default_workload_lifetime() -> std::time::Duration {
    outpost_pki::DEFAULT_WORKLOAD_LIFETIME
}

/// Reads a certificate lifetime: a positive number followed by `s`, `m`, `h` or `d`.
fn lifetime<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<std::time::Duration, D::Error> {
    let text = String::deserialize(deserializer)?;
    outpost_core::units::parse_duration(&text).map_err(serde::de::Error::custom)
}

/// Where the daemon serves Prometheus metrics (docs/operations.md, "Metrics").
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// The address of the plain-HTTP `/metrics` listener (Azure IoT Edge's port is 9600); none: off.
    pub listen: Option<std::net::SocketAddr>,
}

/// The disk budget of the edge device (docs/operations.md, "The disk budget").
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskConfig {
    /// The size at which a module's log file is rotated, in KiB (process modules' `output.log`, containers'
    /// json-file log).
    #[serde(default = "default_log_max_size_kib")]
    pub log_max_size_kib: u64,
    /// How many log files a module keeps, the current one included.
    #[serde(default = "default_log_max_files")]
    pub log_max_files: u32,
    /// An image Outpost pulled that no deployed module has used for this long is removed, in seconds.
    #[serde(default = "default_image_gc_unused_secs")]
    pub image_gc_unused_secs: u64,
    /// How often images are looked at for removal, in seconds (and once at start).
    #[serde(default = "default_image_gc_interval_secs")]
    pub image_gc_interval_secs: u64,
    /// Below this much free space on the file system of the message log, in MiB, new messages are refused.
    #[serde(default = "default_min_free_mib")]
    pub min_free_mib: u64,
}

fn default_log_max_size_kib() -> u64 {
    10 * 1024
}
fn default_log_max_files() -> u32 {
    3
}
fn default_image_gc_unused_secs() -> u64 {
    7 * 24 * 3600
}
fn default_image_gc_interval_secs() -> u64 {
    3600
}
fn default_min_free_mib() -> u64 {
    256
}

impl Default for DiskConfig {
    fn default() -> Self {
        Self {
            log_max_size_kib: default_log_max_size_kib(),
            log_max_files: default_log_max_files(),
            image_gc_unused_secs: default_image_gc_unused_secs(),
            image_gc_interval_secs: default_image_gc_interval_secs(),
            min_free_mib: default_min_free_mib(),
        }
    }
}

impl DiskConfig {
    /// How module logs rotate.
    pub fn log_rotation(&self) -> crate::runtime::LogRotation {
        crate::runtime::LogRotation {
            max_bytes: self.log_max_size_kib.max(1) << 10,
            max_files: self.log_max_files.max(1),
        }
    }

    /// Checks the values that would make no sense.
    fn check(&self) -> Result<(), SettingsError> {
        for (name, value) in [
            ("disk.log_max_size_kib", self.log_max_size_kib),
            ("disk.log_max_files", u64::from(self.log_max_files)),
            ("disk.image_gc_unused_secs", self.image_gc_unused_secs),
            ("disk.image_gc_interval_secs", self.image_gc_interval_secs),
        ] {
            if value == 0 {
                return Err(SettingsError::Zero(name));
            }
        }
        Ok(())
    }
}

/// Where `$edgeAgent` may upload logs and support bundles: any HTTPS endpoint that takes a PUT (an Azure blob
/// container's SAS URL), trusted by the public web roots plus, optionally, one more CA.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UploadConfig {
    /// A PEM file of CA certificates trusted for uploads besides the public roots (a private blob endpoint).
    #[serde(default)]
    pub trusted_ca: Option<PathBuf>,
}

/// The edge hub's message store.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// The most disk the message log may use, in MiB.
    #[serde(default = "default_quota_mib")]
    pub quota_mib: u64,
    /// When the log is full: `reject` new messages (senders get no acknowledgement and retry; nothing
    /// acknowledged is ever lost), or `drop-oldest` (the oldest stored messages make room, counted dropped).
    #[serde(default)]
    pub when_full: WhenFull,
}

/// What the edge hub does when its message log reaches its quota.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum WhenFull {
    /// Refuse new messages until there is room.
    #[default]
    Reject,
    /// Drop the oldest messages.
    DropOldest,
}

fn default_quota_mib() -> u64 {
    1024
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            quota_mib: default_quota_mib(),
            when_full: WhenFull::Reject,
        }
    }
}

impl StoreConfig {
    /// The log options these settings mean.
    pub fn log_options(&self) -> outpost_store::log::LogOptions {
        let quota_bytes = self.quota_mib.max(1) << 20;
        let segment_bytes = (quota_bytes / 8).clamp(64 << 10, 16 << 20);
        outpost_store::log::LogOptions {
            segment_bytes,
            quota_bytes,
            full_policy: match self.when_full {
                WhenFull::Reject => outpost_store::log::FullPolicy::RejectNew,
                WhenFull::DropOldest => outpost_store::log::FullPolicy::DropOldest,
            },
            ..outpost_store::log::LogOptions::default()
        }
    }
}

/// Which runtime starts module instances.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum RuntimeConfig {
    /// Docker Engine.
    Docker {
        /// The Engine API socket.
        #[serde(default = "default_docker_socket")]
        socket: PathBuf,
        /// The bridge network Outpost creates for its modules.
        #[serde(default = "default_network")]
        network: String,
        /// Prepended to module names to make container names (several edge devices on one host).
        #[serde(default)]
        container_prefix: String,
    },
    /// Native processes.
    Process,
}

fn default_https_port() -> u16 {
    443
}
fn default_mqtt_port() -> u16 {
    8883
}
fn default_listen() -> IpAddr {
    IpAddr::from([127, 0, 0, 1])
}
fn default_docker_socket() -> PathBuf {
    PathBuf::from("/var/run/docker.sock")
}
fn default_network() -> String {
    "outpost".to_owned()
}

impl EdgeConfig {
    /// Reads and checks the settings file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let mut config = Self::parse(&text).map_err(|reason| ConfigError::Invalid {
            path: path.display().to_string(),
            reason,
        })?;
        config.source = Some(path.to_owned());
        Ok(config)
    }

    /// Parses settings from TOML text.
    pub fn parse(text: &str) -> Result<Self, SettingsError> {
        let config: Self = toml::from_str(text)?;
        match (&config.connection_string, &config.provisioning) {
            (Some(_), None) => {
                config.device()?;
            }
            (None, Some(provisioning)) => provisioning.check()?,
            (None, None) => return Err(SettingsError::Identity("neither")),
            (Some(_), Some(_)) => return Err(SettingsError::Identity("both")),
        }
        if config.hostname.is_empty() {
            return Err(SettingsError::EmptyHostname);
        }
        config.disk.check()?;
        Ok(config)
    }

    /// The device connection string, checked: it must name a device with a key, or, with `x509=true`, one whose
    /// certificate the `[provisioning.attestation]` names (what provisioning with `method = "x509"` fills in).
    pub fn device(&self) -> Result<DeviceCredentials, SettingsError> {
        let parsed: ConnectionString = self
            .connection_string
            .as_deref()
            .ok_or(SettingsError::NotProvisioned)?
            .parse()?;
        let device_id = parsed.device_id.clone().ok_or(SettingsError::NoDeviceId)?;
        if parsed.module_id.is_some() {
            return Err(SettingsError::ModuleConnectionString);
        }
        let auth = if parsed.x509 {
            match self.provisioning.as_ref().map(|p| &p.attestation) {
                Some(AttestationConfig::X509(attestation)) => {
                    DeviceAuth::Certificate(attestation.files())
                }
                _ => return Err(SettingsError::NoCertificate),
            }
        } else {
            DeviceAuth::Key(
                parsed
                    .shared_access_key
                    .clone()
                    .ok_or(SettingsError::NoSharedAccessKey)?,
            )
        };
        Ok(DeviceCredentials {
            hub_hostname: parsed.host_name.clone(),
            device_id,
            auth,
        })
    }

    /// The directory of the agent's own state.
    pub fn agent_dir(&self) -> PathBuf {
        self.data_dir.join("agent")
    }

    /// The directory of module workload sockets.
    pub fn socket_dir(&self) -> PathBuf {
        self.data_dir.join("mnt")
    }

    /// The management socket that `outpost edge list|logs|restart` talk to.
    pub fn management_socket(&self) -> PathBuf {
        self.data_dir.join("management.sock")
    }
}

/// The edge device's identity, from its connection string.
#[derive(Debug, Clone)]
pub struct DeviceCredentials {
    /// The hub's host name (the audience of tokens).
    pub hub_hostname: String,
    /// The edge device's id.
    pub device_id: String,
    /// How it authenticates to the hub.
    pub auth: DeviceAuth,
}

/// How the edge device authenticates to the hub.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceAuth {
    /// SAS tokens signed with its base64 primary key.
    Key(String),
    /// Its X.509 certificate, presented at the TLS handshake.
    Certificate(CertificateFiles),
}

/// The files of an X.509 identity (`identity_cert`, `identity_pk`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertificateFiles {
    /// The certificate chain, leaf first (PEM).
    #[serde(rename = "identityCert")]
    pub cert: PathBuf,
    /// The leaf's private key (PEM).
    #[serde(rename = "identityPk")]
    pub key: PathBuf,
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"
        connection_string = "HostName=hub.local;DeviceId=edge1;SharedAccessKey=a2tra2tra2tra2tra2tra2tra2tra2tra2tra2tra2s="
        hub_ca = "/etc/outpost/hub-ca.pem"
        data_dir = "/var/lib/outpost"
        hostname = "edge1.local"

        [runtime]
        type = "docker"
        network = "outpost-test"
    "#;

    const PROVISIONED: &str = r#"
        hub_ca = "/etc/outpost/hub-ca.pem"
        data_dir = "/var/lib/outpost"
        hostname = "edge1.local"

        [runtime]
        type = "process"

        [provisioning]
        source = "dps"
        global_endpoint = "https://dps.example.net/"
        id_scope = "0ne00000001"

        [provisioning.attestation]
        method = "symmetric_key"
        registration_id = "edge-7"
        symmetric_key = { value = "a2tra2tra2tra2tra2tra2tra2tra2tra2tra2tra2s=" }
    "#;

    #[test]
    fn a_provisioned_device_needs_no_connection_string() {
        let config = EdgeConfig::parse(PROVISIONED).unwrap();
        let provisioning = config.provisioning.as_ref().unwrap();
        assert_eq!(provisioning.host(), "dps.example.net");
        assert_eq!(provisioning.mqtt_port, 8883);
        let AttestationConfig::SymmetricKey(attestation) = &provisioning.attestation else {
            panic!("{:?}", provisioning.attestation)
        };
        assert_eq!(
            attestation.symmetric_key.key(),
            "a2tra2tra2tra2tra2tra2tra2tra2tra2tra2tra2s="
        );
        assert!(matches!(
            config.device(),
            Err(SettingsError::NotProvisioned)
        ));
        let plain_key = PROVISIONED.replace(
            "{ value = \"a2tra2tra2tra2tra2tra2tra2tra2tra2tra2tra2s=\" }",
            "\"a2tra2tra2tra2tra2tra2tra2tra2tra2tra2tra2s=\"",
        );
        assert!(EdgeConfig::parse(&plain_key).is_ok());
    }

    #[test]
    fn identity_settings_must_be_one_and_complete() {
        let both = format!("connection_string = \"HostName=h;DeviceId=d;SharedAccessKey=a2tra2tra2tra2tra2tra2tra2tra2tra2tra2tra2s=\"\n{PROVISIONED}");
        assert!(matches!(
            EdgeConfig::parse(&both),
            Err(SettingsError::Identity("both"))
        ));
        let neither = EXAMPLE
            .lines()
            .filter(|l| !l.contains("connection_string"))
            .collect::<Vec<_>>()
            .join("\n");
        assert!(matches!(
            EdgeConfig::parse(&neither),
            Err(SettingsError::Identity("neither"))
        ));
        for method in ["tpm", "x509"] {
            // An unknown method, or x509 without its files.
            let text = PROVISIONED.replace("\"symmetric_key\"", &format!("\"{method}\""));
            assert!(
                matches!(EdgeConfig::parse(&text), Err(SettingsError::Toml(_))),
                "{method}"
            );
        }
        for (from, to) in [
            ("source = \"dps\"", "source = \"manual\""),
            (
                "registration_id = \"edge-7\"",
                "registration_id = \"Edge 7\"",
            ),
            ("id_scope = \"0ne00000001\"", "id_scope = \"\""),
            (
                "a2tra2tra2tra2tra2tra2tra2tra2tra2tra2tra2s=",
                "not base64!",
            ),
        ] {
            let text = PROVISIONED.replace(from, to);
            assert!(
                matches!(
                    EdgeConfig::parse(&text),
                    Err(SettingsError::Provisioning(_))
                ),
                "{to}"
            );
        }
    }

    /// [`PROVISIONED`] attesting with a certificate.
    fn x509_provisioned(attestation: &str) -> String {
        let start = PROVISIONED.find("method = ").unwrap();
        format!("{}{attestation}", &PROVISIONED[..start])
    }

    #[test]
    fn an_x509_attestation_names_its_files_and_the_device_authenticates_with_them() {
        let text = x509_provisioned(
            "method = \"x509\"\nidentity_cert = \"file:///var/secrets/device%20id.pem\"\n\
             identity_pk = \"/var/secrets/device-id.key.pem\"\n",
        );
        let mut config = EdgeConfig::parse(&text).unwrap();
        let provisioning = config.provisioning.clone().unwrap();
        let AttestationConfig::X509(attestation) = &provisioning.attestation else {
            panic!("{:?}", provisioning.attestation)
        };
        assert_eq!(
            attestation.registration_id, None,
            "the certificate's CN by default"
        );
        let files = attestation.files();
        assert_eq!(files.cert, Path::new("/var/secrets/device id.pem"));
        assert_eq!(files.key, Path::new("/var/secrets/device-id.key.pem"));
        // What provisioning fills in: a connection string without a key, the certificate doing its work.
        config.connection_string = Some("HostName=hub.local;DeviceId=edge-7;x509=true".into());
        let device = config.device().unwrap();
        assert_eq!(device.device_id, "edge-7");
        assert_eq!(device.auth, DeviceAuth::Certificate(files));

        let named = x509_provisioned(
            "method = \"x509\"\nregistration_id = \"edge-7\"\nidentity_cert = \"c.pem\"\nidentity_pk = \"k.pem\"\n",
        );
        assert!(EdgeConfig::parse(&named).is_ok());
        for wrong in [
            // A bad registration id, a key where the certificate should be, an empty path, an unknown setting.
            "method = \"x509\"\nregistration_id = \"Edge 7\"\nidentity_cert = \"c.pem\"\nidentity_pk = \"k.pem\"\n",
            "method = \"x509\"\nidentity_cert = \"c.pem\"\nsymmetric_key = \"a2tra2s=\"\n",
            "method = \"x509\"\nidentity_cert = \"\"\nidentity_pk = \"k.pem\"\n",
            "method = \"x509\"\nidentity_cert = \"c.pem\"\nidentity_pk = \"k.pem\"\ncolour = 1\n",
        ] {
            assert!(EdgeConfig::parse(&x509_provisioned(wrong)).is_err(), "{wrong}");
        }
    }

    #[test]
    fn an_x509_connection_string_needs_the_certificate_settings() {
        let text = EXAMPLE.replace(
            "SharedAccessKey=a2tra2tra2tra2tra2tra2tra2tra2tra2tra2tra2s=",
            "x509=true",
        );
        assert!(matches!(
            EdgeConfig::parse(&text),
            Err(SettingsError::NoCertificate)
        ));
    }

    #[test]
    fn a_complete_file_parses_with_defaults() {
        let config = EdgeConfig::parse(EXAMPLE).unwrap();
        assert_eq!(config.hub_https_port, 443);
        assert_eq!(config.device().unwrap().device_id, "edge1");
        assert!(
            matches!(config.runtime, RuntimeConfig::Docker { ref network, .. } if network == "outpost-test")
        );
    }

    #[test]
    fn a_module_connection_string_is_refused() {
        let text = EXAMPLE.replace("DeviceId=edge1;", "DeviceId=edge1;ModuleId=m;");
        assert!(matches!(
            EdgeConfig::parse(&text),
            Err(SettingsError::ModuleConnectionString)
        ));
    }

    #[test]
    fn unknown_settings_are_refused() {
        let text = format!("mystery = 1\n{EXAMPLE}");
        assert!(EdgeConfig::parse(&text).is_err());
    }

    #[test]
    fn the_disk_budget_has_defaults_and_refuses_zero_sizes() {
        let config = EdgeConfig::parse(EXAMPLE).unwrap();
        assert_eq!(config.disk, DiskConfig::default());
        assert_eq!(config.disk.log_rotation().max_bytes, 10 << 20);
        assert_eq!(config.disk.log_rotation().max_files, 3);
        let text = format!("{EXAMPLE}\n[disk]\nlog_max_size_kib = 64\nmin_free_mib = 1\n");
        let disk = EdgeConfig::parse(&text).unwrap().disk;
        assert_eq!((disk.log_max_size_kib, disk.min_free_mib), (64, 1));
        let text = format!("{EXAMPLE}\n[disk]\nlog_max_files = 0\n");
        assert!(matches!(
            EdgeConfig::parse(&text),
            Err(SettingsError::Zero("disk.log_max_files"))
        ));
    }

    #[test]
    fn certificate_lifetimes_read_their_units_and_default_to_a_year_90_and_30_days() {
        let config = EdgeConfig::parse(EXAMPLE).unwrap();
        assert_eq!(config.certificates, CertificatesConfig::default());
        assert_eq!(
            config.certificates.server_cert_lifetime.as_secs(),
            90 * 86_400
        );
        let text = format!(
            "{EXAMPLE}\n[certificates]\nca_lifetime = \"2h\"\nserver_cert_lifetime = \"30s\"\n"
        );
        let config = EdgeConfig::parse(&text).unwrap();
        assert_eq!(config.certificates.ca_lifetime.as_secs(), 7_200);
        assert_eq!(config.certificates.server_cert_lifetime.as_secs(), 30);
        assert_eq!(
            config.certificates.workload_cert_lifetime.as_secs(),
            30 * 86_400
        );
        for wrong in ["0s", "30", "1w", "s"] {
            let text = format!("{EXAMPLE}\n[certificates]\nca_lifetime = \"{wrong}\"\n");
            assert!(EdgeConfig::parse(&text).is_err(), "{wrong}");
        }
    }

    #[test]
    fn a_process_runtime_needs_no_options() {
        let text = EXAMPLE.replace(
            "type = \"docker\"\n        network = \"outpost-test\"",
            "type = \"process\"",
        );
        assert!(matches!(
            EdgeConfig::parse(&text).unwrap().runtime,
            RuntimeConfig::Process
        ));
    }
}
