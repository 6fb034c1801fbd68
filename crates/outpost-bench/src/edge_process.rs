//! The edge daemon under test: `outpost edge run` with a settings file the harness writes, on a loopback
//! address of its own (modules dial 8883), and its management socket for the store counters.

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use serde_json::Value;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::device::DeviceCredentials;
use crate::hub_process::{self, HubProcess};
use crate::system;

/// The edge hub's MQTT port.
pub const MQTT_PORT: u16 = 8883;
/// The management API version the harness speaks (`outpost_edge::management::api::MANAGEMENT_API_VERSION`; the
/// harness does not link the edge runtime). The socket refuses a request without it.
const MANAGEMENT_API_VERSION: &str = "2026-12-01";

/// How long the daemon may take to create its CA and listen.
const START_TIMEOUT: Duration = Duration::from_mins(1);

/// The settings the harness writes for the daemon.
#[derive(Debug, Clone)]
pub struct EdgeSettings {
    /// The edge device's connection string.
    pub connection_string: String,
    /// The hub's CA certificate.
    pub hub_ca: PathBuf,
    /// The hub's HTTPS port.
    pub hub_https_port: u16,
    /// The daemon's state directory.
    pub data_dir: PathBuf,
    /// Address (and host name) the edge hub listens on.
    pub ip: Ipv4Addr,
    /// The edge hub's HTTPS port.
    pub https_port: u16,
    /// Message-log quota.
    pub quota_mib: u64,
    /// `None` for the process runtime; for Docker, the prefix of container names (network `outpost-bench`).
    pub docker_prefix: Option<String>,
}

impl EdgeSettings {
    /// The settings as the TOML `outpost edge run --config` reads (docs/operations.md).
    pub fn to_toml(&self) -> String {
        let quote = |s: &str| format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""));
        format!(
            "connection_string = {}\nhub_ca = {}\nhub_https_port = {}\ndata_dir = {}\nhostname = \"{ip}\"\n\
             listen_address = \"{ip}\"\nedge_https_port = {}\n\n[store]\nquota_mib = {}\n\n[runtime]\n{}",
            quote(&self.connection_string),
            quote(&self.hub_ca.display().to_string()),
            self.hub_https_port,
            quote(&self.data_dir.display().to_string()),
            self.https_port,
            self.quota_mib,
            match &self.docker_prefix {
                None => "type = \"process\"\n".to_owned(),
                Some(prefix) => format!(
                    "type = \"docker\"\nnetwork = \"outpost-bench\"\ncontainer_prefix = {}\n",
                    quote(prefix)
                ),
            },
            ip = self.ip,
        )
    }
}

/// A running `outpost edge run`.
pub struct EdgeProcess {
    child: Child,
    /// The settings it runs with.
    pub settings: EdgeSettings,
    /// The edge device.
    pub device: DeviceCredentials,
    config: PathBuf,
}

impl EdgeProcess {
    /// Writes settings for `device` of `hub` into `dir` and starts the daemon; returns once the edge hub
    /// listens and its CA exists.
    pub async fn start(
        outpost: &Path,
        hub: &HubProcess,
        device: DeviceCredentials,
        dir: &Path,
        docker_prefix: Option<String>,
        quota_mib: u64,
    ) -> anyhow::Result<Self> {
        let ip = free_ip(200, 40, MQTT_PORT).context("no free loopback address for the edge")?;
        let https_port = TcpListener::bind((ip, 0))?.local_addr()?.port();
        let settings = EdgeSettings {
            connection_string: format!(
                "HostName={};DeviceId={};SharedAccessKey={}",
                hub.host(),
                device.id,
                device.key
            ),
            hub_ca: hub.ca_pem(),
            hub_https_port: hub.https_port,
            data_dir: dir.join("state"),
            ip,
            https_port,
            quota_mib,
            docker_prefix,
        };
        let config = dir.join("config.toml");
        std::fs::write(&config, settings.to_toml())?;
        let log = std::fs::File::create(dir.join("edge.log"))?;
        let child = Command::new(outpost)
            .args(["edge", "run", "--config"])
            .arg(&config)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot start {} edge run", outpost.display()))?;
        let mut edge = Self {
            child,
            settings,
            device,
            config,
        };
        let started = Instant::now();
        loop {
            if let Some(status) = edge.child.try_wait()? {
                bail!("the edge daemon exited ({status}): {}", edge.log_tail());
            }
            if edge.ca_pem().exists()
                && tokio::net::TcpStream::connect(edge.mqtt_addr())
                    .await
                    .is_ok()
            {
                return Ok(edge);
            }
            if started.elapsed() > START_TIMEOUT {
                bail!(
                    "the edge hub did not listen within {START_TIMEOUT:?}: {}",
                    edge.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The daemon's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The daemon's resident memory, in KiB.
    pub fn rss_kib(&self) -> anyhow::Result<u64> {
        system::rss_kib(self.pid())
    }

    /// The edge hub's MQTT/TLS address.
    pub fn mqtt_addr(&self) -> SocketAddr {
        SocketAddr::from((self.settings.ip, MQTT_PORT))
    }

    /// The edge CA modules trust.
    pub fn ca_pem(&self) -> PathBuf {
        self.settings.data_dir.join("pki").join("ca.pem")
    }

    /// The last lines of the daemon's log.
    pub fn log_tail(&self) -> String {
        let path = self.config.with_file_name("edge.log");
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }

    /// The store counters (`outpost edge stats`), read from the management socket.
    pub async fn stats(&self) -> anyhow::Result<Value> {
        let socket = self.settings.data_dir.join("management.sock");
        let mut stream = tokio::net::UnixStream::connect(&socket)
            .await
            .with_context(|| format!("cannot connect to {}", socket.display()))?;
        let request = format!(
            "GET /stats?api-version={MANAGEMENT_API_VERSION} HTTP/1.1\r\nHost: outpost\r\nConnection: close\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await?;
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).await?;
        let text = String::from_utf8_lossy(&answer);
        let body = http_body(&text).context("the management socket answered without a body")?;
        if !text.starts_with("HTTP/1.1 200") {
            bail!("the management socket refused GET /stats: {body}");
        }
        serde_json::from_str(body).context("the management socket answered with invalid JSON")
    }

    /// Stops the daemon (SIGTERM; its modules stop with it).
    pub async fn stop(mut self) {
        hub_process::terminate(&mut self.child).await;
    }
}

impl Drop for EdgeProcess {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The body of an HTTP/1.1 answer (chunked transfer decoded).
pub fn http_body(answer: &str) -> Option<&str> {
    let (head, body) = answer.split_once("\r\n\r\n")?;
    if !head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        return Some(body);
    }
    // One chunk is all axum sends for a small JSON answer.
    let (_, rest) = body.split_once("\r\n")?;
    Some(rest.split("\r\n").next().unwrap_or(rest))
}

/// The first loopback address 127.0.0.`first`.. (`count` of them) where `port` is free.
pub fn free_ip(first: u8, count: u8, port: u16) -> Option<Ipv4Addr> {
    let offset = (std::process::id() % u32::from(count)) as u8;
    (0..count)
        .map(|k| Ipv4Addr::new(127, 0, 0, first + (offset + k) % count))
        .find(|ip| TcpListener::bind((*ip, port)).is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_render_as_the_toml_the_daemon_reads() {
        let settings = EdgeSettings {
            connection_string: "HostName=127.0.0.100;DeviceId=e;SharedAccessKey=k==".into(),
            hub_ca: "/d/ca.pem".into(),
            hub_https_port: 4443,
            data_dir: "/e/state".into(),
            ip: Ipv4Addr::new(127, 0, 0, 201),
            https_port: 5443,
            quota_mib: 4096,
            docker_prefix: None,
        };
        let toml = settings.to_toml();
        assert!(toml.contains(
            "connection_string = \"HostName=127.0.0.100;DeviceId=e;SharedAccessKey=k==\"\n"
        ));
        assert!(toml.contains("hostname = \"127.0.0.201\"\nlisten_address = \"127.0.0.201\"\n"));
        assert!(toml.contains("[store]\nquota_mib = 4096\n"));
        assert!(toml.ends_with("[runtime]\ntype = \"process\"\n"));
        let docker = EdgeSettings {
            docker_prefix: Some("b-".into()),
            ..settings
        };
        assert!(docker.to_toml().ends_with(
            "[runtime]\ntype = \"docker\"\nnetwork = \"outpost-bench\"\ncontainer_prefix = \"b-\"\n"
        ));
    }

    #[test]
    fn an_http_body_is_found_plain_or_chunked() {
        assert_eq!(
            http_body("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}"),
            Some("{}")
        );
        assert_eq!(
            http_body("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n"),
            Some("{}")
        );
    }
}
