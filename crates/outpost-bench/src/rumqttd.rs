//! rumqttd, the second reference broker of the routed benchmark: built by `scripts/bench-peers.sh` into
//! `<repo>/.tools/bin/rumqttd` (or given with `--rumqttd PATH`), started with the settings of its own default
//! `rumqttd.toml` (0.20: router segments of 100 MB, ten of them; 100 in flight per connection) on two free
//! loopback ports, one plain and one TLS (rustls, no client certificates), and nothing else (no v5, WebSocket,
//! console or Prometheus listener).
//!
//! Its default `max_payload_size` of 20,480 bytes already takes a 4 KB message and its topic; the harness
//! writes it out rather than relying on it, and checks it against the largest payload of the run.

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use anyhow::{bail, Context as _};
use tempfile::TempDir;

use crate::hub_process;
use crate::mosquitto::{server_certificate, wait_listening};

/// Largest MQTT payload the generated configuration lets a client publish (rumqttd's default).
pub const MAX_PAYLOAD: usize = 20_480;

// A 4 KB payload and its topic fit.
const _: () = assert!(MAX_PAYLOAD >= 4096 + 64);

/// Where `scripts/bench-peers.sh` installs rumqttd.
pub fn default_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.tools/bin/rumqttd")
}

/// The rumqttd configuration: its defaults, a plain and a TLS v4 (MQTT 3.1.1) server on `ip`.
pub fn config_text(ip: Ipv4Addr, plain: u16, tls: u16, cert: &Path, key: &Path) -> String {
    let connections = format!(
        "connection_timeout_ms = 60000\nmax_payload_size = {MAX_PAYLOAD}\n\
         max_inflight_count = 100\ndynamic_filters = true\n"
    );
    format!(
        "id = 0\n\n\
         [router]\nid = 0\nmax_connections = 10010\nmax_outgoing_packet_count = 200\n\
         max_segment_size = 104857600\nmax_segment_count = 10\n\n\
         [v4.1]\nname = \"v4-1\"\nlisten = \"{ip}:{plain}\"\nnext_connection_delay_ms = 1\n\
         [v4.1.connections]\n{connections}\n\
         [v4.2]\nname = \"v4-2\"\nlisten = \"{ip}:{tls}\"\nnext_connection_delay_ms = 1\n\
         [v4.2.tls]\ncertpath = \"{}\"\nkeypath = \"{}\"\n\
         [v4.2.connections]\n{connections}",
        cert.display(),
        key.display()
    )
}

/// Two ports free on `ip` at the time of asking (both held while the second is picked, so distinct).
fn free_ports(ip: Ipv4Addr) -> anyhow::Result<(u16, u16)> {
    let first = TcpListener::bind((ip, 0))?;
    let second = TcpListener::bind((ip, 0))?;
    Ok((first.local_addr()?.port(), second.local_addr()?.port()))
}

/// A running rumqttd.
pub struct Rumqttd {
    child: Child,
    /// Its plain listener.
    pub plain: SocketAddr,
    /// Its TLS listener.
    pub tls: SocketAddr,
    dir: TempDir,
    /// Its version, as it prints it.
    pub version: String,
}

impl Rumqttd {
    /// Starts `rumqttd -q -c CONF`; returns once both listeners answer. Fails, saying how to install it, when
    /// `binary` is not there.
    pub async fn start(binary: &Path, max_payload: usize) -> anyhow::Result<Self> {
        if !binary.is_file() {
            bail!(
                "{} not found (scripts/bench-peers.sh installs it; or pass --rumqttd PATH)",
                binary.display()
            );
        }
        if max_payload > MAX_PAYLOAD {
            bail!("payloads of {max_payload} B exceed the configured {MAX_PAYLOAD} B");
        }
        let version = Command::new(binary)
            .arg("--version")
            .output()
            .with_context(|| format!("cannot run {}", binary.display()))?;
        let version = String::from_utf8_lossy(&version.stdout).trim().to_owned();
        let ip = Ipv4Addr::LOCALHOST;
        let (plain, tls) = free_ports(ip)?;
        let dir = tempfile::Builder::new()
            .prefix("outpost-bench-rumqttd-")
            .tempdir()?;
        let (cert, key) = server_certificate(dir.path(), "bench rumqttd CA", ip)?;
        let conf = dir.path().join("rumqttd.toml");
        std::fs::write(&conf, config_text(ip, plain, tls, &cert, &key))?;
        let log_path = dir.path().join("rumqttd.log");
        let log = std::fs::File::create(&log_path)?;
        let child = Command::new(binary)
            .arg("-q")
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot start {}", binary.display()))?;
        let mut broker = Self {
            child,
            plain: SocketAddr::from((ip, plain)),
            tls: SocketAddr::from((ip, tls)),
            dir,
            version,
        };
        let addrs = [broker.plain, broker.tls];
        wait_listening("rumqttd", &mut broker.child, &addrs, &log_path).await?;
        Ok(broker)
    }

    /// The CA its TLS certificate chains to.
    pub fn ca_pem(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// Stops it.
    pub async fn stop(mut self) {
        hub_process::terminate(&mut self.child).await;
    }
}

impl Drop for Rumqttd {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_configuration_has_a_plain_and_a_tls_server_with_room_for_4_kb_payloads() {
        let text = config_text(
            Ipv4Addr::LOCALHOST,
            40001,
            40002,
            Path::new("/c.pem"),
            Path::new("/k.pem"),
        );
        assert!(text.contains("[v4.1]\nname = \"v4-1\"\nlisten = \"127.0.0.1:40001\"\n"));
        assert!(text.contains("[v4.2]\nname = \"v4-2\"\nlisten = \"127.0.0.1:40002\"\n"));
        assert!(text.contains("[v4.2.tls]\ncertpath = \"/c.pem\"\nkeypath = \"/k.pem\"\n"));
        assert_eq!(text.matches("max_payload_size = 20480\n").count(), 2);
        assert!(!text.contains("[console]") && !text.contains("[prometheus]"));
    }

    #[test]
    fn two_free_ports_are_distinct() {
        let (a, b) = free_ports(Ipv4Addr::LOCALHOST).expect("ports");
        assert_ne!(a, b);
    }
}
