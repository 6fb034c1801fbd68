//! The hub under test: the real `outpost` binary, started with a fresh data directory on a loopback address of
//! its own (devices always dial 8883, so each hub needs its own address), and stopped when the benchmark ends.
//! Its HTTPS and AMQP ports are free ports of that address.

use std::fs::File;
use std::io::{Read as _, Seek as _, SeekFrom};
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use rustix::process::{kill_process, Pid, Signal};
use tempfile::TempDir;

use crate::system;

/// The MQTT port the hub listens on (the one the device SDKs always dial).
const MQTT_PORT: u16 = 8883;

/// How long the hub may take to open both listeners and write its connection string.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// How long the hub may take to shut down after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// The loopback addresses tried for hubs: 127.0.0.100 to 127.0.0.199, starting at one derived from the
/// process id so that two harnesses side by side rarely try the same one first.
const ADDRESS_RANGE: (u8, u8) = (100, 100);

/// A running `outpost hub serve`.
pub struct HubProcess {
    child: Child,
    /// The hub's loopback address, which is also its host name.
    pub ip: Ipv4Addr,
    /// The HTTPS port.
    pub https_port: u16,
    /// The AMQP/TLS port (the Event Hubs-compatible endpoint).
    pub amqp_port: u16,
    /// The service connection string of `iothubowner`, as `outpost hub connection-string` prints it.
    pub connection_string: String,
    data_dir: TempDir,
    /// Options added to `outpost hub serve` (limits a benchmark sets).
    serve_args: Vec<String>,
    /// Variables added to the hub's environment.
    env: Vec<(String, String)>,
}

impl HubProcess {
    /// Starts the hub and returns once both listeners answer and the connection string is known.
    pub async fn start(outpost: &Path) -> anyhow::Result<Self> {
        Self::start_with(outpost, Vec::new()).await
    }

    /// Starts the hub with `serve_args` added to `outpost hub serve`'s command line.
    pub async fn start_with(outpost: &Path, serve_args: Vec<String>) -> anyhow::Result<Self> {
        Self::start_with_env(outpost, serve_args, Vec::new()).await
    }

    /// Starts the hub with `serve_args` added to `outpost hub serve`'s command line and `env` to its environment.
    pub async fn start_with_env(
        outpost: &Path,
        serve_args: Vec<String>,
        env: Vec<(String, String)>,
    ) -> anyhow::Result<Self> {
        let (ip, https_port, amqp_port) = free_loopback_address()?;
        let data_dir = tempfile::Builder::new()
            .prefix("outpost-bench-")
            .tempdir()
            .context("cannot create a data directory for the hub")?;
        let ports = Ports {
            https: https_port,
            amqp: amqp_port,
        };
        let child = spawn(outpost, data_dir.path(), ip, ports, &serve_args, &env)?;
        let mut hub = Self {
            child,
            ip,
            https_port,
            amqp_port,
            connection_string: String::new(),
            data_dir,
            serve_args,
            env,
        };
        hub.wait_for_listeners().await?;
        hub.connection_string = hub.read_connection_string(outpost).await?;
        Ok(hub)
    }

    /// Stops the hub (SIGTERM) and keeps its data directory, address and ports for [`HubProcess::resume`].
    pub async fn pause(&mut self) {
        terminate(&mut self.child).await;
    }

    /// Starts the hub again on the same data directory, address and ports; returns once it listens.
    pub async fn resume(&mut self, outpost: &Path) -> anyhow::Result<()> {
        self.child = spawn(
            outpost,
            self.data_dir.path(),
            self.ip,
            self.ports(),
            &self.serve_args,
            &self.env,
        )?;
        self.wait_for_listeners().await
    }

    /// The hub's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The host name devices and services address the hub by.
    pub fn host(&self) -> String {
        self.ip.to_string()
    }

    /// The MQTT/TLS endpoint.
    pub fn mqtt_addr(&self) -> SocketAddr {
        SocketAddr::from((self.ip, MQTT_PORT))
    }

    /// The AMQP/TLS endpoint.
    pub fn amqp_addr(&self) -> SocketAddr {
        SocketAddr::from((self.ip, self.amqp_port))
    }

    /// The Event Hubs-compatible connection string of `iothubowner`, as `outpost hub
    /// eventhub-connection-string` prints it.
    pub async fn eventhub_connection_string(&self, outpost: &Path) -> anyhow::Result<String> {
        let output = tokio::process::Command::new(outpost)
            .args(["hub", "eventhub-connection-string", "--data-dir"])
            .arg(self.data_dir.path())
            .output()
            .await
            .with_context(|| format!("cannot run {}", outpost.display()))?;
        let text = String::from_utf8_lossy(&output.stdout).trim().to_owned();
        if !output.status.success() || text.is_empty() {
            bail!(
                "`outpost hub eventhub-connection-string` failed: {}",
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        Ok(text)
    }

    fn ports(&self) -> Ports {
        Ports {
            https: self.https_port,
            amqp: self.amqp_port,
        }
    }

    /// The CA certificate the hub's TLS certificates chain to.
    pub fn ca_pem(&self) -> PathBuf {
        self.data_dir.path().join("ca.pem")
    }

    /// The hub's resident memory, in KiB.
    pub fn rss_kib(&self) -> anyhow::Result<u64> {
        system::rss_kib(self.pid())
    }

    /// The hub's peak resident set so far (`VmHWM`), in KiB.
    pub fn peak_rss_kib(&self) -> anyhow::Result<u64> {
        let path = format!("/proc/{}/status", self.pid());
        let status =
            std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
        system::parse_status_kib(&status, "VmHWM")
            .with_context(|| format!("{path} has no VmHWM line"))
    }

    /// The hub's open file descriptors (listeners, database, one per connection).
    pub fn open_fds(&self) -> anyhow::Result<usize> {
        system::open_fds(self.pid())
    }

    /// The last lines the hub logged, for error messages.
    pub fn log_tail(&self) -> String {
        let Ok(mut file) = File::open(self.data_dir.path().join("hub.log")) else {
            return "(no hub log)".to_owned();
        };
        let length = file.metadata().map_or(0, |m| m.len());
        let _ = file.seek(SeekFrom::Start(length.saturating_sub(4096)));
        let mut text = String::new();
        let _ = file.read_to_string(&mut text);
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }

    /// The lines of the hub's log that contain `needle` (case-sensitive).
    pub fn log_lines(&self, needle: &str) -> Vec<String> {
        std::fs::read_to_string(self.data_dir.path().join("hub.log")).map_or_else(
            |_| Vec::new(),
            |log| {
                log.lines()
                    .filter(|l| l.contains(needle))
                    .map(str::to_owned)
                    .collect()
            },
        )
    }

    /// Whether the hub logged `needle` (case-sensitive) anywhere in its log.
    pub fn logged(&self, needle: &str) -> bool {
        std::fs::read_to_string(self.data_dir.path().join("hub.log"))
            .is_ok_and(|log| log.contains(needle))
    }

    /// Fails with the hub's last words if it is no longer running.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!(
                "the hub exited ({status}); its log ends with:\n{}",
                self.log_tail()
            );
        }
        Ok(())
    }

    /// Asks the hub to shut down (SIGTERM), and kills it if it takes too long.
    pub async fn stop(mut self) {
        terminate(&mut self.child).await;
    }

    async fn wait_for_listeners(&mut self) -> anyhow::Result<()> {
        let started = Instant::now();
        let https = SocketAddr::from((self.ip, self.https_port));
        loop {
            self.check_alive()?;
            let mut up = true;
            for addr in [self.mqtt_addr(), https, self.amqp_addr()] {
                up = up && tokio::net::TcpStream::connect(addr).await.is_ok();
            }
            if up {
                return Ok(());
            }
            if started.elapsed() > START_TIMEOUT {
                bail!(
                    "the hub did not listen on {}, {https} and {} within {START_TIMEOUT:?}; its log ends with:\n{}",
                    self.mqtt_addr(),
                    self.amqp_addr(),
                    self.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn read_connection_string(&mut self, outpost: &Path) -> anyhow::Result<String> {
        let started = Instant::now();
        loop {
            let output = tokio::process::Command::new(outpost)
                .args(["hub", "connection-string", "--data-dir"])
                .arg(self.data_dir.path())
                .output()
                .await
                .with_context(|| format!("cannot run {}", outpost.display()))?;
            let text = String::from_utf8_lossy(&output.stdout).trim().to_owned();
            if output.status.success() && !text.is_empty() {
                return Ok(text);
            }
            // `serve` writes hub.json just after its listeners are bound: give it a moment.
            if started.elapsed() > START_TIMEOUT {
                bail!(
                    "`outpost hub connection-string` failed: {}",
                    String::from_utf8_lossy(&output.stderr).trim()
                );
            }
            self.check_alive()?;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for HubProcess {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The ports a hub listens on besides MQTT's.
#[derive(Debug, Clone, Copy)]
struct Ports {
    https: u16,
    amqp: u16,
}

/// Starts `outpost hub serve` (with `serve_args` added), its output appended to `DIR/hub.log`.
fn spawn(
    outpost: &Path,
    data_dir: &Path,
    ip: Ipv4Addr,
    ports: Ports,
    serve_args: &[String],
    env: &[(String, String)],
) -> anyhow::Result<Child> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(data_dir.join("hub.log"))
        .context("cannot open the hub's log file")?;
    Command::new(outpost)
        .arg("hub")
        .arg("serve")
        .arg("--data-dir")
        .arg(data_dir)
        .args(["--hostname", &ip.to_string(), "--bind", &ip.to_string()])
        .args(["--mqtt-port", &MQTT_PORT.to_string()])
        .args(["--https-port", &ports.https.to_string()])
        .args(["--amqp-port", &ports.amqp.to_string()])
        .args(serve_args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .with_context(|| format!("cannot start {}", outpost.display()))
}

/// Sends SIGTERM, waits up to [`STOP_TIMEOUT`], then kills.
pub async fn terminate(child: &mut Child) {
    if matches!(child.try_wait(), Ok(Some(_))) {
        return;
    }
    if let Some(pid) = Pid::from_raw(child.id() as i32) {
        let _ = kill_process(pid, Signal::TERM);
    }
    let deadline = Instant::now() + STOP_TIMEOUT;
    while Instant::now() < deadline {
        if matches!(child.try_wait(), Ok(Some(_))) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!(
        "process {} did not stop within {STOP_TIMEOUT:?} of SIGTERM; killing it",
        child.id()
    );
    let _ = child.kill();
    let _ = child.wait();
}

/// A loopback address whose port 8883 is free, and free HTTPS and AMQP ports on it.
fn free_loopback_address() -> anyhow::Result<(Ipv4Addr, u16, u16)> {
    let (first, count) = ADDRESS_RANGE;
    let offset = (std::process::id() % u32::from(count)) as u8;
    for k in 0..count {
        let ip = Ipv4Addr::new(127, 0, 0, first + (offset + k) % count);
        if TcpListener::bind((ip, MQTT_PORT)).is_err() {
            continue;
        }
        // Both listeners stay open until both ports are known, so that the two differ.
        if let (Ok(https), Ok(amqp)) = (TcpListener::bind((ip, 0)), TcpListener::bind((ip, 0))) {
            return Ok((ip, https.local_addr()?.port(), amqp.local_addr()?.port()));
        }
    }
    bail!(
        "no free loopback address: port {MQTT_PORT} is taken on 127.0.0.{first} to 127.0.0.{}",
        first + count - 1
    )
}
